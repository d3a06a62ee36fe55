"""What the drop-in integrations' tests share: a real CostRecorder publishing to a local list, the fake
model provider, and ways to hold the agent (a pause command) or leave its lease empty."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fleet_agent.contracts import Command, CommandType, CostRecord
from fleet_agent.costs import CostRecorder

from emulators.fake_llm import FakeLLM
from tests.unit.test_sdk_costs import FakePublisher
from tests.unit.test_sdk_lease_recorder import lease


class Agent:
    """An agent without the stack: its recorder is the SDK's own, its publisher keeps the batches."""

    def __init__(self, **kw: Any) -> None:
        self.publisher = FakePublisher()
        self.costs = CostRecorder("agent-1", self.publisher, "projects/p/topics/agent-costs", max_delay_s=60, **kw)

    def records(self) -> list[CostRecord]:
        self.costs.flush()
        return [r for b in self.publisher.batches() for r in b.records]

    def pause(self) -> None:
        at = datetime.now(UTC)
        self.costs.apply(Command(agent_id="agent-1", command=CommandType.PAUSE, reason="test", issued_at=at,
                                 command_id="cmd-pause"))  # fmt: skip

    def grant(self, usd: str) -> None:
        """A ten-minute lease of ``usd``; gpt-4o at $1 per million input tokens, $4 per million output tokens."""
        now = datetime.now(UTC)
        self.costs.apply(lease("aaaaaaaaaaaa.1", usd, issued=now, expires=now + timedelta(minutes=10)))

    def close(self) -> None:
        self.costs.close()


@pytest.fixture(name="llm")
def llm_fixture() -> Iterator[FakeLLM]:
    with FakeLLM() as fake:
        yield fake


@pytest.fixture(name="agent")
def agent_fixture() -> Iterator[Agent]:
    made = Agent()
    yield made
    made.close()


@pytest.fixture(name="leased")
def leased_fixture() -> Iterator[Agent]:
    """An agent with leases on and no grant coming: every call is refused after a short wait."""
    made = Agent(leases=True, lease_wait_s=0.05)
    yield made
    made.close()


def tokens(record: CostRecord) -> tuple[int, int, int, int, int]:
    """(input, output, cache read, cache write, reasoning) of a record."""
    return (record.input_tokens, record.output_tokens, record.cache_read_tokens, record.cache_write_tokens,
            record.reasoning_tokens)  # fmt: skip
