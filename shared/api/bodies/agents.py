"""The REST API's agent bodies: an agent, a page of agents, its heartbeat history, rejected events."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pydantic import Field, field_validator

from shared.api.bodies.common import Timestamp, View
from shared.api.bodies.enrollment import IdentityView, identity_view
from shared.domain.agent_record import AgentRecord
from shared.domain.health import HealthConfig, score_at
from shared.domain.lifecycle import State


class PendingCommandView(View):
    """A command sent to the agent and not yet done or failed (AgentRecord.commands)."""

    command_id: str
    command: str
    state: str = Field(description="sent, acknowledged or unacknowledged.")
    origin: str | None = None
    actor: str | None = None
    reason: str | None = None
    sent_at: Timestamp | None = None
    deadline: Timestamp | None = None
    attempts: int | None = None


class AgentView(View):
    """An agent as the API shows it."""

    agent_id: str
    tenant: str
    name: str
    agent_type: str
    version: str
    owner: str
    capabilities: list[str] = Field(default_factory=list)
    labels: dict[str, str] = Field(default_factory=dict)
    resources: dict[str, Any] = Field(default_factory=dict)
    heartbeat_interval_s: int
    status: State = Field(description="Lifecycle state, decided by the server.")
    status_since: Timestamp
    reported_status: str | None = Field(default=None, description="The agent's own last reported status.")
    registered_at: Timestamp
    last_registered_at: Timestamp | None = None
    last_heartbeat_at: Timestamp | None = Field(default=None, description="Server receive time.")
    last_seq: int = Field(description="Sequence number of the last accepted heartbeat; -1 before any.")
    heartbeats: int = 0
    metrics: dict[str, float | int] = Field(default_factory=dict, description="Metrics of the last heartbeat.")
    late_after: Timestamp | None = Field(
        default=None, description="When the agent counts as late if no heartbeat arrives before."
    )
    versions: list[str] = Field(default_factory=list, description="Recent versions, oldest first.")
    learned: LearnedView = Field(
        default_factory=lambda: LearnedView(), description="What the learned models made of its last heartbeat."
    )
    identity: IdentityView = Field(
        default_factory=lambda: identity_view(None), description="Whether its events are signed, and by which key."
    )
    liveness: str = Field(default="ok", description="The liveness rung: ok, late, offline or frozen.")
    security_score: float = Field(
        default=100.0, description="The health rules' security score now (100 at best; quarantined at the threshold)."
    )
    pending_commands: list[PendingCommandView] = Field(
        default_factory=list, description="Tracked commands not yet done or failed, oldest first."
    )
    api_fields: list[str] = Field(
        default_factory=list, description="Fields set through the API (PATCH): the agent's registration keeps them."
    )

    @field_validator("identity", mode="before")
    @classmethod
    def _shown(cls, value: Any) -> Any:
        """The stored identity map (shared.domain.identity.AgentIdentity) as the view shows it."""
        return identity_view(value) if isinstance(value, dict) and "status" not in value else value


class LearnedView(View):
    """The learned models' verdict on an agent's last heartbeat (shared/ml/live.py)."""

    status: str = Field(
        default="unscored", description="unscored (no model, or too few metrics), insufficient_data, normal, anomalous"
    )
    reason: str | None = Field(
        default=None, description="Why it is not scored (insufficient_data: the history it has and needs, in hours)."
    )
    history_s: float | None = Field(
        default=None,
        description="While insufficient_data: seconds of heartbeat history so far (scored after one daily cycle).",
    )
    scored_from: Timestamp | None = Field(
        default=None, description="While insufficient_data: when the agent will have the history to be scored."
    )
    score: float | None = Field(default=None, description="Anomaly score (higher is stranger).")
    risk: float | None = Field(default=None, description="Predicted risk of failing within the horizon.")
    anomaly_model: str | None = None
    failure_model: str | None = None


class AgentPage(View):
    items: list[AgentView]
    next_page_token: str | None = Field(
        default=None, description="Pass as page_token for the next page; null on the last page."
    )


class RejectionView(View):
    """An event the fleet refused, with the reason and the original payload (for diagnosis and replay)."""

    id: str = Field(description="The Pub/Sub message id.")
    code: str = Field(description="Machine-readable reason, e.g. schema_violation, unknown_agent.")
    reason: str
    details: Any = None
    agent_id: str | None = Field(default=None, description="The agent; null on a refused identity (unproven).")
    claimed_agent_id: str | None = Field(
        default=None, description="On a refused identity: the agent the event claimed to be (unproven)."
    )
    claimed_tenant: str | None = Field(default=None, description="On a refused identity: the tenant it claimed.")
    identity_refusal: bool = Field(
        default=False, description="Unsigned, bad signature, unknown or revoked key, or a bad enrollment token."
    )
    event_type: str | None = None
    source: str = ""
    payload: dict[str, Any] = Field(default_factory=dict)
    received_at: Timestamp


class RejectionPage(View):
    items: list[RejectionView]
    next_page_token: str | None = None


class HistorySample(View):
    """One accepted heartbeat."""

    seq: int
    at: Timestamp = Field(description="Server receive time.")
    sent_at: Timestamp | None = Field(default=None, description="The agent's clock when it sent the heartbeat.")
    status: str = Field(description="The status the agent reported.")
    metrics: dict[str, float | int] = Field(default_factory=dict)


class HistoryView(View):
    agent_id: str
    samples: list[HistorySample] = Field(description="Stored heartbeat samples, oldest first.")


_DEFAULT_HEALTH = HealthConfig()

#: Tracked command states that are over (helper "commands" owns the entry shape).
FINISHED_COMMANDS = frozenset({"done", "failed"})


def pending_commands(record: AgentRecord) -> list[PendingCommandView]:
    """The agent's tracked commands not done or failed, oldest first."""
    pending = [
        PendingCommandView.model_validate({"command_id": cid, "state": "sent", **entry})
        for cid, entry in record.commands.items()
        if entry.get("state") not in FINISHED_COMMANDS and entry.get("command")
    ]
    return sorted(pending, key=lambda c: (c.sent_at is None, c.sent_at or datetime.min.replace(tzinfo=UTC)))


def agent_view(record: AgentRecord, health: HealthConfig | None = None, at: datetime | None = None) -> AgentView:
    """The public view of a stored agent (attributes are copied by name, extra ones dropped). Its security
    score is the one at ``at`` (now), recovered since it was stored at ``health``'s rate (default: the
    deployment's default rate, so that showing an agent reads no tenant settings)."""
    view = AgentView.model_validate(record, from_attributes=True)
    score = score_at(record.health, at or datetime.now(UTC), health or _DEFAULT_HEALTH)
    update: dict[str, Any] = {"security_score": round(score, 1), "pending_commands": pending_commands(record)}
    if record.ml:
        update["learned"] = LearnedView.model_validate(record.ml)
    return view.model_copy(update=update)
