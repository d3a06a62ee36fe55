"""Budget forecast: when each hard limit will be reached at the current spend rate, and which
``budget_forecast`` episodes to open or resolve. Pure: the minute job (shared/services/budget_forecasts.py)
reads the counters and carries the decisions out; the usage API shows the same projection.

The rate comes from the hour counters of the month document (``hDDHH``, shared/domain/usage.py; the
per-minute counters hold calls, not money): the previous hour and the current one so far over the time
they cover, or the current hour alone once it has run :data:`MIN_OBSERVED` if that is higher (a burst that
began this hour is not averaged away). A limit is projected at ``now + (hard - used) / rate``; a projection
after the period resets is none at all (the counter starts again at zero). A held agent spends nothing
(:func:`stopping_holds`): it is not projected, and its open forecast resolves.

Episodes are numbered per budget and period (:func:`occurrence`): the n-th time a projection of one
budget enters the horizon in one period window opens ``budget_forecast.<key>.<hard>.<n>``, so a forecast
that resolved (the rate fell, the agent was held, the budget was raised) warns again when the run-out
comes back within the horizon later that period. ``n`` is kept in one small marker per key, written in the
resolution's batch (shared/store/budget_forecasts.py); every tick reads the same ``n`` until a resolution
commits, so concurrent ticks create the same id and one create wins.

The minute job lists the budgeted subjects a page at a time after a rotating cursor (:func:`turn`), so
successive ticks cover every one of them with bounded reads per tick.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Generic, TypeVar

from fleet_agent.contracts import BudgetSpec

from shared.domain import budgets
from shared.domain import holds as hold_rules
from shared.domain.budgets import Limit
from shared.domain.periods import Period, Window, window, windows
from shared.domain.pricing import format_usd, to_usd
from shared.domain.usage import Totals, month_field

RULE = "budget_forecast"
HOUR = timedelta(hours=1)
#: The current hour alone gives the rate once this much of it has passed (before that, a few calls at its
#: start would read as a storm).
MIN_OBSERVED = timedelta(minutes=10)
#: Periods forecast by default: an hourly limit resets within the hour (its thresholds cover it).
FORECAST_PERIODS = (Period.DAY, Period.MONTH)


R = TypeVar("R")


@dataclass(frozen=True)
class Turn(Generic[R]):
    """One tick's page of a listing of budgeted subjects."""

    rows: list[R]  # evaluated this tick
    last: R | None  # the next tick starts after it; None: the round ends, the next tick starts at the first
    complete: bool  # the page started at the first and reached the end: every subject of its kind was seen
    read: int  # rows read (the page and the one that tells whether more follow)


def turn(rows: Sequence[R], size: int, *, from_first: bool) -> Turn[R]:
    """The page of a listing asked for ``size + 1`` rows after the cursor (the extra row is not evaluated:
    it only tells that more follow). A short page ends the round; the next one starts again at the first."""
    page = list(rows[:size])
    more = len(rows) > size
    return Turn(page, page[-1] if more and page else None, from_first and not more, len(rows))


def off_page(
    open_subjects: Iterable[tuple[str, str]], seen: set[tuple[str, str]], complete: Mapping[str, bool], limit: int
) -> tuple[set[tuple[str, str]], dict[str, list[str]]]:
    """The subjects of open forecasts that are not on this tick's pages: (those known to have lost their
    budget: their kind's page saw every budgeted subject; the others to read directly, up to ``limit`` per
    kind, so that an open forecast follows its subject every tick whatever the rotation)."""
    gone: set[tuple[str, str]] = set()
    follow: dict[str, list[str]] = {}
    for kind, subject in sorted(set(open_subjects)):
        if (kind, subject) in seen or kind not in complete:
            continue
        if complete[kind]:
            gone.add((kind, subject))
        elif len(ids := follow.setdefault(kind, [])) < limit:
            ids.append(subject)
    return gone, follow


def ticks_per_round(count: int, size: int) -> int:
    """Ticks (minutes) for the rotation to evaluate each of ``count`` subjects once, ``size`` per tick."""
    return max(1, -(-count // max(1, size)))


def stopping_holds(holds: Mapping[str, Any]) -> list[str]:
    """The holds of an agent that stop its spend (shared/domain/holds.py: every kind is a reason it must not
    call its model: its or its tenant's budget, an open breaker, a pause, a quarantine)."""
    return sorted(name for name in holds if name in hold_rules.KINDS)


def horizons(seconds: int) -> dict[Period, timedelta]:
    """The horizon of each forecast period (``FLEET_BUDGET_FORECAST_HORIZON_S``); 0 or less: forecasts off."""
    return {period: timedelta(seconds=seconds) for period in FORECAST_PERIODS} if seconds > 0 else {}


def month_fields(data: Mapping[str, Any]) -> dict[str, Totals]:
    """A month document's (or a tenant's summed shards') counters: ``m``, ``dDD`` and ``hDDHH`` -> totals."""
    out = {}
    for name, counters in data.items():
        if isinstance(counters, Totals):
            out[name] = counters
        elif isinstance(counters, dict) and (name == "m" or (name[:1] in ("d", "h") and name[1:].isdigit())):
            out[name] = Totals.from_dict(counters)
    return out


def periods_of(fields: Mapping[str, Totals], now: datetime) -> dict[Period, tuple[Window, Totals]]:
    """The current hour, day and month from a month's counters (zero when absent)."""
    return {period: (win, fields.get(month_field(period, win)) or Totals()) for period, win in windows(now).items()}


def hours_of(fields: Mapping[str, Totals], now: datetime) -> dict[datetime, Totals]:
    """The month's hour counters by hour start (``hDDHH``)."""
    start = window(Period.MONTH, now).starts_at
    out = {}
    for name, totals in fields.items():
        if name[:1] == "h" and len(name) == 5:
            try:
                out[start.replace(day=int(name[1:3]), hour=int(name[3:5]))] = totals
            except ValueError:  # not a day of this month: not an hour counter
                continue
    return out


def rate_per_hour(hours: Mapping[datetime, int], now: datetime) -> float:
    """Units spent per hour lately (see the module's docstring), from spend per hour start."""
    start = now.replace(minute=0, second=0, microsecond=0)
    elapsed = now - start
    current, previous = hours.get(start, 0), hours.get(start - HOUR, 0)
    trailing = (previous + current) / (1 + elapsed / HOUR)
    if elapsed >= MIN_OBSERVED:
        return max(trailing, current / (elapsed / HOUR))
    return trailing


def rates(hours: Mapping[datetime, Totals], now: datetime) -> dict[str, float]:
    """The rate per hour of each metric (``usd`` in nano-dollars, ``tokens``)."""
    return {metric: rate_per_hour({h: t.get(metric) for h, t in hours.items()}, now) for metric in budgets.METRICS}


@dataclass(frozen=True)
class Projection:
    """When one hard limit is reached at the current rate."""

    scope: str  # "agent" or "tenant"
    subject: str  # agent id or tenant
    tenant: str
    limit: Limit
    window: Window
    used: int
    rate: float  # units per hour
    #: When the limit is reached at this rate; None: not before the period resets (or already reached).
    at: datetime | None
    reached: bool = False

    @property
    def key(self) -> str:
        """One budget and period: what a forecast episode is about."""
        return f"{self.scope}.{self.subject}.{self.limit.name}.{self.window.key}"

    def within(self, horizon: timedelta | None, now: datetime) -> bool:
        return horizon is not None and self.at is not None and self.at - now <= horizon

    def episode_id(self, occurrence: int) -> str:
        """One episode per projected breach: per budget, limit value, period window and occurrence (the
        same id from every tick and instance that read the same occurrence, so one create wins; a raised
        limit is another breach)."""
        return f"{RULE}.{self.key}.{self.limit.hard}.{occurrence}"

    def show_rate(self) -> str:
        if self.limit.metric == "usd":
            return f"${to_usd(round(self.rate)):.2f}/h"
        return f"{round(self.rate):,} tokens/h"

    def message(self, now: datetime) -> str:
        what = f"{self.scope} {self.subject}: {self.limit.name} budget {self.window.key}"
        used = f"{self.limit.show(self.used)} of {self.limit.show(self.limit.hard or 0)} used"
        at = self.at or now
        minutes = max(0, round((at - now) / timedelta(minutes=1)))
        return (
            f"{what} runs out at about {at:%Y-%m-%d %H:%M} UTC (in {minutes} min) at the current rate "
            f"{self.show_rate()} ({used}); resets {self.window.resets_at:%Y-%m-%d %H:%M} UTC"
        )

    def details(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "scope": self.scope,
            "subject": self.subject,
            "limit": self.limit.name,
            "period": self.window.period.value,
            "projected_at": self.at.isoformat() if self.at else None,
            "rate_per_hour": round(self.rate),
            "used": self.used,
            "hard": self.limit.hard,
        }


def project_limit(limit: Limit, win: Window, used: int, rate: float, now: datetime) -> tuple[datetime | None, bool]:
    """(when ``limit`` is reached at ``rate`` units per hour, whether it is reached already)."""
    hard = limit.hard or 0
    if used >= hard:
        return None, True
    if rate <= 0:
        return None, False
    left = win.resets_at - now
    hours = (hard - used) / rate
    if hours * HOUR.total_seconds() >= left.total_seconds():
        return None, False
    return now + timedelta(hours=hours), False


def project(
    spec: BudgetSpec | None, scope: str, subject: str, tenant: str, fields: Mapping[str, Totals], now: datetime
) -> list[Projection]:
    """Every hard limit of ``spec``, projected from a month's counters (the current periods and hours)."""
    limits = [limit for limit in budgets.limits(spec) if limit.hard is not None]
    if not limits:
        return []
    current = periods_of(fields, now)
    per_hour = rates(hours_of(fields, now), now)
    out = []
    for limit in limits:
        win, totals = current[limit.period]
        used, rate = totals.get(limit.metric), per_hour[limit.metric]
        at, reached = project_limit(limit, win, used, rate, now)
        out.append(Projection(scope, subject, tenant, limit, win, used, rate, at, reached))
    return out


def usage_view(
    spec: BudgetSpec | None, fields: Mapping[str, Totals], now: datetime, holds: Mapping[str, Any] | None = None
) -> dict[str, dict[str, Any]]:
    """The usage API's forecast fields per period (``hour``, ``day``, ``month``): the current rates, and when
    the period's first hard limit is reached at them (null: not before it resets, none, or reached already;
    or the agent's ``holds`` stop its spend: held, it spends nothing, as the minute job's forecast says)."""
    per_hour = rates(hours_of(fields, now), now)
    projections = [] if stopping_holds(holds or {}) else project(spec, "", "", "", fields, now)
    out = {}
    for period in Period:
        at = min((p.at for p in projections if p.window.period is period and p.at is not None), default=None)
        out[period.value] = {
            "rate_usd_per_hour": format_usd(round(per_hour["usd"])),
            "rate_tokens_per_hour": round(per_hour["tokens"]),
            "projected_limit_at": at.isoformat() if at else None,
        }
    return out


#: The first occurrence of a budget's forecast in a period window (no marker yet).
FIRST = 1


def occurrence(episode: Mapping[str, Any]) -> int:
    """The occurrence number of a forecast episode (0: one opened before they were numbered)."""
    value = (episode.get("details") or {}).get("occurrence")
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def next_occurrence(marker: Mapping[str, Any] | None) -> int:
    """The occurrence to open for a key, from its marker (None: none of this key resolved yet)."""
    value = (marker or {}).get("next")
    return max(FIRST, value) if isinstance(value, int) and not isinstance(value, bool) else FIRST


@dataclass(frozen=True)
class Resolution:
    episode: dict[str, Any]
    summary: str

    @property
    def key(self) -> str:
        return str((self.episode.get("details") or {}).get("key") or "")

    @property
    def following(self) -> int:
        """The occurrence the key's next forecast opens as (this one's + 1; the marker keeps the largest)."""
        return occurrence(self.episode) + 1


@dataclass
class Decisions:
    open: list[Projection]
    resolve: list[Resolution]


def decide(
    projections: Iterable[Projection],
    open_episodes: Iterable[dict[str, Any]],
    evaluated: set[tuple[str, str]],
    horizon: Mapping[Period, timedelta],
    now: datetime,
    held: Mapping[tuple[str, str], list[str]] | None = None,
) -> Decisions:
    """Episodes to open (a projection inside its period's horizon with none open for its budget and period)
    and to resolve (an open one of a subject evaluated now whose projection left the horizon, reached the
    limit, or is gone: the budget removed, or the period reset; or of a subject ``held``: (scope, subject)
    -> the holds that stop its spend). Subjects not evaluated now keep theirs."""
    held = held or {}
    by_key = {p.key: p for p in projections}
    open_by_key: dict[str, dict[str, Any]] = {}
    resolve: list[Resolution] = []
    for episode in open_episodes:
        details = episode.get("details") or {}
        key = str(details.get("key") or "")
        if key in open_by_key:  # a duplicate (two instances in one hour boundary): keep one
            resolve.append(Resolution(episode, "superseded by another forecast of the same budget"))
            continue
        open_by_key[key] = episode
        subject = (str(details.get("scope") or ""), str(details.get("subject") or ""))
        if subject in held:
            names = ", ".join(held[subject])
            resolve.append(Resolution(episode, f"{key}: the {subject[0]} is held ({names}): it spends nothing"))
            continue
        if subject not in evaluated:
            continue
        projection = by_key.get(key)
        if projection is None:
            resolve.append(Resolution(episode, f"{key}: no longer forecast (the budget changed or the period reset)"))
        elif projection.reached:
            resolve.append(Resolution(episode, f"{key}: the limit is reached (see budget_exhausted)"))
        elif not projection.within(horizon.get(projection.limit.period), now):
            when = f"{projection.at:%Y-%m-%d %H:%M} UTC" if projection.at else "not before the period resets"
            resolve.append(Resolution(episode, f"{key}: at {projection.show_rate()} the limit is reached {when}"))
    opening = [
        p
        for p in by_key.values()
        if p.key not in open_by_key and not p.reached and p.within(horizon.get(p.limit.period), now)
    ]
    return Decisions(opening, resolve)
