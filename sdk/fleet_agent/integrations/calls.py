"""What the integrations share: client methods instrumented (:func:`instrument`: admitted before the request
leaves, recorded after it), streams recorded when they end, and the bounds of a call's admission. The call
between its admission and its record is :class:`~fleet_agent.integrations.pending.Pending`; usage blocks are
read into it by :mod:`fleet_agent.integrations.usage`.

A call is recorded exactly once: when the response is read, when a stream ends, is closed or is dropped
(garbage collected half-read), or with the exception the call raised (recorded as failed). The record's
``input_tokens`` is every input token (cache reads and writes included) and ``output_tokens`` every output
token (reasoning included), whatever the provider's block says. A successful call that ends without a
usage block (or whose block could not be read) is recorded at its admitted estimate, never as free, with a
warning logged.

The estimate admitted is the request's output limit (``max_tokens``, ``max_completion_tokens``,
``max_output_tokens``; the recorder's ``default_max_tokens`` when it names none) and its prompt estimated
from its text (:func:`estimate_prompt_tokens`) and its tool definitions (:func:`tools_tokens`), a quarter of
their bytes each: an estimate (it leaves out images and each message's few tokens of framing), not a bound;
the real counts come with the answer.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol, TypeAlias

from fleet_agent.costs import CostRecorder
from fleet_agent.integrations.pending import (
    CLOSED,
    DEFAULT_MAX_TOKENS,
    NoRoomNow,
    Pending,
    Reader,
    default_output,
    drain,
    watch,
)

__all__ = [
    "CLOSED", "DEFAULT_MAX_TOKENS", "AgentLike", "AsyncRecordedStream", "Endpoint", "NoRoomNow", "Pending",
    "Reader", "RecordedStream", "admit_async", "default_output", "drain", "estimate_prompt_tokens", "instrument",
    "instrument_copies", "output_limit", "recorder_of", "watch",
]  # fmt: skip

log = logging.getLogger("fleet_agent")

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


def tools_tokens(*values: Any) -> int:
    """The prompt tokens of a request's tool (or function) definitions, which the provider counts as input:
    a quarter of their JSON's bytes, rounded up (values that are not lists or mappings count 0)."""
    size = sum(len(json.dumps(v, default=str).encode()) for v in values if isinstance(v, list | tuple | Mapping))
    return -(-size // 4)


def _bounds(endpoint: Endpoint, kwargs: dict[str, Any]) -> tuple[str, int | None, int]:
    prompt = estimate_prompt_tokens(*(kwargs.get(key) for key in ("system", "instructions", "messages", "input")))
    prompt += tools_tokens(kwargs.get("tools"), kwargs.get("functions"))
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
    caller cancelled meanwhile sent no request: the admission finishing in its thread records nothing and
    releases its reservation (:meth:`Pending.cancel`)."""
    try:
        return Pending(recorder, operation, model, max_tokens=max_tokens, prompt_tokens=prompt_tokens, inline=True)
    except NoRoomNow:
        pass  # reserved nothing: wait for a grant off the loop
    admission = asyncio.ensure_future(asyncio.to_thread(Pending, recorder, operation, model, max_tokens=max_tokens,
                                                        prompt_tokens=prompt_tokens))  # fmt: skip
    try:
        return await asyncio.shield(admission)
    except asyncio.CancelledError:
        admission.add_done_callback(_cancelled)
        raise


def _cancelled(admission: asyncio.Future[Pending]) -> None:
    if not admission.cancelled() and admission.exception() is None:
        admission.result().cancel()


def _read(endpoint: Endpoint, pending: Pending, result: Any) -> None:
    try:
        pending.read(endpoint.read, result)
    finally:
        pending.finish()


def is_raw(result: Any) -> bool:
    """Whether ``result`` is a raw answer (``with_raw_response`` / ``with_streaming_response``: the client's
    ``LegacyAPIResponse`` or ``APIResponse``), whose parsed answer comes from its ``parse()``."""
    return hasattr(result, "http_response") and callable(getattr(result, "parse", None))


def _parse(result: Any) -> Any:
    """A raw answer's parsed answer (the client caches it: the caller's ``parse()`` gets the same object)."""
    return result.parse()


def _stream(pending: Pending, observe: Observe, stream: Any) -> RecordedStream | AsyncRecordedStream:
    try:
        if hasattr(stream, "__aiter__"):
            return AsyncRecordedStream(stream, pending, observe)
        return RecordedStream(stream, pending, observe)
    except BaseException as exc:  # not a stream after all: the billed call is recorded, failed, not left over
        pending.finish(exc)
        raise


def _raw_stream(pending: Pending, observe: Observe, result: Any) -> Any:
    """A raw streamed answer, returned as it is with its ``parse()`` giving the recorded stream (the same
    one each time); recorded at its estimate if never parsed (collected: :func:`watch`)."""
    parse, made = result.parse, {}

    def seen(stream: Any) -> Any:
        if id(stream) not in made:
            made[id(stream)] = (stream, _stream(pending, observe, stream))  # the stream kept: its id stays its own
        return made[id(stream)][1]

    async def later(parsed: Awaitable[Any]) -> Any:
        return seen(await parsed)

    def fleet_parse(*args: Any, **kwargs: Any) -> Any:
        parsed = parse(*args, **kwargs)
        return later(parsed) if inspect.isawaitable(parsed) else seen(parsed)

    result.parse = fleet_parse
    watch(result, pending)
    return result


def _answer(endpoint: Endpoint, pending: Pending, observe: Observe | None, result: Any) -> Any:
    """What a sync call returns: its answer read into the call, or its stream recorded when it ends."""
    if is_raw(result):
        if observe is not None:
            return _raw_stream(pending, observe, result)
        _read(endpoint, pending, _Raw(result))
    elif observe is not None:
        return _stream(pending, observe, result)
    else:
        _read(endpoint, pending, result)
    return result


class _Raw:
    """A raw answer read lazily by a reader: its ``usage`` is its parsed answer's (a parse that fails is then
    the reader's failure, logged by :meth:`Pending.read`)."""

    def __init__(self, result: Any) -> None:
        self._result = result

    @property
    def usage(self) -> Any:
        return getattr(_parse(self._result), "usage", None)


async def _answer_async(endpoint: Endpoint, pending: Pending, observe: Observe | None, result: Any) -> Any:
    """:func:`_answer` for an async client, whose raw answers may parse in a coroutine."""
    if not is_raw(result) or observe is not None:
        return _answer(endpoint, pending, observe, result)
    try:
        parsed = _parse(result)
        parsed = await parsed if inspect.isawaitable(parsed) else parsed
    except Exception:
        log.warning("%s call to %s: its raw answer could not be parsed; recording its admitted estimate",
                    pending.call.operation, pending.call.model, exc_info=True)  # fmt: skip
        parsed = None
    _read(endpoint, pending, parsed)
    return result


def instrument(
    owner: Any, name: str, recorder: CostRecorder, endpoint: Endpoint, operation: str | None, *, is_async: bool
) -> None:
    """Replace ``owner.<name>`` (a client's ``create``) on this instance by one that admits, then records,
    each call. Instrumenting twice keeps one wrapper. Raw answers (``with_raw_response``,
    ``with_streaming_response``, which call it) are read through their ``parse()``."""
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
            return await _answer_async(endpoint, pending, observe, result)

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
            return _answer(endpoint, pending, observe, result)

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
