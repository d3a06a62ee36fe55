"""The REST API's frame: errors, routes, pagination, query parameters and request bodies.

shared/api/router.py (the agents, costs, alerts, approvals and reports routes) and the route modules of
other areas (shared/api/jobs.py) build on it; the dispatcher and the OpenAPI document live in
shared/api/router.py, which joins every area's routes into one table.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, TypeVar

import flask
from fleet_agent.contracts import AGENT_ID_PATTERN
from pydantic import BaseModel, ValidationError

from shared.domain.api_keys import Role
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
_TRACE = re.compile(r"^[0-9a-fA-F]{32}$")

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
    method: str = "GET"
    #: The JSON body the route takes (PUT/POST), validated by the view with :func:`_body`.
    request: type[BaseModel] | None = None


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


def _now() -> datetime:
    return datetime.now(UTC)


def _actor(call: Call) -> str:
    return f"api:{_principal(call).name}"


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not allowed in JSON")


def _body(call: Call, model: type[M]) -> M:
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
    principal = _principal(call)
    scope = None if principal.tenant is None else frozenset({principal.tenant})
    return agent_controls.Actor(_actor(call), call.request_id or uuid.uuid4().hex, scope)
