"""Recording LLM calls: batched cost events, and local enforcement of the fleet's commands.

    recorder = agent.costs
    with recorder.call("summarize", model="gpt-4o") as call:   # raises CallRefused while blocked
        reply = client.chat(...)
        call.tokens(reply.usage.prompt_tokens, reply.usage.completion_tokens)

Records are batched into one ``CostBatch`` message (signed by the agent's key) per ``max_records``
calls or ``max_delay_s`` seconds, whichever comes first: 100 calls a second make a few messages a
second. A blocked recorder (paused, over budget, breaker open, quarantined) refuses the call
*before* the model is called: the overshoot past a hard limit is at most what was in flight.

A command's ``until`` makes a block lift by itself, without waiting for the lifting command: a
``budget_exhausted`` ends when its budget period resets, and a ``breaker_open`` turns *half-open*
when its cooldown ends (trial calls go through; the server answers with ``breaker_closed`` when
they succeed, or with a new ``breaker_open``). ``until`` is the server's clock read against the
agent's, so a skewed agent clock moves the moment by the skew.

A call may name its request (``request_key``: the prompt, or any stable key of the request). The
recorder keeps only a sha256 of it, in a bounded memory (the last ``REPEAT_MEMORY`` keys, each for
``REPEAT_WINDOW``): a call whose key a successful call of this recorder had within the last hour is
recorded with ``repeat=True`` (a response cache could have served it). The key is never kept nor sent.

With ``leases=True`` (a :class:`~fleet_agent.FleetAgent`'s default) every call is also checked against the
fleet's budget lease before it runs: :mod:`fleet_agent.leases` (the wallet), :mod:`fleet_agent.lease_calls`.
"""

from __future__ import annotations

import functools
import itertools
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, ParamSpec, Protocol, TypeVar

from fleet_agent.call_records import REPEAT_MEMORY, REPEAT_WINDOW, Call, CallRefused, RecentRequests, RequestKey
from fleet_agent.contracts import (
    BLOCKING_COMMANDS,
    MAX_BATCH_OPERATIONS,
    MAX_BATCH_RECORDS,
    Command,
    CommandType,
    CostBatch,
    CostRecord,
    Signer,
    encode,
    utcnow,
)
from fleet_agent.lease_calls import LeaseCalls
from fleet_agent.leases import Epoch, LeaseRequest, LeaseWallet, Reservation
from fleet_agent.pending import PendingPublishes

#: ``Call`` and ``CallRefused`` live in :mod:`fleet_agent.call_records`; importing them from here still works.
__all__ = ["Call", "CallRefused", "CostRecorder", "RequestKey"]

P = ParamSpec("P")
R = TypeVar("R")
#: A batch holding a failed call leaves within this many seconds, whatever ``max_delay_s`` says.
FAILURE_DELAY_S = 1.0
CLOSE_HOOKS: list[Callable[[CostRecorder, float], None]] = []  # run by close() first: the integrations' drains


def _lapsed(block: Command, now: datetime) -> bool:
    """Whether a block's ``until`` has passed (only the commands that carry one ever lapse).

    Kept rather than deleted: a ``breaker_open`` stays half-open until the server closes it.
    """
    return block.until is not None and block.until <= now


class _Publisher(Protocol):
    def publish(self, topic: str, data: bytes, **attrs: Any) -> Future[str]: ...


class CostRecorder(LeaseCalls):
    """Batches one agent's call records and enforces the commands the fleet sends it. Thread-safe."""

    def __init__(
        self,
        agent_id: str,
        publisher: _Publisher,
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
        ``monotonic``: the lease's clock (its expiry, ``retry_after_s``), not ``clock``; injectable for tests.
        """
        self.agent_id = agent_id
        self._signer, self._tenant = signer, tenant
        self._half_open_calls = max(1, half_open_calls)
        self._trials: tuple[int, int] = (-1, 0)  # (trial window, calls let through in it)
        self._clock = clock
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

    # -- enforcement ---------------------------------------------------------------------------

    def apply(self, command: Command) -> bool:
        """Take a command into account; False when it is not for this agent or was seen already."""
        if command.agent_id != self.agent_id:
            return False
        with self._lock:
            if command.command_id in self._seen_commands:
                return False
            self._seen_commands.add(command.command_id)
            if command.command in BLOCKING_COMMANDS:
                current = self._blocks.get(command.command)
                if current is None or current.issued_at <= command.issued_at:
                    self._blocks[command.command] = command
                if self._wallet is not None:
                    self._wallet.revoke(command.issued_at)  # the lease ends at once
            elif command.command is CommandType.LEASE and command.lease is not None and self._wallet is not None:
                self._wallet.grant(command.lease, command.issued_at)
            for blocking, lifting in BLOCKING_COMMANDS.items():
                block = self._blocks.get(blocking)
                if command.command is lifting and block is not None and block.issued_at <= command.issued_at:
                    del self._blocks[blocking]
            if command.command in (CommandType.BREAKER_OPEN, CommandType.BREAKER_CLOSED):
                self._trials = (-1, 0)  # a new cooldown, or none: trials start afresh
            if self._wallet is not None and self._records and self._tag is not self._current():
                self._flush_locked()  # the epoch changed: one batch per epoch
        return True

    @property
    def blocked(self) -> dict[CommandType, Command]:
        """The blocks refusing calls now: a lapsed ``budget_exhausted`` or half-open breaker is not one."""
        now = self._clock()
        with self._lock:
            return {kind: cmd for kind, cmd in self._blocks.items() if not _lapsed(cmd, now)}

    @property
    def breaker_half_open(self) -> bool:
        """True when the breaker's cooldown has ended without a ``breaker_closed``: trial calls go through.

        Kept apart from :attr:`blocked` so an agent can go easy (one call at a time, say) until the
        server closes the breaker or opens it again.
        """
        now = self._clock()
        with self._lock:
            breaker = self._blocks.get(CommandType.BREAKER_OPEN)
        return breaker is not None and _lapsed(breaker, now)

    def check(self) -> None:
        """Raise :class:`CallRefused` while any blocking command is in force (see :attr:`blocked`), and
        past the trial calls of a half-open breaker."""
        if not self._blocks:  # the common case, on every call: no clock, no lock (a dict's truth is atomic)
            return
        blocks = self.blocked
        if blocks:
            raise CallRefused(self.agent_id, blocks)
        self._trial()

    def _trial(self) -> None:
        """A half-open breaker lets ``half_open_calls`` through per cooldown-long window after its end."""
        now = self._clock()
        with self._lock:
            breaker = self._blocks.get(CommandType.BREAKER_OPEN)
            if breaker is None or breaker.until is None or not _lapsed(breaker, now):
                return
            cooldown = max((breaker.until - breaker.issued_at).total_seconds(), 1.0)
            window = int((now - breaker.until).total_seconds() // cooldown)
            current, used = self._trials
            if window != current:
                current, used = window, 0
            if used >= self._half_open_calls:
                retry_at = breaker.until + timedelta(seconds=cooldown * (window + 1))
                raise CallRefused(
                    self.agent_id,
                    {CommandType.BREAKER_OPEN: breaker},
                    note=f"breaker half-open: {used} trial calls made, waiting for the fleet's verdict "
                    f"(more trials from {retry_at.astimezone(UTC).isoformat(timespec='seconds')})",
                    until=retry_at,
                )
            self._trials = (current, used + 1)

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
        """Around one model call: refuses it while blocked (or, with leases, when its worst case does not fit
        the lease), then records it (failed if it raised).

        ``max_tokens`` (the output tokens the model may write; default ``default_max_tokens``) and
        ``prompt_tokens`` (default 0) bound the call's worst case, checked against the lease before it runs.
        ``request_key`` (or ``call.request_key`` set inside the block) flags repeated requests.
        """
        self.check()
        wallet, reservation = self._wallet, None
        if wallet is not None:
            reservation = self._admit(wallet, model, max_tokens, prompt_tokens)
        call = Call(operation=operation, model=model, request_key=request_key)
        try:
            yield call
        except BaseException:
            call.success = False
            raise
        finally:
            self._record(call, None, reservation, leased=wallet is None or reservation is not None)

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

    def _next_call_id(self) -> str:
        """Unique within a batch (all the contract asks): a random prefix per recorder and a counter,
        several times cheaper than a UUID per call."""
        return f"{self._call_prefix}{next(self._calls):x}"

    def record(self, call: Call, *, request_key: RequestKey | None = None) -> None:
        """Buffer one call's record. ``request_key`` (default ``call.request_key``): the record is a
        ``repeat`` when a successful call with the same key was recorded within ``repeat_window``; only
        successful calls are remembered (a cache holds answers, not errors).

        With leases, a call recorded this way (not through :meth:`call`) was not checked before it ran: its
        cost is debited from the lease, all of it counted as over."""
        self._record(call, request_key, None, leased=True)

    def _record(
        self, call: Call, request_key: RequestKey | None, reservation: Reservation | None, *, leased: bool
    ) -> None:
        """``leased``: spent under the lease (``reservation``, or none for a hand-recorded call); else
        a call let through without a lease (fail open), recorded with ``lease_id=None``."""
        tag = None
        if self._wallet is not None and leased:
            tag = self._wallet.settle(reservation, call.model, call.usage(), call.cost_usd)
        at = self._clock()
        key = request_key if request_key is not None else call.request_key
        repeat = False
        if key is not None:
            repeat = self._recent.check(RecentRequests.digest(key), at.timestamp(), remember=call.success)
        record = CostRecord(
            call_id=self._next_call_id(), at=at, model=call.model, input_tokens=call.input_tokens,
            output_tokens=call.output_tokens, cache_read_tokens=call.cache_read_tokens, cost_usd=call.cost_usd,
            cache_write_tokens=call.cache_write_tokens, reasoning_tokens=call.reasoning_tokens, success=call.success,
            latency_ms=round((time.monotonic() - call.started) * 1000, 3), operation=call.operation, repeat=repeat,
        )  # fmt: skip
        with self._lock:
            if self._closed:
                raise RuntimeError(f"cost recorder of {self.agent_id} is closed")
            if record.operation not in self._operations and len(self._operations) >= MAX_BATCH_OPERATIONS:
                self._flush_locked()  # a batch may name at most MAX_BATCH_OPERATIONS operations
            elif self._records and tag is not self._tag:
                self._flush_locked()  # a batch's records were all spent under one epoch
            self._tag = tag
            self._records.append(record)
            self._operations.add(record.operation)
            if self._first_at is None:
                self._first_at = time.monotonic()
                self._wake.set()
            if not record.success:  # within a second, leases or not: breakers and error alerts must not wait
                self._first_at = min(self._first_at, time.monotonic() + FAILURE_DELAY_S - self._max_delay_s)
            full = len(self._records) >= self._max_records
            ask = reservation.ask if reservation is not None else None
            if ask is not None and self._wallet is not None and (send := self._wallet.send_deferred(ask.request_id)):
                self._flush_locked(send)  # the ask ahead leaves with this record
                full = False
        if full:
            self.flush()

    def flush(self) -> Future[str] | None:
        """Publish what is buffered now, as one batch."""
        with self._lock:
            return self._flush_locked()

    def _current(self) -> Epoch | None:
        return None if self._wallet is None else self._wallet.current()

    def _flush_locked(self, request: LeaseRequest | None = None) -> Future[str] | None:
        """Publish the buffered records as one batch; with ``request``, the batch asks for a lease (alone,
        when the records were spent under another epoch than the current one: the request names it)."""
        if request is not None and self._records and self._tag is not self._current():
            self._flush_locked()
        records, self._records, self._first_at = self._records, [], None
        self._operations = set()
        if not records and request is None:
            return None
        lease = None
        if self._wallet is not None:
            lease = self._lease_use(self._wallet, self._tag if records else self._current(), request)
        batch = CostBatch(agent_id=self.agent_id, batch_id=uuid.uuid4().hex, records=records, lease=lease)
        body, attributes = encode(batch, signer=self._signer, tenant=self._tenant)
        # Published and tracked under the lock: batches leave in the order they were cut, and
        # close() (which takes the lock) never misses one when it waits.
        return self._pending.track(self._publisher.publish(self._topic, body, **attributes))

    def _flush_on_time(self) -> None:
        while True:
            self._wake.wait(self._tick)
            if self._wallet is not None:  # ask ahead even while no call comes (a lease nearly expired)
                ask = self._wallet.ask_ahead()
                if ask is not None:
                    self._ask(ask)
            with self._lock:
                if self._closed:
                    return
                if self._first_at is None:
                    self._wake.clear()  # under the lock: record() sets it under the same lock
                    continue
                wait = self._first_at + self._max_delay_s - time.monotonic()
            if wait > 0:
                time.sleep(wait if self._tick is None else min(wait, self._tick))
                continue
            self.flush()

    def close(self, timeout: float = 10.0) -> bool:
        """Flush and wait for every batch to be accepted; True when none is left pending."""
        any(hook(self, timeout) for hook in CLOSE_HOOKS)  # each hook first (they return None: all run)
        with self._lock:
            self._closed = True  # first: a record() racing with close() is refused, never dropped
        self.flush()
        self._wake.set()
        done, not_done = self._pending.wait(timeout)
        return not not_done and all(future.exception() is None for future in done)
