"""The SDK's call recorder: batching, the decorator and context manager, and local enforcement."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import Future
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from fleet_agent.contracts import Command, CommandType, CostBatch, Envelope
from fleet_agent.costs import CallRefused, CostRecorder

T0 = datetime(2026, 11, 21, 12, tzinfo=UTC)


class FakePublisher:
    def __init__(self) -> None:
        self.messages: list[tuple[str, bytes, dict[str, str]]] = []
        self.lock = threading.Lock()

    def publish(self, topic: str, data: bytes, **attrs: str) -> Future[str]:
        with self.lock:
            self.messages.append((topic, data, attrs))
            future: Future[str] = Future()
            future.set_result(str(len(self.messages)))
            return future

    def batches(self) -> list[CostBatch]:
        return [CostBatch.model_validate(Envelope.model_validate_json(m[1]).data) for m in self.messages]


@pytest.fixture
def publisher() -> FakePublisher:
    return FakePublisher()


def recorder(publisher: FakePublisher, **kw: Any) -> CostRecorder:
    return CostRecorder("agent-1", publisher, "projects/p/topics/agent-costs", **kw)


def command(
    kind: CommandType,
    at: datetime,
    agent_id: str = "agent-1",
    cid: str | None = None,
    until: datetime | None = None,
    reason: str = "test",
) -> Command:
    return Command(
        agent_id=agent_id,
        command=kind,
        reason=reason,
        issued_at=at,
        command_id=cid or f"cmd-{kind}-{at:%H%M%S}",
        until=until,
    )


class Clock:
    """A settable clock for the recorder: ``until`` tests move time instead of sleeping."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def test_batches_by_size(publisher: FakePublisher) -> None:
    rec = recorder(publisher, max_records=10, max_delay_s=60)
    for _ in range(25):
        with rec.call("chat", model="gpt-4o") as call:
            call.tokens(100, 20)
    assert [len(b.records) for b in publisher.batches()] == [10, 10]
    assert rec.close()
    assert [len(b.records) for b in publisher.batches()] == [10, 10, 5]
    assert publisher.messages[0][2] == {"agent_id": "agent-1", "event_type": "cost", "schema_version": "1"}


def test_flushes_after_the_delay(publisher: FakePublisher) -> None:
    rec = recorder(publisher, max_delay_s=0.1)
    with rec.call("chat", model="gpt-4o"):
        pass
    deadline = time.monotonic() + 3
    while not publisher.messages and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(publisher.batches()) == 1
    rec.close()


def test_context_manager_records_failure_and_cost(publisher: FakePublisher) -> None:
    rec = recorder(publisher, max_delay_s=60)
    with pytest.raises(ValueError), rec.call("chat", model="gpt-4o") as call:
        call.cost("0.0123")
        raise ValueError("provider down")
    rec.close()
    (record,) = publisher.batches()[0].records
    assert (record.success, record.cost_usd, record.operation) == (False, Decimal("0.0123"), "chat")


def test_decorator_reads_usage_from_the_result(publisher: FakePublisher) -> None:
    rec = recorder(publisher, max_delay_s=60)

    @rec.track("summarize", model="gpt-4o-mini", usage=lambda r: (r["in"], r["out"]))
    def ask(prompt: str) -> dict[str, int]:
        return {"in": len(prompt), "out": 7}

    assert ask("hello") == {"in": 5, "out": 7}
    rec.close()
    (record,) = publisher.batches()[0].records
    assert (record.input_tokens, record.output_tokens, record.model) == (5, 7, "gpt-4o-mini")


def test_blocked_agent_refuses_before_calling_the_model(publisher: FakePublisher) -> None:
    rec = recorder(publisher, max_delay_s=60)
    assert rec.apply(command(CommandType.BUDGET_EXHAUSTED, T0))
    called = []
    with pytest.raises(CallRefused, match="budget_exhausted"), rec.call("chat", model="gpt-4o"):
        called.append(True)
    assert called == []
    assert rec.apply(command(CommandType.BUDGET_RESTORED, T0 + timedelta(seconds=1)))
    with rec.call("chat", model="gpt-4o"):
        called.append(True)
    assert called == [True]
    rec.close()


def test_commands_for_others_repeats_and_stale_lifts_are_ignored(publisher: FakePublisher) -> None:
    rec = recorder(publisher, max_delay_s=60)
    assert not rec.apply(command(CommandType.PAUSE, T0, agent_id="agent-2"))
    assert rec.blocked == {}
    assert rec.apply(command(CommandType.PAUSE, T0, cid="pause-0001"))
    assert not rec.apply(command(CommandType.PAUSE, T0, cid="pause-0001"))  # redelivered
    rec.apply(command(CommandType.RESUME, T0 - timedelta(seconds=5)))  # older than the pause: stale
    assert CommandType.PAUSE in rec.blocked
    rec.apply(command(CommandType.RESUME, T0 + timedelta(seconds=5)))
    assert rec.blocked == {}
    rec.close()


def test_batches_are_valid_cost_events(publisher: FakePublisher) -> None:
    rec = recorder(publisher, max_delay_s=60)
    for _ in range(3):
        with rec.call("chat", model="gpt-4o") as call:
            call.tokens(1, 1)
    rec.close()
    body = json.loads(publisher.messages[0][1])
    assert len({r["call_id"] for r in body["data"]["records"]}) == 3


def allowed(rec: CostRecorder) -> bool:
    try:
        with rec.call("chat", model="gpt-4o"):
            pass
    except CallRefused:
        return False
    return True


def test_budget_block_lapses_when_its_period_resets(publisher: FakePublisher) -> None:
    clock = Clock(T0)
    rec = recorder(publisher, max_delay_s=60, clock=clock)
    reset = T0 + timedelta(hours=1)
    rec.apply(command(CommandType.BUDGET_EXHAUSTED, T0, until=reset, reason="hourly_usd 10 reached"))
    clock.now = reset - timedelta(seconds=1)
    assert not allowed(rec)
    assert set(rec.blocked) == {CommandType.BUDGET_EXHAUSTED}
    clock.now = reset
    assert allowed(rec), "the period reset: no budget_restored needed"
    assert rec.blocked == {}
    assert not rec.breaker_half_open
    rec.close()


def test_budget_block_without_until_waits_for_the_restore(publisher: FakePublisher) -> None:
    clock = Clock(T0)
    rec = recorder(publisher, max_delay_s=60, clock=clock)
    rec.apply(command(CommandType.BUDGET_EXHAUSTED, T0))
    clock.now = T0 + timedelta(days=400)
    assert not allowed(rec)
    rec.close()


def test_breaker_goes_half_open_after_its_cooldown(publisher: FakePublisher) -> None:
    clock = Clock(T0)
    rec = recorder(publisher, max_delay_s=60, clock=clock)
    rec.apply(command(CommandType.BREAKER_OPEN, T0, cid="breaker-open-1", until=T0 + timedelta(seconds=30)))
    clock.now = T0 + timedelta(seconds=29)
    assert not allowed(rec)
    assert not rec.breaker_half_open

    clock.now = T0 + timedelta(seconds=30)
    assert rec.breaker_half_open
    assert allowed(rec), "half-open: trial calls go through"

    # The trial failed: the server opens the breaker again, with a new cooldown.
    reopened = T0 + timedelta(seconds=31)
    rec.apply(command(CommandType.BREAKER_OPEN, reopened, cid="breaker-open-2", until=reopened + timedelta(seconds=60)))
    assert not rec.breaker_half_open
    assert not allowed(rec)

    clock.now = reopened + timedelta(seconds=60)
    assert rec.breaker_half_open and allowed(rec)
    # The trials succeeded: the server closes it for good.
    rec.apply(command(CommandType.BREAKER_CLOSED, clock.now))
    assert not rec.breaker_half_open
    assert rec.blocked == {}
    rec.close()


def test_a_lapsed_block_does_not_hide_another_one(publisher: FakePublisher) -> None:
    clock = Clock(T0 + timedelta(hours=2))
    rec = recorder(publisher, max_delay_s=60, clock=clock)
    rec.apply(command(CommandType.BUDGET_EXHAUSTED, T0, until=T0 + timedelta(hours=1)))
    rec.apply(command(CommandType.QUARANTINE, T0, reason="suspicious traffic"))
    with pytest.raises(CallRefused) as refused:
        rec.check()
    assert set(refused.value.blocks) == {CommandType.QUARANTINE}
    assert "budget_exhausted" not in str(refused.value)
    rec.close()


def test_call_refused_names_each_block_its_reason_and_end(publisher: FakePublisher) -> None:
    clock = Clock(T0)
    rec = recorder(publisher, max_delay_s=60, clock=clock)
    reset = datetime(2026, 11, 21, 13, tzinfo=UTC)
    rec.apply(command(CommandType.BUDGET_EXHAUSTED, T0, until=reset, reason="hourly_usd 10 reached"))
    rec.apply(command(CommandType.BREAKER_OPEN, T0, until=T0 + timedelta(minutes=5), reason="error rate 0.6"))
    with pytest.raises(CallRefused) as refused:
        rec.check()
    message = str(refused.value)
    assert message.startswith("agent agent-1 may not call its model now (")
    assert "budget_exhausted until 2026-11-21T13:00:00+00:00: hourly_usd 10 reached" in message
    assert "breaker_open until 2026-11-21T12:05:00+00:00: error rate 0.6" in message
    assert refused.value.until == reset, "every block lifts by itself: the latest end"
    assert refused.value.agent_id == "agent-1"

    rec.apply(command(CommandType.PAUSE, T0, reason=""))
    with pytest.raises(CallRefused, match="pause: no reason given") as refused:
        rec.check()
    assert refused.value.until is None, "a pause only lifts by a resume"
    rec.close()


def test_records_are_stamped_with_the_recorder_clock(publisher: FakePublisher) -> None:
    rec = recorder(publisher, max_delay_s=60, clock=Clock(T0))
    assert allowed(rec)
    rec.close()
    (record,) = publisher.batches()[0].records
    assert record.at == T0


def test_a_batch_never_names_more_operations_than_the_contract_allows() -> None:
    from fleet_agent.contracts import MAX_BATCH_OPERATIONS, CostBatch, Envelope

    sent: list[bytes] = []

    class Capture:
        def publish(self, topic: str, data: bytes, **attrs: str) -> Future[str]:
            sent.append(data)
            done: Future[str] = Future()
            done.set_result("1")
            return done

    recorder = CostRecorder("agent-1", Capture(), "t", max_delay_s=60)
    for i in range(MAX_BATCH_OPERATIONS + 5):
        with recorder.call(f"op{i}", model="gpt-4o"):
            pass
    recorder.close()
    batches = [CostBatch.model_validate(Envelope.model_validate_json(body).data) for body in sent]
    assert [len(b.records) for b in batches] == [MAX_BATCH_OPERATIONS, 5]


def test_a_half_open_breaker_lets_a_few_trial_calls_through_then_waits_for_the_verdict(
    publisher: FakePublisher,
) -> None:
    clock = Clock(T0)
    rec = recorder(publisher, max_delay_s=60, clock=clock, half_open_calls=3)
    rec.apply(command(CommandType.BREAKER_OPEN, T0, cid="breaker-open-1", until=T0 + timedelta(seconds=30)))
    clock.now = T0 + timedelta(seconds=31)
    assert [allowed(rec) for _ in range(4)] == [True, True, True, False]
    with pytest.raises(CallRefused, match="breaker half-open: 3 trial calls made") as refused:
        rec.check()
    assert refused.value.until == T0 + timedelta(seconds=60)  # a new set of trials after another cooldown
    clock.now = T0 + timedelta(seconds=61)  # no verdict came (lost?): trials again rather than stuck
    assert [allowed(rec) for _ in range(4)] == [True, True, True, False]
    rec.apply(command(CommandType.BREAKER_CLOSED, clock.now))
    assert all(allowed(rec) for _ in range(10))
    rec.close()


def repeats(publisher: FakePublisher) -> list[bool]:
    return [r.repeat for b in publisher.batches() for r in b.records]


def test_a_request_key_seen_within_the_hour_flags_the_call_as_a_repeat(publisher: FakePublisher) -> None:
    clock = Clock(T0)
    rec = recorder(publisher, max_delay_s=60, clock=clock)
    prompt = "Summarize: the quarterly report says ..."
    for key in [prompt, prompt, "another prompt", None, prompt.encode(), None]:
        with rec.call("chat", model="gpt-4o", request_key=key):
            pass
    clock.now = T0 + timedelta(minutes=59)
    with rec.call("chat", model="gpt-4o") as call:
        call.request_key = prompt  # known only inside the block
    rec.flush()  # a batch spans at most an hour
    clock.now = T0 + timedelta(minutes=59 + 60)  # an hour after it was last seen: forgotten
    with rec.call("chat", model="gpt-4o", request_key=prompt):
        pass
    rec.close()
    assert repeats(publisher) == [False, True, False, False, True, False, True, False]
    body = publisher.messages[0][1]
    assert prompt.encode() not in body and b"quarterly" not in body  # only a hash is kept, and never sent
    assert body.count(b'"repeat"') == 3  # sent only when true: batches stay as small as before


def test_only_successful_calls_are_remembered_and_the_memory_is_bounded(publisher: FakePublisher) -> None:
    rec = recorder(publisher, max_delay_s=60, repeat_memory=2)
    with pytest.raises(ValueError), rec.call("chat", model="gpt-4o", request_key="a"):
        raise ValueError("provider down")  # a cache holds answers, not errors
    for key in ["a", "a", "b", "c", "a", "c"]:  # remembering "c" evicts the least recent, "a"
        with rec.call("chat", model="gpt-4o", request_key=key):
            pass
    rec.close()
    assert repeats(publisher) == [False, False, True, False, False, False, True]
    assert len(rec._recent) == 2


def test_the_decorator_takes_the_request_key_from_the_arguments(publisher: FakePublisher) -> None:
    rec = recorder(publisher, max_delay_s=60)

    @rec.track("classify", model="gpt-4o-mini", request_key=lambda text, **_: text)
    def classify(text: str, *, temperature: float = 0.0) -> str:
        return "spam"

    for text in ["buy now", "hello", "buy now"]:
        classify(text, temperature=0.0)
    rec.close()
    assert repeats(publisher) == [False, False, True]


def test_repeat_detection_is_thread_safe(publisher: FakePublisher) -> None:
    rec = recorder(publisher, max_delay_s=60)
    start = threading.Barrier(8)

    def work(n: int) -> None:
        start.wait()
        for i in range(50):
            with rec.call("chat", model="gpt-4o", request_key=f"key-{i % 10}"):
                pass

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    rec.close()
    flags = repeats(publisher)
    assert len(flags) == 400 and flags.count(False) == 10  # each of the 10 keys is new exactly once


def test_repeat_is_a_strict_bool_and_defaults_to_false() -> None:
    from fleet_agent.contracts import CostRecord
    from pydantic import ValidationError

    base = {"call_id": "call-000001", "at": T0, "model": "gpt-4o", "input_tokens": 1, "output_tokens": 1,
            "success": True, "latency_ms": 1.0, "operation": "chat"}  # fmt: skip
    assert CostRecord.model_validate(base).repeat is False
    assert CostRecord.model_validate_json(json.dumps({**base, "at": T0.isoformat(), "repeat": True})).repeat
    for bad in (1, "true", "yes"):
        with pytest.raises(ValidationError):
            CostRecord.model_validate({**base, "repeat": bad})
