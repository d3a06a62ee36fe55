"""Per-agent calibration of the anomaly detector: each agent's own score threshold and healthy envelope,
shrunk toward its kind's while its history is short (issue 24).

A mixed fleet has no single "normal": a chat agent's quiet latency and a retriever's heavy-tailed one cannot
share a floor or a range. So each agent seen in training gets

- a **threshold** on the forest's score: the ``quantile`` of its own healthy scores plus ``margin``;
- an **envelope** per feature: the range of its own healthy feature values;

and each agent *kind* (the registration's ``agent_type``) the widest of its agents' (the union of their
envelopes, the highest threshold), and the fleet the widest of all. An agent's own bounds are shrunk toward
its kind's with weight ``n / (n + shrink_rows)`` of its ``n`` healthy rows, then widened by ``pad`` of the
range plus a per-feature minimum: a young agent is judged mostly by its kind, an old one by itself. An
agent the model never saw is judged by its kind's bounds, or the fleet's when its kind is unknown.

The false-alarm guarantee is by construction, on the rows it is fitted on: every envelope is at least as
wide as the range of the agent's own healthy training rows (shrinking toward a kind only widens it), so a
healthy agent crosses it only with a value it did not show in them, three heartbeats in a row; the
forest's threshold is a high quantile of its own scores plus a margin, not their maximum. Retraining fits
on the older 70 % of each agent's stored history, which covers a daily cycle when the history ring holds
at least 1.45 days (``FLEET_HISTORY_SLOTS``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shared.ml import features as fe

#: Minimum widening of an envelope per feature (in the feature's unit): 0.75 deviations for the z-scores (a
#: slowly wandering metric shows far fewer independent values in a day than it has rows, so its next high lies
#: beyond the day's), 0.1 for a log ratio (10 %), 0.05 for the error rate's excess.
_LOG_PADS = {fe._I_LTPC: 0.2, fe._I_LCPT: 0.15, fe._I_CPU_UNEXPLAINED: 0.05}
MIN_PAD = np.asarray(
    [
        0.05
        if name == "error_excess"
        else _LOG_PADS.get(i, 0.1)
        if i in fe.LOG_LIKE
        else 0.75
        if i in fe.Z_LIKE
        else 0.5
        for i, name in enumerate(fe.FEATURES)
    ],
    dtype=np.float64,
)
#: A feature checked from above only is widened by this many ``pad``s of its distance above its median: twice for
#: the costs per token (whose healthy wander a day may not show in full), once for unexplained CPU (already the
#: smaller of two rises).
ONE_SIDED_WIDTH = np.asarray([1.0 if i == fe._I_CPU_UNEXPLAINED else 2.0 for i in range(fe.N_FEATURES)])
#: The quantile beyond which a feature's healthy values are its tail (see ``_pad``).
TAIL_Q = 0.99
#: Features whose envelope is not checked (gaps have their own rule).
UNBOUNDED: tuple[int, ...] = (fe._I_GAP, fe._I_CPT, fe._I_COST)
#: Features checked from below only: traffic (tokens, and the spend that follows them) may always rise; spend
#: rising beyond what its tokens explain shows in the cost per token, which is checked both ways.
_TRAFFIC = ("tokens_per_s", "cost_per_min")
NO_CEILING: tuple[int, ...] = tuple(
    i for i, name in enumerate(fe.FEATURES) if any(name == f"{p}_{m}" for p in ("z", "zs", "lr") for m in _TRAFFIC)
)
#: Features checked from above only: CPU that traffic does not explain (its other side means nothing), and
#: the cost per token (a cheaper model is no incident).
NO_FLOOR: tuple[int, ...] = (fe._I_CPU_UNEXPLAINED, fe._I_LCPT, fe._I_LCPT_NOW, fe._I_LAT_UNEXPLAINED)
#: CPU follows traffic: for an agent that reports its tokens, CPU is judged through its tokens per CPU
#: (``log_tokens_per_cpu``, checked both ways: a stuck loop burning CPU, or a CPU spike with no traffic), not
#: on its own, so a scale-up that moves both is not an anomaly. Without tokens, CPU is checked on its own.
_CPU_ALONE: tuple[int, ...] = tuple(fe.FEATURES.index(f"{p}_cpu_pct") for p in ("z", "zs", "lr"))
_I_TOKENS = fe.FEATURES.index("z_tokens_per_s")
_LATENCY_UP: tuple[int, ...] = tuple(fe.FEATURES.index(f"{p}_latency_ms") for p in ("zs", "lr"))
#: Level features (the recent level against the baseline and the slow reference) are checked for the metrics
#: that creep when something is wrong (memory leaks, latency degrades); the others' levels follow traffic
#: and the time of day, and a step in them shows in the short-window features.
_CREEP = ("latency_ms", "memory_pct")
UNBOUNDED += tuple(
    i
    for i, name in enumerate(fe.FEATURES)
    if any(name == f"{p}_{m}" for p in ("zl", "lref") for m in fe.METRICS if m not in _CREEP)
)


@dataclass(frozen=True)
class Bounds:
    """What an agent is judged against."""

    lo: np.ndarray
    hi: np.ndarray
    threshold: float
    source: str  # "agent", "kind" or "fleet"


@dataclass
class Calibration:
    """The bounds of every agent seen in training, of every kind and of the fleet."""

    agents: dict[str, int] = field(default_factory=dict)  # agent id -> row of lo/hi
    lo: np.ndarray = field(default_factory=lambda: np.empty((0, fe.N_FEATURES)))
    hi: np.ndarray = field(default_factory=lambda: np.empty((0, fe.N_FEATURES)))
    thresholds: np.ndarray = field(default_factory=lambda: np.empty(0))
    kinds: dict[str, int] = field(default_factory=dict)
    kind_lo: np.ndarray = field(default_factory=lambda: np.empty((0, fe.N_FEATURES)))
    kind_hi: np.ndarray = field(default_factory=lambda: np.empty((0, fe.N_FEATURES)))
    kind_thresholds: np.ndarray = field(default_factory=lambda: np.empty(0))
    fleet: Bounds = field(
        default_factory=lambda: Bounds(np.full(fe.N_FEATURES, -np.inf), np.full(fe.N_FEATURES, np.inf), 1.0, "fleet")
    )

    def bounds(self, agent_id: str, kind: str = "") -> Bounds:
        """The agent's own (shrunk) bounds, else its kind's, else the fleet's."""
        i = self.agents.get(agent_id)
        if i is not None:
            return Bounds(self.lo[i], self.hi[i], float(self.thresholds[i]), "agent")
        j = self.kinds.get(kind) if kind else None
        if j is not None:
            return Bounds(self.kind_lo[j], self.kind_hi[j], float(self.kind_thresholds[j]), "kind")
        return self.fleet

    # ------------------------------------------------------------------------------ persistence
    def arrays(self) -> dict[str, np.ndarray]:
        """The numeric part, for the model's ``.npz`` (about 0.6 KB per agent)."""
        return {
            "cal_lo": self.lo,
            "cal_hi": self.hi,
            "cal_thr": self.thresholds,
            "cal_kind_lo": self.kind_lo,
            "cal_kind_hi": self.kind_hi,
            "cal_kind_thr": self.kind_thresholds,
            "cal_fleet": np.vstack([self.fleet.lo, self.fleet.hi]),
        }

    def meta(self) -> dict[str, Any]:
        """The names (agents, kinds) and the fleet's threshold, for the model's JSON metadata."""
        return {"agents": list(self.agents), "kinds": list(self.kinds), "fleet_threshold": self.fleet.threshold}

    @classmethod
    def load(cls, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> Calibration:
        """The inverse of ``arrays`` and ``meta``."""
        fleet = arrays["cal_fleet"]
        return cls(
            agents={str(a): i for i, a in enumerate(meta["agents"])},
            lo=arrays["cal_lo"],
            hi=arrays["cal_hi"],
            thresholds=arrays["cal_thr"],
            kinds={str(k): i for i, k in enumerate(meta["kinds"])},
            kind_lo=arrays["cal_kind_lo"],
            kind_hi=arrays["cal_kind_hi"],
            kind_thresholds=arrays["cal_kind_thr"],
            fleet=Bounds(fleet[0], fleet[1], float(meta["fleet_threshold"]), "fleet"),
        )


def _pad(
    lo: np.ndarray, hi: np.ndarray, mid: np.ndarray, pad: float, tail: tuple[np.ndarray, np.ndarray] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Widen a range by ``pad`` of its width plus the minimum (a feature checked on one side only: by twice
    that side's distance from the median ``mid``, not by its other side), and by its tails (``tail``: how far
    the extremes lie beyond the 1st and 99th percentiles, so a heavy tail, whose next extreme goes further, is
    widened more than a light one)."""
    width = pad * (hi - lo)
    width[..., NO_FLOOR] = ONE_SIDED_WIDTH[list(NO_FLOOR)] * pad * (hi - mid)[..., NO_FLOOR]
    lo, hi = lo - (width + MIN_PAD), hi + (width + MIN_PAD)
    if tail is not None:
        lo, hi = lo - tail[0], hi + tail[1]
    for i in UNBOUNDED:
        lo[..., i], hi[..., i] = -np.inf, np.inf
    for i in NO_CEILING:
        hi[..., i] = np.inf
    for i in NO_FLOOR:
        lo[..., i] = -np.inf
    return lo, hi


def _traffic_explains_cpu(lo: np.ndarray, hi: np.ndarray, reports_tokens: np.ndarray) -> None:
    """Unbound CPU on its own for the rows (agents, kinds) that report tokens, and latency's short rises (judged
    as ``latency_unexplained``) (in place)."""
    for i in _CPU_ALONE:
        lo[reports_tokens, i], hi[reports_tokens, i] = -np.inf, np.inf
    for i in _LATENCY_UP:
        hi[reports_tokens, i] = np.inf


def calibrate(
    ids: Sequence[str],
    kinds: Sequence[str],
    blocks: Sequence[np.ndarray],
    scores: Sequence[np.ndarray],
    *,
    quantile: float,
    margin: float,
    pad: float,
    shrink_rows: float,
    tail_pad: float = 1.0,
) -> Calibration:
    """Bounds from each agent's healthy feature rows ``blocks[i]`` and their forest ``scores[i]``."""
    own_lo, own_hi, own_thr, rows, agent_kind, tails_lo, tails_hi = [], [], [], [], [], [], []
    tokens: list[bool] = []
    own_mid: list[np.ndarray] = []
    for agent_id, kind, block, score in zip(ids, kinds, blocks, scores, strict=True):
        if block.shape[0] == 0:
            continue
        own_mid.append(np.median(block, axis=0))
        own_lo.append(block.min(axis=0))
        own_hi.append(block.max(axis=0))
        q_lo, q_hi = np.quantile(block, [1.0 - TAIL_Q, TAIL_Q], axis=0)
        tails_lo.append(tail_pad * (own_lo[-1] - q_lo) * -1.0)
        tails_hi.append(tail_pad * (own_hi[-1] - q_hi))
        own_thr.append(float(np.quantile(score, quantile)) + margin)
        rows.append(block.shape[0])
        agent_kind.append((agent_id, kind))
        tokens.append(bool(np.any(block[:, _I_TOKENS] != 0.0)))
    if not rows:
        raise ValueError("no healthy rows to calibrate on")
    lo, hi, thr = np.vstack(own_lo), np.vstack(own_hi), np.asarray(own_thr)
    kind_names = sorted({k for _, k in agent_kind if k})
    members = [[i for i, (_, k) in enumerate(agent_kind) if k == name] for name in kind_names]
    k_lo = np.asarray([lo[m].min(axis=0) for m in members]).reshape(-1, fe.N_FEATURES)
    k_hi = np.asarray([hi[m].max(axis=0) for m in members]).reshape(-1, fe.N_FEATURES)
    k_thr = np.asarray([thr[m].max() for m in members], dtype=np.float64)
    f_lo, f_hi, f_thr = lo.min(axis=0), hi.max(axis=0), float(thr.max())
    kind_index = {name: j for j, name in enumerate(kind_names)}
    # Shrink each agent toward its kind's typical agent (the fleet's when its kind is unknown) while its
    # history is short, never narrower than its own healthy range.
    typical = {
        name: (np.median(lo[m], axis=0), np.median(hi[m], axis=0), float(np.median(thr[m])))
        for name, m in zip(kind_names, members, strict=True)
    }
    fleet_typical = (np.median(lo, axis=0), np.median(hi, axis=0), float(np.median(thr)))
    w = (np.asarray(rows, dtype=np.float64) / (np.asarray(rows, dtype=np.float64) + shrink_rows))[:, None]
    base = [typical[k] if k else fleet_typical for _, k in agent_kind]
    base_lo = np.vstack([b[0] for b in base])
    base_hi = np.vstack([b[1] for b in base])
    base_thr = np.asarray([b[2] for b in base])
    lo = np.minimum(lo, w * lo + (1.0 - w) * base_lo)
    hi = np.maximum(hi, w * hi + (1.0 - w) * base_hi)
    thr = np.maximum(thr, w[:, 0] * thr + (1.0 - w[:, 0]) * base_thr)
    mid = np.vstack(own_mid)
    k_mid = np.asarray([np.median(mid[m], axis=0) for m in members]).reshape(-1, fe.N_FEATURES)
    lo, hi = _pad(lo, hi, mid, pad, (np.vstack(tails_lo), np.vstack(tails_hi)))
    k_lo, k_hi = _pad(k_lo, k_hi, k_mid, pad)
    f_lo, f_hi = _pad(f_lo, f_hi, np.median(mid, axis=0), pad)
    reports = np.asarray(tokens)
    _traffic_explains_cpu(lo, hi, reports)
    _traffic_explains_cpu(k_lo, k_hi, np.asarray([np.mean(reports[m]) > 0.5 for m in members], dtype=bool))
    if np.mean(reports) > 0.5:
        _traffic_explains_cpu(f_lo[None], f_hi[None], np.asarray([True]))
    return Calibration(
        agents={a: i for i, (a, _) in enumerate(agent_kind)},
        lo=lo,
        hi=hi,
        thresholds=thr,
        kinds=kind_index,
        kind_lo=k_lo,
        kind_hi=k_hi,
        kind_thresholds=k_thr,
        fleet=Bounds(f_lo, f_hi, f_thr, "fleet"),
    )
