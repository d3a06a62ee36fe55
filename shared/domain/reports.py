"""The hourly summary and the daily cost report: what they share, built from plain inputs (no I/O).

``build_hourly`` (shared/domain/report_hourly.py) and ``build_daily`` (shared/domain/report_daily.py)
take agents, their usage totals, the per-model day counters and the open alert episodes, and return
the report models the Slack messages and the API (``GET /v1/reports/hourly|daily``) both show.
``shared/services/reports.py`` reads the inputs and sends them. This module holds what both reports
share: the jobs, the periods, the usage and agent lines, and money and changes for people.

Periods are UTC, like the usage counters: the hourly summary covers the last complete hour before
the time it is made at, the daily report the last complete day. Money is exact: nano-dollars inside,
plain decimal strings (``format_usd``) in the models.

The optimization suggestions are three rules over one day's per-model counters
(shared/domain/report_suggestions.py); their thresholds are named constants there (documented in
docs/reports.md).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from shared.domain.agent_record import AgentRecord
from shared.domain.periods import Period, Window, window
from shared.domain.pricing import format_usd
from shared.domain.usage import Totals

HOURLY = "hourly-summary"
DAILY = "daily-report"
JOBS = (HOURLY, DAILY)

#: Agents listed under "top agents by spend".
TOP_AGENTS = 5
#: The daily report compares the day with this many previous days (trend and average).
HISTORY_DAYS = 7
#: A budget this much used (percent) is "near"; 100 is "over".
NEAR_BUDGET_PCT = 80.0


# -- the models ----------------------------------------------------------------------------------


class ReportModel(BaseModel):
    """The base of every report model: frozen, unknown fields refused."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class ReportUsage(ReportModel):
    """Spend and calls of one period."""

    spend_usd: str = Field(description="Exact USD, a decimal string.")
    calls: int
    failures: int
    success_rate: float | None = Field(description="Share of calls that succeeded; null without calls.")
    tokens: int = 0
    unpriced_calls: int = 0


class ReportAgent(ReportModel):
    """An agent's spend in the report's period."""

    agent_id: str
    tenant: str
    name: str
    status: str
    spend_usd: str
    calls: int
    failures: int
    success_rate: float | None


# -- periods -------------------------------------------------------------------------------------


def report_hour(at: datetime) -> Window:
    """The last complete UTC hour before ``at``."""
    return window(Period.HOUR, window(Period.HOUR, at).starts_at - timedelta(hours=1))


def report_day(at: datetime) -> Window:
    """The last complete UTC day before ``at``."""
    return window(Period.DAY, window(Period.DAY, at).starts_at - timedelta(days=1))


def day_keys(day: Window, history: int = HISTORY_DAYS) -> list[str]:
    """``history`` days before ``day`` and ``day`` itself, oldest first."""
    return [f"{day.starts_at - timedelta(days=n):%Y-%m-%d}" for n in range(history, -1, -1)]


def months_needed(day: Window, history: int = HISTORY_DAYS) -> list[str]:
    """The month keys the daily report reads: the day's month (month to date) and the trend's."""
    first = day.starts_at - timedelta(days=history)
    return sorted({f"{first:%Y-%m}", f"{day.starts_at:%Y-%m}"})


# -- helpers -------------------------------------------------------------------------------------


def pct_change(current: int, previous: int) -> float | None:
    return None if previous == 0 else round((current - previous) * 100 / previous, 1)


def _rate(calls: int, failures: int) -> float | None:
    return None if calls == 0 else round((calls - failures) / calls, 4)


def spend_fields(totals: Totals) -> dict[str, Any]:
    """The ``spend_usd``, ``calls``, ``failures`` and ``success_rate`` of a report line."""
    return {
        "spend_usd": format_usd(totals.usd_nanos),
        "calls": totals.calls,
        "failures": totals.failures,
        "success_rate": _rate(totals.calls, totals.failures),
    }


def usage_of(totals: Totals) -> ReportUsage:
    return ReportUsage(**spend_fields(totals), tokens=totals.tokens, unpriced_calls=totals.unpriced)


def total_of(items: Iterable[Totals]) -> Totals:
    out = Totals()
    for item in items:
        out.add(item)
    return out


def agent_line(agent: AgentRecord, totals: Totals) -> dict[str, Any]:
    """The fields an agent's line has in both reports (``ReportAgent``, the start of ``AgentDay``)."""
    return {
        "agent_id": agent.agent_id,
        "tenant": agent.tenant,
        "name": agent.name,
        "status": agent.status.value,
        **spend_fields(totals),
    }


# -- display -------------------------------------------------------------------------------------


def money(nanos: int | str) -> str:
    """Dollars for people: ``$1,234.57``, ``$0.0042`` below a cent, ``$0``. (The models keep exact strings.)"""
    value = Decimal(nanos) / Decimal(1_000_000_000) if isinstance(nanos, int) else Decimal(nanos)
    if value == 0:
        return "$0"
    sign = "-" if value < 0 else ""
    value = abs(value)
    if value >= Decimal("0.01"):
        return f"{sign}${value:,.2f}"
    return f"{sign}${value:.4f}".rstrip("0").rstrip(".") if value >= Decimal("0.0001") else f"{sign}<$0.0001"


def change(pct: float | None) -> str:
    """``▲ 12%``, ``▼ 3%``, ``= 0%``; empty without a previous value."""
    if pct is None:
        return ""
    if pct > 0:
        return f"▲ {pct:g}%"
    if pct < 0:
        return f"▼ {-pct:g}%"
    return "= 0%"
