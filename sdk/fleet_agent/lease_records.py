"""The lease wallet's records: one epoch's state, a snapshot of it, a call's reservation or why it does not
fit, a request for a lease, and a waiting call (fleet_agent.leases keeps them under its lock)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from fleet_agent.lease_prices import LeasePrice


@dataclass(eq=False, slots=True)
class Epoch:
    """One epoch's state. Mutable, guarded by the wallet's lock; an epoch that was replaced or dropped
    stays referenced by the reservations and buffered records made under it (its ``over`` still grows)."""

    id: str
    #: The highest lease applied in it, and its seq.
    lease_id: str = ""
    max_seq: int = -1
    seqs: set[int] = field(default_factory=set)
    #: Nanos; may go below 0 by what calls cost beyond their estimate.
    balance: int = 0
    #: None: no token limit in this epoch.
    tokens: int | None = 0
    reserved: int = 0
    reserved_tokens: int = 0
    over: int = 0
    over_tokens: int = 0
    #: Monotonic: when the highest grant arrived, and when its lifetime ends.
    granted_ts: float = 0.0
    expires_ts: float = 0.0
    #: The fleet's expiry (for display).
    expires_at: datetime | None = None
    #: What was left (unreserved) after the latest grant: asking ahead starts under half of it.
    after_grant: int = 0
    after_grant_tokens: int = 0


@dataclass(frozen=True)
class LeaseState:
    """A snapshot of the lease an agent spends (``CostRecorder.lease``)."""

    epoch: str
    #: The highest lease applied in this epoch.
    lease_id: str
    balance_usd: Decimal
    #: None: no token limit in this epoch.
    balance_tokens: int | None
    reserved_usd: Decimal
    reserved_tokens: int
    #: The fleet's expiry of the epoch (for display: the wallet ends it on its monotonic clock).
    expires_at: datetime
    #: What calls cost beyond their estimate in this epoch (cumulative).
    over_usd: Decimal
    over_tokens: int


@dataclass(slots=True)
class Reservation:
    """A call's worst case, reserved in ``epoch`` until :meth:`LeaseWallet.settle`."""

    epoch: Epoch
    usd: int
    tokens: int
    input_femto: int
    output_femto: int
    #: A request for more to send now (asking ahead), or None.
    ask: LeaseRequest | None = None
    #: The model's lease price (the call is debited at it: exactly when the lease carried the parts);
    #: None: at ``input_femto`` / ``output_femto``.
    price: LeasePrice | None = None


@dataclass(frozen=True, slots=True)
class Shortfall:
    """Why a call does not fit (``reason``: ``lease_exhausted`` or ``unknown_model``) and what it needs."""

    reason: str
    usd: int
    tokens: int
    #: The model no lease has priced, or None.
    unpriced: str | None
    #: The wallet's generation when it was found: wait for a change from it.
    generation: int
    #: Seconds until the fleet has room again (a grant's ``retry_after_s``): refuse at once; 0: ask.
    no_room_s: float = 0.0


@dataclass(frozen=True, slots=True)
class LeaseRequest:
    """A request for a lease to put on a batch (``LeaseUse.request_id``, ``need_*``, ``models``)."""

    request_id: str
    usd: int | None = None
    tokens: int | None = None
    models: tuple[str, ...] = ()


@dataclass(eq=False, slots=True)
class Waiter:
    """A call waiting for a lease, and what it needs (a request sums the needs of the calls waiting)."""

    usd: int
    tokens: int
    unpriced: str | None
