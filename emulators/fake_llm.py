"""A fake model provider for tests and the local stack: the OpenAI and Anthropic HTTP APIs with exact usage.

    python -m emulators.fake_llm --port 8766

Point ``OpenAI(base_url="http://127.0.0.1:8766/v1", api_key="x")`` or
``Anthropic(base_url="http://127.0.0.1:8766", api_key="x")`` at it. It serves:

    POST /v1/chat/completions   OpenAI chat; ``stream`` as SSE chunks, and with
                                ``stream_options.include_usage`` a last chunk holding the usage
    POST /v1/responses          OpenAI Responses (``stream`` too: response.created ... response.completed)
    POST /v1/embeddings         OpenAI embeddings (``encoding_format`` float or base64)
    POST /v1/messages           Anthropic Messages; ``stream`` as message_start ... message_stop

Token counts are deterministic, so a test can work out the exact spend:

- input: ``PROMPT_BASE`` + the number of whitespace-separated words in every text of the request
  (messages, system, input); this total includes the cached tokens (OpenAI's ``prompt_tokens``);
- output: the visible reply has ``REPLY_WORDS`` words (fewer when the request's ``max_tokens`` /
  ``max_completion_tokens`` / ``max_output_tokens`` is smaller), one token each, plus the reasoning tokens;
- cached, cache-write and reasoning tokens are what the fake is told (``usage(...)`` or ``POST /_usage``),
  at most the input (cached + cache writes) and 0 by default.

OpenAI reports ``prompt_tokens`` (total, ``prompt_tokens_details.cached_tokens`` part of it) and
``completion_tokens`` (``completion_tokens_details.reasoning_tokens`` part of it). Anthropic reports
``input_tokens`` *without* the cache: total = ``input_tokens + cache_read_input_tokens +
cache_creation_input_tokens``; its ``output_tokens`` include thinking. :func:`expected_usage` gives them.

Control endpoints (no key needed):

    GET    /_calls                  every model request, oldest first: {"path", "body", "status"}
    DELETE /_calls                  forget them
    POST   /_fail {"status": 500, "count": 1, "retry_after": 1}
                                    the next ``count`` model requests fail (429 with Retry-After)
    POST   /_usage {"cached": 0, "cache_write": 0, "reasoning": 0}

In-process: ``with FakeLLM() as llm: ... llm.url ... llm.calls()``.
"""

from __future__ import annotations

import argparse
import base64
import json
import struct
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from emulators.serving import Served

PROMPT_BASE = 7
REPLY_WORDS = 12
EMBEDDING_DIMENSIONS = 8
_WORDS = [
    "the",
    "fleet",
    "counts",
    "every",
    "token",
    "of",
    "this",
    "reply",
    "so",
    "that",
    "spend",
    "is",
    "exact",
    "to",
    "the",
    "nano",
    "dollar",
]


@dataclass(frozen=True)
class Usage:
    """One request's usage, as the fake reports it: ``input`` is every input token (cache included),
    ``output`` every output token (reasoning included)."""

    input: int
    output: int
    cached: int = 0
    cache_write: int = 0
    reasoning: int = 0
    visible: int = 0

    @property
    def anthropic_input(self) -> int:
        """Anthropic's ``input_tokens``: the input that was neither read from nor written to the cache."""
        return self.input - self.cached - self.cache_write


def _texts(value: Any) -> Iterator[str]:
    """Every text in a request's messages, system prompt or input (content parts included)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):
        for item in value:
            yield from _texts(item)
    elif isinstance(value, dict):
        for key in ("content", "text", "input", "system", "messages"):
            if key in value:
                yield from _texts(value[key])


def words(body: dict[str, Any]) -> int:
    return sum(len(text.split()) for key in ("messages", "system", "input") for text in _texts(body.get(key)))


def expected_usage(body: dict[str, Any], *, cached: int = 0, cache_write: int = 0, reasoning: int = 0) -> Usage:
    """The usage the fake reports for a request ``body`` (what a test computes its spend from)."""
    total = PROMPT_BASE + words(body)
    cached = min(cached, total)
    cache_write = min(cache_write, total - cached)
    limit = body.get("max_completion_tokens") or body.get("max_output_tokens") or body.get("max_tokens")
    visible = REPLY_WORDS if not limit else max(1, min(REPLY_WORDS, int(limit) - reasoning))
    return Usage(total, visible + reasoning, cached, cache_write, reasoning, visible)


def _reply(n: int) -> list[str]:
    return [_WORDS[i % len(_WORDS)] + " " for i in range(n)]


class _State:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls: list[dict[str, Any]] = []
        self.failures: list[dict[str, Any]] = []
        self.settings = {"cached": 0, "cache_write": 0, "reasoning": 0}


# --- the provider's answers --------------------------------------------------------------------------


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


def _chat(body: dict[str, Any], u: Usage) -> dict[str, Any]:
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
        "usage": _openai_usage(u),
        "system_fingerprint": "fp_fake",
    }


def _chat_stream(body: dict[str, Any], u: Usage) -> Iterator[tuple[str | None, dict[str, Any] | str]]:
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
    if include:
        yield None, {**base, "choices": [], "usage": _openai_usage(u)}
    yield None, "[DONE]"


def _response(body: dict[str, Any], u: Usage, rid: str, status: str = "completed") -> dict[str, Any]:
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
        if done
        else None,
    }


def _response_stream(body: dict[str, Any], u: Usage) -> Iterator[tuple[str | None, dict[str, Any] | str]]:
    rid = uuid.uuid4().hex[:24]
    seq = iter(range(10**6))
    yield "response.created", {"type": "response.created", "sequence_number": next(seq),
                               "response": _response(body, u, rid, "in_progress")}  # fmt: skip
    for word in _reply(u.visible):
        yield "response.output_text.delta", {
            "type": "response.output_text.delta", "sequence_number": next(seq), "item_id": f"msg_{rid}",
            "output_index": 0, "content_index": 0, "delta": word, "logprobs": [],
        }  # fmt: skip
    yield "response.completed", {"type": "response.completed", "sequence_number": next(seq),
                                 "response": _response(body, u, rid)}  # fmt: skip


def _embeddings(body: dict[str, Any], u: Usage) -> dict[str, Any]:
    inputs = body.get("input")
    items = inputs if isinstance(inputs, list) and inputs and not isinstance(inputs[0], int) else [inputs]
    data = []
    for index, item in enumerate(items):
        vector = [((len(str(item)) + index + d) % 10) / 10 for d in range(EMBEDDING_DIMENSIONS)]
        encoded: Any = vector
        if body.get("encoding_format") == "base64":
            encoded = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
        data.append({"object": "embedding", "index": index, "embedding": encoded})
    usage = {"prompt_tokens": u.input, "total_tokens": u.input}
    return {"object": "list", "data": data, "model": body.get("model", "text-embedding-3-small"), "usage": usage}


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


def _messages(body: dict[str, Any], u: Usage) -> dict[str, Any]:
    return _message(body, u, [{"type": "text", "text": "".join(_reply(u.visible)).strip()}], u.output)


def _messages_stream(body: dict[str, Any], u: Usage) -> Iterator[tuple[str | None, dict[str, Any] | str]]:
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


_ROUTES = {
    "/v1/chat/completions": (_chat, _chat_stream),
    "/v1/responses": (lambda b, u: _response(b, u, uuid.uuid4().hex[:24]), _response_stream),
    "/v1/embeddings": (_embeddings, None),
    "/v1/messages": (_messages, _messages_stream),
}


def _error(path: str, status: int) -> dict[str, Any]:
    kind = "rate_limit_error" if status == 429 else "api_error"
    message = f"fake failure ({status})"
    if path == "/v1/messages":
        return {"type": "error", "error": {"type": kind, "message": message}}
    return {"error": {"message": message, "type": kind, "param": None, "code": None}}


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.verbose:
            super().log_message(format, *args)

    def _send(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        raw = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(raw)

    def _body(self) -> dict[str, Any]:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        parsed = json.loads(raw) if raw else {}
        return parsed if isinstance(parsed, dict) else {}

    def do_GET(self) -> None:
        if self.path.split("?")[0] == "/_calls":
            with self.server.state.lock:
                self._send(200, list(self.server.state.calls))
            return
        self._send(404, {"error": {"message": f"no route {self.path}"}})

    def do_DELETE(self) -> None:
        if self.path == "/_calls":
            with self.server.state.lock:
                self.server.state.calls.clear()
            self._send(200, {"ok": True})
            return
        self._send(404, {"error": {"message": f"no route {self.path}"}})

    def do_POST(self) -> None:
        state, path = self.server.state, self.path.split("?")[0]
        try:
            body = self._body()
        except ValueError:
            self._send(400, {"error": {"message": "body is not JSON", "type": "invalid_request_error"}})
            return
        if path == "/_fail":
            with state.lock:
                state.failures = [body] * int(body.get("count", 1))
            self._send(200, {"ok": True})
            return
        if path == "/_usage":
            with state.lock:
                state.settings.update({k: int(v) for k, v in body.items() if k in state.settings})
            self._send(200, {"ok": True})
            return
        route = _ROUTES.get(path)
        if route is None:
            self._send(404, {"error": {"message": f"no route {path}", "type": "invalid_request_error"}})
            return
        with state.lock:
            failure = state.failures.pop(0) if state.failures else None
            settings = dict(state.settings)
            call = {"path": path, "body": body, "status": 200}
            state.calls.append(call)
        if failure is not None:
            status = int(failure.get("status", 500))
            call["status"] = status
            retry = {"Retry-After": str(int(failure.get("retry_after", 1)))} if status == 429 else {}
            self._send(status, _error(path, status), {**retry, "x-should-retry": "false"})
            return
        usage = expected_usage(body, **settings)
        answer, stream = route
        if body.get("stream") and stream is not None:
            self._stream(stream(body, usage))
        else:
            self._send(200, answer(body, usage))

    def _stream(self, events: Iterator[tuple[str | None, dict[str, Any] | str]]) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        try:
            for event, data in events:
                line = data if isinstance(data, str) else json.dumps(data)
                prefix = f"event: {event}\n" if event else ""
                self.wfile.write(f"{prefix}data: {line}\n\n".encode())
                self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client closed the stream early


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], verbose: bool = False) -> None:
        super().__init__(address, _Handler)
        self.state = _State()
        self.verbose = verbose


class FakeLLM(Served):
    """The fake provider on 127.0.0.1 (``port`` 0: a free one); ``url`` is its root, ``openai_url`` its
    OpenAI base URL (``/v1``)."""

    thread_name = "fake-llm"

    def __init__(self, port: int = 0, *, verbose: bool = False) -> None:
        server = _Server(("127.0.0.1", port), verbose)
        self._server, self._state = server, server.state

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def openai_url(self) -> str:
        return f"{self.url}/v1"

    def calls(self, path: str | None = None) -> list[dict[str, Any]]:
        """The model requests received, oldest first (failed ones too, with their ``status``)."""
        with self._state.lock:
            return [dict(c) for c in self._state.calls if path is None or c["path"] == path]

    def clear(self) -> None:
        with self._state.lock:
            self._state.calls.clear()

    def fail_next(self, status: int = 500, count: int = 1, retry_after: int = 1) -> None:
        """The next ``count`` model requests fail with ``status`` (429 says ``Retry-After``)."""
        with self._state.lock:
            self._state.failures = [{"status": status, "retry_after": retry_after}] * count

    def usage(self, *, cached: int = 0, cache_write: int = 0, reasoning: int = 0) -> None:
        """The cached, cache-write and reasoning tokens every later request reports (capped by its input)."""
        with self._state.lock:
            self._state.settings = {"cached": cached, "cache_write": cache_write, "reasoning": reasoning}

    def expected(self, body: dict[str, Any]) -> Usage:
        """What the fake reports for ``body`` with its current settings."""
        with self._state.lock:
            settings = dict(self._state.settings)
        return expected_usage(body, **settings)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="emulators.fake_llm", description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: a free one)")
    parser.add_argument("--verbose", action="store_true", help="log every request")
    args = parser.parse_args(argv)
    fake = FakeLLM(args.port, verbose=args.verbose)
    return fake.serve_in_foreground("fake model provider (OpenAI, Anthropic)", fake.url)


if __name__ == "__main__":
    sys.exit(main())
