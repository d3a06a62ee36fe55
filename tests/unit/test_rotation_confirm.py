"""The registration function confirms a rotation to the agent (shared/pipeline/registrations.py): a
``key_rotated`` command naming the new key, once that key is stored as current, again on a redelivery,
never for a registration that rotated nothing or a refused one."""

from __future__ import annotations

from typing import Any

import pytest
from fleet_agent.contracts import Command, CommandType
from fleet_agent.identity import AgentKey

from shared.domain import identity
from shared.domain.agent_record import AgentRecord, Plan
from shared.domain.identity import IdentityConfig
from shared.domain.rejections import Rejected
from shared.pipeline import registrations
from shared.services import agent_commands, command_channels
from shared.store import agents as agent_store
from shared.store import config
from tests.unit.test_identity_ingest import NOW, decoded, enrolled, reg


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[Command]:
    out: list[Command] = []
    monkeypatch.setattr(agent_commands, "publish", lambda commands: out.extend(commands) or [])
    monkeypatch.setattr(command_channels, "ensure", lambda *a: pytest.fail("no enrollment here"))
    monkeypatch.setattr(config, "identity", lambda tenant: IdentityConfig())
    return out


def run(monkeypatch: pytest.MonkeyPatch, stored: AgentRecord, d: Any) -> tuple[Plan, AgentRecord]:
    """registrations.process on ``stored``; returns the plan and the agent as written."""
    written: dict[str, AgentRecord] = {}

    def update(agent_id: str, decide: Any, token: Any = None) -> Plan:
        plan: Plan = decide(stored)
        written["agent"] = stored.model_copy(update=plan.changes)
        return plan

    monkeypatch.setattr(agent_store, "update", update)
    return registrations.process(d), written["agent"]


def test_a_rotation_is_confirmed_with_the_new_key_id_and_again_on_redelivery(
    monkeypatch: pytest.MonkeyPatch, sent: list[Command]
) -> None:
    old, new = AgentKey.generate(), AgentKey.generate()
    agent = enrolled(old)
    rotation = decoded(reg(key=new, sent_at=NOW), signer=old, event_id="e-rotation1")
    _, rotated = run(monkeypatch, agent, rotation)
    assert identity.AgentIdentity.of(rotated.identity).current.key_id == new.key_id  # type: ignore[union-attr]
    ((command,),) = [sent]
    assert command.command is CommandType.KEY_ROTATED and command.key_id == new.key_id
    assert command.agent_id == "chat-1" and command.command_id == f"key_rotated.{new.key_id}"
    run(monkeypatch, rotated, rotation)  # redelivered (or re-sent by a restarted agent): confirmed again
    assert [c.key_id for c in sent] == [new.key_id, new.key_id]


def test_no_confirmation_without_a_rotation_or_for_a_refused_one(
    monkeypatch: pytest.MonkeyPatch, sent: list[Command]
) -> None:
    old, stranger = AgentKey.generate(), AgentKey.generate()
    agent = enrolled(old)
    run(monkeypatch, agent, decoded(reg(sent_at=NOW), signer=old))  # an ordinary signed registration
    run(monkeypatch, agent, decoded(reg(key=old, sent_at=NOW), signer=old))  # the current key again
    assert sent == []
    with pytest.raises(Rejected):  # a stranger's rotation: refused, nothing confirmed
        run(monkeypatch, agent, decoded(reg(key=stranger, sent_at=NOW), signer=stranger))
    assert sent == []
