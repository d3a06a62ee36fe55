"""The learned models on the live heartbeat path (shared/ml/live.py): the state kept in the agent document
between heartbeats gives the same verdicts as the batch detector, survives JSON (Firestore) round trips,
opens and resolves the anomaly episode with its drivers, and treats warm-up, missing metrics and the
absence of a model as such."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from shared.domain import learned as L
from shared.ml import features as fe
from shared.ml import live
from shared.ml.anomaly import AnomalyDetector
from tests.unit.test_ml_anomaly import FLEET, TRAIN, with_x

T0 = datetime(2026, 11, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def detector() -> AnomalyDetector:
    det = AnomalyDetector(min_history_s=0.0)  # these streams are shorter than a day (see test_ml_live_history.py)
    det.fit({a: s.head(TRAIN) for a, s in FLEET.items()})
    return det


def metrics_of(row: np.ndarray) -> dict[str, float]:
    names = ("latency_ms_p95", "error_rate", "cpu_pct", "memory_pct", "tokens_per_s", "cost_per_min")
    return {n: float(v) for n, v in zip(names, row, strict=True)}


def run_live(models: live.Models, stream, agent_id: str = "a3") -> tuple[list[str], list[L.Learned]]:
    state: dict = {}
    statuses, outs = [], []
    for i in range(len(stream)):
        at = T0 + timedelta(seconds=float(stream.t[i]))
        out = live.step(models, agent_id, state, metrics_of(stream.X[i]), at, stream.interval_s)
        state = json.loads(json.dumps(out.state))  # what Firestore gives back: plain JSON values
        statuses.append(state["status"])
        outs.append(out)
    return statuses, outs


def test_state_round_trip_gives_the_batch_detectors_verdicts(detector: AnomalyDetector) -> None:
    stream = FLEET["a3"]
    X = stream.X.copy()
    X[600:640, 0] *= 6.0  # a latency spike that lasts
    faulty = with_x(stream, X)
    detections, batch_status = detector.detect_rows(faulty)
    # Times as the function sees them: datetimes of the heartbeats' arrival.
    statuses, outs = run_live(live.Models(detector, "v1"), faulty)
    assert statuses == batch_status
    opened = [i for i, o in enumerate(outs) if any(op.rule == L.ANOMALY for op in o.opens)]
    assert opened == [d.start for d in detections if d.features != ("gap_ratio",)]
    first = next(op for op in outs[opened[0]].opens if op.rule == L.ANOMALY)
    assert first.severity == "warning"
    assert "latency_ms" in first.details["features"][0]
    assert first.details["model"] == "v1" and first.details["score"] > 0
    resolved = [i for i, o in enumerate(outs) if any(r.rule == L.ANOMALY for r in o.resolves)]
    assert resolved and resolved[0] > opened[0]


def test_warm_up_is_insufficient_data_and_no_model_is_unscored(detector: AnomalyDetector) -> None:
    stream = FLEET["a4"].head(fe.WARMUP + 5)
    statuses, _ = run_live(live.Models(detector, "v1"), stream)
    assert statuses[: fe.WARMUP] == [L.INSUFFICIENT] * fe.WARMUP
    assert set(statuses[fe.WARMUP :]) == {L.NORMAL}
    statuses, outs = run_live(live.Models(), stream)
    assert statuses[: fe.WARMUP] == [L.INSUFFICIENT] * fe.WARMUP and statuses[-1] == L.UNSCORED
    assert not any(o.opens for o in outs)


def test_the_baseline_warms_before_a_model_arrives(detector: AnomalyDetector) -> None:
    """An agent scored for the first time after a model is promoted is judged at once, not re-warmed."""
    stream = FLEET["a5"]
    state: dict = {}
    for i in range(fe.WARMUP + 10):
        at = T0 + timedelta(seconds=float(stream.t[i]))
        state = live.step(live.Models(), "a5", state, metrics_of(stream.X[i]), at, 30.0).state
    i = fe.WARMUP + 10
    out = live.step(
        live.Models(detector, "v1"),
        "a5",
        state,
        metrics_of(stream.X[i]),
        T0 + timedelta(seconds=float(stream.t[i])),
        30.0,
    )
    assert out.state["status"] == L.NORMAL and out.state["score"] is not None


def test_too_few_metrics_is_not_scored(detector: AnomalyDetector) -> None:
    out = live.step(live.Models(detector, "v1"), "a1", {}, {"cpu_pct": 3.0, "active_tasks": 2}, T0, 30.0)
    assert out.state["status"] == L.UNSCORED and "1 of the 6" in out.state["reason"]
    assert "baseline" not in out.state


def test_metric_mapping() -> None:
    row, present = live.row_of({"latency_ms_p95": 120, "error_rate": 0.1, "tokens_per_s": 9.5, "flag": True})
    assert present == 3
    assert row.tolist() == [120.0, 0.1, 0.0, 0.0, 9.5, 0.0]


def test_failure_warnings_open_and_resolve_the_failure_risk_episode() -> None:
    from shared.ml.failure import FailurePredictor
    from shared.ml.failure_warnings import warnings_from_risk
    from shared.ml.simulate import simulate_failures

    streams, events = simulate_failures(agents=30, rows=700, seed=3)
    pred = FailurePredictor(max_iter=60).fit(streams, events)
    loaded = FailurePredictor.from_bytes(pred.to_bytes())  # as the function loads it: no scikit-learn
    failing = next(s for s in streams.values() if any(e.agent_id == s.agent_id for e in events))
    expected = warnings_from_risk(pred.predict_risk(failing), pred.threshold)
    models = live.Models(failure=loaded, failure_version="f1")
    state: dict = {}
    warned, risks = [], []
    for i in range(len(failing)):
        at = T0 + timedelta(seconds=float(failing.t[i]))
        out = live.step(models, failing.agent_id, state, metrics_of(failing.X[i]), at, failing.interval_s)
        state = json.loads(json.dumps(out.state))
        risks.append(state["risk"])
        if any(op.rule == L.FAILURE_RISK for op in out.opens):
            warned.append(i)
            op = next(op for op in out.opens if op.rule == L.FAILURE_RISK)
            assert op.details["model"] == "f1" and op.details["risk"] >= pred.threshold
    assert np.allclose(risks, pred.predict_risk(failing), atol=1e-4)  # rounded to 4 places in the state
    assert warned == expected and warned


def test_a_state_it_cannot_read_is_started_afresh_and_never_fails_the_heartbeat(detector: AnomalyDetector) -> None:
    stream = FLEET["a6"]
    models = live.Models(detector, "v1")
    broken = {"v": live.STATE_VERSION, "baseline": {"interval": 30.0, "n": 40, "mean": [1.0]}}  # truncated
    out = live.step(models, "a6", broken, metrics_of(stream.X[0]), T0, 30.0)
    assert out.state["status"] == L.UNSCORED and "reset" in out.state["reason"]
    assert {r.rule for r in out.resolves} == {L.ANOMALY, L.FAILURE_RISK}  # nothing left open
    older = {"v": 0, "baseline": {"whatever": 1}, "episode": {"opened": 5}}
    out = live.step(models, "a6", older, metrics_of(stream.X[0]), T0, 30.0)
    assert out.state["v"] == live.STATE_VERSION and out.state["baseline"]["n"] == 1
    assert {r.rule for r in out.resolves} >= {L.ANOMALY}


def test_episodes_close_when_the_agent_or_the_model_stops_being_scored(detector: AnomalyDetector) -> None:
    stream = FLEET["a7"]
    X = stream.X.copy()
    X[500:, 0] *= 6.0
    faulty = with_x(stream, X)
    state: dict = {}
    opened_at = None
    for i in range(560):
        at = T0 + timedelta(seconds=float(faulty.t[i]))
        out = live.step(live.Models(detector, "v1"), "a7", state, metrics_of(faulty.X[i]), at, 30.0)
        state = json.loads(json.dumps(out.state))
        if any(op.rule == L.ANOMALY for op in out.opens):
            opened_at = i
    assert opened_at is not None and state["status"] == L.ANOMALOUS
    few = live.step(live.Models(detector, "v1"), "a7", state, {"cpu_pct": 1.0}, T0, 30.0)
    assert few.state["status"] == L.UNSCORED and L.ANOMALY in {r.rule for r in few.resolves}
    assert few.state["baseline"] == state["baseline"]  # the baseline is kept for when metrics return
    gone = live.step(live.Models(), "a7", state, metrics_of(faulty.X[560]), T0, 30.0)
    assert L.ANOMALY in {r.rule for r in gone.resolves} and gone.state["episode"] is None


def test_a_new_heartbeat_interval_is_taken_up(detector: AnomalyDetector) -> None:
    stream = FLEET["a8"]
    state: dict = {}
    for i in range(60):
        at = T0 + timedelta(seconds=30.0 * i)
        state = live.step(live.Models(detector, "v1"), "a8", state, metrics_of(stream.X[i]), at, 30.0).state
    statuses = []
    for j in range(60, 80):  # re-registered: one heartbeat every 120 s
        at = T0 + timedelta(seconds=30.0 * 59 + 120.0 * (j - 59))
        state = live.step(live.Models(detector, "v1"), "a8", state, metrics_of(stream.X[j]), at, 120.0).state
        statuses.append(state["status"])
    assert state["baseline"]["interval"] == 120.0
    assert L.ANOMALOUS not in statuses[2:]


def test_the_step_leaves_the_state_it_was_given_alone(detector: AnomalyDetector) -> None:
    """A transaction retried runs the step again on the same state: it must find it as it was."""
    stream = FLEET["a3"]
    models = live.Models(detector, "v1")
    state: dict = {}
    for i in range(60):
        at = T0 + timedelta(seconds=float(stream.t[i]))
        before = json.loads(json.dumps(state))
        out = live.step(models, "a3", state, metrics_of(stream.X[i]), at, stream.interval_s, version="v1")
        again = live.step(models, "a3", state, metrics_of(stream.X[i]), at, stream.interval_s, version="v1")
        assert json.loads(json.dumps(state)) == before
        assert json.dumps(out.state, sort_keys=True) == json.dumps(again.state, sort_keys=True)
        state = out.state  # not through JSON: the lists are handed on as they are
    assert state["baseline"]["n"] == 60
