"""The call recorder with budget leases: admission before each call, requests, the wait, refusals, batches
per epoch, fail open; and FleetAgent spending leases by default."""

from __future__ import annotations

import json
import logging
import threading
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from fleet_agent import costs
from fleet_agent.contracts import Command, CommandType, CostBatch, LeaseGrant, LeaseUse, ModelPrice, Registration
from fleet_agent.costs import Call, CallRefused, CostRecorder

from tests.unit.test_sdk_client import FakePublisher as AgentPublisher
from tests.unit.test_sdk_client import make, registration
from tests.unit.test_sdk_costs import Clock, FakePublisher

T0 = datetime(2026, 12, 6, 12, tzinfo=UTC)
EPOCH_A, EPOCH_B = "aaaaaaaaaaaa", "bbbbbbbbbbbb"
#: $1 per million input tokens, $4 per million output tokens: 100 output tokens cost $0.0004.
PRICE = ModelPrice(input_usd=Decimal("0.000001"), output_usd=Decimal("0.000004"))
WAIT = 0.05


def lease(
    lease_id: str,
    usd: str,
    *,
    issued: datetime = T0,
    expires: datetime = T0 + timedelta(minutes=10),
    prices: dict[str, ModelPrice] | None = None,
    request_id: str | None = None,
    tokens: int | None = None,
    retry_after_s: int | None = None,
) -> Command:
    grant = LeaseGrant(
        lease_id=lease_id,
        usd=Decimal(usd),
        tokens=tokens,
        expires_at=expires,
        prices={"gpt-4o": PRICE} if prices is None else prices,
        request_id=request_id,
        retry_after_s=retry_after_s,
    )
    return Command(
        agent_id="agent-1",
        command=CommandType.LEASE,
        issued_at=issued,
        command_id=f"lease-{lease_id}",
        until=expires,
        lease=grant,
    )


def block(kind: CommandType, issued: datetime) -> Command:
    return Command(agent_id="agent-1", command=kind, issued_at=issued, command_id=f"cmd-{kind}-{issued:%H%M%S}")


def recorder(publisher: FakePublisher, clock: Clock | None = None, **kw: Any) -> CostRecorder:
    kw.setdefault("lease_wait_s", WAIT)
    kw.setdefault("max_delay_s", 60)
    return CostRecorder(
        "agent-1", publisher, "projects/p/topics/agent-costs", leases=True, clock=clock or Clock(T0), **kw
    )


def leases(publisher: FakePublisher) -> list[LeaseUse]:
    uses = [batch.lease for batch in publisher.batches()]
    assert all(use is not None for use in uses)
    return [use for use in uses if use is not None]


def spend(rec: CostRecorder, max_tokens: int = 100, output: int | None = None, **kw: Any) -> None:
    with rec.call("chat", model="gpt-4o", max_tokens=max_tokens, **kw) as call:
        call.tokens(0, max_tokens if output is None else output)


@pytest.fixture
def publisher() -> FakePublisher:
    return FakePublisher()


def test_a_call_that_does_not_fit_asks_waits_and_is_refused(publisher: FakePublisher) -> None:
    rec = recorder(publisher)
    rec.apply(lease(f"{EPOCH_A}.1", "0.001"))
    spend(rec, 100)  # $0.0004
    started = time.monotonic()
    with pytest.raises(CallRefused) as refused:
        spend(rec, 200, prompt_tokens=1000)  # $0.0018: more than the $0.0006 left
    assert refused.value.reason == "lease_exhausted" and refused.value.blocks == {}
    assert WAIT <= time.monotonic() - started < 1.0
    [asked] = publisher.batches()
    assert asked.lease is not None and asked.lease.request_id is not None
    assert (asked.lease.lease_id, asked.lease.need_usd, asked.lease.need_tokens) == (
        f"{EPOCH_A}.1",
        Decimal("0.0018"),
        1200,
    )
    assert [r.output_tokens for r in asked.records] == [100]  # what was buffered rode along
    assert rec.lease is not None and rec.lease.balance_usd == Decimal("0.0006")


def test_a_grant_arriving_while_the_call_waits_lets_it_through(publisher: FakePublisher) -> None:
    rec = recorder(publisher, lease_wait_s=5.0)
    asked = threading.Event()
    original = publisher.publish

    def publish(topic: str, data: bytes, **attrs: str) -> Any:
        future = original(topic, data, **attrs)
        asked.set()
        return future

    publisher.publish = publish  # type: ignore[method-assign]

    def grant() -> None:
        asked.wait(5)
        request = json.loads(publisher.messages[0][1])["data"]["lease"]["request_id"]
        rec.apply(lease(f"{EPOCH_A}.1", "1", request_id=request))

    threading.Thread(target=grant).start()
    started = time.monotonic()
    spend(rec)
    assert time.monotonic() - started < 2.0
    state = rec.lease
    assert state is not None and state.balance_usd == Decimal("0.9996") and state.reserved_usd == 0


def test_waiting_threads_share_one_request_and_no_room_refuses_them_at_once(publisher: FakePublisher) -> None:
    rec = recorder(publisher, lease_wait_s=5.0)
    rec.apply(lease(f"{EPOCH_A}.1", "0"))
    reasons: list[str] = []

    def caller() -> None:
        try:
            spend(rec)
        except CallRefused as refused:
            reasons.append(refused.reason)

    threads = [threading.Thread(target=caller) for _ in range(5)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 2
    while len(publisher.messages) < 1 and time.monotonic() < deadline:
        time.sleep(0.005)
    time.sleep(0.1)  # every thread is waiting by now
    [asked] = leases(publisher)
    assert (asked.need_usd, asked.need_tokens) != (None, None)
    no_room = lease(f"{EPOCH_A}.2", "0", request_id=asked.request_id, issued=T0 + timedelta(seconds=1), retry_after_s=9)
    rec.apply(no_room)
    for thread in threads:
        thread.join(5)
    assert reasons == ["lease_exhausted"] * 5
    assert time.monotonic() - started < 2.0  # not the 5 s wait
    assert len(publisher.messages) == 1


def test_an_unpriced_model_is_refused_until_a_lease_prices_it(publisher: FakePublisher) -> None:
    rec = recorder(publisher)
    rec.apply(lease(f"{EPOCH_A}.1", "1"))
    with pytest.raises(CallRefused) as refused, rec.call("chat", model="claude-x"):
        pass
    assert refused.value.reason == "unknown_model"
    [asked] = leases(publisher)
    assert asked.models == ["claude-x"] and asked.need_usd is None and asked.request_id is not None
    rec.apply(lease(f"{EPOCH_A}.2", "0", prices={"claude-x": PRICE}, request_id=asked.request_id))
    with rec.call("chat", model="claude-x", max_tokens=10) as call:
        call.tokens(3, 10)


def test_over_is_reported_cumulatively_for_the_epoch(publisher: FakePublisher) -> None:
    rec = recorder(publisher)
    rec.apply(lease(f"{EPOCH_A}.1", "1"))
    spend(rec, 100, output=150)  # 50 tokens ($0.0002) over its estimate
    rec.flush()
    spend(rec, 100, output=50)  # under: no over
    with rec.call("chat", model="gpt-4o", max_tokens=10) as call:
        call.cost("0.001")  # reported cost: $0.00096 over the $0.00004 estimate
    rec.flush()
    assert [(u.over_usd, u.over_tokens) for u in leases(publisher)] == [
        (Decimal("0.0002"), 50),
        (Decimal("0.00116"), 50),
    ]


def test_records_of_one_batch_were_spent_under_one_epoch(publisher: FakePublisher) -> None:
    rec = recorder(publisher)
    rec.apply(lease(f"{EPOCH_A}.1", "1"))
    spend(rec)
    with rec.call("chat", model="gpt-4o", max_tokens=100) as in_flight:
        rec.apply(lease(f"{EPOCH_A}.2", "1"))  # the same epoch: nothing to cut
        assert publisher.messages == []
        rec.apply(lease(f"{EPOCH_B}.1", "1", issued=T0 + timedelta(seconds=5)))  # cuts epoch A's batch
        spend(rec)  # under epoch B
        in_flight.tokens(0, 100)  # reserved under A, finishes under B: a batch of A's of its own
    rec.flush()
    assert [(u.lease_id, len(b.records)) for u, b in zip(leases(publisher), publisher.batches(), strict=True)] == [
        (f"{EPOCH_A}.2", 1),
        (f"{EPOCH_B}.1", 1),
        (f"{EPOCH_A}.2", 1),
    ]
    state = rec.lease
    assert state is not None and state.balance_usd == Decimal("0.9996")  # A's late call is not B's


def test_half_the_lease_used_asks_ahead_with_the_records(publisher: FakePublisher) -> None:
    rec = recorder(publisher)
    rec.apply(lease(f"{EPOCH_A}.1", "0.004"))  # ten calls of $0.0004
    for _ in range(6):
        spend(rec)
    [asked] = leases(publisher)
    assert asked.request_id is not None and asked.need_usd is None and asked.lease_id == f"{EPOCH_A}.1"
    # The sixth call asked when it reserved; the ask left with its own record, as soon as it was over.
    assert len(publisher.batches()[0].records) == 6


def test_a_pause_revokes_the_lease_and_an_older_grant_does_not_revive_it(publisher: FakePublisher) -> None:
    rec = recorder(publisher)
    rec.apply(lease(f"{EPOCH_A}.1", "1", issued=T0))
    rec.apply(block(CommandType.PAUSE, T0 + timedelta(seconds=10)))
    with pytest.raises(CallRefused) as refused:
        spend(rec)
    assert refused.value.reason == "pause"
    rec.apply(block(CommandType.RESUME, T0 + timedelta(seconds=20)))
    rec.apply(lease(f"{EPOCH_A}.2", "1", issued=T0 + timedelta(seconds=5)))  # delivered late
    assert rec.lease is None
    with pytest.raises(CallRefused) as refused:
        spend(rec)
    assert refused.value.reason == "lease_exhausted"


def test_fail_open_calls_without_a_lease_and_says_so(publisher: FakePublisher, caplog: Any) -> None:
    rec = recorder(publisher, lease_fail_open=True)
    rec.apply(lease(f"{EPOCH_A}.1", "0"))
    with caplog.at_level(logging.WARNING, logger="fleet_agent"):
        spend(rec)
        spend(rec)
    assert sum("lease_fail_open" in r.getMessage() for r in caplog.records) == 1
    rec.flush()
    spent = [(b.lease.lease_id if b.lease else "-", len(b.records)) for b in publisher.batches() if b.records]
    assert spent == [(None, 1), (None, 1)]  # each call asked first (a request alone: it names epoch A)


def test_a_hand_recorded_call_is_debited_and_counted_over(publisher: FakePublisher) -> None:
    rec = recorder(publisher)
    rec.apply(lease(f"{EPOCH_A}.1", "1"))
    call = Call(operation="chat", model="gpt-4o", input_tokens=0, output_tokens=100)
    rec.record(call)
    state = rec.lease
    assert state is not None and (state.balance_usd, state.over_usd) == (Decimal("0.9996"), Decimal("0.0004"))


def test_without_leases_batches_carry_no_lease_and_calls_are_not_checked(publisher: FakePublisher) -> None:
    rec = CostRecorder("agent-1", publisher, "t", max_delay_s=60)
    rec.apply(lease(f"{EPOCH_A}.1", "0"))
    spend(rec, 10**6)
    rec.flush()
    assert [b.lease for b in publisher.batches()] == [None] and rec.lease is None


def test_call_refused_keeps_its_constructor_and_names_the_first_block() -> None:
    pause = block(CommandType.PAUSE, T0)
    assert CallRefused("agent-1", {CommandType.PAUSE: pause}).reason == "pause"
    assert CallRefused("agent-1", {}, note="x").reason == ""
    assert CallRefused("agent-1", {}, reason="lease_exhausted").reason == "lease_exhausted"


@pytest.mark.parametrize("on", [True, False])
def test_fleet_agent_registers_with_leases_by_default(on: bool) -> None:
    pub = AgentPublisher()
    agent = make(pub, lease_wait_s=WAIT) if on else make(pub, leases=False)
    agent.register()
    published = Registration.model_validate(json.loads(pub.messages[0][1])["data"])
    assert published.leases is on and agent.registration == published
    assert published.supports == ["commands.v2"]  # and nothing else changed
    assert published.model_copy(update={"leases": False, "supports": []}) == registration()
    assert (agent.costs.lease is None) and isinstance(agent.costs, CostRecorder)
    if on:
        with pytest.raises(CallRefused), agent.costs.call("chat", model="gpt-4o"):
            pass
    agent.close()


def test_a_batch_without_records_asks_for_a_lease_only(publisher: FakePublisher) -> None:
    rec = recorder(publisher)
    with pytest.raises(CallRefused):
        spend(rec)
    [batch] = publisher.batches()
    assert batch.records == [] and batch.lease is not None and batch.lease.lease_id is None
    CostBatch.model_validate(batch.model_dump())


class Mono:
    """A settable monotonic clock for the wallet (lease expiry, retry_after_s)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def wait_for(condition: Any, timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.005)
    assert condition()


def callers(rec: CostRecorder, count: int, **kw: Any) -> tuple[list[threading.Thread], list[str]]:
    """``count`` threads each making one call of $0.0004; the list gets "ok" or the refusal's reason."""
    outcomes: list[str] = []

    def caller() -> None:
        try:
            spend(rec, **kw)
            outcomes.append("ok")
        except CallRefused as refused:
            outcomes.append(refused.reason)

    threads = [threading.Thread(target=caller) for _ in range(count)]
    for thread in threads:
        thread.start()
    return threads, outcomes


def test_a_fast_agent_clock_does_not_expire_a_fresh_lease(publisher: FakePublisher) -> None:
    rec = recorder(publisher, Clock(T0 + timedelta(seconds=90)))  # the agent's clock runs 90 s fast
    rec.apply(lease(f"{EPOCH_A}.1", "1", issued=T0, expires=T0 + timedelta(minutes=1)))
    spend(rec)
    state = rec.lease
    assert state is not None and state.expires_at == T0 + timedelta(minutes=1)  # the fleet's value, for display
    assert publisher.messages == []  # no request: the lease is fresh


def test_the_lease_lives_its_lifetime_on_the_monotonic_clock(publisher: FakePublisher) -> None:
    clock, mono = Clock(T0 - timedelta(hours=1)), Mono()  # the agent's wall clock is irrelevant
    rec = recorder(publisher, clock, monotonic=mono)
    mono.now += 5  # received 5 s after issue: the lease still lives its 60 s from receipt
    rec.apply(lease(f"{EPOCH_A}.1", "1", issued=T0, expires=T0 + timedelta(minutes=1)))
    mono.now += 59.9
    spend(rec)
    clock.now = T0 + timedelta(hours=2)
    assert rec.lease is not None
    mono.now += 0.1
    assert rec.lease is None
    with pytest.raises(CallRefused):
        spend(rec)


def test_waiters_a_grant_did_not_cover_ask_again_for_what_they_need(publisher: FakePublisher) -> None:
    rec = recorder(publisher, lease_wait_s=5.0)
    rec.apply(lease(f"{EPOCH_A}.1", "0"))
    threads, outcomes = callers(rec, 3)
    wait_for(lambda: len(publisher.messages) == 1)
    time.sleep(0.1)  # every thread waits on the one request by now
    first = leases(publisher)[0]
    rec.apply(lease(f"{EPOCH_A}.2", "0.0004", request_id=first.request_id, issued=T0 + timedelta(seconds=1)))
    # Room for one call: the other two ask again, for both of their needs summed. (The call that got the
    # room also asks ahead, with its record, once it is over: the balance it left is under half.)
    asking = lambda: [u for u in leases(publisher) if u.need_usd is not None and u.request_id != first.request_id]  # noqa: E731
    both = lambda: [u for u in asking() if (u.need_usd, u.need_tokens) == (Decimal("0.0008"), 200)]  # noqa: E731
    wait_for(lambda: len(both()) >= 1)
    second = both()[-1]
    assert outcomes == ["ok"]
    rec.apply(lease(f"{EPOCH_A}.3", "1", request_id=second.request_id, issued=T0 + timedelta(seconds=2)))
    for thread in threads:
        thread.join(5)
    assert outcomes == ["ok"] * 3 and len(asking()) <= 2  # theirs, and perhaps the ask ahead carrying it


def test_retry_after_refuses_at_once_without_asking_until_it_passes(publisher: FakePublisher) -> None:
    clock, mono = Clock(T0), Mono()
    rec = recorder(publisher, clock, lease_wait_s=1.0, monotonic=mono)
    rec.apply(lease(f"{EPOCH_A}.1", "0.0004"))
    threads, outcomes = callers(rec, 3)
    wait_for(lambda: len(publisher.messages) == 1)
    time.sleep(0.1)
    asked = leases(publisher)[0]
    started = time.monotonic()
    no_room = lease(f"{EPOCH_A}.2", "0", request_id=asked.request_id, retry_after_s=30, issued=T0)
    rec.apply(no_room)
    for thread in threads:
        thread.join(5)
    assert sorted(outcomes) == ["lease_exhausted", "lease_exhausted", "ok"]
    assert time.monotonic() - started < 0.5  # refused at once, not after the 1 s wait
    assert len(publisher.messages) == 1
    with pytest.raises(CallRefused) as refused:
        spend(rec)  # refused at once, and no request: the fleet said when to ask again
    assert refused.value.reason == "lease_exhausted" and refused.value.until == T0 + timedelta(seconds=30)
    assert len(publisher.messages) == 1
    mono.now += 30
    with pytest.raises(CallRefused):
        spend(rec)  # the wait is over: it asks again (and, unanswered, is refused after lease_wait_s)
    assert len(publisher.messages) == 2


def test_a_grant_clears_retry_after_and_asking_ahead_waits_for_it(publisher: FakePublisher) -> None:
    mono = Mono()
    rec = recorder(publisher, monotonic=mono)
    rec.apply(lease(f"{EPOCH_A}.1", "0.0008", expires=T0 + timedelta(seconds=100)))
    with pytest.raises(CallRefused):
        spend(rec, 1000)  # $0.004: asks
    asked = leases(publisher)[0]
    expires = T0 + timedelta(seconds=100)
    rec.apply(lease(f"{EPOCH_A}.2", "0", request_id=asked.request_id, retry_after_s=120, expires=expires))
    mono.now += 90  # less than a fifth of the lease's lifetime left, and half of it spent below
    spend(rec)
    spend(rec)
    rec.flush()
    assert [use.request_id is None for use in leases(publisher)] == [False, True]  # no asking ahead
    rec.apply(lease(f"{EPOCH_A}.3", "1", issued=T0 + timedelta(seconds=1)))  # a new lease: room again
    with pytest.raises(CallRefused):
        spend(rec, 10**6, prompt_tokens=0)  # does not fit: asks (no answer: refused after the wait)
    assert leases(publisher)[-1].need_usd == Decimal(4)


def test_a_batch_names_the_highest_lease_applied_not_the_latest(publisher: FakePublisher) -> None:
    rec = recorder(publisher)
    rec.apply(lease(f"{EPOCH_A}.1", "1"))
    rec.apply(lease(f"{EPOCH_A}.3", "1", issued=T0 + timedelta(seconds=2)))
    rec.apply(lease(f"{EPOCH_A}.2", "1", issued=T0 + timedelta(seconds=1)))  # reordered
    spend(rec)
    rec.flush()
    assert [use.lease_id for use in leases(publisher)] == [f"{EPOCH_A}.3"]
    state = rec.lease
    assert state is not None and state.lease_id == f"{EPOCH_A}.3" and state.balance_usd == Decimal("2.9996")


def test_a_grant_that_only_priced_the_model_is_followed_by_a_request_for_what_the_call_needs(
    publisher: FakePublisher,
) -> None:
    """The first call on a model no lease prices asks for its price (no amount: the call's worst case is
    unknown); the fleet's answer, sized without it, may be too small. The call asks again, with its need,
    within the same wait, instead of being refused although the fleet never heard what it needs."""
    rec = recorder(publisher, lease_wait_s=5.0)
    original = publisher.publish
    seq = iter(range(1, 10))

    def answer(data: bytes) -> None:
        use = json.loads(data)["data"]["lease"]
        if not use.get("request_id"):
            return  # records only: nothing to answer
        usd = "0.0001" if use.get("need_usd") is None else use["need_usd"]
        rec.apply(lease(f"{EPOCH_A}.{next(seq)}", usd, request_id=use["request_id"]))

    def publish(topic: str, data: bytes, **attrs: str) -> Any:
        future = original(topic, data, **attrs)
        threading.Thread(target=answer, args=(data,)).start()  # the fleet answers every request
        return future

    publisher.publish = publish  # type: ignore[method-assign]
    spend(rec, 100)  # $0.0004: more than the $0.0001 the pricing answer grants
    asked = leases(publisher)
    assert [u.models for u in asked[:2]] == [["gpt-4o"], []]  # then, maybe, an ask ahead: the lease is spent
    assert asked[1].need_usd == Decimal("0.0004")


def test_a_failed_call_leaves_within_a_second_though_leases_flush_every_30_s(publisher: FakePublisher) -> None:
    """Failures feed the breaker and the error-rate rules: with leases (30 s flush) they must not wait."""
    rec = recorder(publisher, max_delay_s=30)
    rec.apply(lease(f"{EPOCH_A}.1", "1"))
    spend(rec, 100)
    assert rec._first_at is not None and rec._first_at + rec._max_delay_s - time.monotonic() > 25
    with pytest.raises(RuntimeError), rec.call("chat", model="gpt-4o", max_tokens=10):
        raise RuntimeError("the model failed")
    assert rec._first_at + rec._max_delay_s - time.monotonic() <= costs.FAILURE_DELAY_S
    deadline = time.monotonic() + 5
    while not publisher.batches() and time.monotonic() < deadline:
        time.sleep(0.05)
    [batch] = publisher.batches()
    assert [r.success for r in batch.records] == [True, False]
