"""The Anthropic client, recorded and enforced by the fleet: ``fleet_anthropic(Anthropic(), agent)``.

    from anthropic import Anthropic
    from fleet_agent.integrations.anthropic import fleet_anthropic

    client = fleet_anthropic(Anthropic(), agent)   # or AsyncAnthropic(); instrumented in place
    client.messages.create(model="claude-sonnet-4-5", max_tokens=500, messages=[...])
    with client.messages.stream(model="claude-sonnet-4-5", max_tokens=500, messages=[...]) as stream:
        ...

Covered: ``messages.create`` (``stream=True`` too), ``messages.parse`` and ``messages.stream``, the same on
``beta.messages``, and their raw answers (``with_raw_response``: read through their ``parse()``). Each call is
admitted before the request leaves (:class:`~fleet_agent.CallRefused` while the agent is held, or when the
lease cannot cover ``max_tokens`` and the prompt's estimate at the model's price) and recorded with its
usage. Anthropic's ``input_tokens`` leaves the prompt cache out; the record's input is the whole prompt:
``input_tokens + cache_read_input_tokens + cache_creation_input_tokens``, the last two also recorded as
the cache reads and writes. ``output_tokens`` (thinking included) is the record's output.

A ``stream=True`` call is recorded when its events end, it is closed, or it is dropped half-read (garbage
collected); a ``messages.stream(...)`` block when it is left; both with the usage of what was read
(``message_start`` and the last ``message_delta``), failed when the block raised before the whole answer
came (after it, the caller's code failed, not the call: recorded as successful). A successful call with no
usage read is recorded at its admitted estimate, with a warning. A ``messages.stream(...)`` manager is
admitted when its block is entered, where the request leaves (a manager never entered reserves and records
nothing); an ``AsyncAnthropic`` call that must wait for a lease grant waits in a worker thread.
``client.with_options(...)`` and ``client.copy(...)`` return an instrumented copy.
Requires ``pip install "fleet-agent[anthropic]"``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from types import TracebackType
from typing import Any, TypeVar

import anthropic

from fleet_agent.call_records import Call
from fleet_agent.costs import CostRecorder
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
    """``messages.stream(...)``'s manager: admits the call when its block is entered (the request leaves
    then; a manager never entered reserves and records nothing) and records it when the block is left.
    ``admit``: the admission (for an async client a coroutine, off the event loop if the lease must wait)."""

    def __init__(self, manager: Any, admit: Callable[[], Any]) -> None:
        self._manager, self._admit = manager, admit
        self._pending: Pending | None = None
        self._stream: Any = None

    @property
    def pending(self) -> Pending:
        assert self._pending is not None, "the stream's block was not entered"
        return self._pending

    def _admitted(self, pending: Pending) -> None:
        self._pending = pending
        watch(self, pending)  # entered, then dropped without its block being left: recorded

    def _usage(self, exc: BaseException | None) -> BaseException | None:
        """Read the usage of what came; returns the failure to record: none when the block raised after the
        whole answer came (its stop reason read): the caller's code failed, not the model call."""
        message = None
        with contextlib.suppress(AttributeError, AssertionError, RuntimeError):  # nothing read: no usage known
            message = self._stream.current_message_snapshot
        self.pending.read(anthropic_usage, getattr(message, "usage", None))
        return None if getattr(message, "stop_reason", None) is not None and self.pending.measured else exc

    def __enter__(self) -> Any:
        self._admitted(self._admit())
        try:
            self._stream = self._manager.__enter__()
        except BaseException as exc:
            self.pending.finish(exc)
            raise
        return self._stream

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        failure = self._usage(exc)
        try:
            self._manager.__exit__(kind, exc, tb)
        finally:
            self.pending.finish(failure)

    async def __aenter__(self) -> Any:
        self._admitted(await self._admit())
        try:
            self._stream = await self._manager.__aenter__()
        except BaseException as exc:
            self.pending.finish(exc)
            raise
        return self._stream

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        failure = self._usage(exc)
        try:
            await self._manager.__aexit__(kind, exc, tb)
        finally:
            self.pending.finish(failure)


def _instrument_stream(messages: Any, recorder: CostRecorder, operation: str | None, is_async: bool) -> None:
    """Replace ``messages.stream`` by one whose manager admits when entered and records when left."""
    stream = getattr(messages.stream, "__fleet_original__", messages.stream)

    def fleet_stream(**kwargs: Any) -> _Stream:
        bounds: Any = {"max_tokens": kwargs.get("max_tokens"),
                       "prompt_tokens": estimate(kwargs.get("system"), kwargs.get("messages"))}  # fmt: skip
        name, model = operation or "messages", str(kwargs.get("model", ""))
        if is_async:
            return _Stream(stream(**kwargs), lambda: admit_async(recorder, name, model, **bounds))
        return _Stream(stream(**kwargs), lambda: Pending(recorder, name, model, **bounds))

    fleet_stream.__fleet_original__ = stream  # type: ignore[attr-defined]
    setattr(messages, "stream", fleet_stream)  # noqa: B010  (an instance attribute over the method)


def fleet_anthropic(client: Client, agent: AgentLike, *, operation: str | None = None) -> Client:
    """Instrument ``client`` (an ``Anthropic`` or ``AsyncAnthropic``) in place for ``agent`` (a
    :class:`~fleet_agent.FleetAgent` or its ``costs`` recorder) and return it.

    ``operation``: the operation every call is recorded under (default ``messages``).
    """
    recorder = recorder_of(agent)
    is_async = isinstance(client, anthropic.AsyncAnthropic)
    beta = getattr(getattr(client, "beta", None), "messages", None)
    for messages in (client.messages, beta):
        if messages is None:
            continue
        for name in ("create", "parse"):
            if hasattr(messages, name):
                instrument(messages, name, recorder, MESSAGES, operation, is_async=is_async)
        if hasattr(messages, "stream"):
            _instrument_stream(messages, recorder, operation, is_async)
    instrument_copies(client, lambda copy: fleet_anthropic(copy, recorder, operation=operation))
    return client
