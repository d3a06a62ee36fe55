"""The spend page's view model (pure, no I/O): a tenant's spend per agent and model, today against the
previous days, and a projected end-of-period spend against the budget.

Input: the API's tenant usage view (each period's spend and budget: the projections) and, per agent, its
day counters by model (``shared.store.usage_months.agents_month_models`` gives month -> day ("01".."31")
-> model -> :class:`ModelDay`; :func:`month_days` turns one month into dates, and a caller early in a
month merges the previous month's the same way: the table and the chart). The projection is linear on the
period's elapsed share: ``spent / elapsed share``, none before ``MIN_ELAPSED_SHARE`` of the period
(a few minutes' spend says little about a month).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

from markupsafe import Markup

from shared.console import charts
from shared.console.formats import decimal, usd
from shared.domain.periods import Period, window
from shared.domain.usage import ModelDay

#: Previous days compared with today.
DAYS = 7
#: No projection before this share of the period has elapsed.
MIN_ELAPSED_SHARE = 0.01
NANOS = Decimal(1_000_000_000)

#: day -> model -> counters
Days = Mapping[date, Mapping[str, ModelDay]]


def month_days(
    month: str, month_models: Mapping[str, Mapping[str, ModelDay | Mapping[str, Any]]]
) -> dict[date, dict[str, ModelDay]]:
    """``agent_month_models``' answer (``"DD"`` keys, counters or their stored maps) keyed by date."""
    year, mon = (int(part) for part in month.split("-"))
    out = {}
    for day, models in sorted(month_models.items()):
        out[date(year, mon, int(day))] = {
            model: c if isinstance(c, ModelDay) else ModelDay.from_dict(dict(c)) for model, c in sorted(models.items())
        }
    return out


def to_usd(nanos: int) -> Decimal:
    return Decimal(nanos) / NANOS


@dataclass(frozen=True)
class Projection:
    """Spend so far in a period and where it ends at the same pace."""

    period: str
    spent_usd: Decimal
    elapsed_share: float
    projected_usd: Decimal | None
    budget_usd: Decimal | None
    resets_at: datetime

    @property
    def over(self) -> bool:
        """The projection exceeds the budget."""
        return self.budget_usd is not None and self.projected_usd is not None and self.projected_usd > self.budget_usd

    def row(self, now: datetime) -> dict[str, Any]:
        left = self.budget_usd - self.spent_usd if self.budget_usd is not None else None
        return {
            "period": self.period,
            "spent": usd(self.spent_usd),
            "projected": usd(self.projected_usd) if self.projected_usd is not None else None,
            "budget": usd(self.budget_usd) if self.budget_usd is not None else None,
            "remaining": usd(max(left, Decimal(0))) if left is not None else None,
            "elapsed_share": round(self.elapsed_share, 4),
            "over": self.over,
            "resets_at": self.resets_at,
        }


def project(spent_usd: Decimal, period: Period, now: datetime, budget_usd: Decimal | None = None) -> Projection:
    """The period's projected spend: ``spent / elapsed share`` of the UTC period containing ``now``."""
    win = window(period, now)
    length = (win.resets_at - win.starts_at).total_seconds()
    share = min(max((now - win.starts_at).total_seconds() / length, 0.0), 1.0)
    projected = None
    if share >= MIN_ELAPSED_SHARE:
        # Exact: the elapsed share as a ratio of whole microseconds.
        elapsed_us = (now - win.starts_at) // timedelta(microseconds=1)
        projected = (spent_usd * Decimal(int(length * 1_000_000)) / Decimal(elapsed_us)).quantize(Decimal("0.000001"))
    return Projection(period.value, spent_usd, share, projected, budget_usd, win.resets_at)


@dataclass(frozen=True)
class Row:
    """One agent and model: spend today and on each previous day (oldest first)."""

    agent_id: str
    model: str
    today_nanos: int
    previous_nanos: tuple[int, ...]

    def as_dict(self) -> dict[str, Any]:
        prev = [n for n in self.previous_nanos if n]
        avg = sum(self.previous_nanos) / len(self.previous_nanos) if self.previous_nanos else 0
        change = None if not avg else round((self.today_nanos - avg) / avg, 4)
        return {
            "agent_id": self.agent_id,
            "model": self.model,
            "today": usd(to_usd(self.today_nanos)),
            "today_usd": to_usd(self.today_nanos),
            "previous": [usd(to_usd(n)) for n in self.previous_nanos],
            "previous_avg": usd(to_usd(int(avg))),
            "change": change,
            "active_days": len(prev),
        }


def rows(agents: Mapping[str, Days], today: date, days: int = DAYS) -> list[Row]:
    """One row per agent and model seen today or in the ``days`` before, ordered by agent then model."""
    span = [today - timedelta(days=n) for n in range(days, 0, -1)]
    out = []
    for agent_id in sorted(agents):
        per_day = agents[agent_id]
        models = sorted({m for d in (*span, today) for m in per_day.get(d, {})})
        for model in models:

            def nanos(day: date, model: str = model, per_day: Days = per_day) -> int:
                counters = per_day.get(day, {}).get(model)
                return counters.usd_nanos if counters else 0

            out.append(Row(agent_id, model, nanos(today), tuple(nanos(d) for d in span)))
    return out


def daily_totals(agents: Mapping[str, Days], today: date, days: int = DAYS) -> list[tuple[date, int]]:
    """The tenant's spend per day (nano-dollars), the ``days`` before today and today, oldest first."""
    span = [today - timedelta(days=n) for n in range(days, -1, -1)]
    return [(d, sum(c.usd_nanos for per_day in agents.values() for c in per_day.get(d, {}).values())) for d in span]


def _period(periods: Mapping[str, Any], name: str) -> tuple[Decimal | None, Decimal | None]:
    """(spend, budget) of one period of the API's usage view (``periods.day``/``periods.month``)."""
    period = periods.get(name)
    if not isinstance(period, Mapping):
        return None, None
    return decimal(period.get("spend_usd")), decimal(period.get("budget_usd"))


def spend_view(
    tenant: str,
    agents: Mapping[str, Days],
    now: datetime,
    periods: Mapping[str, Any] | None = None,
    days: int = DAYS,
) -> dict[str, Any]:
    """The spend page: rows per agent and model, per-agent totals, a bar chart of the tenant's daily
    spend against its daily budget, and projections for today and the month.

    The projections take each period's spend and budget from ``periods``, the API's tenant usage view
    (``GET /v1/tenants/{t}/usage``: ``day``/``month`` with ``spend_usd`` and ``budget_usd``, the hard
    limit the API enforces): the tenant's own counters, whatever the number of agents. ``agents`` (the
    per-agent, per-model day counters) only make the table and the chart; a period the API did not
    report has no projection row."""
    today = now.date()
    periods = periods or {}
    _, daily_budget = _period(periods, "day")
    table = rows(agents, today, days)
    totals = daily_totals(agents, today, days)
    per_agent: dict[str, int] = {}
    for row in table:
        per_agent[row.agent_id] = per_agent.get(row.agent_id, 0) + row.today_nanos
    chart: Markup = charts.bar_chart(
        [(f"{d:%m-%d}", float(to_usd(n))) for d, n in totals],
        title=f"{tenant}: spend per day",
        budget=float(daily_budget) if daily_budget is not None else None,
    )
    projections = []
    for name, period in (("day", Period.DAY), ("month", Period.MONTH)):
        spent, budget = _period(periods, name)
        if spent is not None:
            projections.append(project(spent, period, now, budget).row(now))
    return {
        "tenant": tenant,
        "today": today,
        "rows": [r.as_dict() for r in table],
        "agents": [{"agent_id": a, "today": usd(to_usd(n))} for a, n in sorted(per_agent.items())],
        "days": [{"day": d, "spend": usd(to_usd(n))} for d, n in totals],
        "chart": chart,
        "projections": projections,
    }
