"""Operator controls through the real path: the API function over HTTP (functions-framework), Firestore and
Pub/Sub in the emulators. Quarantine, PATCH winning over a later registration, search with a cursor, a bulk
dry run then a bulk pause with each agent's result, a bulk decommission asking approval, and a decommission
that cleans up (holds lifted, key revoked, command subscription deleted)."""

from __future__ import annotations

import uuid
from typing import Any

from emulators.stack import Stack
from shared.domain import identity
from shared.services import command_channels
from tests.integration.conftest import Api, wait_for
from tests.integration.helpers import agent_doc, make_key, publish, registration, required_tenant


def _subscription_exists(agent_id: str) -> bool:
    from google.api_core.exceptions import NotFound  # lazy: the Pub/Sub client loads with the stack

    try:
        command_channels.subscriber().get_subscription(
            request={"subscription": command_channels.subscription_path(agent_id)}
        )
    except NotFound:
        return False
    return True


def test_operator_controls(stack: Stack, api: Api, publisher: Any, firestore: Any) -> None:
    tenant = required_tenant(firestore)
    operator = make_key(stack, f"{tenant}-operator", "operator", tenant)
    approver = make_key(stack, f"{tenant}-approver", "approver", tenant)
    tag = uuid.uuid4().hex[:8]
    agents = [f"op-{tag}-{i}" for i in range(3)]
    for agent_id in agents:
        publish(publisher, registration(agent_id, tenant=tenant, labels={"batch": tag}, capabilities=["chat", "gpu"]))
    wait_for(lambda: all(agent_doc(firestore, a) for a in agents))
    wait_for(lambda: _subscription_exists(agents[2]))

    # Quarantine: approvers only; the refusal is audited.
    refused = api.send("POST", f"/v1/agents/{agents[0]}/quarantine", {"reason": "odd"}, key=operator)
    assert refused.status_code == 403, refused.text
    done = api.send("POST", f"/v1/agents/{agents[0]}/quarantine", {"reason": "odd"}, key=approver)
    assert done.status_code == 200 and done.json()["status"] == "quarantined", done.text

    # PATCH wins over the agent's next registration.
    patched = api.send(
        "PATCH", f"/v1/agents/{agents[1]}", {"owner": "ml-platform", "labels": {"tier": "gold"}}, key=operator
    )
    assert patched.status_code == 200 and patched.json()["owner"] == "ml-platform", patched.text
    publish(
        publisher,
        registration(
            agents[1], tenant=tenant, version="1.1.0", owner="bob", labels={"batch": tag}, capabilities=["gpu"]
        ),
    )
    wait_for(lambda: (agent_doc(firestore, agents[1]) or {}).get("version") == "1.1.0")
    after = agent_doc(firestore, agents[1]) or {}
    assert after["owner"] == "ml-platform" and after["labels"] == {"batch": tag, "tier": "gold"}

    # Search with a cursor: one agent a page, every agent of the batch once.
    seen, token = [], None
    for _ in range(5):
        params = {"label": f"batch:{tag}", "capability": "gpu", "limit": 1, **({"page_token": token} if token else {})}
        page = api.get("/v1/agents", key=operator, **params)
        assert page.status_code == 200, page.text
        seen += [a["agent_id"] for a in page.json()["items"]]
        token = page.json()["next_page_token"]
        if not token:
            break
    assert seen == sorted(agents)
    assert api.get("/v1/agents", key=operator, label=f"batch:{tag}", max_security=10).json()["items"] == []

    # Bulk: a dry run lists, changes nothing; then the pause, each agent's result.
    bulk = {"action": "pause", "filter": {"label": f"batch:{tag}"}, "reason": "freeze", "dry_run": True}
    dry = api.send("POST", "/v1/agents/bulk", bulk, key=operator)
    assert dry.status_code == 200, dry.text
    assert [r["result"] for r in dry.json()["results"]] == ["would_apply"] * 3
    assert all((agent_doc(firestore, a) or {}).get("holds", {}).get("pause") is None for a in agents)
    paused = api.send("POST", "/v1/agents/bulk", {**bulk, "dry_run": False}, key=operator).json()
    assert [(r["agent_id"], r["result"]) for r in paused["results"]] == [(a, "applied") for a in sorted(agents)]
    assert (agent_doc(firestore, agents[2]) or {})["status"] == "suspended"

    # A bulk decommission asks the approvers and changes nothing yet.
    asked = api.send("POST", "/v1/agents/bulk", {**bulk, "action": "decommission", "dry_run": False}, key=operator)
    assert asked.status_code == 200, asked.text
    approval = firestore.collection("approvals").document(asked.json()["approval_id"]).get().to_dict()
    assert approval["kind"] == "bulk" and approval["state"] == "pending"
    assert sorted(approval["payload"]["agent_ids"]) == sorted(agents)
    assert (agent_doc(firestore, agents[2]) or {})["status"] == "suspended"

    # Decommission: holds lifted, key revoked, subscription deleted; a retry is fine.
    gone = api.send("POST", f"/v1/agents/{agents[2]}/decommission", {"reason": "retired"}, key=approver)
    assert gone.status_code == 200, gone.text
    assert gone.json()["cleanup"]["key_revoked"] is True and gone.json()["cleanup"]["holds"] == ["pause"]
    doc = agent_doc(firestore, agents[2]) or {}
    assert doc["status"] == "decommissioned" and doc["holds"] == {}
    assert identity.status_of(doc["identity"]) is identity.Status.REVOKED
    assert not _subscription_exists(agents[2])
    again = api.send("POST", f"/v1/agents/{agents[2]}/decommission", {"reason": "retired"}, key=approver)
    assert again.status_code == 200 and again.json()["changed"] is False, again.text
