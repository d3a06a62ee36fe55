"""Registration and heartbeat events through the real path: emulator push -> functions-framework -> Firestore."""

from __future__ import annotations

import base64
import itertools
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import pytest
import requests
from fleet_agent.contracts import MAX_EVENT_BYTES, EventType
from fleet_agent.identity import AgentKey

from tests.integration.conftest import wait_for
from tests.integration.helpers import (
    agent_doc,
    heartbeat,
    log_lines,
    outcomes,
    publish,
    publish_raw,
    registration,
    signed_encode,
)

pytestmark = pytest.mark.integration


def register(publisher: Any, firestore: Any, agent_id: str, **kw: Any) -> dict[str, Any]:
    publish(publisher, registration(agent_id, **kw))
    return wait_for(lambda: agent_doc(firestore, agent_id))


def poll(condition: Callable[[], Any], timeout: float) -> Any:
    """``condition()``'s first truthy value within ``timeout`` seconds, or None (``wait_for`` raises)."""
    try:
        return wait_for(condition, timeout=timeout)
    except AssertionError:
        return None


def beat_and_wait(publisher: Any, firestore: Any, agent_id: str, seq: int, **kw: Any) -> dict[str, Any]:
    publish(publisher, heartbeat(agent_id, seq, **kw))
    return wait_for(lambda: (d := agent_doc(firestore, agent_id)) and d["last_seq"] >= seq and d)


def test_registered_agent_heartbeats_and_is_read_through_the_api(publisher, firestore, api, agent_id) -> None:
    doc = register(publisher, firestore, agent_id)
    assert doc["status"] == "registered" and doc["tenant"] == "acme"
    for seq in (1, 2):
        beat_and_wait(publisher, firestore, agent_id, seq, status="idle")

    view = api.get(f"/v1/agents/{agent_id}").json()
    assert view["agent_id"] == agent_id and view["tenant"] == "acme" and view["status"] == "idle"
    assert view["version"] == "1.0.0" and view["last_seq"] == 2
    assert view["registered_at"] and view["last_heartbeat_at"]
    assert view["metrics"]["cpu_pct"] == 12.0 and view["metrics"]["tokens_per_s"] == 3.0

    listed = api.get("/v1/agents", tenant="acme", status="idle", page_size=500).json()
    assert agent_id in [a["agent_id"] for a in listed["items"]]


def test_redelivered_registration_counts_once(stack, publisher, firestore, agent_id) -> None:
    sent = signed_encode(registration(agent_id), event_id=f"reg-{agent_id}")
    for _ in range(3):  # the same event, published three times (a publisher retry)
        publish_raw(publisher, EventType.REGISTRATION, *sent)
    seen = wait_for(lambda: len(o := outcomes(stack, "fleet-registrations", agent_id)) == 3 and o)
    assert sorted(seen) == ["accepted", "duplicate", "duplicate"]
    doc = agent_doc(firestore, agent_id)
    assert doc is not None and doc["registration_event_ids"] == [f"reg-{agent_id}"]
    versions = list(firestore.collection("agents").document(agent_id).collection("versions").stream())
    assert [v.id for v in versions] == ["1.0.0"]
    # Audited once: the registration, and the enrollment it carried (one use of the token)
    assert sorted(e.to_dict()["action"] for e in log_lines_for(firestore, agent_id)) == [
        "agent.register",
        "enrollment.use",
    ]


def log_lines_for(firestore: Any, agent_id: str) -> list[Any]:
    from google.cloud.firestore_v1.base_query import FieldFilter

    return list(firestore.collection("audit").where(filter=FieldFilter("target", "==", agent_id)).stream())


def test_new_version_is_recorded_and_audited(publisher, firestore, agent_id) -> None:
    register(publisher, firestore, agent_id)
    publish(publisher, registration(agent_id, version="2.0.0"))
    doc = wait_for(lambda: (d := agent_doc(firestore, agent_id)) and d["version"] == "2.0.0" and d)
    assert doc["versions"] == ["1.0.0", "2.0.0"]
    versions = {v.id for v in firestore.collection("agents").document(agent_id).collection("versions").stream()}
    assert versions == {"1.0.0", "2.0.0"}
    actions = sorted(e.to_dict()["action"] for e in log_lines_for(firestore, agent_id))
    assert actions == ["agent.register", "agent.upgrade", "enrollment.use"]  # enrolled by the first


def test_replayed_push_is_idempotent(stack, publisher, firestore, agent_id) -> None:
    """Pub/Sub redelivers the very same push (same message id); the function must not count it twice."""
    register(publisher, firestore, agent_id)
    body, attrs = signed_encode(heartbeat(agent_id, 1))
    push = {
        "message": {
            "data": base64.b64encode(body).decode(),
            "attributes": attrs,
            "messageId": f"replay-{agent_id}",
            "publishTime": "2026-11-21T10:00:00Z",
        },
        "subscription": "projects/fleet-local/subscriptions/agent-heartbeats-push",
    }
    url = stack.env["FLEET_FUNCTION_URL_FLEET_HEARTBEATS"] + "/projects/fleet-local/topics/agent-heartbeats"
    for _ in range(3):
        assert requests.post(url, json=push, timeout=10).status_code == 200
    doc = agent_doc(firestore, agent_id)
    assert doc is not None and doc["last_seq"] == 1 and doc["heartbeats"] == 1


def test_reordered_heartbeats_leave_the_newest_state(stack, publisher, firestore, api, agent_id) -> None:
    register(publisher, firestore, agent_id)
    beat_and_wait(publisher, firestore, agent_id, 3, status="busy", cpu_pct=33.0)
    for seq in (1, 2):  # older heartbeats arriving late
        publish(publisher, heartbeat(agent_id, seq, status="idle", cpu_pct=float(seq)))
    assert wait_for(lambda: (o := outcomes(stack, "fleet-heartbeats", agent_id)) and len(o) == 3 and o) == [
        "accepted",
        "stale",
        "stale",
    ]
    doc = agent_doc(firestore, agent_id)
    assert doc is not None
    assert (doc["last_seq"], doc["status"], doc["heartbeats"]) == (3, "busy", 1)
    assert api.get(f"/v1/agents/{agent_id}").json()["metrics"] == {"cpu_pct": 33.0}


def test_heartbeat_that_overtakes_its_registration_is_not_lost(publisher, firestore, agent_id) -> None:
    publish(publisher, heartbeat(agent_id, 1, status="idle"))
    import time

    time.sleep(1.0)
    publish(publisher, registration(agent_id))
    doc = wait_for(lambda: (d := agent_doc(firestore, agent_id)) and d["last_seq"] == 1 and d, timeout=30)
    assert doc["status"] == "idle"


def test_bad_input_is_recorded_and_the_stream_goes_on(publisher, firestore, api, agent_id) -> None:
    register(publisher, firestore, agent_id)
    good = {"agent_id": agent_id, "event_type": "heartbeat", "schema_version": "1"}
    body, _ = signed_encode(heartbeat(agent_id, 1))  # signed: only what each case changes is wrong
    bad = {
        "not_json": publish_raw(publisher, EventType.HEARTBEAT, b"{not json", good),
        "schema_violation": publish_raw(
            publisher,
            EventType.HEARTBEAT,
            json.dumps({"event_id": "bad-0001", "data": {"agent_id": agent_id, "seq": "x"}}).encode(),
            good,
        ),
        "wrong_attributes": publish_raw(publisher, EventType.HEARTBEAT, body, {**good, "event_type": "cost"}),
        "oversized": publish_raw(publisher, EventType.HEARTBEAT, b"x" * (MAX_EVENT_BYTES + 10), good),
        "unsupported_schema_version": publish_raw(
            publisher, EventType.HEARTBEAT, body, {**good, "schema_version": "99"}
        ),
    }
    beat_and_wait(publisher, firestore, agent_id, 2)

    def listed() -> dict[str, dict[str, Any]]:
        items = api.get("/v1/rejections", agent_id=agent_id, page_size=100).json()["items"]
        return {item["id"]: item for item in items}

    found = wait_for(lambda: (items := listed()) and len(items) >= len(bad) and items)
    for code, message_id in bad.items():
        assert found[message_id]["code"] == code
        assert found[message_id]["reason"]
        assert found[message_id]["payload"]["sha256"]
    assert found[bad["not_json"]]["payload"]["text"] == "{not json"
    assert found[bad["oversized"]]["payload"]["truncated"] is True
    assert agent_doc(firestore, agent_id)["last_seq"] == 2  # type: ignore[index]


def test_unknown_agent_is_rejected_after_its_grace(publisher, api, agent_id) -> None:
    message_id = publish(publisher, heartbeat(agent_id, 1))
    rejection = wait_for(
        lambda: next((r for r in api.get("/v1/rejections", agent_id=agent_id).json()["items"]), None),
        timeout=45,
    )
    assert rejection["id"] == message_id and rejection["code"] == "unknown_agent"


def test_other_tenant_registration_is_refused_not_merged(publisher, firestore, api, agent_id) -> None:
    register(publisher, firestore, agent_id, tenant="acme")
    # The agent itself (signed by its own key) cannot move to another tenant ...
    message_id = publish(publisher, registration(agent_id, tenant="globex", name="Impostor"))
    rejection = wait_for(lambda: next(iter(api.get("/v1/rejections", agent_id=agent_id).json()["items"]), None))
    assert rejection["id"] == message_id and rejection["code"] == "tenant_conflict"
    # ... and a true impostor (its own key, or none) is refused before that, as an unproven identity.
    for kw in ({"signer": AgentKey.generate()}, {"signed": False}):
        forged = publish(publisher, registration(agent_id, tenant="globex", name="Impostor"), **kw)
        refusal = wait_for(
            lambda f=forged: next((r for r in api.get("/v1/rejections", claimed_agent_id=agent_id).json()["items"]
                                   if r["id"] == f), None)
        )  # fmt: skip
        assert refusal["code"] in ("unknown_key", "unsigned", "bad_signature")
    doc = agent_doc(firestore, agent_id)
    assert doc is not None and (doc["tenant"], doc["name"]) == ("acme", f"Agent {agent_id}")


def test_heartbeat_never_lifts_maintenance(publisher, firestore, api, agent_id) -> None:
    from datetime import UTC, datetime

    from shared.domain.agents import apply_transition
    from shared.domain.lifecycle import Cause, State
    from shared.store import agents as agent_store

    register(publisher, firestore, agent_id)
    beat_and_wait(publisher, firestore, agent_id, 1, status="busy")
    plan = agent_store.update(
        agent_id,
        lambda current: apply_transition(
            current,
            State.MAINTENANCE,
            cause=Cause.OPERATOR,
            actor="test",
            reason="upgrade",  # type: ignore[arg-type]
            at=datetime.now(UTC),
            action_id=f"maint-{agent_id}",
        ),
    )
    assert plan.transition is not None and plan.transition.outcome.value == "applied"
    beat_and_wait(publisher, firestore, agent_id, 2, status="idle")
    view = api.get(f"/v1/agents/{agent_id}").json()
    assert view["status"] == "maintenance" and view["reported_status"] == "idle" and view["last_seq"] == 2


def test_firestore_outage_is_retried_not_lost(stack, publisher, firestore, agent_id) -> None:
    register(publisher, firestore, agent_id)
    beat_and_wait(publisher, firestore, agent_id, 1)
    stack.firestore_down_flag.touch()
    try:
        publish(publisher, heartbeat(agent_id, 2))
        wait_for(
            lambda: any(
                line.get("outcome") == "failed" and line.get("agent_id") == agent_id
                for line in log_lines(stack.state_dir, "fleet-heartbeats")
            ),
            timeout=30,
        )
    finally:
        stack.firestore_down_flag.unlink()
    doc = wait_for(lambda: (d := agent_doc(firestore, agent_id)) and d["last_seq"] == 2 and d, timeout=60)
    assert doc["heartbeats"] == 2


def test_history_is_chunked_and_bounded(publisher, firestore, api, agent_id) -> None:
    register(publisher, firestore, agent_id)
    for seq in range(1, 13):  # chunk size 5 in the test stack: two chunks flushed, two samples pending
        beat_and_wait(publisher, firestore, agent_id, seq)
    chunks = list(firestore.collection("agents").document(agent_id).collection("history").stream())
    assert len(chunks) == 2
    samples = api.get(f"/v1/agents/{agent_id}/history").json()["samples"]
    assert [s["seq"] for s in samples] == list(range(1, 13))


def test_accepted_heartbeats_cost_one_write_and_at_most_one_read(stack, publisher, firestore, agent_id) -> None:
    register(publisher, firestore, agent_id)
    for seq in range(1, 11):
        beat_and_wait(publisher, firestore, agent_id, seq)
    lines = [
        line
        for line in log_lines(stack.state_dir, "fleet-heartbeats")
        if line.get("agent_id") == agent_id and line.get("outcome") == "accepted"
    ]
    assert len(lines) == 10
    assert sum(line["firestore_writes"] for line in lines) == 12  # 10 updates + 2 history chunks (chunk 5)
    # At most the agent (first heartbeat on this instance) and its tenant's settings (cached a minute),
    # besides the instance's periodic check of the model registry (every second in the test stack).
    assert sum(line["firestore_reads"] - line["model_registry_reads"] for line in lines) <= 2


def test_api_requires_a_valid_key_and_answers_json(api) -> None:
    for key in ("", "afm_0000000000000000_" + "x" * 43, "garbage"):
        response = api.get("/v1/agents", key=key)
        assert response.status_code == 401 and response.json()["error"]["code"] == "unauthorized"
    missing = api.get("/v1/agents/no-such-agent")
    assert missing.status_code == 404 and missing.json()["error"]["reason"]
    assert requests.get(api.url + "/healthz", timeout=5).json()["status"] == "ok"
    spec = requests.get(api.url + "/openapi.json", timeout=5).json()
    assert {"/v1/agents", "/v1/agents/{agent_id}", "/v1/rejections"} <= set(spec["paths"])


def test_agents_are_paginated(publisher, firestore, api) -> None:
    import uuid

    tenant = f"page-{uuid.uuid4().hex[:8]}"
    ids = sorted(f"pg-{uuid.uuid4().hex[:10]}" for _ in range(5))
    for agent in ids:
        publish(publisher, registration(agent, tenant=tenant))
    wait_for(lambda: all(agent_doc(firestore, a) for a in ids))
    seen, token = [], None
    while True:
        params: dict[str, Any] = {"tenant": tenant, "page_size": 2}
        if token:
            params["page_token"] = token
        page = api.get("/v1/agents", **params).json()
        seen += [a["agent_id"] for a in page["items"]]
        token = page.get("next_page_token")
        if not token:
            break
    assert seen == ids


def test_message_that_keeps_failing_is_dead_lettered_and_kept(stack, publisher, firestore, api, agent_id) -> None:
    """Firestore stays unreachable for every delivery attempt of one heartbeat.

    After the subscription's max attempts the emulator forwards the message to the dead-letter
    topic; once Firestore is back, the dead-letter function records it as a rejection with its
    payload: nothing is lost, nothing loops forever.
    """
    register(publisher, firestore, agent_id)
    beat_and_wait(publisher, firestore, agent_id, 1)
    probe = f"{agent_id}-probe"
    register(publisher, firestore, probe)
    max_attempts = stack.subscription_overrides["max_delivery_attempts"]
    stack.firestore_down_flag.touch()
    try:
        message_id = publish(publisher, heartbeat(agent_id, 2))

        def failures() -> int:
            lines = log_lines(stack.state_dir, "fleet-heartbeats")
            return sum(1 for x in lines if x.get("agent_id") == agent_id and x.get("outcome") == "failed")

        wait_for(lambda: failures() >= max_attempts, timeout=180, every=1)
    finally:
        stack.firestore_down_flag.unlink()
    rejection = wait_for(
        lambda: next(
            iter(api.get("/v1/rejections", agent_id=agent_id, code="delivery_exhausted").json()["items"]), None
        ),
        timeout=120,
        every=1,
    )
    assert "agent-heartbeats-push" in rejection["source"]
    assert rejection["payload"]["attributes"]["agent_id"] == agent_id
    assert json.loads(rejection["payload"]["text"])["data"]["seq"] == 2
    assert rejection["id"] != message_id  # the dead-letter topic's own message
    # Dead-lettering is best effort: a delivery already under way when the message was forwarded
    # may still succeed once Firestore is back. Either way the heartbeat counts at most once.
    doc = agent_doc(firestore, agent_id)
    assert doc is not None and doc["last_seq"] in (1, 2) and doc["heartbeats"] == doc["last_seq"]

    # "Once the cause is fixed" means the function reaches Firestore again, not only Firestore being up: a
    # gRPC channel whose connects failed through the outage waits out its reconnect backoff first (up to
    # 120 s, longer after a longer outage; about 45 s here with grpcio 1.85), failing pushes meanwhile, and
    # a replay into that window is dead-lettered again. So, as docs/operations.md tells the operator: a
    # fresh event goes through before the replay.
    deadline = time.monotonic() + 150
    for seq in itertools.count(1):
        publish(publisher, heartbeat(probe, seq))
        if poll(lambda seq=seq: (d := agent_doc(firestore, probe)) and d["last_seq"] >= seq, timeout=10):
            break
        assert time.monotonic() < deadline, "the heartbeat function never reached Firestore again"

    # The operator replays it: it is applied, exactly once.
    for _ in range(2):
        replayed = subprocess.run(
            [sys.executable, "-m", "shared.cli.fleetctl", "rejections", "replay", rejection["id"]],
            env={**os.environ, **stack.env},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert replayed.returncode == 0, replayed.stderr
    doc = wait_for(lambda: (d := agent_doc(firestore, agent_id)) and d["last_seq"] == 2 and d)
    assert doc["heartbeats"] == 2
    assert (
        api.get("/v1/rejections", agent_id=agent_id, code="delivery_exhausted").json()["items"][0]["id"]
        == rejection["id"]
    )


def test_dead_letter_without_data_is_recorded_not_retried(stack, api, agent_id) -> None:
    """Pub/Sub may push a message with attributes only; functions-framework cannot make a CloudEvent
    of it, so the dead-letter function reads the raw push body itself and always records it."""
    push = {
        "message": {
            "attributes": {"agent_id": agent_id, "CloudPubSubDeadLetterSourceDeliveryCount": "15"},
            "messageId": f"dlq-{agent_id}",
            "publishTime": "2026-11-21T10:00:00Z",
        },
        "subscription": "projects/fleet-local/subscriptions/agent-heartbeats-dlq-push",
    }
    url = stack.env["FLEET_FUNCTION_URL_FLEET_DEAD_LETTERS"] + "/projects/fleet-local/topics/agent-heartbeats-dlq"
    assert requests.post(url, json=push, timeout=10).status_code == 204
    rejection = api.get("/v1/rejections", agent_id=agent_id).json()["items"][0]
    assert rejection["code"] == "delivery_exhausted" and rejection["payload"]["size"] == 0
