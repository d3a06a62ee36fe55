"""The web console in a real browser (Playwright driving Chromium, tests/integration/browser.py) against the
session's stack: signing in, the fleet page, tenant scoping, revocation and the XSS probe."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from fleet_agent.contracts import CostBatch, CostRecord

from emulators.stack import Stack
from shared.domain import api_keys
from tests.integration.browser import console_url as _console
from tests.integration.browser import sign_in as _sign_in
from tests.integration.conftest import Api, wait_for
from tests.integration.helpers import make_key, publish, registration

XSS_NAME = "<script>window.__xss=1</script>"


def _tenant() -> str:
    return f"con-{uuid.uuid4().hex[:8]}"


def _register(publisher: Any, api: Api, agent_id: str, tenant: str, **kw: Any) -> None:
    publish(publisher, registration(agent_id, tenant=tenant, **kw))
    wait_for(lambda: api.get(f"/v1/agents/{agent_id}").status_code == 200)


def _spend(publisher: Any, api: Api, agent_id: str, calls: int) -> None:
    """``calls`` model calls of $0.01 each, counted before the page is read."""
    records = [
        CostRecord.model_validate(
            {
                "call_id": f"call-{n:06d}-{uuid.uuid4().hex[:8]}",
                "at": datetime.now(UTC),
                "model": "gpt-4o",
                "input_tokens": 100,
                "output_tokens": 50,
                "cost_usd": Decimal("0.01"),
                "success": True,
                "latency_ms": 120.0,
                "operation": "summarize",
            }
        )
        for n in range(calls)
    ]
    publish(publisher, CostBatch(agent_id=agent_id, batch_id=f"b-{uuid.uuid4().hex}", records=records))
    wait_for(lambda: api.get(f"/v1/agents/{agent_id}/usage").json()["periods"]["day"]["calls"] == calls)


def test_admin_signs_in_and_sees_the_fleet(page: Any, stack: Stack, publisher: Any, api: Api) -> None:
    tenant = _tenant()
    agent = f"it-{uuid.uuid4().hex[:12]}"
    _register(publisher, api, agent, tenant, name="Console agent one", labels={"team": "ops"})
    _spend(publisher, api, agent, 3)

    response = page.goto(_console(stack) + "/")
    assert page.url == _console(stack) + "/sign-in"  # no session: sent to sign in
    assert response.headers.get("content-security-policy", "").startswith("default-src 'none'")

    _sign_in(page, stack, stack.env["FLEET_API_KEY"])
    assert page.url == _console(stack) + "/"
    # The stylesheet and the script load as served by functions-framework (whose Flask app owns /static/).
    for asset in ("console.css", "console.js"):
        loaded = page.request.get(_console(stack) + f"/assets/{asset}")
        assert loaded.status == 200 and loaded.text().strip()
    assert page.evaluate("getComputedStyle(document.body).margin") == "0px"  # console.css applied
    row = page.locator(f"tr[data-agent-id='{agent}']")
    assert row.locator(".agent-name").inner_text() == "Console agent one"
    assert row.locator(".status").inner_text() in {"registered", "active"}
    assert row.locator(".liveness").inner_text() == "ok"
    assert row.locator(".spend").inner_text() == "$0.03"  # today's spend, from the usage counters

    # Server-side filters: the label matches, another label does not.
    page.goto(_console(stack) + f"/?tenant={tenant}&label=team=ops")
    assert page.locator("tr.agent").count() == 1
    page.goto(_console(stack) + f"/?tenant={tenant}&label=team=search")
    assert page.locator("tr.agent").count() == 0

    # The polled fragment answers with the same rows, and signing out ends the session.
    fragment = page.request.get(_console(stack) + f"/fragments/fleet?tenant={tenant}")
    assert fragment.status == 200 and agent in fragment.text()
    page.goto(_console(stack) + "/")
    with page.expect_navigation():
        page.click("form[action='/sign-out'] button")
    assert page.url == _console(stack) + "/sign-in"
    page.goto(_console(stack) + "/")
    assert page.url == _console(stack) + "/sign-in"


def test_a_wrong_key_stays_on_sign_in(page: Any, stack: Stack) -> None:
    _sign_in(page, stack, "afk_notakey.notasecret")
    assert page.url == _console(stack) + "/sign-in"
    assert "invalid or revoked" in page.locator(".message").inner_text()
    assert not [c for c in page.context.cookies() if c["name"] == "fleet_console"]


def test_a_tenant_viewer_sees_only_its_tenant(page: Any, stack: Stack, publisher: Any, api: Api) -> None:
    mine, theirs = _tenant(), _tenant()
    own, other = f"it-{uuid.uuid4().hex[:12]}", f"it-{uuid.uuid4().hex[:12]}"
    _register(publisher, api, own, mine)
    _register(publisher, api, other, theirs)
    viewer = make_key(stack, f"{mine}-viewer", "viewer", mine)

    _sign_in(page, stack, viewer)
    assert page.url == _console(stack) + "/"
    cookie = next(c for c in page.context.cookies() if c["name"] == "fleet_console")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["expires"] == -1
    assert page.locator(f"tr[data-agent-id='{own}']").count() == 1
    assert page.locator(f"tr[data-agent-id='{other}']").count() == 0
    tenants = set(page.locator("tr.agent td:nth-child(2)").all_inner_texts())
    assert tenants == {mine}
    # Asking for another tenant changes nothing but a note.
    page.goto(_console(stack) + f"/?tenant={theirs}")
    assert page.locator(f"tr[data-agent-id='{other}']").count() == 0
    assert "only sees tenant" in page.locator(".message").first.inner_text()

    # Revoked (the stack caches verified keys for 0 s): the next page goes back to sign-in.
    parsed = api_keys.parse(viewer)
    assert parsed is not None
    subprocess.run(
        [sys.executable, "-m", "shared.cli.fleetctl", "keys", "revoke", parsed[0]],
        env={**os.environ, **stack.env},
        capture_output=True,
        check=True,
        timeout=60,
    )
    page.goto(_console(stack) + "/")
    assert page.url == _console(stack) + "/sign-in"


def test_an_agent_named_like_a_script_is_shown_as_text(page: Any, stack: Stack, publisher: Any, api: Api) -> None:
    tenant = _tenant()
    agent = f"it-{uuid.uuid4().hex[:12]}"
    _register(publisher, api, agent, tenant, name=XSS_NAME)

    _sign_in(page, stack, stack.env["FLEET_API_KEY"])
    response = page.goto(_console(stack) + f"/?tenant={tenant}")
    csp = response.headers.get("content-security-policy", "")
    assert "script-src 'self'" in csp and "default-src 'none'" in csp
    assert response.headers.get("x-content-type-options") == "nosniff"
    assert response.headers.get("referrer-policy") == "no-referrer"
    assert page.locator(f"tr[data-agent-id='{agent}'] .agent-name").inner_text() == XSS_NAME
    assert page.evaluate("window.__xss") is None
    # After a live update (the table is replaced from /fragments/fleet by console.js), still text.
    page.wait_for_selector("#fleet-live[data-refreshed='1']", timeout=15000)
    assert page.locator(f"tr[data-agent-id='{agent}'] .agent-name").inner_text() == XSS_NAME
    assert page.evaluate("window.__xss") is None
