"""The hourly summary and the daily cost report as Slack messages: Block Kit blocks with a fallback text,
and the daily report's chart (a PNG for its thread). Pure rendering of the report models of
shared/domain/report_hourly.py and report_daily.py; shared/services/reports.py sends them.
"""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from shared.domain.notices import escape
from shared.domain.report_daily import BudgetUse, DailyReport
from shared.domain.report_hourly import HourlyReport
from shared.domain.reports import HISTORY_DAYS, NEAR_BUDGET_PCT, TOP_AGENTS, change, money

#: Lines per Slack section before "... and N more".
MAX_LINES = 10
#: Slack's limit for a section's text is 3000 characters.
_SECTION_LIMIT = 2900


# -- Slack Block Kit -----------------------------------------------------------------------------


def _header(text: str) -> dict[str, Any]:
    return {"type": "header", "text": {"type": "plain_text", "text": text[:150], "emoji": True}}


def _section(text: str) -> dict[str, Any]:
    if len(text) > _SECTION_LIMIT:
        text = text[: _SECTION_LIMIT - 1] + "…"
    return {"type": "section", "text": {"type": "mrkdwn", "text": text}}


def _context(text: str) -> dict[str, Any]:
    return {"type": "context", "elements": [{"type": "mrkdwn", "text": text}]}


def _listing(title: str, lines: Sequence[str]) -> dict[str, Any]:
    shown = list(lines[:MAX_LINES])
    if len(lines) > MAX_LINES:
        shown.append(f"_… and {len(lines) - MAX_LINES} more_")
    return _section(f"*{title}*\n" + "\n".join(shown))


def _rate(rate: float | None) -> str:
    return "n/a" if rate is None else f"{rate * 100:.1f}%"


def _scope(tenant: str | None) -> str:
    return f" · {tenant}" if tenant else ""


def _spend(spend_usd: str, *against: tuple[float | None, str]) -> str:
    """``*Spend* $12.00 (▲ 5% vs the day before; ...)``: each (change in percent, against what) that has one."""
    trends = [f"{change(pct)} vs {what}" for pct, what in against if pct is not None]
    return f"*Spend* {money(spend_usd)}" + (f" ({'; '.join(trends)})" if trends else "")


_SEVERITY_ICON = {
    "emergency": ":rotating_light:",
    "critical": ":red_circle:",
    "high": ":large_orange_circle:",
    "warning": ":large_yellow_circle:",
    "info": ":large_blue_circle:",
}
_SUGGESTION_ICON = {"cheaper_model": ":scales:", "cache_repeats": ":repeat:", "failure_cost": ":x:"}


def hourly_message(report: HourlyReport) -> tuple[str, list[dict[str, Any]]]:
    """The hourly summary as (fallback text, Block Kit blocks)."""
    span = f"{report.starts_at:%H:%M}-{report.ends_at:%H:%M} UTC"
    t = report.totals
    blocks = [
        _header(f"Hourly summary · {report.starts_at:%a %d %b} {span}{_scope(report.tenant)}"),
        _section(
            _spend(t.spend_usd, (report.spend_change_pct, "the hour before"))
            + f" · *Calls* {t.calls:,} · *Success* {_rate(t.success_rate)} · *Agents* {report.agents:,}"
        ),
    ]
    if report.unhealthy:
        lines = []
        for h in report.unhealthy:
            why = ", ".join(x for x in (h.cause, h.reason) if x)
            holds = f" · holds: {', '.join(h.holds)}" if h.holds else ""
            holds += f" · heartbeats: {h.liveness}" if h.liveness else ""
            lines.append(
                f"• `{escape(h.agent_id)}` ({escape(h.tenant)}) *{h.status}* since {h.since:%d %b %H:%M}"
                + (f" ({escape(why)})" if why else "")
                + holds
            )
        blocks.append(_listing(f"Needs attention ({len(report.unhealthy)})", lines))
    if report.episodes:
        lines = [
            f"• {_SEVERITY_ICON.get(e.severity, ':white_circle:')} {escape(e.title)}"
            + (f" · `{escape(e.agent_id)}`" if e.agent_id else f" · tenant {escape(e.tenant or '')}")
            + (" · *new*" if e.new else (f" · since {e.opened_at:%d %b %H:%M}" if e.opened_at else ""))
            for e in report.episodes
        ]
        blocks.append(_listing(f"Open alerts ({len(report.episodes)})", lines))
    if report.changes:
        lines = []
        for c in report.changes:
            if c.kind == "registered":
                lines.append(
                    f"• `{escape(c.agent_id)}` ({escape(c.tenant)}) registered at {c.at:%H:%M}, now {c.status}"
                )
            else:
                why = ", ".join(x for x in (c.cause, c.reason) if x)
                flips = f" ({c.changes} changes)" if c.changes > 1 else ""
                lines.append(
                    f"• `{escape(c.agent_id)}` ({escape(c.tenant)}) → *{c.status}* at {c.at:%H:%M}"
                    + (f": {escape(why)}" if why else "")
                    + flips
                )
        blocks.append(_listing(f"Changed this hour ({len(report.changes)})", lines))
    if not (report.unhealthy or report.episodes or report.changes):
        blocks.append(_section(":white_check_mark: All agents healthy, no open alerts, nothing changed this hour."))
    if report.top_agents:
        lines = [
            f"{n}. `{escape(a.agent_id)}` ({escape(a.tenant)}) {money(a.spend_usd)} · {a.calls:,} calls · "
            f"{_rate(a.success_rate)}"
            for n, a in enumerate(report.top_agents, start=1)
        ]
        blocks.append(_listing("Top agents by spend", lines))
    blocks.append(_context(f"Generated {report.generated_at:%Y-%m-%d %H:%M} UTC · `GET /v1/reports/hourly`"))
    text = (
        f"Hourly summary {report.period}{_scope(report.tenant)}: {money(t.spend_usd)} spent, {t.calls:,} calls, "
        f"{len(report.unhealthy)} agents need attention, {len(report.episodes)} open alerts"
    )
    return text, blocks


def _near(use: BudgetUse) -> bool:
    """Near or over its budget (``NEAR_BUDGET_PCT`` used)."""
    return use.used_pct is not None and use.used_pct >= NEAR_BUDGET_PCT


def _budget(use: BudgetUse, label: str) -> str:
    if use.budget_usd is None:
        return ""
    return f" · {label} {use.used_pct:g}% of {money(use.budget_usd)}{' :warning:' if _near(use) else ''}"


def daily_message(report: DailyReport) -> tuple[str, list[dict[str, Any]]]:
    """The daily cost report as (fallback text, Block Kit blocks)."""
    t = report.totals
    average = f"the {HISTORY_DAYS}-day average ({money(report.average_usd)})"
    blocks = [
        _header(f"Daily cost report · {report.starts_at:%a %d %b %Y}{_scope(report.tenant)}"),
        _section(
            _spend(t.spend_usd, (report.change_pct, "the day before"), (report.change_vs_average_pct, average))
            + f"\n*Calls* {t.calls:,} · *Success* {_rate(t.success_rate)} · "
            f"*Month to date* {money(report.month_to_date_usd)}"
        ),
    ]
    if report.tenants:
        lines = [
            f"• *{escape(x.tenant)}* {money(x.spend_usd)}"
            + (f" ({change(x.change_pct)})" if x.change_pct is not None else "")
            + _budget(x.daily, "day")
            + f" · month {money(x.month_to_date_usd)}"
            + _budget(x.monthly, "month")
            for x in report.tenants
        ]
        blocks.append(_listing("Tenants", lines))
    near = [a for a in report.agents if _near(a.daily) or _near(a.monthly)]
    if near:
        lines = [
            f"• `{escape(a.agent_id)}` ({escape(a.tenant)}) {money(a.spend_usd)}"
            + _budget(a.daily, "day")
            + _budget(a.monthly, "month")
            for a in near
        ]
        blocks.append(_listing(f"Agents near or over budget ({len(near)})", lines))
    if report.agents:
        lines = [
            f"{n}. `{escape(a.agent_id)}` ({escape(a.tenant)}) {money(a.spend_usd)}"
            + (f" ({change(a.change_pct)})" if a.change_pct is not None else "")
            + f" · {a.calls:,} calls · {_rate(a.success_rate)}"
            for n, a in enumerate(report.agents[:TOP_AGENTS], start=1)
        ]
        blocks.append(_listing("Top agents by spend", lines))
    if report.suggestions:
        lines = [f"• {_SUGGESTION_ICON.get(s.kind, '•')} {escape(s.message)}" for s in report.suggestions]
        blocks.append(_listing(f"Suggestions (up to ~{money(report.potential_saving_usd)}/day)", lines))
    if report.gpu_hours_lost:
        lines = [
            f"• *{escape(x.tenant)}* {x.gpu_hours_lost:g} GPU-hours in {x.relaunches} relaunches: "
            + ", ".join(f"`{escape(j.job_id)}` {escape(j.name)} {j.gpu_hours_lost:g}" for j in x.jobs[:5])
            + (f" and {len(x.jobs) - 5} more" if len(x.jobs) > 5 else "")
            for x in report.gpu_hours_lost
        ]
        blocks.append(_listing("GPU-hours lost to preempted and retried training runs", lines))
    blocks.append(
        _context(
            f"UTC day {report.day} · generated {report.generated_at:%Y-%m-%d %H:%M} UTC · chart in the thread · "
            "`GET /v1/reports/daily`"
        )
    )
    text = f"Daily cost report {report.day}{_scope(report.tenant)}: {money(t.spend_usd)} spent, {t.calls:,} calls"
    if report.suggestions:
        text += f", {len(report.suggestions)} suggestions"
    return text, blocks


# -- the chart -----------------------------------------------------------------------------------

#: Tenants drawn in their own colour; the others are added up as "other".
CHART_TENANTS = 7


def daily_chart(report: DailyReport) -> bytes:
    """A PNG: spend per day by tenant (stacked bars) over the trend days, with the daily budget line
    when the report is of one tenant that has one. matplotlib is imported here, never at module
    import (it costs the function's cold start about a second)."""
    # The home may be read-only.
    os.environ.setdefault("MPLCONFIGDIR", os.path.join(tempfile.gettempdir(), "matplotlib"))
    # lazy: matplotlib costs the function's cold start about a second
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    # lazy: as above
    from matplotlib.figure import Figure

    days = [d.day for d in report.trend]
    totals: dict[str, Decimal] = {}
    for d in report.trend:
        for name, usd in d.by_tenant.items():
            totals[name] = totals.get(name, Decimal(0)) + Decimal(usd)
    ranked = sorted(totals, key=lambda n: (-totals[n], n))
    shown, rest = ranked[:CHART_TENANTS], ranked[CHART_TENANTS:]
    series: dict[str, list[float]] = {
        name: [float(Decimal(d.by_tenant.get(name, "0"))) for d in report.trend] for name in shown
    }
    if rest:
        series["other"] = [
            float(sum((Decimal(d.by_tenant.get(n, "0")) for n in rest), Decimal(0))) for d in report.trend
        ]

    fig = Figure(figsize=(8, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    labels = [day[5:] for day in days]
    bottom = [0.0] * len(days)
    for name, values in series.items():
        ax.bar(labels, values, bottom=bottom, label=name)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    if not series:
        ax.bar(labels, [0.0] * len(days))
    budget = next((x.daily.budget_usd for x in report.tenants if report.tenant and x.tenant == report.tenant), None)
    if budget is not None:
        ax.axhline(float(Decimal(budget)), color="red", linestyle="--", linewidth=1, label="daily budget")
    ax.set_ylabel("USD")
    ax.set_title(f"Spend per UTC day{_scope(report.tenant)} (last {len(days)} days)")
    if series or budget is not None:
        ax.legend(fontsize="small", loc="upper left")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
