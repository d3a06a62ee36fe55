"""Failure warnings and their event-level quality: when a risk series raises a warning
(``warnings_from_risk``: ``PERSISTENCE`` consecutive rows at or above the threshold), and how warnings score
against failure events (``score_warnings``: a warning is correct when a failure starts within the horizon
plus ``SLACK`` rows after it)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from shared.ml.data import FaultEvent

#: Consecutive rows at or above the threshold before a warning is raised.
PERSISTENCE = 2
#: Rows of slack after the horizon in which a failure starting still makes a warning correct.
SLACK = 5


def warnings_from_risk(risk: np.ndarray, threshold: float, persistence: int = PERSISTENCE) -> list[int]:
    """Rows where a warning is raised: the risk has been at or above ``threshold`` for ``persistence``
    consecutive rows; the next warning needs the risk to fall below the threshold first."""
    out: list[int] = []
    run = 0
    for i, high in enumerate(np.asarray(risk) >= threshold):
        run = run + 1 if high else 0
        if run == persistence:
            out.append(i)
    return out


@dataclass(frozen=True)
class WarningScore:
    """Event-level quality of warnings over a fleet."""

    failures: int
    warned: int  # failures with a warning in [start - horizon - SLACK, start)
    lead_times: tuple[int, ...]  # heartbeats from the first such warning to the failure's start
    warnings: int
    correct: int  # warnings followed by a failure start within horizon + SLACK rows
    healthy_rows: int  # rows neither inside a failure nor in the horizon + SLACK rows before one

    @property
    def share_warned(self) -> float | None:
        return self.warned / self.failures if self.failures else None

    @property
    def precision(self) -> float | None:
        return self.correct / self.warnings if self.warnings else None

    @property
    def false_per_1000(self) -> float | None:
        return 1000.0 * (self.warnings - self.correct) / self.healthy_rows if self.healthy_rows else None

    @property
    def median_lead(self) -> float | None:
        return float(np.median(self.lead_times)) if self.lead_times else None

    @property
    def f1(self) -> float:
        p, r = self.precision or 0.0, self.share_warned or 0.0
        return 2 * p * r / (p + r) if p + r else 0.0


def score_warnings(
    warned_rows: Mapping[str, Sequence[int]],
    lengths: Mapping[str, int],
    events: Sequence[FaultEvent],
    horizon: int,
) -> WarningScore:
    """Score warnings (row indices per agent) against failure events."""
    reach = horizon + SLACK
    by_agent: dict[str, list[FaultEvent]] = {}
    for e in events:
        by_agent.setdefault(e.agent_id, []).append(e)
    failures = warned = n_warn = correct = healthy = 0
    leads: list[int] = []
    for agent_id, n in lengths.items():
        rows = list(warned_rows.get(agent_id, ()))
        evs = by_agent.get(agent_id, [])
        unhealthy = np.zeros(n, dtype=bool)
        for e in evs:
            unhealthy[max(0, e.start - reach) : min(n, e.end)] = True
            failures += 1
            before = [w for w in rows if e.start - reach <= w < e.start]
            if before:
                warned += 1
                leads.append(e.start - min(before))
        healthy += int(n - unhealthy.sum())
        n_warn += len(rows)
        correct += sum(1 for w in rows if any(w < e.start <= w + reach for e in evs))
    return WarningScore(failures, warned, tuple(leads), n_warn, correct, healthy)
