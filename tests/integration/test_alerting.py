"""Liveness ladder, health rules, alert episodes and Slack notifications, through the real path.

Agents beat every second; the sweep is fired the way Cloud Scheduler fires it (a tick published to
``tick-liveness-sweep``, pushed to ``fleet-sweep`` served by functions-framework), and Slack is the
fake Web API server reached through the real slack_sdk client. Each test uses its own tenant.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid
from typing import Any

import pytest

from tests.integration.conftest import Api, Slack, tick, wait_for
from tests.integration.helpers import agent_doc, heartbeat, publish, registration

pytestmark = pytest.mark.integration


@pytest.fixture
def tenant(api: Api) -> str:
    name = f"t{uuid.uuid4().hex[:10]}"
    # Notices of the heartbeat rules go out at the next sweep, not after the default 30 s group wait.
    reply = api.send("PUT", f"/v1/tenants/{name}/alerting", {"group_wait_s": 0})
    assert reply.status_code == 200, reply.text
    return name


def sweep_until(publisher: Any, condition: Any, timeout: float = 30.0) -> Any:
    """Fire sweeps until ``condition()`` holds (each tick is one run of the minute job)."""

    def fired() -> Any:
        tick(publisher)
        time.sleep(0.7)
        return condition()

    return wait_for(fired, timeout=timeout, every=0.3)


def agent(firestore: Any, agent_id: str) -> dict[str, Any]:
    return agent_doc(firestore, agent_id) or {}


def start_agents(publisher: Any, firestore: Any, tenant: str, ids: list[str], interval: int = 1) -> None:
    for agent_id in ids:
        publish(publisher, registration(agent_id, tenant=tenant, heartbeat_interval_s=interval))
    for agent_id in ids:
        wait_for(lambda a=agent_id: agent_doc(firestore, a))
        publish(publisher, heartbeat(agent_id, 1))
    for agent_id in ids:
        wait_for(lambda a=agent_id: agent(firestore, a).get("heartbeats") == 1)


def test_the_ladder_late_offline_and_back_with_one_message_edited(
    publisher: Any, firestore: Any, api: Api, slack: Slack, tenant: str, agent_id: str
) -> None:
    start_agents(publisher, firestore, tenant, [agent_id])
    sweep_until(publisher, lambda: agent(firestore, agent_id).get("liveness") == "late")
    assert agent(firestore, agent_id)["status"] == "busy"  # late is a warning, not a state change
    opened = wait_for(lambda: slack.about(agent_id, "chat.postMessage"))
    assert len(opened) == 1 and opened[0]["response"]["channel"].startswith("C")
    assert "Agent silent" in json.dumps(opened[0]["params"]) and "warning" in json.dumps(opened[0]["params"])

    sweep_until(publisher, lambda: agent(firestore, agent_id).get("status") == "offline")
    assert agent(firestore, agent_id)["liveness"] == "offline"
    wait_for(lambda: slack.about(agent_id, "chat.update"))  # the original rewritten at severity high

    publish(publisher, heartbeat(agent_id, 2))
    wait_for(lambda: agent(firestore, agent_id).get("liveness") == "ok")
    assert agent(firestore, agent_id)["status"] == "busy"
    sweep_until(publisher, lambda: any("Resolved" in json.dumps(c["params"]) for c in slack.about(agent_id)))
    updates = [c for c in slack.about(agent_id, "chat.update") if "Resolved" in json.dumps(c["params"])]
    assert len(updates) == 1 and updates[0]["params"]["ts"] == opened[0]["response"]["ts"]
    episodes = api.get("/v1/alerts", agent_id=agent_id).json()["items"]
    assert [(e["rule"], e["state"]) for e in episodes] == [("liveness", "resolved")]
    # One opening message for the whole episode: the rest were edits and thread replies.
    assert len([c for c in slack.about(agent_id, "chat.postMessage") if not c["params"].get("thread_ts")]) == 1


def test_frozen_is_sticky_until_an_approver_releases_it(
    publisher: Any, firestore: Any, api: Api, slack: Slack, tenant: str, agent_id: str
) -> None:
    start_agents(publisher, firestore, tenant, [agent_id])
    time.sleep(10.5)
    sweep_until(publisher, lambda: agent(firestore, agent_id).get("status") == "frozen")
    publish(publisher, heartbeat(agent_id, 2, status="active"))
    wait_for(lambda: agent(firestore, agent_id).get("last_seq") == 2)
    assert agent(firestore, agent_id)["status"] == "frozen"  # a heartbeat does not lift it

    released = api.send("POST", f"/v1/agents/{agent_id}/release", {"reason": "host replaced"})
    assert released.status_code == 200, released.text
    assert released.json()["status"] == "active" and "frozen" in released.json()["released"]
    again = api.send("POST", f"/v1/agents/{agent_id}/release", {"reason": "twice"})
    assert again.status_code == 409 and again.json()["error"]["code"] == "conflict"
    doc = agent(firestore, agent_id)
    assert doc["status"] == "active" and doc["liveness"] == "ok"
    sweep_until(publisher, lambda: any("Resolved" in json.dumps(c["params"]) for c in slack.about(agent_id)))


def test_a_silenced_episode_still_sends_its_resolution(
    publisher: Any, firestore: Any, api: Api, slack: Slack, tenant: str, agent_id: str
) -> None:
    start_agents(publisher, firestore, tenant, [agent_id])
    silence = api.send("POST", "/v1/silences", {"agent_id": agent_id, "reason": "known", "duration_s": 600})
    assert silence.status_code == 200, silence.text
    sweep_until(publisher, lambda: agent(firestore, agent_id).get("liveness") == "late")
    sweep_until(publisher, lambda: "silenced" in json.dumps(api.get("/v1/alerts", agent_id=agent_id).json()))
    assert slack.about(agent_id) == []  # the opening was held back

    publish(publisher, heartbeat(agent_id, 2))
    wait_for(lambda: agent(firestore, agent_id).get("liveness") == "ok")
    resolved = sweep_until(publisher, lambda: slack.about(agent_id, "chat.postMessage"))
    assert len(resolved) == 1 and "Resolved" in json.dumps(resolved[0]["params"])
    assert "silenced" in json.dumps(resolved[0]["params"])
    ended = api.send("DELETE", f"/v1/silences/{silence.json()['id']}")
    assert ended.status_code == 200 and ended.json()["active"] is False


def test_a_heartbeat_never_ends_a_maintenance_window(
    publisher: Any, firestore: Any, api: Api, slack: Slack, tenant: str, agent_id: str
) -> None:
    start_agents(publisher, firestore, tenant, [agent_id])
    window = api.send(
        "POST", "/v1/silences", {"agent_id": agent_id, "reason": "upgrade", "duration_s": 600, "maintenance": True}
    )
    assert window.status_code == 200, window.text
    time.sleep(6)
    tick(publisher)
    wait_for(lambda: agent(firestore, agent_id).get("liveness_from") is not None)
    publish(publisher, heartbeat(agent_id, 2))
    wait_for(lambda: agent(firestore, agent_id).get("last_seq") == 2)
    active = api.get("/v1/silences").json()["items"]
    assert [s["id"] for s in active if s["agent_id"] == agent_id] == [window.json()["id"]]
    time.sleep(6)
    tick(publisher)
    time.sleep(2)
    assert agent(firestore, agent_id)["liveness"] == "ok" and slack.about(agent_id) == []


def test_many_agents_late_together_make_one_grouped_message(
    publisher: Any, firestore: Any, slack: Slack, tenant: str
) -> None:
    ids = [f"grp-{uuid.uuid4().hex[:8]}" for _ in range(4)]
    start_agents(publisher, firestore, tenant, ids, interval=2)
    sweep_until(publisher, lambda: all(agent(firestore, a).get("liveness") == "late" for a in ids))
    posts = wait_for(lambda: slack.about(tenant, "chat.postMessage"))
    assert len(posts) == 1, posts
    text = json.dumps(posts[0]["params"])
    assert all(a in text for a in ids) and "4 agents" in text


def test_a_tenant_mostly_offline_raises_one_root_alert_and_holds_back_the_rest(
    publisher: Any, firestore: Any, api: Api, slack: Slack, tenant: str
) -> None:
    ids = [f"root-{uuid.uuid4().hex[:8]}" for _ in range(4)]
    start_agents(publisher, firestore, tenant, ids, interval=2)
    quiet = ids[:3]
    stop = threading.Event()

    def keep_beating() -> None:  # the fourth stays alive for the whole test
        seq = 2
        while not stop.wait(0.5):
            publish(publisher, heartbeat(ids[3], seq))
            seq += 1

    beater = threading.Thread(target=keep_beating, daemon=True)
    beater.start()
    try:
        sweep_until(publisher, lambda: all(agent(firestore, a).get("status") == "offline" for a in quiet), timeout=40)
        roots = sweep_until(
            publisher, lambda: api.get("/v1/alerts", tenant=tenant, rule="fleet_offline").json()["items"]
        )
    finally:
        stop.set()
        beater.join(timeout=10)
    assert len(roots) == 1 and roots[0]["state"] == "open" and roots[0]["agent_id"] is None
    root_posts = wait_for(
        lambda: [c for c in slack.about("Many agents offline", "chat.postMessage") if tenant in json.dumps(c)]
    )
    assert len(root_posts) == 1
    liveness = api.get("/v1/alerts", tenant=tenant, rule="liveness").json()["items"]
    assert {e["agent_id"] for e in liveness} == set(quiet)
    assert all(e.get("inhibited_by") == roots[0]["id"] for e in liveness)


def test_concurrent_sweeps_send_each_notice_once(publisher: Any, firestore: Any, slack: Slack, tenant: str) -> None:
    ids = [f"conc-{uuid.uuid4().hex[:8]}" for _ in range(2)]
    start_agents(publisher, firestore, tenant, ids, interval=1)
    time.sleep(3.5)
    for _ in range(4):
        tick(publisher)
    wait_for(lambda: all(agent(firestore, a).get("liveness") == "late" for a in ids))
    time.sleep(3)
    for _ in range(4):
        tick(publisher)
    time.sleep(3)
    for agent_id in ids:
        posts = [c for c in slack.about(agent_id, "chat.postMessage") if not c["params"].get("thread_ts")]
        assert len(posts) == 1, posts


def test_slack_down_then_rate_limited_the_notice_arrives_once(
    publisher: Any, firestore: Any, api: Api, slack: Slack, tenant: str, agent_id: str
) -> None:
    start_agents(publisher, firestore, tenant, [agent_id])
    slack.fail(status=503, count=1000)
    try:
        sweep_until(publisher, lambda: agent(firestore, agent_id).get("liveness") == "late")
        tick(publisher)
        wait_for(lambda: [c for c in slack.calls() if c.get("failed") and agent_id in json.dumps(c["params"])])
    finally:
        slack.fail(count=0)
    slack.fail(status=429, retry_after=2, count=1)

    def top() -> list[dict[str, Any]]:
        return [c for c in slack.about(agent_id, "chat.postMessage") if not c["params"].get("thread_ts")]

    sweep_until(publisher, top, timeout=40)
    time.sleep(2)
    tick(publisher)
    time.sleep(2)
    assert len(top()) == 1  # retried until Slack took it, and never sent twice


def test_high_error_rate_opens_an_episode_and_a_low_score_quarantines(
    publisher: Any, firestore: Any, api: Api, slack: Slack, tenant: str, agent_id: str
) -> None:
    reply = api.send("PUT", f"/v1/tenants/{tenant}/health", {"quarantine_at": 90})
    assert reply.status_code == 200 and reply.json()["effective"]["quarantine_at"] == 90
    publish(publisher, registration(agent_id, tenant=tenant, heartbeat_interval_s=30))
    wait_for(lambda: agent_doc(firestore, agent_id))
    publish(publisher, heartbeat(agent_id, 1, error_rate=0.5, cpu_pct=10.0))
    wait_for(lambda: agent(firestore, agent_id).get("status") == "quarantined")
    doc = agent(firestore, agent_id)
    assert "quarantine" in doc["holds"] and doc["health"]["score"] == 85
    rules = {e["rule"]: e for e in api.get("/v1/alerts", agent_id=agent_id).json()["items"]}
    assert set(rules) == {"error_rate", "security"} and rules["security"]["severity"] == "critical"
    sweep_until(publisher, lambda: len(slack.about(agent_id, "chat.postMessage")) >= 2)
    released = api.send("POST", f"/v1/agents/{agent_id}/release", {"reason": "investigated"})
    assert released.status_code == 200 and released.json()["released"] == ["quarantine"]


def test_make_tick_fires_a_job_through_the_scheduler(stack: Any, firestore: Any, api: Api) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "emulators.scheduler", "tick", "liveness-sweep", "--state-dir", str(stack.state_dir)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    unknown = subprocess.run(
        [sys.executable, "-m", "emulators.scheduler", "tick", "no-such-job", "--state-dir", str(stack.state_dir)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert unknown.returncode == 2 and "liveness-sweep" in unknown.stdout + unknown.stderr
