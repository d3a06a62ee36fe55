"""Failure prediction of issue 7: labels, warnings, quality across fleets, lazy scikit-learn, the live
``observe`` path (== the batch path, state kept as a JSON document) and the pickle-free model file. The flat
trees equal scikit-learn within ``provenance.RTOL``/``ATOL``, with the same warnings."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from shared.ml import features as fe
from shared.ml.data import METRICS, AgentStream, FaultEvent
from shared.ml.failure import FailurePredictor, FailureState, FailureVerdict, evaluate
from shared.ml.failure_features import (
    ALL_FEATURES,
    ERR_COL,
    TREND_INPUTS,
    TREND_WINDOW,
    design_many,
    explain,
    labels,
    trend_inputs,
    window_trends,
)
from shared.ml.failure_warnings import PERSISTENCE, score_warnings, warnings_from_risk
from shared.ml.features_live import features as live_features
from shared.ml.simulate import simulate_failures
from tests.unit.test_ml_flat import assert_close_and_same_decisions


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
    test = simulate_failures(agents=40, rows=700, seed=4)
    model, sc = evaluate(simulate_failures(agents=60, rows=700, seed=3), test, predictor=FailurePredictor(max_iter=100))
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


# ------------------------------------------------------------------------------------------ live path
@pytest.fixture(scope="module")
def predictor() -> FailurePredictor:
    return FailurePredictor(max_iter=80).fit(*simulate_failures(agents=40, rows=600, seed=3))


@pytest.fixture(scope="module")
def fleet() -> tuple[dict[str, AgentStream], list[FaultEvent]]:
    return simulate_failures(agents=16, rows=600, seed=21)


def observe_stream(
    pred: FailurePredictor, stream: AgentStream, through_doc: bool
) -> tuple[np.ndarray, list[FailureVerdict]]:
    """Feed a stream heartbeat by heartbeat as a live caller does (features computed by the caller; the
    failure state optionally stored as JSON and read back between every two heartbeats)."""
    baseline = fe.Baseline.new(stream.interval_s)
    state = FailureState()
    risks: list[float] = []
    verdicts: list[FailureVerdict] = []
    for i in range(len(stream)):
        dt = stream.interval_s if i == 0 else float(stream.t[i] - stream.t[i - 1])
        ready = baseline.ready
        f = live_features(stream.X[i], dt, baseline)
        v = pred.observe(state, f, stream.X[i], ready)
        if through_doc:
            state = FailureState.from_doc(json.loads(json.dumps(state.to_doc(), allow_nan=False)))
        risks.append(v.risk)
        verdicts.append(v)
    return np.asarray(risks), verdicts


def cleared_rows(risk: np.ndarray, threshold: float) -> list[int]:
    """Reference of the documented clearing rule: an open warning ends on the PERSISTENCE-th row below."""
    out, run, low, is_open = [], 0, 0, False
    for i, high in enumerate(risk >= threshold):
        run = run + 1 if high else 0
        if run == PERSISTENCE:
            is_open, low = True, 0
        elif is_open:
            low = 0 if high else low + 1
            if low == PERSISTENCE:
                is_open, low = False, 0
                out.append(i)
    return out


def test_observe_equals_the_batch_path(
    predictor: FailurePredictor, fleet: tuple[dict[str, AgentStream], list[FaultEvent]]
) -> None:
    streams, events = fleet
    warned = 0
    for agent_id in sorted({e.agent_id for e in events})[:6] + sorted(streams)[:2]:
        stream = streams[agent_id]
        batch = predictor.predict_risk(stream)
        batch_warnings = warnings_from_risk(batch, predictor.threshold)
        for through_doc in (False, True):
            # Live: the flat trees, one row at a time; batch: scikit-learn (a stream is more than 256 rows).
            risks, verdicts = observe_stream(predictor, stream, through_doc)
            assert_close_and_same_decisions(risks, batch, predictor.threshold)
            assert [i for i, v in enumerate(verdicts) if v.warn] == batch_warnings
            assert [i for i, v in enumerate(verdicts) if v.cleared] == cleared_rows(batch, predictor.threshold)
            assert all(v.risk == 0.0 for v in verdicts[: fe.WARMUP])
            for v in verdicts:
                assert v.high == (v.risk >= predictor.threshold)
                assert (len(v.features) > 0) == v.high and set(v.features) <= set(ALL_FEATURES)
        warned += len(batch_warnings)
    assert warned > 0  # the comparison covered warnings


def test_observe_state_document_is_plain_json(predictor: FailurePredictor) -> None:
    stream = simulate_failures(agents=2, rows=500, seed=22)[0]["agent-0000"]
    baseline, state = fe.Baseline.new(stream.interval_s), FailureState()
    for i in range(40):
        ready = baseline.ready
        predictor.observe(state, live_features(stream.X[i], stream.interval_s, baseline), stream.X[i], ready)
    doc = state.to_doc()
    assert json.loads(json.dumps(doc)) == doc

    def plain(v: Any, depth: int) -> bool:  # Firestore: maps of scalars or flat lists, no array in an array
        if isinstance(v, dict):
            return all(isinstance(k, str) and plain(x, depth) for k, x in v.items())
        if isinstance(v, list):
            return depth == 0 and all(plain(x, 1) for x in v)
        return type(v) in (int, float, bool, str)

    assert plain(doc, 0)
    assert doc["rows"] == 40 and set(doc["window"]) == set(TREND_INPUTS)
    assert all(len(v) == TREND_WINDOW for v in doc["window"].values())
    bad = json.loads(json.dumps(doc))
    bad["window"]["error_rate"] = bad["window"]["error_rate"][:-1]
    with pytest.raises(ValueError):
        FailureState.from_doc(bad)


def test_observe_pads_the_trend_window_with_the_first_row(predictor: FailurePredictor) -> None:
    state = FailureState()
    f = np.arange(fe.N_FEATURES, dtype=np.float64)
    row = np.linspace(1.0, 2.0, len(METRICS))
    v = predictor.observe(state, f, row, valid=False)
    assert v == FailureVerdict(0.0)
    assert state.rows == 1 and np.all(state.window == state.window[0])


def test_warn_and_clear_follow_the_persistence_rule() -> None:
    """Scripted risks: warnings exactly as ``warnings_from_risk``; a warning clears after PERSISTENCE low rows."""
    risk = [0.9, 0.1, 0.9, 0.9, 0.9, 0.2, 0.8, 0.95, 0.1, 0.1, 0.1, 0.9, 0.9, 0.3]
    pred = FailurePredictor()
    pred.threshold = 0.8
    it = iter(risk)
    pred._proba = lambda D: np.asarray([next(it)])  # type: ignore[method-assign]
    state = FailureState()
    out = [pred.observe(state, np.zeros(fe.N_FEATURES), np.ones(len(METRICS)), True) for _ in risk]
    assert PERSISTENCE == 2
    assert [i for i, v in enumerate(out) if v.warn] == warnings_from_risk(np.asarray(risk), 0.8) == [3, 7, 12]
    assert [i for i, v in enumerate(out) if v.cleared] == [9]
    assert [v.open for v in out] == [False] * 3 + [True] * 6 + [False] * 3 + [True] * 2


def test_live_trends_equal_the_batch_trends_bit_for_bit() -> None:
    """``window_trends`` (a running sum of products) is the batch path's ``np.convolve``, exactly: on whole
    streams through the live window, and on windows built to reach zeros, infinities and NaN."""
    streams, _ = simulate_failures(agents=3, rows=500, seed=5)
    for stream, (D, _valid) in zip(streams.values(), design_many(list(streams.values())), strict=True):
        baseline, state = fe.Baseline.new(stream.interval_s), FailureState()
        for i in range(len(stream)):
            f = live_features(stream.X[i], stream.interval_s if i == 0 else stream.t[i] - stream.t[i - 1], baseline)
            state.push(trend_inputs(f, float(stream.X[i, ERR_COL])))
            assert np.array_equal(D[i, len(fe.FEATURES) :], window_trends(state.window))
    slope = np.arange(TREND_WINDOW, dtype=np.float64) - (TREND_WINDOW - 1) / 2
    slope /= np.sum(slope**2)
    rng = np.random.default_rng(0)
    for k in range(3000):
        w = rng.standard_normal((TREND_WINDOW, len(TREND_INPUTS))) * 10.0 ** rng.integers(-300, 300)
        w[: k % TREND_WINDOW] = 0.0 if k % 2 else -0.0
        if k % 7 == 0:
            w[rng.integers(TREND_WINDOW), rng.integers(len(TREND_INPUTS))] = (np.inf, -np.inf, np.nan)[k % 3]
        expected = [
            np.convolve(w[:, j], slope[::-1] if j < 4 else np.full(TREND_WINDOW, 0.1), "valid")[0] for j in range(6)
        ]
        got = window_trends(w)
        assert np.array_equal(got, expected, equal_nan=True) and np.array_equal(np.signbit(got), np.signbit(expected))


def test_explain_names_the_moving_trend() -> None:
    normal = np.zeros(len(ALL_FEATURES))
    for ratio in ("gap_ratio", "cost_ratio", "cost_per_token_ratio"):
        normal[ALL_FEATURES.index(ratio)] = 1.0
    assert explain(normal) == ()
    d = normal.copy()
    d[ALL_FEATURES.index("slope_error_rate")] = 0.01  # 10 rate points over the window
    d[ALL_FEATURES.index("z_memory_pct")] = 2.0
    d[ALL_FEATURES.index("slope_z_latency_ms")] = 0.1  # 1 deviation over the window
    assert explain(d) == ("slope_error_rate", "z_memory_pct", "slope_z_latency_ms")


# ---------------------------------------------------------------------------------------- model file
def test_flat_trees_and_sklearn_agree(
    predictor: FailurePredictor, fleet: tuple[dict[str, AgentStream], list[FaultEvent]]
) -> None:
    assert predictor.flat is not None and predictor.model is not None
    flat, model = predictor.flat, predictor.model
    streams, events = fleet
    warned = 0
    for agent_id in sorted({e.agent_id for e in events})[:4] + sorted(streams)[:2]:
        stream = streams[agent_id]
        try:  # one scorer at a time (with both, a batch of more than 256 rows goes to scikit-learn)
            predictor.model = None
            with_flat = predictor.predict_risk(stream)
            predictor.model, predictor.flat = model, None
            with_sklearn = predictor.predict_risk(stream)
        finally:
            predictor.flat, predictor.model = flat, model
        assert_close_and_same_decisions(with_flat, with_sklearn, predictor.threshold)
        expected = warnings_from_risk(with_sklearn, predictor.threshold)
        assert warnings_from_risk(with_flat, predictor.threshold) == expected
        warned += len(expected)
    assert warned > 0  # the comparison covered warnings


def test_version_and_round_trip_without_sklearn_model(
    predictor: FailurePredictor, fleet: tuple[dict[str, AgentStream], list[FaultEvent]]
) -> None:
    assert predictor.version.startswith("hgb-") and predictor.version.endswith("rows-40agents")
    data = predictor.to_bytes()
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        meta = json.loads(z["meta"].tobytes().decode())
        assert "sklearn_skops" in z.files
    assert meta["features"] == list(ALL_FEATURES) and meta["version"] == predictor.version
    assert meta["threshold"] == predictor.threshold and meta["horizon"] == predictor.horizon
    loaded = FailurePredictor.from_bytes(data)
    assert loaded.model is None and loaded.flat is not None
    assert (loaded.version, loaded.threshold, loaded.horizon) == (
        predictor.version,
        predictor.threshold,
        predictor.horizon,
    )
    assert loaded.validation == predictor.validation
    assert (loaded.max_iter, loaded.learning_rate) == (predictor.max_iter, predictor.learning_rate)
    for stream in list(fleet[0].values())[:3]:  # loaded: the flat trees; in memory: scikit-learn (> 256 rows)
        got, expected = loaded.predict_risk(stream), predictor.predict_risk(stream)
        assert_close_and_same_decisions(got, expected, predictor.threshold)
        assert warnings_from_risk(got, loaded.threshold) == warnings_from_risk(expected, predictor.threshold)
    with_model = FailurePredictor.from_bytes(data, load_model=True)
    assert with_model.model is not None
    X = np.random.default_rng(0).normal(size=(50, len(ALL_FEATURES)))
    # The same scikit-learn object back from its skops bytes, scored by the same code: bit for bit.
    assert np.array_equal(with_model.model.predict_proba(X)[:, 1], predictor.model.predict_proba(X)[:, 1])


def test_a_loaded_model_predicts_without_sklearn(predictor: FailurePredictor, tmp_path: Path) -> None:
    path = tmp_path / "failure.npz"
    path.write_bytes(predictor.to_bytes())
    stream = simulate_failures(agents=2, rows=500, seed=23)[0]["agent-0001"]
    expected = predictor.predict_risk(stream)
    code = (
        "import sys, pathlib, json\n"
        "from shared.ml.failure import FailurePredictor\n"
        "from shared.ml.simulate import simulate_failures\n"
        f"p = FailurePredictor.from_bytes(pathlib.Path({str(path)!r}).read_bytes())\n"
        "s = simulate_failures(agents=2, rows=500, seed=23)[0]['agent-0001']\n"
        "print(json.dumps(p.predict_risk(s).tolist())); print('sklearn' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    risks, imported = out.stdout.strip().splitlines()
    assert imported == "False"
    got = np.asarray(json.loads(risks))  # floats round-trip exactly in JSON
    # The flat trees (no scikit-learn in that process) against scikit-learn here (500 rows: its batch path).
    assert_close_and_same_decisions(got, expected, predictor.threshold)
    assert warnings_from_risk(got, predictor.threshold) == warnings_from_risk(expected, predictor.threshold)


def _rewrite(data: bytes, **changes: Any) -> bytes:
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    arrays.update(changes)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def test_from_bytes_rejects_other_features_and_untrusted_types(predictor: FailurePredictor) -> None:
    import skops.io as sio

    data = predictor.to_bytes()
    meta = predictor.metadata()
    meta["features"] = [*ALL_FEATURES[:-1], "something_else"]
    other = _rewrite(data, meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8))
    with pytest.raises(ValueError, match="other features"):
        FailurePredictor.from_bytes(other)
    meta = {**predictor.metadata(), "format_version": 99}
    with pytest.raises(ValueError, match="format"):
        FailurePredictor.from_bytes(_rewrite(data, meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)))
    import collections

    evil = np.frombuffer(sio.dumps({"x": collections.Counter("abc")}), dtype=np.uint8)
    tampered = _rewrite(data, sklearn_skops=evil)
    assert FailurePredictor.from_bytes(tampered).model is None  # not loaded unless asked
    with pytest.raises(ValueError, match="untrusted"):
        FailurePredictor.from_bytes(tampered, load_model=True)


def test_a_fold_whose_other_agents_never_failed_does_not_stop_the_fit() -> None:
    """The agents are split in folds at random (their ids are): when every failure sits in one fold, the
    model that would hold that fold out sees one class only. Those agents are scored in-sample instead
    of the fit failing (a fleet of many healthy agents and few failing ones made this happen)."""
    streams, events = simulate_failures(agents=8, rows=600, seed=5)
    failing = sorted({e.agent_id for e in events})[0]
    only_one = [e for e in events if e.agent_id == failing]
    pred = FailurePredictor(max_iter=10).fit(streams, only_one)
    assert 0 < pred.threshold < 1 and pred.validation is not None
    assert pred.flat is not None
