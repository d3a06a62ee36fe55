"""Job alerts through the real path: a failed job's episode reaches the fake Slack through the outbox,
mentioning its requester found by e-mail (``users.lookupByEmail``), and a tenant's queue over its
threshold opens the queue alert on the reconcile tick and resolves once the queue is short again."""

from __future__ import annotations

import sys
from typing import Any

import pytest

from tests.integration.conftest import Api, Slack, tick, wait_for
from tests.integration.test_jobs import FAST, agent, agent_key, job, submit, tenant, until_state

pytestmark = pytest.mark.integration
__all__ = ["agent", "agent_key", "tenant"]  # fixtures of test_jobs.py, used here by name

#: The fake Slack's address of user U0MAYA01 (emulators/fake_slack.py: ``<id, lower case>@fleet.test``).
MAYA = "u0maya01@fleet.test"


def alerts(api: Api, tenant: str, rule: str, state: str | None = None) -> list[dict[str, Any]]:
    params = {"tenant": tenant, "rule": rule, **({"state": state} if state else {})}
    reply = api.get("/v1/alerts", **params)
    assert reply.status_code == 200, reply.text
    return list(reply.json()["items"])


def test_a_failed_job_tells_the_tenant_channel_mentioning_its_requester(
    api: Api, publisher: Any, slack: Slack, tenant: str, agent: str
) -> None:
    assert api.send("PUT", f"/v1/tenants/{tenant}/alerting", {"group_wait_s": 0}).status_code == 200
    created = submit(api, agent, requester=MAYA, name="it-fails", command=[sys.executable, "-c", "raise SystemExit(3)"])
    done = until_state(api, publisher, created["id"], "failed", "succeeded")
    assert done["state"] == "failed", done

    opened = wait_for(lambda: alerts(api, tenant, "job_failed"))
    assert [a["id"] for a in opened] == [f"job_failed.{created['id']}"]
    assert opened[0]["agent_id"] == agent and "<@U0MAYA01>" in opened[0]["message"]

    def posted() -> list[dict[str, Any]]:
        tick(publisher, "liveness-sweep")  # the minute job sends the outbox
        return slack.about(created["id"], "chat.postMessage")

    message = wait_for(posted, timeout=30, every=1)
    assert len(message) == 1 and "<@U0MAYA01>" in message[0]["params"]["text"]
    assert any(c["params"].get("email") == MAYA for c in slack.calls("users.lookupByEmail"))
    tick(publisher, "jobs-reconcile")  # settled already: a second tick opens nothing more
    assert len(alerts(api, tenant, "job_failed")) == 1


def test_a_queue_over_the_tenants_threshold_opens_its_alert_and_resolves_when_it_shortens(
    api: Api, publisher: Any, tenant: str, agent: str
) -> None:
    settings = {"alert_queue_length": 1, "user_quota": {"gpu": 1}}
    assert api.send("PUT", f"/v1/tenants/{tenant}/jobs", settings).status_code == 200
    slow = {**FAST, "step_sleep_s": 1}
    running = submit(api, agent, resources={"gpu": 1}, hyperparameters={"epochs": 120}, training_config=slow)
    waiting = [submit(api, agent, name=f"w{n}", resources={"gpu": 1}) for n in range(2)]
    assert running["state"] == "admitted" and [w["state"] for w in waiting] == ["queued", "queued"]

    def state_of_queue_alert(state: str) -> list[dict[str, Any]]:
        tick(publisher, "jobs-reconcile")
        return alerts(api, tenant, "job_queue", state)

    opened = wait_for(lambda: state_of_queue_alert("open"), timeout=30, every=1)
    assert len(opened) == 1 and "2 training jobs" in opened[0]["message"]
    assert api.send("POST", f"/v1/jobs/{waiting[0]['id']}/cancel", {"reason": "shorter queue"}).status_code == 200
    resolved = wait_for(lambda: state_of_queue_alert("resolved"), timeout=30, every=1)
    assert [a["id"] for a in resolved] == [opened[0]["id"]]
    assert alerts(api, tenant, "job_queue", "open") == []
    for left in (running, waiting[1]):
        api.send("POST", f"/v1/jobs/{left['id']}/cancel", {"reason": "done"})
    assert job(api, running["id"])["state"] == "cancelled"
