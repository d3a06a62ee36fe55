"""What an agent says of itself: its registration (resources, budget) and its heartbeats (status, metrics)."""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator

from fleet_agent.messages.fields import (
    MAX_INT,
    NAME_PATTERN,
    VERSION_PATTERN,
    AgentId,
    Label,
    LimitTokens,
    LimitUsd,
    ShortText,
    Strict,
    TenantId,
)


class Resources(Strict):
    """What the agent runs on; used later for placement and cost estimates."""

    cpu: float = Field(default=1.0, ge=0, le=1024)
    memory_gb: float = Field(default=1.0, ge=0, le=16384)
    gpu: int = Field(default=0, ge=0, le=64)


class BudgetSpec(Strict):
    """Budget limits of an agent or a tenant, for any subset of the UTC hour, day and month.

    Hard limits stop the agent (``budget_exhausted``); soft limits raise an alert. A soft limit is
    ``soft_ratio`` of its hard limit unless given explicitly. ``alert_at`` are the shares of each
    hard limit at which a threshold alert fires, once per period.
    """

    hourly_usd: LimitUsd | None = None
    daily_usd: LimitUsd | None = None
    monthly_usd: LimitUsd | None = None
    hourly_tokens: LimitTokens | None = None
    daily_tokens: LimitTokens | None = None
    monthly_tokens: LimitTokens | None = None
    soft_ratio: float = Field(default=0.8, gt=0, le=1)
    soft_hourly_usd: LimitUsd | None = None
    soft_daily_usd: LimitUsd | None = None
    soft_monthly_usd: LimitUsd | None = None
    soft_hourly_tokens: LimitTokens | None = None
    soft_daily_tokens: LimitTokens | None = None
    soft_monthly_tokens: LimitTokens | None = None
    alert_at: list[Annotated[float, Field(gt=0, le=10)]] = Field(default_factory=lambda: [0.5, 0.8, 1.0], max_length=10)

    @model_validator(mode="after")
    def _soft_below_hard(self) -> BudgetSpec:
        for name in ("hourly_usd", "daily_usd", "monthly_usd", "hourly_tokens", "daily_tokens", "monthly_tokens"):
            soft, hard = getattr(self, f"soft_{name}"), getattr(self, name)
            if soft is not None and hard is not None and soft > hard:
                raise ValueError(f"soft_{name} ({soft}) is above {name} ({hard})")
        return self


class KeyClaim(Strict):
    """The agent's public key, on a registration. With an enrollment token: the agent's first key (or its
    first after a revocation), bound to it by the fleet. Without one: a rotation, signed by the current key.
    Either way the registration is signed by the private half of a key the fleet accepts."""

    public_key: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{43}$")]
    enrollment_token: Annotated[str, StringConstraints(min_length=1, max_length=256)] | None = None


class Registration(Strict):
    """Sent when an agent starts (and again on every restart or upgrade)."""

    agent_id: AgentId
    tenant: TenantId
    name: ShortText
    agent_type: Annotated[str, StringConstraints(min_length=1, max_length=63)]
    version: Annotated[str, StringConstraints(pattern=VERSION_PATTERN)]
    owner: ShortText
    capabilities: list[Label] = Field(default_factory=list, max_length=100)
    resources: Resources = Field(default_factory=Resources)
    heartbeat_interval_s: int = Field(default=30, ge=1, le=3600)
    labels: dict[Label, Annotated[str, StringConstraints(max_length=200)]] = Field(default_factory=dict, max_length=64)
    #: The agent's budget as deployed with it. A budget set through the API wins over it.
    budget: BudgetSpec | None = None
    #: Enrollment or rotation (see :class:`KeyClaim`); None on an ordinary signed restart.
    identity: KeyClaim | None = None
    #: When the agent sent it. Signed registrations carry it: one older than the last the fleet accepted,
    #: or far from when Pub/Sub received it, changes nothing (a captured registration cannot be replayed).
    sent_at: AwareDatetime | None = None
    #: The agent spends budget leases (an SDK that checks each call against a lease): the fleet grants
    #: its first lease on registration and the next ones on request (fleet_agent.messages.leases).
    leases: bool = Field(default=False, strict=True)
    #: Protocol features this SDK understands (``commands.v2``: the remediation commands and their acks,
    #: fleet_agent.messages.commands.COMMANDS_V2). The fleet sends a feature's commands only to agents
    #: that list it; an agent registered without it is left to an operator.
    supports: list[Label] = Field(default_factory=list, max_length=32)


class ReportedStatus(StrEnum):
    """The agent's own view of itself. The server maps it onto its lifecycle."""

    STARTING = "starting"
    ACTIVE = "active"
    IDLE = "idle"
    BUSY = "busy"
    DEGRADED = "degraded"
    STOPPING = "stopping"


MAX_EXTRA_METRICS = 32


class HeartbeatMetrics(BaseModel):
    """A snapshot of the agent's health. Extra numeric fields are allowed (up to 32)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    cpu_pct: float | None = Field(default=None, ge=0, le=100)
    memory_pct: float | None = Field(default=None, ge=0, le=100)
    error_rate: float | None = Field(default=None, ge=0, le=1)
    latency_ms_p95: float | None = Field(default=None, ge=0, le=86_400_000)
    active_tasks: int | None = Field(default=None, ge=0, le=MAX_INT)
    completed_tasks: int | None = Field(default=None, ge=0, le=MAX_INT)
    failed_tasks: int | None = Field(default=None, ge=0, le=MAX_INT)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bools(cls, value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError("metrics are numbers, not booleans")
        return value

    def model_post_init(self, __context: Any) -> None:
        extra = self.model_extra or {}
        if len(extra) > MAX_EXTRA_METRICS:
            raise ValueError(f"at most {MAX_EXTRA_METRICS} extra metrics")
        for key, value in extra.items():
            if not isinstance(key, str) or not re.fullmatch(NAME_PATTERN, key):
                raise ValueError(f"extra metric name {key!r} must match {NAME_PATTERN}")
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"extra metric {key!r} must be a number")
            if not math.isfinite(value) or (isinstance(value, int) and abs(value) > MAX_INT):
                raise ValueError(f"extra metric {key!r} must be finite and fit in 64 bits")

    def as_dict(self) -> dict[str, float | int]:
        """The metrics that were reported (unset standard fields left out)."""
        return {k: v for k, v in self.model_dump().items() if v is not None}


class Heartbeat(Strict):
    """Sent every ``heartbeat_interval_s``. ``seq`` must grow per agent, across restarts."""

    agent_id: AgentId
    seq: int = Field(ge=0, le=MAX_INT)
    sent_at: AwareDatetime
    status: ReportedStatus
    metrics: HeartbeatMetrics = Field(default_factory=HeartbeatMetrics)

    @field_validator("sent_at")
    @classmethod
    def _plausible_time(cls, value: datetime) -> datetime:
        # Kept for diagnosis, never trusted; but it must be storable (years 2000-2999 in UTC).
        try:
            year = value.astimezone(UTC).year
        except OverflowError:
            year = 0
        if not 2000 <= year <= 2999:
            raise ValueError("sent_at must be between the years 2000 and 2999")
        return value
