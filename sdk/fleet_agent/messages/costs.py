"""What an agent spent: one record per model call, sent in batches, and the bounds a batch must keep."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta
from decimal import Decimal
from typing import Any

from pydantic import (
    AwareDatetime,
    Field,
    SerializerFunctionWrapHandler,
    model_serializer,
    model_validator,
)

from fleet_agent.messages.fields import AgentId, CallId, Label, ModelName, Strict
from fleet_agent.messages.leases import LeaseUse

#: Records per cost batch: a full batch of realistic records stays well inside MAX_EVENT_BYTES.
MAX_BATCH_RECORDS = 200
#: Per call, an upper bound that no real LLM call reaches; beyond it a record is absurd, not costly.
MAX_TOKENS_PER_CALL = 10_000_000
#: Distinct operations and time span of one batch: bounds that keep its counter updates within
#: Firestore's limits on one commit (the SDK flushes earlier than both).
MAX_BATCH_OPERATIONS = 50
MAX_BATCH_SPAN = timedelta(hours=1)
MAX_COST_PER_CALL_USD = Decimal("10000")


class CostRecord(Strict):
    """One LLM (or other metered) call, as the agent saw it."""

    call_id: CallId
    at: AwareDatetime
    model: ModelName
    input_tokens: int = Field(ge=0, le=MAX_TOKENS_PER_CALL, strict=True)
    output_tokens: int = Field(ge=0, le=MAX_TOKENS_PER_CALL, strict=True)
    #: What the provider charged, when the agent knows it; otherwise the server prices the call.
    cost_usd: Decimal | None = Field(default=None, ge=0, le=MAX_COST_PER_CALL_USD, max_digits=20, decimal_places=12)
    success: bool
    latency_ms: float = Field(ge=0, le=86_400_000)
    operation: Label
    #: The SDK saw the same request (same request key) from this process within the last hour: a
    #: cache could have served it.
    repeat: bool = Field(default=False, strict=True)


class CostBatch(Strict):
    """A batch of one agent's call records (the SDK flushes by size, by time, or when it needs a lease).

    ``lease`` says which lease the records were spent under and may ask for the next one; a batch that
    asks (``lease.request_id``) may have no records.
    """

    agent_id: AgentId
    batch_id: CallId
    records: list[CostRecord] = Field(default_factory=list, max_length=MAX_BATCH_RECORDS)
    lease: LeaseUse | None = None

    @model_serializer(mode="wrap")
    def _omit_false_repeat(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """A record's ``repeat`` is sent only when True: batch bodies stay as small as before, and a
        server that predates the field (it forbids unknown fields) still accepts them. One pass per
        batch, not a serializer call per record."""
        data: dict[str, Any] = handler(self)
        for record in data.get("records", ()):
            if record.get("repeat") is False:
                del record["repeat"]
        return data

    @model_validator(mode="after")
    def _unique_call_ids(self) -> CostBatch:
        if not self.records:
            if self.lease is None or self.lease.request_id is None:
                raise ValueError("a batch without records must ask for a lease (lease.request_id)")
            return self
        counts = Counter(r.call_id for r in self.records)
        duplicates = sorted(call_id for call_id, n in counts.items() if n > 1)
        if duplicates:
            raise ValueError(f"call_id repeated inside the batch: {', '.join(duplicates[:5])}")
        operations = {r.operation for r in self.records}
        if len(operations) > MAX_BATCH_OPERATIONS:
            raise ValueError(f"{len(operations)} distinct operations in one batch; at most {MAX_BATCH_OPERATIONS}")
        times = [r.at for r in self.records]
        if max(times) - min(times) > MAX_BATCH_SPAN:
            raise ValueError(f"the records of a batch must lie within {MAX_BATCH_SPAN} of each other")
        return self
