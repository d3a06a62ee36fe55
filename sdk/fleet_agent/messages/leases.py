"""Budget leases on the wire: what the fleet grants (:class:`LeaseGrant`, inside a ``lease`` command) and
what an agent says about the lease it spends when it sends a cost batch (:class:`LeaseUse`).

A lease is an amount of spend (USD, and tokens where a token budget applies) an agent may use without
asking, until ``expires_at``. Leases come in *epochs*: the id ``<epoch>.<seq>`` names the epoch (12 hex
digits) and the grant's number in it. A grant of the epoch the agent already spends *adds* its amount to
what is left; a grant of another epoch replaces it (the fleet starts a new epoch only when the old one
ended: expired, revoked by a hold, or given up by the agent). Granted twice (a redelivery), a lease is
one lease: the agent applies an id once.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated

from pydantic import AwareDatetime, Field, StringConstraints

from fleet_agent.messages.fields import MAX_INT, CallId, ModelName, Strict

LEASE_ID_PATTERN = r"^[0-9a-f]{12}\.[0-9]{1,9}$"
#: ``<epoch>.<seq>``: 12 hex digits, a dot, the grant's number within the epoch.
LeaseId = Annotated[str, StringConstraints(pattern=LEASE_ID_PATTERN)]
#: An amount of USD in a lease: exact to the nano-dollar, at most a billion.
LeaseUsd = Annotated[Decimal, Field(ge=0, le=Decimal("1000000000"), max_digits=20, decimal_places=9)]
LeaseTokens = Annotated[int, Field(ge=0, le=MAX_INT, strict=True)]
#: USD per token: exact to 15 places (list prices have at most 9 or 10).
TokenPrice = Annotated[Decimal, Field(ge=0, le=Decimal("1000"), max_digits=24, decimal_places=15)]
#: Models whose prices one lease carries at most, and models one request may ask prices for.
MAX_LEASE_MODELS = 32
MAX_REQUEST_MODELS = 16


def epoch_of(lease_id: str) -> str:
    """The epoch part of a lease id (``3f2a9c0b1d4e.7`` -> ``3f2a9c0b1d4e``)."""
    return lease_id.split(".", 1)[0]


def seq_of(lease_id: str) -> int:
    """The grant's number within its epoch (``3f2a9c0b1d4e.7`` -> 7)."""
    return int(lease_id.split(".", 1)[1])


#: Long-context tiers one price carries at most.
MAX_PRICE_TIERS = 8


class PriceParts(Strict):
    """A price exactly as the fleet charges it, USD per token: uncached input and output tokens, and the
    parts priced apart: input tokens read from / written to the prompt cache (None: at ``input_usd``),
    output tokens spent reasoning (None: at ``output_usd``)."""

    input_usd: TokenPrice
    output_usd: TokenPrice
    cache_read_usd: TokenPrice | None = None
    cache_write_usd: TokenPrice | None = None
    reasoning_usd: TokenPrice | None = None


class PriceTier(PriceParts):
    """A long-context tier: a call with more than ``above_input_tokens`` input tokens (cached ones
    included) pays this tier's prices for all its tokens."""

    above_input_tokens: LeaseTokens


class ExactPrice(PriceParts):
    """The parts of a price, and its tiers by ascending threshold: what an SDK debits a call at once it
    knows the call's usage (``fleet_agent.lease_prices``)."""

    tiers: list[PriceTier] = Field(default_factory=list, max_length=MAX_PRICE_TIERS)


class ModelPrice(Strict):
    """A model's price as the fleet charges it (the tenant's price if it has one): USD per token.

    ``input_usd`` / ``output_usd`` are the price's *ceiling*: no part of any call, at any size, costs more
    per token (Anthropic's cache writes, Gemini's and Claude's long-context tiers). A call's worst case is
    reserved at it, and an SDK that knows no more debits the call at it, never less than the fleet counts.
    ``parts`` (optional; absent in leases from fleets before it, and sent only when the fleet is set to,
    ``FLEET_LEASE_PRICE_PARTS``: an SDK before it refuses unknown fields) lets the SDK debit a call exactly
    after it ends, from its cache and reasoning tokens and its size."""

    input_usd: TokenPrice
    output_usd: TokenPrice
    parts: ExactPrice | None = None


class LeaseGrant(Strict):
    """The body of a ``lease`` command: spend the agent may add to what is left of its epoch."""

    lease_id: LeaseId
    #: USD granted by this lease (added to what is left when the epoch is the agent's current one).
    usd: LeaseUsd
    #: Tokens granted (input + output), or None when no token budget covers the agent.
    tokens: LeaseTokens | None = None
    #: When the whole epoch ends (the latest grant's expiry wins): the short lease lifetime, or the
    #: next budget period's reset, whichever comes first. Spend after it needs a new lease.
    expires_at: AwareDatetime
    #: The request (``LeaseUse.request_id``) this grant answers; None for the registration's first lease
    #: and for a grant the fleet re-sends on its own.
    request_id: CallId | None = None
    #: Set when a budget left less than the request needed: ask again no sooner than this many seconds
    #: (the budget's reset for the agent's own limit; a short wait for a shared one, whose leases return).
    #: Calls that do not fit what is left are refused at once until then.
    retry_after_s: Annotated[int, Field(ge=0, le=31 * 86_400)] | None = None
    #: Prices of the models the agent used recently or asked about, as the fleet charges them. The SDK
    #: estimates a call with them and refuses a model no lease has priced.
    prices: dict[ModelName, ModelPrice] = Field(default_factory=dict, max_length=MAX_LEASE_MODELS)


class LeaseUse(Strict):
    """On a cost batch: which lease its records were spent under, and optionally a request for more.

    A batch carrying a request may have no records: that is how an agent asks for a lease when it has
    nothing to report (there is no other round-trip type).
    """

    #: The latest lease the agent applied in the epoch its records were spent under; None: no lease (the
    #: agent holds none, or spent failing open while the fleet was unreachable).
    lease_id: LeaseId | None = None
    #: Set to ask for a lease; unique per request (a redelivered request is answered once).
    request_id: CallId | None = None
    #: What the call waiting for this request needs (its worst-case estimate), if one is waiting.
    need_usd: LeaseUsd | None = None
    need_tokens: LeaseTokens | None = None
    #: Models the agent wants prices for (a model no lease has priced yet).
    models: list[ModelName] = Field(default_factory=list, max_length=MAX_REQUEST_MODELS)
    #: Over this epoch so far (cumulative), what calls cost beyond the estimate they reserved: the only
    #: spend past a lease an honest SDK makes. The fleet checks each batch against its lease with it.
    over_usd: LeaseUsd = Decimal(0)
    over_tokens: LeaseTokens = 0
