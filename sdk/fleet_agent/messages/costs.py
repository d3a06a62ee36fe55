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
    #: Of ``input_tokens``, those read from the provider's prompt cache (priced lower) and those written to
    #: it (priced higher, where the provider charges for it). ``input_tokens`` counts every input token,
    #: cached or not, as OpenAI's ``prompt_tokens`` and OpenTelemetry's ``gen_ai.usage.input_tokens`` do
    #: (Anthropic reports them apart: its integration adds them up).
    cache_read_tokens: int = Field(default=0, ge=0, le=MAX_TOKENS_PER_CALL, strict=True)
    cache_write_tokens: int = Field(default=0, ge=0, le=MAX_TOKENS_PER_CALL, strict=True)
    #: Of ``output_tokens``, those the model spent reasoning (billed as output, shown apart).
    reasoning_tokens: int = Field(default=0, ge=0, le=MAX_TOKENS_PER_CALL, strict=True)
    #: What the provider charged, when the agent knows it; otherwise the server prices the call.
    cost_usd: Decimal | None = Field(default=None, ge=0, le=MAX_COST_PER_CALL_USD, max_digits=20, decimal_places=12)
    success: bool
    latency_ms: float = Field(ge=0, le=86_400_000)
    operation: Label
    #: The SDK saw the same request (same request key) from this process within the last hour: a
    #: cache could have served it.
    repeat: bool = Field(default=False, strict=True)

    @model_validator(mode="after")
    def _parts_within_totals(self) -> CostRecord:
        if self.cache_read_tokens + self.cache_write_tokens > self.input_tokens:
            raise ValueError("cache_read_tokens + cache_write_tokens must not exceed input_tokens (their total)")
        if self.reasoning_tokens > self.output_tokens:
            raise ValueError("reasoning_tokens must not exceed output_tokens (they are part of it)")
        return self


#: Record fields sent only when they differ from their default, so batch bodies stay as small as before
#: and a server that predates them (it forbids unknown fields) still accepts a batch that does not use them.
_OMITTED_AT_DEFAULT = {"repeat": False, "cache_read_tokens": 0, "cache_write_tokens": 0, "reasoning_tokens": 0}


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
    def _omit_defaults(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """A record's ``repeat`` and cached or reasoning token counts are sent only when set
        (:data:`_OMITTED_AT_DEFAULT`). One pass per batch, not a serializer call per record."""
        data: dict[str, Any] = handler(self)
        for record in data.get("records", ()):
            for name, default in _OMITTED_AT_DEFAULT.items():
                if name in record and record[name] == default:
                    del record[name]
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
