"""What each claimed notice becomes in Slack (the notifier's sender, shared/services/notifier.py).

Openings go first (one grouped message from ``group_min`` up), then escalations and reminders (replies in
the opening's thread), then resolutions (edits): a later event of an episode never reaches Slack before
its opening. Silenced notices are recorded ``silenced``, liveness notices under an open root alert
``inhibited``. A notice is finished in one atomic write with what its episode must remember of it (where
its message is, that it was silenced), so a notice recorded ``sent`` always has its message on the
episode, and one whose finishing write failed is sent again after its lease, at most once more.

A critical or emergency escalation whose opening still waits (its group wait) does not wait behind it:
the opening is claimed as any notice and sent first, then the escalation in its thread.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from shared.domain import episodes as domain
from shared.domain import notices as render
from shared.domain import silences as silence_rules
from shared.domain.silences import Silence
from shared.platform import logs
from shared.store import config as config_store
from shared.store import episodes as store

log = logs.get_logger("notifier")

#: How long a claimed notice is ours before another run may take it.
LEASE = timedelta(seconds=120)
#: Backoff after a failed attempt when Slack gives no Retry-After: 15 s, 30 s, ... up to 10 minutes.
BACKOFF = timedelta(seconds=15)
MAX_BACKOFF = timedelta(minutes=10)
#: ``sent_by`` of the notices the minute job handles.
MINUTE_JOB = "minute_job"

Fields = dict[str, Any]


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


class SlackDown(Exception):
    def __init__(self, retry_after: float | None) -> None:
        super().__init__(f"Slack unavailable (retry after {retry_after})")
        self.retry_after = retry_after


def channel(notice: dict[str, Any]) -> str:
    """Where the tenant routes the notice's severity."""
    return config_store.alerting(notice["tenant"]).channel(domain.Severity(notice["severity"]))


def defer(notice: dict[str, Any], now: datetime, delay: timedelta | None) -> None:
    attempts = int(notice.get("attempts") or 0) + 1
    backoff = min(MAX_BACKOFF, BACKOFF * (2 ** max(0, attempts - 1)))
    store.finish(notice["id"], {"state": "pending", "due_at": now + max(delay or backoff, timedelta(seconds=1))})


class Sender:
    def __init__(
        self, now: datetime, silences: list[Silence], out: Flushed, by: str = MINUTE_JOB, raised_by: str | None = None
    ) -> None:
        self.now, self.silences, self.out, self.by = now, silences, out, by
        #: Who sent it (``sent_by``) and, for a hand-over, the code path that raised it (``raised_by``).
        self.stamp: Fields = {"sent_by": by, **({"raised_by": raised_by} if raised_by else {})}
        self.done: set[str] = set()
        #: Openings claimed by this run ahead of their group wait (a critical escalation's).
        self.pulled: list[dict[str, Any]] = []
        self._roots: dict[str, str | None] = {}
        #: Episodes of this run's notices, as read and as changed since.
        self.episodes: dict[str, dict[str, Any]] = {}

    def unsent(self, notices: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [n for n in [*notices, *self.pulled] if n["id"] not in self.done]

    # --- Slack calls, with failures mapped ------------------------------------------------------

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        # lazy: the Slack client only when the outbox has something to send
        from shared.slack import web_api

        self.out.slack_calls += 1
        try:
            return getattr(web_api, method)(*args, **kwargs)
        except web_api.SlackUnavailable as exc:
            raise SlackDown(exc.retry_after) from exc

    def _finish(self, notice: dict[str, Any], state: str, remember: Fields | None = None, **fields: Any) -> None:
        """Record how ``notice`` ended and, in the same write, what its episode must ``remember``."""
        finished = {"state": state, "done_at": self.now, **self.stamp, **fields}
        store.finish(notice["id"], finished, episode=(notice["episode_id"], remember) if remember else None)
        self._done(notice, remember)

    def _done(self, notice: dict[str, Any], remember: Fields | None) -> None:
        self.done.add(notice["id"])
        if remember:  # here too, for the rest of this run
            self.episodes.setdefault(notice["episode_id"], {}).update(remember)

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
                elif notice["event"].startswith("remediation-"):  # shared/domain/remediation.py
                    self._thread_reply(notice, episode, render.remediation(notice))
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

    def _refused(self, notice: dict[str, Any], error: str) -> None:
        self._finish(notice, "failed", error=error)
        self.out.failed += 1
        logs.log(log, f"Slack refused a notice: {error}", logging.ERROR, notice=notice["id"], error=error)

    def _held_back(self, notice: dict[str, Any]) -> bool:
        """Silenced, or under a root alert: recorded, not sent (resolutions never come here)."""
        root = self._root(notice["tenant"]) if notice["rule"] == domain.LIVENESS else None
        if root is not None:
            self._finish(notice, "inhibited", {"inhibited_by": root}, root=root)
            self.out.inhibited += 1
            return True
        silence = silence_rules.silencing(
            self.silences, self.now, tenant=notice["tenant"], agent_id=notice.get("agent_id"), rule=notice["rule"]
        )
        if silence is not None:
            remember = {"silenced": silence.id} if notice["event"] == "open" else None
            self._finish(notice, "silenced", remember, silence=silence.id)
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
        posted = self._call("post", channel(notice), text, blocks=blocks)
        slack_ref = {"channel": posted.channel, "ts": posted.ts}
        self._finish(notice, "sent", {"slack": slack_ref}, channel=posted.channel, ts=posted.ts)
        self.out.sent += 1

    def _post_group(self, group: list[dict[str, Any]]) -> None:
        text, blocks = render.grouped(group)
        posted = self._call("post", channel(group[0]), text, blocks=blocks)
        group_id = f"{posted.channel}.{posted.ts}"
        store.save_group(group_id, channel=posted.channel, ts=posted.ts, notices=group, at=self.now)
        slack_ref = {"channel": posted.channel, "ts": posted.ts, "group": group_id}
        fields = {"state": "sent", "done_at": self.now, **self.stamp}
        sent = {**fields, "channel": posted.channel, "ts": posted.ts, "group": group_id}
        store.finish_all([(notice["id"], sent, (notice["episode_id"], {"slack": slack_ref})) for notice in group])
        for notice in group:
            self._done(notice, {"slack": slack_ref})
        self.out.sent += 1
        self.out.grouped += len(group)

    def _thread_of(self, notice: dict[str, Any], episode: dict[str, Any]) -> dict[str, Any] | None:
        """The episode's message, where a later event replies: ``{}`` when it has none (the event is then
        posted as its first message), None when the event was put back to wait for its opening."""
        slack_ref = episode.get("slack") or {}
        if slack_ref.get("ts"):
            return dict(slack_ref)
        if self._wait_for_opening(notice, episode):
            return None
        # The opening may have gone out just now (pulled ahead by a critical escalation).
        return dict((self.episodes.get(notice["episode_id"]) or {}).get("slack") or {})

    def _thread_reply(self, notice: dict[str, Any], episode: dict[str, Any], message: render.Message) -> None:
        slack_ref = self._thread_of(notice, episode)
        if slack_ref is not None:
            self._reply(notice, slack_ref, message)

    def _reply(self, notice: dict[str, Any], slack_ref: dict[str, Any], message: render.Message) -> None:
        if not slack_ref.get("ts"):
            # The opening never went out (silenced then): this is the first message.
            self._post_one(notice)
            return
        text, blocks = message
        self._call("post", slack_ref["channel"], text, blocks=blocks, thread_ts=slack_ref["ts"])
        self._finish(notice, "sent", channel=slack_ref["channel"], ts=slack_ref["ts"])
        self.out.sent += 1

    def _escalate(self, notice: dict[str, Any], episode: dict[str, Any]) -> None:
        slack_ref = self._thread_of(notice, episode)
        if slack_ref is None:
            return
        if slack_ref.get("ts") and not slack_ref.get("group"):
            text, blocks = render.escalated(notice)
            self._call("update", slack_ref["channel"], slack_ref["ts"], text, blocks=blocks)
        self._reply(notice, slack_ref, render.escalated(notice))

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
            posted = self._call("post", channel(notice), text, blocks=blocks)
            self._finish(notice, "sent", channel=posted.channel, ts=posted.ts)
            self.out.sent += 1
            return
        text, blocks = render.resolved(notice)
        self._call("post", slack_ref["channel"], text, blocks=blocks, thread_ts=slack_ref["ts"])
        self._finish(notice, "sent", channel=slack_ref["channel"], ts=slack_ref["ts"])
        self.out.sent += 1

    def _wait_for_opening(self, notice: dict[str, Any], episode: dict[str, Any]) -> bool:
        """A later event of an episode whose opening is still waiting (Slack refused it, or it waits
        for its group) waits behind it: True when ``notice`` was put back. A critical escalation does
        not wait for a pending opening: it sends the opening first (:meth:`_pull`)."""
        if episode.get("silenced"):
            return False
        rows = store.notices_as_read([domain.notice_id(notice["episode_id"], "open")])
        opening, update_time = rows[0] if rows else ({}, None)
        if opening.get("state") not in ("pending", "sending"):
            return False
        if opening["state"] == "pending" and domain.sent_at_once(notice) and self._pull(opening, update_time):
            return False
        due = opening.get("due_at") or self.now
        store.finish(notice["id"], {"state": "pending", "due_at": max(due, self.now) + BACKOFF})
        self.done.add(notice["id"])
        self.out.deferred += 1
        return True

    def _pull(self, opening: dict[str, Any], update_time: Any) -> bool:
        """Claim a critical escalation's opening ahead of its group wait (as any notice is claimed) and
        send it on its own (or record it held back, or refused): False when another run took it first."""
        # lazy: the Slack client only when the outbox has something to send
        from shared.slack import web_api

        if store.claim(opening, update_time, self.now, LEASE) is None:
            self.out.lost_claims += 1
            return False
        self.pulled.append(opening)
        try:
            if not self._held_back(opening):
                self._post_one(opening)
        except web_api.SlackRefused as refused:
            self._refused(opening, refused.error)
        return True

    def _update_group(self, group_id: str, notice: dict[str, Any]) -> None:
        """Mark one member resolved in the grouped message, and edit it."""
        data = store.resolve_in_group(group_id, notice["episode_id"])
        if data is not None:
            text, blocks = render.grouped(data["notices"], data["states"])
            self._call("update", data["channel"], data["ts"], text, blocks=blocks)
