"""The hourly summary and the daily cost report: read the inputs, build the report, send it to Slack.

``run(job, now)`` is what the ``fleet-reports`` function does for a scheduler tick (``hourly-summary``
or ``daily-report``): it builds the report of the last complete UTC hour (day) before ``now``, posts
it to ``FLEET_SLACK_REPORT_CHANNEL`` (the daily one with its chart in the thread) and returns a
small summary for the logs. ``hourly(at, tenant)`` and ``daily(at, tenant)`` build the same reports
for the API. The reports are built by shared/domain/report_hourly.py and report_daily.py (pure) and
rendered for Slack by shared/services/report_messages.py.

Sent once per period: ``reports/{job}.{period}`` is *created* before sending (a second tick, or a
second instance, finds it and stops), then records the Slack ``ts``. When Slack is unavailable the
claim is released and the exception propagates, so Pub/Sub redelivers the tick; a claim left by a
crashed instance is taken over once its lease (the function's timeout) has passed.

Reads (see docs/reports.md): the agents (one read each, pages of ``AGENT_PAGE``), each agent's usage
month document (``usage/a.{agent}.{YYYY-MM}``: every day and hour of the month, one read; two when
the period spans months), and for the daily report each spending agent's per-model day counters,
each tenant's settings, the price table and the training jobs relaunched since the day began; for the
hourly one the open alert episodes.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from shared.domain import reports as domain
from shared.domain.agent_record import AgentRecord
from shared.domain.periods import Period, Window, window
from shared.domain.pricing import PriceTable
from shared.domain.report_daily import DailyReport, build_daily
from shared.domain.report_hourly import HourlyReport, build_hourly
from shared.domain.usage import ModelDay, Totals, model_day_field, month_field
from shared.platform import logs, metering
from shared.services.report_messages import daily_chart, daily_message, hourly_message
from shared.store import agents as agent_store
from shared.store import config, db, price_catalog
from shared.store import episodes as episode_store
from shared.store import jobs as job_store
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
    return build_hourly(
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
    prices = PriceTable(
        prices=config.global_prices(),
        tenant_prices={n: s.prices for n, s in settings_.items()},
        catalog=price_catalog.catalog,
    )
    return build_daily(
        agents=agents,
        days=days,
        tenant_budgets={name: s.budget for name, s in settings_.items()},
        models=models,
        prices=prices,
        at=at,
        generated_at=_clock(),
        tenant=tenant,
        jobs=job_store.relaunched_since(win.starts_at, tenant),
    )


# -- sending once --------------------------------------------------------------------------------


def _ref(doc_id: str) -> Any:
    return db.client().collection(REPORTS).document(doc_id)


def _claim(doc_id: str, job: str, period: str) -> dict[str, Any] | None:
    """Take the send of this report. Returns the record to continue from (``state`` "claimed", or
    "posted" with the ``ts`` of a message whose chart is still to send), or None when it was sent."""
    # lazy: google.cloud libraries stay off the cold path of the API's other routes
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
    # lazy: the Slack client (slack_sdk) is needed only when a report is sent
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
