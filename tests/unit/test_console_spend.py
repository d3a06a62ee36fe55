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
from shared.platform import metering
from shared.store import db, usage_months
from shared.store.api_keys import Principal

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
ADMIN = Principal("00000000000000aa", "admin", Role.ADMIN, None)
ACME = Principal("00000000000000bb", "acme-viewer", Role.VIEWER, "acme")
APP = flask.Flask(__name__)


#: The usage API's answer: the raw budget says $1/$10, the periods (what the API enforces) say otherwise.
USAGE = {
    "tenant": "acme",
    "budget": {"daily_usd": "1", "monthly_usd": "10"},
    "periods": {
        "day": {"spend_usd": "0.9000", "budget_usd": "2.0000"},
        "month": {"spend_usd": "0.5000", "budget_usd": "20.0000"},
    },
}


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    calls: list[Any] = []

    def call_api(request: flask.Request, method: str, path: str, body: Any = None) -> Answer:
        calls.append(path)
        if path.startswith("/v1/agents"):
            return Answer(200, {"items": [{"agent_id": "a1"}, {"agent_id": "<b2>"}], "next_page_token": None})
        return Answer(200, USAGE)

    def months(agent_ids: list[str], months: list[str]) -> usage_months.MonthModels:
        calls.append(("months", list(agent_ids), list(months)))
        day_models = {
            "03": {"gpt-4o": ModelDay(calls=1, usd_nanos=20_000_000)},
            "02": {"haiku": ModelDay(usd_nanos=10**7)},
        }
        return {a: {m: day_models if m == "2026-12" else {} for m in months} for a in agent_ids}

    monkeypatch.setattr(spend_page, "call_api", call_api)
    monkeypatch.setattr(usage_months, "agents_month_models", months)
    return calls


def test_months_reach_into_the_previous_month_early_in_a_month() -> None:
    assert spend_page._months(date(2026, 12, 3), 7) == ["2026-11", "2026-12"]
    assert spend_page._months(date(2026, 12, 20), 7) == ["2026-12"]


def test_a_tenant_key_sees_its_tenant_only(api: list[Any]) -> None:
    with APP.test_request_context("/spend?tenant=other"):
        data = spend_page.load(flask.request, ACME, NOW)
    assert data.tenant == "acme" and data.view is not None
    assert any("only sees tenant acme" in n for n in data.notes)
    assert api[0] == "/v1/tenants/acme/usage" and api[1].startswith("/v1/agents?tenant=acme")
    # Every agent's months in one batched read, the previous month too early in December.
    assert api[2:] == [("months", ["a1", "<b2>"], ["2026-11", "2026-12"])]
    rows = {(r["agent_id"], r["model"]): r for r in data.view["rows"]}
    assert rows[("a1", "gpt-4o")]["today"] == "$0.02"
    assert rows[("a1", "haiku")]["today"] == "$0.00"
    # Each period's spend and budget are the API's periods (not the breakdown's $0.04, not the raw budget).
    day, month = data.view["projections"]
    assert day["spent"] == "$0.90" and day["budget"] == "$2.00"
    assert month["spent"] == "$0.50" and month["budget"] == "$20.00"
    assert not any("first" in n for n in data.notes)


def test_the_page_says_when_the_breakdown_stops_at_the_agent_limit(
    api: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(spend_page, "MAX_AGENTS", 2)
    monkeypatch.setattr(spend_page, "PAGE_SIZE", 2)

    def call_api(request: flask.Request, method: str, path: str, body: Any = None) -> Answer:
        if path.startswith("/v1/agents"):
            page = ["a3"] if "page_token=" in path else ["a1", "a2"]
            return Answer(200, {"items": [{"agent_id": a} for a in page], "next_page_token": "more"})
        return Answer(200, USAGE)

    monkeypatch.setattr(spend_page, "call_api", call_api)
    with APP.test_request_context("/spend"):
        data = spend_page.load(flask.request, ACME, NOW)
        body = app.spend(flask.request, ACME).get_data(as_text=True)
    assert data.view is not None and {r["agent_id"] for r in data.view["rows"]} == {"a1", "a2"}
    assert any("first 2 agents only" in n for n in data.notes)
    assert "first 2 agents only" in body
    assert data.view["projections"][0]["spent"] == "$0.90"  # still the tenant's whole spend


class _Doc:
    def __init__(self, doc_id: str, data: dict[str, Any] | None) -> None:
        self.id, self.exists, self._data = doc_id, data is not None, data

    def to_dict(self) -> dict[str, Any] | None:
        return self._data


class _Client:
    """get_all over a dict of documents; records each round trip's document ids."""

    def __init__(self, stored: dict[str, dict[str, Any]]) -> None:
        self.stored = stored
        self.batches: list[list[str]] = []

    def collection(self, name: str) -> Any:
        assert name == "usage"
        return type("Collection", (), {"document": staticmethod(lambda doc_id: doc_id)})()

    def get_all(self, refs: list[str], **_: Any) -> list[_Doc]:
        self.batches.append(list(refs))
        return [_Doc(r, self.stored.get(r)) for r in refs]


def test_the_batched_month_read_is_one_round_trip_and_one_read_per_document(monkeypatch: pytest.MonkeyPatch) -> None:
    client = _Client(
        {
            "a.a1.2026-12": {"x03": {"gpt-4o": {"calls": 2, "usd_nanos": 7}}, "d03": {"calls": 2}, "agent_id": "a1"},
            "a.a2.2026-11": {"x30": {"haiku": {"calls": 1}}},
        }
    )
    monkeypatch.setattr(db, "client", lambda: client)
    with metering.metered() as meter:
        got = usage_months.agents_month_models(["a1", "a2", "a3"], ["2026-11", "2026-12"])
    assert len(client.batches) == 1 and len(client.batches[0]) == 6
    assert meter.reads == 6  # a missing document is a read too
    assert got["a1"] == {"2026-11": {}, "2026-12": {"03": {"gpt-4o": ModelDay(calls=2, usd_nanos=7)}}}
    assert got["a2"] == {"2026-11": {"30": {"haiku": ModelDay(calls=1)}}, "2026-12": {}}
    assert got["a3"] == {"2026-11": {}, "2026-12": {}}
    # More documents than one get_all takes: one round trip per chunk, still one read each.
    monkeypatch.setattr(usage_months, "GET_ALL_CHUNK", 4)
    with metering.metered() as meter:
        usage_months.agents_month_models(["a1", "a2", "a3"], ["2026-11", "2026-12"])
    assert [len(b) for b in client.batches[1:]] == [4, 2] and meter.reads == 6
    assert usage_months.agents_month_models([], ["2026-12"]) == {}


def test_an_admin_picks_a_tenant(api: list[Any]) -> None:
    with APP.test_request_context("/spend"):
        assert spend_page.load(flask.request, ADMIN, NOW).tenant is None
    with APP.test_request_context("/spend?tenant=bad/name"):
        assert spend_page.load(flask.request, ADMIN, NOW).view is None
    assert api == []


def test_the_page_escapes_agent_ids(api: list[Any]) -> None:
    with APP.test_request_context("/spend?tenant=acme"):
        response = app.spend(flask.request, ADMIN)
    body = response.get_data(as_text=True)
    assert "&lt;b2&gt;" in body and "<b2>" not in body
    assert "<svg" in body and 'name="tenant"' in body
