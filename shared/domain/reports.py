"""The hourly summary and the daily cost report: what they contain, built from plain inputs (no I/O).

``build_hourly`` and ``build_daily`` take agents, their usage totals, the per-model day counters and
the open alert episodes, and return the report models the Slack messages and the API
(``GET /v1/reports/hourly|daily``) both show. ``shared/services/reports.py`` reads the inputs and sends them.

Periods are UTC, like the usage counters: the hourly summary covers the last complete hour before
the time it is made at, the daily report the last complete day. Money is exact: nano-dollars inside,
plain decimal strings (``format_usd``) in the models.

The optimization suggestions are three rules over one day's per-model counters; their thresholds
are the named constants below (documented in docs/reports.md).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

from shared.domain import budgets
from shared.domain.agent_record import AgentRecord, Liveness
from shared.domain.lifecycle import Cause, State
from shared.domain.periods import Period, Window, window
from shared.domain.pricing import Price, PriceTable, format_usd, to_nanos
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
#: The most suggestions a report carries (the biggest savings first).
MAX_SUGGESTIONS = 50

#: States that need an operator's attention. ``offline`` counts only when the system declared it
#: (a graceful stop is the agent's own choice); ``maintenance`` is planned.
UNHEALTHY: tuple[State, ...] = (
    State.COMPROMISED,
    State.QUARANTINED,
    State.FROZEN,
    State.SUSPENDED,
    State.OFFLINE,
    State.DEGRADED,
)
#: Status changes an agent makes on its own all day (idle <-> busy): not news unless an operator or
#: the system made them.
ROUTINE: frozenset[State] = frozenset({State.ACTIVE, State.IDLE, State.BUSY, State.PROVISIONING, State.REGISTERED})

# -- suggestion rules ----------------------------------------------------------------------------
# (a) An expensive model used for short, simple calls, where a cheaper model of the same family
#     would do. A (agent, model) pair of the day qualifies when all of these hold:
#: ... it made at least this many calls,
EXPENSIVE_MIN_CALLS = 20
#: ... its calls cost at least this much on average,
EXPENSIVE_CALL_USD = Decimal("0.002")
#: ... the model's price is at least this per million output tokens,
EXPENSIVE_OUTPUT_PER_MTOK_USD = Decimal("5")
#: ... and its calls returned fewer output tokens than this on average.
SHORT_OUTPUT_TOKENS = 200
#: The suggested model is the priciest model of the same family (``gpt``, ``claude``, ``gemini``...:
#: the letters the name starts with) that would have cost at most this share of the current model's
#: price for the same tokens; the saving is the day's spend minus that cost.
CHEAPER_MAX_SHARE = Decimal("0.35")
#: A model suggestion saving less than this a day is not worth a line.
CHEAPER_MIN_SAVING_USD = Decimal("0.10")
# (b) Repeated identical calls (flagged ``repeat`` by the SDK): what they cost is what a response
#     cache would have saved. Per (agent, model) of the day, reported when both hold:
REPEAT_MIN_CALLS = 10
REPEAT_MIN_USD = Decimal("0.10")
# (c) Failure cost: an agent whose failed calls cost at least FAILURE_COST_USD a day, or at least
#     FAILURE_COST_SHARE of its day's spend (and at least FAILURE_MIN_USD).
FAILURE_COST_USD = Decimal("1")
FAILURE_COST_SHARE = Decimal("0.10")
FAILURE_MIN_USD = Decimal("0.10")

SuggestionKind = Literal["cheaper_model", "cache_repeats", "failure_cost"]
_FAMILY = re.compile(r"^[a-z]+")
_MILLION = Decimal(1_000_000)


class ModelCounters(Protocol):
    """One model's counters for one agent and day (``shared.domain.usage.ModelDay``)."""

    calls: int
    failures: int
    input_tokens: int
    output_tokens: int
    usd_nanos: int
    failed_usd_nanos: int
    repeats: int
    repeat_usd_nanos: int


# -- the models ----------------------------------------------------------------------------------


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ReportUsage(_Model):
    """Spend and calls of one period."""

    spend_usd: str = Field(description="Exact USD, a decimal string.")
    calls: int
    failures: int
    success_rate: float | None = Field(description="Share of calls that succeeded; null without calls.")
    tokens: int = 0
    unpriced_calls: int = 0


class ReportAgent(_Model):
    """An agent's spend in the report's period."""

    agent_id: str
    tenant: str
    name: str
    status: str
    spend_usd: str
    calls: int
    failures: int
    success_rate: float | None


class ReportHealth(_Model):
    """An agent that needs attention: an unhealthy state, or holds that stop its calls."""

    agent_id: str
    tenant: str
    status: str
    since: datetime
    cause: str | None = None
    reason: str | None = None
    holds: list[str] = Field(default_factory=list, description="Hold names: budget, breaker, pause...")
    liveness: str | None = Field(default=None, description="late, offline or frozen: heartbeats missed.")


class ReportChange(_Model):
    """Something that changed in the period: a new agent, or a notable change of status."""

    agent_id: str
    tenant: str
    kind: Literal["registered", "status"]
    status: str
    at: datetime
    cause: str | None = None
    reason: str | None = None
    changes: int = Field(default=1, description="Status changes of the agent in the period.")


class ReportEpisode(_Model):
    """An open alert episode."""

    id: str
    tenant: str | None = None
    agent_id: str | None = Field(default=None, description="null: the whole tenant.")
    rule: str
    severity: str
    title: str
    opened_at: datetime | None = None
    new: bool = Field(default=False, description="Opened during the report's period.")


class HourlyReport(_Model):
    """What is unhealthy or changed, spend, calls and success rate, top agents by spend."""

    kind: Literal["hourly"] = "hourly"
    tenant: str | None = Field(description="The tenant reported on; null: the whole fleet.")
    period: str = Field(description="The UTC hour covered, e.g. 2026-11-21T09.")
    starts_at: datetime
    ends_at: datetime
    generated_at: datetime
    agents: int = Field(description="Agents known (decommissioned ones excluded).")
    totals: ReportUsage
    previous: ReportUsage = Field(description="The hour before.")
    spend_change_pct: float | None = Field(description="Spend against the hour before, in percent.")
    unhealthy: list[ReportHealth] = Field(description="As of generated_at, worst first.")
    changes: list[ReportChange] = Field(description="During the hour, newest first.")
    episodes: list[ReportEpisode] = Field(description="Open alert episodes, most severe first.")
    top_agents: list[ReportAgent] = Field(description=f"The {TOP_AGENTS} biggest spenders of the hour.")


class BudgetUse(_Model):
    budget_usd: str | None = Field(description="The hard USD limit; null without one.")
    used_pct: float | None = Field(description="Spend against the limit, in percent.")


class TenantDay(_Model):
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


class TrendDay(_Model):
    day: str
    spend_usd: str
    calls: int
    by_tenant: dict[str, str] = Field(description="Spend per tenant (tenants with spend).")


class CostSuggestion(_Model):
    """A concrete way to spend less, with what it would have saved on the report's day."""

    agent_id: str
    tenant: str
    kind: SuggestionKind
    model: str | None = None
    calls: int = Field(description="The calls the suggestion is about.")
    spend_usd: str = Field(description="What those calls cost on the day.")
    estimated_saving_usd: str = Field(description="Per day, at the day's volume.")
    alternative: str | None = Field(default=None, description="cheaper_model: the model to use instead.")
    message: str


class DailyReport(_Model):
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


def _pct(used: int, limit: int | None) -> float | None:
    return None if not limit else round(used * 100 / limit, 1)


def _rate(calls: int, failures: int) -> float | None:
    return None if calls == 0 else round((calls - failures) / calls, 4)


def _spend(totals: Totals) -> dict[str, Any]:
    """The ``spend_usd``, ``calls``, ``failures`` and ``success_rate`` of a report line."""
    return {
        "spend_usd": format_usd(totals.usd_nanos),
        "calls": totals.calls,
        "failures": totals.failures,
        "success_rate": _rate(totals.calls, totals.failures),
    }


def usage_of(totals: Totals) -> ReportUsage:
    return ReportUsage(**_spend(totals), tokens=totals.tokens, unpriced_calls=totals.unpriced)


def _sum(items: Iterable[Totals]) -> Totals:
    out = Totals()
    for item in items:
        out.add(item)
    return out


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


def _in(at: datetime | None, win: Window) -> bool:
    return at is not None and win.starts_at <= at.astimezone(UTC) < win.resets_at


def _liveness(agent: AgentRecord) -> str | None:
    """The liveness rung when not ``ok`` (late, offline, frozen: missed heartbeats), else None."""
    return None if agent.liveness is Liveness.OK or agent.status is State.DECOMMISSIONED else agent.liveness.value


def _is_unhealthy(agent: AgentRecord) -> bool:
    if _liveness(agent) is not None:
        return True
    if agent.status is State.OFFLINE:
        return agent.status_cause != Cause.HEARTBEAT.value  # a graceful stop is not a problem
    return agent.status in UNHEALTHY or (bool(agent.holds) and agent.status is not State.DECOMMISSIONED)


_SEVERITY_ORDER = {"emergency": 0, "critical": 1, "high": 2, "warning": 3, "info": 4}


def _episode(data: Mapping[str, Any], win: Window) -> ReportEpisode:
    opened = data.get("opened_at")
    opened_at = opened if isinstance(opened, datetime) else None
    rule = str(data.get("rule") or "")
    return ReportEpisode(
        id=str(data.get("id") or ""),
        tenant=data.get("tenant"),
        agent_id=data.get("agent_id"),
        rule=rule,
        severity=str(data.get("severity") or "warning"),
        title=str(data.get("title") or rule),
        opened_at=opened_at,
        new=_in(opened_at, win),
    )


def episodes_of(rows: Sequence[Mapping[str, Any]], win: Window, tenant: str | None) -> list[ReportEpisode]:
    """Open episodes (of ``tenant`` when given), most severe first, then newest first."""
    items = [_episode(row, win) for row in rows if str(row.get("state") or "open") == "open"]
    items = [e for e in items if tenant is None or e.tenant == tenant]
    items.sort(key=lambda e: (_SEVERITY_ORDER.get(e.severity, 9), -(e.opened_at.timestamp() if e.opened_at else 0)))
    return items


# -- the hourly summary --------------------------------------------------------------------------


def build_hourly(
    *,
    agents: Sequence[AgentRecord],
    hour: Mapping[str, Totals],
    previous: Mapping[str, Totals],
    episodes: Sequence[Mapping[str, Any]],
    at: datetime,
    generated_at: datetime,
    tenant: str | None = None,
) -> HourlyReport:
    """The summary of the last complete hour before ``at``.

    ``hour`` and ``previous`` are each agent's totals of that hour and of the hour before (agents
    without calls may be missing). Health is as the agent documents are now.
    """
    win = report_hour(at)
    agents = [a for a in agents if tenant is None or a.tenant == tenant]
    known = [a for a in agents if a.status is not State.DECOMMISSIONED]
    by_id = {a.agent_id: a for a in agents}
    total = _sum(t for agent_id, t in hour.items() if agent_id in by_id)
    before = _sum(t for agent_id, t in previous.items() if agent_id in by_id)

    rank = {state: n for n, state in enumerate(UNHEALTHY)}
    unhealthy = [
        ReportHealth(
            agent_id=a.agent_id,
            tenant=a.tenant,
            status=a.status.value,
            since=a.status_since,
            cause=a.status_cause,
            reason=a.status_reason,
            holds=sorted(a.holds),
            liveness=_liveness(a),
        )
        for a in sorted(agents, key=lambda a: (rank.get(a.status, len(rank)), a.agent_id))
        if _is_unhealthy(a)
    ]

    changes: list[ReportChange] = []
    for a in agents:
        in_hour = sum(1 for t in a.status_changes if _in(t, win))
        if _in(a.registered_at, win):
            changes.append(
                ReportChange(
                    agent_id=a.agent_id,
                    tenant=a.tenant,
                    kind="registered",
                    status=a.status.value,
                    at=a.registered_at,
                    changes=in_hour,
                )
            )
        elif _in(a.status_since, win) and (
            a.status not in ROUTINE or a.status_cause in (Cause.OPERATOR.value, Cause.SYSTEM.value)
        ):
            changes.append(
                ReportChange(
                    agent_id=a.agent_id,
                    tenant=a.tenant,
                    kind="status",
                    status=a.status.value,
                    at=a.status_since,
                    cause=a.status_cause,
                    reason=a.status_reason,
                    changes=max(1, in_hour),
                )
            )
    changes.sort(key=lambda c: (c.at, c.agent_id), reverse=True)

    spenders = sorted(
        ((agent_id, t) for agent_id, t in hour.items() if agent_id in by_id and (t.usd_nanos or t.calls)),
        key=lambda item: (-item[1].usd_nanos, -item[1].calls, item[0]),
    )
    top = [ReportAgent(**_agent_line(by_id[agent_id], t)) for agent_id, t in spenders[:TOP_AGENTS]]

    return HourlyReport(
        tenant=tenant,
        period=win.key,
        starts_at=win.starts_at,
        ends_at=win.resets_at,
        generated_at=generated_at,
        agents=len(known),
        totals=usage_of(total),
        previous=usage_of(before),
        spend_change_pct=pct_change(total.usd_nanos, before.usd_nanos),
        unhealthy=unhealthy,
        changes=changes,
        episodes=episodes_of(episodes, win, tenant),
        top_agents=top,
    )


def _agent_line(agent: AgentRecord, totals: Totals) -> dict[str, Any]:
    """The fields an agent's line has in both reports (``ReportAgent``, the start of ``AgentDay``)."""
    return {
        "agent_id": agent.agent_id,
        "tenant": agent.tenant,
        "name": agent.name,
        "status": agent.status.value,
        **_spend(totals),
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
) -> DailyReport:
    """The report of the last complete UTC day before ``at``.

    ``days``: agent id -> day key (``YYYY-MM-DD``) -> totals, for at least the days of
    :func:`day_keys` and the days of the report day's month up to it (month to date). ``models``:
    agent id -> model -> that day's counters. ``tenant_budgets``: the stored budget of each tenant.
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
        agent_lines.append((today.usd_nanos, AgentDay(**_agent_line(a, today), **against)))
    agent_lines.sort(key=lambda item: (-item[0], item[1].agent_id))

    tenant_lines: list[tuple[int, TenantDay]] = []
    for name, members in tenant_agents.items():
        ids = [a.agent_id for a in members]
        today = _sum(of(i, day) for i in ids)
        before = _sum(of(i, yesterday) for i in ids)
        average = sum(of(i, k).usd_nanos for i in ids for k in history) // len(history)
        mtd = sum(month_to_date[i] for i in ids)
        tenant_line = TenantDay(
            tenant=name,
            agents=sum(1 for a in members if a.status is not State.DECOMMISSIONED),
            average_usd=format_usd(average),
            change_vs_average_pct=pct_change(today.usd_nanos, average),
            **_spend(today),
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

    total = _sum(of(a.agent_id, day) for a in agents)
    before_total = _sum(of(a.agent_id, yesterday) for a in agents)
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
    )


# -- suggestions ---------------------------------------------------------------------------------


def family(model: str) -> str:
    """The letters a model's name starts with (after any ``provider/``): gpt, claude, gemini, o..."""
    found = _FAMILY.match(model.rsplit("/", 1)[-1].lower())
    return found.group(0) if found else ""


def cheaper_alternative(
    model: str, input_tokens: int, output_tokens: int, prices: PriceTable, tenant: str | None
) -> tuple[str, int] | None:
    """The model to suggest instead of ``model`` for these tokens, and what they would have cost with it.

    The priciest listed model of the same family costing at most ``CHEAPER_MAX_SHARE`` of ``model``'s
    price for the same tokens (the most capable one that still saves most of the cost).
    """
    current = prices.lookup(model, tenant)
    if current is None:
        return None
    current_cost = current.cost_nanos(input_tokens, output_tokens)
    if current_cost <= 0:
        return None
    names = set(prices.prices) | set(prices.tenant_prices.get(tenant or "", {}))
    best: tuple[int, str] | None = None
    for name in sorted(names):
        if family(name) != family(model) or name == model:
            continue
        price = prices.lookup(name, tenant)
        if price is None:
            continue
        cost = price.cost_nanos(input_tokens, output_tokens)
        if cost <= current_cost * CHEAPER_MAX_SHARE and (best is None or cost > best[0]):
            best = (cost, name)
    return (best[1], best[0]) if best else None


def _expensive(price: Price) -> bool:
    return price.output_usd * _MILLION >= EXPENSIVE_OUTPUT_PER_MTOK_USD


def suggestions(
    agent_id: str, tenant: str, models: Mapping[str, ModelCounters], prices: PriceTable
) -> list[tuple[int, CostSuggestion]]:
    """The rules (a) cheaper model, (b) cache repeats, (c) failure cost for one agent's day.

    Returns (estimated saving in nano-dollars, suggestion) pairs.
    """
    out: list[tuple[int, CostSuggestion]] = []
    for model, m in sorted(models.items()):
        if m.calls <= 0:
            continue
        # (a) an expensive model for short calls
        price = prices.lookup(model, tenant)
        if (
            price is not None
            and m.calls >= EXPENSIVE_MIN_CALLS
            and m.usd_nanos >= to_nanos(EXPENSIVE_CALL_USD) * m.calls
            and _expensive(price)
            and m.output_tokens < SHORT_OUTPUT_TOKENS * m.calls
        ):
            alternative = cheaper_alternative(model, m.input_tokens, m.output_tokens, prices, tenant)
            if alternative is not None:
                alt_name, alt_cost = alternative
                saving = m.usd_nanos - alt_cost
                if saving >= to_nanos(CHEAPER_MIN_SAVING_USD):
                    out.append(
                        (
                            saving,
                            CostSuggestion(
                                agent_id=agent_id,
                                tenant=tenant,
                                kind="cheaper_model",
                                model=model,
                                calls=m.calls,
                                spend_usd=format_usd(m.usd_nanos),
                                estimated_saving_usd=format_usd(saving),
                                alternative=alt_name,
                                message=(
                                    f"{agent_id} used {model} for {m.calls:,} calls averaging "
                                    f"{m.output_tokens // m.calls} output tokens ({money(m.usd_nanos)}); "
                                    f"{alt_name} would have cost about {money(alt_cost)}: "
                                    f"save ~{money(saving)}/day"
                                ),
                            ),
                        )
                    )
        # (b) repeated identical calls
        if m.repeats >= REPEAT_MIN_CALLS and m.repeat_usd_nanos >= to_nanos(REPEAT_MIN_USD):
            out.append(
                (
                    m.repeat_usd_nanos,
                    CostSuggestion(
                        agent_id=agent_id,
                        tenant=tenant,
                        kind="cache_repeats",
                        model=model,
                        calls=m.repeats,
                        spend_usd=format_usd(m.repeat_usd_nanos),
                        estimated_saving_usd=format_usd(m.repeat_usd_nanos),
                        message=(
                            f"{agent_id} repeated {m.repeats:,} identical {model} calls "
                            f"(of {m.calls:,}); a response cache would save ~{money(m.repeat_usd_nanos)}/day"
                        ),
                    ),
                )
            )
    # (c) failure cost, over all the agent's models
    spend = sum(m.usd_nanos for m in models.values())
    failed = sum(m.failed_usd_nanos for m in models.values())
    failures = sum(m.failures for m in models.values())
    calls = sum(m.calls for m in models.values())
    if failed > 0 and (
        failed >= to_nanos(FAILURE_COST_USD)
        or (failed >= to_nanos(FAILURE_MIN_USD) and failed >= spend * FAILURE_COST_SHARE)
    ):
        share = f" ({failed * 100 // spend}% of its spend)" if spend else ""
        out.append(
            (
                failed,
                CostSuggestion(
                    agent_id=agent_id,
                    tenant=tenant,
                    kind="failure_cost",
                    calls=failures,
                    spend_usd=format_usd(failed),
                    estimated_saving_usd=format_usd(failed),
                    message=(
                        f"{agent_id}: {failures:,} of {calls:,} calls failed and cost {money(failed)}{share}; "
                        "fix the cause, or lower its breaker thresholds so failures stop sooner"
                    ),
                ),
            )
        )
    return out


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
