"""LangChain's model calls recorded and enforced by the fleet: a callback handler.

    from fleet_agent.integrations.langchain import FleetCallbackHandler

    fleet = FleetCallbackHandler(agent)
    model.invoke("...", config={"callbacks": [fleet]})      # or ChatOpenAI(..., callbacks=[fleet])

``on_chat_model_start`` / ``on_llm_start`` admit the call through the recorder before the model is called:
:class:`~fleet_agent.CallRefused` (the handler has ``raise_error`` set, so LangChain lets it through) while
the agent is held, or when the lease cannot cover the call's estimate (the run's ``max_tokens``, from its
invocation parameters or LangChain's ``ls_max_tokens``, and the prompt's estimate, at the model's price).
``on_llm_end`` records the usage: the message's ``usage_metadata`` (``input_tokens`` with
``input_token_details.cache_read`` / ``cache_creation`` in it, ``output_tokens`` with
``output_token_details.reasoning`` in it), one block per prompt (the first of its generations: with ``n > 1``
each choice carries the whole response's usage), else the OpenAI-shaped ``llm_output["token_usage"]``.
``on_llm_error`` records the call failed, with the usage of what came. The model is the run's
``ls_model_name`` (or its invocation parameters' ``model`` / ``model_name``).

A successful run whose result carries no usage (a streaming chat model without ``stream_usage``) is
recorded at its admitted estimate (prompt estimate and ``max_tokens``), with a warning, never as free. So
is a stream its caller left (``GeneratorExit``: recorded as successful) and one that failed after its first
token (billed: recorded failed). A run admitted whose end or error never comes (another handler raised
before the model ran) is recorded as failed, its reservation released, once older than
``pending_timeout_s`` (checked on each new run).

It runs inline (``run_inline``) in async runs too, so the refusal happens before the request there as
well; a run that must wait for a lease grant therefore waits on the event loop (LangChain calls the
handler synchronously), up to the recorder's ``lease_wait_s``.
Requires ``pip install "fleet-agent[langchain]"`` (langchain-core) and a provider package.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from typing import Any
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.outputs import LLMResult

from fleet_agent.call_records import Call
from fleet_agent.integrations.calls import (
    AgentLike,
    Pending,
    estimate_prompt_tokens,
    output_limit,
    recorder_of,
)
from fleet_agent.integrations.usage import counted, field, openai_usage

__all__ = ["FleetCallbackHandler"]

#: Seconds an admitted run may wait for its end or error before it is recorded as failed.
PENDING_TIMEOUT_S = 600.0


_PARTS = (("input_tokens",), ("output_tokens",), ("input_token_details", "cache_read"),
          ("input_token_details", "cache_creation"), ("output_token_details", "reasoning"))  # fmt: skip


def _usage(call: Call, response: LLMResult) -> bool:
    """Read the call's usage from its generations' ``usage_metadata``, else from ``llm_output`` (False:
    neither has any, or only zeros). One block per inner list of generations (its first): the choices of
    one request (``n > 1``) each carry the whole response's usage (langchain-openai's ``_create_chat_result``),
    so only the outer lists (one per prompt) are summed."""
    totals = [0, 0, 0, 0, 0]
    found = False
    for generations in response.generations:
        usages = (getattr(getattr(g, "message", None), "usage_metadata", None) for g in generations)
        usage = next((u for u in usages if u), None)
        if usage:
            found = True
            for index, path in enumerate(_PARTS):
                totals[index] += field(usage, *path)
    if found:
        call.tokens(totals[0], totals[1], cache_read=totals[2], cache_write=totals[3], reasoning=totals[4])
        return counted(call)
    output = response.llm_output or {}
    return openai_usage(call, output.get("token_usage") or output.get("usage"))


class FleetCallbackHandler(BaseCallbackHandler):
    """Admits and records one agent's LangChain model calls (see the module's docstring).

    ``operation``: the operation calls are recorded under (default ``langchain``). ``pending_timeout_s``:
    how long an admitted run may go without its end or error."""

    raise_error = True
    run_inline = True

    def __init__(
        self, agent: AgentLike, *, operation: str = "langchain", pending_timeout_s: float = PENDING_TIMEOUT_S
    ) -> None:
        self.recorder = recorder_of(agent)
        self.operation = operation
        self._timeout = pending_timeout_s
        self._lock = threading.Lock()
        self._pending: dict[UUID, Pending] = {}
        self._streamed: set[UUID] = set()  # runs whose first token came

    def _admit(
        self, run_id: UUID, serialized: Mapping[str, Any] | None, prompt: Any, kwargs: Mapping[str, Any]
    ) -> None:
        self._expire()
        params: Mapping[str, Any] = kwargs.get("invocation_params") or {}
        metadata: Mapping[str, Any] = kwargs.get("metadata") or {}
        model = metadata.get("ls_model_name") or params.get("model") or params.get("model_name")
        if not model and serialized:
            model = (serialized.get("kwargs") or {}).get("model") or (serialized.get("kwargs") or {}).get("model_name")
        limit = output_limit(params)
        if limit is None and isinstance(metadata.get("ls_max_tokens"), int):
            limit = metadata["ls_max_tokens"]
        pending = Pending(self.recorder, self.operation, str(model or "unknown"), max_tokens=limit,
                          prompt_tokens=estimate_prompt_tokens(prompt))  # fmt: skip
        with self._lock:
            self._pending[run_id] = pending

    def _expire(self) -> None:
        """Record as failed (and forget) the runs admitted more than ``pending_timeout_s`` ago: their end is
        not coming; a late one finds nothing to record."""
        now = time.monotonic()
        with self._lock:
            old = [run_id for run_id, p in self._pending.items() if now - p.admitted >= self._timeout]
            expired = [self._pending.pop(run_id) for run_id in old]
            self._streamed.difference_update(old)
        for pending in expired:
            pending.finish(TimeoutError(f"no end of the LangChain run within {self._timeout:g} s"))

    def _take(self, run_id: UUID) -> Pending | None:
        with self._lock:
            self._streamed.discard(run_id)
            return self._pending.pop(run_id, None)

    def on_chat_model_start(
        self, serialized: dict[str, Any], messages: list[list[Any]], *, run_id: UUID, **kwargs: Any
    ) -> None:
        self._admit(run_id, serialized, messages, kwargs)

    def on_llm_start(self, serialized: dict[str, Any], prompts: list[str], *, run_id: UUID, **kwargs: Any) -> None:
        self._admit(run_id, serialized, prompts, kwargs)

    def on_llm_end(self, response: LLMResult, *, run_id: UUID, **kwargs: Any) -> None:
        pending = self._take(run_id)
        if pending is None:
            return
        try:
            pending.read(_usage, response)
        finally:
            pending.finish()

    def on_llm_new_token(self, token: str | list[str | dict[str, Any]], *, run_id: UUID, **kwargs: Any) -> None:
        if run_id not in self._streamed and run_id in self._pending:
            self._streamed.add(run_id)  # part of the answer came: the provider bills the call

    def on_llm_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        """Record the call failed, with the usage of what came (``response``), else at 0 tokens; a stream the
        caller left (``GeneratorExit``) is recorded as successful, and one whose tokens came is billed: both
        at the usage read, else the admitted estimate, never as free."""
        streamed = run_id in self._streamed
        pending = self._take(run_id)
        if pending is None:
            return
        response = kwargs.get("response")
        if isinstance(response, LLMResult):
            pending.read(_usage, response)
        if isinstance(error, GeneratorExit):
            pending.finish()  # abandoned by its caller, not a failure of the model
        else:
            pending.finish(error, billed=streamed)
