"""The local Cloud Scheduler: fires the `schedules` of topology.yaml on the running local stack.

    python -m emulators.scheduler run  [--state-dir .stack]   # what `make up` starts
    python -m emulators.scheduler tick <job> [--state-dir .stack]   # one tick now (`make tick JOB=...`)
    python -m emulators.scheduler list                        # jobs, cron, zone, next fire time

A tick is what the Cloud Scheduler job Terraform creates publishes: a Pub/Sub message on the job's
topic with the JSON body ``{"job": <name>, "scheduled_at": <ISO 8601>}`` and the attribute
``job=<name>``. Cron times are wall-clock times in the job's ``time_zone`` (croniter + zoneinfo):
across a daylight-saving change a daily job keeps its local hour; a local time skipped when the
clocks go forward fires when they jump; a fixed local time that occurs twice when they go back
fires once, while minute and hour wildcards fire in both passes (as cron does).

``run`` fires each job at most once per fire time, and once (not a burst) when the machine slept
through several; SIGTERM or Ctrl-C stops it between ticks. ``run`` and ``tick`` read the stack's
environment (``PUBSUB_EMULATOR_HOST``, ``GOOGLE_CLOUD_PROJECT``) from ``<state-dir>/env``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import signal
import sys
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any
from zoneinfo import ZoneInfo

from emulators.stack import DEFAULT_PROJECT
from shared.platform import topology as topology_mod
from shared.platform.logs import get_logger, log
from shared.platform.topology import Schedule

ROOT = Path(__file__).resolve().parent.parent
NOT_RUNNING = "the local stack is not running; start it with `make up`"
#: Longest single sleep of `run` (it re-reads the clock after each, so a changed clock is noticed).
MAX_SLEEP_S = 30.0


# --- pure: fire times and tick messages -------------------------------------------------------------


def _wildcard(cron: str) -> bool:
    """cron's rule: a job whose minute or hour field starts with '*' runs on the clock as it is (both
    passes of a repeated hour); one at a fixed local time runs once."""
    fields = cron.split()
    return len(fields) < 2 or fields[0].startswith("*") or fields[1].startswith("*")


def _second_pass(moment: datetime, zone: ZoneInfo) -> bool:
    """True when ``moment`` is the second occurrence of its local wall-clock time (clocks went back)."""
    local = moment.astimezone(zone)
    return local.fold == 1 and local.replace(fold=0).utcoffset() != local.utcoffset()


def next_fire(schedule: Schedule, after: datetime) -> datetime:
    """The first fire time of ``schedule`` strictly after ``after`` (timezone-aware), in UTC."""
    from croniter import croniter

    if after.tzinfo is None:
        raise ValueError("`after` must be timezone-aware")
    zone = ZoneInfo(schedule.time_zone)
    fixed_time = not _wildcard(schedule.cron)
    times = croniter(schedule.cron, after.astimezone(zone))
    while True:
        candidate: datetime = times.get_next(datetime)
        if candidate <= after:
            continue
        if fixed_time and _second_pass(candidate, zone):
            continue
        return candidate.astimezone(UTC)


def due(schedule: Schedule, since: datetime, until: datetime) -> list[datetime]:
    """Every fire time in ``(since, until]``, oldest first."""
    times: list[datetime] = []
    moment = next_fire(schedule, since)
    while moment <= until:
        times.append(moment)
        moment = next_fire(schedule, moment)
    return times


@dataclass(frozen=True)
class Tick:
    job: str
    topic: str
    scheduled_at: datetime

    @property
    def data(self) -> bytes:
        """The message body: what the Cloud Scheduler job's ``pubsub_target.data`` decodes to."""
        return json.dumps({"job": self.job, "scheduled_at": _iso(self.scheduled_at)}).encode()

    @property
    def attributes(self) -> dict[str, str]:
        return {"job": self.job}


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


class Clock:
    """Which ticks are due: at most one per job per fire time, one after a long sleep (not a burst)."""

    def __init__(self, schedules: Iterable[Schedule], now: datetime) -> None:
        self.schedules = tuple(schedules)
        self.next: dict[str, datetime] = {job.name: next_fire(job, now) for job in self.schedules}
        #: Fire times skipped because the process slept past them, per job.
        self.skipped: dict[str, int] = {job.name: 0 for job in self.schedules}

    def wake_at(self) -> datetime | None:
        return min(self.next.values(), default=None)

    def step(self, now: datetime) -> list[Tick]:
        """The ticks to publish at ``now``: each job whose next fire time has come, once, for the
        latest of its fire times that passed."""
        ticks = []
        for job in self.schedules:
            if self.next[job.name] > now:
                continue
            missed = due(job, self.next[job.name], now)
            latest = missed[-1] if missed else self.next[job.name]
            self.skipped[job.name] += len(missed)
            ticks.append(Tick(job.name, job.topic, latest))
            self.next[job.name] = next_fire(job, now)
        return ticks


# --- the stack: environment and publishing -----------------------------------------------------------


class StackNotRunning(Exception):
    pass


def load_env(state_dir: Path) -> dict[str, str]:
    """The stack's environment from ``<state-dir>/env`` (KEY=shell-quoted value lines)."""
    env_file = state_dir / "env"
    if not env_file.exists():
        raise StackNotRunning(NOT_RUNNING)
    env: dict[str, str] = {}
    for line in env_file.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        parts = shlex.split(value)
        env[key.strip()] = parts[0] if parts else ""
    if "PUBSUB_EMULATOR_HOST" not in env:
        raise StackNotRunning(f"{env_file} has no PUBSUB_EMULATOR_HOST; {NOT_RUNNING}")
    return env


class Publisher:
    """Publishes ticks with the real Pub/Sub client (to the emulator of the loaded environment)."""

    @classmethod
    def for_stack(cls, state_dir: Path) -> Publisher | None:
        """A publisher to the running stack's emulator, its environment loaded into ``os.environ``;
        None (and why, on stderr) when the stack is not running."""
        try:
            env = load_env(state_dir)
        except StackNotRunning as exc:
            print(exc, file=sys.stderr)
            return None
        os.environ.update(env)
        return cls(env.get("GOOGLE_CLOUD_PROJECT", DEFAULT_PROJECT))

    def __init__(self, project: str) -> None:
        from google.cloud.pubsub_v1 import PublisherClient

        self.project = project
        self._client = PublisherClient()

    def __call__(self, tick: Tick) -> str:
        path = self._client.topic_path(self.project, tick.topic)
        return str(self._client.publish(path, tick.data, **tick.attributes).result(timeout=30))


def _log_tick(tick: Tick, message_id: str, skipped: int = 0) -> None:
    fields: dict[str, Any] = {
        "job": tick.job,
        "topic": tick.topic,
        "scheduled_at": _iso(tick.scheduled_at),
        "message_id": message_id,
    }
    if skipped:
        fields["skipped_fire_times"] = skipped
    log(get_logger("scheduler"), f"tick {tick.job}", **fields)


def run(
    schedules: Sequence[Schedule],
    publish: Callable[[Tick], str],
    stop: threading.Event,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> None:
    """Publish each job's ticks on time until ``stop`` is set."""
    clock = Clock(schedules, now())
    logger = get_logger("scheduler")
    log(logger, "scheduler running", jobs=[job.name for job in schedules])
    while not stop.is_set():
        wake = clock.wake_at()
        if wake is None:
            stop.wait()
            break
        wait = (wake - now()).total_seconds()
        if wait > 0:
            stop.wait(min(wait, MAX_SLEEP_S))
            continue
        current = now()
        before = dict(clock.skipped)
        for tick in clock.step(current):
            # Fire times passed over (the machine slept) besides the one this tick stands for.
            skipped = clock.skipped[tick.job] - before[tick.job]
            try:
                message_id = publish(tick)
            except Exception as exc:  # the emulator went away: say so, keep the schedule
                log(logger, f"tick {tick.job} not published: {exc}", level=logging.ERROR, job=tick.job)
                continue
            _log_tick(tick, message_id, skipped)
    log(logger, "scheduler stopped")


# --- command line -----------------------------------------------------------------------------------


def _jobs_text(schedules: Sequence[Schedule]) -> str:
    return ", ".join(job.name for job in schedules)


def _tick_now(name: str, schedules: Sequence[Schedule], state_dir: Path) -> int:
    names = {job.name: job for job in schedules}
    if name not in names:
        print(f"unknown job {name!r}; jobs: {_jobs_text(schedules)}", file=sys.stderr)
        return 2
    publisher = Publisher.for_stack(state_dir)
    if publisher is None:
        return 1
    job = names[name]
    tick = Tick(job.name, job.topic, datetime.now(UTC).replace(microsecond=0))
    _log_tick(tick, publisher(tick))
    return 0


def _run_forever(schedules: Sequence[Schedule], state_dir: Path) -> int:
    publisher = Publisher.for_stack(state_dir)
    if publisher is None:
        return 1
    stop = threading.Event()

    def _stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    run(schedules, publisher, stop)
    return 0


def _list(schedules: Sequence[Schedule]) -> int:
    now = datetime.now(UTC)
    rows = [("job", "cron", "time zone", "next fire (UTC)", "next fire (local)")]
    for job in schedules:
        moment = next_fire(job, now)
        local = moment.astimezone(ZoneInfo(job.time_zone))
        rows.append((job.name, job.cron, job.time_zone, _iso(moment), local.strftime("%Y-%m-%d %H:%M %Z")))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="emulators.scheduler", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run_cmd = commands.add_parser("run", help="fire every job on its schedule until stopped")
    tick_cmd = commands.add_parser("tick", help="publish one tick of a job now")
    tick_cmd.add_argument("job", nargs="?", help="the job's name (see `list`)")
    commands.add_parser("list", help="jobs, their schedule and next fire time")
    for sub in (run_cmd, tick_cmd):
        sub.add_argument("--state-dir", type=Path, default=ROOT / ".stack", help="the stack's state folder")
    args = parser.parse_args(argv)
    schedules = topology_mod.load().schedules
    if args.command == "list":
        return _list(schedules)
    if args.command == "tick":
        if not args.job:
            print(f"usage: make tick JOB=<job>; jobs: {_jobs_text(schedules)}", file=sys.stderr)
            return 2
        return _tick_now(args.job, schedules, args.state_dir)
    return _run_forever(schedules, args.state_dir)


if __name__ == "__main__":
    sys.exit(main())
