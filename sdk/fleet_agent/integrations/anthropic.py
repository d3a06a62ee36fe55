"""The Anthropic client, recorded and enforced by the fleet: ``fleet_anthropic(Anthropic(), agent)``.

    from anthropic import Anthropic
    from fleet_agent.integrations.anthropic import fleet_anthropic

    client = fleet_anthropic(Anthropic(), agent)   # or AsyncAnthropic(); instrumented in place
    client.messages.create(model="claude-sonnet-4-5", max_tokens=500, messages=[...])
    with client.messages.stream(model="claude-sonnet-4-5", max_tokens=500, messages=[...]) as stream:
        ...

Covered: ``messages.create`` (``stream=True`` too) and ``messages.stream``. Each call is admitted before
the request leaves (:class:`~fleet_agent.CallRefused` while the agent is held, or when the lease cannot
cover ``max_tokens`` and the prompt at the model's price) and recorded with its usage. Anthropic's
``input_tokens`` leaves the prompt cache out; the record's input is the whole prompt:
``input_tokens + cache_read_input_tokens + cache_creation_input_tokens``, the last two also recorded as
the cache reads and writes. ``output_tokens`` (thinking included) is the record's output.

A ``stream=True`` call is recorded when its events end, it is closed, or it is dropped half-read (garbage
collected); a ``messages.stream(...)`` block when it is left; both with the usage of what was read
(``message_start`` and the last ``message_delta``), failed when the block raised. A successful call with no
usage read is recorded at its admitted worst case, with a warning. An ``AsyncAnthropic`` call that must wait
for a lease grant waits in a worker thread (``messages.stream`` is admitted when its ``async with`` block is
entered). ``client.with_options(...)`` and ``client.copy(...)`` return an instrumented copy.
Requires ``pip install "fleet-agent[anthropic]"``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, TypeVar

import anthropic

from fleet_agent.call_records import Call
from fleet_agent.integrations.calls import (
    AgentLike,
    Endpoint,
    Observe,
    Pending,
    admit_async,
    instrument,
    instrument_copies,
    recorder_of,
    watch,
)
from fleet_agent.integrations.calls import estimate_prompt_tokens as estimate
from fleet_agent.integrations.usage import anthropic_usage

Client = TypeVar("Client", anthropic.Anthropic, anthropic.AsyncAnthropic)

__all__ = ["fleet_anthropic"]


def _read(call: Call, message: Any) -> bool:
    return anthropic_usage(call, getattr(message, "usage", None))


def _events(kwargs: dict[str, Any]) -> Observe:
    seen: dict[str, int] = {}

    def observe(pending: Pending, event: Any) -> bool:
        kind = getattr(event, "type", "")
        usage = getattr(getattr(event, "message", None), "usage", None) if kind == "message_start" else None
        usage = getattr(event, "usage", None) if kind == "message_delta" else usage
        if usage is not None:
            for name in ("input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens", "output_tokens"):
                value = getattr(usage, name, None)
                if isinstance(value, int):  # a delta's null fields keep what message_start said
                    seen[name] = value
            pending.read(anthropic_usage, seen)
        return True

    return observe


MESSAGES = Endpoint("messages", _read, _events)


class _Stream:
    """``messages.stream(...)``'s manager: records the call when its block is left. ``admit``: for an async
    client, the admission made when the block is entered (off the event loop if the lease must wait)."""

    def __init__(
        self, manager: Any, pending: Pending | None, admit: Callable[[], Awaitable[Pending]] | None = None
    ) -> None:
        self._manager, self._pending, self._admit = manager, pending, admit
        self._stream: Any = None
        if pending is not None:
            watch(self, pending)  # a manager never entered, or left without its block ending: recorded

    @property
    def pending(self) -> Pending:
        assert self._pending is not None, "the stream's block was not entered"
        return self._pending

    def _usage(self) -> None:
        usage = None
        with contextlib.suppress(AttributeError, AssertionError, RuntimeError):  # nothing read: no usage known
            usage = self._stream.current_message_snapshot.usage
        self.pending.read(anthropic_usage, usage)

    def __enter__(self) -> Any:
        try:
            self._stream = self._manager.__enter__()
        except BaseException as exc:
            self.pending.finish(exc)
            raise
        return self._stream

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._usage()
        try:
            self._manager.__exit__(kind, exc, tb)
        finally:
            self.pending.finish(exc)

    async def __aenter__(self) -> Any:
        if self._pending is None and self._admit is not None:
            self._pending = await self._admit()
            watch(self, self._pending)
        try:
            self._stream = await self._manager.__aenter__()
        except BaseException as exc:
            self.pending.finish(exc)
            raise
        return self._stream

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._usage()
        try:
            await self._manager.__aexit__(kind, exc, tb)
        finally:
            self.pending.finish(exc)


def fleet_anthropic(client: Client, agent: AgentLike, *, operation: str | None = None) -> Client:
    """Instrument ``client`` (an ``Anthropic`` or ``AsyncAnthropic``) in place for ``agent`` (a
    :class:`~fleet_agent.FleetAgent` or its ``costs`` recorder) and return it.

    ``operation``: the operation every call is recorded under (default ``messages``).
    """
    recorder = recorder_of(agent)
    messages = client.messages
    is_async = isinstance(client, anthropic.AsyncAnthropic)
    instrument(messages, "create", recorder, MESSAGES, operation, is_async=is_async)
    stream = getattr(messages.stream, "__fleet_original__", messages.stream)

    def fleet_stream(**kwargs: Any) -> _Stream:
        bounds: Any = {"max_tokens": kwargs.get("max_tokens"),
                       "prompt_tokens": estimate(kwargs.get("system"), kwargs.get("messages"))}  # fmt: skip
        name, model = operation or "messages", str(kwargs.get("model", ""))
        if is_async:  # the request leaves when the block is entered: admitted then, off the loop if it waits
            return _Stream(stream(**kwargs), None, lambda: admit_async(recorder, name, model, **bounds))
        pending = Pending(recorder, name, model, **bounds)
        try:
            return _Stream(stream(**kwargs), pending)
        except BaseException as exc:
            pending.finish(exc)
            raise

    fleet_stream.__fleet_original__ = stream  # type: ignore[attr-defined]
    setattr(messages, "stream", fleet_stream)  # noqa: B010  (an instance attribute over the method)
    instrument_copies(client, lambda copy: fleet_anthropic(copy, recorder, operation=operation))
    return client
