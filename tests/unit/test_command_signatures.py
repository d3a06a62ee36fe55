"""Commands signed by the fleet (fleet_agent.command_signatures, shared/services/agent_commands.py): a signed
command verifies against the fleet's key and nothing else; every way of getting it wrong (unsigned,
tampered, re-addressed, another key, malformed) is refused as None, never an exception; the body stays
the plain command JSON; the server signs every command it publishes and sends none without a key."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from fleet_agent.command_signatures import SIG, SIG_ALG, SIG_KEY_ID, sign_command, verify_command
from fleet_agent.contracts import Command, CommandType
from fleet_agent.identity import AgentKey, b64, canonical, command_signing_bytes

from shared.platform import fleet_key
from shared.services import agent_commands

FLEET = AgentKey.generate()


def _command(agent_id: str = "chat-7", **kw: Any) -> Command:
    fields: dict[str, Any] = {
        "agent_id": agent_id,
        "command": CommandType.RELEASE,
        "reason": "released by ann: ünïcode ok",
        "issued_at": datetime(2026, 12, 6, 8, 0, tzinfo=UTC),
        "command_id": "cmd-00000001",
    }
    fields.update(kw)
    return Command(**fields)


def test_a_signed_command_verifies_and_its_body_is_the_plain_command_json() -> None:
    command = _command(until=datetime(2026, 12, 7, tzinfo=UTC))
    body, attributes = sign_command(command, FLEET)
    assert verify_command(body, attributes, FLEET.public_key) == command
    assert Command.model_validate_json(body) == command  # what an SDK without signatures reads
    assert attributes["agent_id"] == "chat-7" and attributes["event_type"] == "command"
    assert attributes["command"] == "release"
    assert attributes[SIG_ALG] == "ed25519" and attributes[SIG_KEY_ID] == FLEET.key_id


def test_the_signature_covers_the_documented_bytes_of_the_body_as_sent() -> None:
    """Checkable without the SDK's helpers: Ed25519 over JCS(["agent-fleet-manager/command/v1", agent_id, body])."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from fleet_agent.identity import unb64

    body, attributes = sign_command(_command(), FLEET)
    message = canonical(["agent-fleet-manager/command/v1", "chat-7", json.loads(body)])
    assert message == command_signing_bytes("chat-7", json.loads(body))
    Ed25519PublicKey.from_public_bytes(unb64(FLEET.public_key)).verify(unb64(attributes[SIG]), message)


def _tampered_body(body: bytes) -> bytes:
    value = json.loads(body)
    value["command"] = "resume"
    return json.dumps(value).encode()


def _readdressed(body: bytes) -> bytes:
    value = json.loads(body)
    value["agent_id"] = "chat-8"
    return json.dumps(value).encode()


@pytest.mark.parametrize(
    "spoil",
    [
        pytest.param(lambda b, a: (b, {k: v for k, v in a.items() if not k.startswith("sig")}), id="unsigned"),
        pytest.param(lambda b, a: (b, {**a, SIG: ""}), id="empty-signature"),
        pytest.param(lambda b, a: (_tampered_body(b), a), id="tampered-body"),
        pytest.param(lambda b, a: (b, {**a, "agent_id": "chat-8"}), id="attribute-readdressed"),
        pytest.param(lambda b, a: (_readdressed(b), {**a, "agent_id": "chat-8"}), id="body-readdressed"),
        pytest.param(lambda b, a: (b, {k: v for k, v in a.items() if k != "agent_id"}), id="no-agent-attribute"),
        pytest.param(lambda b, a: (b, {**a, SIG_ALG: "rsa"}), id="other-alg"),
        pytest.param(lambda b, a: (b, {**a, SIG_KEY_ID: "0" * 16}), id="other-key-id"),
        pytest.param(lambda b, a: (b, {**a, SIG: ("B" if a[SIG][0] == "A" else "A") + a[SIG][1:]}), id="bad-signature"),
        pytest.param(lambda b, a: (b, {**a, SIG: "%%%not-base64%%%"}), id="garbage-signature"),
        pytest.param(lambda b, a: (b, {**a, SIG: "x" * 5000}), id="huge-signature"),
        pytest.param(lambda b, a: (b"\xff\xfe not json", a), id="not-utf8"),
        pytest.param(lambda b, a: (b"[1, 2]", a), id="not-an-object"),
        pytest.param(lambda b, a: (b"", a), id="empty-body"),
        pytest.param(lambda b, a: (b'{"agent_id": "chat-7", "n": 1e400}', a), id="not-jcs"),
    ],
)
def test_anything_wrong_is_refused_as_none(spoil: Any) -> None:
    body, attributes = spoil(*sign_command(_command(), FLEET))
    assert verify_command(body, attributes, FLEET.public_key) is None


def test_a_validly_signed_body_that_is_not_a_command_is_refused() -> None:
    value = {"agent_id": "chat-7", "command": "self_destruct"}
    signature = FLEET.sign(command_signing_bytes("chat-7", value))
    attributes = {"agent_id": "chat-7", SIG_KEY_ID: signature.key_id, SIG_ALG: signature.alg, SIG: signature.value}
    assert verify_command(json.dumps(value).encode(), attributes, FLEET.public_key) is None


def test_another_fleet_or_a_malformed_fleet_key_verifies_nothing() -> None:
    body, attributes = sign_command(_command(), AgentKey.generate())  # a stranger with publish rights
    assert verify_command(body, attributes, FLEET.public_key) is None
    body, attributes = sign_command(_command(), FLEET)
    for bad in ("", "not a key", "é" * 43, b64(b"\x00" * 31)):
        assert verify_command(body, attributes, bad) is None


def test_the_server_signs_every_command_with_the_fleet_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEET_COMMAND_KEY", FLEET.to_pem().decode().replace("\n", "\\n"))
    fleet_key.reset()
    try:
        body, attributes = agent_commands.encode(_command(approval_id="a-1", approved=True))
        assert verify_command(body, attributes, FLEET.public_key) == _command(approval_id="a-1", approved=True)
        assert b"null" not in body  # unset fields are left out, as before
    finally:
        fleet_key.reset()


class _Publisher:
    def __init__(self) -> None:
        self.sent: list[tuple[bytes, dict[str, str]]] = []

    def topic_path(self, project: str, topic: str) -> str:
        return f"projects/{project}/topics/{topic}"

    def publish(self, topic: str, body: bytes, **attributes: str) -> Any:
        self.sent.append((body, attributes))
        done: Any = type("Done", (), {"result": lambda self, timeout=None: "m-1"})
        return done()


def test_without_the_fleet_key_nothing_is_published(monkeypatch: pytest.MonkeyPatch) -> None:
    """The caller fails (Pub/Sub redelivers its event): a command is never sent unsigned, nor half a batch."""
    fake = _Publisher()
    monkeypatch.setattr(agent_commands, "_publisher", fake)
    monkeypatch.delenv("FLEET_COMMAND_KEY", raising=False)
    monkeypatch.delenv("FLEET_SECRETS_BACKEND", raising=False)
    fleet_key.reset()
    try:
        with pytest.raises(fleet_key.MissingFleetKey):
            agent_commands.publish([_command(), _command(command_id="cmd-00000002")])
        assert fake.sent == []
        monkeypatch.setenv("FLEET_COMMAND_KEY", FLEET.to_pem().decode())
        fleet_key.reset()
        assert agent_commands.publish([_command(), _command(command_id="cmd-00000002")]) == ["m-1", "m-1"]
        assert all(verify_command(body, attrs, FLEET.public_key) is not None for body, attrs in fake.sent)
    finally:
        fleet_key.reset()
