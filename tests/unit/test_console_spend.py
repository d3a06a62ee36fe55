"""The console's Spend page without processes: the API's handlers and the usage store monkeypatched
(shared/console/spend_page.py); the browser test (tests/integration/test_console_spend.py) drives it for real."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

import flask
import pytest

from shared.console import app, spend_page
from shared.console.api_calls import Answer
from shared.domain.api_keys import Role
from shared.domain.usage import ModelDay
from shared.store.api_keys import Principal

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
ADMIN = Principal("00000000000000aa", "admin", Role.ADMIN, None)
ACME = Principal("00000000000000bb", "acme-viewer", Role.VIEWER, "acme")
APP = flask.Flask(__name__)


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []

    def call_api(request: flask.Request, method: str, path: str, body: Any = None) -> Answer:
        calls.append(path)
        if path.startswith("/v1/agents"):
            return Answer(200, {"items": [{"agent_id": "a1"}, {"agent_id": "<b2>"}], "next_page_token": None})
        budget = {"daily_usd": "1", "monthly_usd": "10"}
        return Answer(200, {"tenant": "acme", "budget": budget, "periods": {"month": {"spend_usd": "0.5"}}})

    def months(agent_id: str, month: str) -> dict[str, dict[str, ModelDay]]:
        if month != "2026-12":
            return {}
        return {"03": {"gpt-4o": ModelDay(calls=1, usd_nanos=20_000_000)}, "02": {"haiku": ModelDay(usd_nanos=10**7)}}

    monkeypatch.setattr(spend_page, "call_api", call_api)
    monkeypatch.setattr(spend_page.usage_store, "agent_month_models", months)
    return calls


def test_months_reach_into_the_previous_month_early_in_a_month() -> None:
    assert spend_page._months(date(2026, 12, 3), 7) == ["2026-11", "2026-12"]
    assert spend_page._months(date(2026, 12, 20), 7) == ["2026-12"]


def test_a_tenant_key_sees_its_tenant_only(api: list[str]) -> None:
    with APP.test_request_context("/spend?tenant=other"):
        data = spend_page.load(flask.request, ACME, NOW)
    assert data.tenant == "acme" and data.view is not None
    assert any("only sees tenant acme" in n for n in data.notes)
    assert api[0] == "/v1/tenants/acme/usage" and api[1].startswith("/v1/agents?tenant=acme")
    rows = {(r["agent_id"], r["model"]): r for r in data.view["rows"]}
    assert rows[("a1", "gpt-4o")]["today"] == "$0.02"
    assert rows[("a1", "haiku")]["today"] == "$0.00"
    month = data.view["projections"][1]
    assert month["budget"] == "$10.00" and month["spent"] == "$0.50"


def test_an_admin_picks_a_tenant(api: list[str]) -> None:
    with APP.test_request_context("/spend"):
        assert spend_page.load(flask.request, ADMIN, NOW).tenant is None
    with APP.test_request_context("/spend?tenant=bad/name"):
        assert spend_page.load(flask.request, ADMIN, NOW).view is None
    assert api == []


def test_the_page_escapes_agent_ids(api: list[str]) -> None:
    with APP.test_request_context("/spend?tenant=acme"):
        response = app.spend(flask.request, ADMIN)
    body = response.get_data(as_text=True)
    assert "&lt;b2&gt;" in body and "<b2>" not in body
    assert "<svg" in body and 'name="tenant"' in body
