"""Prices of calls: the pure pricing (cached and reasoning tokens, tiers, overrides over the catalog,
unpriced stays unpriced), the genai-prices adapter on its real bundled data, the per-model price sources
a batch counts, and ``GET /v1/prices/{model}``."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from fleet_agent.contracts import CostBatch, CostRecord

from shared.domain import pricing
from shared.domain.pricing import Price, PriceTable, Quote, to_nanos
from shared.domain.report_suggestions import cheaper_alternative
from shared.domain.usage import ModelDay, tally
from shared.store import config, price_catalog
from shared.store import usage as usage_store
from tests.unit.test_http_api import assert_error
from tests.unit.test_http_api_costs import World, send
from tests.unit.test_http_api_costs import world as world  # the API's fixture

AT = datetime(2026, 11, 21, 22, 15, tzinfo=UTC)
CATALOG = price_catalog.source()
M = Decimal(1_000_000)


def rec(n: int, model: str, inp: int, out: int, **kw: Any) -> CostRecord:
    return CostRecord(
        call_id=f"call-{n:04d}", at=AT + timedelta(seconds=n), model=model, input_tokens=inp, output_tokens=out,
        success=True, latency_ms=5.0, operation="ask", **kw,
    )  # fmt: skip


class FixedCatalog:
    """A catalog of one model, for the domain's tests (the real one is tested below)."""

    source = "catalog:test@1"

    def __init__(self, prices: dict[str, Price]) -> None:
        self.prices = prices

    def quote(self, model: str, at: datetime | None = None) -> Quote | None:
        found = self.prices.get(model)
        return None if found is None else Quote(found, self.source, f"p/{model}")

    def alternatives(self, model: str, at: datetime | None = None) -> list[tuple[str, Price]]:
        return [(name, price) for name, price in self.prices.items() if name != model]


# -- the pure pricing ------------------------------------------------------------------------------


def test_a_call_is_uncached_input_plus_cache_reads_plus_cache_writes_plus_output() -> None:
    price = Price(Decimal(3) / M, Decimal(15) / M, Decimal("0.3") / M, Decimal("3.75") / M, Decimal(20) / M)
    # 1000 input of which 600 cache reads and 100 cache writes; 500 output of which 200 reasoning
    cost = price.cost_nanos(1000, 500, cache_read=600, cache_write=100, reasoning=200)
    assert cost == to_nanos(300 * Decimal(3) / M + 600 * Decimal("0.3") / M + 100 * Decimal("3.75") / M
                            + 300 * Decimal(15) / M + 200 * Decimal(20) / M)  # fmt: skip
    assert cost == 9_955_000  # $0.009955, exact
    # Parts without a price of their own are charged at the input / output price (never below it).
    flat = Price(Decimal(3) / M, Decimal(15) / M)
    assert flat.cost_nanos(1000, 500, 600, 100, 200) == flat.cost_nanos(1000, 500) == 10_500_000


def test_the_ceiling_never_prices_a_part_below_the_fleet() -> None:
    claude = Price(Decimal(3) / M, Decimal(15) / M, Decimal("0.3") / M, Decimal("3.75") / M)
    assert claude.ceiling() == Price(Decimal("3.75") / M, Decimal(15) / M)
    gpt = Price(Decimal("2.5") / M, Decimal(10) / M, Decimal("1.25") / M, None, Decimal(12) / M)
    assert gpt.ceiling() == Price(Decimal("2.5") / M, Decimal(12) / M)
    for inp, out, read, write, reasoning in ((1000, 100, 0, 1000, 0), (1000, 100, 500, 200, 50)):
        for price in (claude, gpt):
            assert price.ceiling().cost_nanos(inp, out) >= price.cost_nanos(inp, out, read, write, reasoning)


def test_the_ceiling_covers_the_long_context_tiers() -> None:
    """A lease priced at the ceiling debits at least what the fleet counts, long calls included (review S2)."""
    gemini = price_catalog.catalog.quote("gemini-2.5-pro", AT)
    assert gemini is not None and gemini.price.tiers
    counted = gemini.price.cost_nanos(300_000, 1_000)
    assert counted == 765_000_000  # all of it at the >200k tier: $2.50 / $15 per million
    assert gemini.price.ceiling().cost_nanos(300_000, 1_000) >= counted
    claude = Price(Decimal(3) / M, Decimal(15) / M, Decimal("0.3") / M, Decimal("3.75") / M, tiers=(
        (200_000, Price(Decimal(6) / M, Decimal("22.5") / M, Decimal("0.6") / M, Decimal("7.5") / M)),))  # fmt: skip
    assert claude.ceiling() == Price(Decimal("7.5") / M, Decimal("22.5") / M)
    for inp, out, read, write in ((250_000, 4_000, 0, 250_000), (250_000, 4_000, 100_000, 0), (1_000, 10, 0, 1_000)):
        assert claude.ceiling().cost_nanos(inp, out) >= claude.cost_nanos(inp, out, read, write)


def test_tiers_price_a_long_call_wholly_at_the_tier() -> None:
    long = Price(Decimal(6) / M, Decimal("22.5") / M)
    price = Price(Decimal(3) / M, Decimal(15) / M, tiers=((200_000, long),))
    assert price.for_input(200_000) is price and price.for_input(200_001) is long
    assert price.cost_nanos(200_001, 0) == to_nanos(200_001 * Decimal(6) / M)


def test_an_override_wins_over_the_catalog_and_the_tenant_over_the_fleet() -> None:
    catalog = FixedCatalog({"gpt-4o": Price(Decimal("0.0000025"), Decimal("0.00001"))})
    fleet = Price(Decimal("0.000002"), Decimal("0.000008"))
    mine = Price(Decimal("0.000001"), Decimal("0.000004"))
    table = PriceTable(prices={"gpt-4o": fleet}, tenant_prices={"acme": {"gpt-4o": mine}}, catalog=catalog)
    assert table.quote("gpt-4o", "acme") == Quote(mine, pricing.TENANT_OVERRIDE, "gpt-4o")
    assert table.quote("gpt-4o-2024-08-06", "globex") == Quote(fleet, pricing.FLEET_OVERRIDE, "gpt-4o")
    assert PriceTable(catalog=catalog).quote("gpt-4o", None, AT) == Quote(
        catalog.prices["gpt-4o"], "catalog:test@1", "p/gpt-4o"
    )
    record = rec(1, "gpt-4o", 1000, 100, cache_read_tokens=400)
    assert pricing.price(record, table, "acme") == pricing.Priced(1_400_000, pricing.Source.TABLE, "override:tenant")
    assert pricing.price(record, PriceTable(catalog=catalog)).label == "catalog:test@1"


def test_unpriced_stays_unpriced_and_never_zero() -> None:
    table = PriceTable(catalog=FixedCatalog({}))
    found = pricing.price(rec(1, "acme/private-llm", 10, 5), table)
    assert found.unpriced and found.label == "unpriced"
    t = tally(
        CostBatch(agent_id="agent-1", batch_id="batch-0001", records=[rec(1, "acme/private-llm", 10, 5)]), "acme", table
    )
    assert t.unpriced_models == {"acme/private-llm"} and t.total.unpriced == 1 and t.total.usd_nanos == 0


def test_a_batch_counts_each_models_calls_per_price_source() -> None:
    catalog = FixedCatalog({"gpt-4o": Price(Decimal("0.0000025"), Decimal("0.00001"), Decimal("0.00000125"))})
    table = PriceTable(tenant_prices={"acme": {"claude-x": Price(Decimal("0.000001"), Decimal("0.000001"))}},
                       catalog=catalog)  # fmt: skip
    records = [
        rec(1, "gpt-4o", 1000, 100, cache_read_tokens=1000),  # 1000 x 0.00000125 + 100 x 0.00001 = 0.00225
        rec(2, "gpt-4o", 10, 5, cost_usd=Decimal("0.5")),  # the agent's own cost
        rec(3, "claude-x", 10, 10),
        rec(4, "nobody-knows", 10, 10),  # unpriced: counted as such (it alerts)
        rec(5, "gpt-4o", 0, 0),  # free: no source
    ]
    t = tally(CostBatch(agent_id="agent-1", batch_id="batch-0001", records=records), "acme", table)
    day = t.models["2026-11"]["21"]
    assert day["gpt-4o"].sources == {"catalog:test@1": 1, "agent": 1} and day["gpt-4o"].calls == 3
    assert day["gpt-4o"].usd_nanos == to_nanos(Decimal("0.50225"))
    assert day["claude-x"].sources == {"override:tenant": 1}
    assert day["nobody-knows"].sources == {"unpriced": 1}
    # Stored under xDD.<model>.src.<source>, read back with the counters.
    stored = {**day["gpt-4o"].as_dict(), "src": day["gpt-4o"].sources}
    assert ModelDay.from_dict(stored) == day["gpt-4o"]


def test_cheaper_model_suggestions_come_from_the_catalog() -> None:
    catalog = FixedCatalog({
        "gpt-4o": Price(Decimal("0.0000025"), Decimal("0.00001")),
        "gpt-4o-mini": Price(Decimal("0.00000015"), Decimal("0.0000006")),
        "gpt-4.1-mini": Price(Decimal("0.0000004"), Decimal("0.0000016")),
        "claude-3-5-haiku": Price(Decimal("0.0000008"), Decimal("0.000004")),
    })  # fmt: skip
    found = cheaper_alternative("gpt-4o", 30_000, 4_500, PriceTable(catalog=catalog), None)
    assert found == ("gpt-4.1-mini", to_nanos(30_000 * Decimal("0.0000004") + 4_500 * Decimal("0.0000016")))
    assert cheaper_alternative("gpt-4o", 30_000, 4_500, PriceTable(), None) is None


# -- the adapter, on genai-prices' bundled data ------------------------------------------------------


def test_the_catalog_is_the_locked_genai_prices_and_never_fetches() -> None:
    import genai_prices
    from genai_prices import data_snapshot

    assert CATALOG == f"catalog:genai-prices@{genai_prices.__version__}" == "catalog:genai-prices@0.2.5"
    assert price_catalog.catalog.quote("gpt-4o") is not None
    assert data_snapshot._custom_snapshot is None  # no auto-update snapshot: the bundled data only


def test_gpt_4o_from_the_catalog_with_cached_input() -> None:
    for name in ("gpt-4o", "openai/gpt-4o", "gpt-4o-2024-08-06"):
        quote = price_catalog.catalog.quote(name, AT)
        assert quote is not None and quote.source == CATALOG and quote.matched == "openai/gpt-4o"
        assert quote.price.input_usd == Decimal("0.0000025") and quote.price.output_usd == Decimal("0.00001")
        assert quote.price.cache_read_usd == Decimal("0.00000125")
    price = price_catalog.catalog.quote("gpt-4o", AT).price  # type: ignore[union-attr]
    # 1000 input (800 cached) and 100 output: 200 x 2.5 + 800 x 1.25 + 100 x 10 per million = $0.0025
    assert price.cost_nanos(1000, 100, cache_read=800) == 2_500_000


def test_an_anthropic_model_with_cache_reads_and_writes_matches_genai_prices_own_total() -> None:
    from genai_prices import Usage, calc_price

    for name in ("anthropic/claude-3-5-sonnet-20241022", "claude-3-5-sonnet", "claude-sonnet-4-5"):
        quote = price_catalog.catalog.quote(name, AT)
        assert quote is not None and quote.matched.startswith("anthropic/claude-")
        for inp, read, write, out in ((5000, 3000, 1000, 400), (250_000, 100_000, 20_000, 1000)):
            usage = Usage(input_tokens=inp, cache_read_tokens=read, cache_write_tokens=write, output_tokens=out)
            theirs = calc_price(usage, quote.matched.split("/", 1)[1], provider_id="anthropic",
                                genai_request_timestamp=AT).total_price  # fmt: skip
            assert quote.price.cost_nanos(inp, out, read, write) == to_nanos(theirs)
    sonnet = price_catalog.catalog.quote("claude-3-5-sonnet", AT).price  # type: ignore[union-attr]
    assert (sonnet.cache_read_usd, sonnet.cache_write_usd) == (Decimal("3E-7"), Decimal("0.00000375"))


def test_dated_prices_carry_their_validity_and_unknown_models_are_not_priced() -> None:
    o3 = price_catalog.catalog.quote("o3", AT)
    assert o3 is not None and o3.valid_from is not None and o3.valid_from <= AT and o3.valid_at(AT)
    assert price_catalog.catalog.quote("acme/private-llm", AT) is None
    assert price_catalog.catalog.quote("no-such-model-7", AT) is None


def test_the_old_hand_kept_table_is_covered_by_the_catalog() -> None:
    """Every model shared/data/prices.yaml listed before the catalog replaced it still has a price."""
    for name in ("gpt-4o", "gpt-4o-mini", "gpt-4.1", "gpt-4.1-mini", "gpt-4.1-nano", "o3", "o4-mini",
                 "claude-opus-4", "claude-sonnet-4", "claude-3-5-sonnet", "claude-3-5-haiku", "gemini-2.5-pro",
                 "gemini-2.5-flash", "gemini-2.0-flash", "gemini-1.5-pro", "gemini-1.5-flash"):  # fmt: skip
        quote = price_catalog.catalog.quote(name, AT)
        assert quote is not None and quote.price.input_usd > 0 and quote.price.output_usd > 0, name


# -- the API -----------------------------------------------------------------------------------------


@pytest.fixture
def real_catalog(monkeypatch: pytest.MonkeyPatch) -> None:

    monkeypatch.setattr(config, "global_prices", lambda: {"acme/private-llm": Price(Decimal("0.000001"), Decimal(0))})


def test_get_price_shows_the_price_in_force_its_source_and_validity(world: World, real_catalog: None) -> None:
    reply = send("/v1/prices/gpt-4o", who="viewer")
    assert reply.status == 200, reply.text
    assert reply.json == {
        "model": "gpt-4o", "tenant": None, "source": CATALOG, "matched": "openai/gpt-4o",
        "input_usd": "0.0000025", "output_usd": "0.00001", "cache_read_usd": "0.00000125",
        "cache_write_usd": "0.0000025", "reasoning_usd": "0.00001", "valid_from": None, "valid_until": None,
        "tiers": [],
    }  # fmt: skip
    fleet = send("/v1/prices/acme/private-llm", who="viewer").json
    assert (fleet["source"], fleet["input_usd"]) == ("override:fleet", "0.000001")
    world.firestore.docs["tenants/acme"] = {"prices": {"gpt-4o": {"input_usd": "0.000002", "output_usd": "0.000008"}}}
    config.cache.clear()  # the tenant's settings as another test may have left them cached
    for reply in (send("/v1/prices/gpt-4o", tenant="acme"), send("/v1/prices/gpt-4o", who="acme-viewer")):
        assert reply.status == 200, reply.text
        assert (reply.json["tenant"], reply.json["source"], reply.json["input_usd"]) == (
            "acme",
            "override:tenant",
            "0.000002",
        )
    long = send("/v1/prices/gemini-2.5-pro").json
    assert long["tiers"][0]["above_input_tokens"] == 200_000 and long["tiers"][0]["input_usd"] == "0.0000025"
    assert_error(send("/v1/prices/no-such-model-7"), 404, "not_found")
    assert_error(send("/v1/prices/gpt-4o", who="acme-viewer", tenant="globex"), 403, "forbidden")


def test_agent_usage_shows_each_models_price_sources(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    month = {"x21": {"gpt-4o": {"calls": 3, "usd_nanos": 2_500_000, "src": {CATALOG: 2, "agent": 1}}},
             "x22": {"gpt-4o": {"calls": 1, "usd_nanos": 500_000, "src": {"override:fleet": 1}}}}  # fmt: skip
    monkeypatch.setattr(usage_store, "agent_month", lambda agent_id, key: month)
    reply = send("/v1/agents/agent-a1/usage", who="viewer")
    assert reply.status == 200, reply.text
    assert reply.json["models"] == {
        "gpt-4o": {"calls": 4, "failures": 0, "input_tokens": 0, "output_tokens": 0, "usd": "0.003",
                   "price_sources": {CATALOG: 2, "agent": 1, "override:fleet": 1}},
    }  # fmt: skip


def test_the_catalogs_alternatives_are_the_providers_general_current_models() -> None:
    names = {name for name, _price in price_catalog.catalog.alternatives("gpt-4o", AT)}
    assert {"gpt-4o-mini", "gpt-4.1-mini"} <= names and "gpt-4o" not in names
    assert not any(word in name for name in names for word in ("audio", "realtime", "preview", "embedding", "-2024"))
    assert not any(name.startswith(("claude", "gemini")) for name in names)  # the same provider only
    table = PriceTable(catalog=price_catalog.catalog)
    # 30 calls of 1000 input and 150 output tokens on gpt-4o: the priciest same-family model at <= 35 %
    assert cheaper_alternative("gpt-4o", 30_000, 4_500, table, None) == ("gpt-4.1-mini", 19_200_000)
    assert price_catalog.catalog.alternatives("acme/private-llm", AT) == []


def test_a_batch_prices_each_call_at_the_catalog_price_of_its_own_time() -> None:
    change = AT + timedelta(seconds=2, milliseconds=500)

    class Changing(FixedCatalog):
        asked: list[datetime] = []

        def quote(self, model: str, at: datetime | None = None) -> Quote | None:
            assert at is not None
            self.asked.append(at)
            if at < change:
                return Quote(Price(Decimal("0.001"), Decimal(0)), "catalog:test@1", model, None, change)
            return Quote(Price(Decimal("0.002"), Decimal(0)), "catalog:test@1", model, change, None)

    catalog = Changing({})
    records = [rec(n, "m-1", 1, 0) for n in (1, 2, 3, 4)]  # at AT + 1..4 s: two before the change, two after
    batch = CostBatch(agent_id="agent-1", batch_id="batch-0001", records=records)
    t = tally(batch, "acme", PriceTable(catalog=catalog))
    assert t.total.usd_nanos == to_nanos(Decimal("0.006"))
    assert len(catalog.asked) == 2  # one lookup per validity window, not per call
