"""Cost records' cached and reasoning token counts (issue 22): parts of the input and output totals,
optional for old senders, and left out of the batch body when unused so an older server still accepts it."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from fleet_agent.call_records import Call
from fleet_agent.messages.costs import CostBatch, CostRecord
from pydantic import ValidationError


def record(**fields: Any) -> dict[str, Any]:
    base = {
        "call_id": "call-0001", "at": datetime(2026, 12, 6, 12, tzinfo=UTC).isoformat(), "model": "gpt-4o",
        "input_tokens": 1000, "output_tokens": 200, "success": True, "latency_ms": 12.5, "operation": "chat",
    }  # fmt: skip
    return {**base, **fields}


def test_an_old_record_without_the_new_counts_validates_with_zeros() -> None:
    parsed = CostRecord.model_validate(record())
    assert (parsed.cache_read_tokens, parsed.cache_write_tokens, parsed.reasoning_tokens) == (0, 0, 0)


def test_the_counts_are_parts_of_the_totals() -> None:
    ok = CostRecord.model_validate(record(cache_read_tokens=600, cache_write_tokens=400, reasoning_tokens=200))
    assert ok.cache_read_tokens + ok.cache_write_tokens == ok.input_tokens
    with pytest.raises(ValidationError, match="must not exceed input_tokens"):
        CostRecord.model_validate(record(cache_read_tokens=600, cache_write_tokens=401))
    with pytest.raises(ValidationError, match="reasoning_tokens must not exceed output_tokens"):
        CostRecord.model_validate(record(reasoning_tokens=201))
    with pytest.raises(ValidationError):
        CostRecord.model_validate(record(cache_read_tokens=-1))


def test_a_batch_body_carries_only_the_counts_it_uses() -> None:
    plain = CostRecord.model_validate(record(call_id="call-0001"))
    cached = CostRecord.model_validate(record(call_id="call-0002", cache_read_tokens=300, reasoning_tokens=50))
    body = json.loads(CostBatch(agent_id="agent-1", batch_id="batch-0001", records=[plain, cached]).model_dump_json())
    first, second = body["records"]
    assert not {"cache_read_tokens", "cache_write_tokens", "reasoning_tokens", "repeat"} & set(first)
    assert second["cache_read_tokens"] == 300 and second["reasoning_tokens"] == 50
    assert "cache_write_tokens" not in second
    assert CostBatch.model_validate(body).records[1] == cached  # round trip


def test_the_sdk_call_takes_the_parts() -> None:
    call = Call(operation="chat", model="gpt-4o")
    call.tokens(1000, 200, cache_read=600, reasoning=150)
    assert (call.input_tokens, call.output_tokens, call.cache_read_tokens, call.reasoning_tokens) == (
        1000,
        200,
        600,
        150,
    )
    assert call.cache_write_tokens == 0
