"""What the integrations share: one model call between its admission and its record (usage blocks are read
into it by :mod:`fleet_agent.integrations.usage`), and streams recorded when they end.

:class:`Pending` enters the recorder's ``call(...)`` by hand (so a held agent, or a call whose worst case
the lease cannot cover, raises :class:`~fleet_agent.CallRefused` *before* the request leaves) and leaves it
exactly once: when the response is read, when a stream ends, is closed or is dropped (garbage collected
half-read), or with the exception the call raised (recorded as failed). The record's ``input_tokens`` is
every input token (cache reads and writes included) and ``output_tokens`` every output token (reasoning
included), whatever the provider's block says. A successful call that ends without a usage block (or whose
block could not be read) is recorded at its admitted worst case, never as free, with a warning logged.

The worst case admitted is the request's output limit (``max_tokens``, ``max_completion_tokens``,
``max_output_tokens``; the recorder's ``default_max_tokens`` when it names none) and its prompt estimated
as a quarter of its text's UTF-8 bytes (:func:`estimate_prompt_tokens`): the real counts come with the answer.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import queue
import threading
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol, TypeAlias

from fleet_agent.call_records import Call
from fleet_agent.costs import CostRecorder
from fleet_agent.integrations.usage import estimated

log = logging.getLogger("fleet_agent")

#: The output limit a call without one is estimated at when the recorder has no lease wallet to say
#: (``CostRecorder``'s ``default_max_tokens`` default).
DEFAULT_MAX_TOKENS = 1024
#: The request fields that bound a call's output, in the order they are read.
OUTPUT_LIMITS = ("max_completion_tokens", "max_output_tokens", "max_tokens")
_TEXT_KEYS = ("content", "text", "input", "system", "messages", "instructions", "prompt")


class _HasRecorder(Protocol):
    @property
    def costs(self) -> CostRecorder: ...


#: What an integration records through: a :class:`~fleet_agent.FleetAgent` (its ``costs``) or a recorder.
AgentLike: TypeAlias = _HasRecorder | CostRecorder


def recorder_of(agent: AgentLike) -> CostRecorder:
    return agent if isinstance(agent, CostRecorder) else agent.costs


def _texts(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _texts(item)
    elif isinstance(value, Mapping):
        for key in _TEXT_KEYS:
            if key in value:
                yield from _texts(value[key])
    elif hasattr(value, "content"):  # a LangChain message, say
        yield from _texts(value.content)


def estimate_prompt_tokens(*values: Any) -> int:
    """A prompt's tokens before the provider counts them: a quarter of its texts' UTF-8 bytes, rounded up."""
    size = sum(len(text.encode()) for value in values for text in _texts(value))
    return -(-size // 4)


def output_limit(params: Mapping[str, Any]) -> int | None:
    """The request's output limit, or None (the recorder's default then bounds the call)."""
    for name in OUTPUT_LIMITS:
        value = params.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
    return None


#: Reads a usage block (a response, a stream's event) into the call; False: the block has no usage (or
#: only zeros, :func:`counted`).
Reader = Callable[[Call, Any], bool]


class Pending:
    """One call admitted by the recorder and not recorded yet; :meth:`finish` records it, once.

    ``estimate``: the worst case admitted, (prompt estimate, output limit), recorded when a successful call
    ends without usage read (:meth:`read`)."""

    def __init__(
        self, recorder: CostRecorder, operation: str, model: str, *, max_tokens: int | None, prompt_tokens: int
    ) -> None:
        self._scope = recorder.call(operation, model=model, max_tokens=max_tokens, prompt_tokens=prompt_tokens)
        self.call = self._scope.__enter__()  # raises CallRefused: nothing was sent
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
        """Whether :meth:`finish` was called."""
        return self._done

    def finish(self, exc: BaseException | None = None) -> None:
        """Record the call (failed with ``exc``); later calls do nothing."""
        with self._lock:
            if self._done:
                return
            self._done = True
        if exc is None:
            if not self.measured:
                self._estimated()
            self._scope.__exit__(None, None, None)
        else:
            self._scope.__exit__(type(exc), exc, exc.__traceback__)  # records it failed; never raises it

    def _estimated(self) -> None:
        estimated(self.call, *self.estimate)


def default_output(recorder: CostRecorder) -> int:
    """The output limit the recorder assumes for a call that names none (its lease wallet's)."""
    wallet = recorder._wallet  # the recorder keeps it private; read only
    return DEFAULT_MAX_TOKENS if wallet is None else wallet.default_max_tokens


#: Calls of streams collected half-read, recorded by one worker thread: a finalizer may run inside any
#: allocation, the recorder's own locked sections included, so it only hands the call over (a SimpleQueue's
#: put is safe there; recording inline could deadlock on the recorder's lock).
_dropped: queue.SimpleQueue[Pending] = queue.SimpleQueue()
_worker: list[threading.Thread] = []
_worker_lock = threading.Lock()


def _record_dropped() -> None:
    while True:
        pending = _dropped.get()
        try:
            pending.finish()  # with the usage read so far, else the estimate; releases the reservation
        except Exception:
            log.warning("recording a dropped stream's call failed", exc_info=True)


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


#: Reads one streamed item into the call (:meth:`Pending.read`); False hides it from the caller (a usage
#: chunk it did not ask for).
Observe = Callable[[Pending, Any], bool]


class RecordedStream:
    """A client's stream, passed through item by item; the call is recorded when it ends, is closed, or is
    garbage collected half-read (then with the usage read so far)."""

    def __init__(self, stream: Any, pending: Pending, observe: Observe) -> None:
        self._stream, self._pending, self._observe = stream, pending, observe
        self._items = iter(stream)
        watch(self, pending)

    def __iter__(self) -> RecordedStream:
        return self

    def __next__(self) -> Any:
        while True:
            try:
                item = next(self._items)
            except StopIteration:
                self._pending.finish()
                raise
            except BaseException as exc:
                self._pending.finish(exc)
                raise
            if self._observe(self._pending, item):
                return item

    def close(self) -> None:
        try:
            self._stream.close()
        finally:
            self._pending.finish()

    def __enter__(self) -> RecordedStream:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


class AsyncRecordedStream:
    """:class:`RecordedStream` for an async client's stream."""

    def __init__(self, stream: Any, pending: Pending, observe: Observe) -> None:
        self._stream, self._pending, self._observe = stream, pending, observe
        self._items: AsyncIterator[Any] = stream.__aiter__()
        watch(self, pending)

    def __aiter__(self) -> AsyncRecordedStream:
        return self

    async def __anext__(self) -> Any:
        while True:
            try:
                item = await self._items.__anext__()
            except StopAsyncIteration:
                self._pending.finish()
                raise
            except BaseException as exc:
                self._pending.finish(exc)
                raise
            if self._observe(self._pending, item):
                return item

    async def close(self) -> None:
        try:
            await self._stream.close()
        finally:
            self._pending.finish()

    async def __aenter__(self) -> AsyncRecordedStream:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


@dataclass(frozen=True)
class Endpoint:
    """One client method: the operation its calls are recorded under, how its response is read
    (``read``), and for a stream (``stream=True``) ``stream(kwargs)``, which may add request options
    (``include_usage``) and returns how each item is read. ``output``: False when the call writes no tokens."""

    operation: str
    read: Reader
    stream: Callable[[dict[str, Any]], Observe] | None = None
    output: bool = True


def _bounds(endpoint: Endpoint, kwargs: dict[str, Any]) -> tuple[str, int | None, int]:
    prompt = estimate_prompt_tokens(*(kwargs.get(key) for key in ("system", "instructions", "messages", "input")))
    return str(kwargs.get("model", "")), output_limit(kwargs) if endpoint.output else 0, prompt


def _admit(
    recorder: CostRecorder, endpoint: Endpoint, operation: str | None, kwargs: dict[str, Any]
) -> tuple[Pending, Observe | None]:
    observe = endpoint.stream(kwargs) if kwargs.get("stream") is True and endpoint.stream is not None else None
    model, limit, prompt = _bounds(endpoint, kwargs)
    return Pending(recorder, operation or endpoint.operation, model, max_tokens=limit, prompt_tokens=prompt), observe


async def admit_async(
    recorder: CostRecorder, operation: str, model: str, *, max_tokens: int | None, prompt_tokens: int
) -> Pending:
    """:class:`Pending` from a coroutine: inline when the call fits the lease now (or leases are off), else
    in a worker thread, so that waiting up to ``lease_wait_s`` for a grant never blocks the event loop. A
    caller cancelled meanwhile leaves the admission to finish in its thread, then recorded as failed
    (cancelled, as a call cancelled in flight is) and its reservation released."""
    wallet = recorder._wallet  # the recorder keeps it private; probed only
    if wallet is None or wallet.fits(model, max_tokens, prompt_tokens):
        return Pending(recorder, operation, model, max_tokens=max_tokens, prompt_tokens=prompt_tokens)
    admission = asyncio.ensure_future(asyncio.to_thread(Pending, recorder, operation, model, max_tokens=max_tokens,
                                                        prompt_tokens=prompt_tokens))  # fmt: skip
    try:
        return await asyncio.shield(admission)
    except asyncio.CancelledError:
        admission.add_done_callback(_cancelled)
        raise


def _cancelled(admission: asyncio.Future[Pending]) -> None:
    if not admission.cancelled() and admission.exception() is None:
        admission.result().finish(asyncio.CancelledError("cancelled while waiting for a lease"))


def _read(endpoint: Endpoint, pending: Pending, result: Any) -> None:
    try:
        pending.read(endpoint.read, result)
    finally:
        pending.finish()


def instrument(
    owner: Any, name: str, recorder: CostRecorder, endpoint: Endpoint, operation: str | None, *, is_async: bool
) -> None:
    """Replace ``owner.<name>`` (a client's ``create``) on this instance by one that admits, then records,
    each call. Instrumenting twice keeps one wrapper."""
    original = getattr(owner, name)
    original = getattr(original, "__fleet_original__", original)
    if is_async:
        acreate: Callable[..., Awaitable[Any]] = original

        @functools.wraps(original)
        async def wrapped_async(*args: Any, **kwargs: Any) -> Any:
            observe = endpoint.stream(kwargs) if kwargs.get("stream") is True and endpoint.stream else None
            model, limit, prompt = _bounds(endpoint, kwargs)
            pending = await admit_async(recorder, operation or endpoint.operation, model, max_tokens=limit,
                                        prompt_tokens=prompt)  # fmt: skip
            try:
                result = await acreate(*args, **kwargs)
            except BaseException as exc:
                pending.finish(exc)
                raise
            if observe is not None:
                return AsyncRecordedStream(result, pending, observe)
            _read(endpoint, pending, result)
            return result

        wrapped: Callable[..., Any] = wrapped_async
    else:

        @functools.wraps(original)
        def wrapped_sync(*args: Any, **kwargs: Any) -> Any:
            pending, observe = _admit(recorder, endpoint, operation, kwargs)
            try:
                result = original(*args, **kwargs)
            except BaseException as exc:
                pending.finish(exc)
                raise
            if observe is not None:
                return RecordedStream(result, pending, observe)
            _read(endpoint, pending, result)
            return result

        wrapped = wrapped_sync
    wrapped.__fleet_original__ = original  # type: ignore[attr-defined]
    setattr(owner, name, wrapped)


def instrument_copies(client: Any, again: Callable[[Any], Any]) -> None:
    """Make ``client.with_options(...)`` and ``client.copy(...)`` return their copy instrumented the same
    way (``again(copy)``): a copy is a new client, which the instance's patched methods do not reach."""
    copy = type(client).copy

    def fleet_copy(*args: Any, **kwargs: Any) -> Any:
        return again(copy(client, *args, **kwargs))

    client.copy = client.with_options = fleet_copy
