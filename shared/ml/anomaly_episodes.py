"""The anomaly detector's verdicts and its persistence rule: what one heartbeat is judged, and when high rows
open an episode and clear rows close it.

- ``Status``: ``insufficient_data`` (warm-up), ``normal`` or ``anomalous``.
- ``Persistence``: ``k`` consecutive high rows open an episode (rule ``anomaly``, naming the 3 features that
  drove it), ``m`` consecutive clear rows close it; kept per agent as plain values between heartbeats.
- ``Verdict``: what ``AnomalyDetector.observe``/``judge`` say about one heartbeat.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from shared.ml.anomaly_regimes import DRIVERS
from shared.ml.data import Detection

Status = Literal["insufficient_data", "normal", "anomalous"]
INSUFFICIENT: Status = "insufficient_data"
NORMAL: Status = "normal"
ANOMALOUS: Status = "anomalous"
RULE = "anomaly"


@dataclass
class Persistence:
    """``k`` consecutive high rows open an episode; ``m`` consecutive clear rows close it (clear: not
    high and every metric back within ``clear_z`` baseline deviations, so a level that stays shifted
    keeps its one episode open instead of flapping)."""

    k: int
    m: int
    high_run: int = 0
    normal_run: int = 0
    opened: int | None = None
    drivers: np.ndarray | None = None  # max |scaled feature| over the rows that opened the episode
    why: tuple[str, ...] = ()

    def step(self, i: int, high: bool, clear: bool, scaled: np.ndarray, agent_id: str) -> tuple[Detection | None, bool]:
        """Advance one row; returns (the episode it closed, if any; whether the row is in an episode)."""
        if self.opened is None:
            if high:
                self.high_run += 1
                self.drivers = (
                    scaled if self.drivers is None or self.high_run == 1 else np.maximum(self.drivers, scaled)
                )
                if self.high_run >= self.k:
                    self.opened = i
                    self.normal_run = 0
                    idx = np.argsort(-self.drivers, kind="stable")[:3]
                    self.why = tuple(DRIVERS[int(j)] for j in idx)
            else:
                self.high_run = 0
            return None, self.opened is not None
        if high or not clear:
            self.normal_run = 0
            return None, True
        self.normal_run += 1
        if self.normal_run >= self.m:
            done = Detection(agent_id, self.opened, i - self.m + 1, RULE, self.why)
            self.opened = None
            self.high_run = 0
            self.drivers = None
            return done, False
        return None, True

    def flush(self, n: int, agent_id: str) -> Detection | None:
        """The episode still open at the end of a stream (ending there)."""
        if self.opened is None:
            return None
        return Detection(agent_id, self.opened, n, RULE, self.why)

    def to_doc(self) -> dict[str, Any]:
        """Plain values for a Firestore map (see ``features.Baseline.to_doc``)."""
        return {
            "high_run": self.high_run,
            "normal_run": self.normal_run,
            "opened": self.opened,
            "drivers": None if self.drivers is None else self.drivers.tolist(),
            "why": list(self.why),
        }

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any], k: int, m: int) -> Persistence:
        drivers = doc.get("drivers")
        return cls(
            k,
            m,
            high_run=int(doc.get("high_run", 0)),
            normal_run=int(doc.get("normal_run", 0)),
            opened=None if doc.get("opened") is None else int(doc["opened"]),
            drivers=None if drivers is None else _padded(np.asarray(drivers, dtype=np.float64)),
            why=tuple(str(w) for w in doc.get("why", ())),
        )


def _padded(drivers: np.ndarray) -> np.ndarray:
    """Drivers of every name in ``DRIVERS`` (a state written before the absolute features has fewer)."""
    return np.concatenate([drivers, np.zeros(max(len(DRIVERS) - drivers.shape[0], 0))])


@dataclass
class Verdict:
    """What ``observe`` says about one heartbeat."""

    status: Status
    score: float | None = None
    high: bool = False
    opened: bool = False  # an episode opened (or a gap was reported) with this heartbeat
    features: tuple[str, ...] = ()
    closed: Detection | None = None
