"""The console's agent page without processes: its in-process API calls (call_api) are answered by a fake
that serves the API's JSON and records each path and query, the key check is monkeypatched; the page
renders every panel, escapes, asks the API for only what it shows, and answers 404 for an agent the key may
not see. One test goes through the real router (stores stubbed): the agent is read once for the whole page.
The browser test is tests/integration/test_console_agent.py."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import flask
import pytest

from shared.console import agent_page, api_calls, app, session
from shared.console.api_calls import Answer
from shared.domain.api_keys import Role
from shared.store import agents as agent_store
from shared.store import api_keys
from shared.store import audit as audit_store
from shared.store import episodes as episode_store
from shared.store import leases as lease_store
from shared.store import usage as usage_store
from shared.store.api_keys import Principal
from tests.unit.test_console import _record

NOW = datetime.now(UTC).replace(microsecond=0)
ADMIN = Principal("00000000000000aa", "admin", Role.ADMIN, None)
GLOBEX = Principal("00000000000000cc", "globex-viewer", Role.VIEWER, "globex")
TOKENS = {"admin-token": ADMIN, "globex-token": GLOBEX}
APP = flask.Flask(__name__)
XSS = "<script>window.__xss=1</script>"
RESETS = (NOW + timedelta(hours=1)).replace(minute=0, second=0)


def _iso(at: datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")


AGENT = {
    "agent_id": "agent-a1",
    "tenant": "acme",
    "name": XSS,
    "agent_type": "llm",
    "version": "1.1.0",
    "versions": ["1.0.0", "1.1.0"],
    "owner": "team",
    "capabilities": ["chat"],
    "labels": {"team": "search"},
    "status": "paused",
    "status_since": _iso(NOW - timedelta(minutes=5)),
    "last_heartbeat_at": _iso(NOW - timedelta(seconds=30)),
    "identity": {"status": "unsigned", "key_id": None},
    "learned": {"status": "normal", "reason": None},
    "liveness": "ok",
    "security_score": 88.0,
    "pending_commands": [{"command_id": "c1", "command": "drain", "state": "sent", "reason": XSS}],
}
HISTORY = {
    "agent_id": "agent-a1",
    "samples": [
        {
            "at": _iso(NOW - timedelta(minutes=3 - n)),
            "status": "ok",
            "metrics": {"cpu_pct": 10.0 + n, "error_rate": 0.01},
        }
        for n in range(3)
    ],
}
USAGE = {
    "agent_id": "agent-a1",
    "tenant": "acme",
    "periods": {
        name: {
            "period": key,
            "spend_usd": "0.03",
            "budget_usd": "1",
            "remaining_usd": "0.97",
            "calls": 3,
            "resets_at": _iso(RESETS),
        }
        for name, key in (("hour", "2026-12-06T10"), ("day", "2026-12-06"), ("month", "2026-12"))
    },
    "holds": {"pause": {"command": "pause", "reason": "maintenance <b>now</b>", "issued_at": _iso(NOW), "until": None}},
    "budget": None,
    "budget_source": None,
    "lease": None,
}


def _episode(n: int, state: str, hours_ago: float) -> dict[str, Any]:
    return {
        "id": f"e{n}",
        "agent_id": "agent-a1",
        "rule": "error_rate",
        "severity": "warning",
        "state": state,
        "title": "Error rate",
        "opened_at": _iso(NOW - timedelta(hours=hours_ago)),
        "message": f"too many errors {n}",
    }


#: An old open episode, then 30 newer resolved ones (newest first, as the API lists them).
EPISODES = [_episode(n, "resolved", n / 10) for n in range(1, 31)] + [_episode(99, "open", 48)]
AUDIT = [
    {"id": "x1", "at": _iso(NOW - timedelta(minutes=1)), "actor": "api:ops", "action": "agent.hold.pause",
     "target": "agent-a1", "outcome": "placed", "tenant": "acme", "details": {"reason": "maintenance <b>now</b>"}},
    {"id": "x2", "at": _iso(NOW - timedelta(minutes=2)), "actor": "agent:agent-a1", "action": "agent.transition",
     "target": "agent-a1", "outcome": "applied", "tenant": "acme", "details": {"from": "idle", "to": "busy"}},
    {"id": "x3", "at": _iso(NOW - timedelta(minutes=3)), "actor": "slack:U1", "action": "agent.hold.pause",
     "target": "agent-a1", "outcome": "lifted", "tenant": "acme", "details": {"reason": "done"}},
    {"id": "x4", "at": _iso(NOW - timedelta(minutes=4)), "actor": "agent:agent-a1", "action": "agent.key_rotate",
     "target": "agent-a1", "outcome": "rotated", "tenant": "acme", "details": {}},
]  # fmt: skip


class FakeApi:
    """call_api's stand-in: the API's answers by path, as the session's key may see them."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, str]]] = []
        self.audit_status = 200
        self.failing: set[str] = set()
        #: When set, /v1/audit answers these pages in turn (page_token = the index of the next one).
        self.audit_pages: list[list[dict[str, Any]]] | None = None

    def __call__(self, request: flask.Request, method: str, path: str, body: Any = None) -> Answer:
        url = urlsplit(path)
        query = dict(parse_qsl(url.query))
        self.calls.append((url.path, query))
        if url.path in self.failing:
            return Answer(503, {"error": {"code": "unavailable", "reason": "Firestore is unavailable; retry shortly"}})
        principal = TOKENS[request.cookies[session.COOKIE]]
        if url.path.startswith("/v1/agents/"):
            if url.path.split("/")[3] != "agent-a1" or not principal.can_see("acme"):
                return Answer(404, {"error": {"code": "not_found", "reason": "agent not found"}})
            bodies: dict[str, dict[str, Any]] = {"": AGENT, "/history": HISTORY, "/usage": USAGE}
            return Answer(200, bodies[url.path.removeprefix("/v1/agents/agent-a1")])
        if url.path == "/v1/alerts":
            items = [e for e in EPISODES if query.get("state") in (None, e["state"])]
            return Answer(200, {"items": items[: int(query["limit"])]})
        assert url.path == "/v1/audit", url.path
        if self.audit_status != 200:
            return Answer(self.audit_status, {"error": {"code": "forbidden", "reason": "this key's role cannot"}})
        if self.audit_pages is not None:
            at = int(query.get("page_token", "0"))
            token = str(at + 1) if at + 1 < len(self.audit_pages) else None
            return Answer(200, {"items": self.audit_pages[at], "next_page_token": token})
        return Answer(200, {"items": AUDIT[: int(query["limit"])]})


@pytest.fixture(autouse=True)
def api(monkeypatch: pytest.MonkeyPatch) -> FakeApi:
    fake = FakeApi()
    monkeypatch.setattr(agent_page, "call_api", fake)
    monkeypatch.setattr(api_keys, "verify", lambda token: TOKENS.get(token))
    return fake


def _get(path: str, token: str = "admin-token") -> flask.Response:
    with APP.test_request_context(path, headers={"Cookie": f"{session.COOKIE}={token}"}):
        return app.handle(flask.request)


def test_the_agent_page_shows_every_panel() -> None:
    response = _get("/agents/agent-a1")
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    for name in agent_page.agent_view.panel_names():
        assert f'id="panel-{name}"' in html
    assert html.count('<svg xmlns="http://www.w3.org/2000/svg" class="chart') == 2  # cpu and error rate
    assert 'data-period="hour"' in html and 'data-period="day"' in html and 'data-period="month"' in html
    assert html.count("$0.03") >= 3
    assert 'data-hold="pause"' in html and "until lifted" in html
    assert ' style="' not in html  # the CSP allows no inline style


def test_budget_resets_show_the_absolute_utc_time_beside_the_relative_one() -> None:
    html = _get("/agents/agent-a1").get_data(as_text=True)
    absolute = f"{RESETS:%Y-%m-%d %H:%M:%S} UTC"
    assert html.count(f'title="{absolute}"') == 3 and html.count(f'<small class="resets-at">{absolute}</small>') == 3


def test_the_commands_panel_lists_the_agents_commands_from_its_audit_entries(api: FakeApi) -> None:
    html = _get("/agents/agent-a1").get_data(as_text=True)
    assert ("/v1/audit", {"target": "agent-a1", "limit": str(agent_page.AUDIT_ENTRIES)}) in api.calls
    panel = html[html.index('id="panel-commands"') :]
    panel = panel[: panel.index("</section>")]
    rows = [part.split('"', 1)[0] for part in panel.split('data-command="')[1:]]
    assert rows == ["pause", "resume", "key_rotated"]  # newest first; the transition is no command
    assert "api:ops" in panel and "slack:U1" in panel and "placed" in panel and "lifted" in panel
    assert "maintenance &lt;b&gt;now&lt;/b&gt;" in panel


def test_a_key_the_audit_log_refuses_sees_a_note_not_a_failed_page(api: FakeApi) -> None:
    api.audit_status = 403
    response = _get("/agents/agent-a1")
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    assert 'id="panel-commands"' in html and "Not available to your role" in html and "data-command=" not in html
    assert 'id="panel-spend"' in html  # the rest of the page is there


def test_a_part_the_api_cannot_answer_leaves_a_note_and_the_rest_of_the_page(api: FakeApi) -> None:
    api.failing = {"/v1/agents/agent-a1/usage", "/v1/alerts"}
    response = _get("/agents/agent-a1")
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    assert "Spend and holds could not be read: Firestore is unavailable" in html
    assert 'id="panel-spend"' not in html and 'id="panel-holds"' not in html and 'id="panel-metrics"' in html
    assert "Alert episodes could not be read: Firestore is unavailable" in html
    api.failing = {"/v1/agents/agent-a1"}
    assert _get("/agents/agent-a1").status_code == 503  # the agent itself: the page cannot be shown


def test_the_page_asks_for_only_the_heartbeats_its_charts_show(api: FakeApi) -> None:
    _get("/agents/agent-a1")
    assert ("/v1/agents/agent-a1/history", {"limit": str(agent_page.HISTORY_SAMPLES)}) in api.calls


def test_an_old_open_episode_is_shown_beside_newer_resolved_ones(api: FakeApi) -> None:
    html = _get("/agents/agent-a1").get_data(as_text=True)
    opened = {"agent_id": "agent-a1", "state": "open", "limit": str(agent_page.OPEN_EPISODES)}
    recent = {"agent_id": "agent-a1", "limit": str(agent_page.agent_view.RECENT_EPISODES + 1)}
    assert [q for p, q in api.calls if p == "/v1/alerts"] == [opened, recent]
    open_list = html[html.index('<ul class="episodes open">') : html.index('<ul class="episodes recent">')]
    assert 'data-alert-id="e99"' in open_list and "too many errors 99" in open_list
    assert html.count('data-alert-id="e99"') == 1
    assert html.count("data-alert-id=") == 1 + agent_page.agent_view.RECENT_EPISODES


def test_what_agents_report_is_escaped() -> None:
    html = _get("/agents/agent-a1").get_data(as_text=True)
    assert XSS not in html and "&lt;script&gt;window.__xss=1&lt;/script&gt;" in html
    assert "maintenance &lt;b&gt;now&lt;/b&gt;" in html


def test_an_agent_the_key_may_not_see_is_not_found(api: FakeApi) -> None:
    assert _get("/agents/agent-a1", "globex-token").status_code == 404
    assert _get("/agents/nobody").status_code == 404
    assert _get("/agents/").status_code == 404


def test_an_agent_id_never_becomes_another_api_path_or_query(api: FakeApi) -> None:
    for path in ("/agents/agent-a1/history", "/agents/agent-a1%3Flimit%3D1", "/agents/..%2Fv1%2Faudit"):
        assert _get(path).status_code == 404
    assert api.calls == []


def test_without_a_session_the_agent_page_redirects_to_sign_in() -> None:
    response = _get("/agents/agent-a1", "")
    assert response.status_code == 303 and response.headers["Location"] == "/sign-in"


def test_the_fleet_table_links_each_agent_to_its_page() -> None:
    source = (app.HERE / "templates" / "fleet_rows.html").read_text()
    assert 'href="/agents/{{ row.agent_id | urlencode }}"' in source


def test_through_the_router_the_agent_is_read_once_and_the_keys_scope_applies(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The real call_api and router: six API calls, one read of the agent; another tenant's key: a 404."""
    monkeypatch.setattr(agent_page, "call_api", api_calls.call_api)
    reads: list[str] = []

    def read(agent_id: str) -> Any:
        reads.append(agent_id)
        return agent_store.Snapshot(_record("agent-a1", "acme"), None) if agent_id == "agent-a1" else None

    monkeypatch.setattr(agent_store, "read", read)
    monkeypatch.setattr(agent_store, "history", lambda agent_id, limit=None: [])
    monkeypatch.setattr(usage_store, "agent_periods", lambda agent_id, now: {})
    monkeypatch.setattr(
        lease_store, "read", lambda agent_id: lease_store.Snapshot(lease_store.parse(agent_id, None), None)
    )
    monkeypatch.setattr(episode_store, "list_episodes", lambda **query: [])
    monkeypatch.setattr(audit_store, "list_entries", lambda **query: [{**AUDIT[0], "at": NOW}])
    response = _get("/agents/agent-a1")
    assert response.status_code == 200, response.get_data(as_text=True)
    assert reads == ["agent-a1"]
    assert 'data-command="pause"' in response.get_data(as_text=True)
    reads.clear()
    assert _get("/agents/agent-a1", "globex-token").status_code == 404


def _liveness(n: int) -> list[dict[str, Any]]:
    return [
        {"id": f"l{n}-{i}", "at": _iso(NOW - timedelta(minutes=n * 100 + i)), "actor": "system",
         "action": "agent.liveness", "target": "agent-a1", "outcome": "applied", "tenant": "acme", "details": {}}
        for i in range(agent_page.AUDIT_ENTRIES)
    ]  # fmt: skip


def test_commands_are_looked_for_past_a_page_of_other_entries_within_a_bound(api: FakeApi) -> None:
    api.audit_pages = [_liveness(0), [*_liveness(1)[:-1], AUDIT[0]], _liveness(2), _liveness(3)]
    html = _get("/agents/agent-a1").get_data(as_text=True)
    audit_calls = [query for path, query in api.calls if path == "/v1/audit"]
    assert [q.get("page_token") for q in audit_calls] == [None, "1", "2"]  # stops at AUDIT_PAGES
    panel = html[html.index('id="panel-commands"') :]
    panel = panel[: panel.index("</section>")]
    assert [part.split('"', 1)[0] for part in panel.split('data-command="')[1:]] == ["pause"]
    assert "newest 90 audit entries" in panel


def test_commands_reading_stops_when_the_list_is_full_or_the_log_ends(api: FakeApi) -> None:
    api.audit_pages = [_liveness(0), [AUDIT[0]]]
    html = _get("/agents/agent-a1").get_data(as_text=True)
    assert [q.get("page_token") for p, q in api.calls if p == "/v1/audit"] == [None, "1"]
    panel = html[html.index('id="panel-commands"') :]
    assert 'data-command="pause"' in panel[: panel.index("</section>")] and "audit entries" not in html
