"""The REST API's frame: errors, routes and their registration, pagination, query parameters, request
bodies and who is calling.

Every resource module of shared/api/ declares its routes beside its views through a :class:`Routes`
registry; shared/api/router.py joins them into the one table that drives both dispatch and the OpenAPI
document (shared/api/openapi.py). Views reach these helpers as ``core.<name>`` (``core.now()`` above
all: tests freeze the clock here, once for every route).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, TypedDict, TypeVar, Unpack

import flask
from fleet_agent.contracts import AGENT_ID_PATTERN
from pydantic import BaseModel, ValidationError

from shared.domain.api_keys import Role
from shared.domain.audit import AuditEntry
from shared.services import agent_controls
from shared.store.api_keys import Principal

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
DEFAULT_ALERTS = 50
MAX_ALERTS = 200
#: Largest request body accepted (every body here is a few hundred bytes).
MAX_BODY_BYTES = 64 * 1024
_ID = re.compile(AGENT_ID_PATTERN)
_DIGITS = re.compile(r"^[0-9]{1,6}$")
_TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,4096}$")

M = TypeVar("M", bound=BaseModel)

#: HTTP status -> the machine-readable error code in the body.
ERROR_CODES: dict[int, str] = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    500: "internal",
    503: "unavailable",
}


class ApiError(Exception):
    """An expected failure, answered as ``{"error": {"code", "reason"}}`` with its status."""

    def __init__(
        self,
        status: int,
        reason: str,
        headers: dict[str, str] | None = None,
        details: list[dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.headers = headers or {}
        self.details = details


@dataclass(frozen=True)
class Call:
    """What a view needs: the request, the path arguments and who is asking (None on public routes)."""

    request: flask.Request
    args: dict[str, str]
    principal: Principal | None
    #: The request id (also in X-Request-Id): makes audit entries and command ids of this request unique.
    request_id: str = ""


@dataclass(frozen=True)
class Param:
    name: str
    where: str  # "query" or "path"
    description: str
    schema: dict[str, Any]
    required: bool = False


View = Callable[[Call], BaseModel | dict[str, Any] | flask.Response]
V = TypeVar("V", bound=View)
Model = type[BaseModel]


@dataclass(frozen=True)
class Route:
    rule: str
    endpoint: str
    summary: str
    view: View
    response: type[BaseModel] | None
    auth: bool = True
    role: Role = Role.VIEWER
    params: tuple[Param, ...] = ()
    #: Error statuses specific to the route (401/403/405/500/503 are added from ``auth``).
    errors: tuple[int, ...] = ()
    tags: tuple[str, ...] = field(default=())
    method: str = "GET"
    #: The JSON body the route takes (PUT/POST), validated by the view with :func:`body`.
    request: type[BaseModel] | None = None
    #: The status (201 for a route that creates something) and type of a success (not JSON: a flask.Response).
    status: int = 200
    media_type: str = "application/json"


class RouteOptions(TypedDict, total=False):
    """What a route may declare besides its method, rule, response, request body and role (the defaults of
    :class:`Route`)."""

    params: tuple[Param, ...]
    errors: tuple[int, ...]
    auth: bool
    tags: tuple[str, ...]
    #: Default: the view's name (the OpenAPI operationId).
    endpoint: str
    #: Default: the view's docstring's first paragraph, on one line.
    summary: str
    #: The status of a success (default 200).
    status: int


class Routes:
    """One module's routes, in the order declared, each beside its view (``@routes.get(rule, Response, ...)``
    on ``def get_thing(call)``). The endpoint (the OpenAPI operationId) is the view's name and the summary
    its docstring's first paragraph, unless ``endpoint`` or ``summary`` says otherwise."""

    def __init__(self, *tags: str) -> None:
        self.tags = tags
        self.table: list[Route] = []

    def __iter__(self) -> Iterator[Route]:
        return iter(self.table)

    def add(
        self,
        method: str,
        rule: str,
        response: type[BaseModel] | None,
        view: View,
        request: type[BaseModel] | None = None,
        role: Role = Role.VIEWER,
        **options: Unpack[RouteOptions],
    ) -> None:
        """Declare ``view`` as the route of ``method`` on ``rule`` answering ``response``."""
        summary = options.get("summary") or " ".join((view.__doc__ or "").split("\n\n")[0].split())
        endpoint = options.get("endpoint") or getattr(view, "__name__", "")
        if not summary or not endpoint:
            raise ValueError(f"{method} {rule}: a route needs a summary (docstring) and an endpoint name")
        self.table.append(
            Route(
                rule,
                endpoint,
                summary,
                view,
                response,
                auth=options.get("auth", True),
                role=role,
                params=options.get("params", ()),
                errors=options.get("errors", ()),
                tags=options.get("tags", self.tags),
                method=method,
                request=request,
                status=options.get("status", 200),
            )
        )

    def route(
        self,
        method: str,
        rule: str,
        response: type[BaseModel] | None,
        request: type[BaseModel] | None = None,
        role: Role = Role.VIEWER,
        **options: Unpack[RouteOptions],
    ) -> Callable[[V], V]:
        """:meth:`add` as a decorator."""

        def declare(view: V) -> V:
            self.add(method, rule, response, view, request, role, **options)
            return view

        return declare

    def get(self, rule: str, response: Model | None, **options: Unpack[RouteOptions]) -> Callable[[V], V]:
        return self.route("GET", rule, response, **options)

    # Every change needs a role above viewer: the write methods take it next to the body.
    def put(
        self, rule: str, response: Model, request: Model, role: Role, **options: Unpack[RouteOptions]
    ) -> Callable[[V], V]:
        return self.route("PUT", rule, response, request, role, **options)

    def post(
        self, rule: str, response: Model, request: Model, role: Role, **options: Unpack[RouteOptions]
    ) -> Callable[[V], V]:
        return self.route("POST", rule, response, request, role, **options)

    def delete(self, rule: str, response: Model, role: Role, **options: Unpack[RouteOptions]) -> Callable[[V], V]:
        return self.route("DELETE", rule, response, None, role, **options)


# --- parameters more than one resource declares ---------------------------------------------------


def int_param(name: str, description: str, default: int, maximum: int) -> Param:
    """A query parameter read by :func:`bounded_int`: an integer from 1 to ``maximum``."""
    return Param(name, "query", description, {"type": "integer", "minimum": 1, "maximum": maximum, "default": default})


PAGE_PARAMS = (
    int_param("page_size", f"Items per page, 1 to {MAX_PAGE_SIZE}.", DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE),
    Param("page_token", "query", "next_page_token of the previous page, unchanged.", {"type": "string"}),
)
AGENT_ID_PARAM = Param(
    "agent_id", "path", "The agent's id.", {"type": "string", "pattern": AGENT_ID_PATTERN}, required=True
)
TENANT_PARAM = Param(
    "tenant",
    "path",
    "The tenant (a tenant-scoped key sees only its own; any other is 404).",
    {"type": "string", "pattern": AGENT_ID_PATTERN},
    required=True,
)
TENANT_QUERY = Param(
    "tenant",
    "query",
    "A tenant (a tenant-scoped key may name only its own).",
    {"type": "string", "pattern": AGENT_ID_PATTERN},
)
LIMIT_QUERY = int_param("limit", f"At most this many, 1 to {MAX_ALERTS}.", DEFAULT_ALERTS, MAX_ALERTS)
#: The ``params`` of a route on one agent or one tenant of the path.
AGENT = (AGENT_ID_PARAM,)
TENANT = (TENANT_PARAM,)


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


def is_document_id(value: str) -> bool:
    """Firestore's rules for a document id (a rejection id comes from Pub/Sub: a decimal string)."""
    return (
        0 < len(value.encode()) <= 1500
        and "/" not in value
        and value not in (".", "..")
        and not (value.startswith("__") and value.endswith("__"))
    )


def is_agent_id(value: str) -> bool:
    return _ID.match(value) is not None


# --- query parameters -------------------------------------------------------------------------


def query(request: flask.Request, name: str) -> str | None:
    """A query parameter; empty counts as absent (``?status=`` means no filter)."""
    value = request.args.get(name)
    return value if value else None


def bounded_int(request: flask.Request, name: str, default: int, maximum: int) -> int:
    """An integer query parameter from 1 to ``maximum`` (``default`` when absent); anything else is a 400."""
    raw = query(request, name)
    if raw is None:
        return default
    value = int(raw) if _DIGITS.match(raw) else 0
    if not 1 <= value <= maximum:
        raise ApiError(400, f"{name} must be an integer from 1 to {maximum}")
    return value


def page_size(request: flask.Request) -> int:
    return bounded_int(request, "page_size", DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def limit(request: flask.Request) -> int:
    """``?limit=`` of the alert, approval and audit lists."""
    return bounded_int(request, "limit", DEFAULT_ALERTS, MAX_ALERTS)


def page_token(request: flask.Request, valid: Callable[[str], bool]) -> str | None:
    raw = query(request, "page_token")
    return decode_page_token(raw, valid) if raw is not None else None


def query_time(request: flask.Request, name: str, earliest: datetime | None = None) -> datetime | None:
    """An ISO 8601 time (UTC when it names no offset), as given; absent is None. Unparsable, not
    representable in UTC (``0001-01-01T00:00:00+05:00``) or before ``earliest``: a 400."""
    raw = query(request, name)
    if raw is None:
        return None
    try:
        value = datetime.fromisoformat(raw.replace(" ", "+"))  # an unencoded "+01:00" arrives as " 01:00"
    except ValueError:
        raise ApiError(400, f"{name} must be an ISO 8601 time, e.g. 2026-11-21T10:00:00Z") from None
    value = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    try:
        value.astimezone(UTC)
    except OverflowError:
        raise ApiError(400, f"{name} is out of range: it is no time in UTC from year 1 to 9999") from None
    if earliest is not None and value < earliest:
        raise ApiError(400, f"{name} must not be before {earliest.isoformat().replace('+00:00', 'Z')}")
    return value


# --- the caller and its request ---------------------------------------------------------------


def principal(call: Call) -> Principal:
    assert call.principal is not None, "an authenticated route always has a principal"
    return call.principal


def now() -> datetime:
    return datetime.now(UTC)


def actor(call: Call) -> str:
    return f"api:{principal(call).name}"


def usd(value: Decimal) -> str:
    """A decimal string without exponent (``0.0000025``, not ``2.5E-6``)."""
    return format(value, "f")


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not allowed in JSON")


def body(call: Call, model: type[M]) -> M:
    """The request's JSON body validated by ``model`` (an empty body is ``{}``). Numbers are read as exact
    decimals. Anything else is a 400 whose reason and details list every validation error."""
    raw = call.request.get_data(cache=True)
    if len(raw) > MAX_BODY_BYTES:
        raise ApiError(400, f"the request body is larger than {MAX_BODY_BYTES} bytes")
    try:
        data = json.loads(raw, parse_float=Decimal, parse_constant=_no_constants) if raw.strip() else {}
    except (ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ApiError(400, "the request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise ApiError(400, "the request body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        details = [
            {"loc": ".".join(str(part) for part in error["loc"]), "msg": error["msg"], "type": error["type"]}
            for error in exc.errors(include_url=False, include_context=False, include_input=False)
        ]
        listed = "; ".join(f"{d['loc']}: {d['msg']}" if d["loc"] else d["msg"] for d in details)
        raise ApiError(400, f"invalid request body: {listed}", details=details) from None


def operator(call: Call) -> agent_controls.Actor:
    """The caller as an actor of shared.services.agent_controls: its key name, this request's id, its tenant scope."""
    caller = principal(call)
    scope = None if caller.tenant is None else frozenset({caller.tenant})
    return agent_controls.Actor(actor(call), call.request_id or uuid.uuid4().hex, scope)


def audit(
    call: Call, action: str, target: str, tenant: str | None, details: dict[str, Any], at: datetime
) -> AuditEntry:
    """The audit entry of a change the caller made."""
    return agent_controls.audit_entry(operator(call), action, target, tenant, details, at)
