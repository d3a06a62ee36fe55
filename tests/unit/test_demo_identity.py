"""The demo's identity scene (emulators/demo_identity.py): its tokens and its forged batches, without a stack."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fleet_agent import Registration
from fleet_agent.contracts import Signature
from fleet_agent.identity import AgentKey, event_signing_bytes, verify

from emulators import demo_identity


def reg(agent_id: str, tenant: str) -> Registration:
    return Registration(agent_id=agent_id, tenant=tenant, name=agent_id, agent_type="llm", version="1", owner="o")


class FakeApi:
    def __init__(self) -> None:
        self.posts: list[tuple[str, dict[str, Any]]] = []

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        self.posts.append((path, body))
        return {"token": f"token-{len(self.posts)}"}


def test_one_token_per_tenant_scoped_to_its_prefix_with_one_use_per_agent() -> None:
    api = FakeApi()
    regs = [reg("acme-a-01", "acme"), reg("globex-a-01", "globex"), reg("acme-a-02", "acme")]
    tokens = demo_identity.enrollment_tokens(api, regs)
    assert tokens == {"acme": "token-1", "globex": "token-2"}
    assert [(path, body["agent_prefix"], body["max_uses"]) for path, body in api.posts] == [
        ("/v1/tenants/acme/enrollment-tokens", "acme-", 2),
        ("/v1/tenants/globex/enrollment-tokens", "globex-", 1),
    ]


def test_an_agent_outside_its_tenant_prefix_is_refused_before_any_token() -> None:
    api = FakeApi()
    with pytest.raises(ValueError, match="acme"):
        demo_identity.enrollment_tokens(api, [reg("other-01", "acme")])
    assert api.posts == []


class FakeFuture:
    def __init__(self, message_id: str) -> None:
        self.message_id = message_id

    def result(self, timeout: float | None = None) -> str:
        return self.message_id


class FakePublisher:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, dict[str, str]]] = []

    def topic_path(self, project: str, topic: str) -> str:
        return f"projects/{project}/topics/{topic}"

    def publish(self, topic: str, body: bytes, **attrs: str) -> FakeFuture:
        self.sent.append((topic, body, attrs))
        return FakeFuture(str(len(self.sent)))


def test_the_forged_batches_claim_the_victim_signed_by_the_outsider_by_a_made_key_and_unsigned() -> None:
    victim, outsider = reg("acme-chat-01", "acme"), reg("globex-chat-01", "globex")
    outsider_key = AgentKey.generate()
    publisher = FakePublisher()
    sent = demo_identity.publish_forgeries(publisher, "p", victim, outsider, outsider_key)
    assert [f.message_id for f in sent] == ["1", "2", "3"]
    signatures = []
    for topic, body, attrs in publisher.sent:
        assert topic == "projects/p/topics/agent-costs"
        assert attrs["agent_id"] == victim.agent_id and attrs["event_type"] == "cost"
        envelope = json.loads(body)
        assert envelope["data"]["agent_id"] == victim.agent_id
        assert envelope["data"]["records"][0]["cost_usd"] == str(demo_identity.FORGED_COST_USD)
        signatures.append(envelope.get("signature"))
    own, made, unsigned = signatures
    assert unsigned is None
    assert own["key_id"] == outsider_key.key_id and made["key_id"] != outsider_key.key_id
    # The outsider's signature is genuine, over the victim's tenant: only the victim's key is missing.
    body = json.loads(publisher.sent[0][1])
    message = event_signing_bytes("cost", victim.agent_id, body["event_id"], victim.tenant, body["data"])
    assert verify(outsider_key.public_key, Signature.model_validate(own), message)
