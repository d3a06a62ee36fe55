"""The REST API's OpenAPI 3.1 document, built from the route table (shared/api/router.py) and the
pydantic models of the bodies (shared/api/bodies/), so the document cannot drift from what is served."""

from __future__ import annotations

import re
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic.json_schema import models_json_schema

from shared.api.bodies import MODELS, REQUEST_MODELS
from shared.api.core import Route

_REF = "#/components/schemas/{model}"

_ERROR_RESPONSES: dict[int, tuple[str, str, dict[str, Any]]] = {
    400: (
        "BadRequest",
        "A query parameter, page token or path name is invalid, or the request body is (error.details lists "
        "every validation error).",
        {},
    ),
    401: (
        "Unauthorized",
        "Missing, malformed, unknown or revoked API key.",
        {"WWW-Authenticate": {"schema": {"type": "string"}, "description": "Bearer"}},
    ),
    403: ("Forbidden", "The API key may not do this (tenant scope or role).", {}),
    404: ("NotFound", "No such route, or no such agent or tenant visible to this API key.", {}),
    405: (
        "MethodNotAllowed",
        "The method is not served on this path.",
        {"Allow": {"schema": {"type": "string"}, "description": "The allowed methods."}},
    ),
    409: ("Conflict", "The agent's state does not allow this (e.g. resuming an agent that is not paused).", {}),
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
    try:
        return version("agent-fleet-manager")
    except PackageNotFoundError:
        return "0.0.0"


def _accepts_empty(model: type[BaseModel]) -> bool:
    """Whether the body may be left out (an empty body is read as ``{}``)."""
    try:
        model.model_validate({})
    except ValidationError:
        return False
    return True


def _operation(route: Route, refs: dict[Any, Any]) -> dict[str, Any]:
    statuses = set(route.errors) | {405, 500}
    if route.auth:
        statuses |= {401, 403, 503}
    ok_schema = dict(refs[(route.response, "serialization")]) if route.response else {"type": "object"}
    if route.media_type != "application/json":
        ok_schema = {"type": "string"}
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
            str(route.status): {
                "description": "Created" if route.status == 201 else "OK",
                "content": {route.media_type: {"schema": ok_schema}},
            },
            **{
                str(status): {"$ref": f"#/components/responses/{_ERROR_RESPONSES[status][0]}"}
                for status in sorted(statuses)
            },
        },
        "security": [{"bearerAuth": []}] if route.auth else [],
    }
    if route.auth:
        operation["description"] = f"Needs an API key with the {route.role.value} role (or above)."
    if route.request is not None:
        operation["requestBody"] = {
            "required": not _accepts_empty(route.request),
            "content": {"application/json": {"schema": dict(refs[(route.request, "validation")])}},
        }
    return operation


def document(routes: Sequence[Route]) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``routes`` (the route table) and the pydantic models."""
    # Responses as they are serialised, request bodies as they are validated (what is accepted).
    responses_ = dict.fromkeys([*MODELS, *(r.response for r in routes if r.response)])
    requests_ = dict.fromkeys([*REQUEST_MODELS, *(r.request for r in routes if r.request)])
    refs, top = models_json_schema(
        [(model, "serialization") for model in responses_] + [(model, "validation") for model in requests_],
        ref_template=_REF,
    )
    schemas: dict[str, Any] = top.get("$defs", {})
    error_ref = {"$ref": _REF.format(model="ErrorBody")}
    responses = {
        name: {"description": description, "content": {"application/json": {"schema": error_ref}}}
        | ({"headers": headers} if headers else {})
        for name, description, headers in _ERROR_RESPONSES.values()
    }
    paths: dict[str, Any] = {}
    for route in routes:
        paths.setdefault(_openapi_path(route.rule), {})[route.method.lower()] = _operation(route, refs)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Agent Fleet Manager API",
            "version": _version(),
            "description": "The fleet: agents, their heartbeat history, rejected events, and their costs "
            "(usage, budgets, protection thresholds, prices, pauses, alerts). "
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
