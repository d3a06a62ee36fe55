"""The console's Alerts page in a real browser (Playwright driving Chromium) against the session's stack:
an operator acknowledges an open episode and the page says who; a viewer's Acknowledge is refused on
the page, audited by the API's dispatcher, and the episode stays unacknowledged."""

from __future__ import annotations

import uuid
from typing import Any

from emulators.stack import Stack
from tests.integration.conftest import Api, wait_for
from tests.integration.helpers import heartbeat, make_key, publish, registration


def _console(stack: Stack) -> str:
    return stack.env["FLEET_CONSOLE_URL"]


def _sign_in(page: Any, stack: Stack, key: str) -> None:
    page.goto(_console(stack) + "/sign-in")
    page.fill("#key", key)
    with page.expect_navigation():
        page.click("form[action='/sign-in'] button[type=submit]")


def _open_episode(publisher: Any, api: Api) -> tuple[str, str, str]:
    """(tenant, agent id, episode id) of an open error_rate episode: a heartbeat with a 50 % error rate."""
    tenant = f"cal-{uuid.uuid4().hex[:8]}"
    agent_id = f"it-{uuid.uuid4().hex[:12]}"
    publish(publisher, registration(agent_id, tenant=tenant, heartbeat_interval_s=30))
    wait_for(lambda: api.get(f"/v1/agents/{agent_id}").status_code == 200)
    publish(publisher, heartbeat(agent_id, 1, error_rate=0.5, cpu_pct=10.0))

    def episode() -> dict[str, Any] | None:
        items = api.get("/v1/alerts", agent_id=agent_id, state="open", rule="error_rate").json()["items"]
        return items[0] if items else None

    found = wait_for(episode)
    return tenant, agent_id, found["id"]


def _episode(api: Api, agent_id: str, episode_id: str) -> dict[str, Any]:
    items = api.get("/v1/alerts", agent_id=agent_id).json()["items"]
    return next(e for e in items if e["id"] == episode_id)


def test_an_operator_acknowledges_an_alert(page: Any, stack: Stack, publisher: Any, api: Api) -> None:
    tenant, agent_id, episode_id = _open_episode(publisher, api)
    operator = make_key(stack, f"{tenant}-operator", "operator", tenant)

    _sign_in(page, stack, operator)
    page.goto(_console(stack) + "/alerts")
    row = page.locator(f"tr[data-episode-id='{episode_id}']")
    assert row.locator(".rule").inner_text() == "error_rate"
    assert row.locator(".acknowledged-by").inner_text() == ""
    with page.expect_navigation():
        row.locator("button.ack").click()

    assert page.url == _console(stack) + "/alerts"
    row = page.locator(f"tr[data-episode-id='{episode_id}']")
    assert row.locator(".acknowledged-by").inner_text() == f"api:{tenant}-operator"
    assert row.locator("button.ack").count() == 0
    assert _episode(api, agent_id, episode_id)["acknowledged_by"] == f"api:{tenant}-operator"
    audit = api.get("/v1/audit", action="alert.acknowledge").json()["items"]
    assert any(e["target"] == episode_id and e["actor"] == f"api:{tenant}-operator" for e in audit)

    # Snooze: a silence of the agent's error_rate for an hour, listed under the active silences.
    with page.expect_navigation():
        page.locator(f"tr[data-episode-id='{episode_id}'] button.snooze").click()
    assert page.url == _console(stack) + "/alerts"
    silences = page.locator("tr.silence").all_inner_texts()
    assert any(agent_id in text and "error_rate" in text for text in silences)


def test_a_viewer_is_refused_acknowledging(page: Any, stack: Stack, publisher: Any, api: Api) -> None:
    tenant, agent_id, episode_id = _open_episode(publisher, api)
    viewer = make_key(stack, f"{tenant}-viewer", "viewer", tenant)

    _sign_in(page, stack, viewer)
    page.goto(_console(stack) + "/alerts")
    with page.expect_navigation() as navigation:
        page.locator(f"tr[data-episode-id='{episode_id}'] button.ack").click()
    assert navigation.value.status == 403
    message = page.locator("#alert-message").inner_text()
    assert "Could not acknowledge" in message and "viewer" in message
    assert page.locator(f"tr[data-episode-id='{episode_id}'] .acknowledged-by").inner_text() == ""
    assert _episode(api, agent_id, episode_id)["acknowledged_by"] is None
    audit = api.get("/v1/audit", actor=f"api:{tenant}-viewer").json()["items"]
    assert any(e["action"] == "api.acknowledge_alert" and e["outcome"] == "refused" for e in audit)
