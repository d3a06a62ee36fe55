"""Task assignment (issue 7): which available agent of a tenant should take a task, and why. Pure: no I/O.

The API (shared/api/tasks.py) reads the tenant's agents, their outcome summaries (``task_stats``) and
the model in service, then asks this module to

1. **filter** the agents (:func:`exclusion`, :func:`filter_candidates`): same tenant; running
   (:data:`AVAILABLE`: active, idle, busy or degraded) and heard from (liveness not offline or frozen);
   no hold (paused, budget, tenant budget, quarantine, open circuit breaker); every required
   capability; at least the resources asked for. Each excluded agent is counted under one reason, so a
   refusal can say "2 agents lack capability gpu; 1 agent is paused" (:func:`explain_exclusions`);
2. **score** each candidate in [0, 1] on four components (:func:`rank`):

   - *success*: the predicted probability that the agent completes the task, from the model or, with
     too little data, the heuristic :attr:`AgentStats.success_rate` (a Beta(2,1) prior: as if every agent had
     succeeded twice and failed once before its first task, so one lucky outcome does not make an
     agent the best and a new agent starts at 2/3);
   - *cost*: the expected cost of the task on the agent relative to the cheapest candidate
     (``cheapest / cost``): the mean recorded cost per task, else the agent's spend rate this month
     times the estimated duration; unknown is neutral (0.5);
   - *availability*: fewer active tasks (the last heartbeat's ``active_tasks`` plus tasks assigned since
     that heartbeat, which it cannot know of yet), lower CPU, a recent heartbeat; busy and degraded
     agents count less;
   - *SLA*: the probability of finishing before the deadline, from the estimated duration scaled by
     how the agent's recorded durations compared with their estimates, plus its p95 latency. Without a
     deadline the component's weight is 0; with one, its weight is multiplied by the priority's factor
     (:data:`PRIORITY_SLA_FACTOR`) so a critical task weighs a likely miss more;

3. **choose** the highest weighted sum (weights normalised to sum 1; default 40/30/20/10), ties broken
   by agent id, and explain the choice in a few short :attr:`Choice.reasons`.

Confidence is the chosen agent's predicted success probability.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any

from fleet_agent.contracts import NAME_PATTERN, TenantId
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator

from shared.domain.agent_record import Liveness
from shared.domain.episodes import merged
from shared.domain.lifecycle import State

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


# --- agents and their outcome summaries ---------------------------------------------------------------


@dataclass(frozen=True)
class AgentSnapshot:
    """What assignment needs of an agent (from its record; built directly by the simulator)."""

    agent_id: str
    tenant: str
    status: State
    capabilities: frozenset[str]
    resources: Mapping[str, float]
    metrics: Mapping[str, float]
    last_heartbeat_at: datetime | None
    heartbeat_interval_s: float = 30.0
    liveness: Liveness = Liveness.OK
    holds: frozenset[str] = frozenset()
    registered_at: datetime | None = None

    @classmethod
    def of(cls, record: Any) -> AgentSnapshot:
        """From an ``AgentRecord`` (typed loosely: the domain of agents imports much more)."""
        resources = {k: float(v) for k, v in (record.resources or {}).items() if _is_number(v)}
        return cls(
            agent_id=record.agent_id,
            tenant=record.tenant,
            status=State(record.status),
            capabilities=frozenset(record.capabilities),
            resources=resources,
            metrics={k: float(v) for k, v in record.metrics.items() if _is_number(v)},
            last_heartbeat_at=record.last_heartbeat_at,
            heartbeat_interval_s=float(record.heartbeat_interval_s),
            liveness=Liveness(record.liveness),
            holds=frozenset(record.holds),
            registered_at=record.registered_at,
        )

    def metric(self, name: str) -> float | None:
        value = self.metrics.get(name)
        return None if value is None or not math.isfinite(value) else float(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


#: Beta(2,1) prior of the heuristic success rate: 2 successes and 1 failure before any outcome.
PRIOR_SUCCESSES = 2.0
PRIOR_FAILURES = 1.0
PRIOR_RATE = PRIOR_SUCCESSES / (PRIOR_SUCCESSES + PRIOR_FAILURES)
#: Weight of each new outcome in the recent success rate (an exponential moving average).
RECENT_ALPHA = 0.1
#: The duration ratio (observed / estimated) starts from 1 as if seen this many times.
PRIOR_RATIO_N = 2.0
#: Slots of recent assignment times kept per agent (by a hash of the task id; a collision loses one).
ASSIGNED_SLOTS = 16


def smoothed(successes: float, outcomes: float) -> float:
    """The Beta(2,1) posterior mean of a success rate."""
    return (successes + PRIOR_SUCCESSES) / (outcomes + PRIOR_SUCCESSES + PRIOR_FAILURES)


@dataclass(frozen=True)
class AgentStats:
    """An agent's outcome summary (``task_stats/{agent_id}``), updated with each recorded outcome."""

    outcomes: int = 0
    successes: int = 0
    #: Exponential moving average of success (``RECENT_ALPHA``), from the prior mean.
    recent_rate: float = PRIOR_RATE
    #: Outcomes that reported a duration, and the sum of duration / estimated duration over them.
    duration_n: int = 0
    ratio_sum: float = 0.0
    duration_sum_s: float = 0.0
    #: Outcomes that reported a cost, and their sum (nano-dollars: exact).
    cost_n: int = 0
    cost_nanos: int = 0
    #: Per capability the task required: (outcomes, successes).
    capabilities: Mapping[str, tuple[int, int]] = field(default_factory=dict)
    last_outcome_at: datetime | None = None
    #: Tasks assigned to the agent, and the recent assignment times (``ASSIGNED_SLOTS`` slots).
    assigned: int = 0
    assigned_at: tuple[datetime, ...] = ()

    @property
    def success_rate(self) -> float:
        """The heuristic: the Beta(2,1)-smoothed success rate."""
        return smoothed(self.successes, self.outcomes)

    def capability_rate(self, capabilities: Iterable[str]) -> tuple[float, int]:
        """The smoothed success rate on the weakest of ``capabilities`` and its outcome count (the
        agent's overall rate and count when none is given)."""
        rates = [
            (smoothed(ok, n), n) for n, ok in (self.capabilities.get(c, (0, 0)) for c in dict.fromkeys(capabilities))
        ]
        return min(rates) if rates else (self.success_rate, self.outcomes)

    @property
    def duration_ratio(self) -> float:
        """How long the agent's tasks took relative to their estimates (1 until measured)."""
        ratio = (self.ratio_sum + PRIOR_RATIO_N) / (self.duration_n + PRIOR_RATIO_N)
        return min(max(ratio, 0.1), 20.0)

    @property
    def cost_per_task_usd(self) -> float | None:
        return self.cost_nanos / self.cost_n / 1e9 if self.cost_n else None

    def assigned_since(self, at: datetime | None) -> int:
        """Assignments after ``at`` (after the last heartbeat: load it cannot report yet)."""
        return sum(1 for t in self.assigned_at if at is None or t > at)

    def with_outcome(
        self,
        *,
        success: bool,
        capabilities: Iterable[str],
        at: datetime,
        estimated_duration_s: float,
        duration_s: float | None = None,
        cost_nanos: int | None = None,
    ) -> AgentStats:
        """The summary after one more outcome."""
        caps = dict(self.capabilities)
        for cap in dict.fromkeys(capabilities):
            n, ok = caps.get(cap, (0, 0))
            caps[cap] = (n + 1, ok + int(success))
        timed = duration_s is not None and estimated_duration_s > 0
        return replace(
            self,
            outcomes=self.outcomes + 1,
            successes=self.successes + int(success),
            recent_rate=(1 - RECENT_ALPHA) * self.recent_rate + RECENT_ALPHA * float(success),
            duration_n=self.duration_n + int(timed),
            ratio_sum=self.ratio_sum + (float(duration_s or 0) / estimated_duration_s if timed else 0.0),
            duration_sum_s=self.duration_sum_s + float(duration_s or 0),
            cost_n=self.cost_n + int(cost_nanos is not None),
            cost_nanos=self.cost_nanos + int(cost_nanos or 0),
            capabilities=caps,
            last_outcome_at=max(at, self.last_outcome_at) if self.last_outcome_at else at,
        )

    def outcome_fields(self) -> dict[str, Any]:
        """The fields an outcome changes, as stored."""
        return {
            "outcomes": self.outcomes,
            "successes": self.successes,
            "recent_rate": self.recent_rate,
            "duration_n": self.duration_n,
            "ratio_sum": self.ratio_sum,
            "duration_sum_s": self.duration_sum_s,
            "cost_n": self.cost_n,
            "cost_nanos": self.cost_nanos,
            "capabilities": {c: {"n": n, "ok": ok} for c, (n, ok) in self.capabilities.items()},
            "last_outcome_at": self.last_outcome_at,
        }

    @classmethod
    def from_doc(cls, data: Mapping[str, Any] | None) -> AgentStats:
        data = data or {}
        caps = {
            str(c): (int(v.get("n") or 0), int(v.get("ok") or 0))
            for c, v in (data.get("capabilities") or {}).items()
            if isinstance(v, Mapping)
        }
        slots = data.get("assigned_at")
        slots = slots if isinstance(slots, Mapping) else {}
        times = tuple(sorted(t for t in slots.values() if isinstance(t, datetime)))
        return cls(
            outcomes=int(data.get("outcomes") or 0),
            successes=int(data.get("successes") or 0),
            recent_rate=float(data.get("recent_rate", PRIOR_RATE)),
            duration_n=int(data.get("duration_n") or 0),
            ratio_sum=float(data.get("ratio_sum") or 0.0),
            duration_sum_s=float(data.get("duration_sum_s") or 0.0),
            cost_n=int(data.get("cost_n") or 0),
            cost_nanos=int(data.get("cost_nanos") or 0),
            capabilities=caps,
            last_outcome_at=data.get("last_outcome_at"),
            assigned=int(data.get("assigned") or 0),
            assigned_at=times,
        )


@dataclass(frozen=True)
class RecordedOutcome:
    """One training row: the features of the (agent, task) pair as they were when the task was assigned
    (stored with the assignment, so training never sees what happened after) and whether it succeeded."""

    task_id: str
    tenant: str
    agent_id: str
    success: bool
    #: When the outcome was recorded (training splits by it: the most recent are held out).
    at: datetime
    features: Mapping[str, float]


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


def assigned_slot(task_id: str) -> str:
    """The slot of ``assigned_at`` a task's assignment time goes to (stable: FNV-1a of the id)."""
    h = 2166136261
    for byte in task_id.encode():
        h = ((h ^ byte) * 16777619) & 0xFFFFFFFF
    return f"s{h % ASSIGNED_SLOTS:02d}"


def expected_duration_s(agent: AgentSnapshot, stats: AgentStats, task: Task) -> float:
    """The estimate scaled by the agent's record of durations against estimates, plus its p95 latency."""
    latency_s = (agent.metric("latency_ms_p95") or 0.0) / 1000.0
    return task.estimated_duration_s * stats.duration_ratio + latency_s


def load_of(agent: AgentSnapshot, stats: AgentStats) -> float:
    """Active tasks by the last heartbeat plus the tasks assigned since."""
    return (agent.metric("active_tasks") or 0.0) + stats.assigned_since(agent.last_heartbeat_at)


def heartbeat_age_s(agent: AgentSnapshot, now: datetime) -> float | None:
    return None if agent.last_heartbeat_at is None else max(0.0, (now - agent.last_heartbeat_at).total_seconds())


# --- filtering ---------------------------------------------------------------------------------------

#: Running states: an agent in one of them can take work.
AVAILABLE: frozenset[State] = frozenset({State.ACTIVE, State.IDLE, State.BUSY, State.DEGRADED})


@dataclass(frozen=True, order=True)
class Exclusion:
    """Why an agent cannot take the task, phrased for one agent and for several."""

    one: str
    many: str

    def counted(self, n: int) -> str:
        return f"{n} agent{'s' if n != 1 else ''} {self.one if n == 1 else self.many}"


def _be(words: str) -> Exclusion:
    return Exclusion(f"is {words}", f"are {words}")


#: The reason of each hold (checked before the state the hold put the agent in).
HOLD_EXCLUSIONS: dict[str, Exclusion] = {
    "pause": _be("paused"),
    "budget": _be("held by their budget"),
    "tenant_budget": _be("held by the tenant's budget"),
    "quarantine": _be("quarantined"),
    "breaker": Exclusion("has its circuit breaker open", "have their circuit breaker open"),
}
STATE_EXCLUSIONS: dict[State, Exclusion] = {
    State.REGISTERED: _be("registered but not running yet"),
    State.PROVISIONING: _be("still provisioning"),
    State.MAINTENANCE: _be("in maintenance"),
    State.QUARANTINED: _be("quarantined"),
    State.COMPROMISED: _be("compromised"),
    State.OFFLINE: _be("offline"),
    State.SUSPENDED: _be("suspended"),
    State.FROZEN: _be("frozen"),
    State.DECOMMISSIONING: _be("being decommissioned"),
    State.DECOMMISSIONED: _be("decommissioned"),
}
SILENT = _be("silent (liveness offline or frozen)")
OTHER_TENANT = Exclusion("belongs to another tenant", "belong to another tenant")


def exclusion(agent: AgentSnapshot, task: Task) -> Exclusion | None:
    """Why ``agent`` cannot take ``task`` (None: it can). One reason per agent, the most lasting first:
    gone, lacking capabilities or resources (it will not change), then held or not running (it may)."""
    if agent.tenant != task.tenant:
        return OTHER_TENANT
    if agent.status in (State.DECOMMISSIONED, State.DECOMMISSIONING):
        return STATE_EXCLUSIONS[agent.status]
    missing = [c for c in task.capabilities if c not in agent.capabilities]
    if missing:
        what = f"capabilit{'ies' if len(missing) > 1 else 'y'} {', '.join(missing)}"
        return Exclusion(f"lacks {what}", f"lack {what}")
    short = [name for name, need in sorted(task.resources.items()) if agent.resources.get(name, 0.0) < need]
    if short:
        what = ", ".join(f"{name} >= {_num(task.resources[name])}" for name in short)
        return Exclusion(f"has too little {what}", f"have too little {what}")
    if agent.holds:
        name = min(agent.holds)  # several holds: one reason, the same every time
        return HOLD_EXCLUSIONS.get(name, _be(f"held ({name})"))
    if agent.status not in AVAILABLE:
        return STATE_EXCLUSIONS.get(agent.status, _be(str(agent.status)))
    if agent.liveness in (Liveness.OFFLINE, Liveness.FROZEN):
        return SILENT
    return None


def filter_candidates(
    agents: Iterable[AgentSnapshot], task: Task
) -> tuple[list[AgentSnapshot], Counter[Exclusion], dict[Exclusion, list[str]]]:
    """The agents that can take the task (by id), and the others counted (and listed) by reason."""
    candidates: list[AgentSnapshot] = []
    excluded: Counter[Exclusion] = Counter()
    who: dict[Exclusion, list[str]] = {}
    for agent in sorted(agents, key=lambda a: a.agent_id):
        reason = exclusion(agent, task)
        if reason is None:
            candidates.append(agent)
        else:
            excluded[reason] += 1
            who.setdefault(reason, []).append(agent.agent_id)
    return candidates, excluded, who


def counted_exclusions(excluded: Counter[Exclusion]) -> list[str]:
    """``["2 agents lack capability gpu", "1 agent is paused"]``: most common reason first."""
    ordered = sorted(excluded.items(), key=lambda item: (-item[1], item[0].one))
    return [reason.counted(n) for reason, n in ordered]


def explain_exclusions(excluded: Counter[Exclusion]) -> str:
    """``2 agents lack capability gpu; 1 agent is paused``."""
    return "; ".join(counted_exclusions(excluded))


def no_candidate_reason(task: Task, agents: int, excluded: Counter[Exclusion]) -> str:
    """The 409's reason when no agent can take the task."""
    if agents == 0:
        return f"no agent can take task {task.task_id}: tenant {task.tenant} has no agents"
    return f"no agent can take task {task.task_id}: {explain_exclusions(excluded)}"


# --- scoring -----------------------------------------------------------------------------------------

#: Below this load an agent counts as half available at ``LOAD_HALF`` tasks.
LOAD_HALF = 2.0
#: Availability multiplier by state: a busy or degraded agent takes new work less readily.
STATE_FACTOR: dict[State, float] = {State.IDLE: 1.0, State.ACTIVE: 1.0, State.BUSY: 0.8, State.DEGRADED: 0.5}
#: A heartbeat younger than this many intervals is fresh; the freshness falls to 0 at ``STALE_INTERVALS``.
FRESH_INTERVALS = 1.5
STALE_INTERVALS = 3.0
#: A cost is compared with the cheapest as (cheapest + floor) / (cost + floor): tiny costs are all cheap.
COST_FLOOR_USD = 1e-4
#: Spread of the finishing time (share of the expected duration, plus seconds) for the SLA probability.
SLA_SPREAD = 0.25
SLA_SPREAD_S = 5.0
#: Neutral score of a component that cannot be judged (no cost known).
NEUTRAL = 0.5
#: Alternatives returned besides the chosen agent.
ALTERNATIVES = 3


@dataclass(frozen=True)
class Candidate:
    """A candidate with what its scores need beyond its snapshot."""

    agent: AgentSnapshot
    stats: AgentStats
    #: Predicted probability of success (the model's or the heuristic's).
    success: float
    #: Expected cost of this task on the agent (USD), and what it was derived from.
    expected_cost_usd: float | None = None
    cost_basis: str | None = None


@dataclass(frozen=True)
class Scored:
    agent_id: str
    score: float
    success: float
    cost: float
    availability: float
    sla: float
    expected_cost_usd: float | None
    cost_basis: str | None
    expected_duration_s: float
    load: float
    #: Seconds left before the deadline once the task is expected to be done (None: no deadline).
    slack_s: float | None

    def component(self, name: str) -> float:
        return float(getattr(self, name))

    def as_dict(self) -> dict[str, Any]:
        return {
            "agent_id": self.agent_id,
            "score": round(self.score, 6),
            "success": round(self.success, 6),
            "cost": round(self.cost, 6),
            "availability": round(self.availability, 6),
            "sla": round(self.sla, 6),
            "expected_cost_usd": None if self.expected_cost_usd is None else round(self.expected_cost_usd, 9),
            "cost_basis": self.cost_basis,
            "expected_duration_s": round(self.expected_duration_s, 3),
            "load": self.load,
            "slack_s": None if self.slack_s is None else round(self.slack_s, 3),
        }


@dataclass(frozen=True)
class Choice:
    chosen: Scored
    #: Every candidate, best first.
    ranked: tuple[Scored, ...]
    #: The weights applied (normalised, the SLA's after the deadline and priority).
    weights: Mapping[str, float]
    reasons: tuple[str, ...]

    @property
    def confidence(self) -> float:
        return self.chosen.success

    @property
    def alternatives(self) -> tuple[Scored, ...]:
        return self.ranked[1 : 1 + ALTERNATIVES]


def effective_weights(weights: Weights, task: Task) -> dict[str, float]:
    """Normalised weights; the SLA's is 0 without a deadline and scaled by priority with one. If that
    leaves nothing (only the SLA weighted and no deadline), every candidate scores 0 and ids decide."""
    raw = weights.model_dump()
    raw["sla"] = raw["sla"] * PRIORITY_SLA_FACTOR[task.priority] if task.deadline is not None else 0.0
    total = sum(raw.values())
    return {name: (raw[name] / total if total > 0 else 0.0) for name in COMPONENTS}


def availability(agent: AgentSnapshot, stats: AgentStats, now: datetime) -> float:
    """State factor x (half load, a quarter CPU headroom, a quarter heartbeat freshness)."""
    load = load_of(agent, stats)
    load_score = 1.0 / (1.0 + load / LOAD_HALF)
    cpu = agent.metric("cpu_pct")
    cpu_score = NEUTRAL if cpu is None else 1.0 - min(max(cpu, 0.0), 100.0) / 100.0
    age = heartbeat_age_s(agent, now)
    if age is None:
        fresh = 0.0
    else:
        intervals = age / max(agent.heartbeat_interval_s, 1.0)
        span = STALE_INTERVALS - FRESH_INTERVALS
        fresh = 1.0 if intervals <= FRESH_INTERVALS else max(0.0, 1.0 - (intervals - FRESH_INTERVALS) / span)
    if agent.liveness is Liveness.LATE:
        fresh = 0.0
    return STATE_FACTOR.get(agent.status, NEUTRAL) * (0.5 * load_score + 0.25 * cpu_score + 0.25 * fresh)


def sla_probability(expected_s: float, task: Task, now: datetime) -> tuple[float, float | None]:
    """(probability of finishing before the deadline, the slack in seconds); (1, None) without one.
    The finishing time is taken as normal around the expectation with a spread of a quarter of it."""
    if task.deadline is None:
        return 1.0, None
    slack = (task.deadline - now).total_seconds() - expected_s
    spread = SLA_SPREAD * expected_s + SLA_SPREAD_S
    return 0.5 * (1.0 + math.erf(slack / (spread * math.sqrt(2.0)))), slack


def cost_scores(costs: Sequence[float | None]) -> list[float]:
    """Relative to the cheapest known cost: (cheapest + floor) / (cost + floor); unknown is neutral."""
    known = [c for c in costs if c is not None]
    if not known:
        return [NEUTRAL] * len(costs)
    cheapest = min(known)
    return [NEUTRAL if c is None else (cheapest + COST_FLOOR_USD) / (c + COST_FLOOR_USD) for c in costs]


def rank(candidates: Sequence[Candidate], task: Task, weights: Weights, now: datetime, *, method: str) -> Choice:
    """Score every candidate, best first (ties: agent id), and explain the winner."""
    if not candidates:
        raise ValueError("no candidates to rank")
    w = effective_weights(weights, task)
    costs = cost_scores([c.expected_cost_usd for c in candidates])
    scored = []
    for cand, cost in zip(candidates, costs, strict=True):
        expected = expected_duration_s(cand.agent, cand.stats, task)
        sla, slack = sla_probability(expected, task, now)
        success = min(max(float(cand.success), 0.0), 1.0)
        avail = availability(cand.agent, cand.stats, now)
        total = w["success"] * success + w["cost"] * cost + w["availability"] * avail + w["sla"] * sla
        scored.append(
            Scored(
                agent_id=cand.agent.agent_id,
                score=total,
                success=success,
                cost=cost,
                availability=avail,
                sla=sla,
                expected_cost_usd=cand.expected_cost_usd,
                cost_basis=cand.cost_basis,
                expected_duration_s=expected,
                load=load_of(cand.agent, cand.stats),
                slack_s=slack,
            )
        )
    ranked = tuple(sorted(scored, key=lambda s: (-round(s.score, 12), s.agent_id)))
    by_id = {c.agent.agent_id: c for c in candidates}
    return Choice(ranked[0], ranked, w, tuple(_reasons(ranked, by_id, w, task, method)))


# --- reasons -------------------------------------------------------------------------------------------


def _num(value: float) -> str:
    return f"{value:g}"


def _usd(value: float | None) -> str:
    if value is None:
        return "unknown"
    return f"${value:.4f}" if value < 1 else f"${value:,.2f}"


def _duration(seconds: float) -> str:
    seconds = abs(seconds)
    if seconds < 90:
        return f"{seconds:.0f}s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def _success_reason(best: Scored, cand: Candidate, method: str) -> str:
    if method == "model":
        return f"predicted success {best.success:.2f} (model)"
    st = cand.stats
    if st.outcomes == 0:
        return f"predicted success {best.success:.2f} (heuristic: no recorded outcomes, prior {PRIOR_RATE:.2f})"
    return f"predicted success {best.success:.2f} (heuristic: {st.successes} of {st.outcomes} tasks succeeded)"


def _edge(name: str, best: Scored, other: Scored) -> str:
    """How ``best`` compares with ``other`` on one component, in the component's own terms."""
    if name == "success":
        return f"likelier to succeed: {best.success:.2f} vs {other.success:.2f} ({other.agent_id})"
    if name == "cost":
        return (
            f"cheaper: ~{_usd(best.expected_cost_usd)} per task vs {_usd(other.expected_cost_usd)} ({other.agent_id})"
        )
    if name == "availability":
        return (
            f"more available: {_num(best.load)} active task{'s' if best.load != 1 else ''} vs "
            f"{_num(other.load)} ({other.agent_id}), availability {best.availability:.2f} vs {other.availability:.2f}"
        )
    return f"likelier to meet the deadline: {best.sla:.2f} vs {other.sla:.2f} ({other.agent_id})"


def _trade_off(name: str, best: Scored, other: Scored) -> str:
    words = {
        "success": "likelier to succeed",
        "cost": "cheaper",
        "availability": "more available",
        "sla": "likelier to meet the deadline",
    }
    return f"{other.agent_id} is {words[name]} ({other.component(name):.2f} vs {best.component(name):.2f})"


def _reasons(
    ranked: Sequence[Scored], by_id: Mapping[str, Candidate], w: Mapping[str, float], task: Task, method: str
) -> list[str]:
    best = ranked[0]
    out = [_success_reason(best, by_id[best.agent_id], method)]
    if len(ranked) == 1:
        out.append("the only available agent" + (f" with {', '.join(task.capabilities)}" if task.capabilities else ""))
    else:
        runner = ranked[1]
        gains = sorted(
            ((w[n] * (best.component(n) - runner.component(n)), n) for n in COMPONENTS if w[n] > 0),
            reverse=True,
        )
        out.extend(_edge(n, best, runner) for gain, n in gains[:2] if gain > 1e-9)
        losses = [n for gain, n in gains if gain < -0.01]
        if losses:
            out.append(_trade_off(losses[-1], best, runner))
        margin = best.score - runner.score
        tie = " (a tie, broken by agent id)" if margin < 1e-9 else ""
        ahead = f"{margin:.3f} ahead of {runner.agent_id}"
        out.append(f"score {best.score:.3f}, {ahead} among {len(ranked)} candidates{tie}")
    if best.slack_s is not None:
        if best.slack_s >= 0:
            out.append(f"expected to finish {_duration(best.slack_s)} before the deadline")
        else:
            others = any(s.slack_s is not None and s.slack_s >= 0 for s in ranked)
            note = "" if others else "; no candidate is expected to meet it"
            out.append(f"may miss the deadline by about {_duration(best.slack_s)}{note}")
    return out[:6]


__all__ = [
    "ALTERNATIVES",
    "AVAILABLE",
    "AgentSnapshot",
    "AgentStats",
    "AssignmentConfig",
    "Candidate",
    "Choice",
    "Exclusion",
    "OutcomeReport",
    "Priority",
    "RecordedOutcome",
    "Scored",
    "Task",
    "TaskRequest",
    "TaskResources",
    "Weights",
    "assigned_slot",
    "availability",
    "cost_scores",
    "counted_exclusions",
    "effective_weights",
    "exclusion",
    "expected_duration_s",
    "explain_exclusions",
    "filter_candidates",
    "load_of",
    "no_candidate_reason",
    "rank",
    "sla_probability",
    "smoothed",
]
