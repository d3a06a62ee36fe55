"""Enrollment tokens and key revocation through the real stack: the API function over HTTP, Firestore
in the emulator, fleetctl as an operator runs it; role refusals audited."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import uuid
from typing import Any

from fleet_agent.identity import EnrollmentToken

from emulators.stack import Stack
from shared.domain import identity
from tests.integration.conftest import Api, wait_for
from tests.integration.helpers import agent_doc, agent_key, make_key, publish, registration


def _tenant() -> str:
    return f"enr-{uuid.uuid4().hex[:8]}"


def _fleetctl(stack: Stack, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shared.cli.fleetctl", *argv],
        env={**os.environ, **stack.env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def _audit(firestore: Any, action: str, tenant: str | None = None) -> list[dict[str, Any]]:
    from google.cloud.firestore_v1.base_query import FieldFilter

    docs = firestore.collection("audit").where(filter=FieldFilter("action", "==", action)).stream()
    return [d.to_dict() for d in docs if tenant is None or (d.to_dict() or {}).get("tenant") == tenant]


def test_tokens_are_created_once_listed_and_revoked(stack: Stack, api: Api, firestore: Any) -> None:
    tenant = _tenant()
    approver = make_key(stack, f"{tenant}-approver", "approver", tenant)
    viewer = make_key(stack, f"{tenant}-viewer", "viewer", tenant)
    path = f"/v1/tenants/{tenant}/enrollment-tokens"

    body = {"label": "farm", "agent_prefix": "farm-", "max_uses": 2, "expires_in_s": 3600}
    made = api.send("POST", path, body, key=approver)
    assert made.status_code == 201, made.text
    created = made.json()
    token = EnrollmentToken.parse(created["token"])
    assert token.fleet_public_key == stack.env["FLEET_PUBLIC_KEY"] == created["fleet_public_key"]
    assert created["state"] == "active" and created["scope"] == "farm-*"
    stored = firestore.collection("enrollment_tokens").document(token.token_id).get().to_dict()
    assert stored["secret_sha256"] == hashlib.sha256(token.secret.encode()).hexdigest()
    assert token.secret not in str(stored)
    [entry] = _audit(firestore, "enrollment_token.create", tenant)
    assert entry["actor"] == f"api:{tenant}-approver" and token.secret not in str(entry)

    listed = api.get(path, key=viewer)
    assert listed.status_code == 200
    [item] = listed.json()["items"]
    assert item["token_id"] == token.token_id and "token" not in item and "secret_sha256" not in item
    assert api.get(f"{path}/{token.token_id}", key=viewer).json()["uses"] == 0

    revoked = api.send("POST", f"{path}/{token.token_id}/revoke", {}, key=approver)
    assert revoked.status_code == 200 and revoked.json()["state"] == "revoked"
    again = api.send("POST", f"{path}/{token.token_id}/revoke", {}, key=approver)
    assert again.status_code == 200 and again.json()["revoked_at"] == revoked.json()["revoked_at"]
    assert len(_audit(firestore, "enrollment_token.revoke", tenant)) == 1


def test_role_and_tenant_refusals_are_audited(stack: Stack, api: Api, firestore: Any) -> None:
    tenant = _tenant()
    viewer = make_key(stack, f"{tenant}-viewer", "viewer", tenant)
    stranger = make_key(stack, f"{tenant}-stranger", "approver", f"{tenant}-other")
    path = f"/v1/tenants/{tenant}/enrollment-tokens"

    refused = api.send("POST", path, {}, key=viewer)
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "forbidden"
    entries = [e for e in _audit(firestore, "api.create_enrollment_token") if e["actor"] == f"api:{tenant}-viewer"]
    assert entries and entries[0]["outcome"] == "refused"

    hidden = api.send("POST", path, {}, key=stranger)
    assert hidden.status_code == 404
    [entry] = [e for e in _audit(firestore, "enrollment_token.refused") if e["actor"] == f"api:{tenant}-stranger"]
    assert entry["outcome"] == "refused"
    assert api.get(path).json()["items"] == []  # nothing was created


def test_an_agents_key_is_revoked_over_http(stack: Stack, api: Api, firestore: Any, publisher: Any) -> None:
    tenant = _tenant()
    agent_id = f"it-{uuid.uuid4().hex[:12]}"
    # A tenant migrating (optional policy): its agent runs unsigned first, shown so, then enrolls.
    put = api.send("PUT", f"/v1/tenants/{tenant}/identity", {"policy": "optional"})
    assert put.status_code == 200, put.text
    publish(publisher, registration(agent_id, tenant=tenant), signed=False)
    wait_for(lambda: agent_doc(firestore, agent_id))
    assert api.get(f"/v1/agents/{agent_id}").json()["identity"]["status"] == "unsigned"
    publish(publisher, registration(agent_id, tenant=tenant))  # with a token and its new key: enrolls
    key = agent_key(agent_id)
    shown = wait_for(lambda: (v := api.get(f"/v1/agents/{agent_id}").json()["identity"])["status"] == "signed" and v)
    assert shown["key_id"] == identity.key_id_of(key.public_key) and shown["public_key"] == key.public_key

    operator = make_key(stack, f"{tenant}-operator", "operator", tenant)
    assert api.send("POST", f"/v1/agents/{agent_id}/keys/revoke", {}, key=operator).status_code == 403
    approver = make_key(stack, f"{tenant}-approver", "approver", tenant)
    done = api.send("POST", f"/v1/agents/{agent_id}/keys/revoke", {"reason": "host lost"}, key=approver)
    assert done.status_code == 200, done.text
    assert done.json()["revoked_now"] is True and done.json()["identity"]["status"] == "revoked"
    stored = identity.AgentIdentity.of(agent_doc(firestore, agent_id)["identity"])  # type: ignore[index]
    assert stored.keys == [] and stored.revoked_key_ids == [identity.key_id_of(key.public_key)]
    [entry] = _audit(firestore, "agent.key.revoke", tenant)
    assert entry["target"] == agent_id and entry["details"]["reason"] == "host lost"
    again = api.send("POST", f"/v1/agents/{agent_id}/keys/revoke", {}, key=approver)
    assert again.status_code == 200 and again.json()["revoked_now"] is False
    assert api.send("POST", "/v1/agents/it-nobody-here/keys/revoke", {}).status_code == 404


def test_fleetctl_enroll_and_identity_settings(stack: Stack, api: Api) -> None:
    tenant = _tenant()
    made = _fleetctl(stack, "enroll", "create", "--tenant", tenant, "--agent-id", "agent-7", "--expires", "2d")
    assert made.returncode == 0, made.stderr
    token = EnrollmentToken.parse(made.stdout.strip())
    listed = _fleetctl(stack, "enroll", "list", "--tenant", tenant)
    assert token.token_id in listed.stdout and "active" in listed.stdout and token.secret not in listed.stdout
    assert _fleetctl(stack, "enroll", "revoke", "--tenant", tenant, token.token_id).returncode == 0
    item = api.get(f"/v1/tenants/{tenant}/enrollment-tokens/{token.token_id}").json()
    assert item["state"] == "revoked" and item["created_by"].startswith("cli:")

    assert api.get(f"/v1/tenants/{tenant}/identity").json()["effective"]["policy"] == "required"  # the stack's
    put = api.send("PUT", f"/v1/tenants/{tenant}/identity", {"policy": "optional", "forged_events_per_hour": 3})
    assert put.status_code == 200, put.text
    assert put.json()["effective"] == {"policy": "optional", "forged_events_per_hour": 3}
