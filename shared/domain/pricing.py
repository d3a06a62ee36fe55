"""Pricing LLM calls exactly: integer nano-dollars, a price per model, overridable per tenant and fleet.

Money is never a float here. A record that reports ``cost_usd`` is charged that; one that does not
is priced by the first of: the tenant's override, the fleet's override (``PUT /v1/prices/{model}``),
the price catalog (genai-prices, bundled: shared/store/price_catalog.py). One with tokens but no
price and no cost is *unpriced*, which raises an alert instead of silently counting $0 (the failure
LiteLLM users report).

A call's cost is its uncached input tokens at the input price, its cache reads and cache writes at
their own prices, and its output tokens at the output price (the reasoning part at the reasoning
price where the catalog has one). Each priced call keeps the label of what priced it
(:class:`Quote` ``source``: ``override:tenant``, ``override:fleet``, ``catalog:genai-prices@0.2.5``;
``agent`` for a reported cost), so a catalog upgrade never reprices history silently.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal
from enum import StrEnum
from typing import Protocol

from fleet_agent.contracts import CostRecord

NANO = Decimal(1_000_000_000)
#: What may follow a listed model's name in a release of the same model: a date, a build number, a
#: version, "latest" or a preview tag (-2024-08-06, -20241022, -002, @v2, -latest, -preview-05-20).
_RELEASE = re.compile(r"^[-@:](\d{4}-\d{2}-\d{2}|\d{8}|\d{3,}|latest|v\d+(\.\d+)*|preview(-[0-9-]+)?)$")

#: The price source labels a call is counted under (beside a catalog's own, ``catalog:<name>@<version>``).
TENANT_OVERRIDE = "override:tenant"
FLEET_OVERRIDE = "override:fleet"
AGENT_COST = "agent"  # the agent reported cost_usd
NO_COST = "free"  # no tokens and no cost
NO_PRICE = "unpriced"


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
    """USD per token: input and output tokens, and the parts of them priced apart.

    ``cache_read_usd`` / ``cache_write_usd`` price the input tokens read from / written to the provider's
    prompt cache (None: at the input price); ``reasoning_usd`` the output tokens spent reasoning (None: at
    the output price). ``tiers``: (input tokens, price) pairs, ascending: a call with more input tokens
    than a tier's threshold is priced wholly at that tier's price (the long-context prices of Gemini and
    Claude; genai-prices' rule)."""

    input_usd: Decimal
    output_usd: Decimal
    cache_read_usd: Decimal | None = None
    cache_write_usd: Decimal | None = None
    reasoning_usd: Decimal | None = None
    tiers: tuple[tuple[int, Price], ...] = ()

    def for_input(self, input_tokens: int) -> Price:
        """The flat price a call with this many input tokens (cached ones included) is charged at."""
        found = self
        for threshold, tier in self.tiers:
            if input_tokens > threshold:
                found = tier
        return found

    def cost_nanos(
        self, input_tokens: int, output_tokens: int, cache_read: int = 0, cache_write: int = 0, reasoning: int = 0
    ) -> int:
        """Exact cost: uncached input + cache reads + cache writes + output (reasoning apart), rounded once."""
        p = self.for_input(input_tokens)
        usd = (
            p.input_usd * (input_tokens - cache_read - cache_write)
            + (p.input_usd if p.cache_read_usd is None else p.cache_read_usd) * cache_read
            + (p.input_usd if p.cache_write_usd is None else p.cache_write_usd) * cache_write
            + p.output_usd * (output_tokens - reasoning)
            + (p.output_usd if p.reasoning_usd is None else p.reasoning_usd) * reasoning
        )
        return to_nanos(usd)

    def ceiling(self) -> Price:
        """Input and output prices no part of a call exceeds, at any size: what an estimate that knows only
        input and output tokens (a lease's prices, the SDK's wallet) must use never to count less than the
        fleet does. The maximum over every tier (a long-context call is priced wholly at its tier: Gemini
        2.5 Pro over 200k input tokens, Claude's 1M context) of the input-side parts (input, cache reads,
        cache writes: Anthropic's cost 1.25 x the input price) and the output-side ones (output, reasoning)."""
        flats = [self, *(tier for _threshold, tier in self.tiers)]
        ins = [p for f in flats for p in (f.input_usd, f.cache_read_usd, f.cache_write_usd) if p is not None]
        outs = [p for f in flats for p in (f.output_usd, f.reasoning_usd) if p is not None]
        return Price(max(ins), max(outs))

    def record_nanos(self, record: CostRecord) -> int:
        return self.cost_nanos(
            record.input_tokens, record.output_tokens, record.cache_read_tokens, record.cache_write_tokens,
            record.reasoning_tokens,
        )  # fmt: skip


@dataclass(frozen=True)
class Quote:
    """The price in force for a model, what set it, and since / until when (None: open-ended)."""

    price: Price
    source: str
    #: The name the price was found under: the override's model, or the catalog's ``provider/model``.
    matched: str
    valid_from: datetime | None = None
    valid_until: datetime | None = None

    def valid_at(self, at: datetime) -> bool:
        return (self.valid_from is None or self.valid_from <= at) and (
            self.valid_until is None or at < self.valid_until
        )


class Catalog(Protocol):
    """A price catalog: pure lookups in data shipped with the code (shared/store/price_catalog.py)."""

    @property
    def source(self) -> str:
        """``catalog:<name>@<version>``: the label of every quote it gives."""
        ...

    def quote(self, model: str, at: datetime | None = None) -> Quote | None:
        """The catalog's price of ``model`` at ``at`` (None: now); None when it does not know the model."""
        ...

    def alternatives(self, model: str, at: datetime | None = None) -> Sequence[tuple[str, Price]]:
        """The other models of ``model``'s provider, with their prices (cheaper-model suggestions)."""
        ...


@dataclass(frozen=True)
class PriceTable:
    """Fleet overrides, per-tenant overrides that win over them, and the catalog under both."""

    prices: Mapping[str, Price] = field(default_factory=dict)
    tenant_prices: Mapping[str, Mapping[str, Price]] = field(default_factory=dict)
    catalog: Catalog | None = None

    def override(self, model: str, tenant: str | None = None) -> Quote | None:
        """The override for ``model``: the tenant's before the fleet's, and in each the most specific first:
        the exact name; a listed model of which this is a dated or versioned release (``gpt-4o-2024-08-06``
        -> ``gpt-4o``; ``o3-mini`` is *not* ``o3``: a different model is never mispriced); then the same
        across the ``provider/`` prefix: ``openai/gpt-4o`` takes an override of ``gpt-4o``, and ``gpt-4o``
        one of ``openai/gpt-4o`` (of several providers' overrides of a bare name, the one of the provider
        the catalog places it at; none when it places it at none of them). ``azure/gpt-4o`` never takes
        ``openai/gpt-4o``'s: the prefix names another seller."""
        tables = ((self.tenant_prices.get(tenant or "", {}), TENANT_OVERRIDE), (self.prices, FLEET_OVERRIDE))
        bare = model.split("/", 1)[1] if "/" in model else None
        # The tenant's table first at every step, so that a call costs the tenant the same whichever name
        # reaches the fleet (the SDK's gpt-4o, an OTLP span's openai/gpt-4o): a fleet override of the
        # prefixed name never beats the tenant's of the bare one.
        for table, source in tables:
            for exact in (True, False):
                if (name := _match(model, table, exact)) is not None:
                    return Quote(table[name], source, name)
            for exact in (True, False):
                if bare is not None and (name := _match(bare, table, exact)) is not None:
                    return Quote(table[name], source, name)
                if bare is None and (name := self._prefixed(model, table, exact)) is not None:
                    return Quote(table[name], source, name)
        return None

    def _prefixed(self, model: str, table: Mapping[str, Price], exact: bool) -> str | None:
        """The ``provider/<model>`` override of a bare name (the catalog's provider's, when several)."""
        by_bare: dict[str, list[str]] = {}
        for name in table:
            if "/" in name:
                by_bare.setdefault(name.split("/", 1)[1], []).append(name)
        found = _match(model, by_bare, exact)
        if found is None:
            return None
        names = by_bare[found]
        if len(names) == 1:
            return names[0]
        placed = self.catalog.quote(model) if self.catalog is not None else None
        provider = placed.matched.split("/", 1)[0] if placed is not None else None
        return next((name for name in names if name.split("/", 1)[0] == provider), None)

    def quote(self, model: str, tenant: str | None = None, at: datetime | None = None) -> Quote | None:
        """The price in force: an override, else the catalog's at ``at`` (None: now); None: unpriced."""
        found = self.override(model, tenant)
        if found is None and self.catalog is not None:
            found = self.catalog.quote(model, at)
        return found

    def lookup(self, model: str, tenant: str | None = None, at: datetime | None = None) -> Price | None:
        found = self.quote(model, tenant, at)
        return None if found is None else found.price


def _match(model: str, names: Mapping[str, object], exact: bool) -> str | None:
    """``model`` itself among ``names`` (``exact``), else the longest name ``model`` is a release of."""
    if exact:
        return model if model in names else None
    releases = [name for name in names if model.startswith(name) and _RELEASE.match(model[len(name) :])]
    return max(releases, key=len) if releases else None


class Source(StrEnum):
    REPORTED = "reported"  # the agent reported cost_usd
    TABLE = "table"  # priced from an override or the catalog
    FREE = "free"  # no tokens and no cost: nothing to charge
    UNPRICED = "unpriced"  # tokens, but no cost and no price: alert, never $0


@dataclass(frozen=True)
class Priced:
    nanos: int
    source: Source
    #: What priced it: a :class:`Quote` source, ``agent``, ``free`` or ``unpriced``.
    label: str = ""

    @property
    def unpriced(self) -> bool:
        return self.source is Source.UNPRICED


def price(record: CostRecord, table: PriceTable, tenant: str | None = None) -> Priced:
    if record.cost_usd is not None:
        return Priced(to_nanos(record.cost_usd), Source.REPORTED, AGENT_COST)
    if record.input_tokens == 0 and record.output_tokens == 0:
        return Priced(0, Source.FREE, NO_COST)
    found = table.quote(record.model, tenant, record.at)
    if found is None:
        return Priced(0, Source.UNPRICED, NO_PRICE)
    return Priced(found.price.record_nanos(record), Source.TABLE, found.source)
