"""Budget periods (UTC hour, day, month): the period is part of every counter's key, so a counter
never needs resetting; a new period simply starts a new counter. Each period knows when it resets."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum


class Period(StrEnum):
    HOUR = "hour"
    DAY = "day"
    MONTH = "month"


@dataclass(frozen=True)
class Window:
    period: Period
    key: str  # "2026-11-21T22", "2026-11-21", "2026-11"
    starts_at: datetime
    resets_at: datetime


def window(period: Period, at: datetime) -> Window:
    """The window of ``period`` that contains ``at`` (converted to UTC)."""
    at = at.astimezone(UTC)
    if period is Period.HOUR:
        start = at.replace(minute=0, second=0, microsecond=0)
        return Window(period, start.strftime("%Y-%m-%dT%H"), start, start + timedelta(hours=1))
    if period is Period.DAY:
        start = at.replace(hour=0, minute=0, second=0, microsecond=0)
        return Window(period, start.strftime("%Y-%m-%d"), start, start + timedelta(days=1))
    start = at.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    following = (
        start.replace(year=start.year + 1, month=1) if start.month == 12 else start.replace(month=start.month + 1)
    )
    return Window(period, start.strftime("%Y-%m"), start, following)


def windows(at: datetime) -> dict[Period, Window]:
    return {period: window(period, at) for period in Period}
