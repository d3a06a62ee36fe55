"""The lease wallet: what an agent may spend without asking, checked before every call. Pure (no I/O),
thread-safe (one lock), integers on the hot path.

The fleet grants leases (:class:`~fleet_agent.messages.leases.LeaseGrant`) in *epochs*. A grant of the
current epoch adds its amount to the balance and its ``expires_at`` becomes the epoch's; a grant of another
epoch replaces the current one, if its command was issued after everything applied so far (a late grant of
an older epoch is ignored). A blocking command (pause, budget_exhausted, breaker_open, quarantine) drops
the epoch, and no grant issued before it revives it; past ``expires_at`` the epoch ends.

Before a call, :meth:`LeaseWallet.reserve` estimates its worst case, ``input_price * prompt_tokens +
output_price * max_tokens`` rounded half up to nano-dollars (the server's ``Price.cost_nanos``; prices
are kept as integer femto-dollars per token, exact for the contract's 15 places), and reserves it if it
fits in the balance minus what calls in flight reserved. :meth:`LeaseWallet.settle` debits the actual
cost and releases the reservation; what a call cost beyond its estimate accumulates in the epoch's
``over`` (the fleet checks each batch against the lease with it).

Money here: ``int`` nano-dollars (10**-9 USD); prices: ``int`` femto-dollars per token (10**-15 USD).
"""

from __future__ import annotations

import threading
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal

from fleet_agent.contracts import LeaseGrant, epoch_of, seq_of

FEMTO_PER_NANO = 1_000_000
_HALF_NANO = FEMTO_PER_NANO // 2
#: An amount on the wire (``LeaseUsd``) is at most a billion USD.
MAX_WIRE_NANOS = 10**18
#: Requests remembered as answered (a waiter checks whether the request it shares was answered).
_ANSWERED_MEMORY = 64


def femto(price: Decimal) -> int:
    """USD per token as integer femto-dollars: exact for a price of at most 15 decimal places."""
    return int(price.scaleb(15))


def to_nanos(usd: Decimal) -> int:
    """Dollars to whole nano-dollars, half up (the server's ``shared.domain.pricing.to_nanos``)."""
    return int(usd.scaleb(9).to_integral_value(rounding=ROUND_HALF_UP))


def to_usd(nanos: int) -> Decimal:
    """Nano-dollars as exact dollars (clamped to the wire's bound); 0 is ``Decimal(0)``, not ``0E-9``."""
    return Decimal(min(nanos, MAX_WIRE_NANOS)).scaleb(-9) if nanos else Decimal(0)


def _exact_usd(nanos: int) -> Decimal:
    return Decimal(nanos).scaleb(-9) if nanos else Decimal(0)


def cost_nanos(input_femto: int, output_femto: int, input_tokens: int, output_tokens: int) -> int:
    """``round_half_up(input_price * input_tokens + output_price * output_tokens)`` in nano-dollars."""
    return (input_femto * input_tokens + output_femto * output_tokens + _HALF_NANO) // FEMTO_PER_NANO


class Epoch:
    """One epoch's state. Mutable, guarded by the wallet's lock; an epoch that was replaced or dropped
    stays referenced by the reservations and buffered records made under it (its ``over`` still grows)."""

    __slots__ = (
        "after_grant",
        "after_grant_tokens",
        "balance",
        "expires_at",
        "expires_ts",
        "granted_ts",
        "id",
        "lease_id",
        "max_seq",
        "over",
        "over_tokens",
        "reserved",
        "reserved_tokens",
        "seqs",
        "tokens",
    )

    def __init__(self, epoch: str) -> None:
        self.id = epoch
        self.lease_id = ""
        self.seqs: set[int] = set()
        self.max_seq = -1
        self.balance = 0  # nanos; may go below 0 by what calls cost beyond their estimate
        self.tokens: int | None = 0  # None: no token limit in this epoch
        self.reserved = 0
        self.reserved_tokens = 0
        self.over = 0
        self.over_tokens = 0
        self.expires_ts = 0.0
        self.expires_at: datetime | None = None
        self.granted_ts = 0.0
        self.after_grant = 0
        self.after_grant_tokens = 0


@dataclass(frozen=True)
class LeaseState:
    """A snapshot of the lease an agent spends (``CostRecorder.lease``)."""

    epoch: str
    #: The latest lease applied in this epoch.
    lease_id: str
    balance_usd: Decimal
    #: None: no token limit in this epoch.
    balance_tokens: int | None
    reserved_usd: Decimal
    reserved_tokens: int
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
    ask: str | None = None


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


@dataclass(frozen=True, slots=True)
class LeaseRequest:
    """A request for a lease to put on a batch (``LeaseUse.request_id``, ``need_*``, ``models``)."""

    request_id: str
    usd: int | None = None
    tokens: int | None = None
    models: tuple[str, ...] = ()


class LeaseWallet:
    """One agent's lease: epochs, balance, reservations, prices, the over counter, expiry, and the one
    outstanding request for more. Thread-safe; waiters wait on :attr:`changed` (notified by every grant,
    revocation and answered request)."""

    def __init__(self, *, default_max_tokens: int = 1024) -> None:
        self.default_max_tokens = default_max_tokens
        self._lock = threading.Lock()
        self.changed = threading.Condition(self._lock)
        self._generation = 0
        self._epoch: Epoch | None = None
        #: Issued-at (epoch seconds) of the latest grant applied or blocking command: no grant of another
        #: epoch issued at or before it is applied.
        self._floor = float("-inf")
        self._prices: dict[str, tuple[int, int, float]] = {}  # model -> (in femto, out femto, issued_at)
        self._request: tuple[str, float, frozenset[str]] | None = None  # (id, sent (monotonic), models)
        self._answered: OrderedDict[str, None] = OrderedDict()
        self._last_call_ts = float("-inf")

    # -- grants and revocations ----------------------------------------------------------------------

    def grant(self, lease: LeaseGrant, issued_at: datetime) -> bool:
        """Apply one grant (its command's ``issued_at``); False when it was ignored (seen, or stale)."""
        issued = issued_at.timestamp()
        epoch_id, seq = epoch_of(lease.lease_id), seq_of(lease.lease_id)
        prices = {model: (femto(p.input_usd), femto(p.output_usd)) for model, p in lease.prices.items()}
        usd, expires = to_nanos(lease.usd), lease.expires_at.timestamp()
        with self._lock:
            epoch = self._epoch
            if epoch is not None and epoch.id == epoch_id:
                if seq in epoch.seqs:
                    return False
                epoch.balance += usd
                epoch.tokens = None if lease.tokens is None else (epoch.tokens or 0) + lease.tokens
            else:
                if issued <= self._floor:
                    return False  # an older epoch arriving late, or a grant a block revoked
                epoch = self._epoch = Epoch(epoch_id)
                epoch.balance, epoch.tokens = usd, lease.tokens
            epoch.seqs.add(seq)
            if seq >= epoch.max_seq:  # a re-sent older grant arriving after a newer one leaves the latest named
                epoch.lease_id = lease.lease_id
                epoch.max_seq, epoch.expires_ts, epoch.expires_at = seq, expires, lease.expires_at
            epoch.granted_ts = max(epoch.granted_ts, issued)
            epoch.after_grant = epoch.balance - epoch.reserved
            epoch.after_grant_tokens = (epoch.tokens or 0) - epoch.reserved_tokens
            self._floor = max(self._floor, issued)
            for model, (input_femto, output_femto) in prices.items():
                known = self._prices.get(model)
                if known is None or known[2] <= issued:
                    self._prices[model] = (input_femto, output_femto, issued)
            if lease.request_id is not None:
                self._answer(lease.request_id)
            self._generation += 1
            self.changed.notify_all()
        return True

    def revoke(self, issued_at: datetime) -> bool:
        """A blocking command issued at ``issued_at``: the epoch ends now; no grant issued before revives it.

        True when an epoch was dropped."""
        with self._lock:
            self._floor = max(self._floor, issued_at.timestamp())
            dropped, self._epoch = self._epoch, None
            self._generation += 1
            self.changed.notify_all()
        return dropped is not None

    def _answer(self, request_id: str) -> None:
        self._answered[request_id] = None
        while len(self._answered) > _ANSWERED_MEMORY:
            self._answered.popitem(last=False)
        if self._request is not None and self._request[0] == request_id:
            self._request = None

    def _live(self, now: float) -> Epoch | None:
        """The current epoch, ended first if it has expired (under the lock)."""
        epoch = self._epoch
        if epoch is not None and now >= epoch.expires_ts:
            self._epoch = epoch = None
        return epoch

    # -- calls ---------------------------------------------------------------------------------------

    def reserve(
        self, model: str, max_tokens: int | None, prompt_tokens: int | None, now: float, mono: float, wait_s: float
    ) -> Reservation | Shortfall:
        """Reserve a call's worst case in the current epoch (``now``: epoch seconds, ``mono``: monotonic),
        or say why it does not fit. A reservation may carry a request to send now (asking ahead)."""
        output_tokens = self.default_max_tokens if max_tokens is None else max_tokens
        input_tokens = prompt_tokens or 0
        if input_tokens < 0 or output_tokens < 0:
            raise ValueError("max_tokens and prompt_tokens may not be negative")
        tokens = input_tokens + output_tokens
        with self._lock:
            self._last_call_ts = now
            price = self._prices.get(model)
            if price is None:
                return Shortfall("unknown_model", 0, tokens, model, self._generation)
            usd = cost_nanos(price[0], price[1], input_tokens, output_tokens)
            epoch = self._live(now)
            if (
                epoch is None
                or usd > epoch.balance - epoch.reserved
                or (epoch.tokens is not None and tokens > epoch.tokens - epoch.reserved_tokens)
            ):
                return Shortfall("lease_exhausted", usd, tokens, None, self._generation)
            epoch.reserved += usd
            epoch.reserved_tokens += tokens
            ask = self._ask_ahead(epoch, now, mono, wait_s)
            return Reservation(epoch, usd, tokens, price[0], price[1], ask)

    def settle(
        self, reservation: Reservation | None, model: str, tokens: tuple[int, int], usd: int | None
    ) -> Epoch | None:
        """After a call: debit its actual cost (``usd`` nanos when the agent knew it, else the lease price
        applied to ``tokens`` = (input, output)) and release its reservation; returns the epoch it was spent
        under. Without a reservation (a call recorded by hand) the whole cost counts as over."""
        actual_tokens = tokens[0] + tokens[1]
        with self._lock:
            if reservation is None:
                epoch = self._epoch
                if epoch is None:
                    return None
                if usd is None:
                    price = self._prices.get(model, (0, 0, 0.0))
                    usd = cost_nanos(price[0], price[1], *tokens)
                estimate = estimate_tokens = 0
            else:
                epoch = reservation.epoch
                if usd is None:
                    usd = cost_nanos(reservation.input_femto, reservation.output_femto, *tokens)
                estimate, estimate_tokens = reservation.usd, reservation.tokens
                epoch.reserved -= estimate
                epoch.reserved_tokens -= estimate_tokens
            epoch.balance -= usd
            if epoch.tokens is not None:
                epoch.tokens -= actual_tokens
            if usd > estimate:
                epoch.over += usd - estimate
            if actual_tokens > estimate_tokens:
                epoch.over_tokens += actual_tokens - estimate_tokens
            return epoch

    # -- requests ------------------------------------------------------------------------------------

    def _ask_ahead(self, epoch: Epoch, now: float, mono: float, wait_s: float) -> str | None:
        """A new request id when the epoch runs low (under half of what it was after its latest grant, or
        less than a fifth of its lifetime left) and no request is outstanding (under the lock)."""
        if self._request is not None and mono - self._request[1] < wait_s:
            return None
        low = 2 * (epoch.balance - epoch.reserved) < epoch.after_grant or (
            epoch.tokens is not None and 2 * (epoch.tokens - epoch.reserved_tokens) < epoch.after_grant_tokens
        )
        lifetime = epoch.expires_ts - epoch.granted_ts
        late = 5 * (epoch.expires_ts - now) < lifetime and now - self._last_call_ts <= lifetime
        if not (low or late):
            return None
        return self._new_request(mono, frozenset())

    def ask_ahead(self, now: float, mono: float, wait_s: float) -> str | None:
        """For a background check: a request id to send now, when the epoch runs low or nearly expires
        and the agent made a call within the lease's lifetime; else None."""
        with self._lock:
            epoch = self._live(now)
            return None if epoch is None else self._ask_ahead(epoch, now, mono, wait_s)

    def request(self, mono: float, wait_s: float, unpriced: str | None) -> tuple[str, bool, float]:
        """The request a waiting call shares, as (id, new, when it goes stale (monotonic)): a new one the
        caller must send, or the outstanding one while it is younger than ``wait_s`` (and asks for
        ``unpriced``, if given)."""
        with self._lock:
            current = self._request
            if current is not None and mono - current[1] < wait_s and (unpriced is None or unpriced in current[2]):
                return current[0], False, current[1] + wait_s
            return self._new_request(mono, frozenset({unpriced} if unpriced else ())), True, mono + wait_s

    def _new_request(self, mono: float, models: frozenset[str]) -> str:
        request_id = uuid.uuid4().hex
        self._request = (request_id, mono, models)
        return request_id

    def answered(self, request_id: str) -> bool:
        """Whether a grant answered the request (with whatever amount, 0 included)."""
        with self._lock:
            return request_id in self._answered

    def wait(self, generation: int, timeout: float) -> None:
        """Block until a grant, revocation or answer changes the wallet after ``generation``, or ``timeout``."""
        with self._lock:
            if self._generation == generation and timeout > 0:
                self.changed.wait(timeout)

    # -- what batches and people see -----------------------------------------------------------------

    def current(self, now: float) -> Epoch | None:
        """The epoch calls are spent under now (None: no lease, or it expired)."""
        with self._lock:
            return self._live(now)

    def use(self, epoch: Epoch | None) -> tuple[str | None, int, int]:
        """For a batch of records spent under ``epoch``: (latest lease id in it, over nanos, over tokens)."""
        if epoch is None:
            return None, 0, 0
        with self._lock:
            return epoch.lease_id, epoch.over, epoch.over_tokens

    def snapshot(self, now: float) -> LeaseState | None:
        with self._lock:
            epoch = self._live(now)
            if epoch is None or epoch.expires_at is None:
                return None
            return LeaseState(
                epoch=epoch.id,
                lease_id=epoch.lease_id,
                balance_usd=_exact_usd(epoch.balance),
                balance_tokens=epoch.tokens,
                reserved_usd=_exact_usd(epoch.reserved),
                reserved_tokens=epoch.reserved_tokens,
                expires_at=epoch.expires_at,
                over_usd=_exact_usd(epoch.over),
                over_tokens=epoch.over_tokens,
            )

    def priced(self, model: str) -> bool:
        with self._lock:
            return model in self._prices
