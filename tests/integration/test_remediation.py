"""Remediation policies through the real path: the tenant's policy set through the API, heartbeats and
registrations on Pub/Sub, the sweep fired as Cloud Scheduler fires it, decisions read back from Firestore
and the Slack thread. Each test uses its own tenant, whose policy is set before its first event (the
functions cache a tenant's settings for a minute).

Most cases publish as an SDK with ``commands.v2`` would (tests/integration/helpers.py) and check the fleet's
side (what it decided, sent, recorded); two run a real FleetAgent in-process: restarted through its exit
hook and brought back by a "supervisor", and throttled by its own admission.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import pytest
from fleet_agent import CallRefused, FleetAgent

from tests.integration.conftest import Api, Slack, tick, wait_for
from tests.integration.helpers import PROJECT, agent_doc, heartbeat, publish, registration, sdk_identity

pytestmark = pytest.mark.integration
V2 = ["commands.v2"]


def tenant_with(api: Api, policy: dict[str, Any]) -> str:
    name = f"r{uuid.uuid4().hex[:10]}"
    for kind, body in (("alerting", {"group_wait_s": 0}), ("remediation", policy)):
        reply = api.send("PUT", f"/v1/tenants/{name}/{kind}", body)
        assert reply.status_code == 200, reply.text
    return name


def doc(firestore: Any, agent_id: str) -> dict[str, Any]:
    return agent_doc(firestore, agent_id) or {}


def sweep_until(publisher: Any, condition: Any, timeout: float = 30.0) -> Any:
    def fired() -> Any:
        tick(publisher)
        time.sleep(0.7)
        return condition()

    return wait_for(fired, timeout=timeout, every=0.3)


def start(publisher: Any, firestore: Any, tenant: str, agent_id: str, **kw: Any) -> None:
    publish(publisher, registration(agent_id, tenant=tenant, heartbeat_interval_s=1, supports=V2, **kw))
    wait_for(lambda: doc(firestore, agent_id))
    publish(publisher, heartbeat(agent_id, 1))
    wait_for(lambda: doc(firestore, agent_id).get("heartbeats") == 1)


def policy_commands(firestore: Any, agent_id: str, command: str) -> list[dict[str, Any]]:
    entries = (doc(firestore, agent_id).get("commands") or {}).values()
    return [e for e in entries if e["command"] == command and str(e.get("origin")).startswith("policy:")]


def remediation_audit(firestore: Any, agent_id: str) -> list[dict[str, Any]]:
    found = firestore.collection("audit").where("target", "==", agent_id).stream()
    return [d.to_dict() for d in found if d.to_dict().get("action") == "agent.remediation"]


def test_a_frozen_agent_is_restarted_by_policy_comes_back_active_and_a_loop_escalates(
    publisher: Any, firestore: Any, api: Api, slack: Slack
) -> None:
    tenant = tenant_with(api, {"restart_loop": {"restarts": 1, "within_s": 3600}})
    agent_id = f"rem-{uuid.uuid4().hex[:10]}"
    start(publisher, firestore, tenant, agent_id)
    time.sleep(10.5)  # ten missed intervals of 1 s
    sweep_until(publisher, lambda: doc(firestore, agent_id).get("status") == "frozen")
    [restart] = wait_for(lambda: policy_commands(firestore, agent_id, "restart"))
    assert restart["origin"] == "policy:frozen-restart" and restart["actor"] == "system:remediation"
    assert doc(firestore, agent_id)["episodes"]["liveness"]["remediation"] == "sent"
    # Posted in the episode's thread.
    reply = sweep_until(publisher, lambda: [c for c in slack.about(agent_id) if "Remediation" in json.dumps(c)])
    assert reply[0]["params"].get("thread_ts")

    # The supervisor starts the process again: its registration lifts frozen.
    publish(publisher, registration(agent_id, tenant=tenant, heartbeat_interval_s=1, supports=V2))
    back = wait_for(lambda: (d := doc(firestore, agent_id)).get("status") == "active" and d)
    assert back["status_reason"] == "restarted by remediation policy" and back["liveness"] == "ok"

    # Frozen again within the hour: a loop (restarts=1), so a person is called instead.
    time.sleep(10.5)
    sweep_until(publisher, lambda: doc(firestore, agent_id).get("status") == "frozen")
    escalated = wait_for(lambda: doc(firestore, agent_id)["episodes"].get("remediation_escalated"))
    assert escalated["severity"] == "critical"
    assert doc(firestore, agent_id)["episodes"]["liveness"]["remediation"] == "escalated"
    assert len(policy_commands(firestore, agent_id, "restart")) == 1
    outcomes = sorted(a["outcome"] for a in remediation_audit(firestore, agent_id))
    assert outcomes == ["escalated", "sent"]


def test_a_high_error_rate_throttles_the_agent(publisher: Any, firestore: Any, api: Api) -> None:
    rule = {"name": "err", "when": "error_rate", "action": "throttle", "calls_per_minute": 2, "for_s": 0}
    tenant = tenant_with(api, {"rules": [rule]})
    agent_id = f"rem-{uuid.uuid4().hex[:10]}"
    start(publisher, firestore, tenant, agent_id)
    publish(publisher, heartbeat(agent_id, 2, error_rate=0.9))
    [throttle] = wait_for(lambda: policy_commands(firestore, agent_id, "throttle"))
    assert throttle["calls_per_minute"] == 2 and throttle["until"] and throttle["origin"] == "policy:err"
    # Still open on the next heartbeat: decided once.
    publish(publisher, heartbeat(agent_id, 3, error_rate=0.9))
    wait_for(lambda: doc(firestore, agent_id).get("last_seq") == 3)
    assert len(policy_commands(firestore, agent_id, "throttle")) == 1


def test_dry_run_changes_nothing_and_says_what_it_would_have_done(publisher: Any, firestore: Any, api: Api) -> None:
    tenant = tenant_with(api, {"mode": "dry_run"})
    agent_id = f"rem-{uuid.uuid4().hex[:10]}"
    start(publisher, firestore, tenant, agent_id)
    time.sleep(10.5)
    sweep_until(publisher, lambda: doc(firestore, agent_id).get("status") == "frozen")
    [entry] = wait_for(lambda: remediation_audit(firestore, agent_id))
    assert entry["outcome"] == "dry_run" and "would restart" in entry["details"]["summary"]
    after = doc(firestore, agent_id)
    assert not after.get("commands") and after["status"] == "frozen"
    # A registration does not lift frozen without a policy restart: only an approver does.
    publish(publisher, registration(agent_id, tenant=tenant, heartbeat_interval_s=1, supports=V2))
    wait_for(lambda: len(doc(firestore, agent_id).get("registration_event_ids") or []) == 2)
    assert doc(firestore, agent_id)["status"] == "frozen"


def test_the_policy_is_read_and_replaced_through_the_api_by_admins_only(api: Api) -> None:
    tenant = f"r{uuid.uuid4().hex[:10]}"
    shown = api.get(f"/v1/tenants/{tenant}/remediation")
    assert shown.status_code == 200 and shown.json()["effective"]["mode"] == "on"
    assert {r["when"] for r in shown.json()["effective"]["rules"]} == {
        "error_rate",
        "frozen",
        "memory_saturated",
        "failure_risk",
    }
    pause = {"rules": [{"name": "x", "when": "frozen", "action": "pause"}]}
    bad = api.send("PUT", f"/v1/tenants/{tenant}/remediation", pause)
    assert bad.status_code == 400 and "not a remediation command" in bad.text


def test_a_frozen_sdk_agent_is_restarted_by_policy_and_comes_back_active(
    publisher: Any, firestore: Any, api: Api, tmp_path: Any
) -> None:
    tenant = tenant_with(api, {})
    agent_id = f"rem-{uuid.uuid4().hex[:10]}"
    identity = sdk_identity(tmp_path, agent_id, tenant)
    reg = registration(agent_id, tenant=tenant, heartbeat_interval_s=1)
    exits: list[int] = []
    agent = FleetAgent(reg, project=PROJECT, exit_process=exits.append, **identity)
    try:
        agent.listen()
        agent.register()
        agent.start()
        wait_for(lambda: doc(firestore, agent_id).get("heartbeats", 0) >= 1)
        assert doc(firestore, agent_id)["supports"] == V2
        agent.pause_heartbeats()  # the main loop froze; the command listener lives on
        sweep_until(publisher, lambda: doc(firestore, agent_id).get("status") == "frozen", timeout=40)
        wait_for(lambda: exits, timeout=30)
        assert exits[0] == 75  # restart: the supervisor starts the process again
    finally:
        agent.close()
    # The supervisor: the same id and key, a new process.
    with FleetAgent(reg, project=PROJECT, exit_process=exits.append, **identity) as again:
        again.listen()
        again.register()
        back = wait_for(lambda: (d := doc(firestore, agent_id)).get("status") == "active" and d)
        assert back["status_reason"] == "restarted by remediation policy"


def test_a_throttled_sdk_agent_is_refused_above_its_cap_by_its_own_sdk(
    publisher: Any, firestore: Any, api: Api, tmp_path: Any
) -> None:
    rule = {"name": "err", "when": "error_rate", "action": "throttle", "calls_per_minute": 1, "for_s": 0}
    tenant = tenant_with(api, {"rules": [rule]})
    agent_id = f"rem-{uuid.uuid4().hex[:10]}"
    reg = registration(agent_id, tenant=tenant, heartbeat_interval_s=30)
    with FleetAgent(reg, project=PROJECT, leases=False, **sdk_identity(tmp_path, agent_id, tenant)) as agent:
        agent.listen()
        agent.register()
        wait_for(lambda: doc(firestore, agent_id))
        agent.heartbeat(metrics={"error_rate": 0.9})
        wait_for(lambda: agent.throttle is not None, timeout=30)
        with agent.costs.call("answer", model="gpt-4o") as call:
            call.tokens(10, 10)
        with pytest.raises(CallRefused, match="throttled"), agent.costs.call("answer", model="gpt-4o") as call:
            call.tokens(10, 10)
