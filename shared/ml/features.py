"""Streaming per-agent features of heartbeats, normalised against each agent's own rolling baseline.

Pure numpy (no scikit-learn). One step function (``step``) works on the state of several agents at
once (``baseline.Baseline``: arrays with a leading agent axis); the batch path (``batch_features`` /
``batch_features_many``) runs it over time with every agent of a fleet side by side. The streaming path,
one agent and one row at a time, is ``features_live.step``: the same step written in Python floats
(numpy calls, not arithmetic, bound a step of one agent). Only element-wise IEEE operations (and ``log``,
taken by numpy in both paths) are used and sums are written out in a fixed order, so both paths give
bit-identical values; a change to one is a change to both (tests/unit/test_ml_features_live.py fails when they
differ).

Two references per metric:

- the **fast baseline**, a slow exponentially weighted mean and variance (a running mean while fewer than
  ``HORIZON`` rows were seen, then an EWMA with ``alpha = 1 / HORIZON``). After warm-up it is updated
  only with rows that are not flagged *in that metric* (more than ``GATE_Z`` deviations away) and not
  stuck or after a gap; its variance only with rows within ``VAR_GATE`` deviations; and a metric whose
  recent mean moved ``ZS_GATE`` deviations away is *held* (mean and variance frozen) until it is back
  within ``ZS_RELEASE``. Each metric counts its own held rows: after ``MAX_FREEZE`` of them a metric
  still away takes its recent level as its mean (a lasting change becomes the fast baseline's normal);
- the **slow reference** (``ref``), an average over about a day of heartbeats, updated only when the
  fast baseline is, and never released: a slow leak that the fast baseline gave up on keeps looking
  worse against it until a person acknowledges the episode or a new version is registered (``rebase``).

A deviation is measured from whichever of the two is nearer, so a metric coming back to its old level
after a release is not a new anomaly.

Features (``FEATURES``), per metric in ``METRICS`` order unless said otherwise:

- ``z_<m>``: (x - reference) / sd (spikes, bursts, drift); ``zs_<m>``: the same for the mean of the last
  ``WINDOW`` rows (less noise); ``zl_<m>``: the same for the recent level, an EWMA over ``LEVEL_H`` rows;
- ``stuck_run`` (consecutive rows equal to the previous one in every metric, capped), ``gap_ratio``
  (time since the previous heartbeat / the agent's interval, at least 1), ``error_excess`` (error rate
  minus its baseline, in rate units), ``cost_ratio`` (cost per minute / its baseline) and
  ``cost_per_token_ratio`` (cost per token / its baseline);
- ``lr_<m>``: the log of the short window's mean over the reference (a drop to 10 % is -2.3 and a rise of
  50 % +0.41 on a quiet metric as on a noisy one: z-scores cannot see a collapse of a noisy metric);
- ``lref_<m>``: the log of the recent level over the slow reference (creep);
- ``log_cost_per_token``: the log of the recent level's cost per token over the baseline's (a pricier model
  swapped in, whatever the traffic), and ``log_cost_per_token_now`` the row's own (a loop burning an
  expensive model, at once); ``log_tokens_per_cpu``: the same for the row's tokens per CPU (a
  generation loop that stopped producing while it burns CPU); ``cpu_unexplained``: the smaller of the row's
  CPU rise and its fall in tokens per CPU (CPU that traffic does not explain; a scale-up moves both).

The logs are of ``(value + eps) / (reference + eps)`` with a small per-metric ``LOG_EPS``, so a metric an
agent does not report (0 in every row) contributes 0.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from shared.ml.baseline import METRICS, REBASE_ROWS, SETTLE, WARMUP, WINDOW, Baseline
from shared.ml.baseline import M as _M

if TYPE_CHECKING:
    from collections.abc import Sequence

    from shared.ml.data import AgentStream

__all__ = ["METRICS", "REBASE_ROWS", "SETTLE", "WARMUP", "WINDOW", "Baseline"]

_ERR = METRICS.index("error_rate")
_TOK = METRICS.index("tokens_per_s")
_COST = METRICS.index("cost_per_min")

#: Horizon of the fast baseline in heartbeats (EWMA weight 1 / HORIZON once that many rows were seen).
HORIZON = 200
#: Horizon of the slow reference, in seconds (a day): its weight per row is interval / REF_HORIZON_S.
REF_HORIZON_S = 86_400.0
#: Horizon of the recent level (an EWMA) compared with the baseline.
LEVEL_H = 20
#: A metric more than this many baseline deviations away does not update its baseline.
GATE_Z = 4.0
#: Nor any metric after a gap larger than this many intervals.
GATE_GAP = 2.5
#: After this many held rows in a row of one metric, its fast baseline jumps to its recent level.
MAX_FREEZE = 300
#: A metric's variance is updated only with rows within this many deviations in that metric.
VAR_GATE = 3.0
#: A metric whose short-window mean is this many deviations away is held ...
ZS_GATE = 2.5
#: ... until it is back within this many.
ZS_RELEASE = 1.0
#: z and short z are capped at this; the logs at +-LOG_CAP.
CAP = 50.0
LOG_CAP = 10.0
#: The stuck run is capped at this many rows.
STUCK_CAP = 10.0
#: Floors of a metric's deviation: relative to its mean, and absolute (per metric, in its unit).
SD_REL_FLOOR = 0.01
SD_ABS_FLOOR: tuple[float, ...] = (0.5, 0.002, 0.2, 0.2, 0.1, 1e-4)
#: Added to value and reference before a log ratio (per metric, in its unit).
LOG_EPS: tuple[float, ...] = (5.0, 0.005, 1.0, 1.0, 0.5, 1e-4)
#: ... plus this share of the metric's slow reference (its daily average), for the metrics that idle near 0
#: (latency of a worker with no items, CPU, tokens, spend); memory and the error rate never idle at 0.
REL_EPS = np.asarray((0.1, 0.0, 0.1, 0.0, 0.1, 0.1), dtype=np.float64)
#: Floors of the denominators of the ratios.
_RATIO_EPS = 1e-9

FEATURES: tuple[str, ...] = (
    *(f"z_{m}" for m in METRICS),
    *(f"zs_{m}" for m in METRICS),
    *(f"zl_{m}" for m in METRICS),
    "stuck_run",
    "gap_ratio",
    "error_excess",
    "cost_ratio",
    "cost_per_token_ratio",
    *(f"lr_{m}" for m in METRICS),
    *(f"lref_{m}" for m in METRICS),
    "log_cost_per_token",
    "log_tokens_per_cpu",
    "cpu_unexplained",
    "log_cost_per_token_now",
    "latency_unexplained",
)
N_FEATURES = len(FEATURES)
_I_STUCK = FEATURES.index("stuck_run")
_I_GAP = FEATURES.index("gap_ratio")
_I_ERR = FEATURES.index("error_excess")
_I_COST = FEATURES.index("cost_ratio")
_I_CPT = FEATURES.index("cost_per_token_ratio")
_I_LR = FEATURES.index(f"lr_{METRICS[0]}")
_I_LREF = FEATURES.index(f"lref_{METRICS[0]}")
_I_LCPT = FEATURES.index("log_cost_per_token")
_I_LTPC = FEATURES.index("log_tokens_per_cpu")
_I_CPU_UNEXPLAINED = FEATURES.index("cpu_unexplained")
_I_LCPT_NOW = FEATURES.index("log_cost_per_token_now")
_I_LAT_UNEXPLAINED = FEATURES.index("latency_unexplained")
_CPU = METRICS.index("cpu_pct")
#: The features that are deviations of a metric in baseline units (used to explain a score).
Z_LIKE: tuple[int, ...] = tuple(range(3 * _M))
#: The features that compare metrics with each other rather than with the baseline's levels: the only ones
#: judged while a baseline settles after a rebase.
RELATIONAL: tuple[int, ...] = (_I_STUCK, _I_LCPT, _I_LTPC, _I_CPU_UNEXPLAINED, _I_LCPT_NOW)
#: The log-ratio features.
LOG_LIKE: tuple[int, ...] = (
    *range(_I_LR, _I_LR + 2 * _M),
    *(_I_LCPT, _I_LTPC, _I_CPU_UNEXPLAINED, _I_LCPT_NOW, _I_LAT_UNEXPLAINED),
)

_ABS_FLOOR_SQ = np.asarray(SD_ABS_FLOOR, dtype=np.float64) ** 2
_EPS = np.asarray(LOG_EPS, dtype=np.float64)


def _nearer(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Element-wise, whichever of two deviations is smaller in magnitude."""
    return np.where(np.abs(b) < np.abs(a), b, a)


#: The three ratios ``step`` follows: (numerator, denominator) metrics of the recent level's cost per token,
#: the row's own cost per token and the row's tokens per CPU.
_TOP = np.asarray([_COST, _COST, _TOK])
_BOTTOM = np.asarray([_TOK, _TOK, _CPU])
#: ... the same columns of the recent level and the row side by side (``step``'s ``pair``).
_PAIR_TOP = np.asarray([_COST, _M + _COST, _M + _TOK])
_PAIR_BOTTOM = np.asarray([_TOK, _M + _TOK, _M + _CPU])


def step(s: Baseline, k: int, x: np.ndarray, dt: np.ndarray) -> np.ndarray:
    """Features of one row for the first ``k`` agents of ``s`` (rows ``x`` (k, M), gaps ``dt`` (k,)),
    then update their state. Every agent of ``s[:k]`` must have seen ``s.n`` rows."""
    mean = s.mean[:k]
    var = s.var[:k]
    ref = s.ref[:k]
    prev = s.prev[:k]
    n = s.n
    age = s.age[:k]
    sd = np.sqrt(var + (SD_REL_FLOOR * mean) ** 2 + _ABS_FLOOR_SQ)
    ring = s.ring[:k]
    ring[:, n % WINDOW] = x
    # The window's median, not its mean: one heavy-tailed outlier moves neither it nor the level.
    wmed = np.sort(ring, axis=1)[:, WINDOW // 2]
    b = np.maximum(1.0 / (age + 1.0), 1.0 / LEVEL_H)[:, None]
    level = s.level[:k] + b * (wmed - s.level[:k])
    # The row, its window's median and its recent level side by side (3, k, M): each step below is one
    # element-wise operation over all three, so a step costs a third of the numpy calls (a step of one agent is
    # bound by their number, not by their size) and every value is the same as computed one by one.
    v = np.concatenate((x, wmed, level)).reshape(3, k, _M)  # (concatenate: np.stack costs more than the maths)
    fast = (v - mean) / sd
    z_fast, zs_fast = fast[0], fast[1]
    zz = np.minimum(np.maximum(_nearer(fast, (v - ref) / sd), -CAP), CAP)
    same = (x == prev).all(axis=1) if n > 0 else np.zeros(k, dtype=bool)
    stuck = np.where(same, np.minimum(s.stuck[:k] + 1.0, STUCK_CAP), 0.0)
    # Early heartbeats are no fault: the gap is counted in intervals from 1 up.
    gap = np.maximum(dt / s.interval[:k], 1.0)
    f = np.empty((k, N_FEATURES))
    f[:, 0 : 3 * _M] = zz.transpose(1, 0, 2).reshape(k, 3 * _M)  # z, zs, zl
    f[:, _I_STUCK] = stuck
    f[:, _I_GAP] = gap
    f[:, _I_ERR] = x[:, _ERR] - mean[:, _ERR]
    f[:, _I_COST] = x[:, _COST] / np.maximum(mean[:, _COST], _RATIO_EPS)
    cpt = x[:, _COST] / np.maximum(x[:, _TOK], _RATIO_EPS)
    base_cpt = mean[:, _COST] / np.maximum(mean[:, _TOK], _RATIO_EPS)
    f[:, _I_CPT] = cpt / np.maximum(base_cpt, _RATIO_EPS)
    # Log ratios on the agent's own scale: values far below its daily average (an idle batch worker) are
    # "about nothing" rather than huge ratios of tiny numbers. Side by side: the window's median against the
    # fast baseline and the reference, the level against the reference, the row against both.
    eps = _EPS + REL_EPS * np.abs(ref)
    num = np.concatenate((wmed, wmed, level, x, x)).reshape(5, k, _M)
    logs = np.log((num + eps) / (np.concatenate((mean, ref, ref, mean, ref)).reshape(5, k, _M) + eps))
    logs = np.minimum(np.maximum(logs, -LOG_CAP), LOG_CAP)
    f[:, _I_LR : _I_LR + _M] = _nearer(logs[0], logs[1])
    f[:, _I_LREF : _I_LREF + _M] = logs[2]
    # Ratios of metrics (top per bottom, ``_TOP`` / ``_BOTTOM``) against the fast baseline's ratio or the slow
    # reference's, whichever is nearer (a release of one of the two metrics' fast baselines alone must not read
    # as a change of their ratio): the recent level's cost per token, steadier than single rows and prompt
    # enough for a change that lasts (a pricier model); the row's own, a runaway at once; the row's tokens per
    # CPU, a CPU spike at once.
    e_top, e_bottom = eps.take(_TOP, axis=1), eps.take(_BOTTOM, axis=1)
    pair = np.concatenate((level, x), axis=1)
    now = (pair.take(_PAIR_TOP, axis=1) + e_top) / (pair.take(_PAIR_BOTTOM, axis=1) + e_bottom)
    ratio_fast = np.log(now / ((mean.take(_TOP, axis=1) + e_top) / (mean.take(_BOTTOM, axis=1) + e_bottom)))
    ratio_slow = np.log(now / ((ref.take(_TOP, axis=1) + e_top) / (ref.take(_BOTTOM, axis=1) + e_bottom)))
    ratios = np.minimum(np.maximum(_nearer(ratio_fast, ratio_slow), -LOG_CAP), LOG_CAP)
    f[:, _I_LCPT] = ratios[:, 0]
    f[:, _I_LCPT_NOW] = ratios[:, 1]
    f[:, _I_LTPC] = ratios[:, 2]
    # CPU up and tokens per CPU down at once: CPU that traffic does not explain (a scale-up moves both)
    cpu_up = _nearer(logs[3, :, _CPU], logs[4, :, _CPU])
    f[:, _I_CPU_UNEXPLAINED] = np.minimum(cpu_up, -f[:, _I_LTPC])
    # latency rising more than its traffic: a burst of traffic slows replies, a ramp slows them with none
    f[:, _I_LAT_UNEXPLAINED] = f[:, _I_LR] - np.maximum(f[:, _I_LR + _TOK], 0.0)
    # an agent that reports no tokens has no traffic to relate its CPU to (its CPU is judged on its own)
    silent = (ref[:, _TOK] == 0.0) & (x[:, _TOK] == 0.0)
    f[silent, _I_LTPC] = 0.0
    f[silent, _I_CPU_UNEXPLAINED] = 0.0

    # Baseline update (a running mean and variance first, then the slow EWMA), gated after warm-up.
    a = np.maximum(1.0 / (age + 1.0), 1.0 / HORIZON)[:, None]
    d = x - mean
    new_mean = mean + a * d
    # The variance keeps its own pace across a rebase (an agent's noise rarely changes with a deploy).
    a_var = 1.0 / (n + 1) if n + 1 < HORIZON else 1.0 / HORIZON
    new_var = (1.0 - a_var) * (var + a_var * d * d)
    a_ref = np.maximum(1.0 / (age + 1.0), s.interval[:k] / REF_HORIZON_S)[:, None]
    new_ref = ref + a_ref * (x - ref)
    if n >= WARMUP:  # (a rebased agent's variance too: it was not restarted)
        new_var = np.where(np.abs(z_fast) > VAR_GATE, var, new_var)
    # A young baseline (a new agent's, or one just rebased) learns freely: holding it would freeze a level it
    # has not learned yet (a deploy during a trainer's evaluation phase).
    warm = (age >= SETTLE)[:, None]
    if warm.any():
        row_flag = ((stuck > 0.0) | (gap > GATE_GAP))[:, None]
        flagged = np.abs(z_fast) > GATE_Z
        shifted = np.abs(zs_fast) > np.where(s.held[:k], ZS_RELEASE, ZS_GATE)
        frozen = np.where(flagged | shifted, s.frozen[:k] + 1.0, 0.0)
        hold = frozen <= MAX_FREEZE
        keep = ((flagged | shifted) & hold) | row_flag
        keep &= warm
        new_mean = np.where(keep, mean, new_mean)
        # A metric held for longer than MAX_FREEZE: its fast mean jumps to the recent level and its variance
        # is re-learned there at the pace of that level. The slow reference does not follow.
        released = shifted & ~hold & warm
        new_mean = np.where(released, level, new_mean)
        d_level = x - level
        released_var = (1.0 - 1.0 / LEVEL_H) * (var + (1.0 / LEVEL_H) * d_level * d_level)
        new_var = np.where(keep, var, new_var)
        new_var = np.where(released, released_var, new_var)
        new_ref = np.where(keep | released | ((flagged | shifted) & warm), ref, new_ref)
        s.held[:k] = shifted & hold & warm
        s.frozen[:k] = np.where(warm, frozen, 0.0)
    else:
        s.held[:k] = False
        s.frozen[:k] = 0.0
    s.age[:k] = age + 1.0
    s.level[:k] = level
    s.mean[:k] = new_mean
    s.var[:k] = new_var
    s.ref[:k] = new_ref
    s.stuck[:k] = stuck
    s.prev[:k] = x
    return f


def _dt(t: np.ndarray, interval: float) -> np.ndarray:
    """Seconds since the previous row (the interval for the first row)."""
    dt = np.empty(t.shape[0], dtype=np.float64)
    if t.shape[0]:
        dt[0] = interval
        dt[1:] = t[1:] - t[:-1]
    return dt


def batch_features(stream: AgentStream) -> tuple[np.ndarray, np.ndarray]:
    """Features of every row of one stream, ``(F (n, len(FEATURES)), valid (n,) bool)``; ``valid`` is
    false during warm-up. Identical to calling ``features_live.features`` row by row (rebased at the stream's
    ``versions``, as ``live.step`` rebases at a new version)."""
    out = batch_features_many([stream])
    return out[0]


def batch_features_many(streams: Sequence[AgentStream]) -> list[tuple[np.ndarray, np.ndarray]]:
    """``batch_features`` of several streams at once (the time loop is shared by the agents, so a
    fleet of many agents costs about as much as its longest stream)."""
    return [(F, valid) for F, valid, _ in batch_features_levels(streams)]


def batch_features_levels(streams: Sequence[AgentStream]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``batch_features_many`` with each row's recent level after it (``Baseline.level``, (n, M)), as the
    streaming path's state holds it after that row."""
    if not streams:
        return []
    lengths = np.asarray([len(s) for s in streams])
    order = np.argsort(-lengths, kind="stable")
    ordered = [streams[i] for i in order]
    lens = lengths[order]
    a = len(ordered)
    steps = int(lens[0]) if a else 0
    xs = np.zeros((steps, a, _M))
    dts = np.zeros((steps, a))
    rebases = np.zeros((steps, a), dtype=bool)  # a new version registered before that row
    for j, st in enumerate(ordered):
        m = int(lens[j])
        xs[:m, j] = np.asarray(st.X, dtype=np.float64)
        dts[:m, j] = _dt(np.asarray(st.t, dtype=np.float64), float(st.interval_s))
        rebases[[v for v in getattr(st, "versions", ()) if 0 <= v < m], j] = True
    state = Baseline.new([float(st.interval_s) for st in ordered])
    out = np.empty((steps, a, N_FEATURES))
    levels = np.empty((steps, a, _M))
    scored = np.zeros((steps, a), dtype=bool)  # past warm-up and no rebase under way
    # active[t] = number of streams longer than t (they are sorted longest first).
    active = np.searchsorted(-lens, -np.arange(steps), side="left")
    for t in range(steps):
        k = int(active[t])
        if rebases[t, :k].any():
            state.age[:k] = np.where(rebases[t, :k], 0.0, state.age[:k])
        scored[t, :k] = state.age[:k] >= WARMUP
        out[t, :k] = step(state, k, xs[t, :k], dts[t, :k])
        levels[t, :k] = state.level[:k]
        state.n += 1
    empty = (np.empty((0, N_FEATURES)), np.empty(0, dtype=bool), np.empty((0, _M)))
    results: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = [empty] * a
    for j, i in enumerate(order):
        m = int(lens[j])
        valid = scored[:m, j].copy()
        results[int(i)] = (np.ascontiguousarray(out[:m, j]), valid, np.ascontiguousarray(levels[:m, j]))
    return results


def explain(f: np.ndarray, top: int = 3) -> tuple[str, ...]:
    """The names of the ``top`` features of a vector that are furthest from normal: the largest |z|
    among the deviation features, the stuck run, the gap and the ratios scaled to comparable units."""
    scaled = np.abs(_scaled(f))
    idx = np.argsort(-scaled, kind="stable")[:top]
    return tuple(FEATURES[int(i)] for i in idx if scaled[int(i)] > 0.0)


def _scaled(f: np.ndarray) -> np.ndarray:
    """A feature vector in comparable "deviation" units (for explanations only)."""
    g = np.array(f, dtype=np.float64, copy=True)
    g[_I_STUCK] = 4.0 * f[_I_STUCK]
    g[_I_GAP] = 4.0 * max(f[_I_GAP] - 1.0, 0.0)
    g[_I_ERR] = 100.0 * f[_I_ERR]
    g[_I_COST] = 4.0 * math.log(max(f[_I_COST], _RATIO_EPS))
    g[_I_CPT] = 4.0 * math.log(max(f[_I_CPT], _RATIO_EPS))
    # a log ratio of 0.4 (a rise of 50 %) weighs like 4 deviations
    g[list(LOG_LIKE)] = 10.0 * f[list(LOG_LIKE)]
    return g
