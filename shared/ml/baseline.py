"""The rolling state behind an agent's heartbeat features (``features.Baseline``), and its form in the agent
document.

One ``Baseline`` holds ``A`` agents side by side (``A`` = 1 for one agent's stream, the fleet for the batch
path): rows seen, the fast baseline (``mean``/``var`` per metric), the slow reference (``ref``, about a day
of heartbeats), the ring of the last ``WINDOW`` rows, the previous row, the recent level, the stuck run,
per metric the run of held rows (``frozen``) and whether it is held, and the rows since its last rebase.

``to_doc``/``from_doc`` keep a one-agent state as plain numbers (float64 survives exactly), so a function
instance that never saw the agent carries on where another left off; the live path
(``features_live.step``) works on that document itself, in Python floats. A state written before the slow
reference and the per-metric freeze existed (issue 24) still loads: its reference starts at its mean.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: The metrics of a heartbeat row, in column order (the same tuple as ``shared.ml.data.METRICS``).
METRICS: tuple[str, ...] = ("latency_ms", "error_rate", "cpu_pct", "memory_pct", "tokens_per_s", "cost_per_min")
M = len(METRICS)
#: Rows before an agent's features are meaningful ("insufficient data" before).
WARMUP = 30
#: Rows after the start (or a rebase) during which the baseline learns every row, nothing held (the fast
#: baseline's horizon, ``features.HORIZON``).
SETTLE = 200
#: Rows of the short window.
WINDOW = 5
#: Rows after a rebase (a new version registered, an anomaly acknowledged) in which the baseline re-learns
#: the agent's levels as a new agent's would; the features of those rows are not scored.
REBASE_ROWS = WARMUP


def _zeros(*shape: int) -> Any:
    return lambda: np.zeros(shape)


@dataclass
class Baseline:
    """The rolling state of ``A`` agents. Create with ``Baseline.new``."""

    interval: np.ndarray
    n: int = 0
    mean: np.ndarray = field(default_factory=_zeros(1, M))
    var: np.ndarray = field(default_factory=_zeros(1, M))
    ref: np.ndarray = field(default_factory=_zeros(1, M))
    ring: np.ndarray = field(default_factory=_zeros(1, WINDOW, M))
    prev: np.ndarray = field(default_factory=_zeros(1, M))
    stuck: np.ndarray = field(default_factory=_zeros(1))
    frozen: np.ndarray = field(default_factory=_zeros(1, M))
    held: np.ndarray = field(default_factory=lambda: np.zeros((1, M), dtype=bool))
    level: np.ndarray = field(default_factory=_zeros(1, M))
    #: Rows since the agent's first heartbeat or its last rebase (its baseline's own warm-up counts these).
    age: np.ndarray = field(default_factory=_zeros(1))

    @classmethod
    def new(cls, interval_s: float | Sequence[float] | np.ndarray) -> Baseline:
        """A fresh state for one agent (a float) or several (a sequence of their intervals)."""
        interval = np.atleast_1d(np.asarray(interval_s, dtype=np.float64)).copy()
        a = interval.shape[0]
        return cls(
            interval=interval,
            mean=np.zeros((a, M)),
            var=np.zeros((a, M)),
            ref=np.zeros((a, M)),
            ring=np.zeros((a, WINDOW, M)),
            prev=np.zeros((a, M)),
            stuck=np.zeros(a),
            frozen=np.zeros((a, M)),
            held=np.zeros((a, M), dtype=bool),
            level=np.zeros((a, M)),
            age=np.zeros(a),
        )

    @property
    def ready(self) -> bool:
        """Whether the next row's features are valid (warm-up done, no rebase under way); one agent."""
        return ready(float(self.age[0]))

    @property
    def relearning(self) -> bool:
        """Whether a rebase is under way (the warm-up after a rebase, not the agent's first one)."""
        return relearning(self.n, float(self.age[0]))

    @property
    def settling(self) -> bool:
        """Whether the baseline is still settling after a rebase (its first ``SETTLE`` rows since): its levels
        are not judged yet, only the relations between its metrics (``features.RELATIONAL``)."""
        return settling(self.n, float(self.age[0]))

    def rebase(self) -> None:
        """Let the baseline move: a new version was registered or the agent's anomaly acknowledged, so its
        baseline, slow reference and held metrics start again from the next row, as a new agent's would, and
        the next ``REBASE_ROWS`` rows are not scored. One-agent states only."""
        self.age[0] = 0.0

    def to_doc(self) -> dict[str, Any]:
        """A one-agent state as plain lists and numbers (a Firestore map or JSON)."""
        if self.interval.shape[0] != 1:
            raise ValueError("only a one-agent baseline is stored")
        return {
            "interval": float(self.interval[0]),
            "n": int(self.n),
            "mean": self.mean[0].tolist(),
            "var": self.var[0].tolist(),
            "ref": self.ref[0].tolist(),
            # Firestore stores no nested arrays: the ring is flattened row after row.
            "ring": self.ring[0].reshape(-1).tolist(),
            "prev": self.prev[0].tolist(),
            "stuck": float(self.stuck[0]),
            "frozen": self.frozen[0].tolist(),
            "held": [bool(v) for v in self.held[0]],
            "level": self.level[0].tolist(),
            "age": float(self.age[0]),
        }

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> Baseline:
        """The inverse of ``to_doc`` (also reads a state written before issue 24)."""
        d = current_doc(doc)

        def row(key: str) -> np.ndarray:
            return np.asarray(d[key], dtype=np.float64).reshape(1, M)

        return cls(
            interval=np.asarray([float(d["interval"])]),
            n=int(d["n"]),
            mean=row("mean"),
            var=row("var"),
            ref=row("ref"),
            ring=np.asarray(d["ring"], dtype=np.float64).reshape(1, WINDOW, M),
            prev=row("prev"),
            stuck=np.asarray([float(d["stuck"])]),
            frozen=row("frozen"),
            held=np.asarray(d["held"], dtype=bool).reshape(1, M),
            level=row("level"),
            age=np.asarray([float(d["age"])]),
        )


def current_doc(doc: Mapping[str, Any]) -> dict[str, Any]:
    """A one-agent state document in the current form, as a new dict sharing its values. A state written before
    the slow reference and the per-metric freeze (issue 24) is filled in: its reference starts at its mean, each
    metric's freeze counter at the one shared counter, its age at its rows seen. Raises for a document of another
    shape (``ValueError`` for a list of the wrong length, ``KeyError`` for a missing one, ``TypeError`` for a value
    that is not a list)."""
    d = dict(doc)
    if "ref" not in d:
        d["ref"] = d["mean"]
    frozen = d.get("frozen", 0.0)
    if isinstance(frozen, int | float):
        d["frozen"] = [float(frozen)] * M
    d.setdefault("age", float(d["n"]))
    for key, size in _SIZES.items():
        if len(d[key]) != size:
            raise ValueError(f"baseline {key}: {len(d[key])} values, not {size}")
    return d


_SIZES = {"mean": M, "var": M, "ref": M, "ring": WINDOW * M, "prev": M, "frozen": M, "held": M, "level": M}


def ready(age: float) -> bool:
    """Whether the next row's features are valid, at ``age`` rows since the start or the last rebase."""
    return age >= WARMUP


def relearning(n: int, age: float) -> bool:
    """Whether a rebase is under way (``Baseline.relearning``) after ``n`` rows seen in all."""
    return n >= WARMUP and not ready(age)


def settling(n: int, age: float) -> bool:
    """Whether the baseline is still settling after a rebase (``Baseline.settling``)."""
    return n > age and age < SETTLE
