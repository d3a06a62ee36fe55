"""The web console without processes: flask test request contexts, the key check and the stores
monkeypatched. The browser tests (tests/integration/test_console.py) drive it for real."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import flask
import pytest
from werkzeug.datastructures import MultiDict

from shared.console import app, fleet, session
from shared.domain.agent_record import AgentRecord
from shared.domain.api_keys import Role
from shared.domain.audit import AuditEntry
from shared.domain.usage import Totals
from shared.store import agents as agent_store
from shared.store import api_keys, usage_today
from shared.store import audit as audit_store
from shared.store import episodes as episode_store
from shared.store.api_keys import Principal

T0 = datetime(2026, 12, 6, 10, 0, tzinfo=UTC)
ADMIN = Principal("00000000000000aa", "admin", Role.ADMIN, None)
ACME = Principal("00000000000000bb", "acme-viewer", Role.VIEWER, "acme")
SCRAPER = Principal("00000000000000cc", "prometheus", Role.SCRAPE, None)
VIEWER = Principal("00000000000000dd", "fleet-viewer", Role.VIEWER, None)
TOKENS = {"admin-token": ADMIN, "acme-token": ACME, "scrape-token": SCRAPER, "viewer-token": VIEWER}
APP = flask.Flask(__name__)


def _record(agent_id: str, tenant: str, **kw: Any) -> AgentRecord:
    data: dict[str, Any] = {
        "agent_id": agent_id,
        "tenant": tenant,
        "name": agent_id.upper(),
        "agent_type": "llm",
        "version": "1.0.0",
        "owner": "team",
        "status_since": T0,
        "registered_at": T0,
        "last_registered_at": T0,
        "capabilities": ["chat"],
        "labels": {"team": "search"},
    }
    data.update(kw)
    return AgentRecord.model_validate(data)


AGENTS = [
    _record("agent-a1", "acme", name="<script>window.__xss=1</script>", health={"score": 70}),
    _record("agent-a2", "acme", agent_type="batch", capabilities=["embed"], labels={"team": "ops"}, version="2.0.0"),
    _record("agent-g1", "globex"),
]


@pytest.fixture(autouse=True)
def stores(monkeypatch: pytest.MonkeyPatch) -> None:
    def list_agents(*, tenant: str | None, status: str | None, page_size: int, after: str | None) -> Any:
        return [a for a in AGENTS if tenant in (None, a.tenant) and status in (None, a.status.value)], None

    def today(agent_ids: list[str], now: datetime) -> dict[str, Totals]:
        return {a: Totals(usd_nanos=1_500_000_000 if a == "agent-a1" else 0) for a in agent_ids}

    monkeypatch.setattr(agent_store, "list_agents", list_agents)
    monkeypatch.setattr(usage_today, "agents_today", today)
    monkeypatch.setattr(api_keys, "verify", lambda token: TOKENS.get(token))
    monkeypatch.setattr(episode_store, "list_episodes", lambda **query: [])  # no open fleet_health episode


def _call(path: str, method: str = "GET", token: str | None = None, **kw: Any) -> flask.Response:
    headers = dict(kw.pop("headers", {}))
    if token is not None:
        headers["Cookie"] = f"{session.COOKIE}={token}"
    with APP.test_request_context(path, method=method, base_url="http://127.0.0.1:8080", headers=headers, **kw):
        return app.handle(flask.request)


def test_every_response_carries_the_security_headers() -> None:
    for path, token in (("/sign-in", None), ("/", None), ("/", "admin-token"), ("/nowhere", None), ("/assets/x", None)):
        response = _call(path, token=token)
        assert response.headers["Content-Security-Policy"] == app.CSP
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["Referrer-Policy"] == "no-referrer"


def test_without_a_valid_session_pages_redirect_to_sign_in() -> None:
    for path in ("/", "/fragments/fleet", "/alerts"):
        response = _call(path)
        assert response.status_code == 303 and response.headers["Location"] == "/sign-in"
    revoked = _call("/", token="revoked-token")
    assert revoked.headers["Location"] == "/sign-in"
    assert f"{session.COOKIE}=;" in revoked.headers["Set-Cookie"]  # the dead key is forgotten


def test_sign_in_sets_a_session_cookie_and_a_wrong_key_is_refused() -> None:
    response = _call("/sign-in", "POST", data={"key": "admin-token"})
    assert response.status_code == 303 and response.headers["Location"] == "/"
    cookie = response.headers["Set-Cookie"]
    assert cookie.startswith(f"{session.COOKIE}=admin-token;")
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert "Expires" not in cookie and "Max-Age" not in cookie
    assert "Secure" not in cookie  # a loopback host: plain HTTP
    wrong = _call("/sign-in", "POST", data={"key": "nope"})
    assert wrong.status_code == 401 and "invalid or revoked" in wrong.get_data(as_text=True)
    assert "Set-Cookie" not in wrong.headers


def test_the_cookie_is_secure_away_from_loopback() -> None:
    with APP.test_request_context("/sign-in", method="POST", base_url="https://console.example.com"):
        response = flask.Response()
        session.sign_in(response, flask.request, "admin-token")
    assert "Secure" in response.headers["Set-Cookie"]


def test_the_cookie_is_always_secure_in_cloud_run(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("K_SERVICE", "fleet-console")  # Cloud Run sets it; a Host header cannot
    with APP.test_request_context("/sign-in", method="POST", base_url="http://localhost:8080"):
        response = flask.Response()
        session.sign_in(response, flask.request, "admin-token")
    assert "Secure" in response.headers["Set-Cookie"]


def test_cross_site_posts_are_refused() -> None:
    for headers in ({"Sec-Fetch-Site": "cross-site"}, {"Origin": "https://evil.example"}):
        assert _call("/sign-in", "POST", data={"key": "admin-token"}, headers=headers).status_code == 403
    same = {"Sec-Fetch-Site": "same-origin", "Origin": "null"}
    assert _call("/sign-out", "POST", headers=same).status_code == 303


def test_the_fleet_page_escapes_what_agents_report() -> None:
    body = _call("/", token="admin-token").get_data(as_text=True)
    assert "<script>window" not in body
    assert "&lt;script&gt;window.__xss=1&lt;/script&gt;" in body
    assert "1.5" in body and ">70<" in body  # spend today, security score
    assert '<script src="/assets/console.js" defer></script>' in body


def test_a_scoped_key_sees_only_its_tenant() -> None:
    body = _call("/?tenant=globex", token="acme-token").get_data(as_text=True)
    assert "agent-a1" in body and "agent-g1" not in body
    assert "only sees tenant acme" in body
    assert "agent-g1" in _call("/fragments/fleet", token="admin-token").get_data(as_text=True)


@pytest.mark.parametrize(
    ("query", "shown"),
    [
        ({"type": "batch"}, {"agent-a2"}),
        ({"capability": "chat"}, {"agent-a1", "agent-g1"}),
        ({"label": "team=ops"}, {"agent-a2"}),
        ({"label": "team"}, {"agent-a1", "agent-a2", "agent-g1"}),
        ({"version": "2.0.0"}, {"agent-a2"}),
        ({"tenant": "globex"}, {"agent-g1"}),
        ({"status": "bogus"}, {"agent-a1", "agent-a2", "agent-g1"}),
    ],
)
def test_filters(query: dict[str, str], shown: set[str]) -> None:
    data = fleet.load(ADMIN, MultiDict(query))
    assert {r.agent_id for r in data.rows} == shown


def test_static_files_are_served_by_name_only() -> None:
    assert _call("/assets/console.js").mimetype == "text/javascript"
    assert _call("/assets/console.css").mimetype == "text/css"
    assert _call("/assets/../app.py").status_code == 404
    assert _call("/assets/app.py").status_code == 404


def test_a_scrape_key_cannot_sign_in_and_is_audited(monkeypatch: pytest.MonkeyPatch) -> None:
    audit: list[AuditEntry] = []
    monkeypatch.setattr(audit_store, "append", audit.append)
    response = _call("/sign-in", "POST", data={"key": "scrape-token"})
    assert response.status_code == 403 and "cannot sign in" in response.get_data(as_text=True)
    assert "Set-Cookie" not in response.headers
    [entry] = audit
    assert (entry.action, entry.actor, entry.outcome) == ("console.sign_in", "console:prometheus", "refused")
    assert entry.details["role"] == "scrape" and entry.details["needs"] == "viewer"
    assert response.headers["X-Request-Id"] in entry.id


#: Every signed-in page and action of the console: (method, path).
SIGNED = [
    *app.SIGNED,
    *((m, prefix + "agent-a1") for m, prefix in app.SIGNED_PREFIXES),
    ("POST", "/alerts/budget.acme.day/ack"),
]


@pytest.mark.parametrize(("method", "path"), SIGNED)
def test_a_signed_in_scrape_key_goes_back_to_sign_in_having_read_nothing(
    method: str, path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    audit: list[AuditEntry] = []
    monkeypatch.setattr(audit_store, "append", audit.append)
    read: list[str] = []
    monkeypatch.setattr(agent_store, "list_agents", lambda **kw: read.append("agents") or ([], None))
    monkeypatch.setattr(usage_today, "agents_today", lambda ids, now: read.append("usage") or {})
    monkeypatch.setattr(episode_store, "list_episodes", lambda **query: read.append("episodes") or [])
    response = _call(path, method, token="scrape-token")
    assert response.status_code == 303 and response.headers["Location"] == "/sign-in"
    assert f"{session.COOKIE}=;" in response.headers["Set-Cookie"]  # the session is forgotten
    assert read == []
    [entry] = audit
    assert (entry.action, entry.outcome, entry.target) == ("console.session", "refused", path)
    # A viewer's session is served (the check refuses the role, not every key), and audits nothing.
    assert _call("/", token="acme-token").status_code == 200 and len(audit) == 1
