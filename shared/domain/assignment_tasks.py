"""Task assignment, the task's side: the request, the weights, the tenant's settings, the task as the
rules see it, and the outcome report. Pure: no I/O.

The rules that filter and rank the agents are in shared/domain/assignment.py (filtering) and
shared/domain/assignment_ranking.py (scores and reasons); the agent's side (snapshot, outcome summary)
is shared/domain/assignment_agents.py.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any

from fleet_agent.contracts import NAME_PATTERN, TenantId
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator

from shared.domain.episodes import merged

# --- the request -----------------------------------------------------------------------------------

#: A caller's task id: a Firestore document id and one URL path segment.
TASK_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$"
TaskId = Annotated[str, StringConstraints(pattern=TASK_ID_PATTERN)]
Capability = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]
#: Ids that would read as a route of their own (``/v1/tasks/assign``).
RESERVED_IDS = frozenset({"assign"})
#: Longest estimated duration accepted: 30 days.
MAX_DURATION_S = 30 * 86400.0


class Priority(StrEnum):
    LOW = "low"
    NORMAL = "normal"
    HIGH = "high"
    CRITICAL = "critical"


#: Ordinal of each priority (a model feature).
PRIORITY_LEVEL: dict[Priority, int] = {Priority.LOW: 0, Priority.NORMAL: 1, Priority.HIGH: 2, Priority.CRITICAL: 3}
#: The SLA weight is multiplied by this when the task has a deadline: a miss costs more the higher the
#: priority (then the weights are normalised again).
PRIORITY_SLA_FACTOR: dict[Priority, float] = {
    Priority.LOW: 0.5,
    Priority.NORMAL: 1.0,
    Priority.HIGH: 2.0,
    Priority.CRITICAL: 4.0,
}


def _no_bools(value: Any) -> Any:
    """JSON ``true`` is not a number (pydantic would read it as 1)."""
    if isinstance(value, bool):
        raise ValueError("must be a number, not a boolean")
    return value


class Weights(BaseModel):
    """Relative weights of the four components; any scale (they are normalised), not all 0."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    success: float = Field(default=40.0, ge=0, le=1000)
    cost: float = Field(default=30.0, ge=0, le=1000)
    availability: float = Field(default=20.0, ge=0, le=1000)
    sla: float = Field(default=10.0, ge=0, le=1000)

    _check_numbers = field_validator("*", mode="before")(_no_bools)

    @model_validator(mode="after")
    def _positive(self) -> Weights:
        if self.success + self.cost + self.availability + self.sla <= 0:
            raise ValueError("the weights must not all be 0")
        return self

    def over(self, base: Weights) -> Weights:
        """These weights where they were given, ``base`` elsewhere (a request's over the tenant's).
        Raises ``ValueError`` (a pydantic ``ValidationError``) when that leaves them all 0."""
        return Weights.model_validate({**base.model_dump(), **self.model_dump(exclude_unset=True)})


COMPONENTS = ("success", "cost", "availability", "sla")


class AssignmentConfig(BaseModel):
    """A tenant's task-assignment settings (``tenants/{tenant}.tasks``); every field has a default."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    weights: Weights = Weights()
    #: Outcomes the tenant must have recorded before the model is trusted over the heuristic.
    min_outcomes: int = Field(default=50, ge=0, le=1_000_000)

    @classmethod
    def for_tenant(cls, overrides: Mapping[str, Any] | None) -> AssignmentConfig:
        return cls.model_validate(merged(cls, dict(overrides or {})))


class TaskResources(BaseModel):
    """What the task needs of the agent's registered resources (each at least this much)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cpu: float | None = Field(default=None, ge=0, le=1024)
    memory_gb: float | None = Field(default=None, ge=0, le=16384)
    gpu: float | None = Field(default=None, ge=0, le=64)

    _check_numbers = field_validator("*", mode="before")(_no_bools)

    def asked(self) -> dict[str, float]:
        return {k: float(v) for k, v in self.model_dump(exclude_none=True).items()}


class TaskRequest(BaseModel):
    """``POST /v1/tasks/assign``: the task to place. Unknown fields are refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    task_id: TaskId = Field(description="The caller's id of the task; assigning it again returns the stored pick.")
    tenant: TenantId
    required_capabilities: list[Capability] = Field(default_factory=list, max_length=50)
    priority: Priority = Priority.NORMAL
    deadline: AwareDatetime | None = Field(default=None, description="RFC 3339 with a time zone.")
    estimated_duration_s: float = Field(gt=0, le=MAX_DURATION_S)
    resources: TaskResources | None = None
    #: Overrides of the tenant's weights for this task only (components left out keep the tenant's).
    weights: Weights | None = None

    _check_duration = field_validator("estimated_duration_s", mode="before")(_no_bools)

    @field_validator("task_id")
    @classmethod
    def _not_reserved(cls, value: str) -> str:
        if value in RESERVED_IDS:
            raise ValueError(f"{value!r} is reserved; choose another task id")
        return value

    @field_validator("required_capabilities")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        return list(dict.fromkeys(value))


@dataclass(frozen=True)
class Task:
    """A task as the rules see it."""

    task_id: str
    tenant: str
    capabilities: tuple[str, ...]
    priority: Priority
    deadline: datetime | None
    estimated_duration_s: float
    resources: Mapping[str, float] = field(default_factory=dict)

    @classmethod
    def of(cls, request: TaskRequest) -> Task:
        return cls(
            task_id=request.task_id,
            tenant=request.tenant,
            capabilities=tuple(request.required_capabilities),
            priority=request.priority,
            deadline=request.deadline,
            estimated_duration_s=float(request.estimated_duration_s),
            resources=request.resources.asked() if request.resources else {},
        )


class OutcomeReport(BaseModel):
    """``POST /v1/tasks/{id}/outcome``: how the task went. Unknown fields are refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    success: bool = Field(strict=True)
    duration_s: float | None = Field(default=None, ge=0, le=MAX_DURATION_S)
    cost_usd: Decimal | None = Field(default=None, ge=0, le=Decimal(1_000_000), decimal_places=9)
    error: str | None = Field(default=None, min_length=1, max_length=200)

    _check_numbers = field_validator("duration_s", "cost_usd", mode="before")(_no_bools)

    @model_validator(mode="after")
    def _error_means_failure(self) -> OutcomeReport:
        if self.success and self.error is not None:
            raise ValueError("error is only for a task that failed (success false)")
        return self

    @property
    def cost_nanos(self) -> int | None:
        return None if self.cost_usd is None else int(self.cost_usd * 1_000_000_000)

    def as_doc(self) -> dict[str, Any]:
        """As stored on the task (the cost as exact decimal text)."""
        return {
            "success": self.success,
            "duration_s": self.duration_s,
            "cost_usd": None if self.cost_usd is None else str(self.cost_usd),
            "error": self.error,
        }

    def same_as(self, stored: Mapping[str, Any]) -> bool:
        """Whether ``stored`` (an outcome's document) says the same: then a repeat is a no-op."""
        cost = stored.get("cost_usd")
        return (
            bool(stored.get("success")) == self.success
            and stored.get("duration_s") == self.duration_s
            and (None if cost is None else Decimal(str(cost))) == self.cost_usd
            and stored.get("error") == self.error
        )
