"""The lease half of :class:`~fleet_agent.costs.CostRecorder`: admitting a call against the budget lease,
asking the fleet for more, waiting for it, and refusing.

A call is admitted when its worst case fits what is left of the lease (:mod:`fleet_agent.leases`). When it
does not (no lease, spent, expired, or its model unpriced), the recorder flushes what it buffered as a batch
carrying a lease request, and waits up to ``lease_wait_s`` for a grant. Threads that wait share one
outstanding request; a new one is sent only when the previous got no grant within ``lease_wait_s``. A
grant answering the request wakes the waiters, who re-check once and, still not fitting, are refused at
once: ``CallRefused(reason="lease_exhausted")``, or ``"unknown_model"`` while no lease prices the model.
With no answer at all (the fleet unreachable) the call is refused too, unless ``lease_fail_open``: then it
goes ahead, recorded in a batch with ``lease_id=None`` (a WARNING at most once a minute).

A call that fits may ask ahead: when the balance falls under half of what it was after the latest grant,
or less than a fifth of the lease's lifetime is left, a request goes out with the buffered records
(one outstanding at a time), so a busy agent normally never waits.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from datetime import datetime

from fleet_agent.call_records import LEASE_EXHAUSTED, UNKNOWN_MODEL, CallRefused
from fleet_agent.contracts import MAX_INT, LeaseUse
from fleet_agent.leases import Epoch, LeaseRequest, LeaseState, LeaseWallet, Reservation, Shortfall, to_usd

log = logging.getLogger("fleet_agent")

#: Seconds between two WARNINGs about calls let through without a lease (``lease_fail_open``).
FAIL_OPEN_WARNING_S = 60.0


class LeaseCalls:
    """Admission of calls against the lease; :class:`~fleet_agent.costs.CostRecorder` provides the state."""

    agent_id: str
    _wallet: LeaseWallet | None
    _clock: Callable[[], datetime]
    _lease_wait_s: float
    _fail_open: bool
    _warned_open: float
    _lock: threading.Lock
    _closed: bool

    def check(self) -> None:
        raise NotImplementedError  # CostRecorder's

    def _flush_locked(self, request: LeaseRequest | None = None) -> Future[str] | None:
        raise NotImplementedError  # CostRecorder's

    @property
    def lease(self) -> LeaseState | None:
        """The lease calls are spent under now (a snapshot), or None: leases off, none granted, or expired."""
        return None if self._wallet is None else self._wallet.snapshot(self._clock().timestamp())

    def _admit(
        self, wallet: LeaseWallet, model: str, max_tokens: int | None, prompt_tokens: int | None
    ) -> Reservation | None:
        """Reserve the call's worst case; None when it goes ahead without a lease (fail open). Raises
        :class:`CallRefused` when it does not fit and no grant made it fit within ``lease_wait_s``."""
        got = wallet.reserve(
            model, max_tokens, prompt_tokens, self._clock().timestamp(), time.monotonic(), self._lease_wait_s
        )
        if isinstance(got, Reservation):
            if got.ask is not None:
                self._ask(LeaseRequest(got.ask))
            return got
        return self._wait_for_lease(wallet, model, max_tokens, prompt_tokens, got)

    def _wait_for_lease(
        self, wallet: LeaseWallet, model: str, max_tokens: int | None, prompt_tokens: int | None, short: Shortfall
    ) -> Reservation | None:
        deadline = time.monotonic() + self._lease_wait_s
        while True:
            now = time.monotonic()
            request_id, new, stale_at = wallet.request(now, self._lease_wait_s, short.unpriced)
            if new:
                need = None if short.unpriced else short.usd
                models = (short.unpriced,) if short.unpriced else ()
                self._ask(LeaseRequest(request_id, need, short.tokens, models))
            wallet.wait(short.generation, min(deadline, stale_at) - now)
            self.check()  # a block that arrived meanwhile refuses with its own reason
            got = wallet.reserve(
                model, max_tokens, prompt_tokens, self._clock().timestamp(), time.monotonic(), self._lease_wait_s
            )
            if isinstance(got, Reservation):
                if got.ask is not None:
                    self._ask(LeaseRequest(got.ask))
                return got
            pricing, short = short.unpriced is not None, got
            answered = wallet.answered(request_id)
            if answered and pricing and short.unpriced is None and time.monotonic() < deadline:
                continue  # the answer priced the model, sized without knowing the call: ask for what it needs
            if answered or time.monotonic() >= deadline:
                break
        if self._fail_open and not answered:
            now = time.monotonic()
            if now - self._warned_open >= FAIL_OPEN_WARNING_S:
                self._warned_open = now
                log.warning(
                    "agent %s: no lease granted within %.1f s; calling without one (lease_fail_open)",
                    self.agent_id,
                    self._lease_wait_s,
                )
            return None
        raise self._refusal(short, answered)

    def _refusal(self, short: Shortfall, answered: bool) -> CallRefused:
        waited = "the fleet answered" if answered else f"no grant within {self._lease_wait_s:g} s"
        if short.unpriced is not None:
            note = f"{UNKNOWN_MODEL}: no lease prices model {short.unpriced!r}; {waited}"
            return CallRefused(self.agent_id, {}, note=note, reason=UNKNOWN_MODEL)
        note = (
            f"{LEASE_EXHAUSTED}: the call's worst case (${to_usd(short.usd)}, {short.tokens} tokens) does not "
            f"fit what is left of the lease; {waited}"
        )
        return CallRefused(self.agent_id, {}, note=note, reason=LEASE_EXHAUSTED)

    def _ask(self, request: LeaseRequest) -> None:
        """Send a lease request now, on a batch with what is buffered."""
        with self._lock:
            if not self._closed:
                self._flush_locked(request)

    def _lease_use(self, wallet: LeaseWallet, tag: Epoch | None, request: LeaseRequest | None) -> LeaseUse:
        """A batch's ``lease``: the epoch its records were spent under (``tag``), and the request if any."""
        lease_id, over, over_tokens = wallet.use(tag)
        if request is None:
            return LeaseUse(lease_id=lease_id, over_usd=to_usd(over), over_tokens=min(over_tokens, MAX_INT))
        return LeaseUse(
            lease_id=lease_id,
            request_id=request.request_id,
            need_usd=None if request.usd is None else to_usd(request.usd),
            need_tokens=None if request.tokens is None else min(request.tokens, MAX_INT),
            models=list(request.models),
            over_usd=to_usd(over),
            over_tokens=min(over_tokens, MAX_INT),
        )
