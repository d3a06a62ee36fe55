"""Streaming per-agent features of heartbeats, normalised against each agent's own rolling baseline.

Pure numpy (no scikit-learn). One step function (``_step``) works on the state of several agents at
once (arrays with a leading agent axis); the streaming path runs it for one agent and one row, the
batch path (``batch_features`` / ``batch_features_many``) runs it over time with every agent of a
fleet side by side. Only element-wise IEEE operations (+ - * / sqrt, min, max, abs, comparisons) are
used and sums are written out in a fixed order, so both paths give bit-identical values.

The baseline is a slow exponentially weighted mean and variance per metric (a running mean while
fewer than ``HORIZON`` rows were seen, then an EWMA with ``alpha = 1 / HORIZON``). After warm-up it
is updated only with rows that are not *flagged* (a metric more than ``GATE_Z`` deviations away,
stuck values, or the first row after a gap), so a fault does not become the baseline; a metric's
variance only with rows within ``VAR_GATE`` deviations in that metric; and a metric whose recent mean
moved ``ZS_GATE`` deviations away is *held* (mean and variance frozen) until it is back within
``ZS_RELEASE``, so a slow drift freezes its own baseline once it is clear and its z keeps growing.
After ``MAX_FREEZE`` held rows in a row, a metric still away takes its recent level as its mean and
re-learns its variance there: a lasting change of level becomes the new normal instead of alarming
forever.

Features (``FEATURES``), per metric in ``METRICS`` order:

- ``z_<m>``: (x - mean) / sd against the baseline before this row (spikes, bursts, drift);
- ``zs_<m>``: the same for the mean of the last ``WINDOW`` rows (less noise);
- ``zl_<m>``: the same for the recent level, an EWMA over ``LEVEL_H`` rows (slow drift);

and for the agent: ``stuck_run`` (consecutive rows equal to the previous one in every metric,
capped), ``gap_ratio`` (time since the previous heartbeat / the agent's interval, at least 1),
``error_excess`` (error rate minus its baseline, in rate units), ``cost_ratio`` (cost per minute /
its baseline) and ``cost_per_token_ratio`` (cost per token / its baseline).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from collections.abc import Sequence

    from shared.ml.data import AgentStream

#: The metrics of a heartbeat row, in column order (the same tuple as ``shared.ml.data.METRICS``).
METRICS: tuple[str, ...] = ("latency_ms", "error_rate", "cpu_pct", "memory_pct", "tokens_per_s", "cost_per_min")
_M = len(METRICS)
_ERR = METRICS.index("error_rate")
_TOK = METRICS.index("tokens_per_s")
_COST = METRICS.index("cost_per_min")

#: Rows before an agent's features are meaningful ("insufficient data" before).
WARMUP = 30
#: Horizon of the slow baseline in heartbeats (EWMA weight 1 / HORIZON once that many rows were seen).
HORIZON = 200
#: Rows of the short window.
WINDOW = 5
#: Horizon of the recent level (an EWMA) compared with the baseline.
LEVEL_H = 20
#: A row more than this many baseline deviations away in some metric does not update the baseline.
GATE_Z = 4.0
#: Nor a row after a gap larger than this many intervals.
GATE_GAP = 2.5
#: After this many held rows in a row (flagged, or some metric's short window away) the baseline is
#: updated again until a row is not held, a metric still away jumping to its recent level.
MAX_FREEZE = 300
#: A metric's variance is updated only with rows within this many deviations in that metric (so a
#: drift away from the mean does not widen the deviation it is measured in).
VAR_GATE = 3.0
#: Nor are a metric's mean and variance updated while its short-window mean is this many deviations
#: away (a slow drift freezes its own baseline once it is clear, so its z keeps growing).
ZS_GATE = 2.5
#: ... and stay held until it is back within this many.
ZS_RELEASE = 1.0
#: z and short z are capped at this.
CAP = 50.0
#: The stuck run is capped at this many rows.
STUCK_CAP = 10.0
#: Floors of a metric's deviation: relative to its mean, and absolute (per metric, in its unit).
SD_REL_FLOOR = 0.01
SD_ABS_FLOOR: tuple[float, ...] = (0.5, 0.002, 0.2, 0.2, 0.1, 1e-4)
#: Rows after a rebase (a new version registered, an anomaly acknowledged) in which the baseline re-learns
#: the agent's levels; the features of those rows are not scored.
REBASE_ROWS = 10
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
)
N_FEATURES = len(FEATURES)
_I_STUCK = FEATURES.index("stuck_run")
_I_GAP = FEATURES.index("gap_ratio")
_I_ERR = FEATURES.index("error_excess")
_I_COST = FEATURES.index("cost_ratio")
_I_CPT = FEATURES.index("cost_per_token_ratio")
#: The features that are deviations of a metric in baseline units (used to explain a score).
Z_LIKE: tuple[int, ...] = tuple(range(3 * _M))

_ABS_FLOOR_SQ = np.asarray(SD_ABS_FLOOR, dtype=np.float64) ** 2


@dataclass
class Baseline:
    """The rolling state of ``A`` agents (``A`` = 1 for one agent's stream).

    ``n`` rows seen, baseline ``mean``/``var`` per metric, the ring of the last ``WINDOW`` rows, the
    previous row, the stuck run, the run of held rows and which metrics are held. Create with
    ``Baseline.new``.
    """

    interval: np.ndarray
    n: int = 0
    mean: np.ndarray = field(default_factory=lambda: np.zeros((1, _M)))
    var: np.ndarray = field(default_factory=lambda: np.zeros((1, _M)))
    ring: np.ndarray = field(default_factory=lambda: np.zeros((1, WINDOW, _M)))
    prev: np.ndarray = field(default_factory=lambda: np.zeros((1, _M)))
    stuck: np.ndarray = field(default_factory=lambda: np.zeros(1))
    frozen: np.ndarray = field(default_factory=lambda: np.zeros(1))
    held: np.ndarray = field(default_factory=lambda: np.zeros((1, _M), dtype=bool))
    level: np.ndarray = field(default_factory=lambda: np.zeros((1, _M)))
    #: Rows left of a rebase (``rebase``): the levels are being re-learned, nothing is scored.
    relearn: np.ndarray = field(default_factory=lambda: np.zeros(1))

    @classmethod
    def new(cls, interval_s: float | Sequence[float] | np.ndarray) -> Baseline:
        """A fresh state for one agent (a float) or several (a sequence of their intervals)."""
        interval = np.atleast_1d(np.asarray(interval_s, dtype=np.float64)).copy()
        a = interval.shape[0]
        return cls(
            interval=interval,
            mean=np.zeros((a, _M)),
            var=np.zeros((a, _M)),
            ring=np.zeros((a, WINDOW, _M)),
            prev=np.zeros((a, _M)),
            stuck=np.zeros(a),
            frozen=np.zeros(a),
            held=np.zeros((a, _M), dtype=bool),
            level=np.zeros((a, _M)),
            relearn=np.zeros(a),
        )

    @property
    def ready(self) -> bool:
        """Whether the next row's features are valid (warm-up done, no rebase under way)."""
        return self.n >= WARMUP and not bool(self.relearn[0])

    def rebase(self) -> None:
        """Let the baseline move: a new version was registered or the agent's anomaly acknowledged, so its
        levels are re-learned over the next ``REBASE_ROWS`` rows (not scored) and its slow reference
        restarts from them. One-agent states only."""
        self.relearn[0] = float(REBASE_ROWS)

    def to_doc(self) -> dict[str, Any]:
        """A one-agent state as plain lists and numbers (a Firestore map; float64 values survive exactly),
        so a function instance that never saw the agent carries on where another left off."""
        if self.interval.shape[0] != 1:
            raise ValueError("only a one-agent baseline is stored")
        return {
            "interval": float(self.interval[0]),
            "n": int(self.n),
            "mean": self.mean[0].tolist(),
            "var": self.var[0].tolist(),
            # Firestore stores no nested arrays: the ring is flattened row after row.
            "ring": self.ring[0].reshape(-1).tolist(),
            "prev": self.prev[0].tolist(),
            "stuck": float(self.stuck[0]),
            "frozen": float(self.frozen[0]),
            "held": [bool(v) for v in self.held[0]],
            "level": self.level[0].tolist(),
            "relearn": float(self.relearn[0]),
        }

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> Baseline:
        """The inverse of ``to_doc``."""

        def row(key: str) -> np.ndarray:
            return np.asarray(doc[key], dtype=np.float64).reshape(1, _M)

        return cls(
            interval=np.asarray([float(doc["interval"])]),
            n=int(doc["n"]),
            mean=row("mean"),
            var=row("var"),
            ring=np.asarray(doc["ring"], dtype=np.float64).reshape(1, WINDOW, _M),
            prev=row("prev"),
            stuck=np.asarray([float(doc["stuck"])]),
            frozen=np.asarray([float(doc["frozen"])]),
            held=np.asarray(doc["held"], dtype=bool).reshape(1, _M),
            level=row("level"),
            relearn=np.asarray([float(doc.get("relearn", 0.0))]),
        )


def _step(s: Baseline, k: int, x: np.ndarray, dt: np.ndarray) -> np.ndarray:
    """Features of one row for the first ``k`` agents of ``s`` (rows ``x`` (k, M), gaps ``dt`` (k,)),
    then update their state. Every agent of ``s[:k]`` must have seen ``s.n`` rows."""
    mean = s.mean[:k]
    var = s.var[:k]
    prev = s.prev[:k]
    n = s.n
    sd = np.sqrt(var + (SD_REL_FLOOR * mean) ** 2 + _ABS_FLOOR_SQ)
    z = np.minimum(np.maximum((x - mean) / sd, -CAP), CAP)
    ring = s.ring[:k]
    ring[:, n % WINDOW] = x
    wsum = ring[:, 0]
    for j in range(1, WINDOW):
        wsum = wsum + ring[:, j]
    zs = np.minimum(np.maximum((wsum / WINDOW - mean) / sd, -CAP), CAP)
    b = 1.0 / (n + 1) if n + 1 < LEVEL_H else 1.0 / LEVEL_H
    level = s.level[:k] + b * (x - s.level[:k])
    s.level[:k] = level
    zl = np.minimum(np.maximum((level - mean) / sd, -CAP), CAP)
    same = (x == prev).all(axis=1) if n > 0 else np.zeros(k, dtype=bool)
    stuck = np.where(same, np.minimum(s.stuck[:k] + 1.0, STUCK_CAP), 0.0)
    # Early heartbeats are no fault: the gap is counted in intervals from 1 up.
    gap = np.maximum(dt / s.interval[:k], 1.0)
    f = np.empty((k, N_FEATURES))
    f[:, 0:_M] = z
    f[:, _M : 2 * _M] = zs
    f[:, 2 * _M : 3 * _M] = zl
    f[:, _I_STUCK] = stuck
    f[:, _I_GAP] = gap
    f[:, _I_ERR] = x[:, _ERR] - mean[:, _ERR]
    f[:, _I_COST] = x[:, _COST] / np.maximum(mean[:, _COST], _RATIO_EPS)
    cpt = x[:, _COST] / np.maximum(x[:, _TOK], _RATIO_EPS)
    base_cpt = mean[:, _COST] / np.maximum(mean[:, _TOK], _RATIO_EPS)
    f[:, _I_CPT] = cpt / np.maximum(base_cpt, _RATIO_EPS)

    # Baseline update (a running mean and variance first, then the slow EWMA), gated after warm-up.
    a = 1.0 / (n + 1) if n + 1 < HORIZON else 1.0 / HORIZON
    d = x - mean
    new_mean = mean + a * d
    new_var = (1.0 - a) * (var + a * d * d)
    if n >= WARMUP:
        flagged = (np.abs(z).max(axis=1) > GATE_Z) | (stuck > 0.0) | (gap > GATE_GAP)
        shifted = np.abs(zs) > np.where(s.held[:k], ZS_RELEASE, ZS_GATE)
        s.held[:k] = shifted
        frozen = np.where(flagged | shifted.any(axis=1), s.frozen[:k] + 1.0, 0.0)
        hold = (frozen <= MAX_FREEZE)[:, None]
        keep = (flagged[:, None] | shifted) & hold
        new_mean = np.where(keep, mean, new_mean)
        # A level held for longer than MAX_FREEZE is the new normal: the mean jumps to the recent level
        # and the variance is re-learned around it at the pace of that level.
        released = shifted & ~hold
        new_mean = np.where(released, level, new_mean)
        d_level = x - level
        released_var = (1.0 - 1.0 / LEVEL_H) * (var + (1.0 / LEVEL_H) * d_level * d_level)
        new_var = np.where(keep | (np.abs(z) > VAR_GATE), var, new_var)
        new_var = np.where(released, released_var, new_var)
        s.frozen[:k] = frozen
    s.mean[:k] = new_mean
    s.var[:k] = new_var
    s.stuck[:k] = stuck
    s.prev[:k] = x
    return f


def features(row: np.ndarray, dt: float, state: Baseline) -> np.ndarray:
    """The features of one heartbeat ``row`` (len(METRICS),) of one agent, ``dt`` seconds after its
    previous one (its interval for the first); updates ``state`` (a one-agent ``Baseline``). The
    vector is meaningful only if ``state.ready`` was true before the call."""
    x = np.asarray(row, dtype=np.float64).reshape(1, _M)
    f = _step(state, 1, x, np.asarray([dt], dtype=np.float64))
    state.n += 1
    return f[0]


def _dt(t: np.ndarray, interval: float) -> np.ndarray:
    """Seconds since the previous row (the interval for the first row)."""
    dt = np.empty(t.shape[0], dtype=np.float64)
    if t.shape[0]:
        dt[0] = interval
        dt[1:] = t[1:] - t[:-1]
    return dt


def batch_features(stream: AgentStream) -> tuple[np.ndarray, np.ndarray]:
    """Features of every row of one stream, ``(F (n, len(FEATURES)), valid (n,) bool)``; ``valid`` is
    false during warm-up. Identical to calling ``features`` row by row."""
    out = batch_features_many([stream])
    return out[0]


def batch_features_many(streams: Sequence[AgentStream]) -> list[tuple[np.ndarray, np.ndarray]]:
    """``batch_features`` of several streams at once (the time loop is shared by the agents, so a
    fleet of many agents costs about as much as its longest stream)."""
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
    for j, st in enumerate(ordered):
        m = int(lens[j])
        xs[:m, j] = np.asarray(st.X, dtype=np.float64)
        dts[:m, j] = _dt(np.asarray(st.t, dtype=np.float64), float(st.interval_s))
    state = Baseline.new([float(st.interval_s) for st in ordered])
    out = np.empty((steps, a, N_FEATURES))
    # active[t] = number of streams longer than t (they are sorted longest first).
    active = np.searchsorted(-lens, -np.arange(steps), side="left")
    for t in range(steps):
        k = int(active[t])
        out[t, :k] = _step(state, k, xs[t, :k], dts[t, :k])
        state.n += 1
    results: list[tuple[np.ndarray, np.ndarray]] = [(np.empty((0, N_FEATURES)), np.empty(0, dtype=bool))] * a
    for j, i in enumerate(order):
        m = int(lens[j])
        valid = np.arange(m) >= WARMUP
        results[int(i)] = (np.ascontiguousarray(out[:m, j]), valid)
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
    return g
