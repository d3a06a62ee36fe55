"""The Slack app (slack-bolt), served by the ``fleet-slack`` HTTPS function: ``/fleet`` and button clicks.

Built on the first request, never at import: the signing secret and bot token come from Secret
Manager (``slack-signing-secret``, ``slack-bot-token``; environment variables locally), and the
token is handed to Bolt by an ``authorize`` function, so Bolt never calls ``auth.test`` (neither
while building nor on an instance's first request).
``process_before_response=True``: on Cloud Functions nothing runs after the response is sent (Bolt's
lazy listeners are not supported there), so each listener does its short work, then acks; anything
longer is handed to Pub/Sub (shared/services/handoff.py). :func:`handle` verifies every request's signature over
the raw body (401 when missing, wrong, or more than 5 minutes old) before anything parses it, so
Bolt's own check is switched off rather than done twice.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import urllib.parse
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import flask
from werkzeug.exceptions import RequestEntityTooLarge

from shared.domain import approval_messages, notices
from shared.platform import logs, settings
from shared.slack import buttons, web_api
from shared.store import db

if TYPE_CHECKING:
    from slack_bolt import App
    from slack_bolt.adapter.google_cloud_functions import SlackRequestHandler
    from slack_sdk.signature import SignatureVerifier

log = logs.get_logger("slack.app")

SIGNING_SECRET = "slack-signing-secret"
#: The slash command's name; a second deployment (staging) may register another (``/fleet-staging``).
COMMAND_ENV = "FLEET_SLASH_COMMAND"
MAX_BODY_BYTES = 64 * 1024

_lock = threading.Lock()
_handler: SlackRequestHandler | None = None
_verifier: SignatureVerifier | None = None


def build() -> App:
    """The Bolt app with its listeners; raises RuntimeError when a secret is missing."""
    # lazy: slack_bolt is heavy, and built on the first request only
    from slack_bolt import App

    signing_secret = settings.secret(SIGNING_SECRET)
    if not signing_secret:
        raise RuntimeError(f"the {SIGNING_SECRET} secret is not set")
    token = settings.secret(web_api.SECRET_NAME)
    if not token:
        raise RuntimeError(f"the {web_api.SECRET_NAME} secret is not set")
    # lazy: slack_bolt, as above
    from slack_bolt.authorization import AuthorizeResult

    def authorize(enterprise_id: str | None, team_id: str | None, user_id: str | None) -> AuthorizeResult:
        # The one workspace's bot token, with no Web API call: Bolt's single-team authorization
        # would call auth.test on each instance's first request (a cold start slower, and a Slack
        # outage turning every command into an error). The listeners post through shared.slack.web_api.
        return AuthorizeResult(enterprise_id=enterprise_id, team_id=team_id, user_id=user_id, bot_token=token)

    app = App(
        signing_secret=signing_secret,
        authorize=authorize,
        process_before_response=True,
        # handle() has verified the signature over the raw body already (before anything parsed it).
        request_verification_enabled=False,
        logger=logging.getLogger("fleet.slack.bolt"),
    )
    app.command(os.environ.get(COMMAND_ENV) or "/fleet")(_on_command)
    app.action(re.compile(f"^({approval_messages.APPROVE}|{approval_messages.DENY})$"))(_on_decision)
    app.action(re.compile(f"^({notices.ACK}|{notices.SNOOZE}_.+)$"))(_on_alert)
    app.error(_on_error)
    return app


def _now() -> datetime:
    return datetime.now(UTC)


def _on_command(ack: Any, body: dict[str, Any]) -> None:
    # lazy: the subcommands import the training and accounting wings; a button click never needs them
    from shared.slack import commands

    ack(**commands.run(body, _now()))


def _on_decision(ack: Any, body: dict[str, Any]) -> None:
    buttons.on_decision(buttons.Click.of(body), _now())
    ack()


def _on_alert(ack: Any, body: dict[str, Any]) -> None:
    buttons.on_alert(buttons.Click.of(body), _now())
    ack()


def _on_error(error: Exception, body: dict[str, Any]) -> None:
    """Bolt calls this for an exception in a listener, then answers 500: Slack may retry, and the
    request markers make the retry safe. Logged with the exception, never with the payload."""
    logs.log(log, f"slack listener failed: {type(error).__name__}: {error}", logging.ERROR, error=type(error).__name__)


def handler() -> SlackRequestHandler:
    global _handler, _verifier
    with _lock:
        if _handler is None:
            # lazy: slack_bolt and slack_sdk are heavy; built on the first request only
            from slack_bolt.adapter.google_cloud_functions import SlackRequestHandler
            from slack_sdk.signature import SignatureVerifier

            _handler = SlackRequestHandler(build())
            _verifier = SignatureVerifier(settings.secret(SIGNING_SECRET) or "")
        return _handler


def reset() -> None:
    """Forget the built app (tests; rotated secrets)."""
    global _handler, _verifier
    with _lock:
        _handler = _verifier = None


def _json(status: int, reason: str, headers: dict[str, str] | None = None) -> flask.Response:
    """An error as the REST API writes them: ``{"error": {"code", "reason"}}``, never a stack trace."""
    # lazy: the REST API's frame (flask views, pydantic bodies) is heavy and only an error needs its codes
    from shared.api.core import ERROR_CODES

    body = json.dumps({"error": {"code": ERROR_CODES.get(status, "error"), "reason": reason}})
    return flask.Response(body, status=status, mimetype="application/json", headers=headers)


def handle(request: flask.Request) -> flask.Response:
    """Serve one request from Slack: never raises, logs one line without the payload or secrets."""
    with logs.invocation(log, method=request.method, path=request.path) as entry:
        level = logging.INFO
        try:
            response = _dispatch(request, entry.fields)
        except Exception as exc:
            level = logging.ERROR
            entry.fields["error"] = f"{type(exc).__name__}: {exc}"
            transient = isinstance(exc, db.transient_errors())
            response = _json(
                503 if transient else 500,
                "internal error; Slack will retry" if not transient else "Firestore is unavailable; retry shortly",
            )
        message = f"slack {entry.fields.get('kind', request.method)} {response.status_code}"
        entry.outcome(message, level, status=response.status_code)
    return response


def _dispatch(request: flask.Request, fields: dict[str, Any]) -> flask.Response:
    if request.method != "POST":
        return _json(405, "Slack sends POST requests only", {"Allow": "POST"})
    request.max_content_length = MAX_BODY_BYTES  # also bounds a chunked body, whose length is not announced
    try:
        raw = request.get_data(cache=True, as_text=True)
    except RequestEntityTooLarge:
        # functions-framework drains the body after the response: let it (the refusal is made).
        request.max_content_length = None
        return _json(400, f"the request body is larger than {MAX_BODY_BYTES} bytes")
    fields["retry_num"] = request.headers.get("X-Slack-Retry-Num")
    try:
        app_handler, verifier = handler(), _verifier
    except (RuntimeError, web_api.SlackRefused) as exc:
        return _json(503, f"the Slack app is not configured: {exc}")
    # The signature covers the raw body's exact bytes: checked before anything parses it, so an
    # unsigned request gets 401 whatever its body.
    if verifier is None or not _signed(verifier, raw, dict(request.headers)):
        return _json(401, "invalid or stale Slack signature")
    problem = malformed(raw, fields)
    if problem:
        return _json(400, problem)
    return app_handler.handle(request)


def _signed(verifier: SignatureVerifier, raw: str, headers: dict[str, str]) -> bool:
    """Signed with our secret within the last 5 minutes; a malformed timestamp is simply unsigned."""
    try:
        return bool(verifier.is_valid_request(raw, headers))
    except (ValueError, TypeError):
        return False


def malformed(raw: str, fields: dict[str, Any]) -> str | None:
    """Why a signed body is not a slash command or an interaction this app understands, or None."""
    form = urllib.parse.parse_qs(raw)
    if form.get("command"):
        fields["kind"] = "command"
        return None if form.get("user_id") else "a slash command names its user_id"
    if not form.get("payload"):
        return "neither a slash command nor an interaction payload"
    fields["kind"] = "interaction"
    try:
        payload = json.loads(form["payload"][0])
    except ValueError:
        return "the interaction payload is not JSON"
    if not isinstance(payload, dict) or not isinstance(payload.get("type"), str):
        return "the interaction payload is not an object with a type"
    if payload["type"] == "block_actions":
        actions = payload.get("actions")
        user = payload.get("user")
        if not isinstance(user, dict) or not isinstance(user.get("id"), str):
            return "a block_actions payload names its user"
        if not isinstance(actions, list) or not actions or not isinstance(actions[0], dict):
            return "a block_actions payload lists its actions"
        if not isinstance(actions[0].get("action_id"), str):
            return "an action names its action_id"
    return None
