"""The SDK's identity (sdk/fleet_agent/enrollment.py, client.py, cli.py): enrollment on first start, the key
file and its state, signing of every event, rotation, ``fleet-agent enroll``. A fake publisher: no network."""

from __future__ import annotations

import io
import json
import logging
import stat
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest
from fleet_agent import FleetAgent, JobReporter
from fleet_agent.cli import main as cli_main
from fleet_agent.contracts import Envelope, EventType, Registration
from fleet_agent.costs import Call
from fleet_agent.identity import AgentKey, EnrollmentToken, event_signing_bytes, verify

FLEET = AgentKey.generate()
TOKEN = EnrollmentToken.new(FLEET.public_key)


class FakePublisher:
    """Records every publish; ``on_publish`` runs inside publish (to look at the disk at that moment)."""

    def __init__(self, *, fail: bool = False) -> None:
        self.messages: list[tuple[str, bytes, dict[str, str]]] = []
        self.fail = fail
        self.on_publish: Callable[[str, bytes], None] | None = None
        self.lock = threading.Lock()

    def topic_path(self, project: str, topic: str) -> str:
        return f"projects/{project}/topics/{topic}"

    def publish(self, topic: str, data: bytes, **attrs: Any) -> Future[str]:
        if self.on_publish is not None:
            self.on_publish(topic, data)
        with self.lock:
            self.messages.append((topic, data, attrs))
        future: Future[str] = Future()
        if self.fail:
            future.set_exception(RuntimeError("503 unavailable"))
        else:
            future.set_result(str(len(self.messages)))
        return future

    def sent(self, event_type: EventType) -> list[tuple[Envelope, dict[str, str]]]:
        with self.lock:
            return [
                (Envelope.model_validate_json(data), attrs)
                for _, data, attrs in self.messages
                if attrs["event_type"] == event_type.value
            ]


def registration(agent_id: str = "chat-7") -> Registration:
    return Registration(
        agent_id=agent_id, tenant="acme", name="Chat", agent_type="llm-chat", version="1.0.0", owner="team"
    )


@pytest.fixture(autouse=True)
def no_identity_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("FLEET_ENROLLMENT_TOKEN", "FLEET_KEY_PATH", "FLEET_PUBLIC_KEY", "FLEET_KEY_PATH", "FLEET_TENANT"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def make_agent() -> Iterator[Callable[..., FleetAgent]]:
    agents: list[FleetAgent] = []

    def make(publisher: FakePublisher, **kwargs: Any) -> FleetAgent:
        agent = FleetAgent(kwargs.pop("registration", registration()), project="p", publisher=publisher, **kwargs)
        agents.append(agent)
        return agent

    yield make
    for agent in agents:
        agent.close(timeout=1)


def signed_by(envelope: Envelope, attrs: dict[str, str], public_key: str) -> bool:
    """The signature of what was sent verifies with ``public_key`` (over the bytes docs/events.md names)."""
    assert envelope.signature is not None, "unsigned"
    message = event_signing_bytes(attrs["event_type"], attrs["agent_id"], envelope.event_id, "acme", envelope.data)
    return verify(public_key, envelope.signature, message)


# -- the key file and its state ---------------------------------------------------------------------


def test_first_start_creates_the_key_owner_only_and_a_restart_reuses_it(
    tmp_path: Path, make_agent: Callable[..., FleetAgent]
) -> None:
    path = tmp_path / "keys" / "fleet.key"
    first = make_agent(FakePublisher(), key_path=path, enrollment_token=str(TOKEN))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    first.register()
    state_file = tmp_path / "keys" / "fleet.key.json"
    assert stat.S_IMODE(state_file.stat().st_mode) == 0o600
    state = json.loads(state_file.read_text())
    assert state["agent_id"] == "chat-7" and state["tenant"] == "acme"
    assert state["key_id"] == first.identity.key.key_id if first.identity.key else False
    assert state["token_id"] == TOKEN.token_id and state["fleet_public_key"] == FLEET.public_key
    assert TOKEN.secret not in state_file.read_text(), "the token's secret is never written"

    again = make_agent(FakePublisher(), key_path=path)
    assert again.identity.key is not None and first.identity.key is not None
    assert again.identity.key.key_id == first.identity.key.key_id
    assert again.identity.fleet_public_key == FLEET.public_key, "the fleet key comes back from the state"
    assert again.command_subscription == "projects/p/subscriptions/agent-commands.chat-7"


def test_the_token_rides_on_the_first_registration_only(tmp_path: Path, make_agent: Callable[..., FleetAgent]) -> None:
    path = tmp_path / "fleet.key"
    publisher = FakePublisher()
    agent = make_agent(publisher, key_path=path, enrollment_token=str(TOKEN))
    agent.register()
    agent.register()  # a re-registration of the same process
    make_agent(publisher, key_path=path, enrollment_token=str(TOKEN)).register()  # a restart, same token in env
    sent = publisher.sent(EventType.REGISTRATION)
    assert len(sent) == 3
    first = sent[0][0].data
    key = AgentKey.load(path)
    assert first["identity"] == {"public_key": key.public_key, "enrollment_token": str(TOKEN)}
    assert "sent_at" in first
    assert [envelope.data.get("identity") for envelope, _ in sent[1:]] == [None, None]
    assert all("sent_at" in envelope.data for envelope, _ in sent)
    assert all(signed_by(envelope, attrs, key.public_key) for envelope, attrs in sent)


def test_a_new_token_enrolls_again_with_a_new_key(tmp_path: Path, make_agent: Callable[..., FleetAgent]) -> None:
    path = tmp_path / "fleet.key"
    make_agent(FakePublisher(), key_path=path, enrollment_token=str(TOKEN)).register()
    old = AgentKey.load(path)
    second = EnrollmentToken.new(FLEET.public_key)  # after a revocation, an admin hands out another token
    publisher = FakePublisher()
    make_agent(publisher, key_path=path, enrollment_token=str(second)).register()
    ((envelope, attrs),) = publisher.sent(EventType.REGISTRATION)
    new = AgentKey.load(path)
    assert new.key_id != old.key_id
    assert envelope.data["identity"] == {"public_key": new.public_key, "enrollment_token": str(second)}
    assert signed_by(envelope, attrs, new.public_key)


def test_a_new_token_keeps_the_old_key_until_pubsub_accepted_and_then_as_previous(
    tmp_path: Path, make_agent: Callable[..., FleetAgent]
) -> None:
    """The fleet refuses an enrollment while the agent's key is valid (unknown_key) and confirms none: the
    old key and its state are never overwritten before the enrollment is published, and kept after."""
    path = tmp_path / "fleet.key"
    make_agent(FakePublisher(), key_path=path, enrollment_token=str(TOKEN)).register()
    old_pem, old_state = path.read_bytes(), (tmp_path / "fleet.key.json").read_bytes()
    second = EnrollmentToken.new(FLEET.public_key)
    seen: list[tuple[bytes, bool]] = []
    publisher = FakePublisher()
    staged = tmp_path / "fleet.key.enroll"
    publisher.on_publish = lambda topic, data: seen.append((path.read_bytes(), staged.exists()))
    agent = make_agent(publisher, key_path=path, enrollment_token=str(second))
    assert path.read_bytes() == old_pem, "the working key is not replaced at start"
    with pytest.raises(RuntimeError, match="enrolling"):
        agent.rotate_key()  # its .enroll holds the enrollment's key
    agent.register()
    assert seen == [(old_pem, True)], "while publishing: the old key in place, the new one in .enroll"
    new = AgentKey.load(path)
    ((envelope, attrs),) = publisher.sent(EventType.REGISTRATION)
    assert envelope.data["identity"] == {"public_key": new.public_key, "enrollment_token": str(second)}
    assert signed_by(envelope, attrs, new.public_key)
    assert not (tmp_path / "fleet.key.enroll").exists()
    previous = tmp_path / "fleet.key.previous"
    assert previous.read_bytes() == old_pem and stat.S_IMODE(previous.stat().st_mode) == 0o600
    assert (tmp_path / "fleet.key.previous.json").read_bytes() == old_state
    assert agent.identity.kept == previous
    assert json.loads((tmp_path / "fleet.key.json").read_text())["token_id"] == second.token_id

    # Going back (the fleet refused the enrollment): the two renames docs/sdk.md gives.
    previous.replace(path)
    (tmp_path / "fleet.key.previous.json").replace(tmp_path / "fleet.key.json")
    back = make_agent(FakePublisher(), key_path=path)
    assert back.identity.key is not None
    assert back.identity.key.public_key == AgentKey.from_pem(old_pem.decode()).public_key
    assert back.identity.enrolled and not back.identity.enrolling and not back.identity.rotating


def test_an_enrollment_pubsub_refused_keeps_the_old_key_and_reuses_the_new_one(
    tmp_path: Path, make_agent: Callable[..., FleetAgent]
) -> None:
    path = tmp_path / "fleet.key"
    make_agent(FakePublisher(), key_path=path, enrollment_token=str(TOKEN)).register()
    old_pem = path.read_bytes()
    second = str(EnrollmentToken.new(FLEET.public_key))
    failing = make_agent(FakePublisher(fail=True), key_path=path, enrollment_token=second)
    with pytest.raises(RuntimeError, match="503"):
        failing.register()
    assert path.read_bytes() == old_pem and not (tmp_path / "fleet.key.previous").exists()
    staged = AgentKey.load(tmp_path / "fleet.key.enroll")
    publisher = FakePublisher()
    make_agent(publisher, key_path=path, enrollment_token=second).register()  # the retry, same token
    ((envelope, _),) = publisher.sent(EventType.REGISTRATION)
    assert envelope.data["identity"]["public_key"] == staged.public_key, "the same new key, not a third one"
    assert AgentKey.load(path).key_id == staged.key_id
    assert (tmp_path / "fleet.key.previous").read_bytes() == old_pem


def test_a_start_that_stopped_after_installing_the_new_key_is_finished_with_that_key(
    tmp_path: Path, make_agent: Callable[..., FleetAgent]
) -> None:
    path = tmp_path / "fleet.key"
    make_agent(FakePublisher(), key_path=path, enrollment_token=str(TOKEN)).register()
    old_state = (tmp_path / "fleet.key.json").read_bytes()
    second = str(EnrollmentToken.new(FLEET.public_key))
    make_agent(FakePublisher(), key_path=path, enrollment_token=second).register()
    new = AgentKey.load(path)
    (tmp_path / "fleet.key.json").write_bytes(old_state)  # as if it stopped before writing the new state
    publisher = FakePublisher()
    make_agent(publisher, key_path=path, enrollment_token=second).register()
    ((envelope, _),) = publisher.sent(EventType.REGISTRATION)
    assert envelope.data["identity"]["public_key"] == new.public_key, "the installed key, not a third one"
    assert AgentKey.load(path).key_id == new.key_id and not (tmp_path / "fleet.key.enroll").exists()
    assert json.loads((tmp_path / "fleet.key.json").read_text())["key_id"] == new.key_id


def test_enrolling_again_twice_deletes_no_key(tmp_path: Path, make_agent: Callable[..., FleetAgent]) -> None:
    path = tmp_path / "fleet.key"
    keys = []
    for token in (TOKEN, EnrollmentToken.new(FLEET.public_key), EnrollmentToken.new(FLEET.public_key)):
        make_agent(FakePublisher(), key_path=path, enrollment_token=str(token)).register()
        keys.append(AgentKey.load(path))
    assert len({k.key_id for k in keys}) == 3
    assert AgentKey.load(tmp_path / "fleet.key.previous").key_id == keys[1].key_id
    aside = tmp_path / f"fleet.key.previous.{keys[0].key_id}"
    assert AgentKey.load(aside).key_id == keys[0].key_id, "the older previous key is kept under its key id"
    aside_state = json.loads((tmp_path / f"fleet.key.previous.{keys[0].key_id}.json").read_text())
    assert aside_state["token_id"] == TOKEN.token_id


def test_a_key_given_directly_signs_without_a_file(make_agent: Callable[..., FleetAgent]) -> None:
    key = AgentKey.from_pem(AgentKey.generate().to_pem().decode())  # e.g. from a secret the agent has
    publisher = FakePublisher()
    agent = make_agent(publisher, key=key, fleet_public_key=FLEET.public_key)
    agent.register()
    ((envelope, attrs),) = publisher.sent(EventType.REGISTRATION)
    assert "identity" not in envelope.data, "no token: a plain signed registration"
    assert signed_by(envelope, attrs, key.public_key)


def test_the_environment_supplies_token_key_path_and_fleet_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make_agent: Callable[..., FleetAgent]
) -> None:
    monkeypatch.setenv("FLEET_ENROLLMENT_TOKEN", str(TOKEN))
    monkeypatch.setenv("FLEET_KEY_PATH", str(tmp_path / "env.key"))
    agent = make_agent(FakePublisher())
    assert (tmp_path / "env.key").exists() and agent.identity.enrolling
    assert agent.identity.fleet_public_key == FLEET.public_key


def test_a_token_without_a_place_for_the_key_is_refused() -> None:
    with pytest.raises(ValueError, match="key_path"):
        FleetAgent(registration(), project="p", publisher=FakePublisher(), enrollment_token=str(TOKEN))


def test_a_key_file_of_another_agent_is_refused(tmp_path: Path, make_agent: Callable[..., FleetAgent]) -> None:
    path = tmp_path / "fleet.key"
    make_agent(FakePublisher(), key_path=path, enrollment_token=str(TOKEN)).register()
    with pytest.raises(ValueError, match="chat-7"):
        make_agent(FakePublisher(), key_path=path, registration=registration("other-1"))


def test_no_key_and_no_token_sends_unsigned_with_one_warning(
    make_agent: Callable[..., FleetAgent], caplog: pytest.LogCaptureFixture
) -> None:
    publisher = FakePublisher()
    with caplog.at_level(logging.WARNING, logger="fleet_agent"):
        agent = make_agent(publisher)
        agent.register()
        agent.heartbeat().result()
        agent.costs.record(_call())
        agent.costs.flush()
    assert [r.getMessage() for r in caplog.records if "unsigned" in r.getMessage()] == [
        "agent chat-7: no key and no enrollment token: its events are sent unsigned"
    ]
    assert all(envelope.signature is None for envelope, _ in publisher.sent(EventType.REGISTRATION))
    assert all(envelope.signature is None for envelope, _ in publisher.sent(EventType.HEARTBEAT))
    assert all(envelope.signature is None for envelope, _ in publisher.sent(EventType.COST))
    assert "sent_at" not in publisher.sent(EventType.REGISTRATION)[0][0].data
    assert agent.command_subscription is None


def _call() -> Call:
    call = Call(operation="summarize", model="gpt-4o")
    call.tokens(100, 20)
    return call


# -- every event is signed --------------------------------------------------------------------------


def test_every_event_type_is_signed_and_verifies(tmp_path: Path, make_agent: Callable[..., FleetAgent]) -> None:
    publisher = FakePublisher()
    path = tmp_path / "fleet.key"
    agent = make_agent(publisher, key_path=path, enrollment_token=str(TOKEN))
    agent.register()
    agent.heartbeat(metrics={"cpu_pct": 3.0}).result()
    agent.costs.record(_call())
    agent.costs.flush()
    agent.request_approval("re-embed", estimated_cost_usd=45, listen=False)
    key = AgentKey.load(path)
    reporter = JobReporter("j-abcdef12", "chat-7", project="p", publisher=publisher, signer=key, tenant="acme")
    reporter.progress(1, 10, loss=0.5).result()
    kinds = [EventType.REGISTRATION, EventType.HEARTBEAT, EventType.COST, EventType.APPROVAL, EventType.JOB_PROGRESS]
    for kind in kinds:
        sent = publisher.sent(kind)
        assert sent, f"no {kind.value} sent"
        for envelope, attrs in sent:
            assert signed_by(envelope, attrs, key.public_key), kind
            assert not signed_by(envelope, attrs, FLEET.public_key), "another key does not verify it"
    envelope, attrs = publisher.sent(EventType.COST)[0]
    tampered = envelope.model_copy(update={"data": {**envelope.data, "batch_id": "0" * 32}})
    assert not signed_by(tampered, attrs, key.public_key), "the signature covers data"


def test_a_job_reporter_signs_with_the_job_key_from_the_environment() -> None:
    key = AgentKey.generate()
    publisher = FakePublisher()
    env = {"FLEET_JOB_ID": "j-abcdef12", "FLEET_AGENT_ID": "chat-7", "GOOGLE_CLOUD_PROJECT": "p"}
    env |= {"FLEET_JOB_KEY": key.to_pem().decode().strip().replace("\n", "\\n"), "FLEET_TENANT": "acme"}
    with JobReporter.from_env(env, publisher=publisher) as reporter:
        reporter.started("go")
    ((envelope, attrs),) = publisher.sent(EventType.JOB_PROGRESS)
    assert signed_by(envelope, attrs, key.public_key)
    with pytest.raises(ValueError, match="tenant"):
        JobReporter("j-abcdef12", "chat-7", project="p", publisher=publisher, signer=key)


# -- rotation ---------------------------------------------------------------------------------------


# Rotation: tests/unit/test_sdk_rotation.py.


# -- fleet-agent enroll -----------------------------------------------------------------------------


def test_fleet_agent_enroll_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "agent" / "fleet.key"
    publisher = FakePublisher()
    argv = ["enroll", "--token", str(TOKEN), "--agent-id", "chat-7", "--tenant", "acme", "--name", "Chat"]
    argv += ["--type", "llm-chat", "--version", "1.0.0", "--owner", "team", "--key-path", str(path)]
    assert cli_main([*argv, "--project", "p"], publisher=publisher) == 0
    out = capsys.readouterr().out
    key = AgentKey.load(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert f"key id: {key.key_id}" in out
    assert "command subscription: projects/p/subscriptions/agent-commands.chat-7" in out
    assert "published, not yet confirmed" in out and "enrolled agent" not in out, "Pub/Sub is not the fleet"
    assert f"GET /v1/agents/chat-7 shows identity.key_id {key.key_id}" in out
    assert "previous key" not in out
    assert TOKEN.secret not in out
    ((envelope, attrs),) = publisher.sent(EventType.REGISTRATION)
    assert envelope.data["identity"] == {"public_key": key.public_key, "enrollment_token": str(TOKEN)}
    assert signed_by(envelope, attrs, key.public_key)

    assert cli_main([*argv, "--project", "p"], publisher=publisher) == 1, "the same token twice: refused"
    assert "already" in capsys.readouterr().err
    agent = FleetAgent(registration(), project="p", publisher=publisher, key_path=path)
    assert agent.identity.enrolled and not agent.identity.enrolling, "the agent then starts without the token"
    agent.close()


def test_fleet_agent_enroll_refuses_a_bad_token_without_echoing_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["enroll", "--token", "not-a-token-s3cret", "--agent-id", "chat-7", "--tenant", "acme", "--name", "C"]
    argv += ["--type", "t", "--version", "1.0.0", "--owner", "o", "--key-path", str(tmp_path / "k"), "--project", "p"]
    assert cli_main(argv, publisher=FakePublisher()) == 1
    err = capsys.readouterr().err
    assert "not an enrollment token" in err and "s3cret" not in err
    assert not (tmp_path / "k").exists()


ENROLL = ["enroll", "--agent-id", "chat-7", "--tenant", "acme", "--name", "Chat", "--type", "llm-chat"]
ENROLL += ["--version", "1.0.0", "--owner", "team", "--project", "p"]


def test_fleet_agent_enroll_reads_the_token_from_stdin_or_the_environment(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not on the command line: ``ps`` and the shell's history never see it."""
    publisher = FakePublisher()
    monkeypatch.setattr("sys.stdin", io.StringIO(f"{TOKEN}\n"))
    assert cli_main([*ENROLL, "--token", "-", "--key-path", str(tmp_path / "a.key")], publisher=publisher) == 0
    other = EnrollmentToken.new(FLEET.public_key)
    monkeypatch.setenv("FLEET_ENROLLMENT_TOKEN", str(other))
    assert cli_main([*ENROLL, "--key-path", str(tmp_path / "b.key")], publisher=publisher) == 0
    sent = [envelope.data["identity"]["enrollment_token"] for envelope, _ in publisher.sent(EventType.REGISTRATION)]
    assert sent == [str(TOKEN), str(other)]
    out = capsys.readouterr().out
    assert TOKEN.secret not in out and other.secret not in out

    monkeypatch.delenv("FLEET_ENROLLMENT_TOKEN")
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    assert cli_main([*ENROLL, "--token", "-", "--key-path", str(tmp_path / "c.key")], publisher=publisher) == 1
    assert cli_main([*ENROLL, "--key-path", str(tmp_path / "c.key")], publisher=publisher) == 1
    assert "no enrollment token" in capsys.readouterr().err
    assert not (tmp_path / "c.key").exists()


def test_fleet_agent_enroll_again_keeps_the_previous_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "fleet.key"
    assert cli_main([*ENROLL, "--token", str(TOKEN), "--key-path", str(path)], publisher=FakePublisher()) == 0
    old = AgentKey.load(path)
    capsys.readouterr()
    again = str(EnrollmentToken.new(FLEET.public_key))
    assert cli_main([*ENROLL, "--token", again, "--key-path", str(path)], publisher=FakePublisher()) == 0
    out = capsys.readouterr().out
    assert f"previous key kept: {path}.previous" in out
    assert AgentKey.load(tmp_path / "fleet.key.previous").key_id == old.key_id != AgentKey.load(path).key_id
