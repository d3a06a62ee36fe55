"""What the integrations share: one model call between its admission and its record, usage blocks read into
the record, and streams recorded when they end.

:class:`Pending` enters the recorder's ``call(...)`` by hand (so a held agent, or a call whose worst case
the lease cannot cover, raises :class:`~fleet_agent.CallRefused` *before* the request leaves) and leaves it
exactly once: when the response is read, when a stream ends or is closed, or with the exception the call
raised (recorded as failed). The record's ``input_tokens`` is every input token (cache reads and writes
included) and ``output_tokens`` every output token (reasoning included), whatever the provider's block says.

The worst case admitted is the request's output limit (``max_tokens``, ``max_completion_tokens``,
``max_output_tokens``; the recorder's ``default_max_tokens`` when it names none) and its prompt estimated
as a quarter of its text's UTF-8 bytes (:func:`estimate_prompt_tokens`): the real counts come with the answer.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol, TypeAlias

from fleet_agent.call_records import Call
from fleet_agent.costs import CostRecorder

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


def field(block: Any, *path: str) -> int:
    """An integer in a usage block (an object or a dict) by its path; 0 when absent or null."""
    value = block
    for name in path:
        if value is None:
            return 0
        value = value.get(name) if isinstance(value, Mapping) else getattr(value, name, None)
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def openai_usage(call: Call, usage: Any) -> None:
    """An OpenAI-shaped ``usage`` (chat completions, embeddings, LiteLLM): ``prompt_tokens`` with
    ``prompt_tokens_details.cached_tokens`` in it, ``completion_tokens`` with the reasoning tokens in it;
    LiteLLM adds ``cache_creation_input_tokens`` (Anthropic's, already in ``prompt_tokens``)."""
    if usage is None:
        return
    call.tokens(
        field(usage, "prompt_tokens"),
        field(usage, "completion_tokens"),
        cache_read=field(usage, "prompt_tokens_details", "cached_tokens"),
        cache_write=field(usage, "cache_creation_input_tokens"),
        reasoning=field(usage, "completion_tokens_details", "reasoning_tokens"),
    )


def responses_usage(call: Call, usage: Any) -> None:
    """The Responses API's ``usage``: ``input_tokens`` (cached in it), ``output_tokens`` (reasoning in it)."""
    if usage is None:
        return
    call.tokens(
        field(usage, "input_tokens"),
        field(usage, "output_tokens"),
        cache_read=field(usage, "input_tokens_details", "cached_tokens"),
        reasoning=field(usage, "output_tokens_details", "reasoning_tokens"),
    )


def anthropic_usage(call: Call, usage: Any) -> None:
    """Anthropic's ``usage``, whose ``input_tokens`` leaves the cache out: the record's input is
    ``input_tokens + cache_read_input_tokens + cache_creation_input_tokens``."""
    if usage is None:
        return
    read, write = field(usage, "cache_read_input_tokens"), field(usage, "cache_creation_input_tokens")
    call.tokens(field(usage, "input_tokens") + read + write, field(usage, "output_tokens"), cache_read=read,
                cache_write=write)  # fmt: skip


class Pending:
    """One call admitted by the recorder and not recorded yet; :meth:`finish` records it, once."""

    def __init__(
        self, recorder: CostRecorder, operation: str, model: str, *, max_tokens: int | None, prompt_tokens: int
    ) -> None:
        self._scope = recorder.call(operation, model=model, max_tokens=max_tokens, prompt_tokens=prompt_tokens)
        self.call = self._scope.__enter__()  # raises CallRefused: nothing was sent
        self._lock = threading.Lock()
        self._done = False

    def finish(self, exc: BaseException | None = None) -> None:
        """Record the call (failed with ``exc``); later calls do nothing."""
        with self._lock:
            if self._done:
                return
            self._done = True
        if exc is None:
            self._scope.__exit__(None, None, None)
        else:
            self._scope.__exit__(type(exc), exc, exc.__traceback__)  # records it failed; never raises it


#: Reads one streamed item into the call; False hides it from the caller (a usage chunk it did not ask for).
Observe = Callable[[Call, Any], bool]


class RecordedStream:
    """A client's stream, passed through item by item; the call is recorded when it ends or is closed."""

    def __init__(self, stream: Any, pending: Pending, observe: Observe) -> None:
        self._stream, self._pending, self._observe = stream, pending, observe
        self._items = iter(stream)

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
            if self._observe(self._pending.call, item):
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
            if self._observe(self._pending.call, item):
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
    read: Callable[[Call, Any], None]
    stream: Callable[[dict[str, Any]], Observe] | None = None
    output: bool = True


def _admit(
    recorder: CostRecorder, endpoint: Endpoint, operation: str | None, kwargs: dict[str, Any]
) -> tuple[Pending, Observe | None]:
    observe = endpoint.stream(kwargs) if kwargs.get("stream") is True and endpoint.stream is not None else None
    prompt = estimate_prompt_tokens(*(kwargs.get(key) for key in ("system", "instructions", "messages", "input")))
    limit = output_limit(kwargs) if endpoint.output else 0
    pending = Pending(recorder, operation or endpoint.operation, str(kwargs.get("model", "")), max_tokens=limit,
                      prompt_tokens=prompt)  # fmt: skip
    return pending, observe


def _read(endpoint: Endpoint, pending: Pending, result: Any) -> None:
    try:
        endpoint.read(pending.call, result)
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
            pending, observe = _admit(recorder, endpoint, operation, kwargs)
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
