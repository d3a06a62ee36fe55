"""The daily cost report: spend per tenant and agent against budgets, the trend against the previous
days, and the suggestions, built from plain inputs (no I/O). What it shares with the hourly summary is
shared/domain/reports.py; the suggestions are shared/domain/report_suggestions.py.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Literal

from pydantic import Field

from shared.domain import budgets, job_relaunch
from shared.domain.agent_record import AgentRecord
from shared.domain.jobs import Job
from shared.domain.lifecycle import State
from shared.domain.periods import Period
from shared.domain.pricing import PriceTable, format_usd
from shared.domain.report_suggestions import CostSuggestion, ModelCounters, suggestions
from shared.domain.reports import (
    HISTORY_DAYS,
    ReportAgent,
    ReportModel,
    ReportUsage,
    agent_line,
    day_keys,
    pct_change,
    report_day,
    spend_fields,
    total_of,
    usage_of,
)
from shared.domain.usage import Totals

#: The most suggestions a report carries (the biggest savings first).
MAX_SUGGESTIONS = 50


class BudgetUse(ReportModel):
    budget_usd: str | None = Field(description="The hard USD limit; null without one.")
    used_pct: float | None = Field(description="Spend against the limit, in percent.")


class TenantDay(ReportModel):
    """A tenant's day against its budgets, and its trend."""

    tenant: str
    agents: int
    spend_usd: str
    calls: int
    failures: int
    success_rate: float | None
    previous_day_usd: str
    change_pct: float | None = Field(description="Against the previous day, in percent.")
    average_usd: str = Field(description=f"Mean daily spend of the {HISTORY_DAYS} previous days.")
    change_vs_average_pct: float | None
    daily: BudgetUse
    month_to_date_usd: str
    monthly: BudgetUse


class AgentDay(ReportAgent):
    """An agent's day against its budgets: its spend in the day, and the day before."""

    previous_day_usd: str
    change_pct: float | None
    daily: BudgetUse
    month_to_date_usd: str
    monthly: BudgetUse


class TrendDay(ReportModel):
    day: str
    spend_usd: str
    calls: int
    by_tenant: dict[str, str] = Field(description="Spend per tenant (tenants with spend).")


class DailyReport(ReportModel):
    """Spend per tenant and agent against budgets, trend against the previous days, suggestions."""

    kind: Literal["daily"] = "daily"
    tenant: str | None
    day: str = Field(description="The UTC day covered, e.g. 2026-11-20.")
    starts_at: datetime
    ends_at: datetime
    generated_at: datetime
    totals: ReportUsage
    previous_day: ReportUsage
    change_pct: float | None
    average_usd: str = Field(description=f"Mean daily spend of the {HISTORY_DAYS} previous days.")
    change_vs_average_pct: float | None
    month_to_date_usd: str
    tenants: list[TenantDay] = Field(description="Biggest spend first.")
    agents: list[AgentDay] = Field(description="Agents with calls or spend on the day, biggest spend first.")
    trend: list[TrendDay] = Field(description=f"The {HISTORY_DAYS} previous days and the day, oldest first.")
    suggestions: list[CostSuggestion] = Field(description="Biggest saving first.")
    potential_saving_usd: str = Field(description="The suggestions' savings added up (they may overlap).")
    gpu_hours_lost: list[job_relaunch.TenantLoss] = Field(
        default_factory=list,
        description="GPU-hours lost to relaunched training runs (preempted, retried) in the day, per tenant.",
    )


def _pct(used: int, limit: int | None) -> float | None:
    return None if not limit else round(used * 100 / limit, 1)


def _hard_usd(spec: Any, period: Period) -> int | None:
    for limit in budgets.limits(spec):
        if limit.period is period and limit.metric == "usd" and limit.hard is not None:
            return limit.hard
    return None


def _budget_use(spec: Any, period: Period, used: int) -> BudgetUse:
    hard = _hard_usd(spec, period)
    return BudgetUse(budget_usd=format_usd(hard) if hard is not None else None, used_pct=_pct(used, hard))


def _day_against(today: Totals, before: Totals, month_to_date: int, spec: Any) -> dict[str, Any]:
    """A daily line's day against the day before and against the budgets."""
    return {
        "previous_day_usd": format_usd(before.usd_nanos),
        "change_pct": pct_change(today.usd_nanos, before.usd_nanos),
        "daily": _budget_use(spec, Period.DAY, today.usd_nanos),
        "month_to_date_usd": format_usd(month_to_date),
        "monthly": _budget_use(spec, Period.MONTH, month_to_date),
    }


# -- the daily report ----------------------------------------------------------------------------


def build_daily(
    *,
    agents: Sequence[AgentRecord],
    days: Mapping[str, Mapping[str, Totals]],
    tenant_budgets: Mapping[str, dict[str, Any] | None],
    models: Mapping[str, Mapping[str, ModelCounters]],
    prices: PriceTable,
    at: datetime,
    generated_at: datetime,
    tenant: str | None = None,
    jobs: Sequence[Job] = (),
) -> DailyReport:
    """The report of the last complete UTC day before ``at``.

    ``days``: agent id -> day key (``YYYY-MM-DD``) -> totals, for at least the days of
    :func:`day_keys` and the days of the report day's month up to it (month to date). ``models``:
    agent id -> model -> that day's counters. ``tenant_budgets``: the stored budget of each tenant.
    ``jobs``: training jobs relaunched in or after the day (their GPU-hours lost in the day are counted).
    """
    win = report_day(at)
    keys = day_keys(win)
    day, yesterday, history = keys[-1], keys[-2], keys[:-1]
    month_prefix = day[:8]  # "YYYY-MM-"
    agents = [a for a in agents if tenant is None or a.tenant == tenant]

    def of(agent_id: str, key: str) -> Totals:
        return days.get(agent_id, {}).get(key) or Totals()

    month_to_date = {
        a.agent_id: sum(
            t.usd_nanos for k, t in days.get(a.agent_id, {}).items() if k.startswith(month_prefix) and k <= day
        )
        for a in agents
    }

    agent_lines: list[tuple[int, AgentDay]] = []
    tenant_agents: dict[str, list[AgentRecord]] = {}
    for a in agents:
        tenant_agents.setdefault(a.tenant, []).append(a)
        today = of(a.agent_id, day)
        if not (today.calls or today.usd_nanos):
            continue
        against = _day_against(today, of(a.agent_id, yesterday), month_to_date[a.agent_id], budgets.parse(a.budget))
        agent_lines.append((today.usd_nanos, AgentDay(**agent_line(a, today), **against)))
    agent_lines.sort(key=lambda item: (-item[0], item[1].agent_id))

    tenant_lines: list[tuple[int, TenantDay]] = []
    for name, members in tenant_agents.items():
        ids = [a.agent_id for a in members]
        today = total_of(of(i, day) for i in ids)
        before = total_of(of(i, yesterday) for i in ids)
        average = sum(of(i, k).usd_nanos for i in ids for k in history) // len(history)
        mtd = sum(month_to_date[i] for i in ids)
        tenant_line = TenantDay(
            tenant=name,
            agents=sum(1 for a in members if a.status is not State.DECOMMISSIONED),
            average_usd=format_usd(average),
            change_vs_average_pct=pct_change(today.usd_nanos, average),
            **spend_fields(today),
            **_day_against(today, before, mtd, budgets.parse(tenant_budgets.get(name))),
        )
        tenant_lines.append((today.usd_nanos, tenant_line))
    tenant_lines.sort(key=lambda item: (-item[0], item[1].tenant))

    trend: list[TrendDay] = []
    for key in keys:
        by_tenant = {
            name: sum(of(a.agent_id, key).usd_nanos for a in members) for name, members in tenant_agents.items()
        }
        trend.append(
            TrendDay(
                day=key,
                spend_usd=format_usd(sum(by_tenant.values())),
                calls=sum(of(a.agent_id, key).calls for a in agents),
                by_tenant={name: format_usd(v) for name, v in sorted(by_tenant.items()) if v},
            )
        )

    total = total_of(of(a.agent_id, day) for a in agents)
    before_total = total_of(of(a.agent_id, yesterday) for a in agents)
    average_total = sum(of(a.agent_id, k).usd_nanos for a in agents for k in history) // len(history)
    found: list[tuple[int, CostSuggestion]] = []
    for a in agents:
        found.extend(suggestions(a.agent_id, a.tenant, models.get(a.agent_id) or {}, prices))
    found.sort(key=lambda item: (-item[0], item[1].agent_id, item[1].kind, item[1].model or ""))
    found = found[:MAX_SUGGESTIONS]

    return DailyReport(
        tenant=tenant,
        day=day,
        starts_at=win.starts_at,
        ends_at=win.resets_at,
        generated_at=generated_at,
        totals=usage_of(total),
        previous_day=usage_of(before_total),
        change_pct=pct_change(total.usd_nanos, before_total.usd_nanos),
        average_usd=format_usd(average_total),
        change_vs_average_pct=pct_change(total.usd_nanos, average_total),
        month_to_date_usd=format_usd(sum(month_to_date[a.agent_id] for a in agents)),
        tenants=[line for _, line in tenant_lines],
        agents=[line for _, line in agent_lines],
        trend=trend,
        suggestions=[s for _, s in found],
        potential_saving_usd=format_usd(sum(n for n, _ in found)),
        gpu_hours_lost=job_relaunch.day_losses(jobs, win.starts_at, win.resets_at, tenant),
    )
