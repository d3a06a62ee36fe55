"""Usage blocks read into a call's record: OpenAI's (chat completions, embeddings, LiteLLM), the Responses
API's and Anthropic's, as objects or dicts. Each reader returns whether the block counted any token
(:func:`counted`): a missing block, or one of zeros, is no usage, and the call is then recorded at its
admitted estimate (:class:`fleet_agent.integrations.calls.Pending`, :func:`estimated`), with a warning.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from typing import Any

from fleet_agent.call_records import Call

log = logging.getLogger("fleet_agent")


def field(block: Any, *path: str) -> int:
    """An integer in a usage block (an object or a dict) by its path; 0 when absent or null."""
    value = block
    for name in path:
        if value is None:
            return 0
        value = value.get(name) if isinstance(value, Mapping) else getattr(value, name, None)
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def openai_usage(call: Call, usage: Any) -> bool:
    """Read an OpenAI-shaped ``usage`` into ``call`` (False: there is none; chat completions, embeddings,
    LiteLLM): ``prompt_tokens`` with ``prompt_tokens_details.cached_tokens`` in it, ``completion_tokens``
    with the reasoning tokens in it; LiteLLM adds ``cache_creation_input_tokens`` (Anthropic's, already in
    ``prompt_tokens``)."""
    if usage is None:
        return False
    call.tokens(
        field(usage, "prompt_tokens"),
        field(usage, "completion_tokens"),
        cache_read=field(usage, "prompt_tokens_details", "cached_tokens"),
        cache_write=field(usage, "cache_creation_input_tokens"),
        reasoning=field(usage, "completion_tokens_details", "reasoning_tokens"),
    )
    return counted(call)


def responses_usage(call: Call, usage: Any) -> bool:
    """Read the Responses API's ``usage`` (False: none): ``input_tokens`` (cached in it), ``output_tokens``
    (reasoning in it)."""
    if usage is None:
        return False
    call.tokens(
        field(usage, "input_tokens"),
        field(usage, "output_tokens"),
        cache_read=field(usage, "input_tokens_details", "cached_tokens"),
        reasoning=field(usage, "output_tokens_details", "reasoning_tokens"),
    )
    return counted(call)


def anthropic_usage(call: Call, usage: Any) -> bool:
    """Read Anthropic's ``usage`` (False: none), whose ``input_tokens`` leaves the cache out: the record's input is
    ``input_tokens + cache_read_input_tokens + cache_creation_input_tokens``."""
    if usage is None:
        return False
    read, write = field(usage, "cache_read_input_tokens"), field(usage, "cache_creation_input_tokens")
    call.tokens(field(usage, "input_tokens") + read + write, field(usage, "output_tokens"), cache_read=read,
                cache_write=write)  # fmt: skip
    return counted(call)


def counted(call: Call) -> bool:
    """Whether the usage read counts any token: a block of zeros is no usage (LiteLLM reports one when the
    provider sent none), and no successful model call reads and writes nothing."""
    return call.input_tokens > 0 or call.output_tokens > 0


#: Seconds between two warnings about calls without usage of one operation and model (the first is at once).
ESTIMATE_WARNING_S = 60.0
_warned: dict[tuple[str, str], tuple[float, int]] = {}
_warned_lock = threading.Lock()


def estimated(call: Call, prompt: int, output: int) -> None:
    """Record a successful call that ended without usage at its estimate (``prompt`` input, ``output``
    output tokens), never as free, and say so: a warning per operation and model at most every
    ``ESTIMATE_WARNING_S`` (with how many more there were meanwhile), since a model that never reports usage
    would otherwise log every call."""
    call.tokens(prompt, output)
    now, key = time.monotonic(), (call.operation, call.model)
    with _warned_lock:
        last, since = _warned.get(key, (float("-inf"), 0))
        if now - last < ESTIMATE_WARNING_S:
            _warned[key] = (last, since + 1)
            return
        _warned[key] = (now, 0)
    more = f" ({since} more such calls since the last warning)" if since else ""
    log.warning("%s call to %s ended without usage; recorded at its estimate (%d input, %d output tokens)%s",
                call.operation, call.model, prompt, output, more)  # fmt: skip
