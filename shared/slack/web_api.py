"""The thin Slack adapter the functions post through: post, update, upload, and two failures.

``SlackUnavailable`` means "try again later" (Slack down, rate limited, unreachable);
``SlackRefused`` means retrying will not help (bad channel, bad token, missing scope). The client
is slack_sdk's ``WebClient``, one per process, imported on first use (cold starts stay fast). It
retries once inline on a connection error, a 500/503, or a 429 whose Retry-After is at most
``INLINE_RETRY_AFTER_S`` seconds; a longer Retry-After is handed to the caller as
``SlackUnavailable.retry_after`` instead of being slept through.

Locally ``SLACK_API_URL`` points the client at the fake server of ``emulators/fake_slack.py``; the
token is the ``slack-bot-token`` secret (``SLACK_BOT_TOKEN`` locally). Never log the token.
"""

from __future__ import annotations

import http.client
import logging
import os
import re
import threading
import time
import urllib.error
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

# Refusals that say the bot token itself is bad (one set, which the fleet's health also reads): logged as
# ``slack_failure="auth"``, which Cloud Monitoring alerts on (terraform/monitoring.tf).
from shared.domain.slack_errors import AUTH_ERRORS as AUTH_ERRORS
from shared.platform import logs, settings

if TYPE_CHECKING:
    from slack_sdk import WebClient
    from slack_sdk.web import SlackResponse

SECRET_NAME = "slack-bot-token"
API_URL_ENV = "SLACK_API_URL"
TIMEOUT_S = 10
#: A 429 asking to wait at most this long is retried inline (once); longer waits go to the caller.
INLINE_RETRY_AFTER_S = 5.0
#: Errors Slack answers (sometimes with HTTP 200) that say "not now" rather than "never".
TRANSIENT_ERRORS = frozenset({"ratelimited", "internal_error", "fatal_error", "service_unavailable", "request_timeout"})
#: What Slack accepts where only a channel id will do (files.completeUploadExternal).
_CHANNEL_ID = re.compile(r"^[CGDZ][A-Z0-9]{8,}$")


class SlackUnavailable(Exception):
    """Slack is down, rate limited (after the client's own retry) or unreachable: retry later."""

    def __init__(self, message: str = "slack unavailable", retry_after: float | None = None) -> None:
        super().__init__(message)
        #: Seconds Slack asked us to wait (a 429's Retry-After), when it said.
        self.retry_after = retry_after


class SlackRefused(Exception):
    """Slack refused for good (channel_not_found, invalid_auth, not_in_channel, ...): retrying will not help."""

    def __init__(self, error: str) -> None:
        super().__init__(error)
        self.error = error


@dataclass(frozen=True)
class Posted:
    """Where a message went: the channel id (even when posted by name) and its ``ts``."""

    channel: str
    ts: str


log = logs.get_logger("slack.web_api")
_lock = threading.Lock()
_client: WebClient | None = None
#: Channel name (without '#') -> id, learnt from Slack's answers.
_channel_ids: dict[str, str] = {}
#: Calls made and how they ended ("calls", "ok", "unavailable", "refused"), for log lines.
counters: Counter[str] = Counter()


def stats() -> dict[str, int]:
    """A copy of ``counters``."""
    with _lock:
        return dict(counters)


def reset() -> None:
    """Forget the client, the channel ids and the counters (tests; a rotated token)."""
    global _client
    with _lock:
        _client = None
        _channel_ids.clear()
        _emails.clear()
        _by_email.clear()
        counters.clear()


def client() -> WebClient:
    """This process's WebClient (built on first use); SlackRefused("not_configured") without a token."""
    global _client
    with _lock:
        if _client is not None:
            return _client
        token = settings.secret(SECRET_NAME)
        if not token or not token.strip():
            raise SlackRefused("not_configured")
        # lazy: slack_sdk is heavy; the client is built on first use (cold starts stay fast)
        from slack_sdk import WebClient
        from slack_sdk.http_retry.builtin_handlers import ConnectionErrorRetryHandler, ServerErrorRetryHandler

        kwargs: dict[str, Any] = {}
        base_url = os.environ.get(API_URL_ENV)
        if base_url:
            kwargs["base_url"] = base_url if base_url.endswith("/") else base_url + "/"
        _client = WebClient(
            token=token,
            timeout=TIMEOUT_S,
            retry_handlers=[
                ConnectionErrorRetryHandler(max_retry_count=1),
                _short_rate_limit_handler(),
                ServerErrorRetryHandler(max_retry_count=1),
            ],
            **kwargs,
        )
        return _client


def _short_rate_limit_handler() -> Any:
    """slack_sdk's RateLimitErrorRetryHandler sleeps for whatever Retry-After says; this one retries
    (once) only when that is at most INLINE_RETRY_AFTER_S, so a function never sleeps long."""
    # lazy: slack_sdk, as in client()
    from slack_sdk.http_retry.builtin_handlers import RateLimitErrorRetryHandler
    from slack_sdk.http_retry.request import HttpRequest
    from slack_sdk.http_retry.response import HttpResponse
    from slack_sdk.http_retry.state import RetryState

    class ShortRateLimitRetryHandler(RateLimitErrorRetryHandler):
        def _can_retry(
            self,
            *,
            state: RetryState,
            request: HttpRequest,
            response: HttpResponse | None = None,
            error: Exception | None = None,
        ) -> bool:
            if response is None or response.status_code != 429:
                return False
            wait = _retry_after(response.headers)
            return wait is None or wait <= INLINE_RETRY_AFTER_S

    return ShortRateLimitRetryHandler(max_retry_count=1)


def _retry_after(headers: Any) -> float | None:
    """Retry-After (seconds) from a header mapping whose values are strings or lists of strings."""
    for key, value in (headers or {}).items():
        if key.lower() == "retry-after":
            if isinstance(value, list):
                value = value[0] if value else None
            try:
                return float(value)
            except (TypeError, ValueError):
                return None
    return None


def _call(method: str, do: Callable[[WebClient], SlackResponse]) -> SlackResponse:
    """Run one Web API call (or files_upload_v2's three) and map every failure to ours."""
    # lazy: slack_sdk, as in client()
    from slack_sdk.errors import SlackApiError, SlackRequestError

    try:
        web = client()
    except SlackRefused as exc:
        _failed(method, exc)  # no token: the call is not made, but it failed all the same
        raise
    with _lock:
        counters["calls"] += 1
    try:
        response = do(web)
    except SlackApiError as exc:
        raise _count(method, _from_api_error(method, exc)) from exc
    except SlackRequestError as exc:
        # files_upload_v2 raises it when the upload URL answered something other than 200.
        raise _count(method, SlackUnavailable(f"{method}: {exc}")) from exc
    except (OSError, http.client.HTTPException) as exc:
        # urllib.error.URLError and HTTPError are OSErrors, as are timeouts and refused connections.
        raise _count(method, _from_transport_error(method, exc)) from exc
    with _lock:
        counters["ok"] += 1
    return response


def _count(method: str, exc: SlackUnavailable | SlackRefused) -> SlackUnavailable | SlackRefused:
    with _lock:
        counters["unavailable" if isinstance(exc, SlackUnavailable) else "refused"] += 1
    _failed(method, exc)
    return exc


def _failed(method: str, exc: SlackUnavailable | SlackRefused) -> None:
    """One log line per failed call, whoever made it (the fields of Cloud Monitoring's Slack failures
    metric, terraform/monitoring.tf): the method, the kind of failure (``unavailable``, ``refused``, or
    ``auth`` for a refusal of the token itself) and Slack's error code (``unavailable`` when Slack gave none)."""
    if isinstance(exc, SlackRefused):
        failure, error, level = ("auth" if exc.error in AUTH_ERRORS else "refused"), exc.error, logging.ERROR
    else:
        failure, error, level = "unavailable", "unavailable", logging.WARNING
    logs.log(log, f"Slack {method} failed: {exc}", level, slack_method=method, slack_failure=failure, slack_error=error)


def _from_api_error(method: str, exc: Any) -> SlackUnavailable | SlackRefused:
    response = exc.response
    status = int(getattr(response, "status_code", 0) or 0)
    data = getattr(response, "data", None)
    error = str(data.get("error") or "") if isinstance(data, dict) else ""
    if status == 429:
        wait = _retry_after(getattr(response, "headers", None))
        return SlackUnavailable(f"{method}: rate limited (retry after {wait}s)", retry_after=wait)
    if status >= 500 or error in TRANSIENT_ERRORS:
        return SlackUnavailable(f"{method}: HTTP {status} {error}".rstrip())
    return SlackRefused(error or f"http_{status}")


def _from_transport_error(method: str, exc: Exception) -> SlackUnavailable | SlackRefused:
    if isinstance(exc, urllib.error.HTTPError):  # only the upload step reaches here with one
        if exc.code == 429:
            wait = _retry_after(dict(exc.headers.items()) if exc.headers else None)
            return SlackUnavailable(f"{method}: rate limited", retry_after=wait)
        if exc.code >= 500:
            return SlackUnavailable(f"{method}: HTTP {exc.code}")
        return SlackRefused(f"http_{exc.code}")
    return SlackUnavailable(f"{method}: {type(exc).__name__}: {exc}")


def _name(channel: str) -> str | None:
    """The key of ``_channel_ids`` for a channel given by ``#name`` or ``name``; None for an id."""
    channel = channel.strip()
    return None if _CHANNEL_ID.match(channel) else channel.lstrip("#").lower()


def _remember(channel: str, channel_id: str) -> None:
    name = _name(channel)
    if name is not None:
        with _lock:
            _channel_ids[name] = channel_id


def channel_id(channel: str) -> str:
    """The id of a channel given by id, ``#name`` or ``name``: from Slack's earlier answers, else
    from conversations.list (public channels; needs the ``channels:read`` scope).

    Raises SlackRefused("channel_not_found") when no public channel has that name.
    """
    name = _name(channel)
    if name is None:
        return channel.strip()
    with _lock:
        known = _channel_ids.get(name)
    if known:
        return known
    cursor: str | None = None
    while True:

        def page_of(web: WebClient, cursor: str | None = cursor) -> SlackResponse:
            return web.conversations_list(types="public_channel", exclude_archived=True, limit=1000, cursor=cursor)

        page = _call("conversations.list", page_of)
        for item in page.get("channels") or []:
            _remember(str(item.get("name", "")), str(item.get("id", "")))
        with _lock:
            known = _channel_ids.get(name)
        if known:
            return known
        cursor = (page.get("response_metadata") or {}).get("next_cursor") or None
        if not cursor:
            raise SlackRefused("channel_not_found")


def post(channel: str, text: str, blocks: list[dict[str, Any]] | None = None, thread_ts: str | None = None) -> Posted:
    """Post a message (``text`` is the notification fallback when ``blocks`` are given)."""
    kwargs: dict[str, Any] = {"channel": channel, "text": text}
    if blocks:
        kwargs["blocks"] = blocks
    if thread_ts:
        kwargs["thread_ts"] = thread_ts
    response = _call("chat.postMessage", lambda web: web.chat_postMessage(**kwargs))
    posted = Posted(channel=str(response["channel"]), ts=str(response["ts"]))
    _remember(channel, posted.channel)
    return posted


def update(channel: str, ts: str, text: str, blocks: list[dict[str, Any]] | None = None) -> None:
    """Replace a message posted earlier (``channel`` as returned in ``Posted``, or its name)."""
    cid = channel_id(channel)
    kwargs: dict[str, Any] = {"channel": cid, "ts": ts, "text": text}
    if blocks is not None:
        kwargs["blocks"] = blocks
    _call("chat.update", lambda web: web.chat_update(**kwargs))


_emails: dict[str, str | None] = {}


def user_email(user: str) -> str | None:
    """A user's e-mail address (``users.info``; needs the users:read.email scope), cached per process."""
    with _lock:
        if user in _emails:
            return _emails[user]
    response = _call("users.info", lambda web: web.users_info(user=user))
    email = ((response.get("user") or {}).get("profile") or {}).get("email")
    with _lock:
        if len(_emails) > 10_000:
            _emails.clear()
        _emails[user] = str(email).lower() if email else None
    return _emails[user]


#: e-mail -> (Slack user id or None, when the answer was cached: time.monotonic()).
_by_email: dict[str, tuple[str | None, float]] = {}
#: How long "no Slack user has this address" is believed (the person may join Slack later).
MISS_TTL_S = 3600.0


def user_by_email(email: str) -> str | None:
    """The Slack user id of an e-mail address (``users.lookupByEmail``; needs users:read.email), None when
    no user has it (``users_not_found``); cached per process, a miss for :data:`MISS_TTL_S`."""
    key = email.strip().lower()
    with _lock:
        cached = _by_email.get(key)
        if cached is not None and (cached[0] is not None or time.monotonic() - cached[1] < MISS_TTL_S):
            return cached[0]
    try:
        response = _call("users.lookupByEmail", lambda web: web.users_lookupByEmail(email=key))
        found = (response.get("user") or {}).get("id")
    except SlackRefused as exc:
        if exc.error != "users_not_found":
            raise
        found = None
    with _lock:
        if len(_by_email) > 10_000:
            _by_email.clear()
        _by_email[key] = (str(found) if found else None, time.monotonic())
    return str(found) if found else None


def ephemeral(channel: str, user: str, text: str) -> None:
    """A message only ``user`` sees, in ``channel`` (a clicked button's answer to the clicker)."""
    _call("chat.postEphemeral", lambda web: web.chat_postEphemeral(channel=channel, user=user, text=text))


def upload(
    channel: str,
    content: bytes,
    filename: str,
    title: str,
    comment: str | None = None,
    thread_ts: str | None = None,
) -> None:
    """Share a file in a channel (files_upload_v2: get an upload URL, upload, complete)."""
    cid = channel_id(channel)
    _call(
        "files.upload",
        lambda web: web.files_upload_v2(
            channel=cid,
            content=content,
            filename=filename,
            title=title,
            initial_comment=comment,
            thread_ts=thread_ts,
        ),
    )
