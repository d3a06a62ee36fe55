"""``GET /v1/prices?catalog=true``: the catalog's models with their prices, a page at a time, filtered by
provider or name prefix, from the bundled data (no Firestore read); and one vocabulary of price sources
(override:fleet, override:tenant, catalog:genai-prices@<version>, unpriced) across the price routes."""

from __future__ import annotations

from typing import Any

import pytest

from shared.domain.pricing import FLEET_OVERRIDE, TENANT_OVERRIDE
from shared.store import config, price_catalog
from tests.unit.test_http_api import assert_error
from tests.unit.test_http_api import log_lines as log_lines  # the API's log lines
from tests.unit.test_http_api_costs import World, send
from tests.unit.test_http_api_costs import world as world  # the API's fixture

CATALOG = price_catalog.source()


def pages(**query: Any) -> list[dict[str, Any]]:
    """Every page of the catalog listing, following next_page_token."""
    out, token = [], None
    while True:
        reply = send("/v1/prices", who="viewer", catalog="true", **query, **({"page_token": token} if token else {}))
        assert reply.status == 200, reply.text
        out.append(reply.json)
        token = reply.json["next_page_token"]
        if token is None:
            return out


def test_the_catalog_is_listed_page_by_page_without_reading_firestore(
    world: World, monkeypatch: pytest.MonkeyPatch, log_lines: list[dict[str, Any]]
) -> None:
    def no_read(*args: Any) -> Any:
        raise AssertionError("the catalog listing reads no override")

    monkeypatch.setattr(config, "read_prices", no_read)
    monkeypatch.setattr(config, "read_tenant", no_read)
    first = send("/v1/prices", who="viewer", catalog="true", page_size=20)
    assert first.status == 200, first.text
    assert [line["firestore_reads"] for line in log_lines if line.get("path") == "/v1/prices"] == [0]
    items = first.json["items"]
    assert len(items) == 20 and first.json["tenant"] is None and first.json["next_page_token"]
    assert {item["source"] for item in items} == {CATALOG}
    names = [item["model"] for item in items]
    assert names == sorted(names) and all("/" in name for name in names)
    second = send("/v1/prices", who="viewer", catalog="true", page_size=20, page_token=first.json["next_page_token"])
    assert second.status == 200, second.text
    assert second.json["items"][0]["model"] > names[-1]  # the next page starts after the last one


def test_a_providers_models_with_their_prices_parts_and_tiers(world: World) -> None:
    whole = pages(provider="anthropic", page_size=500)
    assert len(whole) == 1
    paged = pages(provider="anthropic", page_size=7)
    assert len(paged) > 2
    assert [item for page in paged for item in page["items"]] == whole[0]["items"]  # nothing lost, none twice
    by_name = {item["model"]: item for item in whole[0]["items"]}
    assert all(name.startswith("anthropic/") for name in by_name)
    sonnet = by_name["anthropic/claude-sonnet-4-5"]
    assert (sonnet["input_usd"], sonnet["output_usd"]) == ("0.000003", "0.000015")
    assert (sonnet["cache_read_usd"], sonnet["cache_write_usd"]) == ("0.0000003", "0.00000375")
    assert sonnet["tiers"][0]["above_input_tokens"] == 200_000 and sonnet["tiers"][0]["input_usd"] == "0.000006"


def test_a_name_prefix_filters_the_bare_name_or_provider_and_name(world: World) -> None:
    names = {item["model"] for page in pages(prefix="gpt-4o", page_size=500) for item in page["items"]}
    assert {"openai/gpt-4o", "openai/gpt-4o-mini"} <= names and any(n.startswith("openrouter/") for n in names)
    assert all(name.split("/", 1)[1].startswith("gpt-4o") for name in names)
    # With a "/", the prefix also matches provider/name (and a reseller's own "openai/..." ids).
    only = {item["model"] for page in pages(prefix="openai/gpt-4o", page_size=500) for item in page["items"]}
    assert "openai/gpt-4o" in only and "openai/gpt-4o-mini" in only
    assert all(n.startswith("openai/gpt-4o") or n.split("/", 1)[1].startswith("openai/gpt-4o") for n in only)
    both = pages(provider="openai", prefix="GPT-4O", page_size=500)
    assert {item["model"] for page in both for item in page["items"]} == {n for n in names if n.startswith("openai/")}
    assert pages(provider="no-such-provider")[0]["items"] == []


@pytest.mark.parametrize(
    ("query", "word"),
    [
        ({"catalog": "maybe"}, "catalog must be true or false"),
        ({"catalog": "true", "provider": "Open AI"}, "provider must match"),
        ({"catalog": "true", "prefix": "x" * 129}, "prefix is at most 128"),
        ({"catalog": "true", "page_token": "not a token!"}, "page_token is malformed"),
        ({"catalog": "true", "page_size": 0}, "page_size must be"),
        ({"provider": "openai"}, "add catalog=true"),
        ({"page_token": "b3BlbmFp"}, "add catalog=true"),
    ],
)
def test_bad_listing_parameters_are_400(world: World, query: dict[str, Any], word: str) -> None:
    reply = send("/v1/prices", who="viewer", **query)
    assert_error(reply, 400, "bad_request")
    assert word in reply.json["error"]["reason"]


def test_without_catalog_the_list_is_the_overrides_labelled_like_everywhere_else(world: World) -> None:
    world.firestore.docs["tenants/acme"] = {"prices": {"gpt-4o": {"input_usd": "0.000002", "output_usd": "0.000008"}}}
    reply = send("/v1/prices", tenant="acme")
    assert reply.status == 200, reply.text
    sources = {item["model"]: item["source"] for item in reply.json["items"]}
    assert sources == {"gpt-4o": TENANT_OVERRIDE, "openai/gpt-4o-mini": FLEET_OVERRIDE}
    assert reply.json["next_page_token"] is None
    # The same words as the price in force (GET /v1/prices/{model}) and usage's price_sources.
    assert send("/v1/prices/gpt-4o", tenant="acme").json["source"] == TENANT_OVERRIDE
    assert send("/v1/prices/gpt-4o").json["source"] == FLEET_OVERRIDE
    assert send("/v1/prices/claude-sonnet-4-5").json["source"] == CATALOG
    unpriced = send("/v1/prices/no-such-model-7")
    assert_error(unpriced, 404, "not_found")
    assert "source unpriced" in unpriced.json["error"]["reason"]
