"""The console's Alerts page in a real browser (Playwright driving Chromium) against the session's stack:
an operator acknowledges and snoozes an open episode (each answered by a 303 back to /alerts with a
notice, so a refresh repeats nothing) and the page says who; a double submit of one Snooze form is one
silence; a viewer's Acknowledge is refused with a reason (a code in the query string, its text from the
server), audited by the API's dispatcher, and the episode stays unacknowledged; a resolved episode is
neither acknowledged (409, checked in the store's transaction) nor snoozed."""

from __future__ import annotations

import uuid
from typing import Any
from urllib.parse import parse_qs, urlsplit

from emulators.stack import Stack
from tests.integration.browser import console_url as _console
from tests.integration.browser import sign_in as _sign_in
from tests.integration.conftest import Api, wait_for
from tests.integration.helpers import heartbeat, make_key, publish, registration


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


def _notice(page: Any) -> dict[str, str]:
    """The page is /alerts after a 303, with what happened in its query string."""
    url = urlsplit(page.url)
    assert url.path == "/alerts"
    return {k: v[0] for k, v in parse_qs(url.query).items()}


def _silences_of(api: Api, agent_id: str) -> list[dict[str, Any]]:
    return [s for s in api.get("/v1/silences").json()["items"] if s["agent_id"] == agent_id]


def test_an_operator_acknowledges_and_snoozes_an_alert(page: Any, stack: Stack, publisher: Any, api: Api) -> None:
    tenant, agent_id, episode_id = _open_episode(publisher, api)
    operator = make_key(stack, f"{tenant}-operator", "operator", tenant)

    _sign_in(page, stack, operator)
    page.goto(_console(stack) + "/alerts")
    row = page.locator(f"tr[data-episode-id='{episode_id}']")
    assert row.locator(".rule").inner_text() == "error_rate"
    assert row.locator(".acknowledged-by").inner_text() == ""
    with page.expect_navigation():
        row.locator("button.ack").click()

    assert _notice(page) == {"notice": "acknowledged", "action": "ack", "episode": episode_id}
    assert page.locator("#alert-message").inner_text() == f"Acknowledged {episode_id}."
    row = page.locator(f"tr[data-episode-id='{episode_id}']")
    assert row.locator(".acknowledged-by").inner_text() == f"api:{tenant}-operator"
    assert row.locator("button.ack").count() == 0
    assert _episode(api, agent_id, episode_id)["acknowledged_by"] == f"api:{tenant}-operator"

    def acknowledgements() -> list[dict[str, Any]]:
        audit = api.get("/v1/audit", action="alert.acknowledge").json()["items"]
        return [e for e in audit if e["target"] == episode_id and e["actor"] == f"api:{tenant}-operator"]

    assert len(acknowledgements()) == 1

    # Snooze: a silence of the agent's error_rate for an hour, listed under the active silences.
    with page.expect_navigation():
        page.locator(f"tr[data-episode-id='{episode_id}'] button.snooze").click()
    assert _notice(page)["notice"] == "snoozed"
    silences = page.locator("tr.silence").all_inner_texts()
    assert any(agent_id in text and "error_rate" in text for text in silences)
    assert len(_silences_of(api, agent_id)) == 1

    # A refresh is a GET of /alerts: nothing is acknowledged or snoozed again.
    reloaded = page.reload()
    assert reloaded is not None and reloaded.request.method == "GET" and reloaded.status == 200
    assert page.locator("#alert-message").inner_text() == f"Snoozed {episode_id} for 60 minutes."
    assert len(_silences_of(api, agent_id)) == 1 and len(acknowledgements()) == 1


def test_a_double_submit_of_one_snooze_form_is_one_silence(page: Any, stack: Stack, publisher: Any, api: Api) -> None:
    tenant, agent_id, episode_id = _open_episode(publisher, api)
    operator = make_key(stack, f"{tenant}-operator", "operator", tenant)

    _sign_in(page, stack, operator)
    page.goto(_console(stack) + "/alerts")
    form = f"tr[data-episode-id='{episode_id}'] form[action$='/snooze']"
    # The same form posted twice (a double click that reaches the server twice), from the page itself.
    statuses = page.evaluate(
        """async (selector) => {
            const form = document.querySelector(selector);
            const sent = [];
            for (let i = 0; i < 2; i++) {
                const answer = await fetch(form.action, {method: "POST", body: new FormData(form)});
                sent.push([answer.status, answer.url]);
            }
            return sent;
        }""",
        form,
    )
    assert [status for status, _ in statuses] == [200, 200]
    assert all("notice=snoozed" in url for _, url in statuses), statuses
    [silence] = _silences_of(api, agent_id)
    assert silence["rule"] == "error_rate" and silence["created_by"] == f"api:{tenant}-operator"
    audit = api.get("/v1/audit", action="silence.create").json()["items"]
    assert [e["target"] for e in audit if e["target"] == silence["id"]] == [silence["id"]]


def test_a_viewer_is_refused_acknowledging(page: Any, stack: Stack, publisher: Any, api: Api) -> None:
    tenant, agent_id, episode_id = _open_episode(publisher, api)
    viewer = make_key(stack, f"{tenant}-viewer", "viewer", tenant)

    _sign_in(page, stack, viewer)
    page.goto(_console(stack) + "/alerts")
    with page.expect_navigation():
        page.locator(f"tr[data-episode-id='{episode_id}'] button.ack").click()
    assert _notice(page)["notice"] == "refused"
    message = page.locator("#alert-message").inner_text()
    assert message.startswith(f"Could not acknowledge {episode_id}: ") and "needs the operator role" in message
    assert page.locator(f"tr[data-episode-id='{episode_id}'] .acknowledged-by").inner_text() == ""
    assert _episode(api, agent_id, episode_id)["acknowledged_by"] is None
    audit = api.get("/v1/audit", actor=f"api:{tenant}-viewer").json()["items"]
    assert [e["action"] for e in audit if e["outcome"] == "refused"] == ["api.acknowledge_alert"]

    page.reload()  # the refusal is not repeated (nor audited again) by a refresh
    audit = api.get("/v1/audit", actor=f"api:{tenant}-viewer").json()["items"]
    assert [e["action"] for e in audit if e["outcome"] == "refused"] == ["api.acknowledge_alert"]


def test_a_resolved_episode_is_neither_acknowledged_nor_snoozed(
    page: Any, stack: Stack, publisher: Any, api: Api
) -> None:
    tenant, agent_id, episode_id = _open_episode(publisher, api)
    operator = make_key(stack, f"{tenant}-operator", "operator", tenant)
    _sign_in(page, stack, operator)
    page.goto(_console(stack) + "/alerts")  # the page still shows it open

    publish(publisher, heartbeat(agent_id, 2, error_rate=0.0, cpu_pct=10.0))
    wait_for(lambda: api.get(f"/v1/alerts/{episode_id}").json()["state"] == "resolved")
    answer = api.send("POST", f"/v1/alerts/{episode_id}/acknowledge", {})
    assert answer.status_code == 409, answer.text
    assert answer.json()["error"]["reason"] == f"alert episode {episode_id} is resolved, not open"
    assert api.get(f"/v1/alerts/{episode_id}").json()["acknowledged_by"] is None

    with page.expect_navigation():
        page.locator(f"tr[data-episode-id='{episode_id}'] button.snooze").click()
    assert _notice(page)["notice"] == "refused"
    assert "is resolved, not open" in page.locator("#alert-message").inner_text()
    assert _silences_of(api, agent_id) == []
    other = make_key(stack, f"{tenant}-other", "viewer", "x" + tenant)
    assert api.get(f"/v1/alerts/{episode_id}", key=other).status_code == 404  # another tenant's: not found
