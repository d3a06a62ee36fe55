"""Agent identity through the real push path: enrollment with a token, signed events counted, forged,
tampered and unsigned events refused without touching the victim, revocation, rotation, replay."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from fleet_agent.contracts import CostBatch, CostRecord, EventType, encode
from fleet_agent.identity import AgentKey, EnrollmentToken, command_subscription

from tests.integration.conftest import wait_for
from tests.integration.helpers import (
    PROJECT,
    agent_doc,
    enrollment_token,
    heartbeat,
    outcomes,
    publish,
    publish_raw,
    registration,
    required_tenant,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def tenant(firestore: Any) -> str:
    return required_tenant(firestore)


def signed_registration(agent_id: str, tenant: str, key: AgentKey, token: str | None = None, **kw: Any) -> Any:
    claim = {"public_key": key.public_key, "enrollment_token": token}
    return registration(agent_id, tenant=tenant, identity=claim, sent_at=datetime.now(UTC), **kw)


def enroll(stack: Any, publisher: Any, firestore: Any, agent_id: str, tenant: str) -> AgentKey:
    key = AgentKey.generate()
    token = enrollment_token(stack, tenant)
    publish(publisher, signed_registration(agent_id, tenant, key, token), signer=key)
    wait_for(lambda: (d := agent_doc(firestore, agent_id)) and d["identity"].get("keys"))
    return key


def cost(agent_id: str, usd: str = "0.01") -> CostBatch:
    record = CostRecord(call_id=f"call-{uuid.uuid4().hex[:12]}", at=datetime.now(UTC), model="gpt-4o",
                        input_tokens=100, output_tokens=50, cost_usd=Decimal(usd), success=True, latency_ms=120.0,
                        operation="summarize")  # fmt: skip
    return CostBatch(agent_id=agent_id, batch_id=f"b-{uuid.uuid4().hex}", records=[record])


def calls(api: Any, agent_id: str) -> int:
    response = api.get(f"/v1/agents/{agent_id}/usage")
    assert response.status_code == 200, response.text
    return int(response.json()["periods"]["month"]["calls"])


def rejection(firestore: Any, message_id: str) -> dict[str, Any]:
    ref = firestore.collection("rejections").document(message_id)
    return dict(wait_for(lambda: (d := ref.get()).exists and d.to_dict()))


def beat(publisher: Any, firestore: Any, agent_id: str, seq: int, key: AgentKey, tenant: str) -> dict[str, Any]:
    publish(publisher, heartbeat(agent_id, seq), signer=key, tenant=tenant)
    return dict(wait_for(lambda: (d := agent_doc(firestore, agent_id)) and d["last_seq"] >= seq and d))


def audit_of(firestore: Any, agent_id: str) -> list[dict[str, Any]]:
    from google.cloud.firestore_v1.base_query import FieldFilter

    query = firestore.collection("audit").where(filter=FieldFilter("target", "==", agent_id))
    return [dict(a.to_dict()) for a in query.stream()]


def current_key(doc: dict[str, Any] | None) -> str | None:
    keys = (doc or {}).get("identity", {}).get("keys") or []
    return str(keys[0]["public_key"]) if keys else None


def token_doc(firestore: Any, token: str) -> dict[str, Any]:
    token_id = EnrollmentToken.parse(token).token_id
    return dict(firestore.collection("enrollment_tokens").document(token_id).get().to_dict())


def test_an_enrolled_agent_signs_and_its_heartbeats_and_costs_count(stack, publisher, firestore, api, tenant) -> None:
    agent_id = f"it-{uuid.uuid4().hex[:10]}"
    key = AgentKey.generate()
    token = enrollment_token(stack, tenant, max_uses=2)
    publish(publisher, signed_registration(agent_id, tenant, key, token), signer=key)
    doc = wait_for(lambda: (d := agent_doc(firestore, agent_id)) and d["identity"].get("keys") and d)
    assert doc["identity"]["keys"][0]["public_key"] == key.public_key and doc["tenant"] == tenant
    used = token_doc(firestore, token)
    assert used["uses"] == 1 and used["used_by"] == [agent_id]
    use = [a for a in audit_of(firestore, agent_id) if a["action"] == "enrollment.use"]
    assert use and use[0]["details"]["token_id"] == EnrollmentToken.parse(token).token_id
    assert EnrollmentToken.parse(token).secret not in json.dumps(use[0], default=str)

    from google.api_core.exceptions import NotFound
    from google.cloud import pubsub_v1

    def made() -> Any:  # made right after the enrollment's write
        try:
            return pubsub_v1.SubscriberClient().get_subscription(
                subscription=f"projects/{PROJECT}/subscriptions/{command_subscription(agent_id)}"
            )
        except NotFound:
            return None

    subscription = wait_for(made)
    assert subscription.filter == f'attributes.agent_id = "{agent_id}"'

    for seq in (1, 2):
        beat(publisher, firestore, agent_id, seq, key, tenant)
    publish(publisher, cost(agent_id), signer=key, tenant=tenant)
    wait_for(lambda: calls(api, agent_id) == 1)
    assert api.get(f"/v1/agents/{agent_id}").json()["last_seq"] == 2


def test_a_strangers_forged_tampered_and_unsigned_events_are_refused_and_change_nothing(
    stack, publisher, firestore, api, tenant
) -> None:
    victim = f"it-{uuid.uuid4().hex[:10]}"
    key = enroll(stack, publisher, firestore, victim, tenant)
    before = beat(publisher, firestore, victim, 1, key, tenant)
    publish(publisher, cost(victim), signer=key, tenant=tenant)
    wait_for(lambda: calls(api, victim) == 1)

    stranger = AgentKey.generate()
    sent: dict[str, str] = {
        publish(publisher, heartbeat(victim, 50), signer=stranger, tenant=tenant): "unknown_key",
        publish(publisher, cost(victim, "5"), signer=stranger, tenant=tenant): "unknown_key",
        publish(publisher, heartbeat(victim, 51), signed=False): "unsigned",
        publish(publisher, cost(victim, "5"), signed=False): "unsigned",
        publish(publisher, signed_registration(victim, tenant, stranger, owner="mallory"), signer=stranger): (
            "unknown_key"
        ),
    }
    body, attrs = encode(cost(victim), signer=key, tenant=tenant)  # signed by the victim, then altered
    altered = json.loads(body)
    altered["data"]["records"][0]["cost_usd"] = "5"
    topic = EventType.COST
    sent[publish_raw(publisher, topic, json.dumps(altered).encode(), attrs)] = "bad_signature"
    body, attrs = encode(heartbeat(victim, 52), signer=key, tenant=tenant)
    altered = json.loads(body)
    altered["data"]["seq"] = 53
    sent[publish_raw(publisher, EventType.HEARTBEAT, json.dumps(altered).encode(), attrs)] = "bad_signature"
    for message_id, code in sent.items():
        refused = rejection(firestore, message_id)
        assert refused["code"] == code, refused

    after = agent_doc(firestore, victim)
    assert after is not None
    assert after["last_seq"] == 1 and after["last_heartbeat_at"] == before["last_heartbeat_at"]
    assert after["owner"] == before["owner"] and after["identity"]["keys"] == before["identity"]["keys"]
    assert calls(api, victim) == 1

    newcomer = f"it-{uuid.uuid4().hex[:10]}"  # required tenant: an unsigned registration enrolls nobody
    refused = rejection(firestore, publish(publisher, registration(newcomer, tenant=tenant), signed=False))
    assert refused["code"] == "unsigned" and agent_doc(firestore, newcomer) is None


def test_a_revoked_keys_events_are_refused_until_the_agent_enrolls_again(stack, publisher, firestore, tenant) -> None:
    from shared.domain import identity
    from shared.domain.agent_record import Plan
    from shared.store import agents as agent_store

    agent_id = f"it-{uuid.uuid4().hex[:10]}"
    key = enroll(stack, publisher, firestore, agent_id, tenant)
    beat(publisher, firestore, agent_id, 1, key, tenant)
    now = datetime.now(UTC)
    agent_store.update(
        agent_id, lambda r: Plan(changes={"identity": identity.revoke(r.identity if r else None, at=now, by="tests")})
    )
    refused = rejection(firestore, publish(publisher, heartbeat(agent_id, 2), signer=key, tenant=tenant))
    assert refused["code"] == "revoked_key"
    assert agent_doc(firestore, agent_id)["last_seq"] == 1  # type: ignore[index]

    new = AgentKey.generate()
    publish(publisher, signed_registration(agent_id, tenant, new, enrollment_token(stack, tenant)), signer=new)
    wait_for(lambda: current_key(agent_doc(firestore, agent_id)) == new.public_key)
    beat(publisher, firestore, agent_id, 3, new, tenant)


def test_a_rotation_loses_no_event_signed_by_the_old_key_in_flight(stack, publisher, firestore, api, tenant) -> None:
    agent_id = f"it-{uuid.uuid4().hex[:10]}"
    old = enroll(stack, publisher, firestore, agent_id, tenant)
    new = AgentKey.generate()
    publish(publisher, signed_registration(agent_id, tenant, new), signer=old)
    # In flight while the rotation is processed (and after): signed by the old key.
    publish(publisher, heartbeat(agent_id, 1), signer=old, tenant=tenant)
    publish(publisher, cost(agent_id), signer=old, tenant=tenant)
    doc = wait_for(lambda: (d := agent_doc(firestore, agent_id)) and current_key(d) == new.public_key and d)
    assert [k["public_key"] for k in doc["identity"]["keys"]] == [new.public_key, old.public_key]
    wait_for(lambda: agent_doc(firestore, agent_id)["last_seq"] >= 1)  # type: ignore[index]
    publish(publisher, heartbeat(agent_id, 2), signer=old, tenant=tenant)  # still in its overlap
    beat(publisher, firestore, agent_id, 3, new, tenant)
    publish(publisher, cost(agent_id), signer=new, tenant=tenant)
    wait_for(lambda: calls(api, agent_id) == 2)
    assert "rejected" not in outcomes(stack, "fleet-heartbeats", agent_id)
    assert "rejected" not in outcomes(stack, "fleet-costs", agent_id)


def test_replayed_signed_events_change_nothing(stack, publisher, firestore, api, tenant) -> None:
    agent_id = f"it-{uuid.uuid4().hex[:10]}"
    key = enroll(stack, publisher, firestore, agent_id, tenant)
    captured = encode(heartbeat(agent_id, 1), signer=key, tenant=tenant)
    publish_raw(publisher, EventType.HEARTBEAT, *captured)
    beat(publisher, firestore, agent_id, 2, key, tenant)
    publish_raw(publisher, EventType.HEARTBEAT, *captured)  # an old seq: stale
    wait_for(lambda: "stale" in outcomes(stack, "fleet-heartbeats", agent_id))
    assert agent_doc(firestore, agent_id)["last_seq"] == 2  # type: ignore[index]

    batch = encode(cost(agent_id), signer=key, tenant=tenant)
    for _ in range(2):  # the marker: counted once
        publish_raw(publisher, EventType.COST, *batch)
    wait_for(lambda: sorted(outcomes(stack, "fleet-costs", agent_id)) == ["accepted", "duplicate"])
    assert calls(api, agent_id) == 1

    reg = signed_registration(agent_id, tenant, key, version="1.1.0")
    body, attrs = encode(reg, signer=key)
    publish_raw(publisher, EventType.REGISTRATION, body, attrs)
    wait_for(lambda: agent_doc(firestore, agent_id)["version"] == "1.1.0")  # type: ignore[index]
    publish_raw(publisher, EventType.REGISTRATION, body, attrs)  # the same event again: a duplicate
    older = registration(agent_id, tenant=tenant, identity={"public_key": key.public_key}, version="1.0.5",
                         sent_at=reg.sent_at - timedelta(seconds=5))  # fmt: skip
    publish(publisher, older, signer=key)  # a new event id, sent before the newest: superseded
    wait_for(lambda: outcomes(stack, "fleet-registrations", agent_id).count("duplicate") >= 1
             and "superseded" in outcomes(stack, "fleet-registrations", agent_id))  # fmt: skip
    assert agent_doc(firestore, agent_id)["version"] == "1.1.0"  # type: ignore[index]


@pytest.mark.parametrize(
    ("scope", "code"),
    [
        ({"expires_in": timedelta(seconds=-1)}, "token_expired"),
        ({"uses": 1}, "token_used_up"),
        ({"revoked_at": datetime.now(UTC), "revoked_by": "api:tests"}, "token_revoked"),
        ({"agent_prefix": "batch-"}, "token_out_of_scope"),
        ({"unknown": True}, "token_unknown"),
    ],
)
def test_a_refused_token_enrolls_nobody_and_is_audited(stack, publisher, firestore, tenant, scope, code) -> None:
    agent_id = f"it-{uuid.uuid4().hex[:10]}"
    key = AgentKey.generate()
    if scope.pop("unknown", False):
        token = str(EnrollmentToken.new(stack.env["FLEET_PUBLIC_KEY"]))
    else:
        token = enrollment_token(stack, tenant, **scope)
    message_id = publish(publisher, signed_registration(agent_id, tenant, key, token), signer=key)
    refused = rejection(firestore, message_id)
    assert refused["code"] == code
    secret = EnrollmentToken.parse(token).secret
    assert secret not in json.dumps(refused, default=str)
    assert agent_doc(firestore, agent_id) is None
    audit = audit_of(firestore, agent_id)
    assert [a["action"] for a in audit] == ["enrollment.refused"]
    assert audit[0]["details"]["token_id"] == EnrollmentToken.parse(token).token_id
    assert secret not in json.dumps(audit, default=str)


def test_a_redelivered_enrollment_consumes_one_use(stack, publisher, firestore, tenant) -> None:
    agent_id = f"it-{uuid.uuid4().hex[:10]}"
    key = AgentKey.generate()
    token = enrollment_token(stack, tenant, max_uses=5)
    reg = signed_registration(agent_id, tenant, key, token)
    for _ in range(3):  # one event, published three times (a publisher retry)
        publish(publisher, reg, signer=key, event_id=f"enroll-{agent_id}")
    wait_for(lambda: len(outcomes(stack, "fleet-registrations", agent_id)) == 3)
    assert sorted(outcomes(stack, "fleet-registrations", agent_id)) == ["accepted", "duplicate", "duplicate"]
    assert token_doc(firestore, token)["uses"] == 1
