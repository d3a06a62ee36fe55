"""Per-agent calibration of the anomaly detector (issue 24; shared/ml/anomaly_calibration.py through
``AnomalyDetector.fit``): bounds never narrower than the agent's own healthy range, shrinkage toward its kind
while its history is short, unseen agents judged by their kind (or the fleet), a quiet kind tighter than a
noisy one, the one-sided features, the history gate, settling after a deploy, persistence and clearing, and
the round trip. A small mixed fleet is built here (quiet chat agents, noisy retrievers, workers without
tokens)."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from shared.ml import anomaly_rows as rows
from shared.ml import features as fe
from shared.ml.anomaly import AnomalyDetector
from shared.ml.anomaly_calibration import MIN_PAD, calibrate
from shared.ml.anomaly_episodes import INSUFFICIENT, NORMAL
from shared.ml.data import AgentStream

INTERVAL = 30.0
LAT, ERR, CPU, MEM, TOK, COST = range(6)
ROWS = 600
TRAIN = 500


def col(name: str) -> int:
    return fe.FEATURES.index(name)


def agent(agent_id: str, kind: str, rows: int, seed: int, still: bool = False) -> AgentStream:
    """A healthy agent of its kind: chat (quiet), retriever (noisy, heavy-tailed latency), worker (no tokens);
    ``still``: latency and memory far steadier than the deviation floors (its own z range is tiny)."""
    rng = np.random.default_rng(seed)
    t = INTERVAL * np.arange(1, rows + 1, dtype=np.float64)
    noisy = kind == "retriever"
    lat = rng.uniform(200, 600) * np.exp(rng.normal(0.0, 0.5 if noisy else 0.0005 if still else 0.03, rows))
    err = rng.uniform(0.005, 0.02) * np.exp(rng.normal(0.0, 0.2, rows))
    cpu = rng.uniform(20, 50) + rng.normal(0.0, 8.0 if noisy else 1.0, rows)
    mem = rng.uniform(30, 60) + rng.normal(0.0, 2.0 if noisy else 0.01 if still else 0.3, rows)
    if kind == "worker":
        tok = np.zeros(rows)
        cost = rng.uniform(0.01, 0.05) * np.exp(rng.normal(0.0, 0.05, rows))
    else:
        tok = rng.uniform(50, 200) * np.exp(rng.normal(0.0, 0.3 if noisy else 0.03, rows))
        cost = tok * 0.002 * np.exp(rng.normal(0.0, 0.02, rows))
    X = np.column_stack([lat, err, cpu, mem, tok, cost])
    return AgentStream(agent_id, INTERVAL, t, X, kind)


def with_x(s: AgentStream, X: np.ndarray, versions: tuple[int, ...] = ()) -> AgentStream:
    return AgentStream(s.agent_id, s.interval_s, s.t, X, s.kind, versions)


FLEET: dict[str, AgentStream] = {
    **{f"chat{i}": agent(f"chat{i}", "chat", ROWS, seed=i) for i in range(6)},
    **{f"ret{i}": agent(f"ret{i}", "retriever", ROWS, seed=100 + i) for i in range(6)},
    **{f"work{i}": agent(f"work{i}", "worker", ROWS, seed=200 + i) for i in range(3)},
    "chat_still": agent("chat_still", "chat", ROWS, seed=50, still=True),
    "chat_young": agent("chat_young", "chat", ROWS, seed=51, still=True),
}
#: Rows each agent is trained on (the young chat agent has little history).
TRAIN_ROWS = {a: (80 if a == "chat_young" else TRAIN) for a in FLEET}


@pytest.fixture(scope="module")
def detector() -> AnomalyDetector:
    det = AnomalyDetector(min_history_s=0.0)  # these streams are shorter than a day
    det.fit({a: s.head(TRAIN_ROWS[a]) for a, s in FLEET.items()})
    return det


def healthy_block(det: AnomalyDetector, s: AgentStream) -> np.ndarray:
    F, valid = fe.batch_features(s)
    return F[valid & (np.arange(len(s)) >= det.settle_rows)]


# --------------------------------------------------------------------------------------- own range
def test_bounds_never_narrower_than_the_agents_own_healthy_range(detector: AnomalyDetector) -> None:
    for a, s in FLEET.items():
        block = healthy_block(detector, s.head(TRAIN_ROWS[a]))
        b = detector.calibration.bounds(a, s.kind)
        assert b.source == "agent"
        assert np.all(b.lo <= block.min(axis=0)), a
        assert np.all(b.hi >= block.max(axis=0)), a
        assert np.isfinite(b.lo).sum() > 10 and np.isfinite(b.hi).sum() > 10  # bounds do exist


def test_shrinkage_weight_is_rows_over_rows_plus_shrink_rows() -> None:
    """An agent's own range [0, 1] in a kind whose typical range is [-5, 5]: with n healthy rows it is
    judged by w * own + (1 - w) * typical, w = n / (n + shrink_rows) (no padding here but the minimum)."""
    shrink = 100.0
    rng = np.random.default_rng(0)

    def block(n: int, lo: float, hi: float) -> np.ndarray:
        b = rng.uniform(lo, hi, (n, fe.N_FEATURES))
        b[0], b[1] = lo, hi
        return b

    ids = ["young", "old", "k1", "k2", "k3"]
    blocks = [block(20, 0.0, 1.0), block(2000, 0.0, 1.0), *(block(300, -5.0, 5.0) for _ in range(3))]
    cal = calibrate(
        ids,
        ["k"] * 5,
        blocks,
        [np.zeros(b.shape[0]) for b in blocks],
        quantile=0.99,
        margin=0.0,
        pad=0.0,
        shrink_rows=shrink,
        tail_pad=0.0,
    )
    z = col("z_latency_ms")  # bounded on both sides
    for name, n in (("young", 20), ("old", 2000)):
        w = n / (n + shrink)
        b = cal.bounds(name, "k")
        assert b.hi[z] == pytest.approx(w * 1.0 + (1.0 - w) * 5.0 + MIN_PAD[z])
        assert b.lo[z] == pytest.approx((1.0 - w) * -5.0 - MIN_PAD[z])
    young, old = cal.bounds("young", "k"), cal.bounds("old", "k")
    assert young.hi[z] - old.hi[z] > 3.0  # the young agent is judged mostly by its kind


def test_a_young_agent_is_pulled_toward_its_kind(detector: AnomalyDetector) -> None:
    """Through fit: two equally steady chat agents (latency and memory z within a fraction of a deviation),
    one with 50 healthy rows, one with 470: the young one is judged almost as its kind's typical agent, the
    old one much closer to its own range."""
    z = [col(f"z_{m}") for m in ("latency_ms", "memory_pct")]
    cal = detector.calibration
    young, old = cal.bounds("chat_young"), cal.bounds("chat_still")
    own = healthy_block(detector, FLEET["chat_still"].head(TRAIN))[:, z]
    assert np.abs(own).max() < 0.5
    typical_hi = np.median(
        [healthy_block(detector, FLEET[f"chat{i}"].head(TRAIN))[:, z].max(axis=0) for i in range(6)], axis=0
    )
    assert np.all(typical_hi > 1.5)
    assert np.all(young.hi[z] > 0.85 * typical_hi)
    assert np.all(young.hi[z] - old.hi[z] > 0.2 * typical_hi)
    assert np.all(old.lo[z] - young.lo[z] > 0.5)


# ------------------------------------------------------------------------------- kinds and the fleet
def test_unseen_agents_are_judged_by_their_kind_or_the_fleet(detector: AnomalyDetector) -> None:
    cal = detector.calibration
    chat, ret = cal.bounds("new", "chat"), cal.bounds("new", "retriever")
    assert chat.source == "kind" and ret.source == "kind"
    assert cal.bounds("new", "no such kind").source == "fleet"
    assert cal.bounds("new").source == "fleet"
    assert detector.threshold("new", "chat") == chat.threshold
    # a quiet kind is judged tighter than a noisy one, and the fleet is the widest of all
    # (in deviations only a heavy tail is wider; in log ratios, noise itself)
    # (zs/lr latency have no ceiling for agents that report tokens: judged as latency_unexplained)
    for name in ("z_latency_ms", "lr_memory_pct", "lref_latency_ms"):
        i = col(name)
        assert chat.hi[i] < ret.hi[i] <= cal.fleet.hi[i], name
    for name in ("lr_latency_ms", "lr_memory_pct", "lref_latency_ms", "lr_tokens_per_s", "log_tokens_per_cpu"):
        i = col(name)
        assert chat.lo[i] > ret.lo[i] >= cal.fleet.lo[i], name


def test_a_quiet_agents_latency_ramp_is_caught_beside_a_noisy_kind(detector: AnomalyDetector) -> None:
    """The old single fleet floor is gone: a latency tripling over 2 hours on a quiet chat agent is caught,
    also for a chat agent the model never saw (judged by its kind)."""
    start = 300
    for a in ("chat1", "chat_new"):
        s = FLEET[a] if a in FLEET else agent(a, "chat", ROWS, seed=77)
        X = s.X.copy()
        X[start:, LAT] *= np.minimum(1.0 + 2.0 * np.arange(ROWS - start) / 240.0, 3.0)
        found = [d for d in detector.detect(with_x(s, X)) if d.start >= start]
        assert found, a
        assert found[0].start < start + 120, (a, found[0].start)  # before the latency even doubled
        assert not [d for d in detector.detect(s) if d.rule != "gap"], a  # and the healthy stream is quiet


# ------------------------------------------------------------------------------------ one-sided features
def test_one_sided_and_unchecked_features(detector: AnomalyDetector) -> None:
    def checked(b_lo: np.ndarray, b_hi: np.ndarray, name: str) -> tuple[bool, bool]:
        i = col(name)
        return bool(np.isfinite(b_lo[i])), bool(np.isfinite(b_hi[i]))

    cal = detector.calibration
    for b in (cal.bounds("chat0"), cal.bounds("ret0"), cal.bounds("x", "chat")):
        for p in ("z", "zs", "lr"):
            for m in ("tokens_per_s", "cost_per_min"):
                assert checked(b.lo, b.hi, f"{p}_{m}") == (True, False), (p, m)
            # CPU follows traffic: for an agent reporting tokens it is judged through tokens per CPU
            assert checked(b.lo, b.hi, f"{p}_cpu_pct") == (False, False), p
            assert checked(b.lo, b.hi, f"{p}_memory_pct") == (True, True), p
            # latency's window rises follow traffic: judged as the latency that traffic does not explain
            assert checked(b.lo, b.hi, f"{p}_latency_ms") == (True, p == "z"), p
        assert checked(b.lo, b.hi, "latency_unexplained") == (False, True)
        assert checked(b.lo, b.hi, "log_cost_per_token") == (False, True)
        assert checked(b.lo, b.hi, "cpu_unexplained") == (False, True)
        assert checked(b.lo, b.hi, "log_tokens_per_cpu") == (True, True)
        for m in fe.METRICS:
            for p in ("zl", "lref"):
                expect = m in ("latency_ms", "memory_pct")
                assert checked(b.lo, b.hi, f"{p}_{m}") == (expect, expect), (p, m)
        for name in ("gap_ratio", "cost_ratio", "cost_per_token_ratio"):
            assert checked(b.lo, b.hi, name) == (False, False), name
    # an agent (and a kind) without tokens: CPU is judged on its own
    for b in (cal.bounds("work0"), cal.bounds("x", "worker")):
        for p in ("z", "zs", "lr"):
            assert checked(b.lo, b.hi, f"{p}_cpu_pct") == (True, True), p


# ---------------------------------------------------------------------------------------- history
def test_history_needed_and_insufficient_data_before_it(detector: AnomalyDetector) -> None:
    assert detector.history_needed(INTERVAL) == 0.0
    det = copy.copy(detector)
    det.min_history_s = 3_600.0 + 30 * INTERVAL
    det._status = {}
    needed = det.history_needed(INTERVAL)
    assert needed == det.min_history_s  # in time, whatever the interval
    assert AnomalyDetector().history_needed(60.0) == AnomalyDetector().history_needed(5.0) == 86_400.0
    s = FLEET["chat2"]
    X = s.X.copy()
    X[100:, LAT] *= 10.0  # a fault long before the history is enough (150 rows)
    found, status = det.detect_rows(with_x(s, X))
    first = int(np.argmax(s.t - s.t[0] >= needed))
    assert first == 150
    assert all(st == INSUFFICIENT for st in status[:first])
    assert all(st != INSUFFICIENT for st in status[first:])
    assert found and min(d.start for d in found) >= first


# --------------------------------------------------------------------------------------- settling
def test_after_a_deploy_only_relations_are_judged_while_settling(detector: AnomalyDetector) -> None:
    r = 200
    s = FLEET["chat3"]
    level = s.X.copy()
    level[r + 60 : r + 150, LAT] *= 3.0  # a level fault while the new version settles: not judged
    found = detector.detect(with_x(s, level, versions=(r,)))
    assert not [d for d in found if r <= d.start < r + fe.SETTLE]
    assert [d for d in detector.detect(with_x(s, level)) if r <= d.start < r + fe.SETTLE]  # (without the deploy)
    pricier = s.X.copy()
    pricier[r + 60 :, COST] *= 3.0  # spend per token up 3x: a relation between metrics, judged
    found = detector.detect(with_x(s, pricier, versions=(r,)))
    assert [d for d in found if r + 60 <= d.start < r + fe.SETTLE]


# ------------------------------------------------------------------------------ persistence, clearing
def test_a_lasting_shift_keeps_one_episode_open(detector: AnomalyDetector) -> None:
    s = FLEET["chat4"]
    X = s.X.copy()
    X[300:, LAT] *= 2.0
    found, status = detector.detect_rows(with_x(s, X))
    found = [d for d in found if d.start >= 300]
    assert len(found) == 1
    assert found[0].end == len(s)  # still open at the end of the stream
    assert status[-1] != NORMAL


def test_traffic_bursting_up_does_not_keep_an_episode_open(detector: AnomalyDetector) -> None:
    """A latency spike opens an episode; the same spike during a burst of traffic (tokens, spend and CPU up
    3x: unbounded upward) opens it as soon, and once the spike has passed no envelope rule holds it: traffic
    rising trips no bound. (The forest's score is not one-sided: a burst three times anything in the agent's
    healthy day can keep it over the threshold, which the envelope rules cannot prevent.)"""
    s = FLEET["chat5"]
    spike = s.X.copy()
    spike[300:306, LAT] *= 5.0
    burst = spike.copy()
    burst[300:450, [TOK, COST, CPU]] *= 3.0
    (alone,), _ = detector.detect_rows(with_x(s, spike))
    found, _ = detector.detect_rows(with_x(s, burst))
    assert found and found[0].start == alone.start
    F, _ = fe.batch_features(with_x(s, burst))
    out = rows.out_of_envelope(F, detector.calibration.bounds("chat5"))
    assert out[300:306].any() and not out[alone.end + detector.m : 450].any()


def test_an_episodes_reason_names_only_features_that_are_checked(detector: AnomalyDetector) -> None:
    s = FLEET["chat5"]
    X = s.X.copy()
    X[300:306, LAT] *= 5.0
    X[300:450, [TOK, COST, CPU]] *= 3.0
    found = detector.detect(with_x(s, X))[0]
    b = detector.calibration.bounds("chat5")
    unchecked = {fe.FEATURES[i] for i in range(fe.N_FEATURES) if np.isinf(b.hi[i])}
    assert found.features and not set(found.features) & unchecked, found.features


# ------------------------------------------------------------------------------------------ round trip
def test_round_trip_keeps_the_calibration_and_detections(detector: AnomalyDetector) -> None:
    loaded = AnomalyDetector.from_bytes(detector.to_bytes(), load_forest=False)
    a, b = detector.calibration, loaded.calibration
    assert a.agents == b.agents and a.kinds == b.kinds
    for x, y in ((a.lo, b.lo), (a.hi, b.hi), (a.thresholds, b.thresholds), (a.kind_lo, b.kind_lo)):
        assert np.array_equal(x, y)
    assert np.array_equal(a.kind_hi, b.kind_hi) and np.array_equal(a.kind_thresholds, b.kind_thresholds)
    assert np.array_equal(a.fleet.lo, b.fleet.lo) and a.fleet.threshold == b.fleet.threshold
    assert loaded.min_history_s == 0.0 and loaded.shrink_rows == detector.shrink_rows
    s = FLEET["chat1"]
    X = s.X.copy()
    X[300:, MEM] += np.arange(ROWS - 300) * 0.1
    X[400:410, LAT] *= 4.0
    for stream in (with_x(s, X), with_x(agent("unseen", "retriever", ROWS, seed=5), X)):
        assert detector.detect_rows(stream) == loaded.detect_rows(stream)
