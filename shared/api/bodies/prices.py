"""The REST API's price bodies beyond the overrides (shared/api/bodies/costs.py): the price in force for
one model (``GET /v1/prices/{model}``) and an agent's usage by model with what priced it."""

from __future__ import annotations

from pydantic import Field

from shared.api.bodies.common import Timestamp, View

_USD = "USD per token, a decimal string."


class PricePartsView(View):
    input_usd: str = Field(description=f"{_USD} Uncached input tokens.")
    output_usd: str = Field(description=f"{_USD} Output tokens.")
    cache_read_usd: str = Field(description=f"{_USD} Input tokens read from the prompt cache.")
    cache_write_usd: str = Field(description=f"{_USD} Input tokens written to the prompt cache.")
    reasoning_usd: str = Field(description=f"{_USD} Output tokens spent reasoning.")


class PriceTierView(PricePartsView):
    above_input_tokens: int = Field(
        description="A call with more input tokens (cached included) pays this tier's prices."
    )


class PriceQuoteView(PricePartsView):
    """The price a call of ``model`` is charged at now, for the tenant asked about."""

    model: str
    tenant: str | None = Field(description="The tenant whose override would win; null: the fleet's prices.")
    source: str = Field(
        description="What sets it: override:tenant, override:fleet (PUT /v1/prices/{model}) or "
        "catalog:genai-prices@<version> (the price catalog shipped with the code)."
    )
    matched: str = Field(
        description="The name it was found under: the override's model or the catalog's provider/model."
    )
    valid_from: Timestamp | None = Field(description="Since when this price holds (null: no start known).")
    valid_until: Timestamp | None = Field(description="Until when (exclusive) it holds (null: until changed).")
    tiers: list[PriceTierView] = Field(description="Long-context prices, by ascending threshold (often none).")


class ModelUsageView(View):
    """One model's calls of the agent this month, and the prices they were counted at."""

    calls: int
    failures: int
    input_tokens: int
    output_tokens: int
    usd: str = Field(description="Exact dollars, a decimal string.")
    price_sources: dict[str, int] = Field(
        description="Calls per price source: override:tenant, override:fleet, catalog:genai-prices@<version>, "
        "agent (the agent's own cost) or unpriced (tokens but no price: counted $0, alerted). Calls without tokens "
        "are not listed, nor calls counted before sources were."
    )
