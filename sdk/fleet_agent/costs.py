"""Recording LLM calls: batched cost events, and local enforcement of the fleet's commands.

    recorder = agent.costs
    with recorder.call("summarize", model="gpt-4o") as call:   # raises CallRefused while blocked
        reply = client.chat(...)
        call.tokens(reply.usage.prompt_tokens, reply.usage.completion_tokens)

or, for a call that begins and ends in different places (an integration's stream)::

    ticket = recorder.admit("gpt-4o", max_tokens=500)    # raises CallRefused: send nothing
    ...                                                   # the request; fill in a Call
    recorder.record(call, ticket=ticket)                  # or recorder.release(ticket): never sent

Records are batched into one ``CostBatch`` message (signed by the agent's key) per ``max_records``
calls or ``max_delay_s`` seconds, whichever comes first: 100 calls a second make a few messages a
second (:mod:`fleet_agent.cost_batches`). A blocked recorder (paused, over budget, breaker open,
quarantined, or throttled past its calls per minute) refuses the call *before* the model is called: the
overshoot past a hard limit is at most what was in flight (:mod:`fleet_agent.cost_holds` says how a
command's ``until`` lifts a block by itself, and how the throttle counts).

A call may name its request (``request_key``: the prompt, or any stable key of the request). The
recorder keeps only a sha256 of it, in a bounded memory (the last ``REPEAT_MEMORY`` keys, each for
``REPEAT_WINDOW``): a call whose key a successful call of this recorder had within the last hour is
recorded with ``repeat=True`` (a response cache could have served it). The key is never kept nor sent.

With ``leases=True`` (a :class:`~fleet_agent.FleetAgent`'s default) every call is also checked against the
fleet's budget lease before it runs: :mod:`fleet_agent.leases` (the wallet), :mod:`fleet_agent.lease_calls`.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, ParamSpec, TypeVar

from fleet_agent.call_records import REPEAT_MEMORY, REPEAT_WINDOW, Call, CallRefused, RecentRequests, RequestKey
from fleet_agent.contracts import MAX_BATCH_RECORDS, Command, CommandType, CostRecord, Signer, utcnow
from fleet_agent.cost_batches import FAILURE_DELAY_S, CostBatches, Publisher
from fleet_agent.cost_holds import CostHolds
from fleet_agent.lease_calls import LeaseCalls
from fleet_agent.leases import Epoch, LeaseWallet, Reservation
from fleet_agent.pending import PendingPublishes

#: ``Call`` and ``CallRefused`` live in :mod:`fleet_agent.call_records`; importing them from here still works.
__all__ = ["FAILURE_DELAY_S", "Call", "CallRefused", "CostRecorder", "NoRoomNow", "RequestKey", "Ticket"]

P = ParamSpec("P")
R = TypeVar("R")
CLOSE_HOOKS: list[Callable[[CostRecorder, float], None]] = []  # run by close() first: the integrations' drains


class NoRoomNow(Exception):
    """An admission that must not wait (``admit(..., wait=False)``) the lease cannot cover now."""


@dataclass(frozen=True)
class Ticket:
    """One call admitted by :meth:`CostRecorder.admit`, to :meth:`~CostRecorder.record` or
    :meth:`~CostRecorder.release` once. ``reservation``: its worst case held on the lease (None without
    leases, or let through without a lease); ``leased``: spent under the lease (False only for fail open)."""

    model: str
    reservation: Reservation | None
    leased: bool
    #: Its place in a throttle's minute (the monotonic time counted), None when no throttle counted it.
    throttle_slot: float | None = None


class CostRecorder(CostBatches, CostHolds, LeaseCalls):
    """Batches one agent's call records and enforces the commands the fleet sends it. Thread-safe."""

    def __init__(
        self,
        agent_id: str,
        publisher: Publisher,
        topic_path: str,
        *,
        max_records: int = MAX_BATCH_RECORDS,
        max_delay_s: float | None = None,
        clock: Callable[[], datetime] = utcnow,
        half_open_calls: int = 3,
        repeat_memory: int = REPEAT_MEMORY,
        repeat_window: timedelta = REPEAT_WINDOW,
        signer: Signer | None = None,
        tenant: str | None = None,
        leases: bool = False,
        lease_wait_s: float = 2.0,
        lease_fail_open: bool = False,
        default_max_tokens: int = 1024,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        """``clock`` (aware UTC now) is compared with the commands' ``until``; injectable for tests.

        ``half_open_calls``: trial calls let through once a breaker's cooldown has ended; further calls
        wait for the fleet's verdict (``breaker_closed``, or ``breaker_open`` again), or another cooldown.

        ``repeat_memory``, ``repeat_window``: how many request-key hashes are remembered (LRU) and for
        how long, to flag repeated requests (``CostRecord.repeat``). ``signer``: signs each batch, as ``tenant``'s.

        ``leases``: check every call against the fleet's budget lease before it runs (see
        :mod:`fleet_agent.lease_calls`); a call that does not fit waits up to ``lease_wait_s`` for a grant,
        then is refused, or goes ahead when ``lease_fail_open`` and no grant answered. A call's worst case
        assumes ``default_max_tokens`` output tokens when it does not say ``max_tokens``. ``max_delay_s``
        defaults to 30 s with leases (a batch also leaves when a lease is asked for, and within
        ``FAILURE_DELAY_S`` of a failed call), 1 s without.
        ``monotonic``: the lease's clock (its expiry, ``retry_after_s``) and the throttle's minute, not
        ``clock``; injectable for tests.
        """
        self.agent_id = agent_id
        self._signer, self._tenant = signer, tenant
        self._half_open_calls = max(1, half_open_calls)
        self._trials: tuple[int, int] = (-1, 0)  # (trial window, calls let through in it)
        self._clock, self._monotonic = clock, monotonic
        self._publisher = publisher
        self._topic = topic_path
        self._max_records = min(max_records, MAX_BATCH_RECORDS)
        # At most 10 minutes: a batch's records must lie within MAX_BATCH_SPAN of each other.
        self._max_delay_s = min(max_delay_s if max_delay_s is not None else 30.0 if leases else 1.0, 600.0)
        self._lock = threading.Lock()
        self._records: list[CostRecord] = []
        self._operations: set[str] = set()
        self._call_prefix = f"{uuid.uuid4().hex[:12]}-"
        self._calls = itertools.count(1)
        self._first_at: float | None = None
        self._pending = PendingPublishes()
        self._blocks: dict[CommandType, Command] = {}
        self._throttle: Command | None = None
        self._throttled: deque[float] = deque()
        self._seen_commands: set[str] = set()
        self._recent = RecentRequests(repeat_memory, repeat_window.total_seconds())
        self._wake = threading.Event()
        self._closed = False
        wallet = LeaseWallet(default_max_tokens=default_max_tokens, wait_s=lease_wait_s, monotonic=monotonic)
        self._wallet = wallet if leases else None
        self._lease_wait_s, self._fail_open = lease_wait_s, lease_fail_open
        self._warned_open = float("-inf")
        self._tag: Epoch | None = None  # the epoch the buffered records were spent under (None: no lease)
        self._tick = 1.0 if leases else None  # with leases, the flusher also asks ahead every second
        self._thread = threading.Thread(target=self._flush_on_time, name=f"fleet-costs-{agent_id}", daemon=True)
        self._thread.start()

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called: a call recorded now raises RuntimeError."""
        return self._closed

    @property
    def lease_default_max_tokens(self) -> int | None:
        """The output limit the lease wallet assumes for a call that names none; None without leases."""
        return None if self._wallet is None else self._wallet.default_max_tokens

    # -- admission ---------------------------------------------------------------------------------

    def admit(
        self, model: str, *, max_tokens: int | None = None, prompt_tokens: int | None = None, wait: bool = True
    ) -> Ticket:
        """Admit one call before it is sent: raises :class:`CallRefused` while blocked or throttled (or, with
        leases, when its worst case does not fit the lease within ``lease_wait_s``). ``max_tokens`` (default
        ``default_max_tokens``) and ``prompt_tokens`` (default 0) bound the worst case. ``wait=False``: only
        a reservation that fits now, else :class:`NoRoomNow` (nothing reserved: admit again with a wait).

        The ticket goes to :meth:`record` once the call ended, or to :meth:`release` if it was never sent."""
        self.check()
        wallet, reservation = self._wallet, None
        if wallet is not None and wait:
            reservation = self._admit(wallet, model, max_tokens, prompt_tokens)
        elif wallet is not None:
            got = wallet.reserve(model, max_tokens, prompt_tokens)
            if not isinstance(got, Reservation):
                raise NoRoomNow
            reservation = got
        ticket = Ticket(model, reservation, leased=wallet is None or reservation is not None)
        try:
            slot = self._count_throttled()  # last: a call waiting for a lease holds no place in the minute
        except CallRefused:
            self._unreserve(ticket)
            raise
        return ticket if slot is None else dataclasses.replace(ticket, throttle_slot=slot)

    def release(self, ticket: Ticket) -> None:
        """A call admitted but never sent: release its reservation (and its place under a throttle);
        records nothing. An ask ahead it was to carry still leaves."""
        self._uncount_throttled(ticket.throttle_slot)
        self._unreserve(ticket)

    def _unreserve(self, ticket: Ticket) -> None:
        wallet, reservation = self._wallet, ticket.reservation
        if wallet is None or reservation is None:
            return
        wallet.settle(reservation, ticket.model, (0, 0), Decimal(0))
        if reservation.ask is not None and (send := wallet.send_deferred(reservation.ask.request_id)) is not None:
            self._ask(send)

    # -- recording -------------------------------------------------------------------------------

    @contextmanager
    def call(
        self,
        operation: str,
        *,
        model: str,
        max_tokens: int | None = None,
        prompt_tokens: int | None = None,
        request_key: RequestKey | None = None,
    ) -> Iterator[Call]:
        """Around one model call: :meth:`admit` (refused while blocked or throttled, or, with leases, when its
        worst case does not fit the lease), then :meth:`record` (failed if it raised).

        ``max_tokens`` (the output tokens the model may write; default ``default_max_tokens``) and
        ``prompt_tokens`` (default 0) bound the call's worst case, checked against the lease before it runs.
        ``request_key`` (or ``call.request_key`` set inside the block) flags repeated requests.
        """
        ticket = self.admit(model, max_tokens=max_tokens, prompt_tokens=prompt_tokens)
        call = Call(operation=operation, model=model, request_key=request_key)
        try:
            yield call
        except BaseException:
            call.success = False
            raise
        finally:
            self.record(call, ticket=ticket)

    def track(
        self,
        operation: str,
        *,
        model: str,
        usage: Callable[[Any], tuple[int, int]] | None = None,
        request_key: Callable[..., RequestKey | None] | None = None,
        max_tokens: int | None = None,
        prompt_tokens: int | None = None,
    ) -> Callable[[Callable[P, R]], Callable[P, R]]:
        """Decorator form of :meth:`call`; ``usage(result)`` returns (input_tokens, output_tokens), and
        ``request_key(*args, **kwargs)`` (called with the function's arguments) the request's key.
        ``max_tokens``, ``prompt_tokens``: as for :meth:`call`, the same for every call."""

        def wrap(fn: Callable[P, R]) -> Callable[P, R]:
            @functools.wraps(fn)
            def inner(*args: P.args, **kwargs: P.kwargs) -> R:
                key = request_key(*args, **kwargs) if request_key is not None else None
                bounds = {"max_tokens": max_tokens, "prompt_tokens": prompt_tokens}
                with self.call(operation, model=model, request_key=key, **bounds) as call:
                    result = fn(*args, **kwargs)
                    if usage is not None:
                        call.tokens(*usage(result))
                    return result

            return inner

        return wrap

    def record(self, call: Call, *, request_key: RequestKey | None = None, ticket: Ticket | None = None) -> None:
        """Buffer one call's record. ``request_key`` (default ``call.request_key``): the record is a
        ``repeat`` when a successful call with the same key was recorded within ``repeat_window``; only
        successful calls are remembered (a cache holds answers, not errors).

        ``ticket``: the call's admission (:meth:`admit`). Without one, the call was not checked before it
        ran: with leases its cost is debited from the lease, all of it counted as over, and under a
        throttle it counts in the minute (never refused: it ran)."""
        if ticket is None:
            self._count_throttled(ran=True)
            self._record(call, request_key, None, leased=True)
        else:
            self._record(call, request_key, ticket.reservation, leased=ticket.leased)

    def close(self, timeout: float = 10.0) -> bool:
        """Flush and wait for every batch to be accepted; True when none is left pending."""
        any(hook(self, timeout) for hook in CLOSE_HOOKS)  # each hook first (they return None: all run)
        with self._lock:
            self._closed = True  # first: a record() racing with close() is refused, never dropped
        self.flush()
        self._wake.set()
        done, not_done = self._pending.wait(timeout)
        return not not_done and all(future.exception() is None for future in done)
