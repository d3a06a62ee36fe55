"""The hourly summary and the daily cost report: read the inputs, build the report, send it to Slack.

``run(job, now)`` is what the ``fleet-reports`` function does for a scheduler tick (``hourly-summary``
or ``daily-report``): it builds the report of the last complete UTC hour (day) before ``now``, posts
it to ``FLEET_SLACK_REPORT_CHANNEL`` (the daily one with its chart in the thread) and returns a
small summary for the logs. ``hourly(at, tenant)`` and ``daily(at, tenant)`` build the same reports
for the API.

Sent once per period: ``reports/{job}.{period}`` is *created* before sending (a second tick, or a
second instance, finds it and stops), then records the Slack ``ts``. When Slack is unavailable the
claim is released and the exception propagates, so Pub/Sub redelivers the tick; a claim left by a
crashed instance is taken over once its lease (the function's timeout) has passed.

Reads (see docs/reports.md): the agents (one read each, pages of ``AGENT_PAGE``), each agent's usage
month document (``usage/a.{agent}.{YYYY-MM}``: every day and hour of the month, one read; two when
the period spans months), and for the daily report each spending agent's per-model day counters,
each tenant's settings and the price table; for the hourly one the open alert episodes.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from shared.domain import reports as domain
from shared.domain.agent_record import AgentRecord
from shared.domain.notices import escape
from shared.domain.periods import Period, Window, window
from shared.domain.pricing import PriceTable
from shared.domain.reports import DailyReport, HourlyReport, change, money
from shared.domain.usage import ModelDay, Totals, model_day_field, month_field
from shared.platform import logs, metering
from shared.store import agents as agent_store
from shared.store import config, db
from shared.store import episodes as episode_store
from shared.store import usage as usage_store

log = logs.get_logger("reports")

#: Where reports are posted (a channel name or id); env ``FLEET_SLACK_REPORT_CHANNEL``.
DEFAULT_CHANNEL = "#fleet-reports"
CHANNEL_ENV = "FLEET_SLACK_REPORT_CHANNEL"
#: Send records: ``reports/{job}.{period}``.
REPORTS = "reports"
#: How long a claim holds before another instance may take it over (the function's timeout).
LEASE = timedelta(seconds=300)
#: Send records expire after this (Firestore TTL on ``expire_at``).
RETENTION = timedelta(days=40)
#: A tick is dated by the scheduler a moment after the hour; this much earlier still counts as the
#: hour that starts then (a tick published at 09:59:59 reports 09:00-10:00, not 08:00-09:00).
TICK_EARLY = timedelta(minutes=2)
#: Agents per page when listing them; month documents per batched read.
AGENT_PAGE = 500
#: Open episodes read for the hourly summary (newest first).
EPISODE_LIMIT = 500
#: Lines per Slack section before "... and N more".
MAX_LINES = 10
#: Slack's limit for a section's text is 3000 characters.
_SECTION_LIMIT = 2900


class ReportBusy(Exception):
    """Another instance is sending this report right now: retry later (Pub/Sub redelivers)."""


def channel() -> str:
    return os.environ.get(CHANNEL_ENV) or DEFAULT_CHANNEL


def _clock() -> datetime:
    return datetime.now(UTC)


# -- inputs --------------------------------------------------------------------------------------


def list_all_agents(tenant: str | None) -> list[AgentRecord]:
    """Every agent (of ``tenant``), page by page (one read per agent)."""
    return list(agent_store.each(tenant, AGENT_PAGE))


def _fields(data: dict[str, Any], prefix: str, length: int) -> Iterator[tuple[str, Totals]]:
    for name, counters in data.items():
        if name.startswith(prefix) and len(name) == length and name[1:].isdigit() and isinstance(counters, dict):
            yield name[1:], Totals.from_dict(counters)


def hour_totals(docs: dict[str, dict[str, Any]], hour: Window) -> dict[str, Totals]:
    """Each agent's totals of ``hour`` from its month document."""
    name = month_field(Period.HOUR, hour)
    return {agent_id: Totals.from_dict(data.get(name)) for agent_id, data in docs.items() if name in data}


def day_totals(docs: dict[str, dict[str, Any]], month: str) -> dict[str, dict[str, Totals]]:
    """Each agent's days (``YYYY-MM-DD`` -> totals) from its month document."""
    return {agent_id: {f"{month}-{dd}": t for dd, t in _fields(data, "d", 3)} for agent_id, data in docs.items()}


def _open_episodes() -> list[dict[str, Any]]:
    """Open episodes of the whole fleet (the builder keeps a tenant's). Filtering on the state in
    Firestore reads only open episodes; a tenant filter there would read the tenant's newest episodes,
    resolved ones included, and filter the state after."""
    return episode_store.list_episodes(state="open", limit=EPISODE_LIMIT)


def model_days(docs: dict[str, dict[str, Any]], day: datetime) -> dict[str, dict[str, ModelDay]]:
    """Each agent's per-model counters of ``day``, from the same month documents (no extra read)."""
    name = model_day_field(f"{day:%d}")
    return {a: usage_store.day_models(data[name]) for a, data in docs.items() if isinstance(data.get(name), dict)}


# -- building ------------------------------------------------------------------------------------


def hourly(at: datetime, tenant: str | None = None) -> HourlyReport:
    """The hourly summary of the last complete UTC hour before ``at`` (of ``tenant``; None: the fleet)."""
    win = domain.report_hour(at)
    previous_hour = win.starts_at - timedelta(hours=1)
    agents = list_all_agents(tenant)
    ids = [a.agent_id for a in agents]
    docs = usage_store.agent_months(ids, f"{win.starts_at:%Y-%m}")
    same_month = previous_hour.month == win.starts_at.month
    previous_docs = docs if same_month else usage_store.agent_months(ids, f"{previous_hour:%Y-%m}")
    return domain.build_hourly(
        agents=agents,
        hour=hour_totals(docs, win),
        previous=hour_totals(previous_docs, window(Period.HOUR, previous_hour)),
        episodes=_open_episodes(),
        at=at,
        generated_at=_clock(),
        tenant=tenant,
    )


def daily(at: datetime, tenant: str | None = None) -> DailyReport:
    """The daily cost report of the last complete UTC day before ``at`` (of ``tenant``; None: the fleet)."""
    win = domain.report_day(at)
    agents = list_all_agents(tenant)
    ids = [a.agent_id for a in agents]
    days: dict[str, dict[str, Totals]] = {}
    models: dict[str, dict[str, ModelDay]] = {}
    for month in domain.months_needed(win):
        docs = usage_store.agent_months(ids, month)
        for agent_id, by_day in day_totals(docs, month).items():
            days.setdefault(agent_id, {}).update(by_day)
        if month == f"{win.starts_at:%Y-%m}":
            models = model_days(docs, win.starts_at)
    tenants = sorted({a.tenant for a in agents})
    settings_ = {name: config.read_tenant(name) for name in tenants}
    prices = PriceTable(prices=config.global_prices(), tenant_prices={n: s.prices for n, s in settings_.items()})
    return domain.build_daily(
        agents=agents,
        days=days,
        tenant_budgets={name: s.budget for name, s in settings_.items()},
        models=models,
        prices=prices,
        at=at,
        generated_at=_clock(),
        tenant=tenant,
    )


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


def _near(use: domain.BudgetUse) -> bool:
    """Near or over its budget (``NEAR_BUDGET_PCT`` used)."""
    return use.used_pct is not None and use.used_pct >= domain.NEAR_BUDGET_PCT


def _budget(use: domain.BudgetUse, label: str) -> str:
    if use.budget_usd is None:
        return ""
    return f" · {label} {use.used_pct:g}% of {money(use.budget_usd)}{' :warning:' if _near(use) else ''}"


def daily_message(report: DailyReport) -> tuple[str, list[dict[str, Any]]]:
    """The daily cost report as (fallback text, Block Kit blocks)."""
    t = report.totals
    average = f"the {domain.HISTORY_DAYS}-day average ({money(report.average_usd)})"
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
            for n, a in enumerate(report.agents[: domain.TOP_AGENTS], start=1)
        ]
        blocks.append(_listing("Top agents by spend", lines))
    if report.suggestions:
        lines = [f"• {_SUGGESTION_ICON.get(s.kind, '•')} {escape(s.message)}" for s in report.suggestions]
        blocks.append(_listing(f"Suggestions (up to ~{money(report.potential_saving_usd)}/day)", lines))
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
    import tempfile

    # The home may be read-only.
    os.environ.setdefault("MPLCONFIGDIR", os.path.join(tempfile.gettempdir(), "matplotlib"))
    from matplotlib.backends.backend_agg import FigureCanvasAgg
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


# -- sending once --------------------------------------------------------------------------------


def _ref(doc_id: str) -> Any:
    return db.client().collection(REPORTS).document(doc_id)


def _claim(doc_id: str, job: str, period: str) -> dict[str, Any] | None:
    """Take the send of this report. Returns the record to continue from (``state`` "claimed", or
    "posted" with the ``ts`` of a message whose chart is still to send), or None when it was sent."""
    from google.api_core import exceptions

    now = _clock()
    claim = {
        "job": job,
        "period": period,
        "state": "claimed",
        "claimed_at": now,
        "lease_until": now + LEASE,
        "expire_at": now + RETENTION,
    }
    try:
        _ref(doc_id).create(claim, **db.call_options())
        metering.count(writes=1)
        return claim
    except exceptions.AlreadyExists:
        metering.count(conflicts=1)
    snap = db.get(_ref(doc_id))
    if not snap.exists:
        raise ReportBusy(f"report {doc_id}: claim released meanwhile; retry")
    current = snap.to_dict() or {}
    if current.get("state") in ("sent", "refused"):
        return None
    lease_until = current.get("lease_until")
    if isinstance(lease_until, datetime) and lease_until > now:
        raise ReportBusy(f"report {doc_id} is being sent by another instance (lease until {lease_until:%H:%M:%S})")
    taken = {"claimed_at": now, "lease_until": now + LEASE}
    try:
        _ref(doc_id).update(
            taken, option=db.client().write_option(last_update_time=snap.update_time), **db.call_options()
        )
    except Exception as exc:
        if db.is_conflict(exc):
            metering.count(conflicts=1)
            raise ReportBusy(f"report {doc_id} was taken over by another instance") from None
        raise
    metering.count(writes=1)
    return {**current, **taken}


def _record(doc_id: str, fields: dict[str, Any]) -> None:
    _ref(doc_id).update(fields, **db.call_options())
    metering.count(writes=1)


def _release(doc_id: str, record: dict[str, Any]) -> None:
    """Give the claim back so a redelivered tick can send (a posted message keeps its ts)."""
    try:
        if record.get("state") == "posted":  # keep the ts: a retry sends only what is left (the chart)
            _record(
                doc_id, {"state": "posted", "channel": record["channel"], "ts": record["ts"], "lease_until": _clock()}
            )
        else:
            _ref(doc_id).delete(**db.call_options())
            metering.count(writes=1)
    except Exception as exc:  # the lease expires anyway
        logs.log(log, "report claim not released", logging.WARNING, report=doc_id, error=f"{type(exc).__name__}: {exc}")


def run(job: str, now: datetime) -> dict[str, Any]:
    """Build and send the report of ``job`` for the period before ``now`` (the tick's time), once.

    Raises (so Pub/Sub redelivers the tick) when Slack is unavailable or another instance is sending
    it; Slack refusing for good (bad channel, bad token) is recorded and not retried.
    """
    if job not in domain.JOBS:
        raise ValueError(f"unknown report job {job!r}; expected one of {', '.join(domain.JOBS)}")
    from shared.slack import web_api

    at = now + TICK_EARLY
    period = (domain.report_hour(at) if job == domain.HOURLY else domain.report_day(at)).key
    doc_id = f"{job}.{period}"
    summary: dict[str, Any] = {"job": job, "period": period}
    record = _claim(doc_id, job, period)
    if record is None:
        return {**summary, "outcome": "already_sent"}
    target = channel()
    if record.get("state") == "posted" and job == domain.HOURLY:  # posted; only the record was missing
        _record(doc_id, {"state": "sent", "sent_at": _clock()})
        return {**summary, "outcome": "sent", "channel": record.get("channel"), "ts": record.get("ts")}
    try:
        report: HourlyReport | DailyReport
        if job == domain.HOURLY:
            report = hour_report = hourly(at)
            text, blocks = hourly_message(hour_report)
            summary.update(unhealthy=len(hour_report.unhealthy), episodes=len(hour_report.episodes))
        else:
            report = day_report = daily(at)
            text, blocks = daily_message(day_report)
            summary.update(suggestions=len(day_report.suggestions))
        summary.update(spend_usd=report.totals.spend_usd, calls=report.totals.calls)
        if record.get("state") == "posted":
            posted_channel, ts = str(record["channel"]), str(record["ts"])
        else:
            try:
                posted = web_api.post(target, text, blocks=blocks)
            except web_api.SlackRefused as exc:
                _record(doc_id, {"state": "refused", "error": exc.error, "channel": target})
                logs.log(log, "report refused by Slack", logging.ERROR, report=doc_id, error=exc.error, channel=target)
                return {**summary, "outcome": "refused", "error": exc.error}
            posted_channel, ts = posted.channel, posted.ts
            record = {**record, "state": "posted", "channel": posted_channel, "ts": ts}
            if job == domain.DAILY:
                _record(doc_id, {"state": "posted", "channel": posted_channel, "ts": ts})
        chart_error = None
        if isinstance(report, DailyReport):
            try:
                web_api.upload(
                    posted_channel,
                    daily_chart(report),
                    filename=f"daily-report-{period}.png",
                    title=f"Spend per day · {period}",
                    thread_ts=ts,
                )
            except web_api.SlackRefused as exc:
                chart_error = exc.error
                logs.log(log, "report chart refused by Slack", logging.WARNING, report=doc_id, error=exc.error)
        _record(
            doc_id,
            {"state": "sent", "channel": posted_channel, "ts": ts, "sent_at": _clock()}
            | ({"chart_error": chart_error} if chart_error else {}),
        )
    except BaseException:
        _release(doc_id, record)
        raise
    return {**summary, "outcome": "sent", "channel": posted_channel, "ts": ts}
