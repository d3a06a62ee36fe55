"""Alert episodes: one per (agent or tenant, rule) while its condition lasts, and the notices they send.

An episode opens once, may escalate (a higher severity), repeats at its severity's interval while it
stays open, and resolves. Each of those is a *notice* in the outbox (``notifications/{episode}.{event}``)
written in the same atomic write as the decision that caused it, under a deterministic id: however
many instances reach the decision, one write wins and one notice exists. The notifier
(shared/services/notifier.py) then sends each notice once, grouped, silenced or held back under a root alert;
a resolution is always sent, silenced or not.

Agent episodes are indexed in the agent document (``episodes``: rule -> episode id), so opening or
resolving one is part of the agent's conditional write; tenant episodes (the root alert) live in the
tenant's alert document the same way.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from shared.domain.alerts import Alert, Severity

__all__ = ["AgentEpisodes", "AlertingConfig", "EpisodeWrite", "Severity"]

#: Resolved episodes and sent notices are kept this long (Firestore TTL on ``expire_at``).
RETENTION = timedelta(days=30)
#: What an episode id may look like where one arrives from outside (a Slack button, an API or console path).
EPISODE_ID_CHARS = r"[A-Za-z0-9_.:-]{1,300}"
EPISODE_ID = re.compile(rf"^{EPISODE_ID_CHARS}$")

#: Rule names of the episodes this code opens (cost rules add their own kinds).
LIVENESS = "liveness"
ERROR_RATE = "error_rate"
SATURATION = "saturation"
FLAPPING = "flapping"
EGRESS = "egress"
SECURITY = "security"
FLEET_OFFLINE = "fleet_offline"

TITLES: dict[str, str] = {
    LIVENESS: "Agent silent",
    ERROR_RATE: "High error rate",
    SATURATION: "CPU or memory saturated",
    FLAPPING: "Status flapping",
    EGRESS: "High data egress",
    SECURITY: "Agent quarantined (security score)",
    FLEET_OFFLINE: "Many agents offline",
    "budget_threshold": "Budget threshold",
    "budget_soft_limit": "Budget soft limit",
    "budget_exhausted": "Budget exhausted",
    "budget_forecast": "Budget runs out soon (forecast)",
    "breaker_open": "Circuit breaker open",
    "runaway": "Runaway loop",
    "cost_spike": "Cost spike",
    "unpriced_model": "Unpriced model",
    "anomaly": "Heartbeat anomaly (learned model)",
    "failure_risk": "Likely to fail soon (learned model)",
    "command_unacknowledged": "Command not acknowledged",
}


class AlertingConfig(BaseModel):
    """How a tenant's alerts reach Slack. Every field has a default; a tenant overrides any of them
    (``PUT /v1/tenants/{tenant}/alerting``)."""

    model_config = ConfigDict(extra="forbid")

    #: Channel per severity; a severity not listed goes to ``default_channel``.
    channels: dict[Severity, str] = Field(
        default_factory=lambda: {Severity.CRITICAL: "#fleet-oncall", Severity.EMERGENCY: "#fleet-oncall"}
    )
    default_channel: str = "#fleet-alerts"
    #: Seconds between reminders of a still-open episode, per severity (absent or 0: none).
    repeat_every_s: dict[Severity, int] = Field(
        default_factory=lambda: {
            Severity.WARNING: 4 * 3600,
            Severity.HIGH: 3600,
            Severity.CRITICAL: 1800,
            Severity.EMERGENCY: 900,
        }
    )
    #: A notice waits this long for others of the same rule to join it in one message (the sweep's
    #: own notices go out at once: one sweep is already one window).
    group_wait_s: int = Field(default=30, ge=0, le=3600)
    #: This many notices of one rule in one window make one grouped message.
    group_min: int = Field(default=3, ge=2, le=1000)
    #: A root alert opens when at least this share of a tenant's agents is offline...
    root_share: float = Field(default=0.5, gt=0, le=1)
    #: ...and at least this many; it resolves when the share falls under half of ``root_share``.
    root_min_agents: int = Field(default=3, ge=2)
    #: Where approval requests of the tenant are posted (with their Approve and Deny buttons).
    approvals_channel: str = "#fleet-approvals"
    #: How long a request made in Slack or through the API waits for a decision (an agent's says its own).
    approval_expiry_s: int = Field(default=3600, ge=60, le=7 * 86400)

    @field_validator("default_channel", "approvals_channel")
    @classmethod
    def _channel(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("a channel name or id is required")
        return value

    def channel(self, severity: Severity) -> str:
        return self.channels.get(severity) or self.default_channel

    def repeat_after(self, severity: Severity) -> timedelta | None:
        seconds = self.repeat_every_s.get(severity) or 0
        return timedelta(seconds=seconds) if seconds > 0 else None

    @classmethod
    def for_tenant(cls, overrides: dict[str, Any] | None) -> AlertingConfig:
        return cls.model_validate(merged(cls, overrides))


def merged(model: type[BaseModel], overrides: dict[str, Any] | None) -> dict[str, Any]:
    """Overrides over the defaults, map fields merged key by key: overriding one severity's channel
    keeps the others' routes."""
    out = dict(overrides or {})
    defaults = model().model_dump(mode="json")
    for name, value in out.items():
        if isinstance(value, dict) and isinstance(defaults.get(name), dict):
            out[name] = {**defaults[name], **value}
    return out


def title(rule: str) -> str:
    return TITLES.get(rule) or rule.replace("_", " ").capitalize()


def episode_id(scope: str, rule: str, seq: int) -> str:
    """``a.{agent}.{rule}.{n}`` or ``t.{tenant}.{rule}.{n}``: the n-th episode of that rule there."""
    return f"{scope}.{rule}.{seq}"


def notice_id(episode: str, event: str) -> str:
    return f"{episode}.{event}"


@dataclass
class EpisodeWrite:
    """One change of an episode document (merged into it) and the notice it sends, if any."""

    episode_id: str
    fields: dict[str, Any]
    notice: dict[str, Any] | None = None
    #: Create the episode document (refused if it exists): episodes with an id of their own making.
    create: bool = False


def new_episode(
    episode: str,
    *,
    rule: str,
    severity: Severity,
    tenant: str,
    agent_id: str | None,
    at: datetime,
    summary: str,
    details: dict[str, Any] | None = None,
    config: AlertingConfig,
    resolve_at: datetime | None = None,
    due_at: datetime | None = None,
) -> EpisodeWrite:
    repeat = config.repeat_after(severity)
    fields: dict[str, Any] = {
        "id": episode,
        "rule": rule,
        "title": title(rule),
        "severity": severity.value,
        "tenant": tenant,
        "agent_id": agent_id,
        "state": "open",
        "opened_at": at,
        "resolved_at": None,
        "summary": summary,
        "details": details or {},
        "next_repeat_at": at + repeat if repeat else None,
        "repeats": 0,
        "resolve_at": resolve_at,
        "expire_at": None,
    }
    return EpisodeWrite(episode, fields, notice(fields, "open", at, due_at or at))


def escalation(
    current: dict[str, Any], severity: Severity, at: datetime, summary: str, config: AlertingConfig
) -> EpisodeWrite:
    """A higher severity: reminders start again, and an acknowledgement no longer holds (the message is
    rewritten with its buttons; whoever acknowledged the milder alert is asked again)."""
    repeat = config.repeat_after(severity)
    fields: dict[str, Any] = {
        "severity": severity.value,
        "summary": summary,
        "next_repeat_at": at + repeat if repeat else None,
        "acknowledged_by": None,
        "acknowledged_at": None,
    }
    return EpisodeWrite(current["id"], fields, notice({**current, **fields}, f"escalate-{severity.value}", at, at))


def resolution(current: dict[str, Any], at: datetime, summary: str, *, due_at: datetime | None = None) -> EpisodeWrite:
    fields = {
        "state": "resolved",
        "resolved_at": at,
        "resolution": summary,
        "next_repeat_at": None,
        "resolve_at": None,
        "expire_at": at + RETENTION,
    }
    return EpisodeWrite(current["id"], fields, notice({**current, **fields}, "resolve", at, due_at or at))


def reminder(current: dict[str, Any], at: datetime, config: AlertingConfig) -> EpisodeWrite:
    """The n-th reminder of a still-open episode, and when the next one is due (from the schedule,
    not from now: a late sweep does not push every later reminder back)."""
    n = int(current.get("repeats") or 0) + 1
    repeat = config.repeat_after(Severity(current["severity"]))
    scheduled = current.get("next_repeat_at") or at
    following = scheduled + repeat if repeat else None
    while following is not None and following <= at:
        following += repeat  # type: ignore[operator]  # repeat is set when following is
    fields = {"repeats": n, "next_repeat_at": following}
    return EpisodeWrite(current["id"], fields, notice({**current, **fields}, f"repeat-{n}", at, at))


#: Severities whose notices the function that raised them sends itself, right after its commit
#: (shared/services/notifier.py ``send_now``); the others wait for the minute job and its grouping.
AT_ONCE = frozenset({Severity.CRITICAL, Severity.EMERGENCY})


def sent_at_once(notice: dict[str, Any]) -> bool:
    """Whether the raising function sends ``notice`` at once: the opening or an escalation of a critical
    or emergency episode. Resolutions and reminders wait for the minute job (a resolution edits the
    message the opening posted, and must never overtake it)."""
    event = str(notice.get("event") or "")
    at_once_event = event == "open" or event.startswith("escalate-")
    return at_once_event and Severity(notice.get("severity") or "warning") in AT_ONCE


def at_once(raised: Iterable[Alert | EpisodeWrite]) -> list[str]:
    """The ids of the notices to send at once among what a function just committed: cost alerts it
    opened (``raise_once`` said True; their notice is the opening) or episode writes it made."""
    ids: list[str] = []
    for item in raised:
        if isinstance(item, Alert):
            opening = {"event": "open", "severity": item.severity.value}
            if sent_at_once(opening):
                ids.append(notice_id(item.id, "open"))
        elif item.notice is not None and sent_at_once(item.notice):
            ids.append(item.notice["id"])
    return ids


def notice(episode: dict[str, Any], event: str, at: datetime, due_at: datetime) -> dict[str, Any]:
    """An outbox entry: what to tell Slack about ``episode`` (a snapshot: the notifier needs no read)."""
    return {
        "id": notice_id(episode["id"], event),
        "episode_id": episode["id"],
        "event": event,
        "rule": episode["rule"],
        "title": episode.get("title") or episode["rule"],
        "severity": episode["severity"],
        "tenant": episode["tenant"],
        "agent_id": episode.get("agent_id"),
        "summary": episode.get("resolution") if event == "resolve" else episode.get("summary"),
        "opened_at": episode.get("opened_at"),
        "created_at": at,
        "due_at": due_at,
        "state": "pending",
        "attempts": 0,
        "expire_at": at + RETENTION,
    }


@dataclass
class AgentEpisodes:
    """The episodes of one agent, changed within one plan (the index lives in the agent document)."""

    agent_id: str
    tenant: str
    open: dict[str, dict[str, Any]]
    seq: int
    config: AlertingConfig
    writes: list[EpisodeWrite] = field(default_factory=list)
    changed: bool = False

    @classmethod
    def of(cls, record: Any, config: AlertingConfig) -> AgentEpisodes:
        return cls(record.agent_id, record.tenant, dict(record.episodes), record.episode_seq, config)

    def is_open(self, rule: str) -> bool:
        return rule in self.open

    def severity(self, rule: str) -> Severity | None:
        current = self.open.get(rule)
        return Severity(current["severity"]) if current else None

    def open_(
        self,
        rule: str,
        severity: Severity,
        at: datetime,
        summary: str,
        details: dict[str, Any] | None = None,
        *,
        wait: bool = True,
    ) -> bool:
        """Open ``rule`` unless it is open already (True when this call opened it)."""
        if rule in self.open:
            return False
        self.seq += 1
        episode = episode_id(f"a.{self.agent_id}", rule, self.seq)
        due = at + timedelta(seconds=self.config.group_wait_s) if wait else at
        write = new_episode(
            episode,
            rule=rule,
            severity=severity,
            tenant=self.tenant,
            agent_id=self.agent_id,
            at=at,
            summary=summary,
            details=details,
            config=self.config,
            due_at=due,
        )
        self.open[rule] = {"id": episode, "severity": severity.value, "opened_at": at.isoformat()}
        self.writes.append(write)
        self.changed = True
        return True

    def escalate(self, rule: str, severity: Severity, at: datetime, summary: str) -> bool:
        current = self.open.get(rule)
        if current is None or Severity(current["severity"]).rank >= severity.rank:
            return False
        snapshot = self._snapshot(rule)
        self.writes.append(escalation(snapshot, severity, at, summary, self.config))
        self.open[rule] = {**current, "severity": severity.value}
        self.changed = True
        return True

    def resolve(self, rule: str, at: datetime, summary: str) -> bool:
        if rule not in self.open:
            return False
        # Due no sooner than its opening could be (which may wait for its group).
        due = at + timedelta(seconds=self.config.group_wait_s)
        self.writes.append(resolution(self._snapshot(rule), at, summary, due_at=due))
        del self.open[rule]
        self.changed = True
        return True

    def _snapshot(self, rule: str) -> dict[str, Any]:
        """What the notice needs of an episode, from the agent's index (no read of the episode)."""
        current = self.open[rule]
        return {
            "id": current["id"],
            "rule": rule,
            "title": title(rule),
            "severity": current["severity"],
            "tenant": self.tenant,
            "agent_id": self.agent_id,
            "opened_at": current.get("opened_at"),
        }

    def changes(self) -> dict[str, Any]:
        return {"episodes": self.open, "episode_seq": self.seq} if self.changed else {}
