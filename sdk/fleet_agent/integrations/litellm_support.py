"""What the LiteLLM integration (:mod:`fleet_agent.integrations.litellm`) reads off LiteLLM's exceptions and
events without LiteLLM itself (only its own integration module imports an extra's client): whether an
exception is a fleet refusal LiteLLM may have wrapped (:func:`refused`), a logging filter for the ERROR
LiteLLM logs for each refused sync call (:func:`quiet_refusals`), whether an event is an async call's
(:func:`is_async`) and whether a failed call asked for retries (:func:`retries_asked`)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from fleet_agent.call_records import CallRefused

__all__ = ["is_async", "quiet_refusals", "refused", "retries_asked"]


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


def is_async(kwargs: Mapping[str, Any]) -> bool:
    """Whether an event is an async call's: one this logger never admitted is not its own (an event LiteLLM
    queued for a call made before the logger was registered, and delivered on a later event loop)."""
    params = kwargs.get("litellm_params")
    kind = str(kwargs.get("call_type") or "")
    return (isinstance(params, Mapping) and params.get("acompletion") is True) or (
        kind.startswith("a") and kind != "anthropic_messages"
    )


def retries_asked(kwargs: Mapping[str, Any]) -> bool:
    """Whether a failed call's event asked for retries: LiteLLM retries ``acompletion`` with ``num_retries``
    (its event names them ``max_retries``) through a path that runs no callback or rule."""
    params = kwargs.get("litellm_params")
    places = [kwargs, params if isinstance(params, Mapping) else {}]
    asked = [place.get(key) for place in places for key in ("num_retries", "max_retries")]
    return any(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in asked)
