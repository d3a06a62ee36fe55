"""The console's Approvals page without processes: the approvals store monkeypatched, the API's list handler
called in-process for real (tenant scope). The browser test is tests/integration/test_console_approvals.py."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import flask
import pytest

from shared.console import app, approvals_page, session
from shared.console.api_calls import Answer
from shared.domain.api_keys import Role
from shared.domain.approvals import Approval, Kind, Requester, State
from shared.store import api_keys
from shared.store import approvals as approval_store
from shared.store.api_keys import Principal

T0 = datetime(2026, 12, 6, 10, 0, tzinfo=UTC)
VIEWER = Principal("00000000000000bb", "acme-viewer", Role.VIEWER, "acme")
APP = flask.Flask(__name__)
#: load() passes the request on to call_api, which a test replaces.
APP_REQUEST: Any = None


def _approval(approval_id: str, tenant: str = "acme", state: State = State.PENDING, **kw: Any) -> Approval:
    return Approval(
        id=approval_id,
        tenant=tenant,
        kind=Kind.OPERATION,
        requester=Requester(kind="slack", id="U123"),
        summary="<script>window.__xss=1</script> re-index",
        created_at=T0,
        expires_at=T0 + timedelta(hours=1),
        state=state,
        **kw,
    )


@pytest.fixture
def world(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    rows = [
        _approval("apr-pending"),
        _approval("apr-approved", state=State.APPROVED, decided_by="U999", decided_at=T0, applied="ran"),
        _approval("apr-globex", tenant="globex"),
    ]
    calls: list[dict[str, Any]] = []

    def list_approvals(**kw: Any) -> list[Approval]:
        calls.append(kw)
        return [
            a
            for a in rows
            if (kw.get("tenant") is None or a.tenant == kw["tenant"])
            and (kw.get("state") is None or a.state.value == kw["state"])
        ]

    monkeypatch.setattr(approval_store, "list_approvals", list_approvals)
    monkeypatch.setattr(api_keys, "verify", lambda token: VIEWER if token == "viewer-token" else None)
    return calls


def _get(path: str, token: str) -> flask.Response:
    headers = {"Cookie": f"{session.COOKIE}={token}"}
    with APP.test_request_context(path, base_url="http://127.0.0.1:8080", headers=headers):
        return app.handle(flask.request)


def test_the_page_lists_the_tenants_approvals_read_only_and_escaped(world: list[dict[str, Any]]) -> None:
    response = _get("/approvals", "viewer-token")
    body = response.get_data(as_text=True)
    assert response.status_code == 200
    assert 'data-approval-id="apr-pending"' in body and 'data-approval-id="apr-approved"' in body
    assert "apr-globex" not in body
    assert all(call["tenant"] == "acme" for call in world)
    assert "<script>window.__xss" not in body and "&lt;script&gt;" in body
    assert "Approve or deny in Slack" in body
    main = body.split("<main>", 1)[1]
    assert "<form" not in main and "<button" not in main
    pending = body.split('id="pending-rows"', 1)[1].split("</tbody>", 1)[0]
    assert "apr-pending" in pending and "apr-approved" not in pending


def test_without_a_session_the_page_redirects_to_sign_in(world: list[dict[str, Any]]) -> None:
    response = _get("/approvals", "unknown")
    assert response.status_code == 303 and response.headers["Location"] == "/sign-in"


def test_decided_states_are_asked_for_so_pending_ones_are_read_once(world: list[dict[str, Any]]) -> None:
    body = _get("/approvals", "viewer-token").get_data(as_text=True)
    assert [call["state"] for call in world] == ["pending", "approved", "denied", "expired"]
    assert all(call["limit"] == approvals_page.LIMIT for call in world)
    recent = body.split('id="recent-rows"', 1)[1].split("</tbody>", 1)[0]
    assert "apr-approved" in recent and "apr-pending" not in recent
    assert "Only the newest" not in body


def test_lists_cut_at_their_limit_say_so(world: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(approvals_page, "LIMIT", 1)
    body = _get("/approvals", "viewer-token").get_data(as_text=True)
    assert "Only the newest 1 pending approvals are shown." in body
    assert "Only the newest 1 decided approvals are shown." in body


def test_decided_ones_newest_first_at_most_the_limit_and_times_in_utc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(approvals_page, "LIMIT", 2)
    local = "2026-12-06T12:30:00+02:00"
    by_state = {
        "approved": [{"id": "apr-a", "state": "approved", "created_at": "2026-12-06T09:00:00Z"}],
        "denied": [{"id": "apr-d", "state": "denied", "created_at": local, "decided_at": local}],
        "expired": [{"id": "apr-e", "state": "expired", "created_at": "2026-12-05T09:00:00Z"}],
    }

    def call_api(request: Any, method: str, path: str, body: Any = None) -> Answer:
        state = path.split("state=", 1)[1].split("&", 1)[0]
        return Answer(200, {"items": by_state.get(state, [])})

    monkeypatch.setattr(approvals_page, "call_api", call_api)
    data = approvals_page.load(APP_REQUEST)
    assert [r.id for r in data.recent] == ["apr-d", "apr-a"] and data.pending == []
    assert data.recent[0].decided_at == datetime(2026, 12, 6, 10, 30, tzinfo=UTC)
    assert data.notes == ["Only the newest 2 decided approvals are shown."]
    html = app.render("approvals.html", principal=VIEWER, approvals=data, active="/approvals")
    assert "2026-12-06 10:30:00 UTC" in html.get_data(as_text=True)
