"""Model names as agents send them: bare names the catalog places under one provider (embeddings,
``chatgpt-4o-latest``, Groq's models), the original provider winning over resellers, and overrides that
apply across the ``provider/`` prefix in both directions, the more specific one winning."""

from __future__ import annotations

from decimal import Decimal

import pytest

from shared.domain.pricing import FLEET_OVERRIDE, TENANT_OVERRIDE, Price, PriceTable
from shared.store import price_catalog
from tests.unit.test_http_api_costs import World, send
from tests.unit.test_http_api_costs import world as world  # the API's fixture

M = Decimal(1_000_000)
CATALOG = price_catalog.source()


@pytest.mark.parametrize(
    ("model", "matched", "input_per_mtok"),
    [
        ("text-embedding-3-small", "openai/text-embedding-3-small", Decimal("0.02")),
        ("text-embedding-3-large", "openai/text-embedding-3-large", Decimal("0.13")),
        ("text-embedding-ada-002", "openai/text-embedding-ada-002", Decimal("0.1")),
        ("chatgpt-4o-latest", "openai/chatgpt-4o-latest", Decimal(5)),
        ("llama-3.3-70b-versatile", "groq/llama-3.3-70b-versatile", Decimal("0.59")),
        ("groq/llama-3.3-70b-versatile", "groq/llama-3.3-70b-versatile", Decimal("0.59")),
        ("openai/text-embedding-3-small", "openai/text-embedding-3-small", Decimal("0.02")),
    ],
)
def test_bare_names_the_catalog_knows_under_one_provider_are_priced(
    model: str, matched: str, input_per_mtok: Decimal
) -> None:
    quote = price_catalog.catalog.quote(model)
    assert quote is not None, model
    assert (quote.matched, quote.source) == (matched, CATALOG)
    assert quote.price.input_usd * M == input_per_mtok


@pytest.mark.parametrize(
    ("model", "provider"),
    [
        ("gpt-4o", "openai"),  # not github-copilot
        ("o3-mini", "openai"),  # not azure
        ("claude-sonnet-4-5", "anthropic"),  # not google (vertex)
        ("gemini-2.5-pro", "google"),
        ("grok-3", "x-ai"),  # not openrouter
        ("command-r", "cohere"),  # not openrouter
        ("mistral-large-latest", "mistral"),
        ("deepseek-chat", "deepseek"),
    ],
)
def test_a_name_several_providers_serve_is_priced_at_its_original_provider(model: str, provider: str) -> None:
    quote = price_catalog.catalog.quote(model)
    assert quote is not None and quote.matched.split("/")[0] == provider, (model, quote)


def test_a_name_only_resellers_serve_is_unpriced_not_guessed() -> None:
    # Eight hosts list it at their own prices and none made it: no price is better than a wrong one.
    assert price_catalog.catalog.quote("meta-llama/llama-3.1-8b-instruct") is None
    assert price_catalog.catalog.quote("no-such-model-anywhere") is None


# -- overrides across the provider/ prefix -----------------------------------------------------------

FLEET = Price(Decimal(1) / M, Decimal(2) / M)
TENANT = Price(Decimal(3) / M, Decimal(4) / M)
OPENAI = Price(Decimal(5) / M, Decimal(6) / M)
AZURE = Price(Decimal(7) / M, Decimal(8) / M)


def source_of(table: PriceTable, model: str, tenant: str | None = None) -> tuple[str, str, Price] | None:
    quote = table.quote(model, tenant)
    return None if quote is None else (quote.source, quote.matched, quote.price)


@pytest.mark.parametrize("model", ["openai/gpt-4o", "azure/gpt-4o", "openai/gpt-4o-2024-08-06"])
def test_an_override_of_a_bare_name_applies_to_its_provider_prefixed_names(model: str) -> None:
    table = PriceTable(prices={"gpt-4o": FLEET}, catalog=price_catalog.catalog)
    assert source_of(table, model) == (FLEET_OVERRIDE, "gpt-4o", FLEET)
    tenant = PriceTable(prices={"gpt-4o": FLEET}, tenant_prices={"t1": {"gpt-4o": TENANT}})
    assert source_of(tenant, model, "t1") == (TENANT_OVERRIDE, "gpt-4o", TENANT)
    assert source_of(tenant, model, "t2") == (FLEET_OVERRIDE, "gpt-4o", FLEET)


@pytest.mark.parametrize("model", ["gpt-4o", "gpt-4o-2024-08-06"])
def test_an_override_of_a_prefixed_name_applies_to_the_bare_name(model: str) -> None:
    # docs/api.md's example: PUT /v1/prices/openai/gpt-4o prices the OpenAI integration's bare gpt-4o.
    table = PriceTable(prices={"openai/gpt-4o": OPENAI}, catalog=price_catalog.catalog)
    assert source_of(table, model) == (FLEET_OVERRIDE, "openai/gpt-4o", OPENAI)
    # ... but not the same model sold by another provider, nor another model.
    assert source_of(table, "azure/gpt-4o")[0] == CATALOG  # type: ignore[index]
    assert source_of(table, "gpt-4o-mini")[0] == CATALOG  # type: ignore[index]


def test_the_more_specific_override_wins() -> None:
    table = PriceTable(prices={"gpt-4o": FLEET, "openai/gpt-4o": OPENAI, "azure/gpt-4o": AZURE})
    assert source_of(table, "openai/gpt-4o") == (FLEET_OVERRIDE, "openai/gpt-4o", OPENAI)
    assert source_of(table, "azure/gpt-4o") == (FLEET_OVERRIDE, "azure/gpt-4o", AZURE)
    assert source_of(table, "gpt-4o") == (FLEET_OVERRIDE, "gpt-4o", FLEET)
    assert source_of(table, "groq/gpt-4o") == (FLEET_OVERRIDE, "gpt-4o", FLEET)
    # A release of the exact name beats the bare name across the prefix.
    dated = PriceTable(prices={"openai/gpt-4o": OPENAI, "gpt-4o-2024-08-06": FLEET})
    assert source_of(dated, "openai/gpt-4o-2024-08-06") == (FLEET_OVERRIDE, "openai/gpt-4o", OPENAI)


def test_the_tenants_override_of_the_bare_name_beats_the_fleets_of_the_prefixed_name() -> None:
    """The same call costs the tenant the same through the SDK (gpt-4o) and OTLP (openai/gpt-4o)."""
    table = PriceTable(prices={"openai/gpt-4o": OPENAI}, tenant_prices={"acme": {"gpt-4o": FLEET}})
    assert source_of(table, "openai/gpt-4o", "acme") == (TENANT_OVERRIDE, "gpt-4o", FLEET)
    assert source_of(table, "gpt-4o", "acme") == (TENANT_OVERRIDE, "gpt-4o", FLEET)
    assert source_of(table, "openai/gpt-4o", "globex") == (FLEET_OVERRIDE, "openai/gpt-4o", OPENAI)


def test_several_providers_overrides_of_a_bare_name_take_the_catalogs_provider() -> None:
    both = {"openai/gpt-4o": OPENAI, "azure/gpt-4o": AZURE}
    table = PriceTable(prices=both, catalog=price_catalog.catalog)
    assert source_of(table, "gpt-4o") == (FLEET_OVERRIDE, "openai/gpt-4o", OPENAI)
    # Without a catalog to tell, neither is guessed.
    assert source_of(PriceTable(prices=both), "gpt-4o") is None


def test_the_api_docs_example_prices_the_bare_name(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    from shared.store import config

    # PUT /v1/prices/openai/gpt-4o (docs/api.md) as stored; the OpenAI integration records bare gpt-4o.
    monkeypatch.setattr(config, "global_prices", lambda: {"openai/gpt-4o": Price(Decimal("0.000002"), Decimal(0))})
    for model in ("gpt-4o", "openai/gpt-4o", "gpt-4o-2024-08-06"):
        reply = send(f"/v1/prices/{model}", who="viewer").json
        assert (reply["source"], reply["matched"], reply["input_usd"]) == (FLEET_OVERRIDE, "openai/gpt-4o", "0.000002")
    assert send("/v1/prices/azure/gpt-4o", who="viewer").json["source"] == CATALOG
    world.firestore.docs["tenants/acme"] = {"prices": {"gpt-4o": {"input_usd": "0.000001", "output_usd": "0"}}}
    reply = send("/v1/prices/openai/gpt-4o", tenant="acme").json
    assert (reply["source"], reply["matched"]) == (TENANT_OVERRIDE, "gpt-4o")  # the tenant's override wins
    reply = send("/v1/prices/azure/gpt-4o", tenant="acme").json
    assert (reply["source"], reply["matched"]) == (TENANT_OVERRIDE, "gpt-4o")


# -- overrides with cache and reasoning prices -------------------------------------------------------


def test_an_override_sets_cache_and_reasoning_prices(world: World) -> None:
    from shared.store import config

    body = {"input_usd": "0.000002", "output_usd": "0.000008", "cache_read_usd": "0.0000005",
            "cache_write_usd": "0.0000025", "reasoning_usd": "0.00001"}  # fmt: skip
    reply = send("/v1/prices/gpt-4o", method="PUT", body=body)
    assert reply.status == 200, reply.text
    assert reply.json == {"model": "gpt-4o", **body, "source": FLEET_OVERRIDE, "tiers": []}
    price = Price(*(Decimal(body[k]) for k in ("input_usd", "output_usd", "cache_read_usd", "cache_write_usd",
                                               "reasoning_usd")))  # fmt: skip
    assert world.prices_set == [(None, "gpt-4o", price)]
    assert config.price_of(config.price_doc(price)) == price  # stored and read back whole
    # 1000 input of which 600 cache reads, 100 output of which 40 reasoning: each part at its own price.
    assert price.cost_nanos(1000, 100, cache_read=600, reasoning=40) == 400 * 2000 + 600 * 500 + 60 * 8000 + 40 * 10000
    # Without them, the parts are charged at the input and output prices (and stored as null).
    flat = send("/v1/prices/gpt-4o", method="PUT", body={"input_usd": "0.000002", "output_usd": "0.000008"})
    assert flat.json["cache_read_usd"] is None and world.prices_set[-1][2] == Price(Decimal("0.000002"),
                                                                                    Decimal("0.000008"))  # fmt: skip
    assert config.price_of({"input_usd": "0.000002", "output_usd": "0"}).cache_read_usd is None  # older documents
    too_much = {"input_usd": "0.000002", "output_usd": "0.000008", "cache_read_usd": "2"}
    assert send("/v1/prices/gpt-4o", method="PUT", body=too_much).status == 400
