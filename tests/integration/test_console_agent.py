"""The console's agent page in a real browser (Playwright driving Chromium) against the session's stack: an
agent with recorded spend and a few heartbeats shows its spend per hour, day and month, SVG charts of its
metrics, each budget's reset time also in UTC, and once paused through the API its hold and the pause
command in its recent commands; another tenant's key gets a 404 page; the Remediation page shows a tenant's
default rules in the order they are tried, and an agent with a pending drain shows it among its pending
commands."""

from __future__ import annotations

import re
import uuid
from typing import Any

from fleet_agent.contracts import COMMANDS_V2

from emulators.stack import Stack
from tests.integration.conftest import Api, wait_for
from tests.integration.helpers import heartbeat, make_key, publish
from tests.integration.test_console import _console, _register, _sign_in, _spend, _tenant


def _beats(publisher: Any, api: Api, agent_id: str, count: int) -> None:
    """``count`` heartbeats, each stored before the next is sent (the pipeline keeps them in order)."""
    for seq in range(1, count + 1):
        publish(publisher, heartbeat(agent_id, seq))
        wait_for(lambda n=seq: len(api.get(f"/v1/agents/{agent_id}/history").json()["samples"]) >= n)


def test_the_agent_page_shows_spend_charts_and_holds(page: Any, stack: Stack, publisher: Any, api: Api) -> None:
    tenant = _tenant()
    agent = f"it-{uuid.uuid4().hex[:12]}"
    _register(publisher, api, agent, tenant, name="Console agent page")
    _beats(publisher, api, agent, 12)  # two history chunks (the stack's FLEET_HISTORY_CHUNK is 5), two unflushed
    # ?limit= answers the newest samples, oldest first, from the newest chunks (one, then both) and the tail.
    history = f"/v1/agents/{agent}/history"
    assert [s["seq"] for s in api.get(history, limit="5").json()["samples"]] == [8, 9, 10, 11, 12]
    assert [s["seq"] for s in api.get(history, limit="8").json()["samples"]] == list(range(5, 13))
    assert [s["seq"] for s in api.get(history).json()["samples"]] == list(range(1, 13))
    _spend(publisher, api, agent, 3)
    violations: list[str] = []
    page.on("console", lambda msg: violations.append(msg.text) if "Content Security Policy" in msg.text else None)

    _sign_in(page, stack, stack.env["FLEET_API_KEY"])
    page.goto(_console(stack) + f"/?tenant={tenant}")
    with page.expect_navigation():
        page.click(f"tr[data-agent-id='{agent}'] a.agent-link")
    assert page.url == _console(stack) + f"/agents/{agent}"
    assert page.locator("h1.agent-title").inner_text() == "Console agent page"
    assert page.locator(".agent-tenant").inner_text() == tenant

    # Spend for the hour, the day and the month: three $0.01 calls.
    for period in ("hour", "day", "month"):
        row = page.locator(f"#panel-spend tr[data-period='{period}']")
        assert row.locator(".spend-usd").inner_text() == "$0.03"  # formats.usd: cents, up to four decimals below $1
        assert row.locator(".calls").inner_text().startswith("3")
        assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", row.locator(".resets-at").inner_text())
    # Charts of the heartbeats' metrics (cpu, error rate, tokens/s), drawn as inline SVG.
    charts = page.locator("svg.chart")
    assert charts.count() >= 1
    assert charts.first.locator("polyline.chart-line").count() == 1
    assert charts.first.bounding_box()["height"] > 50  # styled and laid out, not collapsed
    assert page.locator("#panel-holds .holds-none").count() == 1
    assert page.locator("#panel-commands .commands-none").count() == 1  # registered and beating: no command yet

    paused = api.send("POST", f"/v1/agents/{agent}/pause", {"reason": "checking the console"})
    assert paused.status_code == 200, paused.text
    page.reload()
    hold = page.locator("#panel-holds tr[data-hold='pause']")
    assert hold.locator(".hold-reason").inner_text() == "checking the console"
    assert hold.locator(".hold-lifts").inner_text() == "until lifted"
    # The pause command, from the agent's audit entries: by whom, why, and what came of it.
    command = page.locator("#panel-commands tr[data-command='pause']")
    assert command.count() == 1
    assert command.locator(".command-reason").inner_text() == "checking the console"
    assert command.locator(".command-outcome").inner_text() == "placed"
    assert command.locator(".command-actor").inner_text().startswith("api:")
    assert page.evaluate("window.__xss") is None
    assert violations == []


def test_another_tenants_agent_is_not_found(page: Any, stack: Stack, publisher: Any, api: Api) -> None:
    mine, theirs = _tenant(), _tenant()
    other = f"it-{uuid.uuid4().hex[:12]}"
    _register(publisher, api, other, theirs)
    viewer = make_key(stack, f"{mine}-viewer", "viewer", mine)

    _sign_in(page, stack, viewer)
    response = page.goto(_console(stack) + f"/agents/{other}")
    assert response.status == 404
    assert page.locator("h1").inner_text() == "Agent not found"
    assert page.locator(".agent-title").count() == 0


def test_the_remediation_policy_and_a_pending_drain_are_shown(
    page: Any, stack: Stack, publisher: Any, api: Api
) -> None:
    tenant = _tenant()
    agent = f"it-{uuid.uuid4().hex[:12]}"
    _register(publisher, api, agent, tenant, supports=[COMMANDS_V2])
    sent = api.send("POST", f"/v1/agents/{agent}/commands", {"command": "drain", "reason": "<b>failing</b> tasks"})
    assert sent.status_code == 200, sent.text
    violations: list[str] = []
    page.on("console", lambda msg: violations.append(msg.text) if "Content Security Policy" in msg.text else None)

    _sign_in(page, stack, stack.env["FLEET_API_KEY"])
    with page.expect_navigation():
        page.click("header nav a[href='/remediation']")
    page.fill("#tenant", tenant)
    with page.expect_navigation():
        page.click(".remediation-tenant-form button")
    assert page.locator(".remediation-tenant").inner_text() == tenant
    assert page.locator(".remediation-mode").inner_text() == "on"
    rules = page.locator("tr.remediation-rule")
    assert [rules.nth(n).get_attribute("data-rule") for n in range(rules.count())] == [
        "error-rate-throttle",
        "frozen-restart",
        "memory-restart",
        "failure-risk-drain",
    ]
    assert page.locator("tr[data-rule='frozen-restart'] .rule-action").inner_text() == "restart"

    page.goto(_console(stack) + f"/agents/{agent}")
    row = page.locator("#panel-pending tr[data-pending-command='drain']")
    assert row.count() == 1
    assert row.locator(".pending-state").inner_text() in ("sent", "unacknowledged")
    assert "<b>failing</b> tasks" in row.inner_text()  # shown as text, not markup
    assert "operator" in row.inner_text()  # its origin (a policy's would say policy:<rule>)
    # The same drain among the recent commands, from its audit entry, with its origin.
    assert page.locator("#panel-commands tr[data-command='drain'] .command-origin").first.inner_text() == "operator"
    assert violations == []
