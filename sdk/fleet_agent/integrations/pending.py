"""One model call between its admission and its record (:class:`Pending`), and the worker that records
the calls of streams dropped half-read (:func:`watch`), drained when their recorder closes (:func:`drain`).

:class:`Pending` admits as the recorder's ``call(...)`` does (so a held agent, a closed recorder, or a call
whose estimate the lease cannot cover raises :class:`~fleet_agent.CallRefused` *before* the request
leaves) and records exactly once: when the response is read, when a stream ends, is closed or is dropped,
or with the exception the call raised (recorded as failed). A call never sent records nothing.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

from fleet_agent.call_records import Call, CallRefused
from fleet_agent.costs import CLOSE_HOOKS, CostRecorder, NoRoomNow
from fleet_agent.integrations.usage import estimated

__all__ = ["CLOSED", "DEFAULT_MAX_TOKENS", "NoRoomNow", "Pending", "Reader", "default_output", "drain", "watch"]

log = logging.getLogger("fleet_agent")

#: The output limit a call without one is estimated at when the recorder has no lease wallet to say
#: (``CostRecorder``'s ``default_max_tokens`` default).
DEFAULT_MAX_TOKENS = 1024
#: :attr:`CallRefused.reason` of a call refused because the agent's cost recorder is closed.
CLOSED = "recorder_closed"


#: Reads a usage block (a response, a stream's event) into the call; False: the block has no usage (or
#: only zeros, :func:`counted`).
Reader = Callable[[Call, Any], bool]


class Pending:
    """One call admitted by the recorder and not recorded yet; :meth:`finish` records it, once.

    It admits and records as ``recorder.call(...)`` does (:meth:`CostRecorder.admit`, then
    :meth:`CostRecorder.record` with the ticket), apart: a call may end in another thread or a finalizer, and
    one never sent (:meth:`cancel`, :meth:`CostRecorder.release`) is not recorded.
    ``estimate``: what was admitted, (prompt estimate, output limit), recorded when a successful call
    ends without usage read (:meth:`read`). ``inline``: only a reservation that fits now (no wait for a
    grant); :class:`NoRoomNow` when there is none."""

    def __init__(
        self,
        recorder: CostRecorder,
        operation: str,
        model: str,
        *,
        max_tokens: int | None,
        prompt_tokens: int,
        inline: bool = False,
    ) -> None:
        if recorder.closed:  # a call sent now could not be recorded
            raise CallRefused(recorder.agent_id, {}, note="its cost recorder is closed", reason=CLOSED)
        # CallRefused (held, throttled, no lease), or NoRoomNow (inline): nothing was sent
        self._ticket = recorder.admit(model, max_tokens=max_tokens, prompt_tokens=prompt_tokens, wait=not inline)
        self._recorder = recorder
        self.call = Call(operation=operation, model=model)
        self.admitted = time.monotonic()
        self.estimate = (prompt_tokens, default_output(recorder) if max_tokens is None else max_tokens)
        self.measured = False
        self._lock = threading.Lock()
        self._done = False

    def read(self, reader: Reader, block: Any) -> None:
        """Read a usage block into the call. A reader that fails (an unexpected block after a successful,
        billed call) is logged, never raised to the caller: the call is then recorded at its estimate."""
        try:
            if reader(self.call, block):
                self.measured = True
        except Exception:
            log.warning("%s call to %s: its usage could not be read; recording its admitted estimate",
                        self.call.operation, self.call.model, exc_info=True)  # fmt: skip

    @property
    def done(self) -> bool:
        """Whether :meth:`finish` (or :meth:`cancel`) was called."""
        return self._done

    def _once(self) -> bool:
        with self._lock:
            first, self._done = not self._done, True
        return first

    def finish(self, exc: BaseException | None = None, *, billed: bool = False) -> None:
        """Record the call (failed with ``exc``); later calls do nothing. Never raises: a recorder closed
        meanwhile loses the record, with a warning naming the call's model and tokens. Without usage read, a
        successful call is recorded at its estimate, and so is a failed one that was ``billed`` (part of its
        answer came)."""
        if not self._once():
            return
        call = self.call
        if (exc is None or billed) and not self.measured:
            self._estimated()
        call.success = exc is None
        try:
            self._recorder.record(call, ticket=self._ticket)
        except RuntimeError:
            if not self._recorder.closed:
                raise
            log.warning("%s call to %s (%d input, %d output tokens) was not recorded: the cost recorder of %s "
                        "was closed before it ended", call.operation, call.model, call.input_tokens,
                        call.output_tokens, self._recorder.agent_id)  # fmt: skip

    def cancel(self) -> None:
        """The request was never sent: record nothing and release the reservation (unless finished)."""
        if self._once():
            self._recorder.release(self._ticket)

    def _estimated(self) -> None:
        estimated(self.call, *self.estimate)


def default_output(recorder: CostRecorder) -> int:
    """The output limit the recorder assumes for a call that names none (its lease wallet's)."""
    limit = recorder.lease_default_max_tokens
    return DEFAULT_MAX_TOKENS if limit is None else limit


#: Calls of streams collected half-read, recorded by one worker thread: a finalizer may run inside any
#: allocation, the recorder's own locked sections included, so it only hands the call over (a SimpleQueue's
#: put is safe there; recording inline could deadlock on the recorder's lock). An event in the queue is set
#: when the worker reaches it (:func:`drain`).
_dropped: queue.SimpleQueue[Pending | threading.Event] = queue.SimpleQueue()
_worker: list[threading.Thread] = []
_worker_lock = threading.Lock()


def _record_dropped() -> None:
    while True:
        pending = _dropped.get()
        if isinstance(pending, threading.Event):
            pending.set()
            continue
        try:
            pending.finish()  # with the usage read so far, else the estimate; releases the reservation
        except Exception:
            log.warning("recording a dropped stream's call failed", exc_info=True)


def drain(recorder: CostRecorder, timeout: float) -> None:
    """Wait (up to ``timeout`` s) until the dropped streams' calls queued so far are recorded: run by
    ``recorder.close()`` before it closes (``CLOSE_HOOKS``), so a stream dropped just before is not lost."""
    if _worker and threading.current_thread() is not _worker[0]:
        reached = threading.Event()
        _dropped.put(reached)
        reached.wait(timeout)


CLOSE_HOOKS.append(drain)


def watch(stream: object, pending: Pending) -> None:
    """Record ``pending`` if ``stream`` is garbage collected before it ended or was closed (a no-op then)."""
    with _worker_lock:
        if not _worker:
            _worker.append(threading.Thread(target=_record_dropped, name="fleet-dropped-streams", daemon=True))
            _worker[0].start()
    weakref.finalize(stream, _drop, pending).atexit = False


def _drop(pending: Pending) -> None:
    if not pending.done:  # ended or closed: recorded already
        _dropped.put(pending)
