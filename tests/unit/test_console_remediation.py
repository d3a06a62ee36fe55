"""The console's Remediation page without processes: the API's handler (GET /v1/tenants/{t}/remediation)
monkeypatched (shared/console/remediation_page.py); the browser test (tests/integration/test_console_agent.py)
drives it for real."""

from __future__ import annotations

from typing import Any

import flask
import pytest

from shared.console import app, remediation_page
from shared.console.api_calls import Answer
from shared.domain.api_keys import Role
from shared.domain.remediation_policy import RemediationPolicy
from shared.store.api_keys import Principal

ADMIN = Principal("00000000000000aa", "admin", Role.ADMIN, None)
ACME = Principal("00000000000000bb", "acme-viewer", Role.VIEWER, "acme")
APP = flask.Flask(__name__)

#: A tenant's overrides: a specific rule listed last (tried first), a hostile name in the label (escaped).
OVERRIDES: dict[str, Any] = {
    "mode": "dry_run",
    "max_actions_per_hour": 5,
    "critical_label": "tier=<b>gold</b>",
    "rules": [
        {"name": "frozen-restart", "when": "frozen", "action": "restart", "deadline_s": 60},
        {"name": "error-throttle", "when": "error_rate", "action": "throttle", "calls_per_minute": 10},
        {
            "name": "gpu-frozen-stop",
            "when": "frozen",
            "action": "stop",
            "agent_type": "gpu",
            "labels": {"team": "<script>x</script>"},
        },
    ],
}


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []

    def call_api(request: flask.Request, method: str, path: str, body: Any = None) -> Answer:
        calls.append(f"{method} {path}")
        effective = RemediationPolicy.for_tenant(OVERRIDES).model_dump(mode="json")
        return Answer(200, {"tenant": "acme", "overrides": OVERRIDES, "effective": effective})

    monkeypatch.setattr(remediation_page, "call_api", call_api)
    return calls


def test_the_rules_are_shown_in_the_order_they_are_tried(api: list[str]) -> None:
    with APP.test_request_context("/remediation?tenant=other"):
        data = remediation_page.load(flask.request, ACME)
    assert api == ["GET /v1/tenants/acme/remediation"]  # the key's own tenant, through the API
    assert any("only sees tenant acme" in n for n in data.notes)
    assert [r["name"] for r in data.rules] == ["gpu-frozen-stop", "frozen-restart", "error-throttle"]
    assert [r["listed"] for r in data.rules] == [3, 1, 2]
    policy = RemediationPolicy.for_tenant(OVERRIDES)
    assert policy.rule_for(policy.rules[0].when, "gpu", {"team": "<script>x</script>"}) == policy.rules[2]
    assert data.policy is not None and data.policy["mode"] == "dry_run"
    assert data.overridden == ["critical_label", "max_actions_per_hour", "mode", "rules"]


def test_the_page_is_linked_and_escaped(api: list[str]) -> None:
    with APP.test_request_context("/remediation"):
        html = app.remediation(flask.request, ACME).get_data(as_text=True)
    assert '<a href="/remediation" class="active" aria-current="page">Remediation</a>' in html
    assert "<script>x</script>" not in html and "team=&lt;script&gt;x&lt;/script&gt;" in html
    assert "<b>gold</b>" not in html and "tier=&lt;b&gt;gold&lt;/b&gt;" in html
    assert 'class="remediation-mode">dry_run<' in html and 'class="remediation-cap">5<' in html
    assert "3 policy restarts within 3600 s" in html


def test_a_fleet_wide_key_picks_a_tenant_first(api: list[str]) -> None:
    with APP.test_request_context("/remediation"):
        data = remediation_page.load(flask.request, ADMIN)
        html = app.remediation(flask.request, ADMIN).get_data(as_text=True)
    assert data.tenant is None and data.policy is None and api == []
    assert 'class="remediation-tenant-form"' in html


def test_a_refusal_is_a_note_not_a_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    refused = Answer(404, {"error": {"reason": "tenant <x> not found"}})
    monkeypatch.setattr(remediation_page, "call_api", lambda *a, **k: refused)
    with APP.test_request_context("/remediation?tenant=nope"):
        data = remediation_page.load(flask.request, ADMIN)
        html = app.remediation(flask.request, ADMIN).get_data(as_text=True)
    assert data.policy is None and data.notes == ["The remediation policy could not be read: tenant <x> not found"]
    assert "tenant &lt;x&gt; not found" in html
