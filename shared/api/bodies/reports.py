"""The REST API's report bodies: the hourly summary and the daily cost report (shared/domain/reports.py)."""

from __future__ import annotations

from shared.domain.report_daily import DailyReport
from shared.domain.report_hourly import HourlyReport


class HourlyReportView(HourlyReport):
    """The hourly summary: what is unhealthy or changed, spend, calls, success rate, top agents by spend
    (the content of its Slack message)."""


class DailyReportView(DailyReport):
    """The daily cost report: spend per tenant and agent against budgets, the trend, optimization
    suggestions (the content of its Slack message; the chart is drawn from ``trend``)."""
