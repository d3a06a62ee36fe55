"""LiteLLM's calls recorded and enforced by the fleet: a ``CustomLogger`` for its SDK and its proxy
(docs/integrations.md, "LiteLLM", says what is and is not covered).

    logger = fleet_litellm(agent)   # registers the logger (litellm.callbacks) and its pre-call rule
    litellm.completion(model="openai/gpt-4o", messages=[...], max_tokens=500)
    logger.drain()                  # before agent.close(): LiteLLM records after the call returns

or, for the proxy's ``config.yaml`` (``litellm_settings: callbacks: my_module.fleet_logger``)::

    fleet_logger = FleetLiteLLM(agent)

Refusals, before the request leaves (:class:`~fleet_agent.CallRefused` raised to the caller):

- async SDK calls and the proxy: ``async_pre_call_deployment_hook`` and, on the proxy, ``async_pre_call_hook``
  admit the call through the recorder: refused while the agent is held or when the lease cannot cover its
  worst case (the output limit and the prompt at the model's price);
- sync SDK calls: LiteLLM runs no logger hook that may refuse them, so :func:`fleet_litellm` also adds a rule
  to ``litellm.pre_call_rules`` that refuses while the agent is held, which LiteLLM applies only to
  ``completion`` (and what runs through it) whose first message is a dict with ``content``. A sync call is
  not checked against the lease: its record is debited afterwards (as ``over``). A failure that is or wraps
  ``CallRefused`` (:func:`refused`; ``responses`` wraps it) records nothing.

Every call is recorded once, by its ``litellm_call_id``: an async call that is not a stream before
``acompletion`` returns (``async_post_call_success_deployment_hook``), the others from LiteLLM's success
and failure events, which it runs after the call returned (sync: in its thread pool; async: as tasks of the
loop, which die with it), hence :meth:`FleetLiteLLM.drain` (``adrain``) before ``agent.close()``; a record
the closed recorder refuses is logged at WARNING. Each with the usage LiteLLM reports (OpenAI-shaped, cache
and reasoning tokens included); a stream once LiteLLM has assembled it. A success without usage is recorded
at its worst case, with a warning, never as free; so is a call whose event never comes (an abandoned stream,
an event cancelled with its loop, a request another hook rejected after ours) once it is older than
``pending_timeout_s`` (checked on each new call) or at :meth:`~FleetLiteLLM.drain`, its reservation
released. ``num_retries`` retries run no callback: neither recorded nor refused (warned once; use a Router).
An async admission that must wait for a lease grant waits in a worker thread, not on the event loop.

This module sets ``LITELLM_LOCAL_MODEL_COST_MAP=True`` (when unset) in the process environment before it
imports LiteLLM, which would otherwise fetch a price map from the internet: LiteLLM's own cost tracking in
the process uses the map its installed version ships. Requires ``pip install "fleet-agent[litellm]"``.
"""

from __future__ import annotations

import asyncio
import atexit
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

from fleet_agent.call_records import Call
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
from fleet_agent.integrations.litellm_support import is_async, quiet_refusals, refused, retries_asked
from fleet_agent.integrations.usage import estimated, openai_usage

__all__ = ["FleetLiteLLM", "fleet_litellm", "fleet_model", "quiet_refusals", "refused"]

log = logging.getLogger("fleet_agent")

#: How many finished call ids are remembered, so a call LiteLLM reports twice is recorded once.
FINISHED_MEMORY = 4096
#: Seconds a call may wait for its success or failure event before it is recorded at its estimate.
PENDING_TIMEOUT_S = 600.0
#: Seconds the exit hook :func:`fleet_litellm` registers waits in :meth:`FleetLiteLLM.drain`.
EXIT_DRAIN_S = 5.0


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
    ``litellm.acompletion``). ``pending_timeout_s``: how long a call may go without its end event before it
    is recorded at its estimate. Call :meth:`drain` (or ``await`` :meth:`adrain`) before ``agent.close()``.
    """

    def __init__(
        self, agent: AgentLike, *, operation: str | None = None, pending_timeout_s: float = PENDING_TIMEOUT_S
    ) -> None:
        super().__init__()
        self.recorder: CostRecorder = recorder_of(agent)
        self._operation = operation
        self._timeout = pending_timeout_s
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._pending: dict[str, Pending] = {}  # admitted (async, proxy), waiting for their event
        self._running: dict[str, tuple[float, Mapping[str, Any]]] = {}  # sent unadmitted (sync): since, kwargs
        self._finished: OrderedDict[str, None] = OrderedDict()
        self._busy = 0  # calls taken from the two above and being recorded
        self._retry_warned = False

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

    def log_pre_api_call(self, model: Any, messages: Any, kwargs: Any) -> None:
        """Just before the request leaves, sync or async: a call not admitted (sync) is remembered until its
        event, so that :meth:`drain` waits for it and it is recorded at its estimate if none comes."""
        self._expire()
        call_id = kwargs.get("litellm_call_id") if isinstance(kwargs, Mapping) else None
        if isinstance(call_id, str):
            with self._lock:
                if call_id not in self._pending and call_id not in self._finished:
                    self._running[call_id] = (time.monotonic(), kwargs)

    def _expire(self, *, everything: bool = False) -> None:
        """Record at their estimate (and forget) the calls whose event has not come within
        ``pending_timeout_s`` (all of them with ``everything``): an abandoned stream, an event cancelled with
        its event loop, a request another hook rejected after ours. A late event finds them recorded."""
        now = time.monotonic()
        with self._lock:
            old = [key for key, p in self._pending.items() if everything or now - p.admitted >= self._timeout]
            late = [key for key, (t, _) in self._running.items() if everything or now - t >= self._timeout]
            expired = [self._pending.pop(key) for key in old]
            unseen = [self._running.pop(key) for key in late]
            self._finished.update(dict.fromkeys(old + late))
            self._busy += 1
        try:
            self._record_expired(expired, unseen)
        finally:
            self._settled()

    def _record_expired(self, expired: list[Pending], unseen: list[tuple[float, Mapping[str, Any]]]) -> None:
        if expired or unseen:
            models = sorted({p.call.model for p in expired} | {_model_of(kwargs) for _, kwargs in unseen})
            log.warning("%d LiteLLM call(s) to %s without a success or failure event (an abandoned stream, say): "
                        "recorded at the estimate", len(expired) + len(unseen), ", ".join(models))  # fmt: skip
        for pending in expired:
            self._finish(pending)
        for since, kwargs in unseen:
            call = self._unadmitted(kwargs, None, None)
            call.started = since
            self._estimate(call, kwargs)
            self._record(call)

    def drain(self, timeout_s: float = 10.0) -> bool:
        """Wait until every call admitted or sent has had its success or failure event (LiteLLM runs them
        after the call returns: sync ones in its thread pool, async ones as tasks of the loop), then record
        those still without one after ``timeout_s`` at their estimate. Call it before ``agent.close()``;
        from a coroutine, ``await`` :meth:`adrain` instead (this would block the loop the events run on).
        True when every call had its event."""
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while self._outstanding() and (left := deadline - time.monotonic()) > 0:
                self._changed.wait(left)
            complete = not self._outstanding()
        if not complete:
            self._expire(everything=True)
        return complete

    def _outstanding(self) -> bool:
        return bool(self._pending or self._running or self._busy)

    def _settled(self) -> None:
        with self._lock:
            self._busy -= 1
            self._changed.notify_all()

    async def adrain(self, timeout_s: float = 10.0) -> bool:
        """:meth:`drain` from a coroutine (``await logger.adrain()`` before the loop ends): the loop keeps
        running the async events meanwhile."""
        deadline = time.monotonic() + timeout_s
        while self._outstanding() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        return self.drain(0)

    async def async_pre_call_deployment_hook(self, kwargs: dict[str, Any], call_type: Any) -> dict[str, Any] | None:
        await self._admit(kwargs, call_type)
        return None

    async def async_pre_call_hook(
        self, user_api_key_dict: Any, cache: Any, data: dict[str, Any], call_type: Any
    ) -> dict[str, Any] | None:
        await self._admit(data, call_type)
        return None

    # -- after it --------------------------------------------------------------------------------

    async def async_post_call_success_deployment_hook(
        self, request_data: dict[str, Any], response: Any, call_type: Any
    ) -> Any:
        """An admitted async call that is not a stream, recorded before ``acompletion`` returns (its success
        event is a task that dies with the loop when the program ends right after the call)."""
        call_id = request_data.get("litellm_call_id")
        with self._lock:
            admitted = isinstance(call_id, str) and call_id in self._pending
        if admitted:
            self._success(request_data, response, None, None)
        return None

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
            self._running.pop(call_id, None)
            self._busy += 1  # until it is recorded: _settled
            return call_id, self._pending.pop(call_id, None), False

    def _unadmitted(self, kwargs: Mapping[str, Any], start: Any, end: Any) -> Call:
        """A call that ran without admission (a sync call): recorded afterwards, as it ran."""
        kind = kwargs.get("call_type") or "completion"
        call = Call(operation=self._operation or f"litellm.{kind}", model=_model_of(kwargs))
        with contextlib.suppress(TypeError, AttributeError):  # no times given: latency from now
            call.started = time.monotonic() - max(0.0, (end - start).total_seconds())
        return call

    def _closed(self, exc: RuntimeError, operation: str, model: str) -> None:
        """A record the closed recorder refused: logged (LiteLLM would swallow it), else raised."""
        if not getattr(self.recorder, "_closed", False):
            raise exc
        log.warning("%s call to %s not recorded: the cost recorder is closed (call FleetLiteLLM.drain() "
                    "before agent.close())", operation, model)  # fmt: skip

    def _finish(self, pending: Pending, exc: BaseException | None = None) -> None:
        try:
            pending.finish(exc)
        except RuntimeError as error:
            self._closed(error, pending.call.operation, pending.call.model)

    def _record(self, call: Call) -> None:
        try:
            self.recorder.record(call)
        except RuntimeError as error:
            self._closed(error, call.operation, call.model)

    def _success(self, kwargs: Mapping[str, Any], response: Any, start: Any, end: Any) -> None:
        _, pending, done = self._take(kwargs)
        if not done and (pending is not None or not is_async(kwargs)):
            try:
                self._succeeded(kwargs, pending, response, start, end)
            finally:
                self._settled()

    def _succeeded(
        self, kwargs: Mapping[str, Any], pending: Pending | None, response: Any, start: Any, end: Any
    ) -> None:
        usage = getattr(response, "usage", None)
        if pending is not None:
            pending.read(openai_usage, usage)
            self._finish(pending)
            return
        call = self._unadmitted(kwargs, start, end)
        try:
            measured = openai_usage(call, usage)
        except Exception:
            log.warning("a LiteLLM call's usage could not be read", exc_info=True)
            measured = False
        if not measured:
            self._estimate(call, kwargs)
        self._record(call)

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
        self._retried(kwargs)
        _, pending, done = self._take(kwargs)
        if not done and (pending is not None or not is_async(kwargs)):
            try:
                self._failed(kwargs, pending, exc, start, end)
            finally:
                self._settled()

    def _failed(self, kwargs: Mapping[str, Any], pending: Pending | None, exc: Any, start: Any, end: Any) -> None:
        if pending is None and refused(exc):
            return  # refused before it left: nothing to record
        if pending is not None:
            self._finish(pending, exc if isinstance(exc, BaseException) else RuntimeError("litellm call failed"))
            return
        call = self._unadmitted(kwargs, start, end)
        call.success = False
        self._record(call)

    def _retried(self, kwargs: Mapping[str, Any]) -> None:
        """Warn once when a failed call asked for retries (:func:`retries_asked`)."""
        if self._retry_warned or not retries_asked(kwargs):
            return
        self._retry_warned = True
        log.warning("a LiteLLM call with num_retries failed: LiteLLM retries it without its callbacks, so the "
                    "fleet neither records nor refuses the retry (retry with a litellm.Router instead)")  # fmt: skip

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
    and, for sync calls, its :meth:`~FleetLiteLLM.rule` in ``litellm.pre_call_rules``; its
    :meth:`~FleetLiteLLM.drain` also runs at interpreter exit (``atexit``, up to ``EXIT_DRAIN_S``), which
    records only what an agent not closed yet still accepts: call ``drain()`` before ``agent.close()``."""
    logger = FleetLiteLLM(agent, operation=operation)
    litellm.callbacks.append(logger)
    litellm.pre_call_rules.append(logger.rule)
    atexit.register(logger.drain, EXIT_DRAIN_S)
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
    atexit.unregister(logger.drain)
