"""The lease wallet: what an agent may spend without asking, checked before every call. Pure (no I/O),
thread-safe (one lock), integers on the hot path.

The fleet grants leases (:class:`~fleet_agent.messages.leases.LeaseGrant`) in *epochs*. A grant of the
current epoch adds its amount to the balance; a grant of another epoch replaces the current one, if its
command was issued after everything applied so far (a late grant of an older epoch is ignored). A blocking
command (pause, budget_exhausted, breaker_open, quarantine) drops the epoch, and no grant issued before it
revives it. The epoch ends when its highest grant's lifetime (``expires_at - issued_at``, both the fleet's
clock) has passed on the wallet's monotonic clock since that grant arrived: the agent's wall clock plays no
part. A grant answering a request with ``retry_after_s`` means no room: until then no request is made.

Before a call, :meth:`LeaseWallet.reserve` estimates its worst case, ``input_price * prompt_tokens +
output_price * max_tokens`` rounded half up to nano-dollars (the server's ``Price.cost_nanos``; prices
are kept as integer femto-dollars per token, exact for the contract's 15 places), and reserves it if it
fits in the balance minus what calls in flight reserved; the lease's prices are ceilings (no part of any
call costs more per token: cache writes, long-context tiers). :meth:`LeaseWallet.settle` debits the actual
cost, exactly from the call's cache, reasoning and size when the lease carried the price's parts
(:mod:`fleet_agent.lease_prices`), else at the ceiling, and releases the reservation; what a call cost
beyond its estimate accumulates in the epoch's ``over`` (the fleet checks each batch against the lease
with it).

Money here: ``int`` nano-dollars; prices: ``int`` femto-dollars per token (:mod:`fleet_agent.call_records`).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal

from fleet_agent.call_records import exact_usd, to_nanos
from fleet_agent.contracts import MAX_REQUEST_MODELS, LeaseGrant, epoch_of, seq_of
from fleet_agent.lease_prices import FREE, LeasePrice
from fleet_agent.lease_records import Epoch, LeaseRequest, LeaseState, Reservation, Shortfall, Waiter

#: Seconds a deferred ask ahead (waiting for its call to end) keeps another from being made.
DEFERRED_ASK_S = 120.0
#: Requests remembered as answered (a waiter checks whether the request it shares was answered).
_ANSWERED_MEMORY = 64


class LeaseWallet:
    """One agent's lease: epochs, balance, reservations, prices, the over counter, expiry, the calls waiting
    and the one outstanding request for more. Thread-safe; waiters wait on :attr:`changed` (notified by
    every grant and revocation). ``monotonic``: the lease's clock (expiry, ``retry_after_s``, a request
    going stale after ``wait_s``); injectable for tests."""

    def __init__(
        self, *, default_max_tokens: int = 1024, wait_s: float = 2.0, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        self.default_max_tokens = default_max_tokens
        self.wait_s = wait_s
        self.monotonic = monotonic
        self._lock = threading.Lock()
        self.changed = threading.Condition(self._lock)
        self._generation = 0
        self._epoch: Epoch | None = None
        #: Issued-at (epoch seconds) of the latest grant applied or blocking command: no grant of another
        #: epoch issued at or before it is applied.
        self._floor = float("-inf")
        self._prices: dict[str, LeasePrice] = {}
        self._request: tuple[str, float, frozenset[str]] | None = None  # (id, sent (monotonic), models)
        #: An ask ahead made by a call, sent with its record once the call is over: not yet a request a
        #: waiting call could share (it would wait for a request nobody sent). (id, made (monotonic))
        self._deferred: tuple[str, float] | None = None
        self._answered: OrderedDict[str, None] = OrderedDict()
        self._waiters: set[Waiter] = set()
        self._no_room_until = float("-inf")  # monotonic: a grant's retry_after_s
        self._last_call_ts = float("-inf")

    # -- grants and revocations ----------------------------------------------------------------------

    def grant(self, lease: LeaseGrant, issued_at: datetime) -> bool:
        """Apply one grant (its command's ``issued_at``); False when it was ignored (seen, or stale)."""
        received = self.monotonic()
        issued = issued_at.timestamp()
        epoch_id, seq = epoch_of(lease.lease_id), seq_of(lease.lease_id)
        prices = {model: LeasePrice.of(p, issued) for model, p in lease.prices.items()}
        usd, lifetime = to_nanos(lease.usd), (lease.expires_at - issued_at).total_seconds()
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
            if seq >= epoch.max_seq:  # the highest grant names the epoch and sets its expiry
                epoch.max_seq, epoch.lease_id, epoch.expires_at = seq, lease.lease_id, lease.expires_at
                epoch.granted_ts, epoch.expires_ts = received, received + lifetime
            epoch.after_grant = epoch.balance - epoch.reserved
            epoch.after_grant_tokens = (epoch.tokens or 0) - epoch.reserved_tokens
            self._floor = max(self._floor, issued)
            for model, price in prices.items():
                known = self._prices.get(model)
                if known is None or known.issued <= issued:
                    self._prices[model] = price
            no_room = lease.request_id is not None and lease.retry_after_s is not None
            self._no_room_until = received + (lease.retry_after_s or 0) if no_room else float("-inf")
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
        if self._deferred is not None and self._deferred[0] == request_id:
            self._deferred = None

    def _live(self, now: float) -> Epoch | None:
        """The current epoch, ended first if it has expired (under the lock; ``now`` monotonic)."""
        epoch = self._epoch
        if epoch is not None and now >= epoch.expires_ts:
            self._epoch = epoch = None
        return epoch

    # -- calls ---------------------------------------------------------------------------------------

    def reserve(
        self, model: str, max_tokens: int | None, prompt_tokens: int | None, waiter: Waiter | None = None
    ) -> Reservation | Shortfall:
        """Reserve a call's worst case in the current epoch, or say why it does not fit (and update what
        ``waiter``, if given, needs; a waiter that fits stops waiting). A reservation may carry a request
        to send now (asking ahead)."""
        output_tokens = self.default_max_tokens if max_tokens is None else max_tokens
        input_tokens = prompt_tokens or 0
        if input_tokens < 0 or output_tokens < 0:
            raise ValueError("max_tokens and prompt_tokens may not be negative")
        tokens = input_tokens + output_tokens
        with self._lock:
            now = self._last_call_ts = self.monotonic()
            price = self._prices.get(model)
            usd = 0 if price is None else price.worst(input_tokens, output_tokens)
            epoch = self._live(now)
            if (
                price is None
                or epoch is None
                or usd > epoch.balance - epoch.reserved
                or (epoch.tokens is not None and tokens > epoch.tokens - epoch.reserved_tokens)
            ):
                unpriced = model if price is None else None
                if waiter is not None:
                    waiter.usd, waiter.tokens, waiter.unpriced = usd, tokens, unpriced
                reason = "lease_exhausted" if price is not None else "unknown_model"
                no_room = max(0.0, self._no_room_until - now)
                return Shortfall(reason, usd, tokens, unpriced, self._generation, no_room)
            if waiter is not None:
                self._waiters.discard(waiter)
            epoch.reserved += usd
            epoch.reserved_tokens += tokens
            ask = self._ask_ahead(epoch, now, deferred=True)
            return Reservation(epoch, usd, tokens, price.input, price.output, ask, price)

    def settle(
        self, reservation: Reservation | None, model: str, tokens: tuple[int, ...], cost: Decimal | None
    ) -> Epoch | None:
        """After a call: debit its actual cost (``cost`` USD when the agent knew it, else the lease price
        applied to ``tokens`` = (input, output[, cache read, cache write, reasoning]): exactly when the lease
        carried the price's parts, else at its ceiling) and release its reservation; returns the epoch it
        was spent under. Without a reservation (a call recorded by hand) the whole cost counts as over."""
        actual_tokens = tokens[0] + tokens[1]
        usd = to_nanos(cost) if cost is not None and cost.is_finite() and cost >= 0 else None
        with self._lock:
            if reservation is None:
                epoch = self._epoch
                if epoch is None:
                    return None
                if usd is None:
                    usd = self._prices.get(model, FREE).debit(tokens)
                estimate = estimate_tokens = 0
            else:
                epoch = reservation.epoch
                if usd is None:
                    price = reservation.price or LeasePrice(reservation.input_femto, reservation.output_femto)
                    usd = price.debit(tokens)
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

    def _ask_ahead(self, epoch: Epoch, now: float, *, deferred: bool = False) -> LeaseRequest | None:
        """A new request when the epoch runs low (under half of what it was after its latest grant, or
        less than a fifth of its lifetime left), no request is outstanding and the fleet has not said it
        has no room (under the lock). ``deferred``: it leaves later, with a call's record (:meth:`sent`)."""
        if (self._request is not None and now - self._request[1] < self.wait_s) or now < self._no_room_until:
            return None
        if self._deferred is not None and now - self._deferred[1] < DEFERRED_ASK_S:
            return None
        low = 2 * (epoch.balance - epoch.reserved) < epoch.after_grant or (
            epoch.tokens is not None and 2 * (epoch.tokens - epoch.reserved_tokens) < epoch.after_grant_tokens
        )
        lifetime = epoch.expires_ts - epoch.granted_ts
        late = 5 * (epoch.expires_ts - now) < lifetime and now - self._last_call_ts <= lifetime
        if not (low or late):
            return None
        if deferred:
            request = LeaseRequest(uuid.uuid4().hex)
            self._deferred = (request.request_id, now)
            return request
        return self._new_request(now, None)

    def send_deferred(self, request_id: str) -> LeaseRequest | None:
        """The deferred ask ahead to send now (with its call's record), carrying what calls waiting now
        need; from then on a request they share. None once answered, or while the fleet said it has no room."""
        with self._lock:
            if self._deferred is None or self._deferred[0] != request_id:
                return None
            self._deferred, now = None, self.monotonic()
            if now < self._no_room_until or request_id in self._answered:
                return None
            return self._new_request(now, None, request_id)

    def ask_ahead(self) -> LeaseRequest | None:
        """For a background check: a request to send now, when the epoch runs low or nearly expires and
        the agent made a call within the lease's lifetime; else None."""
        with self._lock:
            now = self.monotonic()
            epoch = self._live(now)
            return None if epoch is None else self._ask_ahead(epoch, now)

    def enlist(self, short: Shortfall) -> Waiter:
        """A call starts waiting for a lease: its need counts in the requests sent until :meth:`dismiss`."""
        waiter = Waiter(short.usd, short.tokens, short.unpriced)
        with self._lock:
            self._waiters.add(waiter)
        return waiter

    def dismiss(self, waiter: Waiter) -> None:
        with self._lock:
            self._waiters.discard(waiter)

    def request(self, waiter: Waiter) -> tuple[str, LeaseRequest | None, float]:
        """The request ``waiter`` shares, as (id, the request to send now or None, seconds until it goes
        stale): the outstanding one while it is younger than ``wait_s`` (and asks for the waiter's
        unpriced model, if any), else a new one the caller must send."""
        with self._lock:
            now, current = self.monotonic(), self._request
            if (
                current is not None
                and now - current[1] < self.wait_s
                and (waiter.unpriced is None or waiter.unpriced in current[2])
            ):
                return current[0], None, current[1] + self.wait_s - now
            request = self._new_request(now, waiter.unpriced)
            return request.request_id, request, self.wait_s

    def _new_request(self, now: float, model: str | None, request_id: str | None = None) -> LeaseRequest:
        """A request whose need is the sum of the worst cases of the calls waiting now (under the lock)."""
        waiters = self._waiters
        priced = [w.usd for w in waiters if w.unpriced is None]
        wanted = dict.fromkeys([model] if model else [])
        wanted.update(dict.fromkeys(sorted(w.unpriced for w in waiters if w.unpriced is not None)))
        models = tuple(wanted)[:MAX_REQUEST_MODELS]
        request = LeaseRequest(
            request_id or uuid.uuid4().hex,
            sum(priced) if priced else None,
            sum(w.tokens for w in waiters) if waiters else None,
            models,
        )
        self._request = (request.request_id, now, frozenset(models))
        return request

    def answered(self, request_id: str) -> bool:
        """Whether a grant answered the request (with whatever amount, 0 included)."""
        with self._lock:
            return request_id in self._answered

    def wait(self, generation: int, timeout: float) -> None:
        """Block until a grant or revocation changes the wallet after ``generation``, or ``timeout``."""
        with self._lock:
            if self._generation == generation and timeout > 0:
                self.changed.wait(timeout)

    # -- what batches and people see -----------------------------------------------------------------

    def current(self) -> Epoch | None:
        """The epoch calls are spent under now (None: no lease, or it expired)."""
        with self._lock:
            return self._live(self.monotonic())

    def use(self, epoch: Epoch | None) -> tuple[str | None, int, int]:
        """For a batch of records spent under ``epoch``: (highest lease id in it, over nanos, over tokens)."""
        if epoch is None:
            return None, 0, 0
        with self._lock:
            return epoch.lease_id, epoch.over, epoch.over_tokens

    def snapshot(self) -> LeaseState | None:
        with self._lock:
            epoch = self._live(self.monotonic())
            if epoch is None or epoch.expires_at is None:
                return None
            return LeaseState(
                epoch=epoch.id, lease_id=epoch.lease_id, expires_at=epoch.expires_at,
                balance_usd=exact_usd(epoch.balance), balance_tokens=epoch.tokens,
                reserved_usd=exact_usd(epoch.reserved), reserved_tokens=epoch.reserved_tokens,
                over_usd=exact_usd(epoch.over), over_tokens=epoch.over_tokens,
            )  # fmt: skip
