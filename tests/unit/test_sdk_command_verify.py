"""Commands to enrolled agents (sdk/fleet_agent/command_signatures.py, agent_commands.py, command_pull.py):
only what the fleet signed is obeyed, and each enrolled agent reads its own subscription. Fakes only."""

from __future__ import annotations

import json
import logging
import threading
from collections import defaultdict, deque
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from fleet_agent import CallRefused, CommandListener, FleetAgent
from fleet_agent.command_pull import SubscriptionPoller, wait_for_subscription
from fleet_agent.command_signatures import verify_command
from fleet_agent.contracts import Command, CommandType, Registration
from fleet_agent.identity import AgentKey, EnrollmentToken, command_signing_bytes

T0 = datetime(2026, 12, 6, 12, tzinfo=UTC)
FLEET = AgentKey.generate()
STRANGER = AgentKey.generate()


class FakePublisher:
    def topic_path(self, project: str, topic: str) -> str:
        return f"projects/{project}/topics/{topic}"

    def publish(self, topic: str, data: bytes, **attrs: Any) -> Future[str]:
        future: Future[str] = Future()
        future.set_result("1")
        return future


class FakeStream:
    def cancel(self) -> bool:
        return True

    def cancelled(self) -> bool:
        return True

    def done(self) -> bool:
        return False

    def result(self, timeout: float | None = None) -> None:
        return None

    def add_done_callback(self, fn: Callable[[Any], Any]) -> None:
        pass


class FakeSubscriber:
    """Streaming pull (one callback per subscribed path) and unary pull (queues per path)."""

    def __init__(self, *, missing: int = 0) -> None:
        self.missing = missing  # get_subscription fails this many times first
        self.created: list[str] = []
        self.lookups: list[str] = []
        self.callbacks: dict[str, Callable[[Any], Any]] = {}
        self.queues: dict[str, deque[tuple[bytes, dict[str, str]]]] = defaultdict(deque)
        self.acked: dict[str, list[str]] = defaultdict(list)
        self.pulls: dict[str, int] = defaultdict(int)
        self.cond = threading.Condition()

    def create_subscription(self, request: Mapping[str, Any], *, timeout: float) -> None:
        self.created.append(request["name"])

    def delete_subscription(self, request: Mapping[str, Any], *, timeout: float) -> None:
        pass

    def get_subscription(self, request: Mapping[str, Any], *, timeout: float) -> None:
        self.lookups.append(request["subscription"])
        if self.missing > 0:
            self.missing -= 1
            raise LookupError("404 Resource not found")

    def subscribe(self, subscription: str, callback: Callable[[Any], Any], flow_control: Any = ()) -> FakeStream:
        self.callbacks[subscription] = callback
        return FakeStream()

    def pull(self, request: Mapping[str, Any], *, timeout: float) -> Any:
        path = request["subscription"]
        with self.cond:
            items = []
            queue = self.queues[path]
            while queue and len(items) < request["max_messages"]:
                data, attrs = queue.popleft()
                message = SimpleNamespace(data=data, attributes=attrs, message_id=f"m{len(items)}")
                items.append(SimpleNamespace(ack_id=f"{path}#{len(items)}", message=message))
            self.pulls[path] += 1
            self.cond.notify_all()
        return SimpleNamespace(received_messages=items)

    def acknowledge(self, request: Mapping[str, Any], *, timeout: float) -> None:
        with self.cond:
            self.acked[request["subscription"]].extend(request["ack_ids"])

    def stream(self, path: str, data: bytes, attrs: Mapping[str, str]) -> SimpleNamespace:
        message = SimpleNamespace(data=data, attributes=dict(attrs), message_id="s1", acks=0)
        message.ack = lambda: setattr(message, "acks", message.acks + 1)
        self.callbacks[path](message)
        return message

    def drained(self, path: str, timeout: float = 10.0) -> None:
        """Wait until ``path`` was pulled empty after its queue was filled (bounded wait, not a timing)."""
        with self.cond:
            start = self.pulls[path]
            assert self.cond.wait_for(lambda: self.pulls[path] >= start + 2 and not self.queues[path], timeout)

    def close(self) -> None:
        pass


def reg(agent_id: str) -> Registration:
    return Registration(
        agent_id=agent_id, tenant="acme", name=agent_id, agent_type="llm-chat", version="1.0.0", owner="team"
    )


def command(
    kind: CommandType, agent_id: str = "agent-1", seconds: int = 0, reason: str = "budget 12.40 USD"
) -> Command:
    at = T0 + timedelta(seconds=seconds)
    return Command(
        agent_id=agent_id, command=kind, reason=reason, issued_at=at, command_id=f"c-{agent_id}-{kind}-{seconds}"
    )


def signed(cmd: Command, key: AgentKey = FLEET, signed_for: str | None = None) -> tuple[bytes, dict[str, str]]:
    """As the fleet publishes a command: the JSON body, its agent_id attribute and the signature attributes."""
    body = cmd.model_dump_json().encode()
    signature = key.sign(command_signing_bytes(signed_for or cmd.agent_id, json.loads(body)))
    attrs = {"agent_id": cmd.agent_id, "event_type": "command"}
    return body, attrs | {"sig_key_id": signature.key_id, "sig_alg": signature.alg, "sig": signature.value}


def own(agent_id: str) -> str:
    return f"projects/test/subscriptions/agent-commands.{agent_id}"


@pytest.fixture
def enrolled() -> Iterator[Callable[[str], FleetAgent]]:
    agents: list[FleetAgent] = []

    def make(agent_id: str = "agent-1") -> FleetAgent:
        agent = FleetAgent(
            reg(agent_id),
            project="test",
            publisher=FakePublisher(),
            key=AgentKey.generate(),
            fleet_public_key=FLEET.public_key,
        )
        agents.append(agent)
        return agent

    yield make
    for agent in agents:
        agent.close(timeout=1)


def refused(agent: FleetAgent) -> bool:
    try:
        agent.costs.check()
    except CallRefused:
        return True
    return False


# -- verify_command -----------------------------------------------------------------------------------


def test_verify_command_accepts_only_the_fleets_signature_over_that_body_for_that_agent() -> None:
    genuine = command(CommandType.RESUME)
    body, attrs = signed(genuine)
    assert verify_command(body, attrs, FLEET.public_key) == genuine
    assert verify_command(body, attrs, STRANGER.public_key) is None, "checked against another fleet key"
    assert verify_command(*signed(genuine, key=STRANGER), FLEET.public_key) is None, "signed by a stranger"
    altered = body.replace(b"budget 12.40", b"budget 99.40")
    assert verify_command(altered, attrs, FLEET.public_key) is None, "body altered after signing"
    unsigned = {"agent_id": "agent-1", "event_type": "command"}
    assert verify_command(body, unsigned, FLEET.public_key) is None
    assert verify_command(*signed(genuine, signed_for="agent-2"), FLEET.public_key) is None, "signed for another"
    assert verify_command(body, attrs | {"agent_id": "agent-2"}, FLEET.public_key) is None, "attribute mismatch"
    assert verify_command(body, attrs | {"sig": "!!"}, FLEET.public_key) is None
    assert verify_command(body, attrs | {"sig_alg": "rsa"}, FLEET.public_key) is None
    assert verify_command(b"not json", attrs, FLEET.public_key) is None
    assert verify_command(b"[1, 2]", attrs, FLEET.public_key) is None


def test_a_signed_body_that_is_not_a_command_is_refused() -> None:
    body = json.dumps({"agent_id": "agent-1", "command": "self_destruct"}).encode()
    signature = FLEET.sign(command_signing_bytes("agent-1", json.loads(body)))
    attrs = {"agent_id": "agent-1", "sig_key_id": signature.key_id, "sig_alg": signature.alg, "sig": signature.value}
    assert verify_command(body, attrs, FLEET.public_key) is None


# -- one enrolled agent ---------------------------------------------------------------------------------


def test_an_enrolled_agent_listens_on_its_own_subscription_and_obeys_only_the_fleet(
    enrolled: Callable[[str], FleetAgent], caplog: pytest.LogCaptureFixture
) -> None:
    agent = enrolled("agent-1")
    sub = FakeSubscriber(missing=1)  # the fleet has not created it at the first look
    agent.listen(subscriber=sub)
    assert sub.created == [], "an enrolled agent never creates a subscription"
    assert sub.lookups == [own("agent-1")] * 2 and list(sub.callbacks) == [own("agent-1")]
    pause = command(CommandType.PAUSE)
    with caplog.at_level(logging.WARNING, logger="fleet_agent"):
        forged = [
            signed(pause, key=STRANGER),
            (signed(pause)[0].replace(b"budget", b"budgex"), signed(pause)[1]),
            (pause.model_dump_json().encode(), {"agent_id": "agent-1", "event_type": "command"}),
            signed(pause, signed_for="agent-2"),
        ]
        for body, attrs in forged:
            assert sub.stream(own("agent-1"), body, attrs).acks == 1, "acknowledged and dropped"
            assert not refused(agent)
    assert len(caplog.records) == 4 and all("does not verify" in r.getMessage() for r in caplog.records)
    assert not any("budget" in r.getMessage() for r in caplog.records), "a forged command's content is not logged"
    sub.stream(own("agent-1"), *signed(command(CommandType.PAUSE, "agent-2")))  # another agent's, genuine
    assert not refused(agent)
    sub.stream(own("agent-1"), *signed(pause))
    assert refused(agent), "the genuine command is applied"
    assert agent.apply_command(signed(command(CommandType.RESUME, seconds=1))[0]) is None, "no attributes: no sig"


def test_an_unenrolled_agent_still_takes_unsigned_commands() -> None:
    agent = FleetAgent(reg("agent-1"), project="test", publisher=FakePublisher())
    try:
        assert agent.apply_command(command(CommandType.PAUSE).model_dump_json().encode()) is not None
        assert refused(agent)
    finally:
        agent.close(timeout=1)


def test_an_enrolling_agent_listens_once_its_enrollment_is_registered(tmp_path: Any) -> None:
    token = EnrollmentToken.new(FLEET.public_key)
    agent = FleetAgent(
        reg("agent-1"), project="test", publisher=FakePublisher(), key_path=tmp_path / "k", enrollment_token=str(token)
    )
    try:
        sub = FakeSubscriber()
        listener = agent.listen(subscriber=sub)
        assert not listener.running and sub.lookups == [], "its subscription does not exist before enrollment"
        agent.register()
        assert listener.running and list(sub.callbacks) == [own("agent-1")] and sub.created == []
        assert agent.listen() is listener
    finally:
        agent.close(timeout=1)


def test_waiting_for_a_subscription_backs_off_then_gives_up() -> None:
    waits: list[float] = []
    sub = FakeSubscriber(missing=3)
    wait_for_subscription(sub, own("a"), 60, sleep=waits.append)
    assert waits == [0.25, 0.5, 1.0] and len(sub.lookups) == 4
    with pytest.raises(TimeoutError, match="not found"):
        wait_for_subscription(FakeSubscriber(missing=99), own("a"), 0, sleep=waits.append)


# -- many agents in one process -------------------------------------------------------------------------


def test_a_shared_listener_pulls_each_enrolled_agents_own_subscription(enrolled: Callable[[str], FleetAgent]) -> None:
    agents = [enrolled(f"agent-{i}") for i in range(1, 4)]
    sub = FakeSubscriber()
    applied: list[tuple[str, str]] = []
    listener = CommandListener(
        "test", label="sim", subscriber=sub, on_command=lambda a, c: applied.append((a, c.command))
    )
    for agent in agents:
        listener.add(agent)
    with sub.cond:  # queued before the first pull
        sub.queues[own("agent-1")].append(signed(command(CommandType.PAUSE, "agent-1")))
        sub.queues[own("agent-1")].append(
            signed(command(CommandType.PAUSE, "agent-2"))
        )  # the emulator's unfiltered copy
        sub.queues[own("agent-3")].append(signed(command(CommandType.PAUSE, "agent-3"), key=STRANGER))
    listener.start()
    try:
        assert sub.created == [] and sub.callbacks == {}, "no subscription of its own: every agent is enrolled"
        assert set(listener.own_subscriptions.values()) == {own(f"agent-{i}") for i in range(1, 4)}
        sub.drained(own("agent-1"))
        sub.drained(own("agent-3"))
    finally:
        listener.close()
    assert applied == [("agent-1", CommandType.PAUSE)]
    assert [refused(agent) for agent in agents] == [True, False, False]
    assert len(sub.acked[own("agent-1")]) == 2 and len(sub.acked[own("agent-3")]) == 1, "all acknowledged"


def test_a_shared_listener_serves_unenrolled_agents_from_its_own_subscription(
    enrolled: Callable[[str], FleetAgent],
) -> None:
    member = enrolled("agent-1")
    legacy = FleetAgent(reg("agent-9"), project="test", publisher=FakePublisher())
    sub = FakeSubscriber()
    listener = CommandListener("test", label="sim", subscriber=sub)
    listener.add(member)
    listener.add(legacy)
    listener.start()
    try:
        (shared,) = sub.created
        assert shared.startswith("projects/test/subscriptions/fleet-commands.sim.")
        sub.stream(shared, command(CommandType.PAUSE, "agent-9").model_dump_json().encode(), {"agent_id": "agent-9"})
        assert refused(legacy)
        sub.stream(shared, *signed(command(CommandType.PAUSE, "agent-1")))
        assert not refused(member), "an enrolled agent's commands come from its own subscription only"
    finally:
        listener.close()
        legacy.close(timeout=1)


def test_the_poller_backs_off_on_quiet_and_failing_subscriptions() -> None:
    class Failing(FakeSubscriber):
        def pull(self, request: Mapping[str, Any], *, timeout: float) -> Any:
            raise LookupError("404")

    quiet = SubscriptionPoller(FakeSubscriber(), lambda path, message: None, idle_min_s=0.25, idle_max_s=2.0)
    assert quiet.poll("q") == 0.25
    source = SimpleNamespace(wait_s=0.0, failing=False, received=0)
    assert [quiet.poll("q", source) for _ in range(6)] == [0.25, 0.5, 1.0, 2.0, 2.0, 2.0]
    failing = SubscriptionPoller(Failing(), lambda path, message: None, error_max_s=10.0)
    source = SimpleNamespace(wait_s=0.0, failing=False, received=0)
    assert [failing.poll("f", source) for _ in range(7)] == [0.25, 0.5, 1, 2, 4, 8, 10]
    busy = FakeSubscriber()
    busy.queues["b"].append(signed(command(CommandType.PAUSE)))
    source = SimpleNamespace(wait_s=2.0, failing=False, received=0)
    assert SubscriptionPoller(busy, lambda path, message: None).poll("b", source) == 0.0


# -- an agent that signs but has no fleet key -------------------------------------------------------------


def test_an_agent_that_signs_without_the_fleet_key_obeys_no_command(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A key from a secret, restarted without its token and without FLEET_PUBLIC_KEY: it cannot verify
    the fleet's commands, so it obeys none (a stranger's resume included) and makes no subscription."""
    monkeypatch.delenv("FLEET_PUBLIC_KEY", raising=False)
    monkeypatch.delenv("FLEET_ENROLLMENT_TOKEN", raising=False)
    monkeypatch.delenv("FLEET_KEY_PATH", raising=False)
    agent = FleetAgent(reg("agent-1"), project="test", publisher=FakePublisher(), key=AgentKey.generate())
    try:
        sub = FakeSubscriber()
        with pytest.raises(RuntimeError, match="FLEET_PUBLIC_KEY"):
            agent.listen(subscriber=sub)
        with pytest.raises(RuntimeError, match="fleet public key"):
            agent.listen(subscriber=sub, subscription="projects/test/subscriptions/mine")
        assert sub.created == [] and sub.callbacks == {} and agent.listener is None, "no subscription of its own"
        pause = command(CommandType.PAUSE)
        with caplog.at_level(logging.WARNING, logger="fleet_agent"):
            assert agent.apply_command(pause.model_dump_json().encode()) is None, "unsigned: not obeyed"
            assert agent.apply_command(*signed(command(CommandType.RESUME, seconds=1), key=STRANGER)) is None
            assert agent.apply_command(*signed(command(CommandType.PAUSE, seconds=2))) is None, "unverifiable"
        assert not refused(agent), "no command changed anything"
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1 and "FLEET_PUBLIC_KEY" in errors[0].getMessage(), "one error, not one per command"
    finally:
        agent.close(timeout=1)


def test_given_the_fleet_key_the_same_agent_obeys_only_the_fleet(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLEET_ENROLLMENT_TOKEN", raising=False)
    monkeypatch.delenv("FLEET_KEY_PATH", raising=False)
    monkeypatch.setenv("FLEET_PUBLIC_KEY", FLEET.public_key)
    agent = FleetAgent(reg("agent-1"), project="test", publisher=FakePublisher(), key=AgentKey.generate())
    try:
        assert agent.apply_command(*signed(command(CommandType.PAUSE), key=STRANGER)) is None
        assert not refused(agent)
        assert agent.apply_command(*signed(command(CommandType.PAUSE))) is not None
        assert refused(agent)
    finally:
        agent.close(timeout=1)


def test_a_shared_listener_refuses_an_agent_that_signs_without_the_fleet_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLEET_PUBLIC_KEY", raising=False)
    monkeypatch.delenv("FLEET_KEY_PATH", raising=False)
    agent = FleetAgent(reg("agent-1"), project="test", publisher=FakePublisher(), key=AgentKey.generate())
    sub = FakeSubscriber()
    listener = CommandListener("test", label="sim", subscriber=sub)
    try:
        with pytest.raises(RuntimeError, match="no fleet public key"):
            listener.add(agent)
        listener.start()
        (shared,) = sub.created
        sub.stream(shared, command(CommandType.PAUSE).model_dump_json().encode(), {"agent_id": "agent-1"})
        assert not refused(agent), "not served: a stranger's unsigned command reaches nothing"
    finally:
        listener.close()
        agent.close(timeout=1)
