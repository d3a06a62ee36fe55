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
  at most the input (cached + cache writes) and 0 by default; told ``omit``, the OpenAI answers carry no
  usage (and a Responses stream ends without ``response.completed``).

OpenAI reports ``prompt_tokens`` (total, ``prompt_tokens_details.cached_tokens`` part of it) and
``completion_tokens`` (``completion_tokens_details.reasoning_tokens`` part of it). Anthropic reports
``input_tokens`` *without* the cache: total = ``input_tokens + cache_read_input_tokens +
cache_creation_input_tokens``; its ``output_tokens`` include thinking. :func:`expected_usage` gives them.

This module is the server (routing, control endpoints, :class:`FakeLLM`, the CLI); the answers are in
emulators/fake_llm_openai.py and emulators/fake_llm_anthropic.py, the token counts in
emulators/fake_llm_usage.py.

Control endpoints (no key needed):

    GET    /_calls                  every model request, oldest first: {"path", "body", "status"}
    DELETE /_calls                  forget them
    POST   /_fail {"status": 500, "count": 1, "retry_after": 1}
                                    the next ``count`` model requests fail (429 with Retry-After)
    POST   /_usage {"cached": 0, "cache_write": 0, "reasoning": 0, "omit": 0}

In-process: ``with FakeLLM() as llm: ... llm.url ... llm.calls()``.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from emulators.fake_llm_anthropic import messages, messages_stream
from emulators.fake_llm_openai import chat, chat_stream, embeddings, response, response_stream
from emulators.fake_llm_usage import EMBEDDING_DIMENSIONS, PROMPT_BASE, REPLY_WORDS, Event, Usage, expected_usage, words
from emulators.serving import Served

#: A streamed answer: a request's body and usage to its SSE events.
Answer = Callable[[dict[str, Any], Usage], Iterator[Event]]

__all__ = ["EMBEDDING_DIMENSIONS", "PROMPT_BASE", "REPLY_WORDS", "FakeLLM", "Usage", "expected_usage", "main", "words"]


class _State:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls: list[dict[str, Any]] = []
        self.failures: list[dict[str, Any]] = []
        self.settings = {"cached": 0, "cache_write": 0, "reasoning": 0, "omit": 0}


_ROUTES: dict[str, tuple[Callable[[dict[str, Any], Usage], dict[str, Any]], Answer | None]] = {
    "/v1/chat/completions": (chat, chat_stream),
    "/v1/responses": (lambda b, u: response(b, u, uuid.uuid4().hex[:24]), response_stream),
    "/v1/embeddings": (embeddings, None),
    "/v1/messages": (messages, messages_stream),
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
    #: Headers and body leave as separate writes: without TCP_NODELAY, Nagle and delayed ACKs add ~40 ms.
    disable_nagle_algorithm = True

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

    def _stream(self, events: Iterator[Event]) -> None:
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

    def usage(self, *, cached: int = 0, cache_write: int = 0, reasoning: int = 0, omit: bool = False) -> None:
        """The cached, cache-write and reasoning tokens every later request reports (capped by its input);
        ``omit``: the OpenAI answers report no usage at all."""
        with self._state.lock:
            self._state.settings = {"cached": cached, "cache_write": cache_write, "reasoning": reasoning,
                                    "omit": int(omit)}  # fmt: skip

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
