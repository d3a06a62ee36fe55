"""Pricing LLM calls exactly: integer nano-dollars, a price table per model, overridable per tenant.

Money is never a float here. A record that reports ``cost_usd`` is charged that; one that does not
is priced from the table; one with tokens but no price and no cost is *unpriced*, which raises an
alert instead of silently counting $0 (the failure LiteLLM users report).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from enum import StrEnum

from fleet_agent.contracts import CostRecord

NANO = Decimal(1_000_000_000)
#: What may follow a listed model's name in a release of the same model: a date, a build number, a
#: version, "latest" or a preview tag (-2024-08-06, -20241022, -002, @v2, -latest, -preview-05-20).
_RELEASE = re.compile(r"^[-@:](\d{4}-\d{2}-\d{2}|\d{8}|\d{3,}|latest|v\d+(\.\d+)*|preview(-[0-9-]+)?)$")


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
        """The exact model name (the tenant's price, then the global one); else a listed model of which
        this is a dated or versioned release (``gpt-4o-2024-08-06`` -> ``gpt-4o``). ``o3-mini`` is *not*
        ``o3``: a different model at a different price is unpriced (and alerts), never mispriced."""
        tables = (self.tenant_prices.get(tenant or "", {}), self.prices)
        for table in tables:
            if model in table:
                return table[model]
        for table in tables:
            releases = [name for name in table if model.startswith(name) and _RELEASE.match(model[len(name) :])]
            if releases:
                return table[max(releases, key=len)]
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
