"""The console's agent page without processes: the API handlers it calls in-process are replaced by their
answers (JSON dicts), the key check is monkeypatched; the page renders every panel, escapes, and answers
404 for an agent the key may not see. The browser test is tests/integration/test_console_agent.py."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import flask
import pytest

from shared.api import agents as agents_api
from shared.api import alerts as alerts_api
from shared.api import costs as costs_api
from shared.api.core import ApiError
from shared.console import agent_page, app, session
from shared.domain.api_keys import Role
from shared.store import api_keys
from shared.store.api_keys import Principal
from tests.unit.test_console import _record

NOW = datetime.now(UTC).replace(microsecond=0)
ADMIN = Principal("00000000000000aa", "admin", Role.ADMIN, None)
GLOBEX = Principal("00000000000000cc", "globex-viewer", Role.VIEWER, "globex")
TOKENS = {"admin-token": ADMIN, "globex-token": GLOBEX}
APP = flask.Flask(__name__)
XSS = "<script>window.__xss=1</script>"


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
            "resets_at": _iso(NOW + timedelta(hours=1)),
        }
        for name, key in (("hour", "2026-12-06T10"), ("day", "2026-12-06"), ("month", "2026-12"))
    },
    "holds": {"pause": {"command": "pause", "reason": "maintenance <b>now</b>", "issued_at": _iso(NOW), "until": None}},
    "budget": None,
    "budget_source": None,
    "lease": None,
}
ALERTS = {
    "items": [
        {
            "id": "e1",
            "agent_id": "agent-a1",
            "rule": "error_rate",
            "severity": "warning",
            "state": "open",
            "title": "Error rate",
            "opened_at": _iso(NOW),
            "message": "too many errors",
        }
    ]
}


@pytest.fixture(autouse=True)
def fakes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, dict[str, Any]]]:
    calls: list[tuple[str, dict[str, Any]]] = []
    answers: dict[Callable[..., Any], Any] = {
        agents_api.get_agent: AGENT,
        agents_api.get_agent_history: HISTORY,
        costs_api.get_agent_usage: USAGE,
        alerts_api.list_alerts: ALERTS,
    }

    def call(view: Any, principal: Principal, args: dict[str, str], query: Any = None) -> Any:
        calls.append((view.__name__, query or {}))
        if args and (args["agent_id"] != "agent-a1" or not principal.can_see("acme")):
            raise ApiError(404, f"agent {args['agent_id']} not found")
        return answers[view]

    monkeypatch.setattr(agent_page, "_call", call)
    monkeypatch.setattr(api_keys, "verify", lambda token: TOKENS.get(token))
    return calls


def _get(path: str, token: str = "admin-token") -> flask.Response:
    with APP.test_request_context(path, headers={"Cookie": f"{session.COOKIE}={token}"}):
        return app.handle(flask.request)


def test_the_agent_page_shows_every_panel(fakes: list[tuple[str, dict[str, Any]]]) -> None:
    response = _get("/agents/agent-a1")
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    for name in agent_page.agent_view.panel_names():
        assert f'id="panel-{name}"' in html
    assert html.count('<svg xmlns="http://www.w3.org/2000/svg" class="chart') == 2  # cpu and error rate
    assert 'data-period="hour"' in html and 'data-period="day"' in html and 'data-period="month"' in html
    assert html.count("$0.03") >= 3
    assert 'data-hold="pause"' in html and "until lifted" in html
    assert "too many errors" in html
    assert ("list_alerts", {"agent_id": "agent-a1", "limit": str(agent_page.ALERTS_LIMIT)}) in fakes
    assert ' style="' not in html  # the CSP allows no inline style


def test_what_agents_report_is_escaped() -> None:
    html = _get("/agents/agent-a1").get_data(as_text=True)
    assert XSS not in html and "&lt;script&gt;window.__xss=1&lt;/script&gt;" in html
    assert "maintenance &lt;b&gt;now&lt;/b&gt;" in html


def test_an_agent_the_key_may_not_see_is_not_found() -> None:
    assert _get("/agents/agent-a1", "globex-token").status_code == 404
    assert _get("/agents/nobody").status_code == 404
    assert _get("/agents/").status_code == 404


def test_without_a_session_the_agent_page_redirects_to_sign_in() -> None:
    response = _get("/agents/agent-a1", "")
    assert response.status_code == 303 and response.headers["Location"] == "/sign-in"


def test_the_fleet_table_links_each_agent_to_its_page() -> None:
    source = (app.HERE / "templates" / "fleet_rows.html").read_text()
    assert 'href="/agents/{{ row.agent_id | urlencode }}"' in source


def test_the_page_calls_the_api_handlers_with_the_keys_scope(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.undo()  # the real _call: the API's handler, its tenant check
    record = _record("agent-a1", "acme")
    monkeypatch.setattr(
        agent_page.agents_api.agent_store, "get", lambda agent_id: record if agent_id == "agent-a1" else None
    )
    view = agent_page._call(agents_api.get_agent, ADMIN, {"agent_id": "agent-a1"})
    assert view["agent_id"] == "agent-a1" and view["tenant"] == "acme"
    with pytest.raises(ApiError) as err:
        agent_page._call(agents_api.get_agent, GLOBEX, {"agent_id": "agent-a1"})
    assert err.value.status == 404
