"""Key rotation through the real push path with the SDK itself: the agent keeps signing with its old key
until the fleet's registration function confirms the rotation with a signed ``key_rotated`` command on the
agent's own subscription, then signs with the new key; no event is refused on the way."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from fleet_agent import FleetAgent
from fleet_agent.contracts import Command, CommandType

from tests.integration.conftest import wait_for
from tests.integration.helpers import (
    PROJECT,
    agent_doc,
    enrollment_token,
    outcomes,
    registration,
    required_tenant,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def tenant(firestore: Any) -> str:
    return required_tenant(firestore)


def current_key_id(firestore: Any, agent_id: str) -> str | None:
    keys = ((agent_doc(firestore, agent_id) or {}).get("identity") or {}).get("keys") or []
    return str(keys[0]["key_id"]) if keys else None


def test_an_sdk_rotation_switches_on_the_fleets_confirmation_and_loses_nothing(
    stack: Any, firestore: Any, api: Any, tenant: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLEET_KEY_SWITCH_FALLBACK_S", "3600")  # only the confirmation can switch the key
    agent_id = f"it-{uuid.uuid4().hex[:10]}"
    heard: list[Command] = []
    reg = registration(agent_id, tenant=tenant)
    token = enrollment_token(stack, tenant)
    with FleetAgent(reg, project=PROJECT, enrollment_token=token, key_path=tmp_path / "fleet.key") as agent:
        agent.listen(lambda _agent, command: heard.append(command))
        agent.register()  # enrolls; the listener starts once the fleet made the agent's subscription
        old = agent.identity.key
        assert old is not None
        wait_for(lambda: current_key_id(firestore, agent_id) == old.key_id)
        agent.heartbeat().result()
        seq = agent.last_seq
        new = agent.rotate_key()
        assert agent.identity.key is not None
        # Until the confirmation: signed by the old key, whatever the order Pub/Sub delivers in.
        for _ in range(3):
            agent.heartbeat().result()
        confirmed = wait_for(lambda: [c for c in heard if c.command is CommandType.KEY_ROTATED], timeout=60)
        assert confirmed[0].key_id == new.key_id
        assert agent.identity.key.key_id == new.key_id and not agent.identity.rotating
        assert current_key_id(firestore, agent_id) == new.key_id
        for _ in range(3):
            agent.heartbeat().result()
        last = agent.last_seq
        assert last > seq
        wait_for(lambda: (agent_doc(firestore, agent_id) or {}).get("last_seq") == last, timeout=60)
    assert "rejected" not in outcomes(stack, "fleet-heartbeats", agent_id)
    assert "rejected" not in outcomes(stack, "fleet-registrations", agent_id)
    refused = api.get("/v1/rejections", claimed_agent_id=agent_id).json()["items"]
    assert refused == [], refused
