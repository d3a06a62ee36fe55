"""Who sees the deployment's ``fleet_health`` episodes (tenant ``_fleet``) through GET /v1/alerts: any key
that sees every tenant (a viewer is enough), never a tenant's key. The stores are monkeypatched."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import flask
import pytest

from shared.api import core, router
from shared.domain import fleet_health
from shared.domain.api_keys import Role
from shared.store import api_keys
from shared.store import episodes as episode_store
from shared.store.api_keys import Principal

T0 = datetime(2026, 12, 6, 16, 0, tzinfo=UTC)
KEYS = {
    "fleet-viewer": Principal("00000000000000a1", "fleet-viewer", Role.VIEWER, None),
    "acme-admin": Principal("00000000000000a2", "acme-admin", Role.ADMIN, "acme"),
}
OPEN = {
    "id": "t._fleet.fleet_health.dead_letters.1",
    "rule": fleet_health.RULE,
    "title": "Fleet health",
    "tenant": fleet_health.TENANT,
    "agent_id": None,
    "severity": "high",
    "state": "open",
    "summary": "12 messages dead-lettered in the last hour",
    "details": {"kind": "dead_letters"},
    "opened_at": T0,
}
APP = flask.Flask(__name__)


@pytest.fixture(autouse=True)
def stores(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    asked: list[dict[str, Any]] = []

    def list_episodes(**query: Any) -> list[dict[str, Any]]:
        asked.append(query)
        return [OPEN] if query.get("tenant") in (None, fleet_health.TENANT) else []

    monkeypatch.setattr(api_keys, "verify", KEYS.get)
    monkeypatch.setattr(core, "now", lambda: T0)
    monkeypatch.setattr(episode_store, "list_episodes", list_episodes)
    monkeypatch.setattr(episode_store, "get", lambda episode_id: OPEN if episode_id == OPEN["id"] else None)
    return asked


def get(path: str, key: str, **query: Any) -> flask.Response:
    with APP.test_request_context(path, headers={"Authorization": f"Bearer {key}"}, query_string=query):
        return router.handle(flask.request)


def test_a_key_that_sees_every_tenant_sees_them_a_viewer_is_enough(stores: list[dict[str, Any]]) -> None:
    listed = get("/v1/alerts", "fleet-viewer", rule="fleet_health", state="open")
    assert listed.status_code == 200 and [a["id"] for a in listed.get_json()["items"]] == [OPEN["id"]]
    assert get(f"/v1/alerts/{OPEN['id']}", "fleet-viewer").get_json()["tenant"] == "_fleet"


def test_a_tenant_key_never_sees_them_even_an_admin(stores: list[dict[str, Any]]) -> None:
    listed = get("/v1/alerts", "acme-admin", rule="fleet_health", state="open")
    assert listed.status_code == 200 and listed.get_json()["items"] == []
    assert [q["tenant"] for q in stores] == ["acme"]  # the query itself is its tenant's
    assert get(f"/v1/alerts/{OPEN['id']}", "acme-admin").status_code == 404
    assert get("/v1/alerts", "acme-admin", tenant="_fleet").status_code in (400, 403)
