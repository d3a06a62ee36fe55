"""The redesigned heartbeat features of issue 24 (shared/ml/features.py, shared/ml/baseline.py): log ratios
that score a collapse the same on a noisy metric as on a quiet one, cost per token and CPU that traffic does
not explain, the per-metric freeze and the slow reference that keep a slow drift visible, the rebase (a new
version: streaming == batch with ``versions``), the short window's median, and the state document (old
states load, the round trip is exact, the size stays small). Synthetic streams are built here."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import numpy as np

from shared.ml import features as fe
from shared.ml.data import AgentStream
from shared.ml.features_live import features as live_features

INTERVAL = 30.0
LAT, ERR, CPU, MEM, TOK, COST = range(6)
LEVELS = (400.0, 0.01, 40.0, 50.0, 200.0, 0.2)


def col(name: str) -> int:
    return fe.FEATURES.index(name)


def steady(
    rows: int, seed: int, rel_sd: tuple[float, ...] = (0.05,) * 6, levels: tuple[float, ...] = LEVELS
) -> np.ndarray:
    """Rows around fixed levels, each metric with its own relative noise."""
    rng = np.random.default_rng(seed)
    lv = np.asarray(levels)
    return lv * (1.0 + rng.normal(0.0, 1.0, (rows, 6)) * np.asarray(rel_sd))


def stream(X: np.ndarray, versions: tuple[int, ...] = (), interval: float = INTERVAL) -> AgentStream:
    t = interval * np.arange(1, X.shape[0] + 1, dtype=np.float64)
    return AgentStream("a", interval, t, np.asarray(X, dtype=np.float64), "chat", versions)


@dataclass
class Trace:
    """Per row, the state's per-metric arrays before that row was seen."""

    held: list[np.ndarray] = field(default_factory=list)
    frozen: list[np.ndarray] = field(default_factory=list)
    mean: list[np.ndarray] = field(default_factory=list)
    ref: list[np.ndarray] = field(default_factory=list)


def run(X: np.ndarray, interval: float = INTERVAL) -> tuple[np.ndarray, fe.Baseline, Trace]:
    """Stream the rows one by one: (features, final state, the state's arrays before each row)."""
    state = fe.Baseline.new(interval)
    rows, trace = [], Trace()
    for x in X:
        for name in ("held", "frozen", "mean", "ref"):
            getattr(trace, name).append(getattr(state, name)[0].copy())
        rows.append(live_features(x, interval, state))
    return np.asarray(rows), state, trace


# ------------------------------------------------------------------------------------------ log ratios
def test_a_collapse_gives_the_same_log_ratio_on_a_noisy_and_a_quiet_metric() -> None:
    start = 400
    out = {}
    for name, sd in (("quiet", 0.02), ("noisy", 0.3)):
        X = np.clip(steady(start + 20, seed=1, rel_sd=(0.05, 0.05, 0.05, 0.05, sd, 0.05)), 1e-3, None)
        X[start:, TOK] *= 0.1  # tokens/s collapse to 10 %
        F, _ = fe.batch_features(stream(X))
        out[name] = F[start + fe.WINDOW]
    lr = col("lr_tokens_per_s")
    # log(0.1) = -2.3, pulled toward 0 by eps (0.5 + 10 % of the reference added to both sides)
    expected = math.log((20.0 + 0.5 + 20.0) / (200.0 + 0.5 + 20.0))
    for name in out:
        assert abs(out[name][lr] - expected) < 0.3, (name, out[name][lr], expected)
    assert abs(out["quiet"][lr] - out["noisy"][lr]) < 0.3
    z = col("zs_tokens_per_s")
    assert out["noisy"][z] > -5.0  # the noisy metric's z-score barely sees it ...
    assert out["quiet"][z] < 5.0 * out["noisy"][z]  # ... the quiet one's is far larger


def test_cost_per_token_sees_a_pricier_model_but_not_traffic() -> None:
    start = 400
    base = steady(start + 3 * fe.LEVEL_H, seed=2)
    pricier = base.copy()
    pricier[start:, COST] *= 1.5
    traffic = base.copy()
    traffic[start:, COST] *= 1.5
    traffic[start:, TOK] *= 1.5
    lcpt = col("log_cost_per_token")
    F_price, _ = fe.batch_features(stream(pricier))
    F_traffic, _ = fe.batch_features(stream(traffic))
    expected = math.log((1.5 + 0.1) / (1.0 + 0.1))  # log(1.5) with eps = 10 % of the reference
    assert abs(F_price[start - 1, lcpt]) < 0.05
    assert F_price[start + fe.LEVEL_H, lcpt] > 0.6 * expected  # most of the way within ~LEVEL_H rows
    assert abs(F_price[start + 3 * fe.LEVEL_H - 1, lcpt] - expected) < 0.06
    assert np.abs(F_traffic[start:, lcpt]).max() < 0.08


def test_cpu_unexplained_by_tokens() -> None:
    start = 400
    X = steady(start + 40, seed=3)
    spike = X.copy()
    spike[start, CPU] *= 3.0  # CPU alone
    scale = X.copy()
    scale[start:, CPU] *= 2.0  # a scale-up: CPU and tokens together
    scale[start:, TOK] *= 2.0
    silent = X.copy()
    silent[:, TOK] = 0.0
    silent[start, CPU] *= 3.0
    un, tpc = col("cpu_unexplained"), col("log_tokens_per_cpu")
    F_spike, _ = fe.batch_features(stream(spike))
    F_scale, _ = fe.batch_features(stream(scale))
    F_silent, valid = fe.batch_features(stream(silent))
    assert F_spike[start, un] > 0.5 and F_spike[start, tpc] < -0.5
    assert abs(F_spike[start - 1, un]) < 0.2
    assert F_scale[start, col("lr_cpu_pct")] > 0.0 or F_scale[start, col("z_cpu_pct")] > 5.0  # CPU did move
    healthy = F_scale[start - 40 : start, un].max()  # the row noise of the ratio (5 % on each metric)
    assert F_scale[start:, un].max() < max(healthy, 0.1) + 0.1  # (checked from above only)
    assert F_spike[start, un] > 3.0 * max(healthy, 0.1)
    assert np.all(F_silent[valid][:, [un, tpc]] == 0.0)


# ------------------------------------------------------------------------------ freeze and reference
def test_slow_drift_holds_only_its_own_metric_and_stays_visible_against_the_reference() -> None:
    # past a day of history, the slow reference moves at its own pace (interval / a day per row)
    start = int(fe.REF_HORIZON_S / INTERVAL) + 100
    rows = start + 700
    X = steady(rows, seed=4, rel_sd=(0.05, 0.05, 0.05, 0.01, 0.05, 0.05))
    X[start:, MEM] += 0.05 * np.arange(rows - start)  # a slow leak, +0.05 points per heartbeat
    X[start:, LAT] *= np.linspace(1.0, 1.1, rows - start)  # latency creeps within its noise: learned
    F, state, tr = run(X)
    held_at = next(i for i in range(start, rows) if tr.held[i][MEM])
    assert held_at < start + 200
    mid = held_at + 100
    assert tr.held[mid][MEM] and tr.frozen[mid][MEM] > 50
    assert not tr.held[mid][LAT] and tr.frozen[mid][LAT] == 0.0
    assert tr.mean[mid][MEM] == tr.mean[held_at][MEM]  # memory's fast mean is frozen ...
    assert tr.mean[mid][LAT] > tr.mean[start][LAT] * 1.005  # ... latency's keeps learning
    # after MAX_FREEZE held rows memory's fast mean is released to its recent level ...
    late = held_at + fe.MAX_FREEZE + 20
    assert tr.mean[late][MEM] > LEVELS[MEM] + 10.0
    # ... but the slow reference stays near the pre-drift level, so the leak keeps looking worse
    # (it follows at a day's pace once the fast mean no longer flags the rows: a few points in 300 rows)
    assert state.ref[0, MEM] - LEVELS[MEM] < 0.15 * (state.level[0, MEM] - LEVELS[MEM])
    assert state.level[0, MEM] - state.ref[0, MEM] > 25.0
    lref = col("lref_memory_pct")
    assert F[-1, lref] > math.log(1.4) - 0.05
    assert F[-1, lref] > F[late, lref]


def test_slow_reference_moves_about_interval_per_day_and_not_on_flagged_rows() -> None:
    rows = int(fe.REF_HORIZON_S / INTERVAL) + 100  # past a day of heartbeats: the reference's own pace
    X = steady(rows + 1, seed=5)
    _, state, _ = run(X[:rows])
    normal = X[rows].copy()
    normal[MEM] = state.ref[0, MEM] + 1.0  # within its noise
    ref0 = state.ref.copy()
    live_features(normal, INTERVAL, state)
    step = (state.ref[0, MEM] - ref0[0, MEM]) / (normal[MEM] - ref0[0, MEM])
    assert abs(step - INTERVAL / fe.REF_HORIZON_S) < 1e-9
    # a flagged row (a spike of 20 deviations in latency) leaves latency's reference where it was
    ref1 = state.ref.copy()
    spike = X[rows].copy()
    spike[LAT] *= 3.0
    live_features(spike, INTERVAL, state)
    assert state.ref[0, LAT] == ref1[0, LAT]
    assert state.ref[0, MEM] != ref1[0, MEM]  # the others still learn
    # a held metric (shifted by 10 %: many deviations of its short window) does not move its reference
    shifted = steady(40, seed=6)
    shifted[:, CPU] *= 1.3
    held_rows = 0
    for x in shifted:
        was_held, before = bool(state.held[0, CPU]), float(state.ref[0, CPU])
        live_features(x, INTERVAL, state)
        if was_held:
            held_rows += 1
            assert state.ref[0, CPU] == before
    assert held_rows > 30


# ----------------------------------------------------------------------------------------- rebase
def test_rebase_relearns_then_settles() -> None:
    X = steady(400, seed=7)
    _, state, _ = run(X)
    assert state.ready and not state.relearning and not state.settling
    state.rebase()
    X2 = steady(fe.SETTLE + 10, seed=8, levels=tuple(v * 2.0 for v in LEVELS))  # a deploy doubles the levels
    ready, relearning, settling = [], [], []
    for x in X2:
        ready.append(state.ready)
        relearning.append(state.relearning)
        settling.append(state.settling)
        live_features(x, INTERVAL, state)
    assert ready == [i >= fe.REBASE_ROWS for i in range(len(X2))]
    assert relearning == [i < fe.REBASE_ROWS for i in range(len(X2))]
    assert settling == [i < fe.SETTLE for i in range(len(X2))]
    new = 2.0 * np.asarray(LEVELS)
    assert np.all(np.abs(state.mean[0] - new) < 0.05 * new)
    assert np.all(np.abs(state.ref[0] - new) < 0.05 * new)


def test_batch_versions_equal_streaming_with_rebase_bit_for_bit() -> None:
    r = 350
    X = steady(600, seed=9)
    X[r:] *= 1.8  # the new version's levels
    F_batch, valid_batch = fe.batch_features(stream(X, versions=(r,)))
    state = fe.Baseline.new(INTERVAL)
    rows, valid = [], []
    for i, x in enumerate(X):
        if i == r:
            state.rebase()
        valid.append(state.ready)
        rows.append(live_features(x, INTERVAL, state))
    assert np.array_equal(F_batch, np.asarray(rows))
    assert np.array_equal(valid_batch, np.asarray(valid))
    assert not valid_batch[r : r + fe.REBASE_ROWS].any() and valid_batch[r + fe.REBASE_ROWS]
    F_plain, _ = fe.batch_features(stream(X))
    assert not np.array_equal(F_plain[r:], F_batch[r:])  # the version did change something


# ------------------------------------------------------------------------------------- median window
def test_one_outlier_moves_z_but_not_the_short_window_or_its_log_ratio() -> None:
    start = 400
    X = steady(start + 10, seed=10)
    X[start, LAT] *= 20.0  # one heavy-tailed latency
    F, _ = fe.batch_features(stream(X))
    assert F[start, col("z_latency_ms")] > 20.0
    for i in range(start, start + fe.WINDOW):
        assert abs(F[i, col("zs_latency_ms")]) < 2.5
        assert abs(F[i, col("lr_latency_ms")]) < 0.1


# ------------------------------------------------------------------------------------- state document
def test_state_written_before_issue_24_loads() -> None:
    _, state, _ = run(steady(300, seed=11))
    doc = state.to_doc()
    old = {k: v for k, v in doc.items() if k not in ("ref", "age")}
    old["frozen"] = 7.0  # one shared counter
    loaded = fe.Baseline.from_doc(old)
    assert np.array_equal(loaded.ref, loaded.mean)
    assert loaded.age[0] == float(state.n)
    assert loaded.frozen.shape == (1, len(fe.METRICS)) and np.all(loaded.frozen == 7.0)
    assert loaded.ready
    f = live_features(steady(1, seed=12)[0], INTERVAL, loaded)
    assert np.all(np.isfinite(f))


def test_state_round_trip_is_exact_and_small() -> None:
    X = steady(500, seed=13)
    X[420:, MEM] += 5.0  # some metric held, counters running
    _, state, _ = run(X[:450])
    doc = json.loads(json.dumps(state.to_doc()))
    copy = fe.Baseline.from_doc(doc)
    assert copy.to_doc() == state.to_doc()
    for x in X[450:]:
        assert np.array_equal(live_features(x, INTERVAL, copy), live_features(x, INTERVAL, state))
    size = len(json.dumps(state.to_doc()))
    print(f"one-agent baseline state: {size} bytes of JSON")
    assert size < 2000
