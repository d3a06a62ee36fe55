"""Pricing LLM calls exactly: integer nano-dollars, a price table per model, overridable per tenant.

Money is never a float here. A record that reports ``cost_usd`` is charged that; one that does not
is priced from the table; one with tokens but no price and no cost is *unpriced*, which raises an
alert instead of silently counting $0 (the failure LiteLLM users report).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from enum import StrEnum

from fleet_agent.contracts import CostRecord

NANO = Decimal(1_000_000_000)


def to_nanos(usd: Decimal) -> int:
    """Dollars to whole nano-dollars (half up); exact for any price the contract accepts to 9 places."""
    return int((usd * NANO).to_integral_value(rounding=ROUND_HALF_UP))


def to_usd(nanos: int) -> Decimal:
    return Decimal(nanos) / NANO


def format_usd(nanos: int) -> str:
    """Exact dollars as a plain decimal string (``12.5``, ``0.000002``), never exponent notation."""
    text = format(to_usd(nanos).quantize(Decimal("0.000000001")), "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


@dataclass(frozen=True)
class Price:
    """USD per token, for input and output tokens."""

    input_usd: Decimal
    output_usd: Decimal

    def cost_nanos(self, input_tokens: int, output_tokens: int) -> int:
        return to_nanos(self.input_usd * input_tokens + self.output_usd * output_tokens)


@dataclass(frozen=True)
class PriceTable:
    """Global prices, and per-tenant overrides that win over them."""

    prices: Mapping[str, Price] = field(default_factory=dict)
    tenant_prices: Mapping[str, Mapping[str, Price]] = field(default_factory=dict)

    def lookup(self, model: str, tenant: str | None = None) -> Price | None:
        """Exact model name first, then the longest known prefix (``gpt-4o-2024-08-06`` -> ``gpt-4o``)."""
        for table in (self.tenant_prices.get(tenant or "", {}), self.prices):
            if model in table:
                return table[model]
            prefixes = [name for name in table if model.startswith(name)]
            if prefixes:
                return table[max(prefixes, key=len)]
        return None


class Source(StrEnum):
    REPORTED = "reported"  # the agent reported cost_usd
    TABLE = "table"  # priced from the price table
    FREE = "free"  # no tokens and no cost: nothing to charge
    UNPRICED = "unpriced"  # tokens, but no cost and no price: alert, never $0


@dataclass(frozen=True)
class Priced:
    nanos: int
    source: Source

    @property
    def unpriced(self) -> bool:
        return self.source is Source.UNPRICED


def price(record: CostRecord, table: PriceTable, tenant: str | None = None) -> Priced:
    if record.cost_usd is not None:
        return Priced(to_nanos(record.cost_usd), Source.REPORTED)
    if record.input_tokens == 0 and record.output_tokens == 0:
        return Priced(0, Source.FREE)
    found = table.lookup(record.model, tenant)
    if found is None:
        return Priced(0, Source.UNPRICED)
    return Priced(found.cost_nanos(record.input_tokens, record.output_tokens), Source.TABLE)
