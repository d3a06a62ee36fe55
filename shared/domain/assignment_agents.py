"""Task assignment, the agent's side: what assignment needs of an agent (its snapshot), its outcome
summary (``task_stats/{agent_id}``) with the Beta(2,1) prior of the heuristic success rate, the training
row an outcome leaves, and what the rules derive from an agent for a task (expected duration, load,
heartbeat age). Pure: no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from shared.domain.agent_record import Liveness
from shared.domain.assignment_tasks import Task
from shared.domain.lifecycle import State

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
