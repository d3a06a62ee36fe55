"""OpenTelemetry GenAI spans to the fleet's call records (docs/otlp.md, "How spans become call records").

Pure: an ``ExportTraceServiceRequest`` in, :class:`Mapped` out (the call records, the spans ignored, the spans
refused with their reasons, and the agents the spans claim to be). Nothing here decides who the agent is:
the token does (shared/otlp/auth.py).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from fleet_agent.contracts import CostRecord
from fleet_agent.messages.costs import MAX_COST_PER_CALL_USD
from pydantic import ValidationError

from shared.domain.usage import TokensUnknown

#: ``gen_ai.operation.name`` values that are model calls; every other span is ignored (and counted).
MODEL_OPERATIONS = frozenset({"chat", "text_completion", "generate_content", "embeddings"})
#: Where a span or its resource claims an agent id (checked against the token's, never believed).
#: ``gen_ai.agent.name`` is no claim: frameworks name their sub-agents with it ("Triage Agent").
AGENT_ATTRIBUTES = ("gen_ai.agent.id",)
#: The proposed cost attributes (semantic-conventions-genai PR #443), in USD: a total, else input + output.
COST_TOTAL = ("gen_ai.usage.cost", "gen_ai.usage.cost.total")
COST_PARTS = ("gen_ai.usage.cost.input", "gen_ai.usage.cost.output")
#: Token counts: the current attribute first, then the names older instrumentations (OpenLLMetry, openlit,
#: semantic conventions before 1.27) emit; the first one present is read.
TOKENS = {
    "input_tokens": ("gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens"),
    "output_tokens": ("gen_ai.usage.output_tokens", "gen_ai.usage.completion_tokens"),
    "cache_read_tokens": ("gen_ai.usage.cache_read.input_tokens", "gen_ai.usage.cache_read_input_tokens"),
    "cache_write_tokens": ("gen_ai.usage.cache_creation.input_tokens", "gen_ai.usage.cache_creation_input_tokens"),
    "reasoning_tokens": ("gen_ai.usage.reasoning.output_tokens", "gen_ai.usage.reasoning_tokens"),
}
#: OpenTelemetry's provider names (``gen_ai.provider.name``, the older ``gen_ai.system``) as the price catalog's
#: provider ids: a call's model is recorded as ``<provider>/<model>``, which the catalog prices at that provider
#: and overrides of the bare name still match (shared/domain/pricing.py ``PriceTable.override``).
PROVIDERS = {
    "openai": "openai", "anthropic": "anthropic", "aws.bedrock": "aws", "azure.ai.openai": "azure",
    "az.ai.openai": "azure", "azure.ai.inference": "azure", "az.ai.inference": "azure", "gcp.gemini": "google",
    "gcp.vertex_ai": "google", "gcp.gen_ai": "google", "vertex_ai": "google", "gemini": "google", "x_ai": "x-ai",
    "xai": "x-ai", "mistral_ai": "mistral", "groq": "groq", "deepseek": "deepseek", "cohere": "cohere",
    "perplexity": "perplexity",
}  # fmt: skip
STATUS_ERROR = 2  # opentelemetry.proto.trace.v1.Status.STATUS_CODE_ERROR
MAX_REASONS = 5

_LABEL_BAD = re.compile(r"[^A-Za-z0-9_.:/-]")
_MODEL_BAD = re.compile(r"[^A-Za-z0-9_.:/@+-]")


@dataclass
class Mapped:
    """What a request's spans amount to."""

    calls: list[CostRecord] = field(default_factory=list)
    spans: int = 0
    ignored: int = 0
    #: One reason per refused span (a model-call span that cannot be a call record).
    refused: list[str] = field(default_factory=list)
    #: Agent ids or names the spans or their resources claim.
    claimed: set[str] = field(default_factory=set)
    providers: Counter[str] = field(default_factory=Counter)
    #: Calls whose ``input_tokens`` excluded their cached parts (Anthropic's way): the parts were added to it.
    cache_added: int = 0


def attributes(kvs: Any) -> dict[str, Any]:
    """An OTLP ``KeyValue`` list as a dict of plain values (strings, ints, floats, bools; others skipped)."""
    out: dict[str, Any] = {}
    for kv in kvs:
        kind = kv.value.WhichOneof("value")
        if kind in ("string_value", "int_value", "double_value", "bool_value"):
            out[kv.key] = getattr(kv.value, kind)
    return out


def _label(text: str, pattern: re.Pattern[str], limit: int) -> str:
    cleaned = pattern.sub("_", text.strip()).lstrip("_.:/-@+")
    return cleaned[:limit]


def _int(attrs: dict[str, Any], names: tuple[str, ...]) -> int:
    name = next((n for n in names if n in attrs), names[0])
    value = attrs.get(name, 0)
    if isinstance(value, bool):
        raise ValueError(f"{name} is not a number")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{name} is not a finite number: {value!r}")
    try:
        number = int(value)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"{name} is not a number: {str(value)[:40]!r}") from None
    if isinstance(value, float) and value != number:
        raise ValueError(f"{name} is not a whole number: {value!r}")
    return number


def _decimal(value: Any) -> Decimal:
    """A finite cost within ``[0, MAX_COST_PER_CALL_USD]`` (inf, NaN, huge and negative values refused)."""
    if isinstance(value, bool):
        raise ValueError("a cost is not a boolean")
    try:
        number = Decimal(str(value).strip())
    except ArithmeticError:  # decimal.InvalidOperation
        raise ValueError(f"not a cost: {str(value)[:40]!r}") from None
    if not number.is_finite() or not 0 <= number <= MAX_COST_PER_CALL_USD:
        raise ValueError(f"a cost is a finite number from 0 to {MAX_COST_PER_CALL_USD} USD: {str(value)[:40]!r}")
    return number


def _cost(attrs: dict[str, Any]) -> Decimal | None:
    """The span's reported cost in USD, or None (priced by the fleet)."""
    total: Decimal | None = None
    for name in COST_TOTAL:
        if name in attrs:
            total = _decimal(attrs[name])
            break
    else:
        parts = [attrs[name] for name in COST_PARTS if name in attrs]
        if parts:
            total = sum((_decimal(p) for p in parts), Decimal(0))
    if total is None:
        return None
    if total > MAX_COST_PER_CALL_USD:
        raise ValueError(f"a cost is at most {MAX_COST_PER_CALL_USD} USD: {total}")
    try:
        return total.quantize(Decimal("1e-12"))
    except ArithmeticError:
        raise ValueError(f"not a cost: {total}") from None


def _time(nanos: int) -> datetime:
    return datetime.fromtimestamp(nanos // 1_000_000_000, UTC) + timedelta(microseconds=(nanos % 1_000_000_000) // 1000)


def call_id(trace_id: bytes, span_id: bytes) -> str:
    """The call's id: trace id and span id in hex (48 characters), the same however the span is re-exported."""
    return trace_id.hex() + span_id.hex()


def provider_of(attrs: dict[str, Any]) -> str:
    """The span's provider as it names it (``gen_ai.provider.name``, else ``gen_ai.system``), or ``unknown``."""
    return str(attrs.get("gen_ai.provider.name") or attrs.get("gen_ai.system") or "unknown")


def model_of(attrs: dict[str, Any]) -> str:
    """The call's model: the response's, else the request's, as ``<provider>/<model>`` when the span names a
    provider the catalog knows (:data:`PROVIDERS`) and the model does not already start with it
    (``openai/gpt-4o-mini``, ``groq/openai/gpt-oss-120b``); ``unknown`` when the span names none."""
    model = str(attrs.get("gen_ai.response.model") or attrs.get("gen_ai.request.model") or "").strip()
    if not model:
        return "unknown"
    named = provider_of(attrs).strip().lower()
    provider = PROVIDERS.get(named)
    if provider is not None and not model.lower().startswith((f"{provider}/", f"{named}/")):
        model = f"{provider}/{model}"
    return _label(model, _MODEL_BAD, 128) or "unknown"


def operation_of(attrs: dict[str, Any], operation_attribute: str | None) -> str:
    """The call's operation: ``operation_attribute``'s value when set on the span, else ``gen_ai.operation.name``
    (never the span name: it often holds the model or ids, one counter per distinct value), made a label
    (63 characters of ``A-Za-z0-9_.:/-``, others replaced by ``_``)."""
    if operation_attribute and attrs.get(operation_attribute):
        operation = _label(str(attrs[operation_attribute]), _LABEL_BAD, 63)
        if operation:
            return operation
    return str(attrs["gen_ai.operation.name"])


def record_of(
    span: Any, attrs: dict[str, Any], *, operation_attribute: str | None, now: datetime, max_ahead: timedelta,
    max_behind: timedelta,
) -> CostRecord:  # fmt: skip
    """One model-call span as a call record; raises ``ValueError`` with the reason it cannot be one."""
    if len(span.trace_id) != 16 or len(span.span_id) != 8 or not any(span.trace_id) or not any(span.span_id):
        raise ValueError("no valid trace id and span id (a call id is made of them)")
    if span.end_time_unix_nano < span.start_time_unix_nano or span.end_time_unix_nano == 0:
        raise ValueError("no end time, or it is before the start time")
    at = _time(span.end_time_unix_nano)
    if at > now + max_ahead or at < now - max_behind:
        raise ValueError(f"ended at {at.isoformat()}: more than {max_ahead} ahead of or {max_behind} behind now")
    failed = bool(attrs.get("error.type")) or span.status.code == STATUS_ERROR
    tokens = {name: _int(attrs, names) for name, names in TOKENS.items()}
    cached = tokens["cache_read_tokens"] + tokens["cache_write_tokens"]
    if cached > tokens["input_tokens"]:  # input counted without its cached parts (Anthropic's usage): add them
        tokens["input_tokens"] += cached
    cost = _cost(attrs)
    if cost == 0 and (tokens["input_tokens"] or tokens["output_tokens"]):
        cost = None  # "no price known" (openlit reports 0 for models its table lacks): the fleet prices it
    # No token attribute at all and no cost on a call that succeeded: its usage is unknown, not zero (the
    # provider billed it): counted unpriced (alert), never $0. Explicit zeros, or a failed call, stay free.
    unknown = cost is None and not failed and not any(n in attrs for names in TOKENS.values() for n in names)
    try:
        return (TokensUnknown if unknown else CostRecord)(
            call_id=call_id(span.trace_id, span.span_id),
            at=at,
            model=model_of(attrs),
            **tokens,
            cost_usd=cost,
            success=not failed,
            latency_ms=(span.end_time_unix_nano - span.start_time_unix_nano) / 1e6,
            operation=operation_of(attrs, operation_attribute),
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        raise ValueError(f"{where}: {first.get('msg')}" if where else str(first.get("msg"))) from None


def map_request(
    request: Any, *, operation_attribute: str | None, now: datetime, max_ahead: timedelta, max_behind: timedelta
) -> Mapped:
    """Every span of ``request`` (an ``ExportTraceServiceRequest``): a call record, ignored, or refused."""
    out = Mapped()
    seen: set[str] = set()
    for resource_spans in request.resource_spans:
        resource = attributes(resource_spans.resource.attributes)
        out.claimed.update(str(resource[a]) for a in AGENT_ATTRIBUTES if resource.get(a))
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                out.spans += 1
                attrs = attributes(span.attributes)
                if attrs.get("gen_ai.operation.name") not in MODEL_OPERATIONS:
                    out.ignored += 1
                    continue
                out.claimed.update(str(attrs[a]) for a in AGENT_ATTRIBUTES if attrs.get(a))
                out.providers[provider_of(attrs)[:40]] += 1
                try:
                    record = record_of(
                        span, attrs, operation_attribute=operation_attribute, now=now, max_ahead=max_ahead,
                        max_behind=max_behind,
                    )  # fmt: skip
                except (ValueError, ArithmeticError) as exc:  # ArithmeticError: a guard, never expected
                    out.refused.append(f"span {span.span_id.hex() or '?'}: {exc}")
                    continue
                if record.input_tokens != _int(attrs, TOKENS["input_tokens"]):
                    out.cache_added += 1
                if record.call_id in seen:  # the same span twice in one request: counted once
                    continue
                seen.add(record.call_id)
                out.calls.append(record)
    return out
