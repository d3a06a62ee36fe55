"""The data model shared by the simulator, the detectors and the evaluation harness.

Plain numpy arrays in frozen dataclasses: a detector sees one agent's heartbeats in order, and the harness
matches what it raised against labelled fault events by row index, so every type here is indexed by row.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

METRICS = ("latency_ms", "error_rate", "cpu_pct", "memory_pct", "tokens_per_s", "cost_per_min")


@dataclass(frozen=True)
class AgentStream:
    """One agent's heartbeats: times (a heartbeat gap is a jump in ``t``) and metrics in ``METRICS`` order."""

    agent_id: str
    interval_s: float  # the agent's declared heartbeat interval
    t: np.ndarray  # float seconds since the start, strictly increasing
    X: np.ndarray  # float (n, len(METRICS))
    #: The agent's kind (its registration's ``agent_type``): young agents are calibrated by their kind.
    kind: str = ""
    #: Rows at which the agent registered a new version (a deploy): its baseline re-learns its levels there.
    versions: tuple[int, ...] = ()

    def __len__(self) -> int:
        return int(self.t.shape[0])

    def head(self, n: int) -> AgentStream:
        """The first ``n`` rows (the training period of a fleet)."""
        kept = tuple(v for v in self.versions if v < n)
        return AgentStream(self.agent_id, self.interval_s, self.t[:n], self.X[:n], self.kind, kept)

    def tail(self, n: int) -> AgentStream:
        """The rows from ``n`` on; times are not re-based, so gaps and daily cycles stay where they were."""
        kept = tuple(v - n for v in self.versions if v >= n)
        return AgentStream(self.agent_id, self.interval_s, self.t[n:], self.X[n:], self.kind, kept)


@dataclass(frozen=True)
class FaultEvent:
    """A labelled fault: rows ``[start, end)`` of that agent's full stream."""

    agent_id: str
    kind: str  # spike | drift | stuck | gap | error_burst | runaway_cost
    start: int  # first row index where the fault is present
    end: int  # exclusive


@dataclass(frozen=True)
class Detection:
    """What a detector raised: an episode from ``start`` until it cleared (``end``, exclusive)."""

    agent_id: str
    start: int  # row index where the detector first raised it
    end: int  # exclusive: first row where it cleared
    rule: str  # e.g. "anomaly", "error_rate", "saturation", "liveness"
    features: tuple[str, ...] = ()  # what drove it (learned detector: top features)


class Detector(Protocol):
    """Anything the harness can compare: fitted on a healthy period, then run over whole streams."""

    name: str

    def fit(self, streams: Mapping[str, AgentStream]) -> None:
        """Learn from the healthy period only (a no-op for static rules)."""
        ...

    def detect(self, stream: AgentStream) -> list[Detection]:
        """Run over a whole stream, rows in order, with streaming semantics (no peeking ahead)."""
        ...


@dataclass(frozen=True)
class Fleet:
    """A simulated fleet: streams, the faults injected into them, and the length of the healthy period."""

    streams: dict[str, AgentStream]
    events: list[FaultEvent]
    train_rows: int  # rows [0, train_rows) of every agent are healthy: the training period
    #: Legitimate changes that must not page (kind ``deploy``, ``scale_up``, ...): rows ``[start, end)``.
    changes: list[FaultEvent] = field(default_factory=list)
