"""Activity regimes of the anomaly detector (issue 24; shared/ml/anomaly_regimes.py, anomaly_rows.py and their
use in anomaly.py, live.py, anomaly_episodes.py, anomaly_calibration.py and features.py): a two-mode agent gets
two regimes and is judged on its own levels in each, the absolute features are the same live and in batch,
regimes are re-learned after a rebase, the model keeps them (format 3), old episode states load, and latency
is judged against its traffic (``latency_unexplained``). Small synthetic streams are built here with numpy; one
small mixed fleet (shared/ml/simulate_mixed.py) checks the detector end to end."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from shared.ml import anomaly_regimes as reg
from shared.ml import features as fe
from shared.ml import live, provenance, storage
from shared.ml.anomaly import AnomalyDetector
from shared.ml.anomaly_calibration import _LATENCY_UP, NO_FLOOR, calibrate
from shared.ml.anomaly_episodes import DRIVERS, Persistence
from shared.ml.data import AgentStream, Detection
from shared.ml.features_live import features as live_features
from shared.ml.simulate_mixed import MixedFleet, simulate_mixed

INTERVAL = 30.0
LAT, ERR, CPU, MEM, TOK, COST = range(6)
ROWS, START, LENGTH = 1500, 600, 300  # the busy block: rows [START, START + LENGTH)
ABS = {name: i for i, name in enumerate(reg.ABS_FEATURES)}


def two_mode(length: int = LENGTH, seed: int = 0) -> AgentStream:
    """A batch worker: idle (CPU ~5, latency ~20 ms, tokens ~1) but for a busy block of ``length`` rows
    (CPU ~70, latency ~10 s, tokens ~2000); small noise. ``length`` 0: one mode only."""
    rng = np.random.default_rng(seed)
    busy = np.zeros(ROWS, dtype=bool)
    busy[START : START + length] = True
    X = np.zeros((ROWS, 6))
    X[:, LAT] = np.where(busy, 10_000.0, 20.0) * rng.lognormal(0.0, 0.1, ROWS)
    X[:, ERR] = np.where(busy, 0.01 * rng.lognormal(0.0, 0.2, ROWS), 0.0)
    X[:, CPU] = np.where(busy, 70.0, 5.0) + rng.normal(0.0, 1.0, ROWS)
    X[:, MEM] = 30.0 + rng.normal(0.0, 0.3, ROWS)
    X[:, TOK] = np.where(busy, 2000.0 * rng.lognormal(0.0, 0.1, ROWS), rng.uniform(0.0, 2.0, ROWS))
    X[:, COST] = X[:, TOK] * 60.0 * 0.002 / 1000.0 * rng.lognormal(0.0, 0.05, ROWS)
    return AgentStream("a", INTERVAL, INTERVAL * np.arange(1, ROWS + 1, dtype=np.float64), X, "batch")


def abs_rows(s: AgentStream) -> tuple[np.ndarray, np.ndarray]:
    """(absolute features of every row, rows healthy for training: past warm-up)."""
    _, valid, levels = fe.batch_features_levels([s])[0]
    return reg.absolute_rows(s.X, levels), valid & (np.arange(len(s)) >= fe.WARMUP)


def with_x(s: AgentStream, X: np.ndarray, versions: tuple[int, ...] = ()) -> AgentStream:
    return AgentStream(s.agent_id, s.interval_s, s.t, X, s.kind, versions)


@pytest.fixture(scope="module")
def fitted() -> tuple[reg.Regimes, np.ndarray, AgentStream]:
    """The two-mode agent's regimes, its absolute features and its stream."""
    s = two_mode()
    A, keep = abs_rows(s)
    return reg.fit_regimes(["a"], [A[keep]], [float(s.t[-1])]), A, s


@pytest.fixture(scope="module")
def fleet() -> tuple[MixedFleet, AnomalyDetector]:
    """A small mixed fleet and a detector fitted on its history."""
    f = simulate_mixed(3, agents=12)
    det = AnomalyDetector()
    det.fit({a: s.head(f.train_rows) for a, s in f.streams.items()})
    return f, det


# ------------------------------------------------------------------------------------------------ fitting
def test_two_mode_agent_gets_regimes_and_one_mode_agent_does_not(
    fitted: tuple[reg.Regimes, np.ndarray, AgentStream],
) -> None:
    """A batch worker with a busy block has two regimes; the same worker always idle has none."""
    regimes, _, s = fitted
    assert regimes.of("a") == 0
    assert regimes.split[0].any()
    assert regimes.trained_to[0] == s.t[-1]
    assert regimes.lo.shape == (1, 3, reg.N_ABS) and regimes.center.shape == (1, 2, reg.N_ABS)
    # the busy regime's centre lies far above the idle one's in latency and tokens
    assert regimes.center[0, 1, ABS["abs_latency_ms"]] - regimes.center[0, 0, ABS["abs_latency_ms"]] > 5.0
    assert regimes.center[0, 1, ABS["abs_tokens_per_s"]] - regimes.center[0, 0, ABS["abs_tokens_per_s"]] > 5.0
    A1, keep1 = abs_rows(two_mode(length=0))
    one = reg.fit_regimes(["a"], [A1[keep1]], [1.0])
    assert one.of("a") is None and one.split.shape == (0, len(reg.SPLIT_ON))


def test_state_is_idle_busy_or_in_transition(fitted: tuple[reg.Regimes, np.ndarray, AgentStream]) -> None:
    """Idle rows are 0, settled busy rows 1, and rows where window and level disagree (after the switch) 2."""
    regimes, A, _ = fitted
    state = regimes.state(0, A)
    assert (state[100:START] == 0).all()
    assert (state[START + 50 : START + LENGTH] == 1).all()
    # two rows in, the window's median is busy but the recent levels lag behind
    after = state[START + 2 : START + 5]
    assert (after == 2).all()
    lvl_cpu = A[START + 2, ABS["lvl_cpu_pct"]]
    assert A[START + 2, ABS["abs_cpu_pct"]] > regimes.threshold[0, 1] > lvl_cpu
    assert (state[START + LENGTH + 2 : START + LENGTH + 5] == 2).all()


def test_busy_token_collapse_leaves_the_envelope_idle_one_does_not(
    fitted: tuple[reg.Regimes, np.ndarray, AgentStream],
) -> None:
    """Tokens at 10 % with CPU unchanged leave the busy envelope; in the idle regime they do not matter."""
    regimes, A, s = fitted
    keep = np.arange(ROWS) >= fe.WARMUP
    assert not regimes.out(0, A[keep]).any()  # healthy rows (busy ones too) stay inside
    assert not regimes.out(0, A[START + 100])
    X = s.X.copy()
    X[START + 100 : START + 120, TOK] *= 0.1
    X[300:320, TOK] *= 0.1
    A2, _ = abs_rows(with_x(s, X))
    busy = A2[START + 105 : START + 120]
    assert (regimes.state(0, busy) == 1).all()
    assert regimes.out(0, busy).all()
    idle = A2[305:320]
    assert (regimes.state(0, idle) == 0).all()
    assert not regimes.out(0, idle).any()


# -------------------------------------------------------------------------------------- absolute features
def test_absolute_live_equals_batch_bit_for_bit() -> None:
    """``absolute`` of the live ring and level equals ``absolute_rows`` of the batch levels exactly."""
    rng = np.random.default_rng(5)
    X = np.abs(rng.normal(1.0, 0.5, (120, 6))) * np.asarray([400.0, 0.02, 40.0, 50.0, 200.0, 0.2])
    X[:, ERR] = rng.integers(0, 4, 120) / 15.0
    s = AgentStream("a", INTERVAL, INTERVAL * np.arange(1, 121, dtype=np.float64), X, "chat")
    state = fe.Baseline.new(INTERVAL)
    live_rows = []
    for x in X:
        live_features(x, INTERVAL, state)
        live_rows.append(reg.absolute(state.ring[0], state.level[0]))
    F, valid, levels = fe.batch_features_levels([s])[0]
    assert np.array_equal(np.asarray(live_rows), reg.absolute_rows(X, levels))
    F1, valid1 = fe.batch_features(s)
    assert np.array_equal(F, F1) and np.array_equal(valid, valid1)
    assert levels.shape == (120, 6) and np.array_equal(levels[-1], state.level[0])


def test_absolute_error_rate_does_not_depend_on_ring_order() -> None:
    """Rotating the ring's rows gives the same absolute features bit for bit."""
    ring = np.tile(np.asarray([400.0, 0.0, 40.0, 50.0, 200.0, 0.2]), (fe.WINDOW, 1))
    ring[:, ERR] = [0.1, 0.2, 0.3, 0.0, 0.0]
    sums = {float(sum(np.roll(ring[:, ERR], k).tolist())) for k in range(fe.WINDOW)}
    assert len(sums) > 1  # a sum in ring order would depend on it
    level = ring.mean(axis=0)
    want = reg.absolute(ring, level)
    for k in range(1, fe.WINDOW):
        assert np.array_equal(reg.absolute(np.roll(ring, k, axis=0), level), want)
    assert want[ERR] == math.log(0.6 / fe.WINDOW + fe.LOG_EPS[ERR])


# ----------------------------------------------------------------------------------------------- relearning
def test_relearned_after_rebase_moves_the_envelope(fitted: tuple[reg.Regimes, np.ndarray, AgentStream]) -> None:
    """After a rebase a regime's first rows are not judged, then a deploy's levels are in and a collapse out."""
    regimes, _, s = fitted
    assert regimes.fresh(0, None) and regimes.fresh(0, float(s.t[-1]))
    assert not regimes.fresh(0, float(s.t[-1]) + 1.0)
    X = s.X.copy()
    X[:, LAT] *= 1.4  # a deploy: slower, more memory
    X[:, MEM] += 5.0
    A, _ = abs_rows(with_x(s, X))
    busy = A[START + 50 : START + LENGTH]
    assert (regimes.state(0, busy) == 1).all()
    assert regimes.out(0, busy).all()  # the trained envelope would flag every one
    relearned = reg.Relearned()
    n = reg.RELEARN_ROWS
    assert not any(reg.judge_row(regimes, 0, a, relearned) for a in busy[:n])
    assert relearned.n.tolist() == [0.0, float(n)]
    assert not any(reg.judge_row(regimes, 0, a, relearned) for a in busy[n:])
    assert relearned.n[1] == n  # learned from the first rows only
    collapsed = busy[-1].copy()
    collapsed[ABS["abs_tokens_per_s"]] -= math.log(10.0)
    collapsed[ABS["abs_tokens_per_cpu"]] -= math.log(10.0)
    assert reg.judge_row(regimes, 0, collapsed, relearned)
    doc = json.loads(json.dumps(relearned.to_doc()))
    back = reg.Relearned.from_doc(doc)
    assert np.array_equal(back.n, relearned.n) and np.array_equal(back.total, relearned.total)
    fresh = reg.Relearned.from_doc(None)
    assert not fresh.n.any() and fresh.total.shape == (2, reg.N_ABS)


def test_out_rows_relearns_after_a_later_version(fitted: tuple[reg.Regimes, np.ndarray, AgentStream]) -> None:
    """``out_rows`` re-learns from a version later than training, not from one within it."""
    regimes, _, s = fitted
    X = s.X.copy()
    X[:, MEM] += 5.0
    A, _ = abs_rows(with_x(s, X))
    later = AgentStream("a", INTERVAL, s.t + float(s.t[-1]), X, "batch", (START + 50,))
    within = reg.out_rows(regimes, 0, A, s.t, (START + 50,))
    moved = reg.out_rows(regimes, 0, A, later.t, later.versions)
    assert within[START + 50 : START + LENGTH].all()
    assert not moved[START + 50 : START + LENGTH].any()


# ----------------------------------------------------------------------------------------- the detector
def test_detector_regimes_round_trip_and_detect_equals_observe(fleet: tuple[MixedFleet, AnomalyDetector]) -> None:
    """Batch agents get regimes, chat ones none; the model keeps them; ``detect`` and ``observe`` agree."""
    f, det = fleet
    kinds = {a: s.kind for a, s in f.streams.items()}
    assert any(det.regimes.of(a) is not None for a, k in kinds.items() if k == "batch")
    assert all(det.regimes.of(a) is None for a, k in kinds.items() if k in ("chat", "retriever"))
    back = AnomalyDetector.from_bytes(det.to_bytes(), load_forest=False)
    assert back.regimes.agents == det.regimes.agents
    for name, arr in det.regimes.arrays().items():
        assert np.array_equal(back.regimes.arrays()[name], arr), name
    a = next(a for a, s in f.streams.items() if det.regimes.of(a) is not None and not s.versions)
    s = f.streams[a]

    def episodes(found: list[Detection]) -> list[tuple[int, int, tuple[str, ...]]]:
        gap = ("gap_ratio",)
        return [(d.start, d.end, d.features) for d in found if d.rule == "anomaly" and d.features != gap]

    batch = episodes(det.detect(s))
    streamed: list[Detection] = []
    for t, x in zip(s.t, s.X, strict=True):
        v = det.observe(a, float(t), x, s.interval_s, s.kind)
        if v.closed is not None:
            streamed.append(v.closed)
    last = det._live[a].episode.flush(len(s), a)
    streamed += [last] if last is not None else []
    assert batch, "the test day should raise at least one episode"
    assert episodes(streamed) == batch


def test_live_step_with_stored_state_equals_detect_for_a_two_regime_agent(
    fleet: tuple[MixedFleet, AnomalyDetector],
) -> None:
    """The heartbeat function's path (``live.step``, its state through JSON as Firestore gives it back) judges a
    two-regime agent row for row as ``detect_rows`` does, and opens its episodes at the same rows."""
    f, det = fleet
    a = next(a for a, s in f.streams.items() if det.regimes.of(a) is not None and not s.versions)
    s = f.streams[a]
    found, batch = det.detect_rows(s)
    names = ("latency_ms_p95", "error_rate", "cpu_pct", "memory_pct", "tokens_per_s", "cost_per_min")
    models = live.Models(det, "v1")
    state: dict = {}
    statuses, opened = [], []
    for i in range(len(s)):
        at = datetime(2026, 11, 1, tzinfo=UTC) + timedelta(seconds=float(s.t[i]))
        metrics = {n: float(v) for n, v in zip(names, s.X[i], strict=True)}
        out = live.step(models, a, state, metrics, at, s.interval_s, kind=s.kind)
        state = json.loads(json.dumps(out.state))
        statuses.append(state["status"])
        if any(op.rule == "anomaly" for op in out.opens):
            opened.append(i)
    assert any(d.features != ("gap_ratio",) for d in found), "the test day should raise at least one episode"
    assert statuses == batch
    assert opened == [d.start for d in found if d.features != ("gap_ratio",)]


def test_model_with_other_absolute_features_or_format_is_refused(
    fleet: tuple[MixedFleet, AnomalyDetector],
) -> None:
    """A stored model of format 2, or with other absolute features, is Incompatible."""
    _, det = fleet
    arrays, meta = storage.unpack(det.to_bytes())
    assert meta["format"] == 3 and meta["absolute_features"] == list(reg.ABS_FEATURES)
    for change in ({"format": 2}, {"absolute_features": list(reg.ABS_FEATURES[:-1])}):
        data = storage.pack(arrays, {**meta, **change})
        with pytest.raises(provenance.Incompatible):
            AnomalyDetector.from_bytes(data, load_forest=False)


def test_persistence_from_old_doc_pads_drivers() -> None:
    """Drivers written before the absolute features load padded to ``DRIVERS`` and step without error."""
    old = [float(i) for i in range(len(fe.FEATURES))]
    p = Persistence.from_doc({"high_run": 1, "normal_run": 0, "opened": None, "drivers": old, "why": []}, 3, 5)
    assert p.drivers is not None and p.drivers.shape == (len(DRIVERS),)
    assert p.drivers[: len(old)].tolist() == old and not p.drivers[len(old) :].any()
    scaled = np.zeros(len(DRIVERS))
    scaled[DRIVERS.index("abs_tokens_per_s")] = 1e6
    for i in range(2):
        closed, inside = p.step(10 + i, True, False, scaled, "a")
        assert closed is None
    assert inside and p.opened == 11
    assert p.why[0] == "abs_tokens_per_s"


# ---------------------------------------------------------------------------------- latency_unexplained
def test_latency_unexplained_follows_traffic_and_calibration_unbounds_latency_rises() -> None:
    """Latency rising with its traffic is explained, without it is not; token agents' latency rises are
    judged only through it."""
    rng = np.random.default_rng(11)
    base = np.asarray([400.0, 0.01, 40.0, 50.0, 200.0, 0.2])
    X = base * (1.0 + rng.normal(0.0, 0.02, (420, 6)))
    i_lu, i_lr = fe.FEATURES.index("latency_unexplained"), fe.FEATURES.index("lr_latency_ms")
    out = {}
    for name, tok in (("burst", 2.0), ("ramp", 1.0)):
        Y = X.copy()
        Y[400:, LAT] *= 2.0
        Y[400:, TOK] *= tok
        F, _ = fe.batch_features(AgentStream("a", INTERVAL, INTERVAL * np.arange(1, 421.0), Y, "chat"))
        out[name] = F[410]
    assert abs(out["burst"][i_lu]) <= 0.05
    assert out["ramp"][i_lu] == pytest.approx(out["ramp"][i_lr], abs=0.05)
    assert 0.5 < out["ramp"][i_lu] < math.log(2.0) + 0.05
    silent = X.copy()
    silent[:, [TOK, COST]] = 0.0
    blocks = []
    for Y in (X, silent):
        F, valid = fe.batch_features(AgentStream("a", INTERVAL, INTERVAL * np.arange(1, 421.0), Y, "chat"))
        blocks.append(F[valid][:380])
    cal = calibrate(
        ["tok", "silent"],
        ["chat", "chat"],
        blocks,
        [np.zeros(380)] * 2,
        quantile=0.99,
        margin=0.1,
        pad=0.25,
        shrink_rows=720.0,
    )
    tok_row, silent_row = cal.agents["tok"], cal.agents["silent"]
    assert np.isinf(cal.hi[tok_row, list(_LATENCY_UP)]).all()
    assert np.isfinite(cal.hi[silent_row, list(_LATENCY_UP)]).all()
    assert np.isfinite(cal.lo[tok_row, list(_LATENCY_UP)]).all()
    assert fe._I_LAT_UNEXPLAINED in NO_FLOOR
    assert np.isinf(cal.lo[:, i_lu]).all() and np.isfinite(cal.hi[:, i_lu]).all()


# ------------------------------------------------------------------------------------------------- live
def _hand_regimes() -> reg.Regimes:
    return reg.Regimes(
        agents={"a": 0},
        split=np.asarray([[1, 0, 0]]),
        threshold=np.asarray([[5.0, 0.0, 0.0]]),
        trained_to=np.asarray([1000.0]),
        lo=np.full((1, 3, reg.N_ABS), -np.inf),
        hi=np.full((1, 3, reg.N_ABS), np.inf),
        center=np.zeros((1, 2, reg.N_ABS)),
    )


def test_live_relearned_none_fresh_or_stored() -> None:
    """``_relearned``: None without regimes or a later rebase; fresh after this heartbeat's rebase or another
    model; else the stored one."""
    det = AnomalyDetector()
    det.regimes = _hand_regimes()
    stored = reg.Relearned(np.asarray([4.0, 7.0]), np.arange(2.0 * reg.N_ABS).reshape(2, reg.N_ABS))
    state = {"regimes": {**stored.to_doc(), "model": "v1"}}
    later = {"rebased_at": 2000.0}
    assert live._relearned(det, "b", state, later, "v1", False) is None  # one regime
    assert live._relearned(det, "a", state, {}, "v1", False) is None  # no rebase
    assert live._relearned(det, "a", state, {"rebased_at": 900.0}, "v1", False) is None  # before training
    for st, model, moved in ((state, "v1", True), (state, "v2", False), ({}, "v1", False)):
        got = live._relearned(det, "a", st, later, model, moved)
        assert got is not None and not got.n.any() and not got.total.any()
    got = live._relearned(det, "a", state, later, "v1", False)
    assert got is not None
    assert np.array_equal(got.n, stored.n) and np.array_equal(got.total, stored.total)


def test_live_top_takes_relative_and_absolute_values() -> None:
    """``_top`` reads relative drivers from the features and absolute ones from the absolute row."""
    f = np.arange(fe.N_FEATURES, dtype=np.float64)
    a = 100.0 + np.arange(reg.N_ABS, dtype=np.float64)
    got = live._top(f, a, ("stuck_run", "abs_cpu_pct", "unknown"))
    assert got == {"stuck_run": float(fe._I_STUCK), "abs_cpu_pct": 100.0 + ABS["abs_cpu_pct"]}
