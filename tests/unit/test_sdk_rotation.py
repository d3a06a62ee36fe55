"""Key rotation in the SDK (sdk/fleet_agent/enrollment.py): the agent signs with its old key until the
fleet confirms the rotation with a signed ``key_rotated`` command, or until the fallback after Pub/Sub
accepted the rotation; a crash in between is finished on restart. A fake publisher and a fake clock."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fleet_agent import FleetAgent
from fleet_agent.command_signatures import sign_command
from fleet_agent.contracts import Command, CommandType, EventType
from fleet_agent.identity import AgentKey

from tests.unit.test_sdk_identity import FLEET, TOKEN, FakePublisher, registration, signed_by


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(autouse=True)
def no_identity_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("FLEET_ENROLLMENT_TOKEN", "FLEET_KEY_PATH", "FLEET_PUBLIC_KEY", "FLEET_KEY_SWITCH_FALLBACK_S"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def make_agent(clock: Clock) -> Iterator[Callable[..., FleetAgent]]:
    agents: list[FleetAgent] = []

    def make(publisher: FakePublisher, **kwargs: Any) -> FleetAgent:
        agent = FleetAgent(registration(), project="p", publisher=publisher, **kwargs)
        agent.identity._clock = clock  # the fallback's clock, driven by the test
        agents.append(agent)
        return agent

    yield make
    for agent in agents:
        agent.close(timeout=1)


def key_rotated(key_id: str, signer: AgentKey, agent_id: str = "chat-7") -> tuple[bytes, dict[str, str]]:
    command = Command(agent_id=agent_id, command=CommandType.KEY_ROTATED, issued_at=datetime.now(UTC),
                      command_id=f"key_rotated.{key_id}", key_id=key_id)  # fmt: skip
    return sign_command(command, signer)


def last_heartbeat_key(agent: FleetAgent, publisher: FakePublisher, *keys: AgentKey) -> str:
    agent.heartbeat().result()
    envelope, attrs = publisher.sent(EventType.HEARTBEAT)[-1]
    return next(k.key_id for k in keys if signed_by(envelope, attrs, k.public_key))


def enrolled(make_agent: Callable[..., FleetAgent], path: Path) -> tuple[FleetAgent, FakePublisher, AgentKey]:
    publisher = FakePublisher()
    agent = make_agent(publisher, key_path=path, enrollment_token=str(TOKEN))
    agent.register()
    return agent, publisher, AgentKey.load(path)


def test_the_old_key_signs_until_the_fleet_confirms_the_rotation(
    tmp_path: Path, make_agent: Callable[..., FleetAgent]
) -> None:
    path = tmp_path / "fleet.key"
    agent, publisher, old = enrolled(make_agent, path)
    new = agent.rotate_key()
    envelope, attrs = publisher.sent(EventType.REGISTRATION)[-1]
    assert envelope.data["identity"] == {"public_key": new.public_key}, "no token on a rotation"
    assert signed_by(envelope, attrs, old.public_key), "the rotation is signed by the old key"
    # Pub/Sub accepted the rotation; the fleet may not have bound the new key yet: still the old key.
    assert last_heartbeat_key(agent, publisher, old, new) == old.key_id
    assert AgentKey.load(path).key_id == old.key_id and (tmp_path / "fleet.key.next").exists()
    agent.register()  # a registration before the confirmation still carries the rotation
    assert publisher.sent(EventType.REGISTRATION)[-1][0].data["identity"] == {"public_key": new.public_key}

    assert agent.apply_command(*key_rotated(old.key_id, FLEET)) is not None
    assert last_heartbeat_key(agent, publisher, old, new) == old.key_id, "another key id: no switch"
    assert agent.apply_command(*key_rotated(new.key_id, AgentKey.generate())) is None, "not the fleet's"
    assert last_heartbeat_key(agent, publisher, old, new) == old.key_id, "a forged confirmation changes nothing"

    assert agent.apply_command(*key_rotated(new.key_id, FLEET)) is not None
    assert last_heartbeat_key(agent, publisher, old, new) == new.key_id, "confirmed: the new key"
    assert AgentKey.load(path).key_id == new.key_id and not (tmp_path / "fleet.key.next").exists()
    assert json.loads((tmp_path / "fleet.key.json").read_text())["key_id"] == new.key_id
    agent.register()
    assert "identity" not in publisher.sent(EventType.REGISTRATION)[-1][0].data, "the rotation is over"


def test_without_a_confirmation_the_agent_switches_at_the_fallback(
    tmp_path: Path, make_agent: Callable[..., FleetAgent], clock: Clock
) -> None:
    path = tmp_path / "fleet.key"
    agent, publisher, old = enrolled(make_agent, path)
    new = agent.identity.begin_rotation()
    clock.now += 3600  # time before Pub/Sub accepted the rotation does not count
    agent.register()
    clock.now += 299.9
    assert last_heartbeat_key(agent, publisher, old, new) == old.key_id
    clock.now += 0.1
    assert last_heartbeat_key(agent, publisher, old, new) == new.key_id
    assert AgentKey.load(path).key_id == new.key_id


def test_a_rotation_pubsub_refused_keeps_the_old_key_and_is_finished_on_restart(
    tmp_path: Path, make_agent: Callable[..., FleetAgent], clock: Clock
) -> None:
    path = tmp_path / "fleet.key"
    agent, _, old = enrolled(make_agent, path)
    agent._publisher = failing = FakePublisher(fail=True)  # Pub/Sub refuses from now on
    with pytest.raises(RuntimeError, match="503"):
        agent.rotate_key()
    clock.now += 3600
    agent.heartbeat()
    envelope, attrs = failing.sent(EventType.HEARTBEAT)[-1]
    assert signed_by(envelope, attrs, old.public_key), "never accepted: no fallback, still the old key"
    pending = AgentKey.load(tmp_path / "fleet.key.next")

    publisher = FakePublisher()  # the process restarts
    restarted = make_agent(publisher, key_path=path)
    restarted.register()
    envelope, attrs = publisher.sent(EventType.REGISTRATION)[0]
    assert envelope.data["identity"] == {"public_key": pending.public_key}
    assert signed_by(envelope, attrs, old.public_key)
    assert last_heartbeat_key(restarted, publisher, old, pending) == old.key_id
    restarted.apply_command(*key_rotated(pending.key_id, FLEET))
    assert last_heartbeat_key(restarted, publisher, old, pending) == pending.key_id
    assert AgentKey.load(path).key_id == pending.key_id


def test_the_fallback_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from fleet_agent.enrollment import switch_fallback_s

    assert switch_fallback_s() == 300.0
    monkeypatch.setenv("FLEET_KEY_SWITCH_FALLBACK_S", "5")
    assert switch_fallback_s() == 5.0
    monkeypatch.setenv("FLEET_KEY_SWITCH_FALLBACK_S", "soon")
    with pytest.raises(ValueError, match="FLEET_KEY_SWITCH_FALLBACK_S"):
        switch_fallback_s()
