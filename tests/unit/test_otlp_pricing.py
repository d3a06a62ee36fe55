"""What a span's call is priced at: the provider it names as a hint to the catalog (``<provider>/<model>``), the
tenant's overrides of the bare name still winning, a call with no token attribute counted unpriced (never $0),
and the operation a call is counted under (``gen_ai.operation.name``, or a configured attribute, never the span
name)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from fleet_agent.contracts import CostBatch

from shared.domain import protection, spend
from shared.domain.pricing import Price, PriceTable
from shared.domain.usage import TokensUnknown, tally
from shared.otlp import spans
from shared.store.price_catalog import GenaiPrices
from tests.unit.test_accounting import applied_as_first
from tests.unit.test_http_api import record
from tests.unit.test_otlp import CHAT, NOW, export, mapped

CATALOG = GenaiPrices()


def span(**attrs: Any) -> dict[str, Any]:
    base = {k: v for k, v in CHAT.items() if k != "gen_ai.response.model"}
    return {"attrs": {k: v for k, v in {**base, **attrs}.items() if v is not None}}


def counted(*span_specs: dict[str, Any], table: PriceTable | None = None) -> Any:
    out = mapped(export(*span_specs))
    assert out.refused == []
    batch = CostBatch(agent_id="chat-1", batch_id="otlp.test-batch", records=out.calls)
    return out.calls, tally(batch, "acme", table or PriceTable(catalog=CATALOG))


@pytest.mark.parametrize(
    ("attrs", "model"),
    [
        ({"gen_ai.provider.name": "openai"}, "openai/gpt-4o-mini"),
        ({"gen_ai.provider.name": None, "gen_ai.system": "az.ai.openai"}, "azure/gpt-4o-mini"),
        ({"gen_ai.provider.name": "gcp.vertex_ai", "gen_ai.request.model": "gemini-2.5-flash"},
         "google/gemini-2.5-flash"),
        ({"gen_ai.provider.name": "aws.bedrock", "gen_ai.request.model": "anthropic.claude-3-haiku"},
         "aws/anthropic.claude-3-haiku"),
        ({"gen_ai.provider.name": "x_ai", "gen_ai.request.model": "grok-3"}, "x-ai/grok-3"),
        ({"gen_ai.provider.name": "mistral_ai", "gen_ai.request.model": "mistral-large"}, "mistral/mistral-large"),
        ({"gen_ai.provider.name": "groq", "gen_ai.request.model": "openai/gpt-oss-120b"}, "groq/openai/gpt-oss-120b"),
        ({"gen_ai.provider.name": "openai", "gen_ai.request.model": "openai/gpt-4o"}, "openai/gpt-4o"),
        ({"gen_ai.provider.name": "some.new.llm"}, "gpt-4o-mini"),
        ({"gen_ai.provider.name": None}, "gpt-4o-mini"),
        ({"gen_ai.request.model": None}, "unknown"),
    ],
)  # fmt: skip
def test_the_provider_named_by_a_span_prefixes_its_model(attrs: dict[str, Any], model: str) -> None:
    (call,) = mapped(export(span(**attrs))).calls
    assert call.model == model


def test_a_model_the_catalog_places_only_with_the_provider_is_priced_by_the_catalog() -> None:
    assert CATALOG.quote("sonar-reasoning") is None  # bare: the catalog cannot place it
    spec = span(**{"gen_ai.provider.name": "perplexity", "gen_ai.request.model": "sonar-reasoning"})
    (call,), t = counted(spec)
    quote = CATALOG.quote("perplexity/sonar-reasoning")
    assert quote is not None and call.model == "perplexity/sonar-reasoning"
    assert t.total.unpriced == 0 and t.total.usd_nanos == quote.price.record_nanos(call) > 0
    assert t.sources == {"table": 1}
    # The same name without a provider stays unpriced (the alert), never $0 silently.
    _calls, bare = counted(span(**{"gen_ai.provider.name": None, "gen_ai.request.model": "sonar-reasoning"}))
    assert bare.unpriced_models == {"sonar-reasoning"} and bare.total.usd_nanos == 0


@pytest.mark.parametrize(
    "model", ["llama-3.3-70b-versatile", "meta-llama/Llama-3.3-70B-Instruct-Turbo", "anthropic/claude-3.5-sonnet"]
)
def test_the_openai_clients_provider_name_never_loses_the_price_of_another_sellers_model(model: str) -> None:
    """The OpenAI instrumentation says ``openai`` for any OpenAI-compatible server (Groq, Together, OpenRouter)."""
    spec = span(**{"gen_ai.provider.name": "openai", "gen_ai.request.model": model})
    (call,), t = counted(spec)
    assert call.model == f"openai/{model}"
    bare = CATALOG.quote(model)
    assert bare is not None and CATALOG.quote(call.model) == bare
    assert t.total.unpriced == 0 and t.total.usd_nanos == bare.price.record_nanos(call) > 0


def test_the_tenants_override_of_the_bare_name_still_wins_over_the_catalog_and_the_fleet() -> None:
    mine, fleets = Price(Decimal("0.000001"), Decimal("0.000002")), Price(Decimal("0.000003"), Decimal("0.000004"))
    table = PriceTable(prices={"gpt-4o-mini": fleets}, tenant_prices={"acme": {"gpt-4o-mini": mine}}, catalog=CATALOG)
    (call,), t = counted(span(**{"gen_ai.response.model": "gpt-4o-mini-2024-07-18"}), table=table)
    assert call.model == "openai/gpt-4o-mini-2024-07-18"
    assert t.total.usd_nanos == mine.record_nanos(call) == 120 * 1000 + 30 * 2000
    (model_day,) = (m for month in t.models.values() for day in month.values() for m in day.values())
    assert t.sources == {"table": 1} and dict(model_day.sources) == {"override:tenant": 1}
    # And usage by model names the call as it was priced: provider and model.
    assert [m for month in t.models.values() for day in month.values() for m in day] == [call.model]


def test_a_call_without_any_token_attribute_is_unpriced_not_free() -> None:
    no_tokens = {"gen_ai.usage.input_tokens": None, "gen_ai.usage.output_tokens": None}
    zeros = {"gen_ai.usage.input_tokens": 0, "gen_ai.usage.output_tokens": 0}
    failed = {**no_tokens, "error.type": "RateLimitError"}
    reported = {**no_tokens, "gen_ai.usage.cost": 0.002}
    calls, t = counted(span(**no_tokens), span(**zeros), span(**failed), span(**reported))
    assert [isinstance(c, TokensUnknown) for c in calls] == [True, False, False, False]
    assert t.total.calls == 4 and t.total.unpriced == 1 and t.total.usd_nanos == 2_000_000
    assert t.unpriced_models == t.tokenless_models == {"openai/gpt-4o-mini"}
    assert t.sources == {"unpriced": 1, "free": 2, "reported": 1}
    # Even a model with a price: its tokens are unknown, so is its cost.
    assert CATALOG.quote("openai/gpt-4o-mini") is not None


def test_the_unpriced_alert_of_calls_without_tokens_says_why() -> None:
    no_tokens = span(**{"gen_ai.usage.input_tokens": None, "gen_ai.usage.output_tokens": None})
    _calls, t = counted(no_tokens, span(**{"gen_ai.provider.name": None, "gen_ai.request.model": "mystery-llm"}))
    inputs = spend.Inputs(agent=record("chat-1", "acme"), tenant_budget=None, rules=protection.Protection(), tally=t,
                          batch_id="b", now=NOW, received_at=NOW)  # fmt: skip
    alerts = {a.details["model"]: a.message for a in spend.decide(inputs, applied_as_first(t, 4)).alerts}
    assert set(alerts) == {"openai/gpt-4o-mini", "mystery-llm"}
    assert "reported neither tokens nor a cost" in alerts["openai/gpt-4o-mini"]
    assert "has no price" in alerts["mystery-llm"] and "PUT /v1/prices/mystery-llm" in alerts["mystery-llm"]


@pytest.mark.parametrize(
    ("attribute", "value", "operation"),
    [
        (None, None, "chat"),
        ("app.operation", "triage ticket #42 / step 3", "triage_ticket__42_/_step_3"),
        ("app.operation", "x" * 200, "x" * 63),
        ("app.operation", "  ", "chat"),
        ("app.operation", "!!!", "chat"),
        ("app.operation", None, "chat"),
    ],
)
def test_the_operation_is_the_genai_operation_or_a_configured_attribute_never_the_span_name(
    attribute: str | None, value: str | None, operation: str
) -> None:
    spec = {**span(**({attribute: value} if attribute else {})), "name": "chat gpt-4o-mini ticket-8f3a9c"}
    (call,) = mapped(export(spec), attribute=attribute).calls
    assert call.operation == operation
    assert spans.operation_of({"gen_ai.operation.name": "embeddings"}, None) == "embeddings"
