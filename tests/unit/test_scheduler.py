"""The local Cloud Scheduler: fire times (DST included), no bursts, the tick message, the CLI."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from emulators import scheduler
from emulators.scheduler import Clock, Tick, due, load_env, next_fire
from shared.platform.topology import Schedule


def job(cron: str, zone: str = "Etc/UTC", name: str = "job") -> Schedule:
    return Schedule(name=name, cron=cron, time_zone=zone, topic=f"tick-{name}", function="fleet-sweep")


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0, us: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, second, us, tzinfo=UTC)


def test_every_minute() -> None:
    every = job("* * * * *")
    assert next_fire(every, utc(2026, 5, 1, 12, 0, 0)) == utc(2026, 5, 1, 12, 1)
    assert next_fire(every, utc(2026, 5, 1, 12, 0, 59, 999999)) == utc(2026, 5, 1, 12, 1)
    assert len(due(every, utc(2026, 5, 1, 12, 0), utc(2026, 5, 1, 13, 0))) == 60


def test_every_hour() -> None:
    hourly = job("0 * * * *")
    assert next_fire(hourly, utc(2026, 5, 1, 12, 0)) == utc(2026, 5, 1, 13)
    assert next_fire(hourly, utc(2026, 5, 1, 12, 30)) == utc(2026, 5, 1, 13)


def test_daily_at_nine_in_london_keeps_its_local_hour_across_dst() -> None:
    daily = job("0 9 * * *", "Europe/London")
    # Clocks go forward on 2026-03-29 (GMT -> BST): 09:00 local is 09:00Z, then 08:00Z.
    assert due(daily, utc(2026, 3, 27, 12), utc(2026, 3, 30, 12)) == [
        utc(2026, 3, 28, 9),
        utc(2026, 3, 29, 8),
        utc(2026, 3, 30, 8),
    ]
    # Clocks go back on 2026-10-25 (BST -> GMT): 08:00Z, then 09:00Z.
    assert due(daily, utc(2026, 10, 23, 12), utc(2026, 10, 26, 12)) == [
        utc(2026, 10, 24, 8),
        utc(2026, 10, 25, 9),
        utc(2026, 10, 26, 9),
    ]


def test_hourly_in_london_fires_every_real_hour_across_dst() -> None:
    hourly = job("0 * * * *", "Europe/London")
    spring = due(hourly, utc(2026, 3, 28, 22), utc(2026, 3, 29, 4))
    assert spring == [utc(2026, 3, 28, 23) + timedelta(hours=h) for h in range(6)]  # 23 hours that day
    autumn = due(hourly, utc(2026, 10, 24, 22), utc(2026, 10, 25, 4))
    assert autumn == [utc(2026, 10, 24, 23) + timedelta(hours=h) for h in range(6)]  # 01:00 local twice


def test_every_minute_in_london_keeps_going_through_the_repeated_hour() -> None:
    every = job("* * * * *", "Europe/London")
    fires = due(every, utc(2026, 10, 24, 23, 30), utc(2026, 10, 25, 1, 30))
    assert len(fires) == 120 and len(set(fires)) == 120


def test_fixed_local_time_in_the_dst_gap_or_overlap_fires_once() -> None:
    at_0130 = job("30 1 * * *", "Europe/London")
    # 01:30 does not exist on 2026-03-29: it fires when the clocks jump (02:00 BST = 01:00Z).
    assert due(at_0130, utc(2026, 3, 28, 12), utc(2026, 3, 29, 12)) == [utc(2026, 3, 29, 1)]
    # 01:30 happens twice on 2026-10-25: it fires at the first (BST, 00:30Z) only.
    assert due(at_0130, utc(2026, 10, 24, 12), utc(2026, 10, 25, 12)) == [utc(2026, 10, 25, 0, 30)]


def test_next_fire_needs_an_aware_time() -> None:
    with pytest.raises(ValueError):
        next_fire(job("* * * * *"), datetime(2026, 5, 1, 12))


def test_one_tick_per_fire_time() -> None:
    clock = Clock([job("* * * * *")], utc(2026, 5, 1, 12, 0, 30))
    assert clock.step(utc(2026, 5, 1, 12, 0, 59)) == []
    (tick,) = clock.step(utc(2026, 5, 1, 12, 1, 0))
    assert tick.scheduled_at == utc(2026, 5, 1, 12, 1)
    assert clock.step(utc(2026, 5, 1, 12, 1, 0)) == []
    assert clock.step(utc(2026, 5, 1, 12, 1, 30)) == []
    assert len(clock.step(utc(2026, 5, 1, 12, 2, 0, 5))) == 1


def test_no_burst_after_a_long_sleep() -> None:
    every, hourly = job("* * * * *", name="sweep"), job("0 * * * *", name="summary")
    clock = Clock([every, hourly], utc(2026, 5, 1, 12, 0, 30))
    ticks = clock.step(utc(2026, 5, 1, 15, 10, 15))  # the laptop slept 3 hours
    assert sorted((t.job, t.scheduled_at) for t in ticks) == [
        ("summary", utc(2026, 5, 1, 15, 0)),
        ("sweep", utc(2026, 5, 1, 15, 10)),
    ]
    assert clock.skipped == {"sweep": 189, "summary": 2}
    assert clock.next == {"sweep": utc(2026, 5, 1, 15, 11), "summary": utc(2026, 5, 1, 16)}


def test_tick_message_is_what_cloud_scheduler_publishes() -> None:
    tick = Tick("liveness-sweep", "tick-liveness-sweep", utc(2026, 5, 1, 12, 1))
    assert json.loads(tick.data) == {"job": "liveness-sweep", "scheduled_at": "2026-05-01T12:01:00Z"}
    assert tick.data == json.dumps({"job": "liveness-sweep", "scheduled_at": "2026-05-01T12:01:00Z"}).encode()
    assert tick.attributes == {"job": "liveness-sweep"}


def test_run_publishes_due_ticks_and_stops() -> None:
    now = [utc(2026, 5, 1, 12, 0, 59)]
    published: list[Tick] = []
    stop = threading.Event()

    class FakeEvent:
        def is_set(self) -> bool:
            return stop.is_set()

        def wait(self, timeout: float | None = None) -> bool:
            now[0] += timedelta(seconds=timeout or 0)  # sleeping moves the fake clock
            if len(published) >= 3:
                stop.set()
            return stop.is_set()

    def publish(tick: Tick) -> str:
        published.append(tick)
        return str(len(published))

    scheduler.run([job("* * * * *", name="sweep")], publish, FakeEvent(), lambda: now[0])  # type: ignore[arg-type]
    assert [t.scheduled_at for t in published] == [utc(2026, 5, 1, 12, m) for m in (1, 2, 3)]


def test_load_env_reads_the_stack_env_file(tmp_path: Path) -> None:
    (tmp_path / "env").write_text(
        "PUBSUB_EMULATOR_HOST=127.0.0.1:8085\nFLEET_API_KEY='a b$c'\nGOOGLE_CLOUD_PROJECT=p\n"
    )
    env = load_env(tmp_path)
    assert env == {"PUBSUB_EMULATOR_HOST": "127.0.0.1:8085", "FLEET_API_KEY": "a b$c", "GOOGLE_CLOUD_PROJECT": "p"}


def test_tick_of_an_unknown_job_exits_2_with_the_jobs(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert scheduler.main(["tick", "no-such-job", "--state-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no-such-job" in err and "liveness-sweep" in err and "daily-report" in err


def test_tick_without_a_stack_says_how_to_start_it(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert scheduler.main(["tick", "liveness-sweep", "--state-dir", str(tmp_path)]) == 1
    assert "make up" in capsys.readouterr().err
    assert scheduler.main(["run", "--state-dir", str(tmp_path)]) == 1


def test_list_shows_every_job(capsys: pytest.CaptureFixture[str]) -> None:
    assert scheduler.main(["list"]) == 0
    out = capsys.readouterr().out
    for name in ("liveness-sweep", "hourly-summary", "daily-report", "Europe/London"):
        assert name in out
