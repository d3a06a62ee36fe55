"""A lease's price of a model as the wallet keeps it: the ceiling a call's worst case is reserved at, and,
when the lease carries them (``ModelPrice.parts``), the parts a call is debited at exactly once its usage is
known: cache reads and writes, reasoning, long-context tiers.

Integers throughout, as the wallet keeps money: femto-dollars per token, nano-dollars per call, rounded
half up once per call, which is the server's ``shared.domain.pricing.Price.cost_nanos`` to the nano-dollar.
A lease without parts (an older fleet, or one not set to send them) is debited at its ceiling: never less
than the fleet counts, more for a call that wrote no cache or stayed under a tier.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from fleet_agent.call_records import FEMTO_PER_NANO, cost_nanos, femto
from fleet_agent.contracts import ModelPrice
from fleet_agent.messages.leases import PriceParts

_HALF_NANO = FEMTO_PER_NANO // 2


@dataclass(frozen=True, slots=True)
class Flat:
    """One tier's prices in femto-dollars per token (a part without its own price: at input / output)."""

    input: int
    output: int
    cache_read: int
    cache_write: int
    reasoning: int

    @classmethod
    def of(cls, parts: PriceParts) -> Flat:
        base_in, base_out = femto(parts.input_usd), femto(parts.output_usd)

        def part(value: Decimal | None, default: int) -> int:
            return default if value is None else femto(value)

        return cls(
            base_in, base_out, part(parts.cache_read_usd, base_in), part(parts.cache_write_usd, base_in),
            part(parts.reasoning_usd, base_out),
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class Exact:
    """A price's parts and its tiers (ascending thresholds): a call's exact cost from its usage."""

    base: Flat
    tiers: tuple[tuple[int, Flat], ...] = ()

    def nanos(self, input_tokens: int, output_tokens: int, read: int, write: int, reasoning: int) -> int | None:
        """The call's cost, or None when the parts do not add up (more cached than input tokens, more
        reasoning than output): the caller then debits at the ceiling."""
        if min(input_tokens, output_tokens, read, write, reasoning) < 0:
            return None
        if read + write > input_tokens or reasoning > output_tokens:
            return None
        p = self.base
        for threshold, tier in self.tiers:
            if input_tokens > threshold:
                p = tier
        total = (
            p.input * (input_tokens - read - write) + p.cache_read * read + p.cache_write * write
            + p.output * (output_tokens - reasoning) + p.reasoning * reasoning
        )  # fmt: skip
        return (total + _HALF_NANO) // FEMTO_PER_NANO


@dataclass(frozen=True, slots=True)
class LeasePrice:
    """A model's price in a lease: the ceiling (femto per input and output token) and, when the lease
    carried them, the exact parts; ``issued``: the grant's issued-at (a later grant's price wins)."""

    input: int
    output: int
    exact: Exact | None = None
    issued: float = 0.0

    @classmethod
    def of(cls, price: ModelPrice, issued: float) -> LeasePrice:
        exact = None
        if price.parts is not None:
            tiers = tuple((t.above_input_tokens, Flat.of(t)) for t in price.parts.tiers)
            exact = Exact(Flat.of(price.parts), tuple(sorted(tiers, key=lambda tier: tier[0])))
        return cls(femto(price.input_usd), femto(price.output_usd), exact, issued)

    def worst(self, input_tokens: int, output_tokens: int) -> int:
        """A call's worst case at the ceiling (what is reserved before it runs)."""
        return cost_nanos(self.input, self.output, input_tokens, output_tokens)

    def debit(self, tokens: tuple[int, ...]) -> int:
        """What a call with ``tokens`` = (input, output[, cache read, cache write, reasoning]) is debited:
        exactly, with the parts when the lease carried them and the usage adds up; else at the ceiling."""
        input_tokens, output_tokens = tokens[0], tokens[1]
        if self.exact is not None:
            read, write, reasoning = (*tokens[2:5], 0, 0, 0)[:3]
            found = self.exact.nanos(input_tokens, output_tokens, read, write, reasoning)
            if found is not None:
                return found
        return self.worst(input_tokens, output_tokens)


#: The price of a model no lease priced (a call recorded by hand): nothing debited but its reported cost.
FREE = LeasePrice(0, 0)
