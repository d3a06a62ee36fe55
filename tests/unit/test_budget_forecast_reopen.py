"""A budget forecast warns again in its period (shared/services/budget_forecasts.py): after it resolved, a
later run-out of the same budget in the same day opens the next occurrence; concurrent ticks open one.

The stores are faked with their contracts: an episode is created once under its id (``raise_once``), a
resolution is written only if the episode is as read and raises its key's occurrence marker in the same
write (``store.resolve``), and the markers are read for the keys about to open (``store.occurrences``)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import pytest

from shared.domain import budget_forecast as forecast
from shared.domain import episodes as episode_rules
from shared.domain.alerts import Alert
from shared.services import budget_forecasts as service
from shared.store import budget_forecasts as store
from shared.store import episodes as episode_store
from shared.store import usage as usage_store
from tests.unit.test_budget_forecast_service import NOW, counters

KEY = "agent.a1.daily_usd.2026-11-21"
FIRST = f"budget_forecast.{KEY}.10000000000.1"
SECOND = f"budget_forecast.{KEY}.10000000000.2"
#: $6 of $10 spent at $2 an hour: 2 hours left, inside the 3-hour horizon.
FAST = counters(6, 2, 1)
#: $6 of $10 spent at 10 cents an hour: not before the day resets.
SLOW = counters(6, 0.1, 0.05)


@dataclasses.dataclass
class World:
    """One agent with a $10 daily budget, the episodes and occurrence markers as Firestore would keep them."""

    month: dict[str, Any] = dataclasses.field(default_factory=lambda: dict(FAST))
    holds: dict[str, Any] = dataclasses.field(default_factory=dict)
    #: id -> (episode, update time)
    episodes: dict[str, tuple[dict[str, Any], int]] = dataclasses.field(default_factory=dict)
    markers: dict[str, int] = dataclasses.field(default_factory=dict)
    creates_refused: int = 0
    resolutions_refused: int = 0
    clock: int = 0
    #: Runs inside the next marker read (a tick that reads between this one's reads and writes), once.
    between: Callable[[], None] | None = None

    def ids(self, state: str) -> list[str]:
        return sorted(i for i, (e, _) in self.episodes.items() if e["state"] == state)


@pytest.fixture
def world(monkeypatch: pytest.MonkeyPatch) -> World:
    w = World()
    budgeted = [store.Budgeted("a1", "a1", "acme", {"daily_usd": "10"}, {})]

    def agents(limit: int, after: Any = None) -> list[store.Budgeted]:
        return [row._replace(holds=dict(w.holds)) for row in budgeted] if after is None else []

    def open_episodes(limit: int) -> list[tuple[dict[str, Any], Any]]:
        return [(dict(e), t) for e, t in w.episodes.values() if e["state"] == "open"][:limit]

    def occurrences(keys: list[str]) -> dict[str, int]:
        found = {key: w.markers.get(key, 1) for key in keys}
        if w.between is not None:
            run, w.between = w.between, None
            run()
        return found

    def raise_once(alert: Alert) -> bool:
        if alert.id in w.episodes:
            w.creates_refused += 1
            return False
        w.clock += 1
        episode = {"id": alert.id, "rule": alert.kind, "severity": "warning", "tenant": alert.tenant,
                   "agent_id": alert.agent_id, "title": "t", "opened_at": alert.at, "state": "open",
                   "details": alert.details}  # fmt: skip
        w.episodes[alert.id] = (episode, w.clock)
        return True

    def resolve(episode: dict[str, Any], update_time: Any, write: episode_rules.EpisodeWrite, key: str,
                following: int, now: datetime) -> bool:  # fmt: skip
        current, time = w.episodes[episode["id"]]
        if time != update_time:
            w.resolutions_refused += 1
            return False
        w.clock += 1
        w.episodes[episode["id"]] = ({**current, **write.fields}, w.clock)
        w.markers[key] = max(w.markers.get(key, 1), following)
        return True

    monkeypatch.setattr(store, "tenants_with_budget", lambda limit, after=None: [])
    monkeypatch.setattr(store, "agents_with_budget", agents)
    monkeypatch.setattr(store, "budgeted", lambda kind, ids: [])
    monkeypatch.setattr(store, "cursors", lambda: {"tenant": None, "agent": None})
    monkeypatch.setattr(store, "save_cursors", lambda values, now: None)
    monkeypatch.setattr(store, "open_episodes", open_episodes)
    monkeypatch.setattr(store, "occurrences", occurrences)
    monkeypatch.setattr(store, "resolve", resolve)
    monkeypatch.setattr(episode_store, "raise_once", raise_once)
    monkeypatch.setattr(usage_store, "agent_months", lambda ids, month: {a: w.month for a in ids})
    return w


def tick(minute: int) -> dict[str, Any]:
    return service.run(NOW + timedelta(minutes=minute))


def test_a_forecast_that_resolved_when_the_rate_fell_opens_again_when_it_rises_the_same_day(world: World) -> None:
    assert tick(0)["opened"] == 1 and world.ids("open") == [FIRST]
    assert world.episodes[FIRST][0]["details"]["occurrence"] == 1
    world.month = dict(SLOW)
    assert tick(1)["resolved"] == 1 and world.ids("resolved") == [FIRST] and world.markers == {KEY: 2}
    assert tick(2)["opened"] == 0  # still slow: nothing opens, nothing is read for it
    world.month = dict(FAST)
    out = tick(3)
    assert out["opened"] == 1 and world.ids("open") == [SECOND] and world.creates_refused == 0
    assert world.episodes[SECOND][0]["details"]["occurrence"] == 2
    assert tick(4)["opened"] == 0 and world.ids("open") == [SECOND]  # open: no third


def test_a_held_agent_s_forecast_opens_again_once_it_is_released(world: World) -> None:
    tick(0)
    world.holds = {"breaker": {"opened_at": "10:31"}}
    out = tick(1)
    assert out["held"] == 1 and out["resolved"] == 1 and world.ids("resolved") == [FIRST]
    world.holds = {}
    out = tick(2)
    assert out["opened"] == 1 and world.ids("open") == [SECOND]


def test_two_ticks_at_once_open_one_episode(world: World) -> None:
    # The second tick reads and writes between the first one's reads and its create: both read the same
    # occurrence, so they build the same id and the later create is refused.
    outs: list[dict[str, Any]] = []
    world.between = lambda: outs.append(tick(0))
    outs.append(tick(0))
    assert [o["opened"] for o in outs] == [1, 0] and world.ids("open") == [FIRST] and world.creates_refused == 1
    # The same at the resolution: one of two ticks resolves it and moves the marker once; the run-out
    # coming back opens the second occurrence once.
    world.month = dict(SLOW)
    first_read = store.open_episodes(10)
    world.between = None
    assert tick(1)["resolved"] == 1
    write = episode_rules.resolution(first_read[0][0], NOW, "late")
    assert not store.resolve(first_read[0][0], first_read[0][1], write, KEY, 2, NOW)  # read before: refused
    assert world.resolutions_refused == 1 and world.markers == {KEY: 2}
    world.month = dict(FAST)
    world.between = lambda: outs.append(tick(2))
    outs.append(tick(2))
    assert [o["opened"] for o in outs[2:]] == [1, 0] and world.ids("open") == [SECOND]


def test_a_tick_that_missed_the_resolution_cannot_reopen_the_resolved_occurrence(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A tick that listed no open forecast and read the marker before the first was created and resolved
    # builds the first occurrence's id again: the create is refused (no second episode for one breach).
    tick(0)
    world.month = dict(SLOW)
    tick(1)
    world.month = dict(FAST)
    with monkeypatch.context() as stale:
        stale.setattr(store, "occurrences", lambda keys: dict.fromkeys(keys, 1))  # the marker as it was
        assert tick(2)["opened"] == 0 and world.creates_refused == 1 and world.ids("open") == []
    assert tick(3)["opened"] == 1 and world.ids("open") == [SECOND]


def test_the_marker_is_read_only_for_keys_about_to_open(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[list[str]] = []
    original = store.occurrences
    monkeypatch.setattr(store, "occurrences", lambda keys: asked.append(list(keys)) or original(keys))
    tick(0)
    tick(1)  # open already: nothing to read
    world.month = dict(SLOW)
    tick(2)
    assert asked == [[KEY], [], []]
    assert forecast.next_occurrence({"next": world.markers[KEY]}) == 2
