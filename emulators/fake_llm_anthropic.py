"""The fake model provider's Anthropic answers (emulators/fake_llm.py): Messages, streamed as
``message_start`` ... ``message_stop``, with Anthropic's usage: ``input_tokens`` *without* the cache (total =
``input_tokens + cache_read_input_tokens + cache_creation_input_tokens``), ``output_tokens`` with thinking.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

from emulators.fake_llm_usage import Event, Usage
from emulators.fake_llm_usage import reply as _reply


def _anthropic_usage(u: Usage, output: int) -> dict[str, Any]:
    return {
        "input_tokens": u.anthropic_input,
        "cache_creation_input_tokens": u.cache_write,
        "cache_read_input_tokens": u.cached,
        "output_tokens": output,
        "service_tier": "standard",
    }


def _message(body: dict[str, Any], u: Usage, content: list[dict[str, Any]], output: int) -> dict[str, Any]:
    return {
        "id": f"msg_{uuid.uuid4().hex[:24]}",
        "type": "message",
        "role": "assistant",
        "model": body.get("model", "claude-sonnet-4-5"),
        "content": content,
        "stop_reason": "end_turn" if content else None,
        "stop_sequence": None,
        "usage": _anthropic_usage(u, output),
    }


def messages(body: dict[str, Any], u: Usage) -> dict[str, Any]:
    return _message(body, u, [{"type": "text", "text": "".join(_reply(u.visible)).strip()}], u.output)


def messages_stream(body: dict[str, Any], u: Usage) -> Iterator[Event]:
    yield "message_start", {"type": "message_start", "message": _message(body, u, [], 1)}
    yield "content_block_start", {"type": "content_block_start", "index": 0,
                                  "content_block": {"type": "text", "text": ""}}  # fmt: skip
    yield "ping", {"type": "ping"}
    for word in _reply(u.visible):
        yield "content_block_delta", {"type": "content_block_delta", "index": 0,
                                      "delta": {"type": "text_delta", "text": word}}  # fmt: skip
    yield "content_block_stop", {"type": "content_block_stop", "index": 0}
    delta = {"stop_reason": "end_turn", "stop_sequence": None}
    yield "message_delta", {"type": "message_delta", "delta": delta, "usage": _anthropic_usage(u, u.output)}
    yield "message_stop", {"type": "message_stop"}
