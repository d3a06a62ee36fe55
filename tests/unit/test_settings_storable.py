"""Tenant settings Firestore could not store are a 400 with the reason, never a 500 on the write.

Schemathesis found two: an alerting ``repeat_every_s`` beyond a 64-bit integer, and a health
``score_costs`` with an empty key (Firestore refuses both when the document is written).
"""

from __future__ import annotations

import json
from typing import Any

import flask
import pytest

from shared.api import router, settings
from shared.store import api_keys, db
from tests.unit.test_http_api import ADMIN_TOKEN, PRINCIPALS

APP = flask.Flask(__name__)


def put(path: str, body: dict[str, Any]) -> flask.Response:
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}", "Content-Type": "application/json"}
    with APP.test_request_context(path, method="PUT", headers=headers, data=json.dumps(body)):
        return router.handle(flask.request)


@pytest.fixture
def written(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    writes: list[dict[str, Any]] = []
    monkeypatch.setattr(api_keys, "verify", PRINCIPALS.get)
    monkeypatch.setattr(settings, "write_tenant", lambda tenant, fields, entry: writes.append(fields))
    return writes


@pytest.mark.parametrize(
    ("kind", "body", "where"),
    [
        ("alerting", {"repeat_every_s": {"high": 2681904036538342178816}}, "repeat_every_s.high"),
        ("health", {"score_costs": {"": 1}}, "score_costs"),
    ],
)
def test_settings_firestore_cannot_store_are_400(written: list[Any], kind: str, body: Any, where: str) -> None:
    response = put(f"/v1/tenants/acme/{kind}", body)
    assert response.status_code == 400, response.get_data(as_text=True)
    reason = response.get_json()["error"]["reason"]
    assert reason.startswith(f"invalid {kind} settings: {where}")
    assert written == []


def test_what_firestore_refuses_is_named_with_its_path() -> None:
    assert db.unstorable({"a": {"b": [1, 2**63]}}) == "a.b[1]: 9223372036854775808 is outside a 64-bit integer"
    assert db.unstorable({"a": {"": True}}) == "a: a map key must be a non-empty string"
    assert db.unstorable({"a": -(2**63), "b": 2**63 - 1, "c": [None, "x", 1.5, {"d": False}]}) is None
