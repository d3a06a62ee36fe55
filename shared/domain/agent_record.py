"""The agent record and the plan made on it: the types every agent rule (registrations and heartbeats,
holds, the liveness ladder, releases, the cost rules) reads and returns, with no rule of its own.

A rule is a pure function from an :class:`AgentRecord` to a :class:`Plan`; the store applies the plan
atomically, with a precondition on the record it was computed from (shared/store/agents.py). Rules
that follow one another on the same event compose into one plan (:func:`combine`, :func:`then`):
one agent write and one publish per event.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from fleet_agent.contracts import Command
from pydantic import BaseModel, Field

from shared.domain import lifecycle
from shared.domain.audit import AuditEntry
from shared.domain.episodes import EpisodeWrite
from shared.domain.lifecycle import Cause, State

#: Times of recent status changes kept (the flapping rule looks at these).
REMEMBERED_STATUS_CHANGES = 20


class Liveness(StrEnum):
    OK = "ok"
    LATE = "late"
    OFFLINE = "offline"
    FROZEN = "frozen"


class AgentRecord(BaseModel):
    """The agent document in Firestore (``agents/{agent_id}``)."""

    agent_id: str
    tenant: str
    name: str
    agent_type: str
    version: str
    owner: str
    capabilities: list[str] = Field(default_factory=list)
    #: Protocol features the agent's SDK understands (``commands.v2``: remediation commands and acks).
    supports: list[str] = Field(default_factory=list)
    resources: dict[str, Any] = Field(default_factory=dict)
    #: The server's heartbeat tolerance: the agent's own interval, or what PATCH set (never below the agent's).
    heartbeat_interval_s: int = 30
    #: The interval the agent itself beats at (its last registration); PATCH may not go below it.
    registered_interval_s: int | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    #: Fields a person set through the API (owner, labels, heartbeat_interval_s): a registration keeps them.
    api_fields: list[str] = Field(default_factory=list)

    status: State = State.REGISTERED
    status_since: datetime
    #: Who caused the current status (a Cause value) and why: later rules need to know who holds a state.
    status_cause: str | None = None
    status_reason: str | None = None
    status_changes: list[datetime] = Field(default_factory=list)

    registered_at: datetime
    last_registered_at: datetime
    registration_event_ids: list[str] = Field(default_factory=list)
    versions: list[str] = Field(default_factory=list)

    last_heartbeat_at: datetime | None = None
    last_seq: int = -1
    heartbeats: int = 0
    late_after: datetime | None = None
    #: The liveness ladder (shared/domain/liveness.py): where the agent stands, when the sweep looks
    #: at it next (None: not watched), and what silence is counted from when not the last heartbeat.
    liveness: Liveness = Liveness.OK
    sweep_at: datetime | None = None
    liveness_from: datetime | None = None
    #: Open alert episodes by rule ({id, severity, opened_at}), and episodes ever opened (for ids).
    episodes: dict[str, dict[str, Any]] = Field(default_factory=dict)
    episode_seq: int = 0
    #: State of the health rules (shared/domain/health.py): timers, the egress hour, the security score.
    health: dict[str, Any] = Field(default_factory=dict)
    #: The learned models' state of this agent (shared/ml/live.py): its rolling baseline, persistence
    #: runs, last status and score, and the model versions that judged its last heartbeat.
    ml: dict[str, Any] = Field(default_factory=dict)
    #: When a person last acknowledged the agent's ``anomaly`` episode (written by the acknowledgement,
    #: shared/store/episodes.py): the baseline re-learns its levels at the next heartbeat.
    ml_rebase_at: datetime | None = None

    #: The agent's keys (shared.domain.identity.AgentIdentity as a map): empty until it enrolls.
    identity: dict[str, Any] = Field(default_factory=dict)

    #: The budget (a BudgetSpec, JSON-mode) and where it came from: "registration" or "api" (which wins).
    budget: dict[str, Any] | None = None
    budget_source: str | None = None
    #: Overrides of the protection thresholds for this agent (see shared.domain.protection).
    protection: dict[str, Any] = Field(default_factory=dict)
    #: Why the agent must not call its model, by hold name (see shared.domain.holds).
    holds: dict[str, dict[str, Any]] = Field(default_factory=dict)
    #: The hold that put the agent in its current status (lifting it makes the agent active again).
    status_hold: str | None = None
    #: Holds ever placed: part of each new hold's command id, so no id is ever reused.
    holds_placed: int = 0
    #: Remediation commands sent to the agent (fleet_agent.messages.commands.ACKED_COMMANDS), by command
    #: id: what, why, who, when sent, deadline, attempts, and how far the agent got (sent, acknowledged,
    #: done, failed, unacknowledged). Only the latest few are kept (shared/domain/agent_actions.py).
    commands: dict[str, dict[str, Any]] = Field(default_factory=dict)
    #: The earliest deadline of a command awaiting acknowledgement (None: none): the sweep reads the
    #: agents whose ``command_due_at`` has passed, to re-send or escalate (shared/domain/agent_actions.py).
    command_due_at: datetime | None = None

    #: The last ``chunk_size`` heartbeat samples, a ring keyed by slot (``s00``...). The latest
    #: metrics, reported status and sent time are read from it, not stored twice.
    recent: dict[str, dict[str, Any]] = Field(default_factory=dict)
    history_chunks: int = 0
    #: Seq of the newest sample already copied to a history chunk.
    flushed_seq: int = -1

    def to_doc(self) -> dict[str, Any]:
        return self.model_dump(mode="python")

    @property
    def samples(self) -> list[dict[str, Any]]:
        """The ring's samples, oldest first."""
        return sorted(self.recent.values(), key=lambda sample: sample["seq"])

    @property
    def latest(self) -> dict[str, Any] | None:
        return max(self.recent.values(), key=lambda sample: sample["seq"]) if self.recent else None

    @property
    def metrics(self) -> dict[str, float | int]:
        """Metrics of the last accepted heartbeat."""
        return dict(self.latest.get("metrics") or {}) if self.latest else {}

    @property
    def reported_status(self) -> str | None:
        return self.latest.get("status") if self.latest else None

    @property
    def last_sent_at(self) -> datetime | None:
        """The agent's own clock at its last heartbeat (kept for diagnosis, never used for liveness)."""
        sent_at = self.latest.get("sent_at") if self.latest else None
        return datetime.fromisoformat(sent_at) if sent_at else None


@dataclass
class Plan:
    """What to write. ``changes`` update the agent document; the rest are separate documents."""

    changes: dict[str, Any] = field(default_factory=dict)
    create: AgentRecord | None = None
    version_doc: dict[str, Any] | None = None
    history_chunk: tuple[int, dict[str, Any]] | None = None  # (slot, document)
    #: A heartbeat sample for one slot of the agent's ring (written with the agent document).
    sample: tuple[str, dict[str, Any]] | None = None
    audit: list[AuditEntry] = field(default_factory=list)
    #: Why nothing is written: "duplicate", "stale", ...
    skipped: str | None = None
    transition: lifecycle.Decision | None = None
    #: Commands to publish on ``agent-commands`` once the plan is written.
    commands: list[Command] = field(default_factory=list)
    #: Alert episodes opened, escalated or resolved, with their notices (written with the agent).
    episodes: list[EpisodeWrite] = field(default_factory=list)
    #: An enrollment: the token's changed fields (shared.domain.enrollment.use), written in the agent's
    #: batch with a precondition on the token as read, so a use is consumed once with the key it binds.
    token_use: dict[str, Any] | None = None

    @property
    def writes(self) -> int:
        agent = 1 if (self.changes or self.create or self.sample) else 0
        episode_docs = len(self.episodes) + sum(1 for e in self.episodes if e.notice is not None)
        docs = (self.version_doc is not None) + (self.history_chunk is not None) + len(self.audit)
        docs += self.token_use is not None
        return agent + docs + episode_docs


def remember(items: list[Any], item: Any, keep: int) -> list[Any]:
    """``items`` with ``item`` appended, the last ``keep`` of them."""
    return [*items, item][-keep:]


def status_change(current: AgentRecord, target: State, at: datetime, cause: Cause, reason: str = "") -> dict[str, Any]:
    return {
        "status": target,
        "status_since": at,
        "status_cause": cause.value,
        "status_reason": reason or None,
        # Any change of status ends the hold that imposed the previous one (a hold sets it again).
        "status_hold": None,
        "status_changes": remember(current.status_changes, at, REMEMBERED_STATUS_CHANGES),
    }


#: One rule applied to the record as the previous rules of the same event left it.
Step = Callable[[AgentRecord], Plan]


def merge(total: Plan, plan: Plan) -> None:
    """Add ``plan`` (made on the record as ``total`` leaves it) to ``total``: its changes win, its
    documents, commands and audit follow, its transition (if any) is the last one."""
    total.changes.update(plan.changes)
    total.audit.extend(plan.audit)
    total.commands.extend(plan.commands)
    total.episodes.extend(plan.episodes)
    if plan.transition is not None:
        total.transition = plan.transition


def then(record: AgentRecord, first: Plan, step: Step) -> Plan:
    """``first`` (made on ``record``) followed by ``step`` on the record as ``first`` leaves it: one
    plan, so one agent write. ``first``'s skip reason (a stale heartbeat) stays its outcome."""
    after = record.model_copy(update=first.changes) if first.changes else record
    merge(first, step(after))
    return first


def combine(steps: list[Step]) -> Callable[[AgentRecord | None], Plan]:
    """One decide function applying several steps in order, each on the record the previous left."""

    def decide(record: AgentRecord | None) -> Plan:
        if record is None:
            return Plan(skipped="unknown")
        total = Plan()
        current = record
        for step in steps:
            plan = step(current)
            merge(total, plan)
            if plan.changes:
                current = current.model_copy(update=plan.changes)
        if not total.changes:
            total.skipped = "unchanged"
        return total

    return decide
