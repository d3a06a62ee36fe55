"""The throttle (sdk/fleet_agent/cost_holds.py): the recorder's own admission refuses calls beyond the cap
in any minute, for ``recorder.call`` and for the integrations (``Pending``), until the window frees a place,
the throttle's ``until`` passes, or a ``resume_work`` lifts it. Time is moved, never slept."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from fleet_agent.call_records import Call, CallRefused
from fleet_agent.contracts import Command, CommandType
from fleet_agent.costs import CostRecorder
from fleet_agent.integrations.calls import admit_async
from fleet_agent.integrations.pending import Pending

from tests.unit.test_sdk_costs import Clock, FakePublisher
from tests.unit.test_sdk_lease_recorder import lease

T0 = datetime(2026, 12, 6, 12, tzinfo=UTC)


class Ticks:
    """The recorder's monotonic clock, moved by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def world() -> Iterator[tuple[CostRecorder, Clock, Ticks, FakePublisher]]:
    clock, ticks, publisher = Clock(T0), Ticks(), FakePublisher()
    rec = CostRecorder("agent-1", publisher, "projects/p/topics/agent-costs", clock=clock, monotonic=ticks)
    yield rec, clock, ticks, publisher
    rec.close(timeout=1)


def throttle(cap: int | None, *, at: datetime = T0, until_s: float | None = 600, n: int = 1) -> Command:
    until = None if until_s is None else at + timedelta(seconds=until_s)
    return Command(agent_id="agent-1", command=CommandType.THROTTLE, reason="error rate", issued_at=at,
                   command_id=f"throttle-{n}", calls_per_minute=cap, until=until)  # fmt: skip


def resume_work(at: datetime, n: int = 1) -> Command:
    return Command(agent_id="agent-1", command=CommandType.RESUME_WORK, issued_at=at, command_id=f"resume-work-{n}")


def call(rec: CostRecorder) -> None:
    with rec.call("chat", model="gpt-4o") as c:
        c.tokens(10, 5)


def calls_made(rec: CostRecorder, tries: int) -> int:
    made = 0
    for _ in range(tries):
        try:
            call(rec)
        except CallRefused:
            continue
        made += 1
    return made


def test_calls_beyond_the_cap_are_refused_until_the_window_frees_a_place(world) -> None:
    rec, _, ticks, _ = world
    rec.apply(throttle(3))
    assert rec.throttle == 3
    assert calls_made(rec, 5) == 3
    with pytest.raises(CallRefused, match="throttled: 3 calls/min") as refused:
        call(rec)
    assert refused.value.reason == "throttled"
    assert refused.value.until == T0 + timedelta(seconds=60), "when the oldest call leaves the window"
    ticks.now += 30
    assert calls_made(rec, 2) == 0, "still within the minute"
    ticks.now += 30.5
    assert calls_made(rec, 5) == 3, "a new minute, the same cap"


def test_check_refuses_without_counting(world) -> None:
    rec, _, _, _ = world
    rec.apply(throttle(1))
    for _ in range(3):
        rec.check()  # a query (LiteLLM's pre-call rule): takes no place
    call(rec)
    with pytest.raises(CallRefused):
        rec.check()


def test_the_throttle_ends_at_its_until(world) -> None:
    rec, clock, _, _ = world
    rec.apply(throttle(1, until_s=120))
    assert calls_made(rec, 3) == 1
    clock.now = T0 + timedelta(seconds=120)
    assert rec.throttle is None
    assert calls_made(rec, 5) == 5


def test_resume_work_lifts_the_throttle_but_an_older_one_does_not(world) -> None:
    rec, _, _, _ = world
    rec.apply(throttle(0, at=T0))
    assert calls_made(rec, 2) == 0, "a cap of 0 refuses every call"
    rec.apply(resume_work(T0 - timedelta(seconds=1), n=1))  # issued before the throttle, delivered after
    assert rec.throttle == 0
    rec.apply(resume_work(T0 + timedelta(seconds=1), n=2))
    assert rec.throttle is None and calls_made(rec, 4) == 4


def test_a_newer_throttle_replaces_the_cap_and_keeps_the_window(world) -> None:
    rec, _, _, _ = world
    rec.apply(throttle(5, n=1))
    assert calls_made(rec, 3) == 3
    rec.apply(throttle(4, at=T0 + timedelta(seconds=1), n=2))
    rec.apply(throttle(9, at=T0 - timedelta(seconds=1), n=3))  # older: changes nothing
    assert rec.throttle == 4 and calls_made(rec, 5) == 1


def test_no_throttle_no_cap(world) -> None:
    rec, _, _, _ = world
    assert rec.throttle is None and calls_made(rec, 50) == 50


def test_the_integrations_admission_is_throttled_too(world) -> None:
    rec, _, _, publisher = world
    rec.apply(throttle(2))
    first = Pending(rec, "chat", "gpt-4o", max_tokens=10, prompt_tokens=5)
    asyncio.run(admit_async(rec, "chat", "gpt-4o", max_tokens=10, prompt_tokens=5)).finish()
    with pytest.raises(CallRefused, match="throttled"):
        Pending(rec, "chat", "gpt-4o", max_tokens=10, prompt_tokens=5)
    first.cancel()  # never sent: its place is given back
    Pending(rec, "chat", "gpt-4o", max_tokens=10, prompt_tokens=5).finish()
    rec.flush()
    assert sum(len(batch.records) for batch in publisher.batches()) == 2


def test_a_call_recorded_without_admission_counts_and_is_never_refused(world) -> None:
    rec, _, _, publisher = world
    rec.apply(throttle(1))
    call(rec)
    rec.record(Call(operation="chat", model="gpt-4o"))  # it ran (a sync LiteLLM call, say): recorded
    rec.flush()
    assert sum(len(batch.records) for batch in publisher.batches()) == 2


def test_a_call_the_lease_refuses_takes_no_place() -> None:
    publisher = FakePublisher()
    rec = CostRecorder("agent-1", publisher, "projects/p/topics/agent-costs", leases=True, lease_wait_s=0.05)
    try:
        now = datetime.now(UTC)
        rec.apply(throttle(1, at=now))
        with pytest.raises(CallRefused) as refused:
            call(rec)
        assert refused.value.reason == "unknown_model"  # no lease yet: refused by the lease, not the throttle
        rec.apply(lease("aaaaaaaaaaaa.1", "5", issued=now, expires=now + timedelta(minutes=10)))
        call(rec)
        with pytest.raises(CallRefused, match="throttled"):
            call(rec)
    finally:
        rec.close(timeout=1)


def test_a_throttle_issued_before_a_resume_work_delivered_after_it_is_superseded(world) -> None:
    rec, _, _, _ = world
    rec.apply(resume_work(T0 + timedelta(seconds=1)))  # the resume came first (reordered)
    rec.apply(throttle(0, at=T0))  # the throttle it lifted, late
    assert rec.throttle is None and calls_made(rec, 3) == 3
    rec.apply(throttle(0, at=T0 + timedelta(seconds=2), n=2))  # a newer one is in force
    assert rec.throttle == 0


def test_releasing_a_call_gives_back_its_own_place_not_a_later_calls(world) -> None:
    rec, _, ticks, _ = world
    rec.apply(throttle(2))
    early = rec.admit("gpt-4o")  # admitted at t, never sent
    ticks.now += 59
    rec.record(Call(operation="chat", model="gpt-4o"), ticket=rec.admit("gpt-4o"))  # sent at t + 59
    rec.release(early)  # frees t's place, not t + 59's
    ticks.now += 2  # t + 61: t's place would have aged out anyway; t + 59's is still in the minute
    assert calls_made(rec, 3) == 1, "one place left: the call at t + 59 still counts"
