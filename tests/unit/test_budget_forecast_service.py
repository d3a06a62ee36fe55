"""The budget forecast in the minute job (shared/services/budget_forecasts.py) over fake stores, and the
forecast fields of the usage API (shared/api/costs.py)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from shared.domain import budget_forecast as forecast
from shared.domain.periods import Period
from shared.domain.usage import Totals
from shared.platform import settings
from shared.services import budget_forecasts as service
from shared.store import budget_forecasts as store
from shared.store import episodes as episode_store
from shared.store import usage as usage_store
from tests.unit.test_http_api_costs import World, send, spent, world  # noqa: F401  (the API's fixture)

USD = 1_000_000_000
NOW = datetime(2026, 11, 21, 10, 30, tzinfo=UTC)


def counters(day_usd: float, last_hour: float, this_hour: float) -> dict[str, dict[str, int]]:
    """A month document as stored: the month, the day and two hours."""
    return {
        "m": {"usd_nanos": round(day_usd * USD)},
        "d21": {"usd_nanos": round(day_usd * USD)},
        "h2109": {"usd_nanos": round(last_hour * USD)},
        "h2110": {"usd_nanos": round(this_hour * USD)},
    }


@dataclasses.dataclass
class Fleet:
    tenants: list[tuple[str, dict[str, Any]]] = dataclasses.field(default_factory=list)
    tenant_months: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    #: (agent id, tenant, budget), or with the agent's holds as a fourth item
    agents: list[tuple[Any, ...]] = dataclasses.field(default_factory=list)
    agent_months: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    open: list[tuple[dict[str, Any], Any]] = dataclasses.field(default_factory=list)
    raised: list[Any] = dataclasses.field(default_factory=list)
    resolved: list[tuple[dict[str, Any], Any, Any]] = dataclasses.field(default_factory=list)
    #: The occurrence markers: key -> the occurrence its next forecast opens as
    markers: dict[str, int] = dataclasses.field(default_factory=dict)
    markers_asked: list[list[str]] = dataclasses.field(default_factory=list)
    months_asked: list[tuple[list[str], str]] = dataclasses.field(default_factory=list)
    cursor: dict[str, Any] = dataclasses.field(default_factory=lambda: {"tenant": None, "agent": None})
    cursor_writes: int = 0
    listed: list[tuple[str, list[str]]] = dataclasses.field(default_factory=list)
    followed: list[tuple[str, list[str]]] = dataclasses.field(default_factory=list)


def listing(kind: str, rows: list[store.Budgeted], fleet: Fleet) -> Any:
    """The store's paged listing over ``rows``: in document-id order, after the cursor's id, ``limit`` rows."""

    def page(limit: int, after: dict[str, Any] | None = None) -> list[store.Budgeted]:
        ordered = sorted(rows, key=lambda row: row.doc_id)
        found = [row for row in ordered if after is None or row.doc_id > after["id"]][:limit]
        fleet.listed.append((kind, [row.subject for row in found]))
        return found

    return page


def save_cursors(fleet: Fleet, values: dict[str, Any]) -> None:
    fleet.cursor = dict(values)
    fleet.cursor_writes += 1


@pytest.fixture
def fleet(monkeypatch: pytest.MonkeyPatch) -> Fleet:
    f = Fleet()

    def agent_months(ids: list[str], month: str) -> dict[str, dict[str, Any]]:
        f.months_asked.append((list(ids), month))
        return {a: f.agent_months[a] for a in ids if a in f.agent_months}

    def tenants(limit: int, after: dict[str, Any] | None = None) -> list[store.Budgeted]:
        rows = [store.Budgeted(t, t, t, budget, {}) for t, budget in f.tenants]
        return listing("tenant", rows, f)(limit, after)

    def agents(limit: int, after: dict[str, Any] | None = None) -> list[store.Budgeted]:
        rows = [store.Budgeted(a[0], a[0], a[1], a[2], a[3] if len(a) > 3 else {}) for a in f.agents]
        return listing("agent", rows, f)(limit, after)

    monkeypatch.setattr(store, "tenants_with_budget", tenants)
    monkeypatch.setattr(store, "tenant_month", lambda t, now, shards: forecast.month_fields(f.tenant_months.get(t, {})))
    monkeypatch.setattr(store, "agents_with_budget", agents)

    def budgeted(kind: str, ids: list[str]) -> list[store.Budgeted]:
        f.followed.append((kind, list(ids)))
        rows = tenants(10_000) if kind == "tenant" else agents(10_000)
        f.listed.pop()
        return [row for row in rows if row.subject in ids]

    monkeypatch.setattr(store, "budgeted", budgeted)
    monkeypatch.setattr(store, "cursors", lambda: dict(f.cursor))
    monkeypatch.setattr(store, "save_cursors", lambda values, now: save_cursors(f, values))
    monkeypatch.setattr(usage_store, "agent_months", agent_months)
    monkeypatch.setattr(store, "open_episodes", lambda limit: f.open[:limit])
    monkeypatch.setattr(episode_store, "raise_once", lambda alert: f.raised.append(alert) or True)

    def resolve(episode: dict[str, Any], update_time: Any, write: Any, key: str, following: int, now: Any) -> bool:
        f.resolved.append((episode, update_time, write))
        f.markers[key] = max(f.markers.get(key, 1), following)
        return True

    def occurrences(keys: list[str]) -> dict[str, int]:
        f.markers_asked.append(list(keys))
        return {key: f.markers.get(key, 1) for key in keys}

    monkeypatch.setattr(store, "resolve", resolve)
    monkeypatch.setattr(store, "occurrences", occurrences)
    return f


def test_a_budget_projected_within_the_horizon_opens_a_warning_until_its_period_resets(fleet: Fleet) -> None:
    # The agent spends $2 an hour with $4 of its $10 a day left... ($6 spent): 2 hours.
    fleet.agents = [("a1", "acme", {"daily_usd": "10"}), ("a2", "acme", {"daily_usd": "100"})]
    fleet.agent_months = {"a1": counters(6, 2, 1), "a2": counters(6, 2, 1)}
    # The tenant spends $3 an hour with $5 of $20 left: 1 h 40 min.
    fleet.tenants = [("acme", {"daily_usd": "20"})]
    fleet.tenant_months = {"acme": counters(15, 3, 1.5)}
    out = service.run(NOW)
    assert out == {"tenants": 1, "agents": 2, "held": 0, "listed": 3, "followed": 0, "opening": 2, "opened": 2,
                   "resolved": 0,
                   "rounds_ended": ["tenant", "agent"]}  # fmt: skip
    assert fleet.months_asked == [(["a1", "a2"], "2026-11")]
    by_id = {a.id: a for a in fleet.raised}
    agent = by_id["budget_forecast.agent.a1.daily_usd.2026-11-21.10000000000.1"]
    assert agent.kind == "budget_forecast" and agent.severity.value == "warning"
    assert agent.tenant == "acme" and agent.agent_id == "a1"
    assert agent.until == datetime(2026, 11, 22, tzinfo=UTC)
    assert "12:30 UTC" in agent.message and "$2.00/h" in agent.message
    tenant = by_id["budget_forecast.tenant.acme.daily_usd.2026-11-21.20000000000.1"]
    assert tenant.agent_id is None and tenant.details["projected_at"] == "2026-11-21T12:10:00+00:00"


def test_an_open_forecast_resolves_once_the_budget_is_raised(fleet: Fleet) -> None:
    fleet.agents = [("a1", "acme", {"daily_usd": "10"})]
    fleet.agent_months = {"a1": counters(6, 2, 1)}
    service.run(NOW)
    opened = fleet.raised[0]
    episode = {"id": opened.id, "rule": opened.kind, "severity": "warning", "tenant": "acme", "agent_id": "a1",
               "title": "t", "opened_at": NOW, "details": opened.details}  # fmt: skip
    fleet.open = [(episode, "update-time-1")]
    fleet.agents = [("a1", "acme", {"daily_usd": "50"})]
    out = service.run(NOW + timedelta(minutes=1))
    assert out["resolved"] == 1 and out["opened"] == 0
    resolved, update_time, write = fleet.resolved[0]
    assert resolved["id"] == opened.id and update_time == "update-time-1"
    assert write.fields["state"] == "resolved" and write.notice is not None
    assert "not before the period resets" in write.fields["resolution"]


def test_forecasts_off_read_nothing(fleet: Fleet, monkeypatch: pytest.MonkeyPatch) -> None:
    off = dataclasses.replace(settings.get(), budget_forecast_horizon_s=0)
    monkeypatch.setattr(settings, "get", lambda: off)
    monkeypatch.setattr(store, "cursors", lambda: pytest.fail("read while off"))
    assert service.run(NOW) == {"off": True}


def test_the_usage_api_shows_the_rate_and_projection_per_period(world: World) -> None:  # noqa: F811
    world.agents["agent-a1"] = world.agents["agent-a1"].model_copy(update={"budget": {"daily_usd": "10"}})
    # $1 in this hour's first 30 minutes, $3 today: $2 an hour, $7 left: 3 h 30 min.
    world.usage["agent-a1"] = {Period.HOUR: spent(1), Period.DAY: spent(3), Period.MONTH: spent(3)}
    reply = send("/v1/agents/agent-a1/usage", who="acme-viewer")
    assert reply.status == 200, reply.text
    day, hour = reply.json["periods"]["day"], reply.json["periods"]["hour"]
    assert day["rate_usd_per_hour"] == "2" and day["projected_limit_at"] == "2026-11-21T14:00:00Z"
    assert hour["projected_limit_at"] is None and reply.json["periods"]["month"]["projected_limit_at"] is None
    world.tenant_usage["acme"] = {Period.DAY: Totals(usd_nanos=USD)}
    tenant = send("/v1/tenants/acme/usage", who="acme-viewer").json["periods"]["day"]
    assert tenant["rate_usd_per_hour"] == "0" and tenant["projected_limit_at"] is None


def test_the_usage_api_projects_nothing_for_a_held_agent(world: World) -> None:  # noqa: F811
    world.agents["agent-a1"] = world.agents["agent-a1"].model_copy(update={"budget": {"daily_usd": "10"}})
    world.usage["agent-a1"] = {Period.HOUR: spent(1), Period.DAY: spent(3), Period.MONTH: spent(3)}
    before = send("/v1/agents/agent-a1/usage", who="acme-viewer").json["periods"]["day"]
    assert before["projected_limit_at"] == "2026-11-21T14:00:00Z"
    paused = {"pause": {"command": "pause", "reason": "r", "by": "api:x", "at": NOW.isoformat()}}
    world.agents["agent-a1"] = world.agents["agent-a1"].model_copy(update={"holds": paused})
    reply = send("/v1/agents/agent-a1/usage", who="acme-viewer")
    assert reply.status == 200, reply.text
    day = reply.json["periods"]["day"]
    # Held, it spends nothing (the minute job does not forecast it either); its recent rate is still shown.
    assert day["projected_limit_at"] is None and day["rate_usd_per_hour"] == "2" and "pause" in reply.json["holds"]


def test_a_budget_that_no_longer_validates_skips_its_subject_not_the_tick(fleet: Fleet) -> None:
    fleet.agents = [("bad", "acme", {"daily_usd": "-5", "nonsense": 1}), ("a1", "acme", {"daily_usd": "10"})]
    fleet.agent_months = {"a1": counters(6, 2, 1), "bad": counters(6, 2, 1)}
    out = service.run(NOW)
    assert (out["tenants"], out["agents"], out["opened"], out["resolved"]) == (0, 1, 1, 0)


def test_a_failure_of_the_forecast_never_fails_the_minute_job(fleet: Fleet, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(limit: int, after: Any = None) -> Any:
        raise RuntimeError("Firestore said no")

    monkeypatch.setattr(store, "tenants_with_budget", broken)
    assert service.run(NOW) == {"failed": "RuntimeError"}


def test_an_open_forecast_resolves_when_its_budget_is_removed(fleet: Fleet, monkeypatch: pytest.MonkeyPatch) -> None:
    fleet.agents = [("a1", "acme", {"daily_usd": "10"})]
    fleet.agent_months = {"a1": counters(6, 2, 1)}
    service.run(NOW)
    opened = fleet.raised[0]
    episode = {"id": opened.id, "rule": opened.kind, "severity": "warning", "tenant": "acme", "agent_id": "a1",
               "title": "t", "opened_at": NOW, "details": opened.details}  # fmt: skip
    fleet.open = [(episode, "update-time-1")]
    fleet.agents = []  # the budget removed: the agent leaves the "has a budget" listing
    monkeypatch.setattr(service, "PAGE_AGENTS", 1)
    out = service.run(NOW + timedelta(minutes=1))
    assert out["resolved"] == 1 and "no longer forecast" in fleet.resolved[0][2].fields["resolution"]
    # A page cut at its size cannot tell a removed budget from one on another page: the subject is read
    # by id, and found without a budget.
    fleet.resolved.clear()
    fleet.agents = [("a2", "acme", {"daily_usd": "10"}), ("a3", "acme", {"daily_usd": "10"})]
    out = service.run(NOW + timedelta(minutes=2))
    assert out["followed"] == 1 and fleet.followed[-1] == ("agent", ["a1"])
    assert out["resolved"] == 1 and "no longer forecast" in fleet.resolved[0][2].fields["resolution"]


def test_an_open_forecast_follows_its_subject_every_tick_whatever_the_rotation(
    fleet: Fleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(service, "PAGE_AGENTS", 1)
    fleet.agents = [("a0", "acme", {"daily_usd": "100"}), ("a1", "acme", {"daily_usd": "10"}),
                    ("a2", "acme", {"daily_usd": "100"})]  # fmt: skip
    fleet.agent_months = {a: counters(6, 2, 1) for a in ("a0", "a1", "a2")}
    for minute in range(2):  # a0's turn, then a1's: its forecast opens
        service.run(NOW + timedelta(minutes=minute))
    opened = fleet.raised[0]
    assert opened.agent_id == "a1"
    episode = {"id": opened.id, "rule": opened.kind, "severity": "warning", "tenant": "acme", "agent_id": "a1",
               "title": "t", "opened_at": NOW, "details": opened.details}  # fmt: skip
    fleet.open = [(episode, "update-time-1")]
    # a2's turn: a1 is read by id and evaluated too; still inside the horizon, its forecast stays open.
    out = service.run(NOW + timedelta(minutes=2))
    assert out["followed"] == 1 and out["agents"] == 2 and out["resolved"] == 0
    assert fleet.months_asked[-1] == (["a2", "a1"], "2026-11")
    # The budget raised: at a0's turn (a round later for a1) its forecast resolves all the same.
    fleet.agents[1] = ("a1", "acme", {"daily_usd": "50"})
    out = service.run(NOW + timedelta(minutes=3))
    assert out["resolved"] == 1 and "not before the period resets" in fleet.resolved[0][2].fields["resolution"]
    # Held, it is not projected and its forecast resolves the same way.
    fleet.resolved.clear()
    fleet.agents[1] = ("a1", "acme", {"daily_usd": "10"}, {"quarantine": {}})
    out = service.run(NOW + timedelta(minutes=4))
    assert out["held"] == 1 and "held (quarantine)" in fleet.resolved[0][2].fields["resolution"]


def test_successive_ticks_forecast_every_agent_a_page_at_a_time(fleet: Fleet, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(service, "PAGE_AGENTS", 2)
    fleet.agents = [(f"a{i}", "acme", {"daily_usd": "10"}) for i in range(5)]
    fleet.agent_months = {f"a{i}": counters(6, 2, 1) for i in range(5)}
    outs = [service.run(NOW + timedelta(minutes=m)) for m in range(4)]
    assert [o["agents"] for o in outs] == [2, 2, 1, 2]
    asked = [ids for ids, _ in fleet.months_asked]
    assert asked == [["a0", "a1"], ["a2", "a3"], ["a4"], ["a0", "a1"]]
    # Each listing asks one row more than a page (whether more follow); the round ends on the short page.
    assert [len(rows) for kind, rows in fleet.listed if kind == "agent"] == [3, 3, 1, 3]
    assert ["agent" in o["rounds_ended"] for o in outs] == [False, False, True, False]
    assert {a.agent_id for a in fleet.raised} == {f"a{i}" for i in range(5)}
    # The cursor is written when it moves only: the tenants' stays at the first (no tenant has a budget).
    assert fleet.cursor_writes == 4 and fleet.cursor["tenant"] is None and fleet.cursor["agent"]["id"] == "a1"


def test_a_tick_with_everything_on_one_page_writes_no_cursor(fleet: Fleet) -> None:
    fleet.agents = [("a1", "acme", {"daily_usd": "10"})]
    fleet.agent_months = {"a1": counters(6, 2, 1)}
    service.run(NOW)
    service.run(NOW + timedelta(minutes=1))
    assert fleet.cursor_writes == 0


def test_a_held_agent_is_not_forecast_and_its_open_forecast_resolves(fleet: Fleet) -> None:
    fleet.agents = [("a1", "acme", {"daily_usd": "10"})]
    fleet.agent_months = {"a1": counters(6, 2, 1)}
    service.run(NOW)
    opened = fleet.raised[0]
    episode = {"id": opened.id, "rule": opened.kind, "severity": "warning", "tenant": "acme", "agent_id": "a1",
               "title": "t", "opened_at": NOW, "details": opened.details}  # fmt: skip
    fleet.open = [(episode, "update-time-1")]
    fleet.agents = [("a1", "acme", {"daily_usd": "10"}, {"pause": {"command": "pause"}})]
    fleet.months_asked.clear()
    out = service.run(NOW + timedelta(minutes=1))
    assert out["held"] == 1 and out["agents"] == 0 and out["resolved"] == 1 and out["opened"] == 0
    assert "held (pause)" in fleet.resolved[0][2].fields["resolution"]
    assert fleet.months_asked == [([], "2026-11")]  # its counters are not read


def test_ticks_either_side_of_an_hour_open_one_episode_id(fleet: Fleet) -> None:
    fleet.agents = [("a1", "acme", {"daily_usd": "10"})]
    fleet.agent_months = {"a1": counters(8, 2, 2)}  # $2 left at $2 an hour, from either side of 11:00
    # Two instances' ticks at 10:59:59 and 11:00:00 that neither saw the other's episode.
    service.run(NOW.replace(minute=59, second=59))
    service.run(NOW.replace(hour=11, minute=0))
    assert len(fleet.raised) == 2 and fleet.raised[0].id == fleet.raised[1].id
