"""The fake model provider's OpenAI answers (emulators/fake_llm.py): chat completions (SSE chunks, the usage
chunk with ``stream_options.include_usage``), Responses (``response.created`` ... ``response.completed``) and
embeddings, with OpenAI's usage blocks: ``prompt_tokens`` (``prompt_tokens_details.cached_tokens`` part of
it) and ``completion_tokens`` (``completion_tokens_details.reasoning_tokens`` part of it).

When the fake is told to omit usage (``u.omitted``) its answers carry none: no usage block (chat, Responses,
embeddings), no usage chunk in a chat stream even when asked for, and a Responses stream that ends without
``response.completed``.
"""

from __future__ import annotations

import base64
import struct
import time
import uuid
from collections.abc import Iterator
from typing import Any

from emulators.fake_llm_usage import EMBEDDING_DIMENSIONS, Event, Usage
from emulators.fake_llm_usage import reply as _reply


def _openai_usage(u: Usage) -> dict[str, Any]:
    return {
        "prompt_tokens": u.input,
        "completion_tokens": u.output,
        "total_tokens": u.input + u.output,
        "prompt_tokens_details": {"cached_tokens": u.cached, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": u.reasoning,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def chat(body: dict[str, Any], u: Usage) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model", "gpt-4o"),
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "".join(_reply(u.visible)).strip(), "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": None if u.omitted else _openai_usage(u),
        "system_fingerprint": "fp_fake",
    }


def chat_stream(body: dict[str, Any], u: Usage) -> Iterator[Event]:
    base = {
        "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": body.get("model", "gpt-4o"),
        "system_fingerprint": "fp_fake",
    }
    include = bool((body.get("stream_options") or {}).get("include_usage"))
    extra = {"usage": None} if include else {}
    first = {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
    yield None, {**base, "choices": [first], **extra}
    for word in _reply(u.visible):
        choice = {"index": 0, "delta": {"content": word}, "logprobs": None, "finish_reason": None}
        yield None, {**base, "choices": [choice], **extra}
    yield None, {**base, "choices": [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}], **extra}
    if include and not u.omitted:
        yield None, {**base, "choices": [], "usage": _openai_usage(u)}
    yield None, "[DONE]"


def response(body: dict[str, Any], u: Usage, rid: str, status: str = "completed") -> dict[str, Any]:
    done = status == "completed"
    text = "".join(_reply(u.visible)).strip()
    message = {
        "type": "message",
        "id": f"msg_{rid}",
        "status": "completed",
        "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}],
    }
    return {
        "id": f"resp_{rid}",
        "object": "response",
        "created_at": int(time.time()),
        "status": status,
        "model": body.get("model", "gpt-4o"),
        "output": [message] if done else [],
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "error": None,
        "incomplete_details": None,
        "instructions": None,
        "metadata": {},
        "temperature": 1.0,
        "top_p": 1.0,
        "max_output_tokens": body.get("max_output_tokens"),
        "usage": {
            "input_tokens": u.input,
            "input_tokens_details": {"cached_tokens": u.cached},
            "output_tokens": u.output,
            "output_tokens_details": {"reasoning_tokens": u.reasoning},
            "total_tokens": u.input + u.output,
        }
        if done and not u.omitted
        else None,
    }


def response_stream(body: dict[str, Any], u: Usage) -> Iterator[Event]:
    rid = uuid.uuid4().hex[:24]
    seq = iter(range(10**6))
    yield "response.created", {"type": "response.created", "sequence_number": next(seq),
                               "response": response(body, u, rid, "in_progress")}  # fmt: skip
    for word in _reply(u.visible):
        yield "response.output_text.delta", {
            "type": "response.output_text.delta", "sequence_number": next(seq), "item_id": f"msg_{rid}",
            "output_index": 0, "content_index": 0, "delta": word, "logprobs": [],
        }  # fmt: skip
    if u.omitted:
        return  # the stream ends without response.completed
    yield "response.completed", {"type": "response.completed", "sequence_number": next(seq),
                                 "response": response(body, u, rid)}  # fmt: skip


def embeddings(body: dict[str, Any], u: Usage) -> dict[str, Any]:
    inputs = body.get("input")
    items = inputs if isinstance(inputs, list) and inputs and not isinstance(inputs[0], int) else [inputs]
    data = []
    for index, item in enumerate(items):
        vector = [((len(str(item)) + index + d) % 10) / 10 for d in range(EMBEDDING_DIMENSIONS)]
        encoded: Any = vector
        if body.get("encoding_format") == "base64":
            encoded = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
        data.append({"object": "embedding", "index": index, "embedding": encoded})
    usage = None if u.omitted else {"prompt_tokens": u.input, "total_tokens": u.input}
    return {"object": "list", "data": data, "model": body.get("model", "text-embedding-3-small"), "usage": usage}
