"""The REST API's reports: the hourly summary and the daily cost report, as of now or of a past time
(``?at=``); shared/services/reports.py builds them, as for the scheduled Slack messages."""

from __future__ import annotations

from datetime import UTC, datetime

from shared.api import core
from shared.api.bodies import DailyReportView, HourlyReportView
from shared.api.core import TENANT_QUERY, ApiError, Call, Param, Routes
from shared.api.tenancy import query_tenant

#: The earliest ``?at=`` a report is made as of: a report reaches back a day and the week before it,
#: which must stay within the calendar (year 1 on); earlier is a 400, not an underflow.
EARLIEST_AT = datetime(1, 2, 1, tzinfo=UTC)

routes = Routes("reports")

_AT_QUERY = Param(
    "at",
    "query",
    "Make the report as of this time (ISO 8601; default now): it covers the last complete UTC hour (day) before.",
    {"type": "string", "format": "date-time"},
)
_PARAMS = (TENANT_QUERY, _AT_QUERY)


def _report_at(call: Call) -> datetime:
    """``?at=``: the time the report is made as of (default now); it covers the hour (day) before."""
    now = core.now()
    at = core.query_time(call.request, "at", EARLIEST_AT)
    if at is None:
        return now
    if at > now:
        raise ApiError(400, "at must not be in the future")
    return at


@routes.get("/v1/reports/hourly", HourlyReportView, params=_PARAMS, errors=(400,))
def get_hourly_report(call: Call) -> HourlyReportView:
    """The hourly summary of the last complete UTC hour: what is unhealthy or changed, spend, top agents."""
    # lazy: only report requests need the report builder
    from shared.services import reports

    tenant = query_tenant(call) or core.principal(call).tenant
    return HourlyReportView.model_validate(dict(reports.hourly(_report_at(call), tenant)))


@routes.get("/v1/reports/daily", DailyReportView, params=_PARAMS, errors=(400,))
def get_daily_report(call: Call) -> DailyReportView:
    """The daily cost report of the last complete UTC day: budgets, trend, optimization suggestions."""
    # lazy: only report requests need the report builder
    from shared.services import reports

    tenant = query_tenant(call) or core.principal(call).tenant
    return DailyReportView.model_validate(dict(reports.daily(_report_at(call), tenant)))
