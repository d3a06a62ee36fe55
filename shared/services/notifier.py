"""Send the outbox to Slack: once per notice, grouped, silenced, held back under a root alert.

Run by the minute job after the liveness sweep (``flush``). Every step is safe under concurrent runs:

1. Reminders of open episodes whose ``next_repeat_at`` has passed, and cost alerts whose window
   ended (``resolve_at``), are conditional updates of the episode that also write the notice: one
   run wins.
2. Due notices are *claimed* (a conditional update with a lease) before anything is sent: one run
   sends each. A run that dies after claiming leaves the notice due again when the lease ends.
3. Openings of one rule in one tenant, ``group_min`` or more, go out as one message listing the
   agents; a liveness notice of a tenant under an open root alert is held back (``inhibited``); a
   silenced one is recorded as ``silenced``. A resolution is always sent: it edits the original
   message (or the grouped one) and replies in its thread; one whose opening was silenced is posted.
4. Slack unavailable or rate limited: the notice goes back to ``pending``, due after Retry-After (or
   a backoff), and this run stops calling Slack. Nothing is lost. A notice is finished in one atomic
   write with its episode's message reference, so only a crash between Slack's answer and that write
   sends it again (once, after its lease); never not at all.

What each claimed notice becomes in Slack is shared/services/notice_sender.py.

Critical and emergency notices do not wait for the minute job: the function that opened or escalated
the episode calls :func:`send_now` right after its commit, which only hands their ids over to
``fleet-actions`` (one publish). There :func:`deliver` claims them with the same conditional update as
step 2 and sends them through steps 3 and 4 (docs/alerting.md, "Critical alerts at once"). A notice it
could not claim or send stays in the outbox for the minute job. The minute job's own notices due at once
(the fleet's health, written after the flush) are sent at the end of the same tick (:func:`send_due`).
Each finished notice records who sent it (``sent_by``: ``minute_job`` or ``at_once:<function>``, the
function that raised it) and, when handed over, the code path that raised it (``raised_by``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from shared.domain import episodes as domain
from shared.domain.alerts import Alert
from shared.platform import logs, settings
from shared.services import handoff
from shared.services.notice_sender import LEASE, MINUTE_JOB, Flushed, Sender, SlackDown, defer
from shared.store import config as config_store
from shared.store import episodes as store
from shared.store import silences as silence_store

log = logs.get_logger("notifier")

__all__ = ["LEASE", "MINUTE_JOB", "Flushed", "deliver", "flush", "function_name", "send_due", "send_now"]

BATCH = 300


def flush(now: datetime) -> Flushed:
    out = Flushed()
    _reminders(now, out)
    _expired_alerts(now, out)
    rows = store.due_notices(now, BATCH)
    claimed: list[dict[str, Any]] = []
    for notice, update_time in rows:
        if store.claim(notice, update_time, now, LEASE) is None:
            out.lost_claims += 1
        else:
            claimed.append(notice)
    _send(claimed, now, out, MINUTE_JOB)
    return out


def function_name() -> str:
    """The function this code runs in: ``K_SERVICE`` (Cloud Run sets it to the function's name), or
    ``FLEET_FUNCTION`` (the local stack, emulators/stack.py, sets it per function); ``unknown`` elsewhere."""
    return os.environ.get("K_SERVICE") or os.environ.get("FLEET_FUNCTION") or "unknown"


def send_now(raised: Iterable[Alert | domain.EpisodeWrite], *, by: str) -> int:
    """Hand the critical and emergency notices among what the caller just committed (cost alerts it
    opened, or episode writes) to ``fleet-actions`` (one publish, milliseconds), which sends them now
    (:func:`deliver`) rather than at the next minute job. The event functions thus never wait on Slack
    and hold no Slack token. Never raises: a failed hand-over leaves them to the minute job (the safety
    net). The running function (:func:`function_name`) is recorded as ``sent_by: at_once:<function>``;
    ``by`` names the code path that raised them (``raised_by``: ``budget_change``, ``forged_events``, ...).
    Returns how many were handed over."""
    ids = domain.at_once(raised)
    if not ids or not settings.get().alerts_at_once:
        return 0
    handed = handoff.hand_over(handoff.ALERTS_NOW, ids=ids, by=function_name(), raised_by=by)
    return len(ids) if handed else 0


def deliver(ids: Iterable[str], *, by: str, raised_by: str | None = None) -> Flushed:
    """Send the notices ``ids`` now (``fleet-actions``, handed over by :func:`send_now` in function ``by``):
    each is claimed as the minute job claims it (a conditional update on the notice as read), so of two
    instances, a redelivery, or a race with the minute job, one claim succeeds and the others skip it.
    Once recorded ``sent`` a notice is never sent again; a crash between Slack's answer and that record
    sends it once more after its lease (docs/alerting.md). Never raises: whatever was not sent stays in
    the outbox for the minute job."""
    return _send_ids(ids, f"at_once:{by}", raised_by, "critical notices sent at once")


def send_due(ids: Iterable[str]) -> Flushed:
    """The minute job's own notices due now that it wrote after its flush (the fleet's health): claimed
    and sent as :func:`deliver` does, in the same tick rather than the next, ``sent_by: minute_job``."""
    return _send_ids(ids, MINUTE_JOB, None, "the tick's own notices sent")


def _send_ids(ids: Iterable[str], sent_by: str, raised_by: str | None, done: str) -> Flushed:
    out = Flushed()
    ids = sorted(set(ids))
    if not ids or not _slack_reachable():
        return out
    now = datetime.now(UTC)
    try:
        claimed: list[dict[str, Any]] = []
        for notice, update_time in store.notices_as_read(ids):
            # Not pending: sent, or being sent by someone else. A lost claim: taken just now.
            if notice.get("state") != "pending" or store.claim(notice, update_time, now, LEASE) is None:
                out.lost_claims += 1
            else:
                claimed.append(notice)
        _send(claimed, now, out, sent_by, raised_by)
    except Exception as exc:  # the outbox keeps them: the minute job sends what is left
        logs.log(log, f"immediate send failed, left to the minute job: {exc!r}", logging.ERROR, notices=ids)
    else:
        logs.log(log, done, notices=ids, sent_by=sent_by, raised_by=raised_by, **out.as_dict())
    return out


def _slack_reachable() -> bool:
    """Whether this function holds the bot token (topology.yaml lists ``slack-bot-token`` under its
    secrets). Without it the notices are left untouched for the minute job, never marked ``failed``."""
    # lazy: the Slack client only when there is a critical notice to send
    from shared.slack import web_api

    try:
        web_api.client()
    except web_api.SlackRefused:
        logs.log(log, "no Slack token here: critical notices left to the minute job", logging.WARNING)
        return False
    return True


def _send(claimed: list[dict[str, Any]], now: datetime, out: Flushed, by: str, raised_by: str | None = None) -> None:
    """Send claimed notices; what Slack could not take goes back to the outbox, due later."""
    if not claimed:
        return
    silences = silence_store.active(now)
    sender = Sender(now, silences, out, by, raised_by)
    try:
        sender.send_all(claimed)
    except SlackDown as down:
        delay = timedelta(seconds=down.retry_after) if down.retry_after else None
        for notice in sender.unsent(claimed):
            defer(notice, now, delay)
            out.deferred += 1
        logs.log(log, "Slack unavailable: notices deferred", logging.WARNING, deferred=out.deferred)


def _reminders(now: datetime, out: Flushed) -> None:
    for episode, update_time in store.due("next_repeat_at", now, BATCH):
        write = domain.reminder(episode, now, config_store.alerting(episode["tenant"]))
        if store.conditional(episode, update_time, write):
            out.reminders += 1


def _expired_alerts(now: datetime, out: Flushed) -> None:
    """Cost alerts end with their window: resolved (which edits their message)."""
    for episode, update_time in store.due("resolve_at", now, BATCH):
        write = domain.resolution(episode, now, f"{episode.get('title')}: the window ended")
        if store.conditional(episode, update_time, write):
            out.expired += 1
