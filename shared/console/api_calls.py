"""The console's calls to the REST API: its own handlers, in-process, with the session's key as the bearer
token (shared/api/router.serve_within), so every page gets exactly what the API would answer that key: the
same role checks, tenant scope and audit entries (a refused call is audited by the API's dispatcher as
``api.<endpoint>``, outcome ``refused``). The call logs no line of its own: the console's one line per request
counts every Firestore read the page made.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import flask
from werkzeug.datastructures import Headers
from werkzeug.test import EnvironBuilder

from shared.api import router
from shared.console import session


@dataclass(frozen=True)
class Answer:
    """The API's answer to one in-process call."""

    status: int
    body: dict[str, Any]

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def reason(self) -> str:
        error = self.body.get("error")
        if isinstance(error, dict):
            return str(error.get("reason") or error.get("message") or "refused")
        return str(self.body.get("reason") or error or f"the API answered {self.status}")


def call_api(request: flask.Request, method: str, path: str, body: dict[str, Any] | None = None) -> Answer:
    """Call the REST API's handler in-process as the session's key (its bearer token)."""
    token = request.cookies.get(session.COOKIE, "")
    builder = EnvironBuilder(
        path=path,
        method=method,
        headers=Headers({"Authorization": f"Bearer {token}"}),
        data=json.dumps(body) if body is not None else None,
        content_type="application/json" if body is not None else None,
    )
    try:
        inner = flask.Request(builder.get_environ())
        response = router.serve_within(inner, str(request.environ.get(session.REQUEST_ID, "")) or "in-process")
    finally:
        builder.close()
    try:
        data = json.loads(response.get_data(as_text=True) or "{}")
    except ValueError:
        data = {}
    return Answer(response.status_code, data if isinstance(data, dict) else {})
