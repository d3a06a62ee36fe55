"""Budgets: hard and soft limits per UTC hour, day and month, in USD and tokens, and their crossings.

A crossing is computed from the exact totals after an increment and the increment itself
(``before = after - delta``), so exactly one batch sees each threshold being crossed: no
check-then-add race, however many instances add at once. Alerts are also deduplicated by id in
the store, which covers re-evaluations after a crash.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum
from typing import Any

from fleet_agent.contracts import BudgetSpec

from shared.domain.periods import Period, Window
from shared.domain.pricing import to_nanos, to_usd
from shared.domain.usage import WindowTotals

METRICS = ("usd", "tokens")
ADJECTIVE = {Period.HOUR: "hourly", Period.DAY: "daily", Period.MONTH: "monthly"}


@dataclass(frozen=True)
class Limit:
    period: Period
    metric: str  # "usd" (compared in nano-dollars) or "tokens"
    hard: int | None
    soft: int | None

    @property
    def name(self) -> str:
        return f"{ADJECTIVE[self.period]}_{self.metric}"

    def show(self, value: int) -> str:
        return f"${to_usd(value):.2f}" if self.metric == "usd" else f"{value:,} tokens"


def parse(stored: dict[str, Any] | None) -> BudgetSpec | None:
    """A budget as stored in Firestore (JSON-mode: decimals as strings)."""
    return BudgetSpec.model_validate(stored) if stored else None


def store(spec: BudgetSpec) -> dict[str, Any]:
    return spec.model_dump(mode="json", exclude_none=True)


def limits(spec: BudgetSpec | None) -> list[Limit]:
    """Every limit the budget sets (a soft limit without a hard one alerts but never stops)."""
    if spec is None:
        return []
    out = []
    for period, adjective in ADJECTIVE.items():
        for metric in METRICS:
            name = f"{adjective}_{metric}"
            hard_raw, soft_raw = getattr(spec, name), getattr(spec, f"soft_{name}")
            hard = _units(metric, hard_raw)
            soft = _units(metric, soft_raw)
            if soft is None and hard is not None:
                soft = math.floor(hard * spec.soft_ratio) if spec.soft_ratio < 1 else None
            if hard is not None or soft is not None:
                out.append(Limit(period, metric, hard, soft))
    return out


def _units(metric: str, value: Decimal | int | None) -> int | None:
    if value is None:
        return None
    return to_nanos(Decimal(value)) if metric == "usd" else int(value)


class Kind(StrEnum):
    THRESHOLD = "budget_threshold"  # a share of the hard limit (alert_at)
    SOFT = "budget_soft_limit"  # the soft limit: alert
    HARD = "budget_exhausted"  # the hard limit: the agent is stopped


@dataclass(frozen=True)
class Finding:
    kind: Kind
    scope: str  # "agent" or "tenant"
    subject: str  # agent id or tenant
    limit: Limit
    window: Window
    value: int
    threshold: int
    ratio: float | None = None

    @property
    def alert_id(self) -> str:
        share = f".{self.ratio:g}" if self.ratio is not None else ""
        return f"{self.kind.value}.{self.scope}.{self.subject}.{self.limit.name}.{self.window.key}{share}"

    @property
    def message(self) -> str:
        what = f"{self.scope} {self.subject}: {self.limit.name} budget {self.window.key}"
        used = f"{self.limit.show(self.value)} of {self.limit.show(self.limit.hard or self.threshold)}"
        if self.kind is Kind.HARD:
            return f"{what} exhausted ({used}); stopped until {self.window.resets_at:%Y-%m-%d %H:%M} UTC"
        if self.kind is Kind.SOFT:
            return f"{what} passed its soft limit {self.limit.show(self.threshold)} ({used})"
        return f"{what} reached {self.ratio:.0%} ({used})"


def crossings(spec: BudgetSpec | None, scope: str, subject: str, totals: WindowTotals) -> list[Finding]:
    """Thresholds this update crossed: ``before < threshold <= after`` (exactly one update sees each)."""
    return _findings(spec, scope, subject, totals, level=False)


def reached(spec: BudgetSpec | None, scope: str, subject: str, totals: WindowTotals) -> list[Finding]:
    """Thresholds at or below the current totals, crossed now or earlier (re-evaluation after a crash
    or a budget change; alerts are deduplicated by id, so re-raising one is harmless)."""
    return _findings(spec, scope, subject, totals, level=True)


def _findings(spec: BudgetSpec | None, scope: str, subject: str, totals: WindowTotals, *, level: bool) -> list[Finding]:
    if spec is None:
        return []
    out: list[Finding] = []
    for limit in limits(spec):
        for (period, win), (after, delta) in totals.items():
            if period is not limit.period:
                continue
            value = after.get(limit.metric)
            before = value - (0 if level else delta.get(limit.metric))

            def crossed(threshold: int, value: int = value, before: int = before) -> bool:
                return value >= threshold and (level or before < threshold)

            if limit.hard is not None:
                for ratio in sorted(set(spec.alert_at)):
                    threshold = math.ceil(limit.hard * ratio)
                    if crossed(threshold):
                        out.append(Finding(Kind.THRESHOLD, scope, subject, limit, win, value, threshold, ratio))
                if crossed(limit.hard):
                    out.append(Finding(Kind.HARD, scope, subject, limit, win, value, limit.hard))
            if limit.soft is not None and crossed(limit.soft):
                out.append(Finding(Kind.SOFT, scope, subject, limit, win, value, limit.soft))
    return out


def remaining(spec: BudgetSpec | None, period: Period, metric: str, used: int) -> tuple[int | None, int | None]:
    """(hard limit, what is left of it) in the metric's units; (None, None) without a limit."""
    for limit in limits(spec):
        if limit.period is period and limit.metric == metric and limit.hard is not None:
            return limit.hard, max(0, limit.hard - used)
    return None, None
