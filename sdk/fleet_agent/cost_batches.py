"""The batching half of :class:`~fleet_agent.costs.CostRecorder`: a call's record, buffered, then published
as one ``CostBatch`` (signed by the agent's key) per ``max_records`` calls or ``max_delay_s`` seconds,
whichever comes first, by the recorder's flusher thread (which, with leases, also asks ahead every second).

A batch's records were all spent under one lease epoch and name at most ``MAX_BATCH_OPERATIONS``
operations; a batch holding a failed call leaves within ``FAILURE_DELAY_S``.
"""

from __future__ import annotations

import itertools
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from fleet_agent.call_records import Call, RecentRequests, RequestKey
from fleet_agent.contracts import MAX_BATCH_OPERATIONS, CostBatch, CostRecord, LeaseUse, Signer, encode
from fleet_agent.leases import Epoch, LeaseRequest, LeaseWallet, Reservation
from fleet_agent.pending import PendingPublishes

#: A batch holding a failed call leaves within this many seconds, whatever ``max_delay_s`` says.
FAILURE_DELAY_S = 1.0


class Publisher(Protocol):
    def publish(self, topic: str, data: bytes, **attrs: Any) -> Future[str]: ...


class CostBatches:
    """Records and batches; :class:`~fleet_agent.costs.CostRecorder` provides the state declared here."""

    agent_id: str
    _lock: threading.Lock
    _clock: Callable[[], datetime]
    _wallet: LeaseWallet | None
    _signer: Signer | None
    _tenant: str | None
    _publisher: Publisher
    _topic: str
    _max_records: int
    _max_delay_s: float
    _records: list[CostRecord]
    _operations: set[str]
    _call_prefix: str
    _calls: itertools.count[int]
    _first_at: float | None
    _pending: PendingPublishes
    _recent: RecentRequests
    _wake: threading.Event
    _closed: bool
    _tag: Epoch | None
    _tick: float | None

    if TYPE_CHECKING:  # LeaseCalls'

        def _ask(self, request: LeaseRequest) -> None: ...

        def _lease_use(self, wallet: LeaseWallet, tag: Epoch | None, request: LeaseRequest | None) -> LeaseUse: ...

    def _next_call_id(self) -> str:
        """Unique within a batch (all the contract asks): a random prefix per recorder and a counter,
        several times cheaper than a UUID per call."""
        return f"{self._call_prefix}{next(self._calls):x}"

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
