"""Task assignment, ranking: each candidate scored in [0, 1] on success, cost, availability and SLA,
the weighted sum deciding (ties broken by agent id), and the choice explained in a few short reasons.
Pure: no I/O. The components and weights are described in shared/domain/assignment.py.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from shared.domain.agent_record import Liveness
from shared.domain.assignment_agents import (
    PRIOR_RATE,
    AgentSnapshot,
    AgentStats,
    expected_duration_s,
    heartbeat_age_s,
    load_of,
)
from shared.domain.assignment_tasks import COMPONENTS, PRIORITY_SLA_FACTOR, Task, Weights
from shared.domain.lifecycle import State

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
