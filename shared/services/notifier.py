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
   a backoff), and this run stops calling Slack. Nothing is lost; nothing is sent twice.

Critical and emergency notices do not wait for the minute job: the function that opened or escalated
the episode calls :func:`send_now` right after its commit, which claims them with the same conditional
update and sends them through the same steps 3 and 4 (docs/alerting.md, "Critical alerts at once"). A
notice it could not send stays in the outbox for the minute job. Each finished notice records who
handled it (``sent_by``: ``minute_job`` or ``at_once:<function>``).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from shared.domain import episodes as domain
from shared.domain import notices as render
from shared.domain import silences as silence_rules
from shared.domain.alerts import Alert
from shared.domain.silences import Silence
from shared.platform import logs, settings
from shared.services import handoff
from shared.store import config as config_store
from shared.store import episodes as store
from shared.store import silences as silence_store

log = logs.get_logger("notifier")

#: How long a claimed notice is ours before another run may take it.
LEASE = timedelta(seconds=120)
#: Backoff after a failed attempt when Slack gives no Retry-After: 15 s, 30 s, ... up to 10 minutes.
BACKOFF = timedelta(seconds=15)
MAX_BACKOFF = timedelta(minutes=10)
BATCH = 300


@dataclass
class Flushed:
    reminders: int = 0
    expired: int = 0
    sent: int = 0
    grouped: int = 0
    silenced: int = 0
    inhibited: int = 0
    failed: int = 0
    deferred: int = 0
    slack_calls: int = 0
    lost_claims: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


class _SlackDown(Exception):
    def __init__(self, retry_after: float | None) -> None:
        super().__init__(f"Slack unavailable (retry after {retry_after})")
        self.retry_after = retry_after


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


def send_now(raised: Iterable[Alert | domain.EpisodeWrite], *, by: str) -> int:
    """Hand the critical and emergency notices among what the caller just committed (cost alerts it
    opened, or episode writes) to ``fleet-actions`` (one publish, milliseconds), which sends them now
    (:func:`deliver`) rather than at the next minute job. The event functions thus never wait on Slack
    and hold no Slack token. Never raises: a failed hand-over leaves them to the minute job (the safety
    net). ``by`` names the raising function (recorded as ``sent_by``). Returns how many were handed over."""
    ids = domain.at_once(raised)
    if not ids or not settings.get().alerts_at_once:
        return 0
    return len(ids) if handoff.hand_over(handoff.ALERTS_NOW, ids=ids, by=by) else 0


def deliver(ids: Iterable[str], *, by: str) -> Flushed:
    """Send the notices ``ids`` now (``fleet-actions``, handed over by :func:`send_now`): each is claimed as
    the minute job claims it (a conditional update on the notice as read), so exactly one instance sends
    it, and the minute job never sends it again. Never raises: whatever was not sent stays in the outbox
    for the minute job."""
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
        _send(claimed, now, out, f"at_once:{by}")
    except Exception as exc:  # the outbox keeps them: the minute job sends what is left
        logs.log(log, f"immediate send failed, left to the minute job: {exc!r}", logging.ERROR, notices=ids)
    else:
        logs.log(log, "critical notices sent at once", notices=ids, by=by, **out.as_dict())
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


#: ``sent_by`` of the notices the minute job handles.
MINUTE_JOB = "minute_job"


def _send(claimed: list[dict[str, Any]], now: datetime, out: Flushed, by: str) -> None:
    """Send claimed notices; what Slack could not take goes back to the outbox, due later."""
    if not claimed:
        return
    silences = silence_store.active(now)
    sender = _Sender(now, silences, out, by)
    try:
        sender.send_all(claimed)
    except _SlackDown as down:
        delay = timedelta(seconds=down.retry_after) if down.retry_after else None
        for notice in sender.unsent(claimed):
            _defer(notice, now, delay)
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


def _channel(notice: dict[str, Any]) -> str:
    """Where the tenant routes the notice's severity."""
    return config_store.alerting(notice["tenant"]).channel(domain.Severity(notice["severity"]))


def _defer(notice: dict[str, Any], now: datetime, delay: timedelta | None) -> None:
    attempts = int(notice.get("attempts") or 0) + 1
    backoff = min(MAX_BACKOFF, BACKOFF * (2 ** max(0, attempts - 1)))
    store.finish(notice["id"], {"state": "pending", "due_at": now + max(delay or backoff, timedelta(seconds=1))})


class _Sender:
    def __init__(self, now: datetime, silences: list[Silence], out: Flushed, by: str = MINUTE_JOB) -> None:
        self.now, self.silences, self.out, self.by = now, silences, out, by
        self.done: set[str] = set()
        self._roots: dict[str, str | None] = {}
        #: Episodes of this run's notices, as read and as changed since.
        self.episodes: dict[str, dict[str, Any]] = {}

    def unsent(self, notices: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [n for n in notices if n["id"] not in self.done]

    # --- Slack calls, with failures mapped ------------------------------------------------------

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        # lazy: the Slack client only when the outbox has something to send
        from shared.slack import web_api

        self.out.slack_calls += 1
        try:
            return getattr(web_api, method)(*args, **kwargs)
        except web_api.SlackUnavailable as exc:
            raise _SlackDown(exc.retry_after) from exc

    def _finish(self, notice: dict[str, Any], state: str, **fields: Any) -> None:
        store.finish(notice["id"], {"state": state, "done_at": self.now, "sent_by": self.by, **fields})
        self.done.add(notice["id"])

    # --- what each notice becomes ----------------------------------------------------------------

    def send_all(self, notices: list[dict[str, Any]]) -> None:
        """Openings first, then escalations and reminders (replies in their threads), then
        resolutions (edits): a later event of an episode never reaches Slack before its opening."""
        # lazy: the Slack client only when the outbox has something to send
        from shared.slack import web_api

        self.episodes = store.get_many(sorted({n["episode_id"] for n in notices if n["event"] != "open"}))
        order = {"open": 0, "resolve": 2}
        openings: list[dict[str, Any]] = []
        for notice in sorted(notices, key=lambda n: order.get(n["event"], 1)):
            if notice["event"] == "open":
                if not self._held_back(notice):
                    openings.append(notice)
                continue
            if openings:
                self._post_openings(openings)
                openings = []
            episode = self.episodes.get(notice["episode_id"], {})
            try:
                if notice["event"] == "resolve":
                    self._resolve(notice, episode)
                elif self._held_back(notice):
                    continue
                elif notice["event"].startswith("repeat-"):
                    self._thread_reply(notice, episode, render.reminder(notice))
                else:  # an escalation: the original rewritten, and a reply in its thread
                    self._escalate(notice, episode)
            except web_api.SlackRefused as refused:
                self._refused(notice, refused.error)
        if openings:
            self._post_openings(openings)

    def _post_openings(self, openings: list[dict[str, Any]]) -> None:
        """Openings of one rule and severity in one tenant: one grouped message from ``group_min`` up."""
        # lazy: the Slack client only when the outbox has something to send
        from shared.slack import web_api

        by_rule: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
        for notice in openings:
            by_rule[(notice["tenant"], notice["rule"], notice["severity"])].append(notice)
        for (tenant, _rule, _severity), group in by_rule.items():
            config = config_store.alerting(tenant)
            try:
                if len(group) >= config.group_min:
                    self._post_group(group)
                else:
                    for notice in group:
                        self._post_one(notice)
            except web_api.SlackRefused as refused:
                for notice in group:
                    if notice["id"] not in self.done:
                        self._refused(notice, refused.error)

    def _remember(self, episode_id: str, **fields: Any) -> None:
        """Record on the episode (in Firestore, and here for the rest of this run)."""
        store.set_fields(episode_id, fields)
        self.episodes.setdefault(episode_id, {}).update(fields)

    def _refused(self, notice: dict[str, Any], error: str) -> None:
        self._finish(notice, "failed", error=error)
        self.out.failed += 1
        logs.log(log, f"Slack refused a notice: {error}", logging.ERROR, notice=notice["id"], error=error)

    def _held_back(self, notice: dict[str, Any]) -> bool:
        """Silenced, or under a root alert: recorded, not sent (resolutions never come here)."""
        root = self._root(notice["tenant"]) if notice["rule"] == domain.LIVENESS else None
        if root is not None:
            self._finish(notice, "inhibited", root=root)
            self._remember(notice["episode_id"], inhibited_by=root)
            self.out.inhibited += 1
            return True
        silence = silence_rules.silencing(
            self.silences, self.now, tenant=notice["tenant"], agent_id=notice.get("agent_id"), rule=notice["rule"]
        )
        if silence is not None:
            self._finish(notice, "silenced", silence=silence.id)
            if notice["event"] == "open":
                self._remember(notice["episode_id"], silenced=silence.id)
            self.out.silenced += 1
            return True
        return False

    def _root(self, tenant: str) -> str | None:
        if tenant not in self._roots:
            state, _ = store.tenant_state(tenant)
            root = (state.get("episodes") or {}).get(domain.FLEET_OFFLINE)
            self._roots[tenant] = root["id"] if root else None
        return self._roots[tenant]

    def _post_one(self, notice: dict[str, Any]) -> None:
        text, blocks = render.opened(notice)
        posted = self._call("post", _channel(notice), text, blocks=blocks)
        self._remember(notice["episode_id"], slack={"channel": posted.channel, "ts": posted.ts})
        self._finish(notice, "sent", channel=posted.channel, ts=posted.ts)
        self.out.sent += 1

    def _post_group(self, group: list[dict[str, Any]]) -> None:
        text, blocks = render.grouped(group)
        posted = self._call("post", _channel(group[0]), text, blocks=blocks)
        group_id = f"{posted.channel}.{posted.ts}"
        store.save_group(group_id, channel=posted.channel, ts=posted.ts, notices=group, at=self.now)
        for notice in group:
            slack_ref = {"channel": posted.channel, "ts": posted.ts, "group": group_id}
            self._remember(notice["episode_id"], slack=slack_ref)
            self._finish(notice, "sent", channel=posted.channel, ts=posted.ts, group=group_id)
        self.out.sent += 1
        self.out.grouped += len(group)

    def _thread_reply(self, notice: dict[str, Any], episode: dict[str, Any], message: render.Message) -> None:
        slack_ref = episode.get("slack") or {}
        if not slack_ref.get("ts"):
            if self._wait_for_opening(notice, episode):
                return
            # The opening never went out (silenced then): this is the first message.
            self._post_one(notice)
            return
        text, blocks = message
        self._call("post", slack_ref["channel"], text, blocks=blocks, thread_ts=slack_ref["ts"])
        self._finish(notice, "sent", channel=slack_ref["channel"], ts=slack_ref["ts"])
        self.out.sent += 1

    def _escalate(self, notice: dict[str, Any], episode: dict[str, Any]) -> None:
        slack_ref = episode.get("slack") or {}
        if slack_ref.get("ts") and not slack_ref.get("group"):
            text, blocks = render.escalated(notice)
            self._call("update", slack_ref["channel"], slack_ref["ts"], text, blocks=blocks)
        self._thread_reply(notice, episode, render.escalated(notice))

    def _resolve(self, notice: dict[str, Any], episode: dict[str, Any]) -> None:
        slack_ref = episode.get("slack") or {}
        if slack_ref.get("group"):
            self._update_group(slack_ref["group"], notice)
        elif slack_ref.get("ts"):
            text, blocks = render.resolved(notice)
            self._call("update", slack_ref["channel"], slack_ref["ts"], text, blocks=blocks)
        elif episode.get("inhibited_by"):
            # Never announced on its own: its root alert's message speaks for it.
            self._finish(notice, "inhibited", root=episode["inhibited_by"])
            self.out.inhibited += 1
            return
        elif self._wait_for_opening(notice, episode):
            return
        else:
            # Silenced when it opened (or never sent): the resolution is still sent, as a new message.
            text, blocks = render.resolved(notice, silenced=bool(episode.get("silenced")))
            posted = self._call("post", _channel(notice), text, blocks=blocks)
            self._finish(notice, "sent", channel=posted.channel, ts=posted.ts)
            self.out.sent += 1
            return
        text, blocks = render.resolved(notice)
        self._call("post", slack_ref["channel"], text, blocks=blocks, thread_ts=slack_ref["ts"])
        self._finish(notice, "sent", channel=slack_ref["channel"], ts=slack_ref["ts"])
        self.out.sent += 1

    def _wait_for_opening(self, notice: dict[str, Any], episode: dict[str, Any]) -> bool:
        """A later event of an episode whose opening is still waiting (Slack refused it, or it waits
        for its group) waits behind it: True when ``notice`` was put back."""
        if episode.get("silenced"):
            return False
        opening = store.get_notice(domain.notice_id(notice["episode_id"], "open"))
        if opening is None or opening.get("state") not in ("pending", "sending"):
            return False
        due = opening.get("due_at") or self.now
        store.finish(notice["id"], {"state": "pending", "due_at": max(due, self.now) + BACKOFF})
        self.done.add(notice["id"])
        self.out.deferred += 1
        return True

    def _update_group(self, group_id: str, notice: dict[str, Any]) -> None:
        """Mark one member resolved in the grouped message, and edit it."""
        data = store.resolve_in_group(group_id, notice["episode_id"])
        if data is not None:
            text, blocks = render.grouped(data["notices"], data["states"])
            self._call("update", data["channel"], data["ts"], text, blocks=blocks)
