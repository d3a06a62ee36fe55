"""Small pure helpers the console's view models share: reading the API's JSON values (timestamps, decimal
USD strings) and showing them (money, durations). No I/O, no markup: templates escape what these return."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any


def plain(value: Any) -> Any:
    """An API view (a pydantic model) as its JSON-like dict; dicts, lists and other values as they are."""
    dump = getattr(value, "model_dump", None)
    return dump(mode="json") if callable(dump) else value


def when(value: Any) -> datetime | None:
    """A timestamp from a datetime or an ISO 8601 string (``Z`` accepted), in UTC; None when absent or bad."""
    if isinstance(value, datetime):
        return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, str) and value:
        try:
            return when(datetime.fromisoformat(value.replace("Z", "+00:00")))
        except ValueError:
            return None
    return None


def decimal(value: Any) -> Decimal | None:
    """A decimal from the API's USD strings (or a number); None when absent or not a finite number."""
    if value is None or isinstance(value, bool):
        return None
    try:
        number = Decimal(str(value))
    except (InvalidOperation, ValueError):
        return None
    return number if number.is_finite() else None


def usd(value: Decimal | None) -> str:
    """Money to show: cents from a dollar up ($12.50); below, up to four decimals and at least two ($0.08,
    $0.0012); two significant digits below $0.0001 ($0.000012); "—" when unknown."""
    if value is None:
        return "—"
    if abs(value) >= 1 or value == 0:
        return f"${value:,.2f}"
    if abs(value) >= Decimal("0.0001"):
        whole, _, cents = f"{value:.4f}".rstrip("0").partition(".")
        return f"${whole}.{cents.ljust(2, '0')}"
    # Two significant digits below $0.0001, never scientific notation; nano-dollars at most.
    return f"${value:.{min(9, 1 - value.adjusted())}f}"


def duration(seconds: float) -> str:
    """A short duration: 45s, 12m, 3h 05m, 2d 04h; a negative one counts as 0s."""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{s // 86400}d {s % 86400 // 3600:02d}h"


def until(at: datetime | None, now: datetime) -> str | None:
    """ "in 3h 05m" before ``at``; "due" once it passed; None without ``at``."""
    if at is None:
        return None
    left = (at - now).total_seconds()
    return f"in {duration(left)}" if left > 0 else "due"


def ago(at: datetime | None, now: datetime) -> str | None:
    """ "12m ago"; None without ``at``."""
    return None if at is None else f"{duration((now - at).total_seconds())} ago"


def field(data: Mapping[str, Any] | None, name: str, default: Any = None) -> Any:
    """``data[name]`` when ``data`` is a mapping that holds it, else ``default``."""
    return data.get(name, default) if isinstance(data, Mapping) else default
