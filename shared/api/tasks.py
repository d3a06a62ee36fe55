"""The REST API's task-assignment routes (issue 7): assign a task to the best available agent of a
tenant, record how it went, read an assignment. The rules are in shared/domain/assignment*.py, the
success model in shared/ml/assign.py, the documents in shared/store/tasks.py.

An assignment costs: one read of the task (a repeat returns the stored pick), the tenant's agents (one
read each), the candidates' outcome summaries (one each), the month spend of candidates without a
recorded task cost (one each), a count of the tenant's outcomes when a model is in service (one), and
one batch of three writes.
"""

from __future__ import annotations

import hashlib
import logging
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shared.api import core
from shared.api.bodies import Timestamp
from shared.api.bodies.tasks import OutcomeReport, TaskRequest
from shared.api.core import ApiError, Call, Param, Routes
from shared.domain import assignment as rules
from shared.domain.api_keys import Role
from shared.domain.assignment_agents import AgentSnapshot, AgentStats, assigned_slot, expected_duration_s
from shared.domain.assignment_ranking import Candidate, rank
from shared.domain.assignment_tasks import AssignmentConfig, Priority, Task
from shared.domain.audit import AuditEntry
from shared.ml import serving
from shared.platform import logs
from shared.store import agents as agent_store
from shared.store import tasks as store

log = logs.get_logger("api.tasks")

#: Agents of a tenant read per assignment at most (by id; the rest are not considered).
MAX_AGENTS = 1000
#: The model kind in the registry (shared/ml/serving.py).
MODEL_KIND = "task_assignment"
Method = Literal["model", "heuristic"]


# --- views ------------------------------------------------------------------------------------------


class _View(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class ScoreView(_View):
    """One candidate's score and its components, each in [0, 1]."""

    agent_id: str
    score: float = Field(description="The weighted sum of the components (weights normalised).")
    success: float = Field(description="Predicted probability that the agent completes the task.")
    cost: float = Field(description="Cheapest expected cost / this one's (1: the cheapest; 0.5: unknown).")
    availability: float = Field(description="Fewer active tasks, lower CPU, a recent heartbeat.")
    sla: float = Field(description="Probability of finishing before the deadline (1 without a deadline).")
    expected_cost_usd: float | None = None
    cost_basis: str | None = Field(default=None, description="recorded tasks, spend rate, or null (unknown).")
    expected_duration_s: float
    load: float = Field(description="Active tasks at the last heartbeat plus tasks assigned since.")
    slack_s: float | None = Field(default=None, description="Time to spare before the deadline (negative: late).")


class OutcomeView(_View):
    success: bool
    duration_s: float | None = None
    cost_usd: Decimal | None = None
    error: str | None = None
    recorded_at: Timestamp
    recorded_by: str


class TaskView(_View):
    """An assignment: who got the task, how sure the pick is and why; the outcome once recorded."""

    task_id: str
    tenant: str
    state: Literal["assigned", "succeeded", "failed"]
    agent_id: str
    confidence: float = Field(description="The chosen agent's predicted probability of success.")
    method: Method = Field(description="model: the trained model predicted success; heuristic: too little data.")
    model_version: str | None = None
    method_reason: str
    reasons: list[str]
    breakdown: ScoreView = Field(description="The chosen agent's score and components.")
    alternatives: list[ScoreView] = Field(description="The next best candidates (up to 3).")
    weights: dict[str, float] = Field(description="The weights applied, normalised (sla: 0 without a deadline).")
    candidates: int = Field(description="Agents that could take the task.")
    excluded: list[str] = Field(description="Why the tenant's other agents could not, counted.")
    required_capabilities: list[str]
    priority: Priority
    deadline: Timestamp | None = None
    estimated_duration_s: float
    resources: dict[str, float]
    assigned_at: Timestamp
    assigned_by: str
    outcome: OutcomeView | None = None
    replayed: bool = Field(default=False, description="True when this repeats a stored answer (nothing changed).")


def view(doc: dict[str, Any], replayed: bool = False) -> TaskView:
    return TaskView.model_validate({**doc, "replayed": replayed})


routes = Routes("tasks")
_TASK_PARAM = Param("task_id", "path", "The caller's id of the task.", {"type": "string"}, required=True)


# --- assign -------------------------------------------------------------------------------------------


def _tenant_agents(tenant: str) -> list[AgentSnapshot]:
    agents: list[AgentSnapshot] = []
    after: str | None = None
    while len(agents) < MAX_AGENTS:
        page, after = agent_store.list_agents(
            tenant=tenant, status=None, page_size=min(200, MAX_AGENTS - len(agents)), after=after
        )
        agents.extend(AgentSnapshot.of(r) for r in page)
        if after is None:
            break
    if after is not None:
        logs.log(log, f"{tenant}: only the first {MAX_AGENTS} agents considered", logging.WARNING, tenant=tenant)
    return agents


def _predict(
    tenant: str, cfg: AssignmentConfig, features: dict[str, dict[str, float]], stats: dict[str, AgentStats]
) -> tuple[dict[str, float], Method, str | None, str]:
    """Success probabilities by agent: the model in service when the tenant has enough outcomes, else the
    heuristic. Assignment never fails for the model's sake: any trouble falls back, said so."""
    heuristic = {agent_id: s.success_rate for agent_id, s in stats.items()}
    try:
        loaded = serving.current(MODEL_KIND)
    except Exception as exc:
        logs.log(log, "model registry unavailable", logging.WARNING, error=f"{type(exc).__name__}: {exc}"[:300])
        return heuristic, "heuristic", None, "heuristic: the model registry is unavailable"
    if loaded is None:
        return heuristic, "heuristic", None, "heuristic: no model in service"
    recorded = store.outcomes_at_least(tenant, cfg.min_outcomes)
    if recorded < cfg.min_outcomes:
        return (
            heuristic,
            "heuristic",
            None,
            f"heuristic: {recorded} outcomes recorded in tenant {tenant}, fewer than {cfg.min_outcomes}",
        )
    ids = list(features)
    try:
        p = loaded.model.predict_success([features[a] for a in ids])
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"[:300]
        logs.log(log, "model could not score", logging.ERROR, version=loaded.version, error=error)
        return heuristic, "heuristic", None, f"heuristic: model {loaded.version} could not score"
    reason = f"model {loaded.version}: at least {cfg.min_outcomes} outcomes recorded in tenant {tenant}"
    return {a: float(v) for a, v in zip(ids, p, strict=True)}, "model", str(loaded.version), reason


def _expected_costs(
    candidates: list[AgentSnapshot], stats: dict[str, AgentStats], task: Task, now: datetime
) -> dict[str, tuple[float | None, str | None]]:
    """Expected cost of the task per agent: its mean recorded cost per task, else its spend rate this
    month (since the month or its registration began, at least an hour) over the task's expected
    duration; unknown without either."""
    out: dict[str, tuple[float | None, str | None]] = {}
    lacking = []
    for agent in candidates:
        per_task = stats[agent.agent_id].cost_per_task_usd
        if per_task is not None:
            out[agent.agent_id] = (per_task, "recorded tasks")
        else:
            lacking.append(agent)
    spend = store.spend_this_month([a.agent_id for a in lacking], now) if lacking else {}
    for agent in lacking:
        found = spend.get(agent.agent_id)
        if found is None or found.totals.calls == 0:
            out[agent.agent_id] = (None, None)
            continue
        since = max(found.month_start, agent.registered_at or found.month_start)
        hours = max((now - since).total_seconds() / 3600.0, 1.0)
        rate = found.totals.usd_nanos / 1e9 / hours
        expected_h = expected_duration_s(agent, stats[agent.agent_id], task) / 3600.0
        out[agent.agent_id] = (rate * expected_h, "spend rate")
    return out


def _check_scope(call: Call, tenant: str) -> None:
    principal = core.principal(call)
    if not principal.can_see(tenant):
        raise ApiError(403, f"this API key only acts for tenant {principal.tenant}")


def _fingerprint(request: TaskRequest) -> str:
    """What the request asked, hashed: a retry carries the same; another task under a used id does not."""
    return hashlib.sha256(request.model_dump_json().encode()).hexdigest()


def _replay(stored: dict[str, Any], request: TaskRequest) -> TaskView:
    """A task id seen before: its stored pick, if it is the same request of the same tenant."""
    if stored.get("tenant") != request.tenant:
        raise ApiError(409, f"task id {stored.get('task_id')} is already in use; task ids are global")
    if stored.get("request_fingerprint") not in (None, _fingerprint(request)):
        raise ApiError(409, f"task {request.task_id} was assigned from a different request; a task id names one task")
    return view(stored, replayed=True)


@routes.post("/v1/tasks/assign", TaskView, TaskRequest, Role.OPERATOR, errors=(400, 409, 503))
def assign_task(call: Call) -> TaskView:
    """Assign a task to the best available agent of the tenant (success, cost, availability, SLA); 409 with
    the reasons when no agent can take it. Repeating a task id returns the stored pick.

    The rules are in shared/domain/assignment.py."""
    request = core.body(call, TaskRequest)
    _check_scope(call, request.tenant)
    stored = store.get(request.task_id)
    if stored is not None:
        return _replay(stored, request)
    now = core.now()
    task = Task.of(request)
    if task.deadline is not None and task.deadline <= now:
        raise ApiError(400, f"the deadline {task.deadline.isoformat()} has passed")
    cfg = store.assignment_config(request.tenant)
    try:
        weights = request.weights.over(cfg.weights) if request.weights is not None else cfg.weights
    except ValidationError:
        raise ApiError(400, "invalid request body: weights: the weights must not all be 0") from None

    agents = _tenant_agents(request.tenant)
    candidates, excluded, _ = rules.filter_candidates(agents, task)
    if not candidates:
        raise ApiError(409, rules.no_candidate_reason(task, len(agents), excluded))

    # lazy: the assignment model's features bring numpy (over a second), which no other route needs
    from shared.ml.assign import feature_values

    ids = [a.agent_id for a in candidates]
    stats = store.stats_of(ids)
    features = {a.agent_id: feature_values(a, stats[a.agent_id], task, now) for a in candidates}
    success, method, version, method_reason = _predict(request.tenant, cfg, features, stats)
    costs = _expected_costs(candidates, stats, task, now)
    choice = rank(
        [Candidate(a, stats[a.agent_id], success[a.agent_id], *costs[a.agent_id]) for a in candidates],
        task,
        weights,
        now,
        method=method,
    )
    chosen = choice.chosen.agent_id
    actor = core.actor(call)
    doc: dict[str, Any] = {
        "task_id": task.task_id,
        "tenant": task.tenant,
        "state": "assigned",
        "agent_id": chosen,
        "confidence": round(choice.confidence, 6),
        "method": method,
        "model_version": version,
        "method_reason": method_reason,
        "reasons": list(choice.reasons),
        "breakdown": choice.chosen.as_dict(),
        "alternatives": [s.as_dict() for s in choice.alternatives],
        "weights": {k: round(v, 6) for k, v in choice.weights.items()},
        "candidates": len(candidates),
        "excluded": rules.counted_exclusions(excluded),
        "required_capabilities": list(task.capabilities),
        "priority": task.priority.value,
        "deadline": task.deadline,
        "estimated_duration_s": task.estimated_duration_s,
        "resources": dict(task.resources),
        "assigned_at": now,
        "assigned_by": actor,
        "outcome": None,
        # Training rows: what was known of the chosen agent when it was chosen.
        "features": features[chosen],
        "request_id": call.request_id,
        "request_fingerprint": _fingerprint(request),
    }
    entry = AuditEntry(
        id=f"task.{task.task_id}.assign",
        at=now,
        actor=actor,
        action="task.assign",
        target=task.task_id,
        outcome="assigned",
        tenant=task.tenant,
        details={"agent_id": chosen, "method": method, "model_version": version, "confidence": doc["confidence"]},
    )
    if not store.create(doc, slot=assigned_slot(task.task_id), entry=entry):
        stored = store.get(task.task_id)  # a concurrent request with the same id got there first
        if stored is None:
            raise ApiError(503, f"task {task.task_id} could not be stored; retry")
        return _replay(stored, request)
    return view(doc)


# --- outcome and read ---------------------------------------------------------------------------------


def _task_id(call: Call) -> str:
    task_id = call.args["task_id"]
    if not core.is_document_id(task_id):
        raise ApiError(404, f"task {task_id} not found")
    return task_id


@routes.get("/v1/tasks/<task_id>", TaskView, params=(_TASK_PARAM,), errors=(404,))
def get_task(call: Call) -> TaskView:
    """One assignment: the agent, confidence, reasons, score breakdown, alternatives and the outcome."""
    task_id = _task_id(call)
    stored = store.get(task_id)
    if stored is None or not core.principal(call).can_see(str(stored.get("tenant"))):
        raise ApiError(404, f"task {task_id} not found")
    return view(stored)


@routes.post(
    "/v1/tasks/<task_id>/outcome", TaskView, OutcomeReport, Role.OPERATOR, params=(_TASK_PARAM,), errors=(400, 404, 409)
)
def record_task_outcome(call: Call) -> TaskView:
    """Record whether the task succeeded (with duration, cost, error): it trains the assignment model. The
    same outcome again changes nothing; a different one is a 409."""
    task_id = _task_id(call)
    report = core.body(call, OutcomeReport)
    principal = core.principal(call)
    now, actor = core.now(), core.actor(call)

    def entry(task: dict[str, Any]) -> AuditEntry:
        return AuditEntry(
            id=f"task.{task_id}.outcome",
            at=now,
            actor=actor,
            action="task.outcome",
            target=task_id,
            outcome=str(task["state"]),
            tenant=task["tenant"],
            details={"agent_id": task["agent_id"], **report.as_doc()},
        )

    result = store.record_outcome(task_id, report, at=now, actor=actor, visible=principal.can_see, entry=entry)
    if result.status == "missing" or result.task is None:
        raise ApiError(404, f"task {task_id} not found")
    if result.status == "conflict":
        stored = result.task["outcome"]
        when = stored.get("recorded_at")
        said = "succeeded" if stored.get("success") else "failed"
        at = f" at {when.isoformat()}" if isinstance(when, datetime) else ""
        raise ApiError(409, f"task {task_id} already has a different outcome ({said}{at}); an outcome is final")
    return view(result.task, replayed=result.status == "same")
