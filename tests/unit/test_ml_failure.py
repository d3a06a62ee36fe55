"""Failure prediction of issue 7: labels, warnings, quality across fleets, and lazy scikit-learn."""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np

from shared.ml.data import FaultEvent
from shared.ml.failure import FailurePredictor, evaluate, labels, score_warnings, warnings_from_risk
from shared.ml.simulate import simulate_failures


def test_labels_on_a_hand_built_stream() -> None:
    events = [FaultEvent("a", "failure", 8, 11), FaultEvent("a", "failure", 14, 15)]
    y, keep = labels(16, events, horizon=3)
    #          0  1  2  3  4  5  6  7  8  9 10 11 12 13 14 15
    expected = [0, 0, 0, 0, 0, 1, 1, 1, 0, 0, 0, 1, 1, 1, 0, 0]
    assert y.tolist() == expected
    assert np.flatnonzero(~keep).tolist() == [8, 9, 10, 14]


def test_labels_clip_at_the_start_of_the_stream() -> None:
    y, keep = labels(5, [FaultEvent("a", "failure", 2, 3)], horizon=10)
    assert y.tolist() == [1, 1, 0, 0, 0]
    assert keep.tolist() == [True, True, False, True, True]


def test_warnings_need_persistence_and_rearm() -> None:
    risk = np.array([0.9, 0.1, 0.9, 0.9, 0.9, 0.2, 0.8, 0.95, 0.1])
    assert warnings_from_risk(risk, 0.8) == [3, 7]


def test_score_warnings_counts_lead_precision_and_false_warnings() -> None:
    events = [FaultEvent("a", "failure", 50, 55)]
    sc = score_warnings({"a": [20, 42], "b": [10]}, {"a": 100, "b": 100}, events, horizon=10)
    assert (sc.failures, sc.warned, sc.lead_times) == (1, 1, (8,))
    assert (sc.warnings, sc.correct) == (3, 1)
    assert sc.healthy_rows == 100 + 100 - 20  # agent a: rows [35, 55) are before or inside the failure
    assert sc.false_per_1000 is not None and abs(sc.false_per_1000 - 2000 / 180) < 1e-9


def test_simulate_failures_is_deterministic_and_labelled() -> None:
    a, ev_a = simulate_failures(agents=20, rows=600, seed=5)
    b, ev_b = simulate_failures(agents=20, rows=600, seed=5)
    assert ev_a == ev_b and all(np.array_equal(a[k].X, b[k].X) for k in a)
    assert 5 <= len(ev_a) <= 15 and all(e.kind == "failure" for e in ev_a)
    for e in ev_a:
        s = a[e.agent_id]
        gap = (s.t[e.start] - s.t[e.start - 1]) / s.interval_s
        assert gap >= 5 or s.X[e.start : e.end, 1].min() >= 0.3


def test_trained_on_one_fleet_warns_before_failures_of_another() -> None:
    started = time.perf_counter()
    test = simulate_failures(agents=40, rows=700, seed=4)
    model, sc = evaluate(simulate_failures(agents=60, rows=700, seed=3), test, predictor=FailurePredictor(max_iter=100))
    assert time.perf_counter() - started < 15
    assert sc.failures == 20
    assert sc.share_warned is not None and sc.share_warned >= 0.7
    assert sc.precision is not None and sc.precision >= 0.7
    assert sc.median_lead is not None and sc.median_lead >= 1
    assert 0.0 < model.threshold < 1.0
    stream = test[0][test[1][0].agent_id]
    risk = model.predict_risk(stream)
    assert risk.shape == (len(stream),) and np.all((risk >= 0) & (risk <= 1))
    assert model.warnings(stream) == warnings_from_risk(risk, model.threshold)


def test_importing_does_not_import_sklearn() -> None:
    code = "import sys, shared.ml.failure; print('sklearn' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
