"""Task assignment through the real path: agents registered and heartbeating over Pub/Sub, the REST API
served by functions-framework, Firestore (emulator) holding tasks, outcome summaries and settings."""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from tests.integration.conftest import Api, wait_for
from tests.integration.helpers import agent_doc, heartbeat, log_lines, make_key, publish, registration

pytestmark = pytest.mark.integration


@pytest.fixture
def tenant() -> str:
    return f"k{uuid.uuid4().hex[:10]}"


def start_agent(publisher: Any, firestore: Any, tenant: str, name: str, caps: list[str], **kw: Any) -> str:
    """Register an agent and send one heartbeat (active, idle, low CPU); returns its id once active."""
    agent_id = f"{tenant}-{name}"
    publish(publisher, registration(agent_id, tenant=tenant, capabilities=caps, **kw))
    wait_for(lambda: agent_doc(firestore, agent_id))
    publish(publisher, heartbeat(agent_id, 1, status="active", active_tasks=0, cpu_pct=10.0, error_rate=0.01))
    wait_for(lambda: (agent_doc(firestore, agent_id) or {}).get("status") == "active")
    return agent_id


def assign(api: Api, tenant: str, task_id: str, caps: list[str], key: str | None = None, **kw: Any) -> Any:
    body = {"task_id": task_id, "tenant": tenant, "required_capabilities": caps, "estimated_duration_s": 60, **kw}
    return api.send("POST", "/v1/tasks/assign", body, key=key)


def outcome(api: Api, task_id: str, key: str | None = None, **body: Any) -> Any:
    return api.send("POST", f"/v1/tasks/{task_id}/outcome", body, key=key)


def stats_doc(firestore: Any, agent_id: str) -> dict[str, Any]:
    doc = firestore.collection("task_stats").document(agent_id).get()
    return doc.to_dict() or {} if doc.exists else {}


def test_assign_picks_the_capable_agent_repeats_its_pick_and_refuses_with_the_reasons_when_none_can(
    api: Api, publisher: Any, firestore: Any, stack: Any, tenant: str
) -> None:
    gpu = start_agent(publisher, firestore, tenant, "gpu1", ["chat", "gpu"], resources={"gpu": 1})
    chat = [start_agent(publisher, firestore, tenant, f"chat{i}", ["chat"]) for i in (1, 2)]

    first = assign(api, tenant, f"{tenant}-t1", ["chat", "gpu"], resources={"gpu": 1})
    assert first.status_code == 200, first.text
    picked = first.json()
    assert picked["agent_id"] == gpu and picked["state"] == "assigned" and not picked["replayed"]
    assert picked["method"] == "heuristic" and picked["model_version"] is None
    assert picked["confidence"] == pytest.approx(2 / 3, abs=1e-6)
    assert picked["reasons"][:2] == [
        "predicted success 0.67 (heuristic: no recorded outcomes, prior 0.67)",
        "the only available agent with chat, gpu",
    ]
    assert picked["excluded"] == ["2 agents lack capability gpu"] and picked["candidates"] == 1
    assert picked["breakdown"]["agent_id"] == gpu and picked["alternatives"] == []
    assert stats_doc(firestore, gpu)["assigned"] == 1

    # The same request again (a retry): the stored pick, nothing written; another task under that id: 409.
    again = assign(api, tenant, f"{tenant}-t1", ["chat", "gpu"], resources={"gpu": 1})
    assert again.status_code == 200 and again.json()["replayed"] and again.json()["agent_id"] == gpu
    other = assign(api, tenant, f"{tenant}-t1", ["chat"])
    assert other.status_code == 409 and "different request" in other.json()["error"]["reason"]
    assert stats_doc(firestore, gpu)["assigned"] == 1
    got = api.get(f"/v1/tasks/{tenant}-t1").json()
    assert got["agent_id"] == gpu and got["outcome"] is None and not got["replayed"]
    audit = api.get("/v1/audit", target=f"{tenant}-t1").json()["items"]
    assert [a["action"] for a in audit] == ["task.assign"] and audit[0]["details"]["agent_id"] == gpu
    # Another tenant's task with a taken id is a conflict.
    taken = assign(api, f"{tenant}x", f"{tenant}-t1", [])
    assert taken.status_code == 409 and "already in use" in taken.json()["error"]["reason"]

    # With the only GPU agent paused, nobody can take a GPU task, and the reply says why.
    paused = api.send("POST", f"/v1/agents/{gpu}/pause", {"reason": "maintenance window"})
    assert paused.status_code == 200, paused.text
    refused = assign(api, tenant, f"{tenant}-t2", ["chat", "gpu"])
    assert refused.status_code == 409, refused.text
    assert refused.json()["error"] == {
        "code": "conflict",
        "reason": f"no agent can take task {tenant}-t2: 2 agents lack capability gpu; 1 agent is paused",
    }
    assert api.get(f"/v1/tasks/{tenant}-t2").status_code == 404  # a refusal stores nothing
    chat_only = assign(api, tenant, f"{tenant}-t3", ["chat"])
    assert chat_only.status_code == 200 and chat_only.json()["agent_id"] in chat
    assert chat_only.json()["excluded"] == ["1 agent is paused"]

    # An assignment reads the API key (not cached here), the task, the tenant's 3 agents, its settings, the
    # candidate's summary and spend, and the model registry (if not checked within its refresh period, 300 s);
    # it writes three documents.
    request_id = first.headers["X-Request-Id"]
    line = wait_for(
        lambda: next((x for x in log_lines(stack.state_dir, "fleet-api") if x.get("request_id") == request_id), None)
    )
    assert line["firestore_writes"] == 3 and line["firestore_reads"] in (1 + 1 + 3 + 1 + 2, 1 + 1 + 3 + 1 + 2 + 1), line


def test_outcomes_are_recorded_once_feed_the_summary_and_steer_later_picks(
    api: Api, publisher: Any, firestore: Any, tenant: str
) -> None:
    a = start_agent(publisher, firestore, tenant, "a", ["chat", "x"])
    b = start_agent(publisher, firestore, tenant, "b", ["chat", "y"])
    assert assign(api, tenant, f"{tenant}-1", ["x"]).json()["agent_id"] == a
    assert assign(api, tenant, f"{tenant}-2", ["y"]).json()["agent_id"] == b

    done = outcome(api, f"{tenant}-1", success=True, duration_s=30.5, cost_usd=0.05)
    assert done.status_code == 200, done.text
    view = done.json()
    assert view["state"] == "succeeded" and not view["replayed"]
    assert view["outcome"]["success"] is True and view["outcome"]["cost_usd"] == "0.05"
    assert view["outcome"]["recorded_by"].startswith("api:")
    failed = outcome(api, f"{tenant}-2", success=False, cost_usd=0.01, error="timeout calling the model")
    assert failed.status_code == 200 and failed.json()["state"] == "failed"

    # The same outcome again (a retry) changes nothing; a different one is refused.
    repeat = outcome(api, f"{tenant}-1", success=True, duration_s=30.5, cost_usd=0.05)
    assert repeat.status_code == 200 and repeat.json()["replayed"]
    conflict = outcome(api, f"{tenant}-1", success=False)
    assert conflict.status_code == 409 and "already has a different outcome (succeeded" in conflict.text
    assert outcome(api, f"{tenant}-nope", success=True).status_code == 404
    bad = outcome(api, f"{tenant}-1", success="yes")
    assert bad.status_code == 400 and "success" in bad.json()["error"]["reason"]

    sa, sb = stats_doc(firestore, a), stats_doc(firestore, b)
    assert (sa["outcomes"], sa["successes"], sa["cost_nanos"], sa["duration_n"]) == (1, 1, 50_000_000, 1)
    assert sa["capabilities"] == {"x": {"n": 1, "ok": 1}}
    assert (sb["outcomes"], sb["successes"], sb["cost_nanos"]) == (1, 0, 10_000_000)

    # Default weights: b is far cheaper (1.0 vs 0.2) though less likely to succeed (0.50 vs 0.75).
    cheap = assign(api, tenant, f"{tenant}-3", ["chat"]).json()
    assert cheap["agent_id"] == b, cheap
    assert cheap["breakdown"]["cost_basis"] == "recorded tasks"
    assert any(r.startswith(f"cheaper: ~$0.0100 per task vs $0.0500 ({a})") for r in cheap["reasons"]), cheap
    assert any(r.startswith(f"{a} is likelier to succeed") for r in cheap["reasons"]), cheap
    assert cheap["alternatives"][0]["agent_id"] == a
    assert cheap["alternatives"][0]["success"] == pytest.approx(0.75)

    # The tenant's settings weigh success only: a wins; a request's weights override them per task.
    firestore.collection("tenants").document(tenant).set(
        {"tasks": {"weights": {"success": 100, "cost": 0, "availability": 0, "sla": 0}}}, merge=True
    )
    time.sleep(1.5)  # FLEET_CONFIG_CACHE_S is 1 in the integration stack
    likely = assign(api, tenant, f"{tenant}-4", ["chat"]).json()
    assert likely["agent_id"] == a and likely["weights"] == {"success": 1.0, "cost": 0, "availability": 0, "sla": 0}
    mixed = assign(api, tenant, f"{tenant}-5", ["chat"], weights={"cost": 100}).json()
    assert mixed["agent_id"] == b and mixed["weights"]["cost"] == 0.5
    audit = api.get("/v1/audit", target=f"{tenant}-1").json()["items"]
    assert sorted(x["action"] for x in audit) == ["task.assign", "task.outcome"]

    # What a retraining job reads: the tenant's outcomes, newest first, with the features known at assignment.
    from shared.ml.assign import FEATURES
    from shared.store import tasks as task_store

    rows = task_store.recent_outcomes(tenant)
    assert [(r.task_id, r.agent_id, r.success) for r in rows] == [(f"{tenant}-2", b, False), (f"{tenant}-1", a, True)]
    assert set(rows[0].features) == set(FEATURES) and rows[0].features["agent_outcomes"] == 0
    assert [r.task_id for r in task_store.recent_outcomes(tenant, limit=1)] == [f"{tenant}-2"]
    assert [r.task_id for r in task_store.recent_outcomes(tenant, before=rows[0].at)] == [f"{tenant}-1"]
    assert task_store.outcomes_at_least(tenant, 50) == 2 and task_store.outcomes_at_least(tenant, 1) == 1
    fleet = task_store.recent_outcomes(None, limit=500)
    assert {r.task_id for r in rows} <= {r.task_id for r in fleet} and fleet == sorted(
        fleet, key=lambda r: -r.at.timestamp()
    )


def test_concurrent_repeats_assign_once_and_count_one_outcome(
    api: Api, publisher: Any, firestore: Any, tenant: str
) -> None:
    agent = start_agent(publisher, firestore, tenant, "solo", ["chat"])
    task_id = f"{tenant}-race"
    with ThreadPoolExecutor(6) as pool:
        replies = list(pool.map(lambda _: assign(api, tenant, task_id, ["chat"]), range(6)))
    assert [r.status_code for r in replies] == [200] * 6, [r.text for r in replies]
    assert {r.json()["agent_id"] for r in replies} == {agent}
    assert [r.json()["replayed"] for r in replies].count(False) == 1
    assert stats_doc(firestore, agent)["assigned"] == 1

    with ThreadPoolExecutor(6) as pool:
        done = list(pool.map(lambda _: outcome(api, task_id, success=True, duration_s=5), range(6)))
    assert [r.status_code for r in done] == [200] * 6, [r.text for r in done]
    assert [r.json()["replayed"] for r in done].count(False) == 1
    st = stats_doc(firestore, agent)
    assert (st["outcomes"], st["successes"], st["duration_n"]) == (1, 1, 1)


def test_keys_act_only_within_their_tenant_and_role(
    api: Api, publisher: Any, firestore: Any, stack: Any, tenant: str
) -> None:
    start_agent(publisher, firestore, tenant, "one", ["chat"])
    operator = make_key(stack, f"ops-{tenant}", "operator", tenant)
    viewer = make_key(stack, f"view-{tenant}", "viewer", tenant)
    stranger = make_key(stack, f"ops-{tenant}-x", "operator", f"{tenant}x")

    mine = assign(api, tenant, f"{tenant}-k1", ["chat"], key=operator)
    assert mine.status_code == 200, mine.text
    assert mine.json()["assigned_by"] == f"api:ops-{tenant}"
    assert assign(api, tenant, f"{tenant}-k2", ["chat"], key=viewer).status_code == 403
    assert api.get(f"/v1/tasks/{tenant}-k1", key=viewer).status_code == 200
    other = assign(api, tenant, f"{tenant}-k3", ["chat"], key=stranger)
    assert other.status_code == 403 and "only acts for tenant" in other.json()["error"]["reason"]
    assert api.get(f"/v1/tasks/{tenant}-k1", key=stranger).status_code == 404
    assert outcome(api, f"{tenant}-k1", key=stranger, success=True).status_code == 404
    assert outcome(api, f"{tenant}-k1", key=operator, success=True).status_code == 200

    for body, needle in (
        ({"task_id": "x1", "tenant": tenant, "estimated_duration_s": 1, "colour": "red"}, "colour"),
        ({"task_id": "x1", "tenant": tenant}, "estimated_duration_s"),
        ({"task_id": "x1", "tenant": tenant, "estimated_duration_s": 1, "deadline": "2020-01-01T00:00:00Z"}, "passed"),
        ({"task_id": "x1", "tenant": tenant, "estimated_duration_s": 1, "priority": "asap"}, "priority"),
    ):
        reply = api.send("POST", "/v1/tasks/assign", body)
        assert reply.status_code == 400 and needle in reply.json()["error"]["reason"], reply.text


def test_a_tenants_weights_apply_to_its_assignments(api: Api, publisher: Any, firestore: Any, tenant: str) -> None:
    start_agent(publisher, firestore, tenant, "solo", ["chat"])
    zero = {"success": 0, "cost": 0, "availability": 0, "sla": 0}
    bad = api.send("PUT", f"/v1/tenants/{tenant}/tasks", {"weights": zero})
    assert bad.status_code == 400 and "must not all be 0" in bad.json()["error"]["reason"]
    put = api.send("PUT", f"/v1/tenants/{tenant}/tasks", {"weights": {"success": 1, "cost": 0, "availability": 0}})
    assert put.status_code == 200, put.text
    assert put.json()["effective"]["weights"] == {"success": 1.0, "cost": 0.0, "availability": 0.0, "sla": 10.0}

    def weights() -> Any:
        reply = assign(api, tenant, f"t-{uuid.uuid4().hex[:8]}", ["chat"])
        assert reply.status_code == 200, reply.text
        return reply.json()["weights"]

    # No deadline: the SLA weight is 0, so success carries everything (the settings are cached a second).
    assert wait_for(lambda: weights() == {"success": 1.0, "cost": 0.0, "availability": 0.0, "sla": 0.0}, timeout=10)
    assert api.get(f"/v1/tenants/{tenant}/tasks").json()["overrides"] == {
        "weights": {"success": 1.0, "cost": 0.0, "availability": 0.0, "sla": 10.0}
    }
