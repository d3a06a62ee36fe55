"""LiteLLM's calls recorded and enforced by the fleet: a ``CustomLogger`` for its SDK and its proxy.

    from fleet_agent.integrations.litellm import fleet_litellm

    fleet_litellm(agent)            # registers the logger (litellm.callbacks) and its pre-call rule
    litellm.completion(model="openai/gpt-4o", messages=[...], max_tokens=500)

or, for the proxy's ``config.yaml`` (``litellm_settings: callbacks: my_module.fleet_logger``)::

    fleet_logger = FleetLiteLLM(agent)

Refusals, before the request leaves (:class:`~fleet_agent.CallRefused` raised to the caller):

- async SDK calls (``acompletion``, ...) and the proxy: ``async_pre_call_deployment_hook`` and, on the proxy,
  ``async_pre_call_hook`` admit the call through the recorder: refused while the agent is held or when the
  lease cannot cover its worst case (``max_tokens`` / ``max_completion_tokens`` and the prompt at the
  model's price);
- sync SDK calls (``completion``): LiteLLM runs no logger hook that may refuse them, so :func:`fleet_litellm`
  also adds a rule to ``litellm.pre_call_rules`` that refuses while the agent is held. A sync call is not
  checked against the lease before it runs: its record is debited from the lease afterwards (as ``over``).

Every call is recorded from LiteLLM's success and failure events (sync and async), once, by its
``litellm_call_id``, with the usage LiteLLM reports (OpenAI-shaped: ``prompt_tokens`` with
``prompt_tokens_details.cached_tokens`` and ``cache_creation_input_tokens`` in it, ``completion_tokens`` with
``completion_tokens_details.reasoning_tokens`` in it); a stream is recorded once LiteLLM has assembled it.
A successful call whose response has no usage is recorded at its worst case (prompt estimate and output
limit), with a warning, never as free. An admission whose success or failure event never comes (another
hook rejected the request after ours, say) is recorded as failed, its reservation released, once it is
older than ``pending_timeout_s`` (checked on each new call). An async admission that must wait for a lease
grant waits in a worker thread, not on the event loop.

LiteLLM fetches a price map from the internet when imported unless ``LITELLM_LOCAL_MODEL_COST_MAP`` is set:
this module sets it to ``True`` (when unset) in the process environment before importing LiteLLM, so LiteLLM's
own cost tracking in the process uses the map its installed version ships.
Requires ``pip install "fleet-agent[litellm]"``.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # before litellm is imported: no fetch

import litellm
from litellm.integrations.custom_logger import CustomLogger

from fleet_agent.call_records import Call, CallRefused
from fleet_agent.costs import CostRecorder
from fleet_agent.integrations.calls import (
    AgentLike,
    Pending,
    admit_async,
    default_output,
    estimate_prompt_tokens,
    output_limit,
    recorder_of,
)
from fleet_agent.integrations.usage import estimated, openai_usage

__all__ = ["FleetLiteLLM", "fleet_litellm", "fleet_model"]

log = logging.getLogger("fleet_agent")

#: How many finished call ids are remembered, so a call LiteLLM reports twice is recorded once.
FINISHED_MEMORY = 4096
#: Seconds an admitted call may wait for its success or failure event before it is recorded as failed.
PENDING_TIMEOUT_S = 600.0


@functools.lru_cache(maxsize=512)
def fleet_model(model: str, provider: str | None = None) -> str:
    """The name a call is recorded under: ``provider/model`` as LiteLLM routes it (``gpt-4o`` ->
    ``openai/gpt-4o``; ``groq/llama-3.3-70b-versatile``, ``bedrock/anthropic.claude-...`` and
    ``openrouter/openai/gpt-4o`` kept whole), so the fleet prices it at that provider: the bare part of some
    names is priced by no one (``llama-3.3-70b-versatile``) or at another seller. An override of the bare
    name still applies (the fleet matches overrides across the ``provider/`` prefix). ``provider``: the
    provider LiteLLM's event names (its ``custom_llm_provider``), else LiteLLM's own routing of the name; a
    name LiteLLM cannot route (a proxy's model alias) is kept as it is. Cached: LiteLLM prints a notice for
    each name it cannot route."""
    try:
        name, routed = litellm.get_llm_provider(model, custom_llm_provider=provider or None)[:2]
    except Exception:
        return model
    if not routed:
        return model
    return name if name.startswith(f"{routed}/") else f"{routed}/{name}"


def _model_of(kwargs: Mapping[str, Any]) -> str:
    """:func:`fleet_model` of a call's ``model`` and ``custom_llm_provider`` (a hook's data, an event's
    kwargs: LiteLLM's events name the model without its prefix), the one naming of every path."""
    params = kwargs.get("litellm_params")
    provider = kwargs.get("custom_llm_provider")
    if not provider and isinstance(params, Mapping):
        provider = params.get("custom_llm_provider")
    return fleet_model(str(kwargs.get("model", "")), provider if isinstance(provider, str) else None)


class FleetLiteLLM(CustomLogger):
    """Records one agent's LiteLLM calls and refuses them while it is held (see the module's docstring).

    ``operation``: the operation calls are recorded under (default ``litellm.<call type>``, e.g.
    ``litellm.acompletion``). ``pending_timeout_s``: how long an admitted call may go without its end event.
    """

    def __init__(
        self, agent: AgentLike, *, operation: str | None = None, pending_timeout_s: float = PENDING_TIMEOUT_S
    ) -> None:
        super().__init__()
        self.recorder: CostRecorder = recorder_of(agent)
        self._operation = operation
        self._timeout = pending_timeout_s
        self._lock = threading.Lock()
        self._pending: dict[str, Pending] = {}
        self._finished: OrderedDict[str, None] = OrderedDict()

    # -- before the call -------------------------------------------------------------------------

    def rule(self, _input: str) -> bool:
        """``litellm.pre_call_rules``' entry: raises CallRefused while the agent is held."""
        self.recorder.check()
        return True

    async def _admit(self, data: Mapping[str, Any], call_type: Any) -> None:
        self._expire()
        call_id = data.get("litellm_call_id")
        if not isinstance(call_id, str):
            self.recorder.check()
            return
        with self._lock:
            if call_id in self._pending or call_id in self._finished:
                return  # the proxy's hook admitted it already
        kind = getattr(call_type, "value", call_type)
        operation = self._operation or f"litellm.{kind}"
        prompt = estimate_prompt_tokens(data.get("messages"), data.get("input"), data.get("prompt"))
        limit = 0 if "embedding" in str(kind) else output_limit(data)
        pending = await admit_async(self.recorder, operation, _model_of(data), max_tokens=limit,
                                    prompt_tokens=prompt)  # fmt: skip
        with self._lock:
            self._pending[call_id] = pending

    def _expire(self) -> None:
        """Record as failed (and forget) the admissions older than ``pending_timeout_s``: their end event
        is not coming; a late one finds the call recorded already."""
        now = time.monotonic()
        with self._lock:
            old = [call_id for call_id, p in self._pending.items() if now - p.admitted >= self._timeout]
            expired = [self._pending.pop(call_id) for call_id in old]
            self._finished.update(dict.fromkeys(old))
        for pending in expired:
            pending.finish(TimeoutError(f"no LiteLLM success or failure event within {self._timeout:g} s"))

    async def async_pre_call_deployment_hook(self, kwargs: dict[str, Any], call_type: Any) -> dict[str, Any] | None:
        await self._admit(kwargs, call_type)
        return None

    async def async_pre_call_hook(
        self, user_api_key_dict: Any, cache: Any, data: dict[str, Any], call_type: Any
    ) -> dict[str, Any] | None:
        await self._admit(data, call_type)
        return None

    # -- after it --------------------------------------------------------------------------------

    def _take(self, kwargs: Mapping[str, Any]) -> tuple[str | None, Pending | None, bool]:
        """The call's id, its admission if any, and whether it was recorded already."""
        call_id = kwargs.get("litellm_call_id")
        if not isinstance(call_id, str):
            return None, None, False
        with self._lock:
            if call_id in self._finished:
                return call_id, None, True
            self._finished[call_id] = None
            while len(self._finished) > FINISHED_MEMORY:
                self._finished.popitem(last=False)
            return call_id, self._pending.pop(call_id, None), False

    def _unadmitted(self, kwargs: Mapping[str, Any], start: Any, end: Any) -> Call:
        """A call that ran without admission (a sync call): recorded afterwards, as it ran."""
        kind = kwargs.get("call_type") or "completion"
        call = Call(operation=self._operation or f"litellm.{kind}", model=_model_of(kwargs))
        with contextlib.suppress(TypeError, AttributeError):  # no times given: latency from now
            call.started = time.monotonic() - max(0.0, (end - start).total_seconds())
        return call

    def _success(self, kwargs: Mapping[str, Any], response: Any, start: Any, end: Any) -> None:
        _, pending, done = self._take(kwargs)
        if done:
            return
        usage = getattr(response, "usage", None)
        if pending is not None:
            pending.read(openai_usage, usage)
            pending.finish()
            return
        call = self._unadmitted(kwargs, start, end)
        try:
            measured = openai_usage(call, usage)
        except Exception:
            log.warning("a LiteLLM call's usage could not be read", exc_info=True)
            measured = False
        if not measured:
            self._estimate(call, kwargs)
        self.recorder.record(call)

    def _estimate(self, call: Call, kwargs: Mapping[str, Any]) -> None:
        """A sync call's worst case, for a success without usage: its prompt estimate and output limit."""
        params = kwargs.get("optional_params")
        limit = output_limit(params if isinstance(params, Mapping) else kwargs)
        text = next((kwargs[k] for k in ("messages", "input", "prompt") if kwargs.get(k) is not None), None)
        prompt = estimate_prompt_tokens(text)  # an event's "input" repeats its "messages"
        output = 0 if "embedding" in str(call.operation) else default_output(self.recorder) if limit is None else limit
        estimated(call, prompt, output)

    def _failure(self, kwargs: Mapping[str, Any], start: Any, end: Any) -> None:
        exc = kwargs.get("exception")
        _, pending, done = self._take(kwargs)
        if done or (pending is None and isinstance(exc, CallRefused)):
            return  # refused before it left: nothing to record
        if pending is not None:
            pending.finish(exc if isinstance(exc, BaseException) else RuntimeError("litellm call failed"))
            return
        call = self._unadmitted(kwargs, start, end)
        call.success = False
        self.recorder.record(call)

    def log_success_event(self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any) -> None:
        self._success(kwargs, response_obj, start_time, end_time)

    def log_failure_event(self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any) -> None:
        self._failure(kwargs, start_time, end_time)

    async def async_log_success_event(self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any) -> None:
        self._success(kwargs, response_obj, start_time, end_time)

    async def async_log_failure_event(self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any) -> None:
        self._failure(kwargs, start_time, end_time)


def fleet_litellm(agent: AgentLike, *, operation: str | None = None) -> FleetLiteLLM:
    """Make a :class:`FleetLiteLLM` for ``agent`` and register it with LiteLLM's SDK: in ``litellm.callbacks``
    and, for sync calls, its :meth:`~FleetLiteLLM.rule` in ``litellm.pre_call_rules``."""
    logger = FleetLiteLLM(agent, operation=operation)
    litellm.callbacks.append(logger)
    litellm.pre_call_rules.append(logger.rule)
    return logger


#: The lists LiteLLM copies ``litellm.callbacks`` into on its first call (and the pre-call rules).
_LISTS = ("callbacks", "input_callback", "success_callback", "failure_callback", "_async_success_callback",
          "_async_failure_callback")  # fmt: skip


def unregister(logger: FleetLiteLLM) -> None:
    """Undo :func:`fleet_litellm`: the logger leaves every list LiteLLM keeps it in."""
    for name in _LISTS:
        registered = getattr(litellm, name, None)
        while isinstance(registered, list) and logger in registered:
            registered.remove(logger)
    if logger.rule in litellm.pre_call_rules:
        litellm.pre_call_rules.remove(logger.rule)
