"""The REST API's response bodies: one definition serves the responses and the OpenAPI document.

These are views, not the stored documents: internal bookkeeping of an agent (event ids kept
for deduplication, the unflushed history tail, ...) stays out of the API so it can change freely.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from shared.domain.agents import AgentRecord
from shared.domain.lifecycle import State


def _aware(value: datetime) -> datetime:
    """Firestore returns aware datetimes; a naive one is UTC, so every timestamp serialises as RFC 3339."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


Timestamp = Annotated[datetime, AfterValidator(_aware)]


class _View(BaseModel):
    # Stored documents carry more fields than a view shows (expire_at, ...): drop them.
    model_config = ConfigDict(extra="ignore", frozen=True)


class AgentView(_View):
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


class AgentPage(_View):
    items: list[AgentView]
    next_page_token: str | None = Field(
        default=None, description="Pass as page_token for the next page; null on the last page."
    )


class RejectionView(_View):
    """An event the fleet refused, with the reason and the original payload (for diagnosis and replay)."""

    id: str = Field(description="The Pub/Sub message id.")
    code: str = Field(description="Machine-readable reason, e.g. schema_violation, unknown_agent.")
    reason: str
    details: Any = None
    agent_id: str | None = None
    event_type: str | None = None
    source: str = ""
    payload: dict[str, Any] = Field(default_factory=dict)
    received_at: Timestamp


class RejectionPage(_View):
    items: list[RejectionView]
    next_page_token: str | None = None


class HistorySample(_View):
    """One accepted heartbeat."""

    seq: int
    at: Timestamp = Field(description="Server receive time.")
    sent_at: Timestamp | None = Field(default=None, description="The agent's clock when it sent the heartbeat.")
    status: str = Field(description="The status the agent reported.")
    metrics: dict[str, float | int] = Field(default_factory=dict)


class HistoryView(_View):
    agent_id: str
    samples: list[HistorySample] = Field(description="Stored heartbeat samples, oldest first.")


class ErrorDetail(_View):
    code: str = Field(
        description="bad_request, unauthorized, forbidden, not_found, method_not_allowed, internal or unavailable."
    )
    reason: str


class ErrorBody(_View):
    """Every error response has this shape, whatever its status."""

    error: ErrorDetail


class Health(_View):
    status: Literal["ok"] = "ok"


#: Every model the OpenAPI document describes (components are generated from these).
MODELS: tuple[type[BaseModel], ...] = (
    AgentView,
    AgentPage,
    RejectionView,
    RejectionPage,
    HistorySample,
    HistoryView,
    ErrorBody,
    Health,
)


def agent_view(record: AgentRecord) -> AgentView:
    """The public view of a stored agent (attributes are copied by name, extra ones dropped)."""
    return AgentView.model_validate(record, from_attributes=True)
