"""Activity regimes: agents that switch between distinct modes, judged on their own levels in each (issue 24).

A batch worker idles all day and works for a few hours at night; a trainer alternates training and evaluation.
Against one rolling baseline, each switch looks like a huge deviation, and the envelope that has to contain the
switches is too wide to see a fault inside either mode. So, per agent seen in training, ``fit_regimes`` looks for
a clean split of its healthy rows in one of its *absolute* features (the log of its latency, CPU or tokens: the
median of its last ``WINDOW`` heartbeats, no baseline involved). When one splits the rows into two groups far
apart (``SEPARATION`` within-group deviations, each group at least ``MIN_SHARE`` of the rows) the agent has two
regimes, and each gets its own envelope of the absolute features (``ABS_FEATURES``: the levels, tokens per CPU,
cost per token).

A row of such an agent is judged, in the regime its own values put it in, on the absolute features (and on the
forest, the heartbeat gap, the stuck run and the error rate), not on the deviations from its rolling baseline.
This holds only while the levels learned are the agent's: after a rebase (a new version, an acknowledged
anomaly) later than its last training row (``trained_to``) the agent is judged as any other until the next
retraining. Agents with one regime, and agents the model never saw, are judged as before.

Pure numpy; the absolute features are a function of the baseline's ring of recent rows, so the live path and the
batch path compute the same values.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shared.ml import features as fe
from shared.ml.baseline import METRICS, WINDOW

_M = len(METRICS)
_CPU, _TOK, _COST = (METRICS.index(m) for m in ("cpu_pct", "tokens_per_s", "cost_per_min"))
_ERR = METRICS.index("error_rate")
#: The split candidates (absolute latency, CPU, tokens); each also as its recent level (``lvl_``), which lags a
#: switch by about ``features.LEVEL_H`` rows: a row whose window and level disagree is in transition.
SPLIT_ON: tuple[int, ...] = tuple(METRICS.index(m) for m in ("latency_ms", "cpu_pct", "tokens_per_s"))
ABS_FEATURES: tuple[str, ...] = (
    *(f"abs_{m}" for m in METRICS),
    "abs_tokens_per_cpu",
    "abs_cost_per_token",
    *(f"lvl_{METRICS[j]}" for j in SPLIT_ON),
)
N_ABS = len(ABS_FEATURES)
_I_TPC, _I_CPT, _I_LVL = _M, _M + 1, _M + 2
#: Two groups this many pooled within-group deviations apart are two regimes ...
SEPARATION = 6.0
#: ... when the smaller holds at least this share of the rows.
MIN_SHARE = 0.03
#: A regime (or the transitions) with fewer rows than this is judged on the envelope of all the agent's rows.
MIN_ROWS = 30
#: Rows of a regime, after a rebase later than the agent's training, from which its levels there are re-learned
#: (the regime's envelope moves by their mean offset from its training centre); not judged on levels before.
RELEARN_ROWS = 30
#: Minimum widening of an absolute envelope (log units: 10 %).
MIN_PAD = 0.1
_EPS = np.asarray(fe.LOG_EPS, dtype=np.float64)
#: Checked from below only: traffic may rise. From above only: the cost per token and the error rate.
NO_CEILING = (_TOK, _COST)
NO_FLOOR = (_ERR, _I_CPT)
#: Not judged: the levels only place a row in its regime.
UNJUDGED = tuple(range(_I_LVL, N_ABS))
#: The names of a row's drivers (what an episode says drove it): the relative features, then the absolute ones.
DRIVERS: tuple[str, ...] = (*fe.FEATURES, *ABS_FEATURES)
#: Relative features still judged for an agent in a regime (the others are replaced by the absolute ones).
KEPT = (fe._I_STUCK, fe._I_ERR)


#: ``SPLIT_ON`` as an index list (built once: ``absolute`` runs at every heartbeat of a two-regime agent).
_SPLIT = list(SPLIT_ON)


def _sides_of(used: np.ndarray, thresholds: np.ndarray) -> tuple[list[int], np.ndarray]:
    """The absolute features an agent's regimes are told apart by (the split candidates it uses, in its window
    and in its recent level) and the threshold of each."""
    cols = [j for j, u in zip(SPLIT_ON, used, strict=True) if u]
    lvl = [_I_LVL + k for k, u in enumerate(used) if u]
    thr = np.asarray(thresholds, dtype=np.float64)[np.asarray(used, dtype=bool)]
    return cols + lvl, np.concatenate([thr, thr])


def absolute(ring: np.ndarray, level: np.ndarray) -> np.ndarray:
    """The absolute features of rows' windows ``ring`` (..., WINDOW, M) and recent levels ``level`` (..., M):
    logs of each metric's median, of the median tokens per median CPU (0 for an agent not reporting tokens), of
    the recent level's cost per token (0 without cost or tokens: steadier than a window's), and of the split
    candidates' levels."""
    ring, level = np.asarray(ring, dtype=np.float64), np.asarray(level, dtype=np.float64)
    ordered = np.sort(ring, axis=-2)
    med = ordered[..., WINDOW // 2, :]
    out = np.empty((*ring.shape[:-2], N_ABS))
    out[..., :_M] = np.log(med + _EPS)
    # the error rate of a few calls per heartbeat comes in steps (1/15, 2/15 ...): the window's mean, not its
    # median, summed in sorted order so that it does not depend on where the ring starts
    out[..., _ERR] = np.log(ordered[..., _ERR].sum(axis=-1) / WINDOW + _EPS[_ERR])
    out[..., _I_TPC] = np.where(med[..., _TOK] > 0.0, out[..., _TOK] - out[..., _CPU], 0.0)
    cpt = np.log((level[..., _COST] + _EPS[_COST]) / (level[..., _TOK] + _EPS[_TOK]))
    out[..., _I_CPT] = np.where((level[..., _COST] > 0.0) & (level[..., _TOK] > 0.0), cpt, 0.0)
    out[..., _I_LVL:] = np.log(level[..., _SPLIT] + _EPS[_SPLIT])
    return out


def absolute_rows(X: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """``absolute`` of every row of a stream ``X`` (n, M) with its recent levels (n, M), its window the row and
    the ``WINDOW - 1`` before (zeros before the first, as a new baseline's ring)."""
    X = np.asarray(X, dtype=np.float64)
    padded = np.vstack([np.zeros((WINDOW - 1, _M)), X])
    windows = np.lib.stride_tricks.sliding_window_view(padded, WINDOW, axis=0)  # (n, M, WINDOW)
    return absolute(np.swapaxes(windows, -1, -2), levels)


def _split(v: np.ndarray) -> tuple[float, float]:
    """(separation, threshold) of the best two-group split of ``v`` (Otsu's), or (0, nan)."""
    n = v.shape[0]
    low = max(int(MIN_SHARE * n), 1)
    if n < 2 * low + 1:
        return 0.0, float("nan")
    s = np.sort(v)
    c1, c2 = np.cumsum(s), np.cumsum(s * s)
    k = np.arange(low, n - low)  # the first group is s[:k]
    m0, m1 = c1[k - 1] / k, (c1[-1] - c1[k - 1]) / (n - k)
    within = (c2[k - 1] - k * m0 * m0) + ((c2[-1] - c2[k - 1]) - (n - k) * m1 * m1)
    between = k * (n - k) * (m1 - m0) ** 2
    best = int(np.argmax(between))
    pooled = np.sqrt(max(float(within[best]) / n, 1e-12))
    return float((m1[best] - m0[best]) / pooled), float(0.5 * (m0[best] + m1[best]))


def _envelope(block: np.ndarray, pad: float, tail_pad: float) -> tuple[np.ndarray, np.ndarray]:
    lo, hi = block.min(axis=0), block.max(axis=0)
    q_lo, q_hi = np.quantile(block, [0.01, 0.99], axis=0)
    width = pad * (hi - lo) + MIN_PAD
    lo, hi = lo - width - tail_pad * (q_lo - lo), hi + width + tail_pad * (hi - q_hi)
    hi[list(NO_CEILING)] = np.inf
    lo[list(NO_FLOOR)] = -np.inf
    lo[list(UNJUDGED)], hi[list(UNJUDGED)] = -np.inf, np.inf
    if not np.any(block[:, _TOK] > np.log(_EPS[_TOK])):  # no tokens: CPU is judged on its own
        return lo, hi
    lo[_CPU], hi[_CPU] = -np.inf, np.inf  # with tokens, CPU follows traffic (tokens per CPU)
    return lo, hi


@dataclass
class Regimes:
    """The regimes of the agents seen in training that have two."""

    agents: dict[str, int] = field(default_factory=dict)  # agent id -> row
    #: Per agent and split candidate (``SPLIT_ON``): whether its rows split on it, and where.
    split: np.ndarray = field(default_factory=lambda: np.empty((0, len(SPLIT_ON)), dtype=np.int64))
    threshold: np.ndarray = field(default_factory=lambda: np.empty((0, len(SPLIT_ON))))
    trained_to: np.ndarray = field(default_factory=lambda: np.empty(0))  # time of the agent's last training row
    lo: np.ndarray = field(default_factory=lambda: np.empty((0, 3, N_ABS)))  # low, high, transition
    hi: np.ndarray = field(default_factory=lambda: np.empty((0, 3, N_ABS)))
    center: np.ndarray = field(default_factory=lambda: np.empty((0, 2, N_ABS)))  # mean of each regime's rows
    #: Per agent row, ``_sides_of`` its split (worked out once: ``state`` runs at every heartbeat).
    _sides: dict[int, tuple[list[int], np.ndarray]] = field(default_factory=dict, init=False, repr=False, compare=False)

    def of(self, agent_id: str) -> int | None:
        """The agent's row, or None (one regime, or not seen in training)."""
        return self.agents.get(agent_id)

    def state(self, i: int, a: np.ndarray) -> np.ndarray:
        """The regime of each absolute feature row ``a`` (..., N_ABS) of agent row ``i``: 0 (low) or 1 (high)
        when every feature it splits on, in its window and its recent level, is on that side; 2 (in transition)
        when they disagree."""
        sides_of = self._sides.get(i)
        if sides_of is None:
            sides_of = self._sides[i] = _sides_of(self.split[i], self.threshold[i])
        cols, thr = sides_of
        sides = a[..., cols] > thr
        return np.where(sides.all(axis=-1), 1, np.where(sides.any(axis=-1), 2, 0))

    def bounds(self, i: int, a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The envelope (lo, hi) of absolute feature rows ``a`` (..., N_ABS) of agent row ``i``, each in the
        regime its own values put it in."""
        r = self.state(i, a)
        return self.lo[i][r], self.hi[i][r]

    def out(self, i: int, a: np.ndarray) -> np.ndarray:
        """Whether each absolute feature row ``a`` (..., N_ABS) leaves its regime's envelope."""
        lo, hi = self.bounds(i, a)
        return np.asarray((np.greater(a, hi) | np.less(a, lo)).any(axis=-1))

    def fresh(self, i: int, rebased_at: float | None) -> bool:
        """Whether the agent's regimes still hold: no rebase after its last training row."""
        return rebased_at is None or rebased_at <= float(self.trained_to[i])

    def arrays(self) -> dict[str, np.ndarray]:
        """The numeric part, for the model's ``.npz`` (about 0.14 KB per agent with two regimes)."""
        return {
            "reg_split": self.split,
            "reg_thr": self.threshold,
            "reg_to": self.trained_to,
            "reg_lo": self.lo,
            "reg_hi": self.hi,
            "reg_center": self.center,
        }

    def meta(self) -> list[str]:
        """The agents with two regimes, in row order."""
        return list(self.agents)

    @classmethod
    def load(cls, arrays: Mapping[str, np.ndarray], agents: Sequence[str]) -> Regimes:
        """The inverse of ``arrays`` and ``meta``."""
        return cls(
            agents={str(a): i for i, a in enumerate(agents)},
            split=np.asarray(arrays["reg_split"], dtype=np.int64).reshape(-1, len(SPLIT_ON)),
            threshold=arrays["reg_thr"].reshape(-1, len(SPLIT_ON)),
            trained_to=arrays["reg_to"],
            lo=arrays["reg_lo"].reshape(-1, 3, N_ABS),
            hi=arrays["reg_hi"].reshape(-1, 3, N_ABS),
            center=arrays["reg_center"].reshape(-1, 2, N_ABS),
        )


def fit_regimes(
    ids: Sequence[str],
    blocks: Sequence[np.ndarray],
    trained_to: Sequence[float],
    *,
    pad: float = 0.25,
    tail_pad: float = 1.0,
) -> Regimes:
    """The regimes of each agent from the absolute features ``blocks[i]`` (rows, N_ABS) of its healthy rows."""
    out = Regimes()
    split: list[np.ndarray] = []
    thr: list[np.ndarray] = []
    to: list[float] = []
    lo: list[np.ndarray] = []
    hi: list[np.ndarray] = []
    center: list[np.ndarray] = []
    for agent_id, block, last in zip(ids, blocks, trained_to, strict=True):
        if block.shape[0] < 2 * MIN_ROWS:
            continue
        cuts = [_split(block[:, j]) for j in SPLIT_ON]
        used = np.asarray([sep >= SEPARATION for sep, _ in cuts])
        if not used.any():
            continue
        thresholds = np.asarray([cut if u else 0.0 for (_, cut), u in zip(cuts, used, strict=True)])
        cols, thr2 = _sides_of(used, thresholds)
        sides = block[:, cols] > thr2
        high, low = sides.all(axis=1), ~sides.any(axis=1)
        groups = [low, high, ~(low | high)]
        envelopes = [_envelope(block[g] if np.count_nonzero(g) >= MIN_ROWS else block, pad, tail_pad) for g in groups]
        if used[SPLIT_ON.index(_TOK)]:  # an idle regime has no traffic to take a cost per token of
            envelopes[0][0][_I_CPT], envelopes[0][1][_I_CPT] = -np.inf, np.inf
        # a row in transition may hold either regime's values, or values between them
        envelopes[2] = (
            np.minimum.reduce([e[0] for e in envelopes]),
            np.maximum.reduce([e[1] for e in envelopes]),
        )
        out.agents[agent_id] = len(split)
        split.append(used.astype(np.int64))
        thr.append(thresholds)
        to.append(float(last))
        lo.append(np.vstack([e[0] for e in envelopes]))
        hi.append(np.vstack([e[1] for e in envelopes]))
        center.append(
            np.vstack([(block[g] if np.count_nonzero(g) >= MIN_ROWS else block).mean(axis=0) for g in groups[:2]])
        )
    out.split = np.asarray(split, dtype=np.int64).reshape(-1, len(SPLIT_ON))
    out.threshold = np.asarray(thr, dtype=np.float64).reshape(-1, len(SPLIT_ON))
    out.trained_to = np.asarray(to, dtype=np.float64)
    out.lo = np.asarray(lo, dtype=np.float64).reshape(-1, 3, N_ABS)
    out.hi = np.asarray(hi, dtype=np.float64).reshape(-1, 3, N_ABS)
    out.center = np.asarray(center, dtype=np.float64).reshape(-1, 2, N_ABS)
    return out


@dataclass
class Relearned:
    """An agent's regimes re-learned after a rebase later than its training (a deploy moves its levels): per
    regime, the rows seen since and the sum of their offsets from the regime's training centre."""

    n: np.ndarray = field(default_factory=lambda: np.zeros(2))
    total: np.ndarray = field(default_factory=lambda: np.zeros((2, N_ABS)))

    def to_doc(self) -> dict[str, Any]:
        """Plain lists (a Firestore map)."""
        return {"n": self.n.tolist(), "total": self.total.reshape(-1).tolist()}

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any] | None) -> Relearned:
        """The inverse of ``to_doc`` (a fresh one for None)."""
        if not doc:
            return cls()
        return cls(np.asarray(doc["n"], dtype=np.float64), np.asarray(doc["total"], dtype=np.float64).reshape(2, N_ABS))


def drivers(regimes: Regimes, i: int, a: np.ndarray) -> np.ndarray:
    """|absolute features| of one row ``a`` of agent row ``i`` in comparable units (as ``features._scaled``'s
    log ratios: 0.4, a change of 50 %, weighs 4): how far each judged one lies from its nearer regime's centre."""
    judged = np.isfinite(regimes.lo[i, 2]) | np.isfinite(regimes.hi[i, 2])
    away = np.min(np.abs(a[None, :] - regimes.center[i]), axis=0)
    return np.where(judged, 10.0 * away, 0.0)


def judge_row(regimes: Regimes, i: int, a: np.ndarray, relearned: Relearned | None) -> bool:
    """Whether one absolute feature row ``a`` of agent row ``i`` leaves its regime's envelope: the trained one
    (``relearned`` None: no rebase since training), or after a rebase the one moved by what the regime's first
    ``RELEARN_ROWS`` rows since showed (those rows, and rows in transition, are not judged; updates
    ``relearned``)."""
    if relearned is None:
        return bool(regimes.out(i, a))
    r = int(regimes.state(i, a))
    if r == 2:
        return False
    if relearned.n[r] < RELEARN_ROWS:
        relearned.n[r] += 1.0
        relearned.total[r] += a - regimes.center[i, r]
        return False
    offset = relearned.total[r] / relearned.n[r]
    return bool(np.any((a > regimes.hi[i, r] + offset) | (a < regimes.lo[i, r] + offset)))


def out_rows(regimes: Regimes, i: int, A: np.ndarray, t: np.ndarray, versions: Sequence[int]) -> np.ndarray:
    """``judge_row`` of every row of a stream of agent row ``i`` (absolute features ``A``, times ``t``), its
    regimes re-learned from each rebase (a new version at row ``v > 0``) later than its training."""
    out = regimes.out(i, A)
    moved = [v for v in versions if v > 0 and not regimes.fresh(i, float(t[v]))]
    for j, v in enumerate(moved):
        relearned = Relearned()
        for row in range(v, moved[j + 1] if j + 1 < len(moved) else A.shape[0]):
            out[row] = judge_row(regimes, i, A[row], relearned)
    return out
