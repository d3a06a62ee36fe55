"""The console's Alerts page without processes: the stores monkeypatched, the API's handlers called
in-process for real (roles, tenant scope, audit). The browser tests are tests/integration/test_console_alerts.py."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import flask
import pytest

from shared.console import app, session
from shared.domain.api_keys import Role
from shared.store import api_keys
from shared.store import audit as audit_store
from shared.store import episodes as episode_store
from shared.store import silences as silence_store
from shared.store.api_keys import Principal

T0 = datetime(2026, 12, 6, 10, 0, tzinfo=UTC)
OPERATOR = Principal("00000000000000cc", "acme-operator", Role.OPERATOR, "acme")
VIEWER = Principal("00000000000000bb", "acme-viewer", Role.VIEWER, "acme")
TOKENS = {"operator-token": OPERATOR, "viewer-token": VIEWER}
APP = flask.Flask(__name__)
EPISODE_ID = "agent-a1.error_rate.1"


def _episode(**kw: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "id": EPISODE_ID,
        "rule": "error_rate",
        "severity": "warning",
        "state": "open",
        "tenant": "acme",
        "agent_id": "agent-a1",
        "summary": "<script>window.__xss=1</script> error rate 50%",
        "opened_at": T0,
    }
    row.update(kw)
    return row


@pytest.fixture
def world(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    state: dict[str, Any] = {"episodes": [_episode(), _episode(id="g.error_rate.1", tenant="globex")], "audit": []}

    def list_episodes(**kw: Any) -> list[dict[str, Any]]:
        wanted = {k: v for k, v in kw.items() if k != "limit" and v is not None}
        return [e for e in state["episodes"] if all(e.get(k) == v for k, v in wanted.items())]

    def get(episode_id: str) -> dict[str, Any] | None:
        return next((e for e in state["episodes"] if e["id"] == episode_id), None)

    def acknowledge(episode_id: str, user: str, at: datetime) -> str | None:
        found = get(episode_id)
        assert found is not None
        earlier = found.get("acknowledged_by")
        if earlier is None:
            found.update(acknowledged_by=user, acknowledged_at=at)
        return earlier

    monkeypatch.setattr(episode_store, "list_episodes", list_episodes)
    monkeypatch.setattr(episode_store, "get", get)
    monkeypatch.setattr(episode_store, "acknowledge", acknowledge)
    monkeypatch.setattr(silence_store, "active", lambda now: [])
    monkeypatch.setattr(audit_store, "append", lambda entry: state["audit"].append(entry))
    monkeypatch.setattr(api_keys, "verify", lambda token: TOKENS.get(token))
    return state


def _call(path: str, token: str, method: str = "GET", **headers: str) -> flask.Response:
    headers["Cookie"] = f"{session.COOKIE}={token}"
    with APP.test_request_context(path, method=method, base_url="http://127.0.0.1:8080", headers=headers):
        return app.handle(flask.request)


def test_the_page_lists_the_tenants_open_episodes_escaped(world: dict[str, Any]) -> None:
    response = _call("/alerts", "viewer-token")
    body = response.get_data(as_text=True)
    assert response.status_code == 200
    assert f'data-episode-id="{EPISODE_ID}"' in body and "g.error_rate.1" not in body
    assert "<script>window" not in body and "&lt;script&gt;window.__xss=1&lt;/script&gt;" in body
    assert f'action="/alerts/{EPISODE_ID}/ack"' in body and "No active silences." in body


def test_an_operator_acknowledges_and_goes_back(world: dict[str, Any]) -> None:
    response = _call(f"/alerts/{EPISODE_ID}/ack", "operator-token", "POST", **{"Sec-Fetch-Site": "same-origin"})
    assert response.status_code == 303 and response.headers["Location"] == "/alerts"
    assert world["episodes"][0]["acknowledged_by"] == "api:acme-operator"
    assert [(e.action, e.target) for e in world["audit"]] == [("alert.acknowledge", EPISODE_ID)]
    page = _call("/alerts", "operator-token").get_data(as_text=True)
    assert "api:acme-operator" in page and f'action="/alerts/{EPISODE_ID}/ack"' not in page


def test_a_viewer_is_refused_on_the_page_and_audited(world: dict[str, Any]) -> None:
    response = _call(f"/alerts/{EPISODE_ID}/ack", "viewer-token", "POST")
    body = response.get_data(as_text=True)
    assert response.status_code == 403
    assert "Could not acknowledge" in body and "viewer" in body
    assert world["episodes"][0].get("acknowledged_by") is None
    assert [(e.action, e.outcome) for e in world["audit"]] == [("api.acknowledge_alert", "refused")]


def test_another_tenants_episode_is_not_found_and_cross_site_posts_are_refused(world: dict[str, Any]) -> None:
    response = _call("/alerts/g.error_rate.1/ack", "operator-token", "POST")
    assert response.status_code == 404 and "not found" in response.get_data(as_text=True)
    assert world["episodes"][1].get("acknowledged_by") is None
    crossed = _call(f"/alerts/{EPISODE_ID}/ack", "operator-token", "POST", **{"Sec-Fetch-Site": "cross-site"})
    assert crossed.status_code == 403 and world["episodes"][0].get("acknowledged_by") is None
