"""Task assignment (issue 7): which available agent of a tenant should take a task, and why. Pure: no I/O.

The API (shared/api/tasks.py) reads the tenant's agents, their outcome summaries (``task_stats``) and
the model in service, then asks these rules to

1. **filter** the agents (:func:`exclusion`, :func:`filter_candidates`): same tenant; running
   (:data:`AVAILABLE`: active, idle, busy or degraded) and heard from (liveness not offline or frozen);
   no hold (paused, budget, tenant budget, quarantine, open circuit breaker); every required
   capability; at least the resources asked for. Each excluded agent is counted under one reason, so a
   refusal can say "2 agents lack capability gpu; 1 agent is paused" (:func:`explain_exclusions`);
2. **score** each candidate in [0, 1] on four components (``assignment_ranking.rank``):

   - *success*: the predicted probability that the agent completes the task, from the model or, with
     too little data, the heuristic ``AgentStats.success_rate`` (a Beta(2,1) prior: as if every agent had
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

This module holds step 1, the filtering. The rest is split by what it holds:
shared/domain/assignment_tasks.py (the request, the weights, the tenant's settings, the outcome report),
shared/domain/assignment_agents.py (an agent's snapshot and outcome summary, and what the rules derive
from them) and shared/domain/assignment_ranking.py (steps 2 and 3: the scores, the choice, its reasons).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from shared.domain.agent_record import Liveness
from shared.domain.assignment_agents import AgentSnapshot
from shared.domain.assignment_tasks import Task
from shared.domain.lifecycle import State

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
        what = ", ".join(f"{name} >= {task.resources[name]:g}" for name in short)
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
