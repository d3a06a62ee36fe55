"""The REST API's operator bodies: quarantine, decommission, an agent's edit (PATCH), search and bulk
actions (shared/api/agent_ops.py, shared/api/bulk.py)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fleet_agent.messages.fields import Label, ShortText
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from shared.api.bodies.common import Reason, Timestamp, View
from shared.api.bodies.costs import HoldView
from shared.domain.lifecycle import State

LabelValue = Annotated[str, StringConstraints(max_length=200)]


class QuarantineRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    reason: Reason


class DecommissionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    reason: Reason


class AgentUpdate(BaseModel):
    """Some of an agent's owner, labels and heartbeat interval; what is set here wins over the agent's
    later registrations. ``labels`` is merged into the agent's (a null value removes that label)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    owner: ShortText | None = None
    labels: dict[Label, LabelValue | None] | None = Field(default=None, max_length=64)
    heartbeat_interval_s: int | None = Field(default=None, ge=1, le=3600)

    @model_validator(mode="after")
    def _something(self) -> AgentUpdate:
        if self.owner is None and self.labels is None and self.heartbeat_interval_s is None:
            raise ValueError("set at least one of owner, labels, heartbeat_interval_s")
        return self

    def edit(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


class QuarantineView(View):
    """An agent's status and holds after a quarantine."""

    agent_id: str
    tenant: str
    status: State
    status_since: Timestamp
    holds: dict[str, HoldView]
    changed: bool = Field(description="False: it was quarantined already (its command was sent again).")


class DecommissionView(View):
    agent_id: str
    tenant: str
    status: State
    changed: bool = Field(description="False: it was decommissioned and cleaned up already.")
    cleanup: dict[str, Any] = Field(
        description="What this call cleaned up: holds lifted, commands closed, key_revoked, subscription_deleted."
    )


class BulkFilter(BaseModel):
    """Which agents a bulk action acts on: the search's filters (every one given must match)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tenant: Label | None = None
    capability: Label | None = None
    label: Annotated[str, StringConstraints(max_length=300, pattern=r"^[^:]+:.*$")] | None = None
    version: ShortText | None = None
    status: State | None = None
    liveness: Literal["ok", "late", "offline", "frozen"] | None = None
    min_security: float | None = Field(default=None, ge=0, le=100)
    max_security: float | None = Field(default=None, ge=0, le=100)
    agent_ids: list[Label] | None = Field(default=None, min_length=1, max_length=30, description="Only these agents.")


class BulkRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    action: Literal["pause", "resume", "drain", "label", "quarantine", "decommission"]
    filter: BulkFilter = Field(default_factory=BulkFilter)
    dry_run: bool = False
    reason: Reason
    labels: dict[Label, LabelValue | None] | None = Field(default=None, max_length=64)
    page_token: str | None = Field(default=None, max_length=4096, description="The next page of a previous call.")
    request_id: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{7,63}$",
        description="Makes a retry idempotent: the same id asks the same approval and sends the same command ids.",
    )

    @model_validator(mode="after")
    def _labels(self) -> BulkRequest:
        if (self.action == "label") != (self.labels is not None):
            raise ValueError("labels is required for action label, and only for it")
        return self


class BulkResult(View):
    agent_id: str
    result: Literal["applied", "unchanged", "refused", "failed", "would_apply", "requested"]
    reason: str | None = None


class BulkView(View):
    action: str
    dry_run: bool
    results: list[BulkResult]
    approval_id: str | None = Field(default=None, description="Destructive actions: the approval asked for.")
    next_page_token: str | None = Field(
        default=None, description="More agents match than one call acts on: call again with this token."
    )


#: This module's views and request bodies, for the OpenAPI document (shared/api/bodies/__init__.py).
MODELS: tuple[type[BaseModel], ...] = (QuarantineView, DecommissionView, BulkView)
REQUEST_MODELS: tuple[type[BaseModel], ...] = (
    QuarantineRequest,
    DecommissionRequest,
    AgentUpdate,
    BulkRequest,
)
