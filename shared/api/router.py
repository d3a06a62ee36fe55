"""The REST API (``functions/main.py: api``): the one route table, dispatch and the entry point.

Every resource module of shared/api/ declares its routes beside its views (shared/api/core.py: Routes);
the table below joins them, in the order of the OpenAPI document, and drives both the dispatcher
(werkzeug routing) and the document (shared/api/openapi.py), so the document cannot drift from what is
served. Every outcome is JSON (but the OpenMetrics text of GET /metrics), errors included: callers and load
balancers never see an HTML error page or a stack trace. Views stay thin: the rules live in shared.domain
and shared.services, the writes in shared.store.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import traceback
import uuid
from typing import Any

import flask
from pydantic import BaseModel
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound
from werkzeug.routing import Map, Rule

from shared.api import (
    agent_commands,
    agent_ops,
    agents,
    alerts,
    approvals,
    bulk,
    core,
    costs,
    enrollment,
    jobs,
    metrics,
    ml_models,
    openapi,
    prices,
    reports,
    settings,
    tasks,
)
from shared.api.bodies import ErrorBody, ErrorDetail, Health
from shared.api.core import ERROR_CODES, ApiError, Call, Route, Routes
from shared.domain.api_keys import Role
from shared.domain.audit import AuditEntry
from shared.platform import logs
from shared.platform import settings as platform_settings
from shared.services import agent_controls
from shared.store import api_keys, db
from shared.store import audit as audit_store
from shared.store.api_keys import Principal

log = logs.get_logger("api")

_TRACE = re.compile(r"^[0-9a-fA-F]{32}$")

meta = Routes("meta")


@meta.get("/healthz", Health, auth=False)
def health(call: Call) -> Health:
    """Liveness probe (no authentication, no Firestore)."""
    return Health()


@meta.get("/openapi.json", None, auth=False, endpoint="openapi")
def openapi_json(call: Call) -> dict[str, Any]:
    """This OpenAPI 3.1 document (no authentication)."""
    return openapi_document()


ROUTES: tuple[Route, ...] = (
    *meta,
    *agents.routes,
    *agent_commands.routes,
    *agent_ops.routes,
    *bulk.routes,
    *enrollment.routes,
    *settings.of("identity"),
    *costs.routes,
    *prices.routes,
    *alerts.routes,
    *settings.of("alerting", "health"),
    *settings.of("remediation"),
    *approvals.routes,
    *reports.routes,
    *jobs.routes,
    *ml_models.routes,
    *tasks.routes,
    *settings.of("jobs", "tasks"),
    *metrics.routes,
)

_BY_ENDPOINT: dict[str, Route] = {r.endpoint: r for r in ROUTES}
URL_MAP = Map(
    [Rule(r.rule, endpoint=r.endpoint, methods=[r.method]) for r in ROUTES],
    strict_slashes=False,
    merge_slashes=False,
)


@functools.cache
def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 document, built once per instance from the route table and the pydantic models."""
    return openapi.document(ROUTES)


# --- the entry point --------------------------------------------------------------------------


def handle(request: flask.Request) -> flask.Response:
    """Serve one request; never raises, always answers JSON, logs one line."""
    request_id, trace = _request_ids(request)
    fields: dict[str, Any] = {"method": request.method, "path": request.path, "request_id": request_id}
    with logs.invocation(log, **fields) as entry:
        response, level = _respond(request, entry.fields)
        if trace:
            entry.fields["logging.googleapis.com/trace"] = f"projects/{platform_settings.get().project}/traces/{trace}"
        entry.outcome(f"{request.method} {request.path} {response.status_code}", level, status=response.status_code)
    return response


def serve_within(request: flask.Request, request_id: str) -> flask.Response:
    """Serve one request inside another function's invocation (the console calling the API in-process):
    the same routes, roles, audit and JSON errors, but no log line or meter of its own, so the caller's one
    line counts every Firestore read of the page."""
    fields: dict[str, Any] = {"method": request.method, "path": request.path, "request_id": request_id}
    response, level = _respond(request, fields)
    if level >= logging.WARNING:
        logs.log(log, f"in-process {request.method} {request.path} {response.status_code}", level, **fields)
    return response


def _respond(request: flask.Request, fields: dict[str, Any]) -> tuple[flask.Response, int]:
    """The response to ``request`` and the level to log it at; never raises."""
    level = logging.INFO
    try:
        response = _dispatch(request, fields)
    except ApiError as err:
        response = _error(err.status, err.reason, err.headers, err.details)
    except agent_controls.Refused as err:
        response = _error(err.status, err.reason)
    except Exception as exc:
        fields["error"] = f"{type(exc).__name__}: {exc}"
        if isinstance(exc, db.transient_errors()):
            level = logging.WARNING
            response = _error(503, "Firestore is unavailable; retry shortly", {"Retry-After": "1"})
        else:
            level = logging.ERROR
            fields["exception"] = traceback.format_exc()
            response = _error(500, f"internal error; see logs with request id {fields['request_id']}")
    response.headers["X-Request-Id"] = fields["request_id"]
    return response, level


def _dispatch(request: flask.Request, fields: dict[str, Any]) -> flask.Response:
    adapter = URL_MAP.bind("api", url_scheme="https")
    try:
        endpoint, args = adapter.match(request.path, method=request.method)
    except MethodNotAllowed as exc:
        allowed = ", ".join(sorted(exc.valid_methods or ["GET"]))
        raise ApiError(405, f"{request.method} is not allowed here; use {allowed}", {"Allow": allowed}) from None
    except NotFound:
        raise ApiError(404, f"no route for {request.path}; see /openapi.json") from None
    except HTTPException as exc:  # any other routing outcome, still as JSON
        status = exc.code if exc.code in ERROR_CODES else 400
        raise ApiError(status, exc.description or "bad request") from None
    route = _BY_ENDPOINT[str(endpoint)]
    fields["endpoint"] = route.endpoint
    principal = None
    if route.auth:
        principal = _authenticate(request)
        fields["key_id"] = principal.key_id
        if not principal.role.allows(route.role):
            reason = f"this API key's role ({principal.role}) cannot call {route.endpoint}"
            audit_refusal(principal, route.endpoint, route.role, request.path, fields["request_id"], reason)
            raise ApiError(403, reason)
    result = route.view(Call(request, {k: str(v) for k, v in args.items()}, principal, fields["request_id"]))
    if isinstance(result, flask.Response):  # a route that answers other than JSON (GET /metrics)
        return result
    body = result.model_dump_json() if isinstance(result, BaseModel) else json.dumps(result)
    return _json(route.status, body)


def audit_refusal(
    principal: Principal, action: str, needs: Role, path: str, request_id: str, reason: str, *, via: str = "api"
) -> None:
    """A call the key's role does not allow is an audit entry too (who tried what): ``<via>.<action>``,
    outcome ``refused``. The console audits its own refusals (a scrape key signing in) through here too."""
    entry = AuditEntry(
        id=f"{via}.{request_id}.{action}.refused",
        at=core.now(),
        actor=f"{via}:{principal.name}",
        action=f"{via}.{action}",
        target=path[:300],
        outcome="refused",
        tenant=principal.tenant,
        details={"reason": reason, "role": principal.role.value, "needs": needs.value},
    )
    audit_store.append(entry)


def _authenticate(request: flask.Request) -> Principal:
    """The principal of the bearer token. The token is never logged nor echoed back."""
    header = request.headers.get("Authorization", "")
    if not header:
        raise ApiError(401, "missing Authorization: Bearer <API key> header", {"WWW-Authenticate": "Bearer"})
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise ApiError(401, "the Authorization header must be 'Bearer <API key>'", {"WWW-Authenticate": "Bearer"})
    principal = api_keys.verify(token)
    if principal is None:
        raise ApiError(401, "invalid or revoked API key", {"WWW-Authenticate": 'Bearer error="invalid_token"'})
    return principal


def _request_ids(request: flask.Request) -> tuple[str, str | None]:
    """(request id, Cloud Trace id): the trace id when Google's front end set one, so logs correlate."""
    trace = request.headers.get("X-Cloud-Trace-Context", "").split("/", 1)[0]
    if _TRACE.match(trace):
        return trace.lower(), trace.lower()
    return uuid.uuid4().hex, None


def _json(status: int, body: str, headers: dict[str, str] | None = None) -> flask.Response:
    response = flask.Response(body, status=status, mimetype="application/json")
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Content-Type-Options"] = "nosniff"
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def _error(
    status: int, reason: str, headers: dict[str, str] | None = None, details: list[dict[str, Any]] | None = None
) -> flask.Response:
    body = ErrorBody(error=ErrorDetail(code=ERROR_CODES.get(status, "error"), reason=reason, details=details))
    return _json(status, body.model_dump_json(exclude_none=True), headers)
