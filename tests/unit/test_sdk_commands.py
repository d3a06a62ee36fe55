"""The SDK's command listener (sdk/fleet_agent/commands.py) against a fake subscriber: no emulator."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fleet_agent import CallRefused, CommandListener, FleetAgent
from fleet_agent.commands import ACK_DEADLINE_S, EXPIRATION_TTL_S, MESSAGE_RETENTION_S
from fleet_agent.contracts import Command, CommandType, Registration

T0 = datetime(2026, 11, 21, 12, tzinfo=UTC)
SUBSCRIPTION_NAME = re.compile(r"^projects/test/subscriptions/fleet-commands\.(?P<label>[^.]+)\.[0-9a-f]{8}$")


class FakePublisher:
    def topic_path(self, project: str, topic: str) -> str:
        return f"projects/{project}/topics/{topic}"

    def publish(self, topic: str, data: bytes, **attrs: Any) -> Future[str]:
        future: Future[str] = Future()
        future.set_result("1")
        return future


class FakeStream:
    """Stands in for ``StreamingPullFuture``: records the cancel, resolves on it."""

    def __init__(self) -> None:
        self.cancelled_ = False
        self.callbacks: list[Callable[[Any], Any]] = []
        self.resolved = False

    def cancel(self) -> bool:
        self.cancelled_ = True
        self.resolved = True
        return True

    def cancelled(self) -> bool:
        return self.cancelled_

    def done(self) -> bool:
        return self.resolved

    def result(self, timeout: float | None = None) -> bool:
        return True

    def exception(self, timeout: float | None = None) -> BaseException | None:
        return None

    def add_done_callback(self, fn: Callable[[Any], Any]) -> None:
        self.callbacks.append(fn)


class FakeMessage:
    def __init__(self, data: bytes, attributes: Mapping[str, str], message_id: str = "m-1") -> None:
        self.data = data
        self.attributes = dict(attributes)
        self.message_id = message_id
        self.acks = 0

    def ack(self) -> None:
        self.acks += 1


class FakeSubscriber:
    def __init__(self, *, fail_create: bool = False, fail_delete: bool = False) -> None:
        self.fail_create = fail_create
        self.fail_delete = fail_delete
        self.created: list[dict[str, Any]] = []
        self.deleted: list[str] = []
        self.subscribed: list[tuple[str, Any]] = []
        self.stream: FakeStream | None = None
        self.callback: Callable[[Any], Any] | None = None
        self.closed = False

    def create_subscription(self, request: Mapping[str, Any], *, timeout: float) -> Any:
        if self.fail_create:
            raise PermissionError("403 User not authorized to perform this action")
        self.created.append(dict(request))
        return request

    def delete_subscription(self, request: Mapping[str, Any], *, timeout: float) -> None:
        if self.fail_delete:
            raise RuntimeError("503 unavailable")
        self.deleted.append(request["subscription"])

    def subscribe(self, subscription: str, callback: Callable[[Any], Any], flow_control: Any = ()) -> FakeStream:
        self.subscribed.append((subscription, flow_control))
        self.callback = callback
        self.stream = FakeStream()
        return self.stream

    def close(self) -> None:
        self.closed = True

    def deliver(self, data: bytes | str, message_id: str = "m-1", **attributes: str) -> FakeMessage:
        assert self.callback is not None, "not subscribed"
        message = FakeMessage(data.encode() if isinstance(data, str) else data, attributes, message_id)
        self.callback(message)
        return message

    def send(self, command: Command, **attributes: str) -> FakeMessage:
        """Deliver as the server publishes: the JSON body plus the agent_id and event_type attributes."""
        attrs = {"agent_id": command.agent_id, "event_type": "command", **attributes}
        return self.deliver(command.model_dump_json(), command.command_id, **attrs)


def registration(agent_id: str) -> Registration:
    return Registration(
        agent_id=agent_id, tenant="acme", name=agent_id, agent_type="llm-chat", version="1.0.0", owner="team"
    )


def command(
    kind: CommandType,
    agent_id: str = "agent-1",
    at: datetime = T0,
    cid: str | None = None,
    until: datetime | None = None,
) -> Command:
    return Command(
        agent_id=agent_id,
        command=kind,
        reason="test",
        issued_at=at,
        command_id=cid or f"cmd-{agent_id}-{kind}-{at:%H%M%S}",
        until=until,
    )


@pytest.fixture
def make_agent() -> Iterator[Callable[[str], FleetAgent]]:
    agents: list[FleetAgent] = []

    def make(agent_id: str = "agent-1") -> FleetAgent:
        agent = FleetAgent(registration(agent_id), project="test", publisher=FakePublisher())
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


# -- one agent: FleetAgent.listen ------------------------------------------------------------


def test_listen_creates_a_filtered_expiring_subscription_of_its_own(make_agent: Callable[..., FleetAgent]) -> None:
    agent = make_agent("agent-1")
    sub = FakeSubscriber()
    listener = agent.listen(subscriber=sub)

    (request,) = sub.created
    match = SUBSCRIPTION_NAME.fullmatch(request["name"])
    assert match and match["label"] == "agent-1"
    assert request["topic"] == "projects/test/topics/agent-commands" == agent.commands_topic
    assert request["filter"] == 'attributes.agent_id = "agent-1"'
    assert request["ack_deadline_seconds"] == ACK_DEADLINE_S == 10
    assert request["message_retention_duration"] == {"seconds": MESSAGE_RETENTION_S} == {"seconds": 600}
    assert request["expiration_policy"] == {"ttl": {"seconds": EXPIRATION_TTL_S}} == {"ttl": {"seconds": 86400}}
    assert [path for path, _ in sub.subscribed] == [request["name"]]
    assert sub.subscribed[0][1].max_messages > 0, "flow control is set"
    # A message lost in flight is redelivered after the subscription's 10 s, not the client's 60 s default.
    assert sub.subscribed[0][1].max_duration_per_lease_extension == ACK_DEADLINE_S
    assert listener.subscription == request["name"] and listener.owns_subscription and listener.running

    assert agent.listen(subscriber=FakeSubscriber()) is listener, "listen() is idempotent"
    assert len(sub.created) == 1

    agent.close()
    assert sub.stream is not None and sub.stream.cancelled()
    assert sub.deleted == [request["name"]]
    assert not sub.closed, "an injected subscriber belongs to the caller"
    assert agent.listener is None
    with pytest.raises(RuntimeError, match="closed"):
        agent.listen(subscriber=sub)


def test_each_process_gets_its_own_subscription(make_agent: Callable[..., FleetAgent]) -> None:
    # Two processes running the same agent id must each receive every command: no shared subscription.
    first, second = FakeSubscriber(), FakeSubscriber()
    make_agent("agent-1").listen(subscriber=first)
    make_agent("agent-1").listen(subscriber=second)
    assert first.created[0]["name"] != second.created[0]["name"]


def test_commands_reach_the_agent_and_are_enforced(make_agent: Callable[..., FleetAgent]) -> None:
    agent = make_agent("agent-1")
    sub = FakeSubscriber()
    agent.listen(subscriber=sub)
    assert not refused(agent)

    message = sub.send(command(CommandType.PAUSE))
    assert message.acks == 1
    assert refused(agent)
    sub.send(command(CommandType.RESUME, at=T0 + timedelta(seconds=1)))
    assert not refused(agent)


def test_listen_before_register_is_quiet_after_it_warns(
    make_agent: Callable[..., FleetAgent], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="fleet_agent"):
        early = make_agent("agent-1")
        early.listen(subscriber=FakeSubscriber())
        early.register()
        assert [r for r in caplog.records if "unsigned" not in r.getMessage()] == []
        late = make_agent("agent-2")
        late.register()
        late.listen(subscriber=FakeSubscriber())
    assert any("listen() after register()" in r.getMessage() for r in caplog.records)


def test_a_failed_creation_raises_and_leaves_no_listener(make_agent: Callable[..., FleetAgent]) -> None:
    agent = make_agent("agent-1")
    with pytest.raises(PermissionError):
        agent.listen(subscriber=FakeSubscriber(fail_create=True))
    assert agent.listener is None
    sub = FakeSubscriber()
    assert agent.listen(subscriber=sub).running, "a later listen() can try again"


# -- dispatch ----------------------------------------------------------------------------------


def test_one_listener_dispatches_by_agent_id_and_ignores_other_agents(make_agent: Callable[..., FleetAgent]) -> None:
    agents = {agent_id: make_agent(agent_id) for agent_id in ("sim-001", "sim-002", "sim-003")}
    sub = FakeSubscriber()
    listener = CommandListener("test", label="sim-host-1", subscriber=sub)
    for agent in agents.values():
        listener.add(agent)
    listener.start()

    (request,) = sub.created
    assert "filter" not in request, "a listener for many agents takes every command and filters itself"
    match = SUBSCRIPTION_NAME.fullmatch(request["name"])
    assert match and match["label"] == "sim-host-1"

    sub.send(command(CommandType.QUARANTINE, agent_id="sim-002"))
    stranger = sub.send(command(CommandType.PAUSE, agent_id="other-agent"))
    assert stranger.acks == 1, "another process's agent: acked and ignored"
    assert [refused(a) for a in agents.values()] == [False, True, False]

    listener.remove("sim-003")
    sub.send(command(CommandType.PAUSE, agent_id="sim-003"))
    assert not refused(agents["sim-003"]), "a removed agent no longer receives commands"

    listener.close()
    assert sub.deleted == [request["name"]]


def test_the_body_names_the_agent_when_the_attribute_is_missing(make_agent: Callable[..., FleetAgent]) -> None:
    agent = make_agent("agent-1")
    sub = FakeSubscriber()
    agent.listen(subscriber=sub)
    message = sub.deliver(command(CommandType.PAUSE).model_dump_json())
    assert message.acks == 1
    assert refused(agent)


def test_bad_messages_are_acked_logged_and_ignored(
    make_agent: Callable[..., FleetAgent], caplog: pytest.LogCaptureFixture
) -> None:
    agent = make_agent("agent-1")
    sub = FakeSubscriber()
    agent.listen(subscriber=sub)
    with caplog.at_level(logging.WARNING, logger="fleet_agent"):
        not_json = sub.deliver(b"\xff not json", "bad-1", agent_id="agent-1")
        not_a_command = sub.deliver('{"agent_id": "agent-1", "command": "explode"}', "bad-2", agent_id="agent-1")
        # The attribute says agent-1 but the body is for agent-2: trust neither.
        mismatch = sub.send(command(CommandType.PAUSE, agent_id="agent-2"), agent_id="agent-1")
    assert [m.acks for m in (not_json, not_a_command, mismatch)] == [1, 1, 1]
    assert not refused(agent)
    messages = [r.getMessage() for r in caplog.records]
    assert any("undecodable" in m and "bad-1" in m for m in messages)
    assert any("undecodable" in m and "bad-2" in m for m in messages)
    assert any("differs" in m for m in messages)

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="fleet_agent"):
        foreign = sub.deliver(b"a body in some future format", "other-1", agent_id="other-agent")
    assert foreign.acks == 1
    assert caplog.records == [], "another agent's message is dropped by its attribute, before decoding"


def test_callbacks_see_each_new_command_once(make_agent: Callable[..., FleetAgent]) -> None:
    agent = make_agent("agent-1")
    sub = FakeSubscriber()
    seen: list[tuple[str, CommandType]] = []
    agent.listen(lambda agent_id, cmd: seen.append((agent_id, cmd.command)), subscriber=sub)

    pause = command(CommandType.PAUSE, cid="pause-00001")
    sub.send(pause)
    sub.send(pause)  # redelivered: already applied
    sub.send(command(CommandType.PAUSE, agent_id="agent-2"))  # not ours
    sub.send(command(CommandType.RESUME, at=T0 - timedelta(minutes=1)))  # older than the pause: lifts nothing
    assert seen == [("agent-1", CommandType.PAUSE), ("agent-1", CommandType.RESUME)]
    assert refused(agent), "the callback sees what was sent; the recorder decides what is in force"


def test_a_failing_callback_is_logged_and_the_message_still_acked(
    make_agent: Callable[..., FleetAgent], caplog: pytest.LogCaptureFixture
) -> None:
    agent = make_agent("agent-1")
    sub = FakeSubscriber()
    per_agent: list[str] = []

    def explode(agent_id: str, cmd: Command) -> None:
        raise RuntimeError("callback bug")

    listener = CommandListener("test", label="host", subscriber=sub, on_command=explode)
    listener.add(agent, on_command=lambda agent_id, cmd: per_agent.append(cmd.command_id))
    listener.start()
    with caplog.at_level(logging.ERROR, logger="fleet_agent"):
        message = sub.send(command(CommandType.PAUSE, cid="pause-00002"))
    assert message.acks == 1
    assert refused(agent), "the command was applied before the callbacks ran"
    assert per_agent == ["pause-00002"], "one failing callback does not stop the next"
    assert any("on_command callback failed" in r.getMessage() for r in caplog.records)
    listener.close()


# -- subscriptions ---------------------------------------------------------------------------


def test_a_given_subscription_is_neither_created_nor_deleted(make_agent: Callable[..., FleetAgent]) -> None:
    agent = make_agent("agent-1")
    sub = FakeSubscriber()
    listener = agent.listen(subscriber=sub, subscription="projects/test/subscriptions/agent-1-commands")
    assert sub.created == []
    assert [path for path, _ in sub.subscribed] == ["projects/test/subscriptions/agent-1-commands"]
    assert not listener.owns_subscription
    agent.close()
    assert sub.stream is not None and sub.stream.cancelled()
    assert sub.deleted == []


def test_a_short_subscription_name_is_made_a_path() -> None:
    listener = CommandListener("test", subscription="pre-made", subscriber=FakeSubscriber())
    assert listener.subscription == "projects/test/subscriptions/pre-made"


def test_a_failed_delete_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    sub = FakeSubscriber(fail_delete=True)
    listener = CommandListener("test", label="host", subscriber=sub).start()
    with caplog.at_level(logging.WARNING, logger="fleet_agent"):
        listener.close()
        listener.close()  # idempotent
    assert sub.stream is not None and sub.stream.cancelled()
    assert sum("could not delete" in r.getMessage() for r in caplog.records) == 1
    with pytest.raises(RuntimeError, match="closed"):
        listener.start()


def test_a_listener_without_label_serves_exactly_one_agent(make_agent: Callable[..., FleetAgent]) -> None:
    sub = FakeSubscriber()
    listener = CommandListener("test", subscriber=sub)
    with pytest.raises(ValueError, match="exactly one agent"):
        listener.start()  # no agent yet
    listener.add(make_agent("agent-1"))
    listener.add(make_agent("agent-2"))
    with pytest.raises(ValueError, match="exactly one agent"):
        listener.start()
    assert sub.created == []

    listener.remove("agent-2")
    listener.start()
    assert sub.created[0]["filter"] == 'attributes.agent_id = "agent-1"'
    with pytest.raises(ValueError, match="filtered to agent-1"):
        listener.add(make_agent("agent-3"))  # its commands would never pass the filter
    listener.close()


def test_one_object_per_agent_id(make_agent: Callable[..., FleetAgent]) -> None:
    listener = CommandListener("test", label="host", subscriber=FakeSubscriber())
    agent = make_agent("agent-1")
    listener.add(agent)
    listener.add(agent)  # the same agent again: fine
    with pytest.raises(ValueError, match="already listening"):
        listener.add(make_agent("agent-1"))


def test_topic_and_project_resolution(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "from-env")
    assert CommandListener(label="x").topic == "projects/from-env/topics/agent-commands"
    assert CommandListener(label="x", topic="prod-commands").topic == "projects/from-env/topics/prod-commands"
    listener = CommandListener(topic="projects/other/topics/cmds", label="x")
    assert (listener.project, listener.topic) == ("other", "projects/other/topics/cmds"), "the topic's project"
    assert CommandListener("mine", topic="projects/other/topics/cmds", label="x").project == "mine"
    monkeypatch.delenv("GOOGLE_CLOUD_PROJECT")
    monkeypatch.delenv("GCLOUD_PROJECT", raising=False)
    assert CommandListener(subscription="projects/p/subscriptions/s").subscription == "projects/p/subscriptions/s"
    with pytest.raises(ValueError, match="project"):
        CommandListener(label="x")
    with pytest.raises(ValueError, match="label"):
        CommandListener("test", label="has space")


def test_a_stream_that_dies_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    sub = FakeSubscriber()
    listener = CommandListener("test", label="host", subscriber=sub).start()
    assert sub.stream is not None
    failed: Future[bool] = Future()
    failed.set_exception(PermissionError("403 subscription deleted"))
    with caplog.at_level(logging.ERROR, logger="fleet_agent"):
        for callback in sub.stream.callbacks:
            callback(failed)
    assert any("no longer received" in r.getMessage() for r in caplog.records)
    listener.close()
