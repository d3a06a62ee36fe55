"""A fake Slack Web API server for the local stack and tests: it records every call instead of posting.

    python -m emulators.fake_slack --port 8765 [--channel fleet-alerts ...]

Point ``slack_sdk.WebClient(base_url="http://127.0.0.1:8765/api/")`` at it (the functions read
``SLACK_API_URL``). It serves the Web API methods the app uses at ``/api/<method>``, form-encoded
or JSON, with ``Authorization: Bearer xoxb-...``: ``auth.test``, ``chat.postMessage``,
``chat.update``, ``chat.postEphemeral``, ``users.info`` (every user's e-mail is
``<user id, lower case>@fleet.test``), ``users.lookupByEmail`` (the reverse; any other address is
``users_not_found``), ``files.getUploadURLExternal`` (its ``upload_url`` is
``/_upload/<file_id>`` on this server), ``files.completeUploadExternal`` and ``conversations.list``.
As Slack does, it answers with channel ids (``C`` + 10 characters, stable per name) when given
names, and ``files.completeUploadExternal`` accepts only ids (Slack refuses names there).

Control endpoints (no token needed), at the root and under the Web API's base URL alike
(``GET {SLACK_API_URL}/_calls``):

    GET    /_calls[?method=chat.postMessage]  every recorded call, oldest first (token removed)
    DELETE /_calls                            forget them
    POST   /_fail {"status": 429, "retry_after": 2, "count": 3}
                                              the next 3 Web API calls fail with 429 + Retry-After;
                                              500/503 fail with an error body; {"error": "x"} fails
                                              with HTTP 200 and ``ok: false``; "method" limits it to
                                              one method; {"count": 0} clears

In-process, for unit tests: ``with FakeSlack() as slack: ... slack.url ... slack.calls()``.
``render(calls)`` turns recorded calls into the lines a person would see in Slack.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import re
import sys
import threading
import time
import traceback
import urllib.parse
import urllib.request
from collections.abc import Iterable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from emulators.serving import Served

#: Channel ids Slack accepts where only an id will do (files.completeUploadExternal).
CHANNEL_ID = re.compile(r"^[CGDZ][A-Z0-9]{8,}$")
DEFAULT_CHANNELS = ("fleet-alerts", "fleet-oncall", "fleet-reports", "fleet-approvals")
BOT_USER_ID = "U0FLEETBOT"
BOT_ID = "B0FLEETBOT"
TEAM_ID = "T0FLEETLOC"
#: Errors of a 5xx answer, as Slack's own error codes.
_SERVER_ERRORS = {500: "internal_error", 502: "bad_gateway", 503: "service_unavailable", 504: "request_timeout"}


def channel_id(name: str) -> str:
    """The stable id the fake gives a channel name (``#fleet-alerts`` and ``fleet-alerts`` alike)."""
    digest = hashlib.sha1(_normalise(name).encode()).digest()
    return "C" + base64.b32encode(digest).decode()[:10]


def _normalise(name: str) -> str:
    return name.strip().lstrip("#").lower()


class SlackError(Exception):
    """A Web API call answered with ``{"ok": false, "error": ...}``."""

    def __init__(self, error: str, status: int = 200) -> None:
        super().__init__(error)
        self.error = error
        self.status = status


class _State:
    """Everything the fake knows; every access holds ``lock``."""

    def __init__(self, token: str | None, channels: Iterable[str]) -> None:
        self.lock = threading.Lock()
        self.token = token
        self.names: dict[str, str] = {}  # id -> name
        for name in channels:
            self.channel(name)
        self.messages: dict[tuple[str, str], dict[str, Any]] = {}
        self.files: dict[str, dict[str, Any]] = {}
        self.calls: list[dict[str, Any]] = []
        self.failure: dict[str, Any] = {"count": 0}
        self._last_ts_us = 0
        self._file_seq = 0

    # Callers hold the lock.
    def channel(self, name: str) -> str:
        cid = channel_id(name)
        self.names.setdefault(cid, _normalise(name))
        return cid

    def resolve(self, channel: Any, *, ids_only: bool = False) -> str:
        """A known channel's id from a name or an id; names are created on first use, as a workspace
        where every channel the app is told to use exists."""
        if not isinstance(channel, str) or not channel.strip():
            raise SlackError("channel_not_found")
        channel = channel.strip()
        if CHANNEL_ID.match(channel):
            if channel not in self.names:
                raise SlackError("channel_not_found")
            return channel
        if ids_only:
            raise SlackError("invalid_arguments")
        return self.channel(channel)

    def next_ts(self) -> str:
        us = max(int(time.time() * 1_000_000), self._last_ts_us + 1)
        self._last_ts_us = us
        return f"{us // 1_000_000}.{us % 1_000_000:06d}"

    def next_file_id(self) -> str:
        self._file_seq += 1
        return f"F{self._file_seq:010d}"

    def record(self, method: str, params: dict[str, Any], status: int, response: Any, **extra: Any) -> None:
        call = {
            "seq": len(self.calls) + 1,
            "time": time.time(),
            "method": method,
            "params": params,
            "status": status,
            "response": response,
            "failed": bool(extra.pop("failed", False)),
        }
        call.update(extra)
        self.calls.append(call)

    def take_failure(self, method: str) -> dict[str, Any] | None:
        plan = self.failure
        if plan.get("count", 0) <= 0 or (plan.get("method") and plan["method"] != method):
            return None
        plan["count"] -= 1
        return dict(plan)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    # --- plumbing -------------------------------------------------------------------------------
    def log_message(self, format: str, *args: Any) -> None:
        if self.server.verbose:
            sys.stderr.write("fake-slack: " + (format % args) + "\n")

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send_response(status)
        ctype = "text/plain; charset=utf-8" if isinstance(payload, bytes) else "application/json; charset=utf-8"
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def _route(self, verb: str) -> None:
        parsed = urllib.parse.urlsplit(self.path)
        path = parsed.path
        query = dict(urllib.parse.parse_qsl(parsed.query))
        control = re.fullmatch(r"/api/+(_calls|_fail)", path)
        if control:  # also under the Web API's base URL: `GET {SLACK_API_URL}/_calls` works as written
            path = f"/{control.group(1)}"
        if path.startswith("/api/"):
            self._api(path[len("/api/") :], query)
        elif path.startswith("/_upload/") and verb == "POST":
            self._upload(path[len("/_upload/") :])
        elif path == "/_calls" and verb == "GET":
            with self.server.state.lock:
                calls = [c for c in self.server.state.calls if c["method"] == query.get("method", c["method"])]
                self._send(200, calls)
        elif path == "/_calls" and verb == "DELETE":
            self._body()
            with self.server.state.lock:
                self.server.state.calls.clear()
            self._send(200, {"ok": True})
        elif path == "/_fail" and verb == "POST":
            self._set_failure()
        elif path == "/" and verb == "GET":
            self._send(200, {"ok": True, "service": "fake-slack"})
        else:
            self._body()
            self._send(404, {"ok": False, "error": "not_found"})

    def do_GET(self) -> None:
        self._route("GET")

    def do_POST(self) -> None:
        self._route("POST")

    def do_DELETE(self) -> None:
        self._route("DELETE")

    # --- control --------------------------------------------------------------------------------
    def _set_failure(self) -> None:
        try:
            plan = json.loads(self._body() or b"{}")
            count = int(plan.get("count", 1))
            status = int(plan.get("status", 200 if plan.get("error") else 503))
        except (ValueError, TypeError, AttributeError):
            self._send(400, {"ok": False, "error": "invalid_json"})
            return
        failure = {
            "count": max(count, 0),
            "status": status,
            "retry_after": plan.get("retry_after", 1),
            "error": plan.get("error"),
            "method": plan.get("method"),
        }
        with self.server.state.lock:
            self.server.state.failure = failure
        self._send(200, {"ok": True, "failure": failure})

    # --- Web API --------------------------------------------------------------------------------
    def _params(self, query: dict[str, str]) -> dict[str, Any]:
        params: dict[str, Any] = dict(query)
        raw = self._body()
        ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if raw and ctype == "application/json":
            try:
                body = json.loads(raw)
            except ValueError:
                body = None
            if not isinstance(body, dict):
                raise SlackError("invalid_json")
            params.update(body)
        elif raw:
            params.update(urllib.parse.parse_qsl(raw.decode("utf-8", "replace"), keep_blank_values=True))
        # Form-encoded calls carry structured arguments as JSON strings.
        for key in ("blocks", "attachments", "files"):
            if isinstance(params.get(key), str):
                try:
                    params[key] = json.loads(params[key])
                except ValueError as exc:
                    raise SlackError(f"invalid_{key}") from exc
        return params

    def _token(self, params: dict[str, Any]) -> str | None:
        auth = self.headers.get("Authorization") or ""
        if auth.lower().startswith("bearer "):
            return auth[7:].strip()
        token = params.get("token")
        return str(token) if token else None

    def _api(self, method: str, query: dict[str, str]) -> None:
        state = self.server.state
        parse_error: SlackError | None = None
        try:
            params = self._params(query)
        except SlackError as exc:
            params, parse_error = {}, exc
        token = self._token(params)
        params.pop("token", None)
        with state.lock:
            failure = state.take_failure(method)
            if failure is not None:
                status, headers, body = _failure_response(failure)
                state.record(method, params, status, body, failed=True)
                self._send(status, body, headers)
                return
            try:
                if parse_error is not None:
                    raise parse_error
                if not token:
                    raise SlackError("not_authed")
                if not token.startswith("xoxb-") or (state.token is not None and token != state.token):
                    raise SlackError("invalid_auth")
                handler = _METHODS.get(method)
                if handler is None:
                    raise SlackError("unknown_method", 404)
                response, extra = handler(state, params, self._base_url())
                response = {"ok": True, **response}
                status = 200
            except SlackError as exc:
                status, response, extra = exc.status, {"ok": False, "error": exc.error}, {}
            except Exception as exc:  # a bug in the fake: answer as Slack would, and say so
                traceback.print_exc()
                status, response, extra = 500, {"ok": False, "error": "internal_error"}, {"exception": repr(exc)}
            state.record(method, params, status, response, **extra)
        self._send(status, response)

    def _base_url(self) -> str:
        host = self.headers.get("Host") or f"127.0.0.1:{self.server.server_address[1]}"
        return f"http://{host}"

    def _upload(self, file_id: str) -> None:
        raw = self._body()
        state = self.server.state
        ctype = self.headers.get("Content-Type") or ""
        with state.lock:
            entry = state.files.get(file_id)
            params = {"file_id": file_id, "size": len(raw), "content_type": ctype}
            if entry is None:
                state.record("_upload", params, 404, "file_not_found", failed=True)
                self._send(404, b"file_not_found")
                return
            entry.update(uploaded=True, size=len(raw), content_type=ctype)
            state.record("_upload", params, 200, f"OK - {len(raw)}", filename=entry["filename"])
        self._send(200, f"OK - {len(raw)}".encode())


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], state: _State, verbose: bool = False) -> None:
        super().__init__(address, _Handler)
        self.state = state
        self.verbose = verbose


def _failure_response(failure: dict[str, Any]) -> tuple[int, dict[str, str], dict[str, Any]]:
    status = int(failure["status"])
    if status == 429:
        retry_after = str(int(float(failure.get("retry_after") or 1)))
        return 429, {"Retry-After": retry_after}, {"ok": False, "error": "ratelimited"}
    if status >= 400:
        error = failure.get("error") or _SERVER_ERRORS.get(status, "fake_failure")
        return status, {}, {"ok": False, "error": error}
    return 200, {}, {"ok": False, "error": failure.get("error") or "fake_failure"}


# --- the Web API methods: (state, params, base_url) -> (response fields, extra call fields) ---------


def _require(params: dict[str, Any], *names: str) -> None:
    for name in names:
        if params.get(name) in (None, ""):
            raise SlackError("invalid_arguments")


def _require_content(params: dict[str, Any]) -> None:
    """A message needs a text, blocks or attachments."""
    if not params.get("text") and not params.get("blocks") and not params.get("attachments"):
        raise SlackError("no_text")


def _auth_test(state: _State, params: dict[str, Any], base: str) -> tuple[dict[str, Any], dict[str, Any]]:
    return {
        "url": "https://fleet-local.slack.com/",
        "team": "Fleet (local fake)",
        "user": "fleet-bot",
        "team_id": TEAM_ID,
        "user_id": BOT_USER_ID,
        "bot_id": BOT_ID,
        "is_enterprise_install": False,
    }, {}


def _message(params: dict[str, Any], ts: str) -> dict[str, Any]:
    message: dict[str, Any] = {
        "type": "message",
        "user": BOT_USER_ID,
        "bot_id": BOT_ID,
        "text": params.get("text") or "",
        "ts": ts,
    }
    if params.get("blocks"):
        message["blocks"] = params["blocks"]
    if params.get("thread_ts"):
        message["thread_ts"] = str(params["thread_ts"])
    return message


def _post_message(state: _State, params: dict[str, Any], base: str) -> tuple[dict[str, Any], dict[str, Any]]:
    cid = state.resolve(params.get("channel"))
    _require_content(params)
    ts = state.next_ts()
    message = _message(params, ts)
    state.messages[(cid, ts)] = message
    return {"channel": cid, "ts": ts, "message": message}, {"channel": cid, "channel_name": state.names[cid]}


def _update(state: _State, params: dict[str, Any], base: str) -> tuple[dict[str, Any], dict[str, Any]]:
    cid = state.resolve(params.get("channel"))
    ts = str(params.get("ts") or "")
    old = state.messages.get((cid, ts))
    if old is None:
        raise SlackError("message_not_found")
    _require_content(params)
    message = _message(params, ts)
    if "blocks" not in params and old.get("blocks"):
        message["blocks"] = old["blocks"]  # as Slack: without `blocks`, the previous ones are kept
    if old.get("thread_ts"):
        message["thread_ts"] = old["thread_ts"]
    state.messages[(cid, ts)] = message
    response = {"channel": cid, "ts": ts, "text": message["text"], "message": message}
    extra = {"channel": cid, "channel_name": state.names[cid], "thread_ts": old.get("thread_ts")}
    return response, extra


def _post_ephemeral(state: _State, params: dict[str, Any], base: str) -> tuple[dict[str, Any], dict[str, Any]]:
    cid = state.resolve(params.get("channel"))
    _require(params, "user")
    _require_content(params)
    return {"message_ts": state.next_ts()}, {"channel": cid, "channel_name": state.names[cid]}


def _get_upload_url(state: _State, params: dict[str, Any], base: str) -> tuple[dict[str, Any], dict[str, Any]]:
    _require(params, "filename", "length")
    try:
        length = int(params["length"])
    except (TypeError, ValueError) as exc:
        raise SlackError("invalid_arguments") from exc
    file_id = state.next_file_id()
    state.files[file_id] = {"filename": str(params["filename"]), "length": length, "uploaded": False}
    return {"upload_url": f"{base}/_upload/{file_id}", "file_id": file_id}, {}


def _complete_upload(state: _State, params: dict[str, Any], base: str) -> tuple[dict[str, Any], dict[str, Any]]:
    files = params.get("files")
    if not isinstance(files, list) or not files:
        raise SlackError("invalid_arguments")
    cid = state.resolve(params["channel_id"], ids_only=True) if params.get("channel_id") else None
    if params.get("channels"):
        raise SlackError("invalid_arguments")  # the fake supports the one-channel form only
    thread_ts = str(params["thread_ts"]) if params.get("thread_ts") else None
    if thread_ts and (cid is None or (cid, thread_ts) not in state.messages):
        raise SlackError("invalid_thread_ts")
    shared = []
    for item in files:
        entry = state.files.get(str(item.get("id"))) if isinstance(item, dict) else None
        if entry is None or not entry["uploaded"]:
            raise SlackError("file_not_found")
        shared.append(
            {
                "id": item["id"],
                "name": entry["filename"],
                "title": item.get("title") or entry["filename"],
                "size": entry["size"],
                "mimetype": entry["content_type"],
                "channels": [cid] if cid else [],
            }
        )
    extra = {
        "channel": cid,
        "channel_name": state.names.get(cid) if cid else None,
        "thread_ts": thread_ts,
        "initial_comment": params.get("initial_comment"),
    }
    return {"files": shared}, extra


def _conversations_list(state: _State, params: dict[str, Any], base: str) -> tuple[dict[str, Any], dict[str, Any]]:
    channels = sorted(state.names.items(), key=lambda item: item[1])
    try:
        start = int(params.get("cursor") or 0)
        limit = max(1, min(int(params.get("limit") or 100), 1000))
    except ValueError as exc:
        raise SlackError("invalid_cursor") from exc
    page = channels[start : start + limit]
    more = start + limit < len(channels)
    return {
        "channels": [
            {"id": cid, "name": name, "is_channel": True, "is_private": False, "is_archived": False, "is_member": True}
            for cid, name in page
        ],
        "response_metadata": {"next_cursor": str(start + limit) if more else ""},
    }, {}


#: The e-mail address the fake gives every user (Slack's ``users.info`` with users:read.email).
USER_EMAIL_DOMAIN = "fleet.test"


def user_email(user_id: str) -> str:
    return f"{user_id.lower()}@{USER_EMAIL_DOMAIN}"


def _users_info(state: _State, params: dict[str, Any], base: str) -> tuple[dict[str, Any], dict[str, Any]]:
    user = str(params.get("user") or "")
    if not re.fullmatch(r"[UW][A-Z0-9]{2,20}", user):
        raise SlackError("user_not_found")
    profile = {"email": user_email(user), "real_name": user.lower(), "display_name": user.lower()}
    return {"user": {"id": user, "team_id": TEAM_ID, "name": user.lower(), "profile": profile}}, {}


def _users_lookup_by_email(state: _State, params: dict[str, Any], base: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The inverse of ``users.info``'s address: ``<user id, lower case>@fleet.test`` is that user; any
    other address is ``users_not_found``."""
    email = str(params.get("email") or "").lower()
    found = re.fullmatch(rf"([uw][a-z0-9]{{2,20}})@{re.escape(USER_EMAIL_DOMAIN)}", email)
    if found is None:
        raise SlackError("users_not_found")
    user = found.group(1).upper()
    profile = {"email": user_email(user), "real_name": user.lower(), "display_name": user.lower()}
    return {"user": {"id": user, "team_id": TEAM_ID, "name": user.lower(), "profile": profile}}, {}


_METHODS = {
    "auth.test": _auth_test,
    "users.info": _users_info,
    "users.lookupByEmail": _users_lookup_by_email,
    "chat.postMessage": _post_message,
    "chat.update": _update,
    "chat.postEphemeral": _post_ephemeral,
    "files.getUploadURLExternal": _get_upload_url,
    "files.completeUploadExternal": _complete_upload,
    "conversations.list": _conversations_list,
}


class FakeSlack(Served):
    """The fake in this process, on a free port (or ``port``): for unit tests.

    ``token`` (optional) is the one bot token it accepts; by default any ``xoxb-`` token.
    """

    def __init__(
        self,
        port: int = 0,
        *,
        token: str | None = None,
        channels: Sequence[str] = DEFAULT_CHANNELS,
        verbose: bool = False,
    ) -> None:
        self.state = _State(token, channels)
        self._server = _Server(("127.0.0.1", port), self.state, verbose=verbose)
        self._thread = None
        self.thread_name = "fake-slack"

    @property
    def url(self) -> str:
        """The base URL for ``WebClient(base_url=...)`` and ``SLACK_API_URL``."""
        return f"{self.root}/api/"

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def calls(self, method: str | None = None) -> list[dict[str, Any]]:
        with self.state.lock:
            return [json.loads(json.dumps(c)) for c in self.state.calls if method is None or c["method"] == method]

    def clear(self) -> None:
        with self.state.lock:
            self.state.calls.clear()

    def fail(
        self,
        status: int = 503,
        count: int = 1,
        retry_after: float = 1,
        error: str | None = None,
        method: str | None = None,
    ) -> None:
        with self.state.lock:
            self.state.failure = {
                "count": count,
                "status": status,
                "retry_after": retry_after,
                "error": error,
                "method": method,
            }


# --- a running fake, over HTTP (the stack's fake-slack process) --------------------------------------


def _root(url: str) -> str:
    """The server root from its root or its ``.../api/`` URL (``SLACK_API_URL``)."""
    url = url.rstrip("/")
    return url[: -len("/api")] if url.endswith("/api") else url


def get_calls(url: str, method: str | None = None, timeout: float = 10) -> list[dict[str, Any]]:
    """The calls a running fake recorded; ``url`` is its root or its ``SLACK_API_URL``."""
    query = "?" + urllib.parse.urlencode({"method": method}) if method else ""
    with urllib.request.urlopen(f"{_root(url)}/_calls{query}", timeout=timeout) as resp:
        calls: list[dict[str, Any]] = json.loads(resp.read())
    return calls


def clear_calls(url: str, timeout: float = 10) -> None:
    request = urllib.request.Request(f"{_root(url)}/_calls", method="DELETE")
    with urllib.request.urlopen(request, timeout=timeout):
        pass


def fail_next(url: str, status: int = 503, count: int = 1, retry_after: float = 1, timeout: float = 10) -> None:
    """Make the next ``count`` Web API calls of a running fake fail with ``status``."""
    body = json.dumps({"status": status, "count": count, "retry_after": retry_after}).encode()
    request = urllib.request.Request(
        f"{_root(url)}/_fail", data=body, method="POST", headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=timeout):
        pass


# --- what a person would see ------------------------------------------------------------------------

_RENDERED = ("chat.postMessage", "chat.update", "chat.postEphemeral", "files.completeUploadExternal")
MAX_LINE = 220


def _flatten(value: Any) -> list[str]:
    """Every piece of text in a block tree (section text and fields, headers, context, buttons)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [text for item in value for text in _flatten(item)]
    if not isinstance(value, dict):
        return []
    kind = value.get("type")
    if kind in ("plain_text", "mrkdwn") and isinstance(value.get("text"), str):
        return [value["text"]]
    if kind == "button":
        return [f"[{' '.join(_flatten(value.get('text')))}]"]
    if kind == "image":
        return [f"(image: {value.get('alt_text', '')})"]
    if kind == "divider":
        return ["--"]
    texts: list[str] = []
    for key in ("text", "fields", "elements", "accessory"):
        if key in value and not (kind == "section" and key == "accessory" and value[key].get("type") == "image"):
            texts.extend(_flatten(value[key]))
    return texts


def _one_line(text: str) -> str:
    line = " / ".join(part.strip() for part in text.splitlines() if part.strip())
    return line if len(line) <= MAX_LINE else line[: MAX_LINE - 1] + "…"


def _size(n: int) -> str:
    return f"{n} B" if n < 1024 else f"{n / 1024:.1f} KB"


def render(calls: Iterable[dict[str, Any]]) -> list[str]:
    """One short line per message, update and file the fake accepted, as Slack would show them.

    ``#channel text`` (the blocks' texts when there are blocks), ``(edited)`` for updates, thread
    replies indented under ``↳``; failed calls are left out.
    """
    lines: list[str] = []
    for call in calls:
        method = call.get("method")
        response = call.get("response")
        if method not in _RENDERED or call.get("failed") or not isinstance(response, dict) or not response.get("ok"):
            continue
        params = call.get("params") or {}
        channel = f"#{call['channel_name']}" if call.get("channel_name") else str(call.get("channel"))
        thread_ts = params.get("thread_ts") or call.get("thread_ts")
        indent = "    ↳ " if thread_ts else ""
        if method == "files.completeUploadExternal":
            for item in response.get("files", []):
                text = f"[file {item.get('name')}: {item.get('title')}, {_size(int(item.get('size') or 0))}]"
                comment = call.get("initial_comment")
                lines.append(f"{channel} {indent}{text}" + (f" {_one_line(str(comment))}" if comment else ""))
            continue
        message = response.get("message")
        shown: dict[str, Any] = message if isinstance(message, dict) else params
        blocks = shown.get("blocks")
        text = " | ".join(t for t in _flatten(blocks) if t) if blocks else str(shown.get("text") or "")
        text = _one_line(text)
        if method == "chat.update":
            text = f"(edited) {text}"
        elif method == "chat.postEphemeral":
            text = f"(only visible to {params.get('user')}) {text}"
        lines.append(f"{channel} {indent}{text}")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="emulators.fake_slack", description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: a free one)")
    parser.add_argument("--token", help="the one bot token accepted (default: any xoxb- token)")
    parser.add_argument(
        "--channel",
        action="append",
        dest="channels",
        help=f"a channel that exists from the start, listed by conversations.list (default: {DEFAULT_CHANNELS})",
    )
    parser.add_argument("--verbose", action="store_true", help="log every request")
    args = parser.parse_args(argv)
    fake = FakeSlack(args.port, token=args.token, channels=args.channels or DEFAULT_CHANNELS, verbose=args.verbose)
    return fake.serve_in_foreground("fake Slack Web API", fake.url)


if __name__ == "__main__":
    sys.exit(main())
