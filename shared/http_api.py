"""The read-only REST API (``functions/main.py: api``): agents, their history, and rejected events.

One route table drives both the dispatcher (werkzeug routing) and the OpenAPI document, so the
document cannot drift from what is served. Every outcome is JSON, errors included: callers and
load balancers never see an HTML error page or a stack trace.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import logging
import re
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import flask
from fleet_agent.contracts import AGENT_ID_PATTERN
from pydantic import BaseModel
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound
from werkzeug.routing import Map, Rule

from shared import logs, settings
from shared.api_models import (
    MODELS,
    AgentPage,
    AgentView,
    ErrorBody,
    ErrorDetail,
    Health,
    HistoryView,
    RejectionPage,
    agent_view,
)
from shared.domain.api_keys import Role
from shared.domain.lifecycle import State
from shared.domain.rejections import Code
from shared.store import agents as agent_store
from shared.store import api_keys, db
from shared.store import rejections as rejection_store
from shared.store.api_keys import Principal

log = logs.get_logger("api")

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
_ID = re.compile(AGENT_ID_PATTERN)
_DIGITS = re.compile(r"^[0-9]{1,6}$")
_TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,4096}$")
_TRACE = re.compile(r"^[0-9a-fA-F]{32}$")
_STATES = tuple(s.value for s in State)
_CODES = tuple(c.value for c in Code)
_REF = "#/components/schemas/{model}"

#: HTTP status -> the machine-readable error code in the body.
ERROR_CODES: dict[int, str] = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    500: "internal",
    503: "unavailable",
}


class ApiError(Exception):
    """An expected failure, answered as ``{"error": {"code", "reason"}}`` with its status."""

    def __init__(self, status: int, reason: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.headers = headers or {}


@dataclass(frozen=True)
class Call:
    """What a view needs: the request, the path arguments and who is asking (None on public routes)."""

    request: flask.Request
    args: dict[str, str]
    principal: Principal | None


@dataclass(frozen=True)
class Param:
    name: str
    where: str  # "query" or "path"
    description: str
    schema: dict[str, Any]
    required: bool = False


@dataclass(frozen=True)
class Route:
    rule: str
    endpoint: str
    summary: str
    view: Callable[[Call], BaseModel | dict[str, Any]]
    response: type[BaseModel] | None
    auth: bool = True
    role: Role = Role.VIEWER
    params: tuple[Param, ...] = ()
    #: Error statuses specific to the route (401/403/405/500/503 are added from ``auth``).
    errors: tuple[int, ...] = ()
    tags: tuple[str, ...] = field(default=())


# --- pagination -------------------------------------------------------------------------------


def encode_page_token(last_id: str) -> str:
    """Opaque to callers: the id of the last item of the page, urlsafe base64 without padding."""
    return base64.urlsafe_b64encode(last_id.encode()).decode().rstrip("=")


def decode_page_token(token: str, valid: Callable[[str], bool]) -> str:
    """The id a token stands for; anything not produced by :func:`encode_page_token` is a 400."""
    bad = ApiError(400, "page_token is malformed; pass next_page_token from the previous page unchanged")
    if not _TOKEN.match(token):
        raise bad
    try:
        value = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise bad from None
    if not valid(value) or encode_page_token(value) != token:
        raise bad
    return value


def _is_document_id(value: str) -> bool:
    """Firestore's rules for a document id (a rejection id comes from Pub/Sub: a decimal string)."""
    return (
        0 < len(value.encode()) <= 1500
        and "/" not in value
        and value not in (".", "..")
        and not (value.startswith("__") and value.endswith("__"))
    )


def _is_agent_id(value: str) -> bool:
    return _ID.match(value) is not None


# --- query parameters -------------------------------------------------------------------------


def _query(request: flask.Request, name: str) -> str | None:
    """A query parameter; empty counts as absent (``?status=`` means no filter)."""
    value = request.args.get(name)
    return value if value else None


def _page_size(request: flask.Request) -> int:
    raw = _query(request, "page_size")
    if raw is None:
        return DEFAULT_PAGE_SIZE
    size = int(raw) if _DIGITS.match(raw) else 0
    if not 1 <= size <= MAX_PAGE_SIZE:
        raise ApiError(400, f"page_size must be an integer from 1 to {MAX_PAGE_SIZE}")
    return size


def _page_token(request: flask.Request, valid: Callable[[str], bool]) -> str | None:
    raw = _query(request, "page_token")
    return decode_page_token(raw, valid) if raw is not None else None


def _principal(call: Call) -> Principal:
    assert call.principal is not None, "an authenticated route always has a principal"
    return call.principal


# --- views ------------------------------------------------------------------------------------


def _health(call: Call) -> Health:
    return Health()


def _openapi(call: Call) -> dict[str, Any]:
    return openapi_document()


def _list_agents(call: Call) -> AgentPage:
    principal = _principal(call)
    tenant = _query(call.request, "tenant")
    if tenant is not None and not _is_agent_id(tenant):
        raise ApiError(400, f"tenant must match {AGENT_ID_PATTERN}")
    if principal.tenant is not None:
        if tenant is not None and tenant != principal.tenant:
            raise ApiError(403, f"this API key only sees tenant {principal.tenant}")
        tenant = principal.tenant
    status = _query(call.request, "status")
    if status is not None and status not in _STATES:
        raise ApiError(400, f"status must be one of: {', '.join(_STATES)}")
    page_size = _page_size(call.request)
    after = _page_token(call.request, _is_agent_id)
    records, last = agent_store.list_agents(tenant=tenant, status=status, page_size=page_size, after=after)
    return AgentPage(
        items=[agent_view(r) for r in records],
        next_page_token=encode_page_token(last) if last else None,
    )


def _visible_agent(call: Call) -> AgentView:
    """The agent of the path, or 404, also when it belongs to another tenant (existence is not leaked)."""
    principal = _principal(call)
    agent_id = call.args["agent_id"]
    not_found = ApiError(404, f"agent {agent_id} not found")
    if not _is_agent_id(agent_id):
        raise not_found
    record = agent_store.get(agent_id)
    if record is None or not principal.can_see(record.tenant):
        raise not_found
    return agent_view(record)


def _get_agent(call: Call) -> AgentView:
    return _visible_agent(call)


def _agent_history(call: Call) -> HistoryView:
    agent = _visible_agent(call)
    samples = agent_store.history(agent.agent_id)
    return HistoryView.model_validate({"agent_id": agent.agent_id, "samples": samples})


def _list_rejections(call: Call) -> RejectionPage:
    principal = _principal(call)
    agent_id = _query(call.request, "agent_id")
    if agent_id is not None and not _is_agent_id(agent_id):
        raise ApiError(400, f"agent_id must match {AGENT_ID_PATTERN}")
    code = _query(call.request, "code")
    if code is not None and code not in _CODES:
        raise ApiError(400, f"code must be one of: {', '.join(_CODES)}")
    page_size = _page_size(call.request)
    after = _page_token(call.request, _is_document_id)
    if principal.tenant is not None:
        # Rejections carry no trustworthy tenant (the event may not even have parsed), so a
        # tenant-scoped key sees them only through an agent it can see.
        if agent_id is None:
            raise ApiError(403, "an API key scoped to a tenant must filter rejections by agent_id")
        record = agent_store.get(agent_id)
        if record is None or not principal.can_see(record.tenant):
            raise ApiError(403, f"agent {agent_id} is not an agent of tenant {principal.tenant}")
    try:
        items, last = rejection_store.list_page(agent_id=agent_id, code=code, page_size=page_size, after=after)
    except rejection_store.PageTokenExpired as exc:
        raise ApiError(400, str(exc)) from None
    return RejectionPage.model_validate({"items": items, "next_page_token": encode_page_token(last) if last else None})


# --- the route table --------------------------------------------------------------------------

_PAGE_PARAMS = (
    Param(
        "page_size",
        "query",
        f"Items per page, 1 to {MAX_PAGE_SIZE}.",
        {"type": "integer", "minimum": 1, "maximum": MAX_PAGE_SIZE, "default": DEFAULT_PAGE_SIZE},
    ),
    Param("page_token", "query", "next_page_token of the previous page, unchanged.", {"type": "string"}),
)
_AGENT_ID_PARAM = Param(
    "agent_id", "path", "The agent's id.", {"type": "string", "pattern": AGENT_ID_PATTERN}, required=True
)

ROUTES: tuple[Route, ...] = (
    Route(
        "/healthz",
        "health",
        "Liveness probe (no authentication, no Firestore).",
        _health,
        Health,
        auth=False,
        tags=("meta",),
    ),
    Route(
        "/openapi.json",
        "openapi",
        "This OpenAPI 3.1 document (no authentication).",
        _openapi,
        None,
        auth=False,
        tags=("meta",),
    ),
    Route(
        "/v1/agents",
        "list_agents",
        "List agents, ordered by id, one page at a time.",
        _list_agents,
        AgentPage,
        params=(
            Param(
                "tenant",
                "query",
                "Only this tenant (a tenant-scoped key may name only its own).",
                {"type": "string", "pattern": AGENT_ID_PATTERN},
            ),
            Param(
                "status",
                "query",
                "Only agents in this lifecycle state.",
                {"$ref": _REF.format(model="State")},
            ),
            *_PAGE_PARAMS,
        ),
        errors=(400,),
        tags=("agents",),
    ),
    Route(
        "/v1/agents/<agent_id>",
        "get_agent",
        "One agent.",
        _get_agent,
        AgentView,
        params=(_AGENT_ID_PARAM,),
        errors=(404,),
        tags=("agents",),
    ),
    Route(
        "/v1/agents/<agent_id>/history",
        "get_agent_history",
        "An agent's stored heartbeat samples, oldest first.",
        _agent_history,
        HistoryView,
        params=(_AGENT_ID_PARAM,),
        errors=(404,),
        tags=("agents",),
    ),
    Route(
        "/v1/rejections",
        "list_rejections",
        "List rejected events, newest first.",
        _list_rejections,
        RejectionPage,
        params=(
            Param(
                "agent_id",
                "query",
                "Only rejections of this agent (required for tenant-scoped keys).",
                {"type": "string", "pattern": AGENT_ID_PATTERN},
            ),
            Param(
                "code",
                "query",
                "Only rejections with this code.",
                {"type": "string", "enum": list(_CODES)},
            ),
            *_PAGE_PARAMS,
        ),
        errors=(400,),
        tags=("rejections",),
    ),
)

_BY_ENDPOINT: dict[str, Route] = {r.endpoint: r for r in ROUTES}
URL_MAP = Map(
    [Rule(r.rule, endpoint=r.endpoint, methods=["GET"]) for r in ROUTES],
    strict_slashes=False,
    merge_slashes=False,
)


# --- the entry point --------------------------------------------------------------------------


def handle(request: flask.Request) -> flask.Response:
    """Serve one request; never raises, always answers JSON, logs one line."""
    started = time.perf_counter()
    request_id, trace = _request_ids(request)
    fields: dict[str, Any] = {"method": request.method, "path": request.path, "request_id": request_id}
    level = logging.INFO
    with db.metered() as meter:
        try:
            response = _dispatch(request, fields)
        except ApiError as err:
            response = _error(err.status, err.reason, err.headers)
        except Exception as exc:
            if isinstance(exc, db.transient_errors()):
                level = logging.WARNING
                fields["error"] = f"{type(exc).__name__}: {exc}"
                response = _error(503, "Firestore is unavailable; retry shortly", {"Retry-After": "1"})
            else:
                level = logging.ERROR
                fields["error"] = f"{type(exc).__name__}: {exc}"
                fields["exception"] = traceback.format_exc()
                response = _error(500, f"internal error; see logs with request id {request_id}")
        response.headers["X-Request-Id"] = request_id
        if trace:
            fields["logging.googleapis.com/trace"] = f"projects/{settings.get().project}/traces/{trace}"
        logs.log(
            log,
            f"{request.method} {request.path} {response.status_code}",
            level,
            status=response.status_code,
            firestore_reads=meter.reads,
            firestore_writes=meter.writes,
            duration_ms=round((time.perf_counter() - started) * 1000, 2),
            **fields,
        )
    return response


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
            raise ApiError(403, f"this API key's role ({principal.role}) cannot call {route.endpoint}")
    result = route.view(Call(request, {k: str(v) for k, v in args.items()}, principal))
    body = result.model_dump_json() if isinstance(result, BaseModel) else json.dumps(result)
    return _json(200, body)


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


def _error(status: int, reason: str, headers: dict[str, str] | None = None) -> flask.Response:
    body = ErrorBody(error=ErrorDetail(code=ERROR_CODES.get(status, "error"), reason=reason))
    return _json(status, body.model_dump_json(), headers)


# --- OpenAPI ----------------------------------------------------------------------------------

_ERROR_RESPONSES: dict[int, tuple[str, str, dict[str, Any]]] = {
    400: ("BadRequest", "A query parameter or page token is invalid.", {}),
    401: (
        "Unauthorized",
        "Missing, malformed, unknown or revoked API key.",
        {"WWW-Authenticate": {"schema": {"type": "string"}, "description": "Bearer"}},
    ),
    403: ("Forbidden", "The API key may not see this (tenant scope or role).", {}),
    404: ("NotFound", "No such route, or no such agent visible to this API key.", {}),
    405: (
        "MethodNotAllowed",
        "Only GET (and HEAD) are served.",
        {"Allow": {"schema": {"type": "string"}, "description": "The allowed methods."}},
    ),
    500: ("Internal", "Unexpected error; the reason names the request id to look up in the logs.", {}),
    503: (
        "Unavailable",
        "Firestore is temporarily unavailable; retry.",
        {"Retry-After": {"schema": {"type": "integer"}, "description": "Seconds to wait before retrying."}},
    ),
}


def _openapi_path(rule: str) -> str:
    """werkzeug's ``<conv:name>`` placeholders as OpenAPI's ``{name}``."""
    return re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("agent-fleet-manager")
    except PackageNotFoundError:
        return "0.0.0"


@functools.cache
def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 document, built once per instance from the route table and the pydantic models."""
    schemas: dict[str, Any] = {}
    for model in MODELS:
        schema = model.model_json_schema(ref_template=_REF, mode="serialization")
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    error_ref = {"$ref": _REF.format(model="ErrorBody")}
    responses = {
        name: {"description": description, "content": {"application/json": {"schema": error_ref}}}
        | ({"headers": headers} if headers else {})
        for name, description, headers in _ERROR_RESPONSES.values()
    }
    paths: dict[str, Any] = {}
    for route in ROUTES:
        statuses = set(route.errors) | {405, 500}
        if route.auth:
            statuses |= {401, 403, 503}
        ok_schema = {"$ref": _REF.format(model=route.response.__name__)} if route.response else {"type": "object"}
        operation: dict[str, Any] = {
            "operationId": route.endpoint,
            "summary": route.summary,
            "tags": list(route.tags),
            "parameters": [
                {
                    "name": p.name,
                    "in": p.where,
                    "required": p.required,
                    "description": p.description,
                    "schema": p.schema,
                }
                for p in route.params
            ],
            "responses": {
                "200": {"description": "OK", "content": {"application/json": {"schema": ok_schema}}},
                **{
                    str(status): {"$ref": f"#/components/responses/{_ERROR_RESPONSES[status][0]}"}
                    for status in sorted(statuses)
                },
            },
            "security": [{"bearerAuth": []}] if route.auth else [],
        }
        paths[_openapi_path(route.rule)] = {"get": operation}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Agent Fleet Manager API",
            "version": _version(),
            "description": "Read access to the fleet: agents, their heartbeat history and rejected events. "
            'Every error is JSON: {"error": {"code", "reason"}}.',
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "responses": responses,
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "afm_<key_id>_<secret>",
                    "description": "An API key created with `fleetctl keys create`.",
                }
            },
        },
        "security": [{"bearerAuth": []}],
    }
