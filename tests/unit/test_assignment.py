"""Task assignment: the rules (filtering, scores, reasons), the success model, and the API views with the
store faked (the real store is exercised by tests/integration/test_tasks.py)."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import flask
import numpy as np
import pytest
from pydantic import ValidationError

from shared.api import tasks
from shared.api.core import ApiError, Call
from shared.domain import assignment as rules
from shared.domain import assignment_agents as agent_side
from shared.domain import assignment_ranking as ranking
from shared.domain import assignment_tasks as task_side
from shared.domain.agent_record import AgentRecord, Liveness
from shared.domain.api_keys import Role
from shared.domain.assignment_agents import AgentSnapshot, AgentStats, RecordedOutcome
from shared.domain.assignment_ranking import Candidate
from shared.domain.assignment_tasks import AssignmentConfig, OutcomeReport, Priority, Task, TaskRequest, Weights
from shared.domain.lifecycle import State
from shared.ml import assign as ml
from shared.ml import serving
from shared.ml.assign_synthetic import synthetic_outcomes
from shared.store import agents as agent_store
from shared.store import tasks as store
from shared.store.api_keys import Principal
from tests.unit.test_ml_flat import assert_close_and_same_decisions

T0 = datetime(2026, 11, 21, 10, 0, tzinfo=UTC)


def snap(
    agent_id: str,
    caps: tuple[str, ...] = ("chat",),
    *,
    tenant: str = "acme",
    status: State = State.ACTIVE,
    holds: tuple[str, ...] = (),
    liveness: Liveness = Liveness.OK,
    metrics: dict[str, float] | None = None,
    resources: dict[str, float] | None = None,
    heartbeat_age_s: float | None = 10.0,
) -> AgentSnapshot:
    return AgentSnapshot(
        agent_id=agent_id,
        tenant=tenant,
        status=status,
        capabilities=frozenset(caps),
        resources=resources if resources is not None else {"cpu": 2.0, "memory_gb": 4.0, "gpu": 0.0},
        metrics=metrics if metrics is not None else {"active_tasks": 1.0, "cpu_pct": 20.0},
        last_heartbeat_at=None if heartbeat_age_s is None else T0 - timedelta(seconds=heartbeat_age_s),
        heartbeat_interval_s=30.0,
        liveness=liveness,
        holds=frozenset(holds),
    )


def task(caps: tuple[str, ...] = ("chat",), **kw: Any) -> Task:
    fields: dict[str, Any] = {
        "task_id": "t-1",
        "tenant": "acme",
        "capabilities": caps,
        "priority": Priority.NORMAL,
        "deadline": None,
        "estimated_duration_s": 60.0,
        **kw,
    }
    return Task(**fields)


def stats(successes: int = 0, outcomes: int = 0, **kw: Any) -> AgentStats:
    return AgentStats(outcomes=outcomes, successes=successes, **kw)


# --- filtering ------------------------------------------------------------------------------------------


def test_candidates_are_running_capable_unheld_agents_of_the_tenant_and_exclusions_are_counted() -> None:
    agents = [
        snap("a-ok", ("chat", "gpu"), resources={"gpu": 1.0}),
        snap("b-nogpu", ("chat",)),
        snap("c-nogpu", ("chat",), status=State.IDLE),
        snap("d-paused", ("chat", "gpu"), status=State.SUSPENDED, holds=("pause",), resources={"gpu": 1.0}),
        snap("e-budget", ("chat", "gpu"), status=State.SUSPENDED, holds=("budget",), resources={"gpu": 1.0}),
        snap("f-quarantined", ("gpu",), status=State.QUARANTINED, holds=("quarantine",), resources={"gpu": 1.0}),
        snap("g-offline", ("gpu",), status=State.OFFLINE, resources={"gpu": 1.0}),
        snap("h-maint", ("gpu",), status=State.MAINTENANCE, resources={"gpu": 1.0}),
        snap("i-silent", ("gpu",), liveness=Liveness.OFFLINE, resources={"gpu": 1.0}),
        snap("j-small", ("gpu",), resources={"gpu": 0.0}),
        snap("k-other", ("gpu",), tenant="globex", resources={"gpu": 1.0}),
        snap("l-gone", ("gpu",), status=State.DECOMMISSIONED, resources={"gpu": 1.0}),
        snap("m-degraded", ("gpu",), status=State.DEGRADED, resources={"gpu": 1.0}),
        snap("n-busy", ("gpu",), status=State.BUSY, resources={"gpu": 1.0}),
        snap("o-breaker", ("gpu",), holds=("breaker",), resources={"gpu": 1.0}),
        snap("p-new", ("gpu",), status=State.REGISTERED, heartbeat_age_s=None, resources={"gpu": 1.0}),
    ]
    wanted = task(("gpu",), resources={"gpu": 1.0})
    candidates, excluded, who = rules.filter_candidates(reversed(agents), wanted)
    assert [a.agent_id for a in candidates] == ["a-ok", "m-degraded", "n-busy"]
    text = rules.explain_exclusions(excluded)
    assert text.startswith("2 agents lack capability gpu; ")
    for part in (
        "1 agent is paused",
        "1 agent is held by their budget",
        "1 agent is quarantined",
        "1 agent is offline",
        "1 agent is in maintenance",
        "1 agent is silent (liveness offline or frozen)",
        "1 agent has too little gpu >= 1",
        "1 agent belongs to another tenant",
        "1 agent is decommissioned",
        "1 agent has its circuit breaker open",
        "1 agent is registered but not running yet",
    ):
        assert part in text, text
    assert who[rules.exclusion(agents[1], wanted)] == ["b-nogpu", "c-nogpu"]  # type: ignore[index]
    assert rules.no_candidate_reason(wanted, 0, excluded) == "no agent can take task t-1: tenant acme has no agents"


def test_the_example_of_the_issue_reads_as_written() -> None:
    agents = [
        snap("a", ("chat",)),
        snap("b", ("chat",)),
        snap("c", ("chat", "gpu"), status=State.SUSPENDED, holds=("pause",)),
    ]
    _, excluded, _ = rules.filter_candidates(agents, task(("chat", "gpu")))
    assert rules.no_candidate_reason(task(("chat", "gpu")), 3, excluded) == (
        "no agent can take task t-1: 2 agents lack capability gpu; 1 agent is paused"
    )
    _, several, _ = rules.filter_candidates([snap("a", ())], task(("chat", "gpu")))
    assert rules.explain_exclusions(several) == "1 agent lacks capabilities chat, gpu"


# --- scores ------------------------------------------------------------------------------------------


def cand(agent: AgentSnapshot, success: float, cost: float | None = None, st: AgentStats | None = None) -> Candidate:
    return Candidate(agent, st or AgentStats(), success, cost, None if cost is None else "recorded tasks")


def test_weights_are_normalised_the_sla_counts_only_with_a_deadline_and_more_when_critical() -> None:
    w = ranking.effective_weights(Weights(), task())
    assert w == {"success": 40 / 90, "cost": 30 / 90, "availability": 20 / 90, "sla": 0.0}
    due = T0 + timedelta(hours=1)
    assert ranking.effective_weights(Weights(), task(deadline=due))["sla"] == pytest.approx(0.1)
    critical = ranking.effective_weights(Weights(), task(deadline=due, priority=Priority.CRITICAL))
    assert critical["sla"] == pytest.approx(40 / 130)
    assert sum(critical.values()) == pytest.approx(1.0)
    with pytest.raises(ValidationError, match="must not all be 0"):
        Weights(success=0, cost=0, availability=0, sla=0)
    with pytest.raises(ValidationError):
        Weights(success=True)
    tenant = Weights(success=10, cost=0, availability=0, sla=0)
    assert Weights(cost=5).over(tenant).model_dump() == {"success": 10, "cost": 5, "availability": 0, "sla": 0}
    with pytest.raises(ValidationError):
        Weights.model_validate({"success": 0}).over(tenant)
    cfg = AssignmentConfig.for_tenant({"weights": {"cost": 90}})
    assert cfg.weights.cost == 90 and cfg.weights.success == 40 and cfg.min_outcomes == 50


def test_the_likeliest_to_succeed_wins_on_success_weight_and_the_cheapest_on_cost_weight() -> None:
    a, b = snap("agent-a"), snap("agent-b")
    pair = [cand(a, 0.95, cost=0.05), cand(b, 0.70, cost=0.01)]
    by_success = ranking.rank(pair, task(), Weights(success=1, cost=0, availability=0, sla=0), T0, method="model")
    assert by_success.chosen.agent_id == "agent-a" and by_success.confidence == pytest.approx(0.95)
    by_cost = ranking.rank(pair, task(), Weights(success=0, cost=1, availability=0, sla=0), T0, method="model")
    assert by_cost.chosen.agent_id == "agent-b"
    assert by_cost.chosen.cost == 1.0 and by_cost.ranked[1].cost == pytest.approx(0.0101 / 0.0501)
    assert any(r.startswith("cheaper: ~$0.0100 per task vs $0.0500 (agent-a)") for r in by_cost.reasons)
    default = ranking.rank(pair, task(), Weights(), T0, method="model")
    assert default.weights["success"] == pytest.approx(40 / 90)
    assert default.alternatives == default.ranked[1:]
    assert default.chosen.score == pytest.approx(
        sum(default.weights[n] * default.chosen.component(n) for n in task_side.COMPONENTS)
    )


def test_ties_are_broken_by_agent_id_whatever_the_order() -> None:
    agents = [snap(f"agent-{c}") for c in "dbca"]
    for order in (agents, list(reversed(agents))):
        choice = ranking.rank([cand(a, 0.8) for a in order], task(), Weights(), T0, method="heuristic")
        assert [s.agent_id for s in choice.ranked] == ["agent-a", "agent-b", "agent-c", "agent-d"]
        assert "a tie, broken by agent id" in choice.reasons[-1]


def test_availability_counts_load_since_the_last_heartbeat_cpu_freshness_and_state() -> None:
    idle = snap("a", metrics={"active_tasks": 0.0, "cpu_pct": 0.0})
    assert ranking.availability(idle, AgentStats(), T0) == pytest.approx(1.0)
    # Two tasks assigned after the last heartbeat count as load it could not report yet.
    recent = AgentStats(assigned_at=(T0 - timedelta(seconds=5), T0 - timedelta(seconds=1), T0 - timedelta(hours=1)))
    assert agent_side.load_of(idle, recent) == 2.0
    assert ranking.availability(idle, recent, T0) == pytest.approx(0.5 * 0.5 + 0.25 + 0.25)
    stale = snap("a", metrics={"active_tasks": 0.0, "cpu_pct": 0.0}, heartbeat_age_s=90.0)
    assert ranking.availability(stale, AgentStats(), T0) == pytest.approx(0.75)
    unknown = snap("a", metrics={}, heartbeat_age_s=None)
    assert ranking.availability(unknown, AgentStats(), T0) == pytest.approx(0.5 + 0.125)
    degraded = snap("a", status=State.DEGRADED, metrics={"active_tasks": 0.0, "cpu_pct": 0.0})
    assert ranking.availability(degraded, AgentStats(), T0) == pytest.approx(0.5)
    late = snap("a", liveness=Liveness.LATE, metrics={"active_tasks": 0.0, "cpu_pct": 0.0})
    assert ranking.availability(late, AgentStats(), T0) == pytest.approx(0.75)


def test_a_slow_agent_loses_a_critical_deadline_it_would_miss() -> None:
    fast = snap("agent-fast", metrics={"active_tasks": 3.0, "cpu_pct": 80.0, "latency_ms_p95": 200.0})
    slow = snap("agent-slow", metrics={"active_tasks": 0.0, "cpu_pct": 5.0, "latency_ms_p95": 200.0})
    slow_stats = AgentStats(duration_n=10, ratio_sum=30.0)  # its tasks took 3x their estimates
    assert slow_stats.duration_ratio == pytest.approx(32 / 12)
    deadline = T0 + timedelta(seconds=120)
    pair = [cand(fast, 0.8), cand(slow, 0.8, st=slow_stats)]
    normal = ranking.rank(pair, task(deadline=deadline, priority=Priority.LOW), Weights(), T0, method="heuristic")
    assert normal.chosen.agent_id == "agent-slow"  # more available; the SLA weighs little at low priority
    critical = ranking.rank(
        pair, task(deadline=deadline, priority=Priority.CRITICAL), Weights(), T0, method="heuristic"
    )
    assert critical.chosen.agent_id == "agent-fast"
    assert critical.chosen.slack_s == pytest.approx(120 - 60.2)
    assert critical.ranked[1].sla == pytest.approx(0.186, abs=1e-3)  # 40 s late, spread 45 s
    assert any("before the deadline" in r for r in critical.reasons)
    hopeless = ranking.rank(pair, task(deadline=T0 + timedelta(seconds=10)), Weights(), T0, method="heuristic")
    assert any(r.endswith("no candidate is expected to meet it") for r in hopeless.reasons)


def test_reasons_say_how_success_was_predicted_and_when_an_agent_is_the_only_one() -> None:
    only = ranking.rank([cand(snap("a"), 11 / 13, st=stats(9, 10))], task(), Weights(), T0, method="heuristic")
    assert only.reasons[0] == "predicted success 0.85 (heuristic: 9 of 10 tasks succeeded)"
    assert only.reasons[1] == "the only available agent with chat"
    fresh = ranking.rank([cand(snap("a"), 2 / 3)], task(()), Weights(), T0, method="heuristic")
    assert fresh.reasons[0] == "predicted success 0.67 (heuristic: no recorded outcomes, prior 0.67)"
    assert fresh.reasons[1] == "the only available agent"
    model = ranking.rank([cand(snap("a"), 0.9), cand(snap("b"), 0.5)], task(), Weights(), T0, method="model")
    assert model.reasons[0] == "predicted success 0.90 (model)"
    assert model.reasons[1].startswith("likelier to succeed: 0.90 vs 0.50 (b)")
    assert all(len(r) <= 160 for r in model.reasons)


def test_cost_scores_are_relative_to_the_cheapest_and_unknown_is_neutral() -> None:
    assert ranking.cost_scores([None, None]) == [0.5, 0.5]
    scores = ranking.cost_scores([0.0, 0.0001, None, 1.0])
    assert scores[0] == 1.0 and scores[1] == pytest.approx(0.5) and scores[2] == 0.5 and scores[3] < 0.001


# --- outcome summaries and bodies ------------------------------------------------------------------------


def test_the_heuristic_is_a_beta_2_1_smoothed_rate_and_the_summary_round_trips() -> None:
    assert AgentStats().success_rate == pytest.approx(2 / 3)
    assert stats(9, 10).success_rate == pytest.approx(11 / 13)
    assert stats(0, 3).success_rate == pytest.approx(2 / 6)
    s = AgentStats()
    s = s.with_outcome(success=True, capabilities=["chat", "gpu"], at=T0, estimated_duration_s=60, duration_s=120)
    s = s.with_outcome(success=False, capabilities=["gpu"], at=T0, estimated_duration_s=60, cost_nanos=2_500_000)
    assert (s.outcomes, s.successes, s.duration_n, s.cost_n) == (2, 1, 1, 1)
    assert s.capabilities == {"chat": (1, 1), "gpu": (2, 1)}
    assert s.capability_rate(["chat", "gpu"]) == (pytest.approx(3 / 5), 2)
    assert s.capability_rate([]) == (pytest.approx(3 / 5), 2)
    assert s.cost_per_task_usd == pytest.approx(0.0025)
    assert s.duration_ratio == pytest.approx(4 / 3)
    assert s.recent_rate == pytest.approx(0.9 * (0.9 * 2 / 3 + 0.1))
    stored = {**s.outcome_fields(), "assigned": 3, "assigned_at": {"s01": T0, "s02": T0 - timedelta(1)}}
    again = AgentStats.from_doc(stored)
    assert again.outcome_fields() == s.outcome_fields()
    assert again.assigned == 3 and again.assigned_at == (T0 - timedelta(1), T0)
    assert agent_side.assigned_slot("t-1") == agent_side.assigned_slot("t-1") and agent_side.assigned_slot(
        "t-1"
    ).startswith("s")


def test_request_bodies_are_strict() -> None:
    ok = TaskRequest.model_validate(
        {
            "task_id": "t-1",
            "tenant": "acme",
            "required_capabilities": ["chat", "chat", "gpu"],
            "estimated_duration_s": Decimal("12.5"),
            "deadline": "2026-11-21T11:00:00Z",
            "resources": {"gpu": 1},
        }
    )
    assert ok.required_capabilities == ["chat", "gpu"] and ok.priority is Priority.NORMAL
    assert Task.of(ok).resources == {"gpu": 1.0}
    bad: list[dict[str, Any]] = [
        {"surprise": 1},
        {"estimated_duration_s": True},
        {"estimated_duration_s": 0},
        {"task_id": "assign"},
        {"task_id": "a/b"},
        {"deadline": "2026-11-21T11:00:00"},  # no time zone
        {"priority": "urgent"},
        {"resources": {"tpu": 1}},
        {"weights": {"success": 0, "cost": 0, "availability": 0, "sla": 0}},
    ]
    for change in bad:
        with pytest.raises(ValidationError):
            TaskRequest.model_validate({"task_id": "t-1", "tenant": "acme", "estimated_duration_s": 1, **change})
    for outcome in ({"success": "true"}, {"success": 1}, {"success": True, "error": "x"}, {"success": False, "x": 1}):
        with pytest.raises(ValidationError):
            OutcomeReport.model_validate(outcome)
    report = OutcomeReport.model_validate({"success": False, "cost_usd": Decimal("0.25"), "error": "timeout"})
    assert report.cost_nanos == 250_000_000
    assert report.same_as(report.as_doc()) and not report.same_as({**report.as_doc(), "error": "other"})


# --- the model ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def synthetic() -> list[RecordedOutcome]:
    return synthetic_outcomes(2500, agents=10, seed=3)


@pytest.fixture(scope="module")
def trained(synthetic: list[RecordedOutcome]) -> tuple[ml.TaskModel, dict[str, Any]]:
    return ml.train_and_evaluate(synthetic, n_estimators=80)


def test_the_model_beats_the_heuristic_on_synthetic_outcomes(trained: tuple[ml.TaskModel, dict[str, Any]]) -> None:
    model, metrics = trained
    assert metrics["train"] == 2000 and metrics["holdout"] == 500
    heuristic, learned = metrics["heuristic"], metrics["model"]
    assert heuristic["n"] == learned["n"] == 500 and heuristic["method"] == "heuristic"
    assert learned["brier"] < heuristic["brier"] - 0.02, metrics
    assert learned["log_loss"] < heuristic["log_loss"] and learned["auc"] > heuristic["auc"]
    assert model.metrics == metrics and model.version.startswith("rf-")


def test_split_by_time_holds_out_the_most_recent_outcomes(synthetic: list[RecordedOutcome]) -> None:
    train, holdout = ml.split_by_time(list(reversed(synthetic)), 0.1)
    assert len(holdout) == 250 and max(o.at for o in train) <= min(o.at for o in holdout)
    with pytest.raises(ValueError):
        ml.split_by_time(synthetic, 1.0)


def test_features_come_from_the_snapshot_and_summary_and_the_heuristic_is_agent_rate() -> None:
    agent = snap("a", ("chat", "code"), metrics={"active_tasks": 2.0, "cpu_pct": 50.0, "latency_ms_p95": 999.0})
    st = stats(9, 10, capabilities={"chat": (4, 1)}, assigned_at=(T0,))
    f = ml.feature_values(agent, st, task(deadline=T0 + timedelta(seconds=181)), T0)
    assert set(f) == set(ml.FEATURES)
    assert f["agent_rate"] == pytest.approx(11 / 13) and f["cap_rate"] == pytest.approx(3 / 7)
    assert f["load"] == 3.0 and f["memory_pct"] == ml.UNKNOWN and f["cap_share"] == 0.5
    assert f["deadline_slack"] == pytest.approx((181 - 60.999) / 60.999)
    row = RecordedOutcome("t", "acme", "a", True, T0, f)
    assert ml.evaluate(None, [row])["mean_p"] == pytest.approx(11 / 13)
    assert ml.evaluate(None, [])["brier"] is None


def test_fit_needs_enough_rows_of_both_kinds(synthetic: list[RecordedOutcome]) -> None:
    with pytest.raises(ValueError, match="at least 20"):
        ml.TaskModel().fit(synthetic[:5])
    same = [o for o in synthetic if o.success][:50]
    with pytest.raises(ValueError, match="every outcome is a success"):
        ml.TaskModel().fit(same)


def test_the_model_round_trips_without_pickles_and_predicts_alike(
    trained: tuple[ml.TaskModel, dict[str, Any]], synthetic: list[RecordedOutcome]
) -> None:
    model, _ = trained
    data = model.to_bytes()
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        meta = json.loads(z["meta"].tobytes().decode())
        assert "sklearn_skops" in z.files
    assert meta["format"] == ml.MODEL_FORMAT and meta["features"] == list(ml.FEATURES)
    assert meta["version"] == model.version and meta["metrics"]["model"]["brier"] > 0
    loaded = ml.TaskModel.from_bytes(data)
    assert loaded.forest is None and loaded.version == model.version and loaded.metrics == model.metrics
    rows = [o.features for o in synthetic[-200:]]
    X = ml.matrix(rows)
    expected = model.forest.predict_proba(X)[:, 1]
    # The flat trees against scikit-learn: within the tolerance, and the same side of 0.5 (docs/ml.md).
    assert_close_and_same_decisions(loaded.predict_success(rows), expected, thresholds=0.5)
    assert_close_and_same_decisions(loaded.predict_success(X), expected, thresholds=0.5)
    assert loaded.predict_success([]).shape == (0,)
    with_forest = ml.TaskModel.from_bytes(data, load_model=True)
    np.testing.assert_array_equal(with_forest.forest.predict_proba(X)[:, 1], expected)
    with pytest.raises(ValueError, match="lacks the feature"):
        loaded.predict_success([{"agent_rate": 0.5}])


def test_a_model_of_another_format_or_unknown_features_is_refused(trained: tuple[ml.TaskModel, dict[str, Any]]) -> None:
    model, _ = trained

    def rewritten(**change: Any) -> bytes:
        with np.load(io.BytesIO(model.to_bytes()), allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        meta = {**json.loads(arrays["meta"].tobytes().decode()), **change}
        arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        return buf.getvalue()

    with pytest.raises(ValueError, match="format"):
        ml.TaskModel.from_bytes(rewritten(format=99))
    with pytest.raises(ValueError, match="does not compute: novel"):
        ml.TaskModel.from_bytes(rewritten(features=[*ml.FEATURES[:-1], "novel"]))


# --- the API views, store faked -----------------------------------------------------------------------------

APP = flask.Flask(__name__)
OPERATOR = Principal("00000000000000cc", "acme-ops", Role.OPERATOR, "acme")
ADMIN = Principal("00000000000000aa", "admin", Role.ADMIN, None)


def record(agent_id: str, caps: list[str], *, tenant: str = "acme", status: State = State.ACTIVE, **kw: Any) -> Any:
    return AgentRecord(
        agent_id=agent_id,
        tenant=tenant,
        name=agent_id,
        agent_type="llm",
        version="1.0.0",
        owner="team",
        capabilities=caps,
        resources={"cpu": 2.0, "memory_gb": 4.0, "gpu": 1},
        status=status,
        status_since=T0,
        registered_at=T0 - timedelta(days=3),
        last_registered_at=T0,
        last_heartbeat_at=datetime.now(UTC) - timedelta(seconds=5),
        recent={"s00": {"seq": 1, "at": T0.isoformat(), "status": "active", "metrics": kw.pop("metrics", {})}},
        **kw,
    )


class FakeStore:
    def __init__(self) -> None:
        self.tasks: dict[str, dict[str, Any]] = {}
        self.stats: dict[str, AgentStats] = {}
        self.count = 0
        self.created: list[str] = []

    def install(self, monkeypatch: pytest.MonkeyPatch, agents: list[Any]) -> None:
        def list_agents(*, tenant: str | None, status: str | None, page_size: int, after: str | None) -> Any:
            rows = sorted((a for a in agents if a.tenant == tenant), key=lambda a: a.agent_id)
            return rows, None

        def create(doc: dict[str, Any], *, slot: str, entry: Any) -> bool:
            if doc["task_id"] in self.tasks:
                return False
            self.tasks[doc["task_id"]] = doc
            self.created.append(entry.id)
            return True

        monkeypatch.setattr(agent_store, "list_agents", list_agents)
        monkeypatch.setattr(store, "get", lambda task_id: self.tasks.get(task_id))
        monkeypatch.setattr(store, "create", create)
        monkeypatch.setattr(store, "stats_of", lambda ids: {a: self.stats.get(a, AgentStats()) for a in ids})
        monkeypatch.setattr(store, "outcomes_at_least", lambda tenant, n: min(self.count, n))
        monkeypatch.setattr(store, "spend_this_month", lambda ids, now: {})
        monkeypatch.setattr(store, "assignment_config", lambda tenant: AssignmentConfig())
        monkeypatch.setattr(serving, "current", lambda kind: None)


def post(view: Any, body: dict[str, Any], principal: Principal = OPERATOR, **args: str) -> Any:
    with APP.test_request_context("/", method="POST", data=json.dumps(body), content_type="application/json"):
        return view(Call(flask.request, args, principal, "req-1"))


def body(**kw: Any) -> dict[str, Any]:
    return {"task_id": "t-1", "tenant": "acme", "required_capabilities": ["chat"], "estimated_duration_s": 30, **kw}


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeStore:
    fake = FakeStore()
    agents = [
        record("agent-a", ["chat"], metrics={"active_tasks": 0, "cpu_pct": 10}),
        record("agent-b", ["chat"], metrics={"active_tasks": 4, "cpu_pct": 90}),
        record("agent-c", ["code"]),
        record(
            "agent-d",
            ["chat"],
            status=State.SUSPENDED,
            holds={"pause": {"command": "pause", "issued_at": T0.isoformat(), "command_id": "c1"}},
        ),
        record("agent-g", ["chat"], tenant="globex"),
    ]
    fake.install(monkeypatch, agents)
    return fake


def test_assign_picks_by_the_heuristic_without_a_model_and_a_repeat_returns_the_stored_pick(fake: FakeStore) -> None:
    fake.stats = {"agent-a": stats(8, 10), "agent-b": stats(9, 10)}
    reply = post(tasks.assign_task, body())
    assert reply.agent_id == "agent-a" and reply.method == "heuristic" and reply.model_version is None
    assert reply.method_reason == "heuristic: no model in service" and not reply.replayed
    assert reply.confidence == pytest.approx(10 / 13, abs=1e-6)
    assert reply.candidates == 2 and [a.agent_id for a in reply.alternatives] == ["agent-b"]
    assert reply.excluded == ["1 agent is paused", "1 agent lacks capability chat"]
    assert reply.breakdown.agent_id == "agent-a" and reply.weights["sla"] == 0
    assert reply.reasons[0] == "predicted success 0.77 (heuristic: 8 of 10 tasks succeeded)"
    assert set(fake.tasks["t-1"]["features"]) == set(ml.FEATURES)
    assert fake.created == ["task.t-1.assign"]
    again = post(tasks.assign_task, body())
    assert again.replayed and again.agent_id == "agent-a" and fake.created == ["task.t-1.assign"]
    with pytest.raises(ApiError, match="different request"):
        post(tasks.assign_task, body(required_capabilities=["code"]))
    with pytest.raises(ApiError) as taken:
        post(tasks.assign_task, body(tenant="globex"), ADMIN)
    assert taken.value.status == 409 and "already in use" in taken.value.reason


def test_assign_uses_the_model_only_with_enough_outcomes(fake: FakeStore, monkeypatch: pytest.MonkeyPatch) -> None:
    class Model:
        def predict_success(self, rows: list[dict[str, float]]) -> np.ndarray:
            return np.asarray([0.99 if r["load"] >= 4 else 0.1 for r in rows])

    monkeypatch.setattr(serving, "current", lambda kind: serving.Loaded(kind, "rf-test", Model()))
    fake.count = 12
    few = post(tasks.assign_task, body(task_id="t-few"))
    assert few.method == "heuristic" and few.method_reason == (
        "heuristic: 12 outcomes recorded in tenant acme, fewer than 50"
    )
    fake.count = 50
    enough = post(tasks.assign_task, body(task_id="t-enough", weights={"success": 100, "cost": 0, "availability": 0}))
    assert enough.method == "model" and enough.model_version == "rf-test" and enough.agent_id == "agent-b"
    assert enough.confidence == pytest.approx(0.99) and enough.weights["success"] == 1.0

    class Broken:
        def predict_success(self, rows: Any) -> Any:
            raise ValueError("bad model")

    monkeypatch.setattr(serving, "current", lambda kind: serving.Loaded(kind, "rf-bad", Broken()))
    fallback = post(tasks.assign_task, body(task_id="t-broken"))
    assert fallback.method == "heuristic" and fallback.method_reason == "heuristic: model rf-bad could not score"


def test_assign_refusals_say_why(fake: FakeStore) -> None:
    cases: list[tuple[dict[str, Any], Principal, int, str]] = [
        (body(required_capabilities=["gpu"]), OPERATOR, 409, "4 agents lack capability gpu"),
        (body(required_capabilities=["chat", "code"]), OPERATOR, 409, "3 agents lack capability code; 1 agent lacks"),
        (body(tenant="globex"), OPERATOR, 403, "only acts for tenant acme"),
        (body(tenant="initech"), ADMIN, 409, "tenant initech has no agents"),
        (body(deadline="2020-01-01T00:00:00Z"), OPERATOR, 400, "has passed"),
        (body(weights={"success": 0, "cost": 0, "availability": 0, "sla": 0}), OPERATOR, 400, "must not all be 0"),
        (body(extra=1), OPERATOR, 400, "extra: Extra inputs are not permitted"),
    ]
    for sent, principal, status, reason in cases:
        with pytest.raises(ApiError) as refused:
            post(tasks.assign_task, sent, principal)
        assert refused.value.status == status and reason in refused.value.reason, refused.value.reason
    assert fake.tasks == {}


def test_outcome_and_get_map_the_store_results(monkeypatch: pytest.MonkeyPatch, fake: FakeStore) -> None:
    post(tasks.assign_task, body())
    stored = fake.tasks["t-1"]
    results: dict[str, store.OutcomeResult] = {
        "missing": store.OutcomeResult("missing", None),
        "conflict": store.OutcomeResult(
            "conflict", {**stored, "outcome": {"success": True, "recorded_at": T0, "recorded_by": "api:x"}}
        ),
        "same": store.OutcomeResult(
            "same", {**stored, "state": "failed", "outcome": {"success": False, "recorded_at": T0, "recorded_by": "x"}}
        ),
    }
    for status, result in results.items():
        monkeypatch.setattr(store, "record_outcome", lambda *a, result=result, **kw: result)
        if status == "same":
            reply = post(tasks.record_task_outcome, {"success": False}, task_id="t-1")
            assert reply.replayed and reply.state == "failed" and reply.outcome is not None
            continue
        with pytest.raises(ApiError) as refused:
            post(tasks.record_task_outcome, {"success": False}, task_id="t-1")
        expected = {"missing": (404, "not found"), "conflict": (409, "already has a different outcome (succeeded at")}
        assert (refused.value.status, expected[status][1] in refused.value.reason) == (expected[status][0], True)
    with APP.test_request_context("/"):
        found = tasks.get_task(Call(flask.request, {"task_id": "t-1"}, OPERATOR))
        assert found.agent_id == "agent-a"
        other = Principal("00000000000000dd", "globex", Role.VIEWER, "globex")
        with pytest.raises(ApiError) as hidden:
            tasks.get_task(Call(flask.request, {"task_id": "t-1"}, other))
        assert hidden.value.status == 404


def test_without_recorded_costs_the_spend_rate_prices_the_task(
    fake: FakeStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    from shared.domain.usage import Totals

    now = datetime.now(UTC)
    month = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    spent = store.Spend(Totals(usd_nanos=7_200_000_000, calls=10), month)  # $7.20 over the month (or 3 days)
    monkeypatch.setattr(store, "spend_this_month", lambda ids, at: {"agent-b": spent})
    fake.stats = {"agent-a": stats(cost_n=2, cost_nanos=40_000_000)}  # $0.02 per task
    reply = post(tasks.assign_task, body(weights={"success": 0, "cost": 1, "availability": 0, "sla": 0}))
    b = next(s for s in [reply.breakdown, *reply.alternatives] if s.agent_id == "agent-b")
    a = next(s for s in [reply.breakdown, *reply.alternatives] if s.agent_id == "agent-a")
    assert a.cost_basis == "recorded tasks" and a.expected_cost_usd == pytest.approx(0.02)
    hours = max((now - max(month, T0 - timedelta(days=3))).total_seconds() / 3600, 1.0)  # since it registered
    assert b.cost_basis == "spend rate"
    assert b.expected_cost_usd == pytest.approx(7.2 / hours * 30 / 3600, rel=1e-3)
