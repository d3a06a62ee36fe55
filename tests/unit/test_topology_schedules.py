"""The manifest's schedules: valid cron and zone, ticking a `tick: true` topic delivered to their function."""

from __future__ import annotations

import copy
from zoneinfo import ZoneInfo

import pytest
from croniter import croniter

from shared.platform import topology


@pytest.fixture(scope="module")
def manifest() -> topology.Topology:
    return topology.load()


def test_there_are_schedules(manifest: topology.Topology) -> None:
    assert {s.name for s in manifest.schedules} >= {"liveness-sweep", "hourly-summary", "daily-report"}


def test_every_cron_parses(manifest: topology.Topology) -> None:
    for schedule in manifest.schedules:
        assert croniter.is_valid(schedule.cron), schedule.name
        assert len(schedule.cron.split()) == 5, f"{schedule.name}: Cloud Scheduler takes 5-field unix-cron"


def test_every_time_zone_is_a_zoneinfo_zone(manifest: topology.Topology) -> None:
    for schedule in manifest.schedules:
        ZoneInfo(schedule.time_zone)


def test_every_schedule_ticks_a_tick_topic_delivered_to_its_function(manifest: topology.Topology) -> None:
    for schedule in manifest.schedules:
        assert manifest.topic(schedule.topic).tick, schedule.name
        assert schedule.function in {f.name for f in manifest.functions}
        pushes = [s for s in manifest.subscriptions if s.topic == schedule.topic]
        assert [s.push_to for s in pushes] == [schedule.function], schedule.name
        assert not any(s.local_only for s in pushes)
    assert len({s.name for s in manifest.schedules}) == len(manifest.schedules)
    assert all(s.max_age_s > 0 for s in manifest.schedules)


def test_parse_refuses_a_schedule_whose_topic_is_not_delivered_to_its_function(manifest: topology.Topology) -> None:
    data = copy.deepcopy(manifest.raw)
    data["schedules"][0]["function"] = "fleet-api"
    with pytest.raises(ValueError, match="no subscription delivers"):
        topology.parse(data)


def test_parse_refuses_a_schedule_on_a_topic_not_marked_tick(manifest: topology.Topology) -> None:
    data = copy.deepcopy(manifest.raw)
    data["schedules"][0].update(topic="agent-heartbeats", function="fleet-heartbeats")
    with pytest.raises(ValueError, match="tick"):
        topology.parse(data)
