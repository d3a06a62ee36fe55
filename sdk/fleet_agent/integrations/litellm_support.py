"""What the LiteLLM integration (:mod:`fleet_agent.integrations.litellm`) uses beside its logger: the name a
call is recorded under (:func:`fleet_model`), whether an exception is a fleet refusal LiteLLM may have wrapped
(:func:`refused`) and a logging filter for the ERROR LiteLLM logs for each refused sync call
(:func:`quiet_refusals`)."""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Mapping
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # before litellm is imported: no fetch

import litellm

from fleet_agent.call_records import CallRefused

__all__ = ["fleet_model", "model_of", "quiet_refusals", "refused"]


def refused(exc: object) -> bool:
    """Whether ``exc`` is, or wraps, :class:`~fleet_agent.CallRefused` (LiteLLM wraps what a rule raises in
    some paths, ``responses`` say: through ``__cause__``, ``__context__`` or its ``original_exception``)."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        item = todo.pop()
        if not isinstance(item, BaseException) or id(item) in seen:
            continue
        if isinstance(item, CallRefused):
            return True
        seen.add(id(item))
        todo += [item.__cause__, item.__context__, getattr(item, "original_exception", None)]
    return False


def quiet_refusals(record: logging.LogRecord) -> bool:
    """A logging filter for LiteLLM's logger (``logging.getLogger("LiteLLM").addFilter(quiet_refusals)``):
    drops the ERROR with a traceback LiteLLM logs for each sync call the fleet refused."""
    return not (record.exc_info and refused(record.exc_info[1]))


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


def model_of(kwargs: Mapping[str, Any]) -> str:
    """:func:`fleet_model` of a call's ``model`` and ``custom_llm_provider`` (a hook's data, an event's
    kwargs: LiteLLM's events name the model without its prefix), the one naming of every path."""
    params = kwargs.get("litellm_params")
    provider = kwargs.get("custom_llm_provider")
    if not provider and isinstance(params, Mapping):
        provider = params.get("custom_llm_provider")
    return fleet_model(str(kwargs.get("model", "")), provider if isinstance(provider, str) else None)
