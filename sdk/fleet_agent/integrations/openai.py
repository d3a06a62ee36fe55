"""The OpenAI client, recorded and enforced by the fleet: ``fleet_openai(OpenAI(), agent)``.

    from openai import OpenAI
    from fleet_agent.integrations.openai import fleet_openai

    client = fleet_openai(OpenAI(), agent)       # or AsyncOpenAI(); the same client, instrumented in place
    client.chat.completions.create(model="gpt-4o", messages=[...], max_tokens=500)

Covered: ``chat.completions.create`` and ``parse`` (and their ``beta.chat.completions`` alias),
``responses.create`` and ``parse``, ``embeddings.create``; streaming too, the helpers that call them
(``chat.completions.stream``), and their raw answers (``with_raw_response``, ``with_streaming_response``: read
through their ``parse()``, a raw stream recorded as its parsed stream). Each call is admitted before the
request leaves (:class:`~fleet_agent.CallRefused` while the agent is held, or when the lease cannot cover
the call's estimate) and recorded with the usage the API reports: cached input
(``prompt_tokens_details.cached_tokens``) and reasoning (``completion_tokens_details.reasoning_tokens``)
tokens included; a call that raises is recorded as failed.

A chat stream always asks for its usage (``stream_options.include_usage``); when the caller did not ask
for it (or set it False) the usage chunk (no choices) is read and not passed on, so the caller sees the
stream it asked for. A stream is recorded when it ends, is closed, or is dropped half-read (garbage
collected: then at the usage read so far, else the admitted estimate). A successful call without usage (a
Responses stream with no ``response.completed``) is recorded at its admitted estimate, with a warning.
An async client's call that must wait for a lease grant waits in a worker thread, not on the event loop.
``client.with_options(...)`` and ``client.copy(...)`` return an instrumented copy (same agent and
operation).

Requires ``pip install "fleet-agent[openai]"``.
"""

from __future__ import annotations

from typing import Any, TypeVar

import openai

from fleet_agent.call_records import Call
from fleet_agent.integrations.calls import (
    AgentLike,
    Endpoint,
    Observe,
    Pending,
    instrument,
    instrument_copies,
    recorder_of,
)
from fleet_agent.integrations.usage import openai_usage, responses_usage

Client = TypeVar("Client", openai.OpenAI, openai.AsyncOpenAI)

__all__ = ["fleet_openai"]


def _read_usage(call: Call, response: Any) -> bool:
    return openai_usage(call, getattr(response, "usage", None))


def _read_response(call: Call, response: Any) -> bool:
    return responses_usage(call, getattr(response, "usage", None))


def _chat_stream(kwargs: dict[str, Any]) -> Observe:
    options = dict(kwargs.get("stream_options") or {})
    wanted = options.get("include_usage") is True
    options["include_usage"] = True  # always: a stream without usage could only be estimated
    kwargs["stream_options"] = options

    def observe(pending: Pending, chunk: Any) -> bool:
        usage = getattr(chunk, "usage", None)
        if usage is not None:
            pending.read(openai_usage, usage)
            return wanted or bool(getattr(chunk, "choices", None))
        return True

    return observe


def _responses_stream(kwargs: dict[str, Any]) -> Observe:
    def observe(pending: Pending, event: Any) -> bool:
        if getattr(event, "type", "") in ("response.completed", "response.incomplete", "response.failed"):
            pending.read(responses_usage, getattr(getattr(event, "response", None), "usage", None))
        return True

    return observe


CHAT = Endpoint("chat.completions", _read_usage, _chat_stream)
RESPONSES = Endpoint("responses", _read_response, _responses_stream)
EMBEDDINGS = Endpoint("embeddings", _read_usage, output=False)


def fleet_openai(client: Client, agent: AgentLike, *, operation: str | None = None) -> Client:
    """Instrument ``client`` (an ``OpenAI`` or ``AsyncOpenAI``) in place for ``agent`` (a
    :class:`~fleet_agent.FleetAgent` or its ``costs`` recorder) and return it.

    ``operation``: the operation every call is recorded under (default: the API's, ``chat.completions``,
    ``responses`` or ``embeddings``). Instrumenting a client again replaces the agent and operation.
    """
    recorder = recorder_of(agent)
    is_async = isinstance(client, openai.AsyncOpenAI)
    beta_chat = getattr(getattr(client, "beta", None), "chat", None)
    for owner, endpoint, names in (
        (client.chat.completions, CHAT, ("create", "parse")),
        (getattr(beta_chat, "completions", None), CHAT, ("create", "parse")),  # an alias of chat's, when present
        (client.responses, RESPONSES, ("create", "parse")),
        (client.embeddings, EMBEDDINGS, ("create",)),
    ):
        for name in names:
            if owner is not None and hasattr(owner, name):
                instrument(owner, name, recorder, endpoint, operation, is_async=is_async)
    instrument_copies(client, lambda copy: fleet_openai(copy, recorder, operation=operation))
    return client
