"""The enforcement half of :class:`~fleet_agent.costs.CostRecorder`: the holds the fleet's commands put on
an agent's model calls, and the throttle.

A hold (``pause``, ``budget_exhausted``, ``breaker_open``, ``quarantine``) refuses every call until the
command that lifts it, or its ``until``: a ``budget_exhausted`` ends when its budget period resets, and a
``breaker_open`` turns *half-open* when its cooldown ends (trial calls go through; the server answers with
``breaker_closed`` when they succeed, or with a new ``breaker_open``). ``until`` is the server's clock read
against the agent's, so a skewed agent clock moves the moment by the skew.

A ``throttle`` caps the calls admitted in any 60 s at its ``calls_per_minute`` (0 refuses every call) until
its ``until``, or a ``resume_work``: a call beyond the cap is refused (``CallRefused.reason`` ``throttled``)
and may be retried when the oldest call of the window is a minute old (``CallRefused.until``). Only the
calls made since the throttle came count (the recorder keeps no history while none is in force); a newer
throttle replaces the cap and keeps the window.
"""

from __future__ import annotations

import contextlib
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from fleet_agent.call_records import CLOSED, THROTTLED, CallRefused
from fleet_agent.contracts import BLOCKING_COMMANDS, Command, CommandType, CostRecord
from fleet_agent.leases import Epoch, LeaseRequest, LeaseWallet

#: The throttle's window, in seconds.
THROTTLE_WINDOW_S = 60.0


def lapsed(block: Command, now: datetime) -> bool:
    """Whether a block's ``until`` has passed (only the commands that carry one ever lapse).

    Kept rather than deleted: a ``breaker_open`` stays half-open until the server closes it.
    """
    return block.until is not None and block.until <= now


class CostHolds:
    """Holds and throttle; :class:`~fleet_agent.costs.CostRecorder` provides the state declared here."""

    agent_id: str
    _lock: threading.Lock
    _clock: Callable[[], datetime]
    _monotonic: Callable[[], float]
    _blocks: dict[CommandType, Command]
    _seen_commands: set[str]
    _trials: tuple[int, int]
    _half_open_calls: int
    _wallet: LeaseWallet | None
    _records: list[CostRecord]
    _tag: Epoch | None
    _closed: bool
    _throttle: Command | None = None
    _throttled: deque[float]  # monotonic times of the calls admitted while throttled
    #: When the last ``resume_work`` was issued: an older ``throttle`` (delivered late) is superseded.
    resumed_at: datetime | None = None

    if TYPE_CHECKING:  # CostRecorder's (cost_batches)

        def _current(self) -> Epoch | None: ...

        def _flush_locked(self, request: LeaseRequest | None = None) -> Future[str] | None: ...

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
            self._apply_throttle(command)
            for blocking, lifting in BLOCKING_COMMANDS.items():
                block = self._blocks.get(blocking)
                if command.command is lifting and block is not None and block.issued_at <= command.issued_at:
                    del self._blocks[blocking]
            if command.command in (CommandType.BREAKER_OPEN, CommandType.BREAKER_CLOSED):
                self._trials = (-1, 0)  # a new cooldown, or none: trials start afresh
            if self._wallet is not None and self._records and self._tag is not self._current():
                self._flush_locked()  # the epoch changed: one batch per epoch
        return True

    def _apply_throttle(self, command: Command) -> None:
        """Under the lock: a ``throttle`` (with a cap) newer than the one in force replaces it; a
        ``resume_work`` not older than it lifts it."""
        current, resumed = self._throttle, self.resumed_at
        if command.command is CommandType.THROTTLE and command.calls_per_minute is not None:
            if resumed is not None and command.issued_at < resumed:
                return  # a resume_work issued after it came first (reordering): superseded
            if current is None or current.issued_at <= command.issued_at:
                self._throttle = command
        elif command.command is CommandType.RESUME_WORK:
            if resumed is None or resumed < command.issued_at:
                self.resumed_at = command.issued_at
            if current is not None and current.issued_at <= command.issued_at:
                self._throttle = None
                self._throttled.clear()

    @property
    def blocked(self) -> dict[CommandType, Command]:
        """The blocks refusing calls now: a lapsed ``budget_exhausted`` or half-open breaker is not one."""
        now = self._clock()
        with self._lock:
            return {kind: cmd for kind, cmd in self._blocks.items() if not lapsed(cmd, now)}

    @property
    def throttle(self) -> int | None:
        """The calls-per-minute cap in force (a ``throttle`` before its ``until`` and ``resume_work``), or None."""
        if self._throttle is None:
            return None
        with self._lock:
            command = self._live_throttle()
            return None if command is None else command.calls_per_minute

    def _live_throttle(self) -> Command | None:
        """Under the lock: the throttle in force; one past its ``until`` is dropped with its window."""
        command = self._throttle
        if command is not None and lapsed(command, self._clock()):
            self._throttle = None
            self._throttled.clear()
            return None
        return command

    @property
    def breaker_half_open(self) -> bool:
        """True when the breaker's cooldown has ended without a ``breaker_closed``: trial calls go through.

        Kept apart from :attr:`blocked` so an agent can go easy (one call at a time, say) until the
        server closes the breaker or opens it again.
        """
        now = self._clock()
        with self._lock:
            breaker = self._blocks.get(CommandType.BREAKER_OPEN)
        return breaker is not None and lapsed(breaker, now)

    def check(self) -> None:
        """Raise :class:`CallRefused` while any blocking command is in force (see :attr:`blocked`), past the
        trial calls of a half-open breaker, while a throttle's minute is full, and once closed (``closed``).
        Counts nothing: a call is counted against the throttle when it is admitted (``admit``, ``call``) or
        recorded without one."""
        if not self._blocks and self._throttle is None and not self._closed:  # the common case: no clock, no lock
            return
        if self._closed:
            raise CallRefused(self.agent_id, {}, note=f"{CLOSED}: the agent is stopping", reason=CLOSED)
        blocks = self.blocked
        if blocks:
            raise CallRefused(self.agent_id, blocks)
        self._trial()
        if self._throttle is not None:
            with self._lock:
                self._throttle_full(count=False)

    def _throttle_full(self, *, count: bool, force: bool = False) -> float | None:
        """Under the lock: raise :class:`CallRefused` when the throttle's window is full; with ``count``,
        else take a place in it (one admitted call; returns its time). ``force``: count without refusing
        (a call that ran)."""
        command = self._live_throttle()
        if command is None or command.calls_per_minute is None:
            return None
        now = self._monotonic()
        window = self._throttled
        while window and window[0] <= now - THROTTLE_WINDOW_S:
            window.popleft()
        cap = command.calls_per_minute
        if len(window) >= cap and not force:
            wait = window[0] + THROTTLE_WINDOW_S - now if window else THROTTLE_WINDOW_S
            retry_at = self._clock() + timedelta(seconds=wait)
            if command.until is not None:
                retry_at = min(retry_at, command.until)
            end = f" until {command.until.astimezone(UTC).isoformat(timespec='seconds')}" if command.until else ""
            note = f"{THROTTLED}: {cap} calls/min{end}, {len(window)} made in the last minute"
            raise CallRefused(self.agent_id, {}, note=note, reason=THROTTLED, until=retry_at)
        if count:
            window.append(now)
            return now
        return None

    def _count_throttled(self, *, ran: bool = False) -> float | None:
        """A call admitted now counts in the throttle's window (refused when it is full); ``ran``: a call
        recorded without admission (it ran already: counted, never refused). Returns the place taken (its
        monotonic time), None when no throttle counted it."""
        if self._throttle is not None:
            with self._lock:
                return self._throttle_full(count=True, force=ran)
        return None

    def _uncount_throttled(self, slot: float | None) -> None:
        """Give back the place ``slot`` of a call admitted by the throttle but never sent: exactly that one,
        if still in the window (not another call's, nor one a newer window or ``resume_work`` dropped)."""
        if slot is not None and self._throttle is not None:
            with self._lock, contextlib.suppress(ValueError):  # aged out, or the window was cleared
                self._throttled.remove(slot)

    def _trial(self) -> None:
        """A half-open breaker lets ``half_open_calls`` through per cooldown-long window after its end."""
        now = self._clock()
        with self._lock:
            breaker = self._blocks.get(CommandType.BREAKER_OPEN)
            if breaker is None or breaker.until is None or not lapsed(breaker, now):
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
