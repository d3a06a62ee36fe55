"""The budget forecast's pure rules (shared/domain/budget_forecast.py): the spend rate from hour counters,
when each hard limit is reached at it, and which budget_forecast episodes open or resolve."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from fleet_agent.contracts import BudgetSpec

from shared.domain import budget_forecast as forecast
from shared.domain.periods import Period, window
from shared.domain.usage import Totals

USD = 1_000_000_000  # nano-dollars per dollar
NOW = datetime(2026, 11, 21, 10, 30, tzinfo=UTC)
THIS_HOUR = NOW.replace(minute=0)
LAST_HOUR = THIS_HOUR - timedelta(hours=1)
HORIZON = forecast.horizons(3 * 3600)


def spec(**limits: Any) -> BudgetSpec:
    return BudgetSpec.model_validate(limits)


def month(day_usd: float, hours: dict[datetime, float], *, tokens: dict[datetime, int] | None = None) -> dict:
    """A month document's counters: the day's spend, and spend per hour (``hDDHH``)."""
    tokens = tokens or {}
    fields = {
        "m": Totals(usd_nanos=round(day_usd * USD), tokens=sum(tokens.values())),
        f"d{NOW:%d}": Totals(usd_nanos=round(day_usd * USD), tokens=sum(tokens.values())),
    }
    for hour in set(hours) | set(tokens):
        fields[f"h{hour:%d%H}"] = Totals(usd_nanos=round(hours.get(hour, 0) * USD), tokens=tokens.get(hour, 0))
    return fields


def daily(fields: dict, now: datetime = NOW, **limits: Any) -> forecast.Projection:
    found = forecast.project(spec(**limits), "agent", "a1", "acme", fields, now)
    return next(p for p in found if p.limit.period is Period.DAY)


# --- the rate ------------------------------------------------------------------------------------


def test_a_steady_rate_is_read_from_the_previous_hour_and_this_one_so_far() -> None:
    # $6 last hour, $3 in this hour's first 30 minutes: $6 an hour either way.
    assert forecast.rate_per_hour({LAST_HOUR: 6 * USD, THIS_HOUR: 3 * USD}, NOW) == 6 * USD


def test_early_in_the_hour_the_previous_hour_carries_the_rate() -> None:
    at = THIS_HOUR + timedelta(minutes=5)
    rate = forecast.rate_per_hour({LAST_HOUR: 6 * USD, THIS_HOUR: USD // 2}, at)
    assert abs(rate - 6 * USD) < USD / 100
    # A few calls in the first minutes are not read as a storm: no previous hour, $1 in 2 minutes.
    assert forecast.rate_per_hour({THIS_HOUR: USD}, THIS_HOUR + timedelta(minutes=2)) < 1 * USD


def test_a_burst_that_began_this_hour_is_not_averaged_away() -> None:
    at = THIS_HOUR + timedelta(minutes=20)
    assert forecast.rate_per_hour({THIS_HOUR: 5 * USD}, at) == 15 * USD


def test_nothing_spent_lately_is_a_zero_rate() -> None:
    assert forecast.rate_per_hour({}, NOW) == 0
    assert forecast.rate_per_hour({THIS_HOUR - timedelta(hours=3): 50 * USD}, NOW) == 0


def test_hour_counters_are_read_from_the_month_fields() -> None:
    fields = forecast.month_fields(
        {"m": {"usd_nanos": 9}, "d21": {"usd_nanos": 9}, "h2110": {"usd_nanos": 4}, "h2109": {"usd_nanos": 5},
         "x21": {"gpt-4o": {"calls": 1}}, "streak": 3, "tenant": "acme"}
    )  # fmt: skip
    assert set(fields) == {"m", "d21", "h2110", "h2109"}
    hours = forecast.hours_of(fields, NOW)
    assert {h: t.usd_nanos for h, t in hours.items()} == {THIS_HOUR: 4, LAST_HOUR: 5}
    periods = forecast.periods_of(fields, NOW)
    assert periods[Period.HOUR][1].usd_nanos == 4 and periods[Period.DAY][1].usd_nanos == 9


# --- the projection ------------------------------------------------------------------------------


def test_a_steady_rate_projects_the_limit_at_the_remaining_over_the_rate() -> None:
    # $4 spent today, $2 an hour lately, a $10 daily limit: 3 hours left.
    p = daily(month(4, {LAST_HOUR: 2, THIS_HOUR: 1}), daily_usd="10")
    assert p.rate == 2 * USD and p.used == 4 * USD and not p.reached
    assert p.at == NOW + timedelta(hours=3)
    assert p.within(HORIZON[Period.DAY], NOW)
    assert not p.within(timedelta(hours=2), NOW)


def test_a_zero_rate_projects_nothing() -> None:
    p = daily(month(9, {}), daily_usd="10")
    assert p.at is None and not p.reached and not p.within(HORIZON[Period.DAY], NOW)


def test_a_limit_already_reached_is_not_a_forecast() -> None:
    p = daily(month(10, {THIS_HOUR: 10}), daily_usd="10")
    assert p.reached and p.at is None and not p.within(HORIZON[Period.DAY], NOW)


def test_a_projection_after_the_period_resets_is_none() -> None:
    late = datetime(2026, 11, 21, 23, 30, tzinfo=UTC)
    hour = late.replace(minute=0)
    # $1 an hour, $5 left: 5 hours, but the day resets in 30 minutes.
    p = daily(month(5, {hour - timedelta(hours=1): 1, hour: 0.5}), late, daily_usd="10")
    assert p.rate == USD and p.at is None and not p.reached
    # The same spend at 10:30 is projected (15:30), beyond the 3-hour horizon.
    q = daily(month(5, {LAST_HOUR: 1, THIS_HOUR: 0.5}), daily_usd="10")
    assert q.at == NOW + timedelta(hours=5) and not q.within(HORIZON[Period.DAY], NOW)


def test_a_tiny_spend_projects_nothing_within_the_period() -> None:
    fields = {f"h{NOW:%d%H}": Totals(usd_nanos=3), f"d{NOW:%d}": Totals(usd_nanos=3), "m": Totals(usd_nanos=3)}
    p = daily(fields, daily_usd="10")
    assert 0 < p.rate < 10 and p.at is None


def test_token_budgets_are_projected_from_the_token_rate() -> None:
    fields = month(0, {}, tokens={LAST_HOUR: 40_000, THIS_HOUR: 20_000})
    found = forecast.project(spec(daily_tokens=100_000), "agent", "a1", "acme", fields, NOW)
    assert [(p.limit.name, p.rate) for p in found] == [("daily_tokens", 40_000)]
    assert found[0].at == NOW + timedelta(hours=1)
    assert "40,000 tokens/h" in found[0].message(NOW)


def test_only_hard_limits_are_projected_and_a_spec_without_one_projects_nothing() -> None:
    assert forecast.project(spec(soft_daily_usd="5"), "agent", "a1", "acme", month(4, {}), NOW) == []
    assert forecast.project(None, "tenant", "acme", "acme", month(4, {}), NOW) == []
    found = forecast.project(spec(hourly_usd="1", monthly_usd="100"), "tenant", "acme", "acme", month(4, {}), NOW)
    assert sorted(p.limit.name for p in found) == ["hourly_usd", "monthly_usd"]


def test_the_horizon_covers_daily_and_monthly_budgets_and_zero_turns_it_off() -> None:
    assert set(HORIZON) == {Period.DAY, Period.MONTH} and HORIZON[Period.DAY] == timedelta(hours=3)
    assert forecast.horizons(0) == {}
    # An hourly limit about to run out is not forecast (its thresholds and its reset within the hour cover it).
    found = forecast.project(spec(hourly_usd="1.5"), "agent", "a1", "acme", month(1, {THIS_HOUR: 1}), NOW)
    assert found[0].at is not None and not found[0].within(HORIZON.get(Period.HOUR), NOW)


def test_the_episode_names_the_projected_time_and_the_rate() -> None:
    p = daily(month(4, {LAST_HOUR: 2, THIS_HOUR: 1}), daily_usd="10")
    assert p.key == "agent.a1.daily_usd.2026-11-21"
    assert p.episode_id(1) == "budget_forecast.agent.a1.daily_usd.2026-11-21.10000000000.1"
    text = p.message(NOW)
    assert "2026-11-21 13:30 UTC" in text and "in 180 min" in text and "$2.00/h" in text
    assert "$4.00 of $10.00 used" in text
    assert p.details()["projected_at"] == "2026-11-21T13:30:00+00:00" and p.details()["rate_per_hour"] == 2 * USD


def test_the_usage_view_shows_the_rate_and_the_earliest_projection_per_period() -> None:
    fields = month(4, {LAST_HOUR: 2, THIS_HOUR: 1})
    view = forecast.usage_view(spec(daily_usd="10", monthly_usd="1000"), fields, NOW)
    assert view["day"] == {
        "rate_usd_per_hour": "2",
        "rate_tokens_per_hour": 0,
        "projected_limit_at": "2026-11-21T13:30:00+00:00",
    }
    assert view["month"]["projected_limit_at"] is None  # $996 left at $2 an hour: after the month resets
    assert view["hour"]["projected_limit_at"] is None and view["hour"]["rate_usd_per_hour"] == "2"
    assert forecast.usage_view(None, {}, NOW)["day"]["rate_usd_per_hour"] == "0"
    # A held agent spends nothing: no projection (its recent rate is still shown); other holds do not count.
    held = forecast.usage_view(spec(daily_usd="10"), fields, NOW, {"breaker": {"opened_at": "x"}})
    assert held["day"] == {**view["day"], "projected_limit_at": None}
    assert forecast.usage_view(spec(daily_usd="10"), fields, NOW, {"other": {}})["day"] == view["day"]


# --- opening and resolving -----------------------------------------------------------------------


def projection(hours_left: float | None, *, reached: bool = False, subject: str = "a1") -> forecast.Projection:
    limit = forecast.budgets.limits(spec(daily_usd="10"))[0]
    at = None if hours_left is None else NOW + timedelta(hours=hours_left)
    return forecast.Projection("agent", subject, "acme", limit, window(Period.DAY, NOW), 4 * USD, 2 * USD, at, reached)


def episode_of(p: forecast.Projection) -> dict[str, Any]:
    details = {**p.details(), "occurrence": 1}
    return {"id": p.episode_id(1), "rule": forecast.RULE, "severity": "warning", "details": details}


EVALUATED = {("agent", "a1")}


def test_a_projection_inside_the_horizon_opens_one_episode() -> None:
    inside = projection(2)
    decided = forecast.decide([inside], [], EVALUATED, HORIZON, NOW)
    assert decided.open == [inside] and decided.resolve == []
    # Open already: nothing more.
    again = forecast.decide([inside], [episode_of(inside)], EVALUATED, HORIZON, NOW)
    assert again.open == [] and again.resolve == []


def test_outside_the_horizon_reached_or_gone_opens_nothing() -> None:
    for p in (projection(4), projection(None), projection(None, reached=True)):
        assert forecast.decide([p], [], EVALUATED, HORIZON, NOW).open == []
    assert forecast.decide([projection(2)], [], EVALUATED, {}, NOW).open == []  # forecasts off


def test_an_open_episode_resolves_when_its_projection_leaves_the_horizon() -> None:
    opened = episode_of(projection(2))
    decided = forecast.decide([projection(5)], [opened], EVALUATED, HORIZON, NOW)
    assert [r.episode for r in decided.resolve] == [opened] and decided.open == []
    assert "$2.00/h" in decided.resolve[0].summary and "2026-11-21 15:30 UTC" in decided.resolve[0].summary
    slowed = forecast.decide([projection(None)], [opened], EVALUATED, HORIZON, NOW)
    assert "not before the period resets" in slowed.resolve[0].summary


def test_an_open_episode_resolves_when_the_limit_is_reached_or_the_budget_or_period_is_gone() -> None:
    opened = episode_of(projection(2))
    reached = forecast.decide([projection(None, reached=True)], [opened], EVALUATED, HORIZON, NOW)
    assert "budget_exhausted" in reached.resolve[0].summary
    gone = forecast.decide([], [opened], EVALUATED, HORIZON, NOW)  # budget removed, or a new day's key
    assert [r.episode for r in gone.resolve] == [opened] and "no longer forecast" in gone.resolve[0].summary


def test_subjects_not_evaluated_this_tick_keep_their_episodes() -> None:
    opened = episode_of(projection(2, subject="a2"))
    assert forecast.decide([], [opened], EVALUATED, HORIZON, NOW).resolve == []


def test_a_duplicate_open_episode_of_one_budget_is_resolved() -> None:
    first = episode_of(projection(2))
    second = {**first, "id": first["id"] + "-dup"}
    decided = forecast.decide([projection(2)], [first, second], EVALUATED, HORIZON, NOW)
    assert [r.episode["id"] for r in decided.resolve] == [second["id"]] and decided.open == []


def test_a_held_subjects_open_episode_resolves_and_it_opens_none() -> None:
    opened = episode_of(projection(2))
    decided = forecast.decide([], [opened], set(), HORIZON, NOW, held={("agent", "a1"): ["budget", "pause"]})
    assert [r.episode for r in decided.resolve] == [opened] and decided.open == []
    assert "held (budget, pause)" in decided.resolve[0].summary
    # Another subject's hold leaves it alone.
    other = forecast.decide([], [opened], set(), HORIZON, NOW, held={("agent", "a2"): ["pause"]})
    assert other.resolve == []


def test_every_kind_of_hold_stops_the_spend_and_other_fields_do_not() -> None:
    assert forecast.stopping_holds({}) == []
    assert forecast.stopping_holds({"pause": {}, "breaker": {}}) == ["breaker", "pause"]
    for name in ("budget", "tenant_budget", "breaker", "pause", "quarantine"):
        assert forecast.stopping_holds({name: {"command": "x"}}) == [name]
    assert forecast.stopping_holds({"something_else": {}}) == []


# --- the episode id ------------------------------------------------------------------------------


def test_the_episode_id_is_the_same_across_hours_and_ticks_of_one_period() -> None:
    fields = month(4, {LAST_HOUR: 2, THIS_HOUR: 1})
    before = daily(fields, THIS_HOUR + timedelta(minutes=59, seconds=59), daily_usd="10")
    after = daily(fields, THIS_HOUR + timedelta(hours=1), daily_usd="10")
    assert before.episode_id(1) == after.episode_id(1) == "budget_forecast.agent.a1.daily_usd.2026-11-21.10000000000.1"
    # Another day, a raised limit (another breach), or the next occurrence is another episode.
    tomorrow = daily(fields, NOW + timedelta(days=1), daily_usd="10")
    raised = daily(fields, daily_usd="12")
    ids = {before.episode_id(1), tomorrow.episode_id(1), raised.episode_id(1), before.episode_id(2)}
    assert len(ids) == 4


def test_the_occurrence_comes_from_the_marker_and_the_resolved_episode() -> None:
    assert forecast.next_occurrence(None) == forecast.next_occurrence({}) == 1
    assert forecast.next_occurrence({"next": 3}) == 3
    assert forecast.next_occurrence({"next": 0}) == forecast.next_occurrence({"next": "2"}) == 1
    details = {"key": "agent.a1.daily_usd.2026-11-21", "occurrence": 2}
    resolved = forecast.Resolution({"id": "x", "details": details}, "")
    assert (resolved.key, resolved.following) == ("agent.a1.daily_usd.2026-11-21", 3)
    # One opened before the episodes were numbered counts as the 0th: the next one is the 1st.
    assert forecast.Resolution({"id": "x", "details": {"key": "k"}}, "").following == 1
    assert forecast.occurrence({"details": {"occurrence": True}}) == 0


# --- the rotation --------------------------------------------------------------------------------


def rotate(subjects: list[str], size: int, ticks: int) -> list[list[str]]:
    """What each of ``ticks`` ticks evaluates over a listing in order, with the cursor kept between them
    (the store's ``start_after``), asking one row more than a page as the service does."""
    cursor: str | None = None
    out = []
    for _ in range(ticks):
        after = [s for s in subjects if cursor is None or s > cursor]
        page = forecast.turn(after[: size + 1], size, from_first=cursor is None)
        out.append(page.rows)
        cursor = page.last
    return out


def test_successive_ticks_cover_every_subject_once_a_round_then_start_again() -> None:
    subjects = [f"a{i:02d}" for i in range(7)]
    ticks = rotate(subjects, 3, 6)
    assert ticks == [subjects[0:3], subjects[3:6], subjects[6:7], subjects[0:3], subjects[3:6], subjects[6:7]]
    assert forecast.ticks_per_round(7, 3) == 3
    assert all(len(t) <= 3 for t in ticks)


def test_a_listing_that_fills_its_last_page_exactly_ends_the_round_without_an_empty_tick() -> None:
    subjects = [f"a{i}" for i in range(6)]
    assert rotate(subjects, 3, 3) == [subjects[:3], subjects[3:], subjects[:3]]
    assert forecast.ticks_per_round(6, 3) == 2 and forecast.ticks_per_round(0, 3) == 1


def test_only_a_page_from_the_first_that_reaches_the_end_saw_everything() -> None:
    assert forecast.turn(["a", "b"], 3, from_first=True) == forecast.Turn(["a", "b"], None, True, 2)
    cut = forecast.turn(["a", "b", "c", "d"], 3, from_first=True)
    assert cut.rows == ["a", "b", "c"] and cut.last == "c" and not cut.complete and cut.read == 4
    tail = forecast.turn(["e"], 3, from_first=False)
    assert tail.last is None and not tail.complete  # the round ends, but this tick saw only its end
    assert forecast.turn([], 3, from_first=True) == forecast.Turn([], None, True, 0)


def test_a_subject_added_or_removed_mid_round_never_stalls_the_rotation() -> None:
    subjects = [f"a{i}" for i in range(5)]
    cursor: str | None = None
    seen: list[str] = []
    for tick in range(4):
        if tick == 1:
            subjects = [s for s in subjects if s != "a1"] + ["a9"]  # the cursor's own subject removed
        after = [s for s in subjects if cursor is None or s > cursor]
        page = forecast.turn(after[:3], 2, from_first=cursor is None)
        seen += page.rows
        cursor = page.last
    assert seen[:5] == ["a0", "a1", "a2", "a3", "a4"] and "a9" in seen


def test_open_forecasts_off_the_page_are_followed_or_known_gone() -> None:
    subjects = [("agent", "a1"), ("agent", "a2"), ("agent", "a3"), ("tenant", "acme"), ("tenant", "beta"), ("x", "y")]
    seen = {("agent", "a2"), ("tenant", "beta")}
    gone, follow = forecast.off_page(subjects, seen, {"agent": False, "tenant": True}, 1)
    assert gone == {("tenant", "acme")}  # the tenants' page saw every budgeted tenant: acme has none now
    assert follow == {"agent": ["a1"]}  # up to the limit; a2 is on the page; an unknown scope is left alone
    assert forecast.off_page(subjects, seen, {"agent": False, "tenant": False}, 5)[1] == {
        "agent": ["a1", "a3"],
        "tenant": ["acme"],
    }
