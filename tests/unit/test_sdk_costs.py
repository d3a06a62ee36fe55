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


def command(kind: CommandType, at: datetime, agent_id: str = "agent-1", cid: str | None = None) -> Command:
    return Command(
        agent_id=agent_id, command=kind, reason="test", issued_at=at, command_id=cid or f"cmd-{kind}-{at:%H%M%S}"
    )


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
