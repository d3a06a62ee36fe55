"""The anomaly detector of issue 7: features (streaming == batch), the flat forest scorer (== sklearn within
``provenance.RTOL``/``ATOL``, with the same decisions and episodes), warm-up, persistence, detection of
spikes / stuck values / drift / gaps, no alarms on healthy noise, safe round trip, and no scikit-learn at
import time. Synthetic streams are built here."""

from __future__ import annotations

import copy
import subprocess
import sys
from typing import Any

import numpy as np
import pytest

from shared.ml import features as fe
from shared.ml.anomaly import AnomalyDetector
from shared.ml.anomaly_episodes import ANOMALOUS, INSUFFICIENT, NORMAL
from shared.ml.anomaly_forest import FlatForest
from shared.ml.data import AgentStream
from shared.ml.features_live import features as live_features
from tests.unit.test_ml_flat import assert_close_and_same_decisions

INTERVAL = 30.0
LAT = 0


def healthy(agent_id: str, rows: int, seed: int) -> AgentStream:
    """A healthy agent: its own levels and multiplicative / additive noise, jittered heartbeats."""
    rng = np.random.default_rng(seed)
    t = np.cumsum(INTERVAL * (1.0 + np.clip(rng.normal(0.0, 0.03, rows), -0.1, 0.1)))
    X = np.column_stack(
        [
            rng.uniform(200, 2000) * np.exp(rng.normal(0.0, 0.1, rows)),
            rng.uniform(0.005, 0.03) * np.exp(rng.normal(0.0, 0.35, rows)),
            rng.uniform(20, 60) + rng.normal(0.0, 3.0, rows),
            rng.uniform(30, 70) + rng.normal(0.0, 2.0, rows),
            rng.uniform(20, 400) * np.exp(rng.normal(0.0, 0.1, rows)),
            rng.uniform(0.01, 0.5) * np.exp(rng.normal(0.0, 0.1, rows)),
        ]
    )
    return AgentStream(agent_id, INTERVAL, t, X)


def with_x(stream: AgentStream, X: np.ndarray, t: np.ndarray | None = None) -> AgentStream:
    return AgentStream(stream.agent_id, stream.interval_s, stream.t if t is None else t, X)


TRAIN = 400
FLEET = {f"a{i}": healthy(f"a{i}", 900, seed=i) for i in range(16)}


@pytest.fixture(scope="module")
def detector() -> AnomalyDetector:
    det = AnomalyDetector(min_history_s=0.0)  # these streams are shorter than a day
    det.fit({a: s.head(TRAIN) for a, s in FLEET.items()})
    return det


def first_detection_after(det: AnomalyDetector, stream: AgentStream, start: int) -> int | None:
    starts = [d.start for d in det.detect(stream) if d.start >= start]
    return min(starts) - start if starts else None


# ------------------------------------------------------------------------------------------ features
def test_streaming_features_equal_batch_features() -> None:
    streams = [FLEET["a0"], FLEET["a1"].head(120), FLEET["a2"].head(7)]
    X = FLEET["a3"].X.copy()
    X[200:220] = X[199]  # stuck
    t = FLEET["a3"].t.copy()
    t[300:] += 10 * INTERVAL  # gap
    X[500:] *= 3.0  # a level shift (held, then re-learned)
    streams.append(with_x(FLEET["a3"], X, t))
    batch = fe.batch_features_many(streams)
    for stream, (F, valid) in zip(streams, batch, strict=True):
        assert np.array_equal(F, fe.batch_features(stream)[0])
        state = fe.Baseline.new(stream.interval_s)
        rows = []
        for i in range(len(stream)):
            dt = stream.interval_s if i == 0 else float(stream.t[i] - stream.t[i - 1])
            assert state.ready == (i >= fe.WARMUP)
            rows.append(live_features(stream.X[i], dt, state))
        assert np.array_equal(F, np.asarray(rows).reshape(-1, fe.N_FEATURES))  # bit for bit
        assert np.array_equal(valid, np.arange(len(stream)) >= fe.WARMUP)
    assert len(fe.FEATURES) == fe.N_FEATURES == batch[0][0].shape[1]


# ------------------------------------------------------------------------------------------- scorer
def test_flat_forest_equals_sklearn_score_samples(detector: AnomalyDetector) -> None:
    assert detector.flat is not None and detector.forest is not None
    rng = np.random.default_rng(3)
    F, valid = fe.batch_features(FLEET["a5"])
    rows = np.vstack([rng.normal(0.0, 3.0, (200, fe.N_FEATURES)), F[valid][:200]])
    expected = -detector.forest.score_samples(rows)
    # The same side of the fleet floor and of every agent's own threshold (a row is high above it).
    thresholds = sorted({detector.calibration.fleet.threshold, *detector.thresholds.values()})
    assert_close_and_same_decisions(detector.flat.score(rows), expected, thresholds, strict=True)
    one = [detector.flat.score_one(row) for row in rows[:50]]
    assert_close_and_same_decisions(one, expected[:50], thresholds, strict=True)
    assert np.any(expected > detector.calibration.fleet.threshold) and np.any(
        expected <= detector.calibration.fleet.threshold
    )


class SklearnScorer:
    """``FlatForest``'s interface scored by the fitted forest itself (``-score_samples``)."""

    def __init__(self, forest: Any) -> None:
        self.forest = forest

    def score(self, X: np.ndarray) -> np.ndarray:
        return -self.forest.score_samples(np.asarray(X, dtype=np.float64))

    def score_one(self, row: np.ndarray) -> float:
        return float(self.score(np.asarray(row)[None, :])[0])


def test_scored_by_sklearn_the_detector_raises_the_same_episodes(detector: AnomalyDetector) -> None:
    """Detection end to end, with scikit-learn's scores instead of the flat trees: the same episodes (start,
    end, features) and the same status on every row, live and in batch."""
    by_sklearn = copy.copy(detector)
    by_sklearn.flat, by_sklearn._live, by_sklearn._status = SklearnScorer(detector.forest), {}, {}  # type: ignore[assignment]
    found = 0
    for agent_id in ("a5", "a6", "a9"):
        X = FLEET[agent_id].X.copy()
        X[500:506, LAT] *= 4.0  # a spike
        X[600:630] = X[599]  # stuck
        X[700:, 2] += np.linspace(0.0, 40.0, X.shape[0] - 700)  # CPU drifting up
        stream = with_x(FLEET[agent_id], X)
        flat_found, flat_status = detector.detect_rows(stream)
        sk_found, sk_status = by_sklearn.detect_rows(stream)
        assert flat_found == sk_found and flat_status == sk_status
        found += len(flat_found)
        live = [by_sklearn.observe(agent_id, float(stream.t[i]), stream.X[i], INTERVAL).status for i in range(560)]
        assert live == flat_status[:560]
    assert found > 0  # the comparison covered episodes


def test_flat_forest_with_feature_subsampling() -> None:
    from sklearn.ensemble import IsolationForest

    rng = np.random.default_rng(0)
    X = rng.normal(size=(500, 6))
    forest = IsolationForest(n_estimators=20, max_samples=64, max_features=3, random_state=1).fit(X)
    flat = FlatForest.from_forest(forest)
    Y = rng.normal(0.0, 2.0, (100, 6))
    expected = -forest.score_samples(Y)
    assert_close_and_same_decisions(flat.score(Y), expected, np.quantile(expected, [0.5, 0.9, 0.99]), strict=True)
    # The forest's own decision (its offset_): -1 where score_samples falls under it.
    np.testing.assert_array_equal(forest.predict(Y), np.where(-flat.score(Y) - forest.offset_ >= 0, 1, -1))


# ---------------------------------------------------------------------------------------- detection
def test_warmup_reports_insufficient_data(detector: AnomalyDetector) -> None:
    stream = FLEET["a1"].head(fe.WARMUP + 5)
    _, status = detector.detect_rows(stream)
    assert status[: fe.WARMUP] == [INSUFFICIENT] * fe.WARMUP
    assert set(status[fe.WARMUP :]) == {NORMAL}
    assert detector.status("never-seen") == INSUFFICIENT
    verdict = detector.observe("live", 0.0, stream.X[0], INTERVAL)
    assert verdict.status == INSUFFICIENT and detector.status("live") == INSUFFICIENT


def test_spike_detected_within_three_heartbeats(detector: AnomalyDetector) -> None:
    stream = FLEET["a0"]
    X = stream.X.copy()
    X[600:606, LAT] *= 4.0
    found = detector.detect(with_x(stream, X))
    hits = [d for d in found if 600 <= d.start <= 603]
    assert hits, found
    assert hits[0].rule == "anomaly" and "latency_ms" in " ".join(hits[0].features)
    assert len(hits[0].features) == 3


def test_constant_then_spike_detected_within_three_heartbeats() -> None:
    rng = np.random.default_rng(5)
    rows = 300
    t = np.arange(rows) * INTERVAL
    X = np.tile([500.0, 0.01, 40.0, 50.0, 100.0, 0.1], (rows, 1)) + rng.normal(0.0, 1e-3, (rows, 6))
    fleet = {f"c{i}": AgentStream(f"c{i}", INTERVAL, t, X + rng.normal(0.0, 1e-3, X.shape)) for i in range(6)}
    det = AnomalyDetector(max_samples=128, min_history_s=0.0)
    det.fit({a: s.head(200) for a, s in fleet.items()})
    Y = fleet["c0"].X.copy()
    Y[250:254, 2] = 98.0
    delay = first_detection_after(det, with_x(fleet["c0"], Y), 250)
    assert delay is not None and delay <= 3


def test_stuck_values_detected_within_three_heartbeats(detector: AnomalyDetector) -> None:
    stream = FLEET["a2"]
    X = stream.X.copy()
    X[600:630] = X[599]
    found = detector.detect(with_x(stream, X))
    hits = [d for d in found if 600 <= d.start <= 603]
    assert hits and hits[0].features[0] == "stuck_run"


def test_slow_drift_detected(detector: AnomalyDetector) -> None:
    stream = FLEET["a3"]
    X = stream.X.copy()
    ramp = 1.0 + 0.8 * np.arange(1, 201) / 200  # +80 % latency over 200 heartbeats, then it stays
    X[500:700, LAT] *= ramp
    X[700:, LAT] *= ramp[-1]
    found = [d for d in detector.detect(with_x(stream, X)) if d.start >= 500]
    assert found and found[0].start < 750
    assert "latency_ms" in found[0].features[0]


def test_gap_reported_by_the_same_detector(detector: AnomalyDetector) -> None:
    stream = FLEET["a4"]
    t = stream.t.copy()
    t[650:] += 12 * INTERVAL
    found = detector.detect(with_x(stream, stream.X, t))
    assert any(d.start == 650 and d.rule == "anomaly" and d.features == ("gap_ratio",) for d in found)


def test_healthy_noisy_streams_raise_few_detections(detector: AnomalyDetector) -> None:
    fresh = {f"h{i}": healthy(f"a{i}", 900, seed=i) for i in range(16)}  # same agents, whole streams
    test_rows = 0
    found = 0
    for stream in fresh.values():
        found += sum(d.start >= TRAIN for d in detector.detect(stream))
        test_rows += len(stream) - TRAIN
    assert found <= 2, f"{found} false alarms in {test_rows} healthy rows"


def test_observe_matches_detect(detector: AnomalyDetector) -> None:
    stream = FLEET["a6"]
    X = stream.X.copy()
    X[600:606, LAT] *= 5.0
    stream = with_x(stream, X)
    _, status = detector.detect_rows(stream)
    live = AnomalyDetector.from_bytes(detector.to_bytes(), load_forest=False)
    seen = [live.observe(stream.agent_id, float(stream.t[i]), stream.X[i], INTERVAL).status for i in range(len(stream))]
    assert seen == status
    assert ANOMALOUS in seen


def test_round_trip_scores_identically(detector: AnomalyDetector) -> None:
    data = detector.to_bytes()
    loaded = AnomalyDetector.from_bytes(data)
    assert loaded.flat is not None and detector.flat is not None
    F, _ = fe.batch_features(FLEET["a7"])
    assert np.array_equal(loaded.flat.score(F), detector.flat.score(F))  # the same scorer: bit for bit
    assert loaded.thresholds == detector.thresholds
    assert loaded.metadata() == detector.metadata()
    assert loaded.detect(FLEET["a7"]) == detector.detect(FLEET["a7"])
    if loaded.forest is not None:  # skops installed: the forest itself came back too (same code: bit for bit)
        assert np.array_equal(loaded.forest.score_samples(F), detector.forest.score_samples(F))


def test_importing_does_not_import_sklearn() -> None:
    code = "import sys, shared.ml.features, shared.ml.anomaly; print('sklearn' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
