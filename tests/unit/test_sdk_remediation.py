"""The SDK's remediation commands (sdk/fleet_agent/remediation.py): handlers, the defaults, and the signed
acknowledgements, fed through ``FleetAgent.apply_command`` as the listener feeds them. Fakes only."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fleet_agent import FleetAgent
from fleet_agent.contracts import Command, CommandAck, CommandType, Registration
from fleet_agent.identity import AgentKey, Signature, command_signing_bytes, event_signing_bytes, verify
from fleet_agent.remediation import EXIT_RESTART, EXIT_STOP

FLEET = AgentKey.generate()
ACKS = "projects/test/topics/agent-command-acks"
WAIT_S = 10.0  # a bound on waiting for another thread, never a measured duration


class Publisher:
    """Keeps every message (topic, body, attributes); optionally never confirms the cost batches."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, bytes, dict[str, str]]] = []
        self.lock = threading.Lock()

    def topic_path(self, project: str, topic: str) -> str:
        return f"projects/{project}/topics/{topic}"

    def publish(self, topic: str, data: bytes, **attrs: Any) -> Future[str]:
        with self.lock:
            self.messages.append((topic, data, dict(attrs)))
        future: Future[str] = Future()
        future.set_result(str(len(self.messages)))
        return future

    def on(self, topic: str) -> list[dict[str, Any]]:
        with self.lock:
            return [json.loads(body) for t, body, _ in self.messages if t.endswith(f"/{topic}")]

    def acks(self) -> list[tuple[str, str, str]]:
        """(command id, state, detail) of each acknowledgement, in publishing order."""
        return [
            (e["data"]["command_id"], e["data"]["state"], e["data"].get("detail", ""))
            for e in self.on("agent-command-acks")
        ]


class Exits:
    """The exit hook: records the codes and the acknowledgements already published when it was called."""

    def __init__(self, publisher: Publisher) -> None:
        self.codes: list[int] = []
        self.acks_then: list[tuple[str, str, str]] = []
        self.called = threading.Event()
        self.publisher = publisher

    def __call__(self, code: int) -> None:
        self.acks_then = self.publisher.acks()
        self.codes.append(code)
        self.called.set()


def reg(agent_id: str = "agent-1") -> Registration:
    return Registration(agent_id=agent_id, tenant="acme", name=agent_id, agent_type="llm-chat", version="1.0.0",
                        owner="team", heartbeat_interval_s=1)  # fmt: skip


def command(kind: CommandType, n: int = 1, *, ago_s: float = 0, **fields: Any) -> Command:
    at = datetime.now(UTC) - timedelta(seconds=ago_s)
    return Command(agent_id="agent-1", command=kind, issued_at=at, command_id=f"c-{kind}-{n}", reason="ops", **fields)


@pytest.fixture
def world() -> Iterator[Callable[..., tuple[FleetAgent, Publisher, Exits]]]:
    agents: list[FleetAgent] = []

    def make(*, enrolled: bool = False) -> tuple[FleetAgent, Publisher, Exits]:
        publisher = Publisher()
        exits = Exits(publisher)
        keys: dict[str, Any] = {"key": AgentKey.generate(), "fleet_public_key": FLEET.public_key} if enrolled else {}
        agent = FleetAgent(reg(), project="test", publisher=publisher, leases=False, exit_process=exits, **keys)
        agents.append(agent)
        return agent, publisher, exits

    yield make
    for agent in agents:
        agent.close(timeout=1)


def feed(agent: FleetAgent, cmd: Command) -> Command | None:
    """As the listener delivers it: signed by the fleet for an enrolled agent, plain JSON otherwise."""
    body = cmd.model_dump_json().encode()
    if not agent.identity.enrolled:
        return agent.apply_command(body)
    signature = FLEET.sign(command_signing_bytes(cmd.agent_id, json.loads(body)))
    attrs = {"agent_id": cmd.agent_id, "sig_key_id": signature.key_id, "sig_alg": signature.alg, "sig": signature.value}
    return agent.apply_command(body, attrs)


def test_the_registration_says_the_sdk_takes_the_remediation_commands(world) -> None:
    agent, publisher, _ = world()
    agent.register()
    assert publisher.on("agent-registrations")[0]["data"]["supports"] == ["commands.v2"]


def test_drain_sets_draining_until_resume_work_and_each_is_acknowledged_then_done(world) -> None:
    agent, publisher, _ = world()
    assert not agent.draining
    feed(agent, command(CommandType.DRAIN))
    assert agent.draining
    feed(agent, command(CommandType.RESUME_WORK))
    assert not agent.draining
    assert publisher.acks() == [
        ("c-drain-1", "acknowledged", ""), ("c-drain-1", "done", "draining"),
        ("c-resume_work-1", "acknowledged", ""), ("c-resume_work-1", "done", "resumed"),
    ]  # fmt: skip


def test_a_resume_work_older_than_the_drain_does_not_end_it(world) -> None:
    agent, _, _ = world()
    feed(agent, command(CommandType.DRAIN))
    feed(agent, command(CommandType.RESUME_WORK, ago_s=60))  # reordered delivery
    assert agent.draining


def test_acks_are_signed_by_the_agents_key_and_verify_with_its_public_key(world) -> None:
    agent, publisher, _ = world(enrolled=True)
    assert feed(agent, command(CommandType.DRAIN)) is not None
    envelopes = publisher.on("agent-command-acks")
    assert [e["data"]["state"] for e in envelopes] == ["acknowledged", "done"]
    assert agent.identity.key is not None
    public = agent.identity.key.public_key
    for envelope in envelopes:
        CommandAck.model_validate(envelope["data"])
        signature = Signature(**envelope["signature"])
        signed = event_signing_bytes("command_ack", "agent-1", envelope["event_id"], "acme", envelope["data"])
        assert verify(public, signature, signed)
        forged = event_signing_bytes("command_ack", "agent-1", envelope["event_id"], "acme",
                                     envelope["data"] | {"state": "failed"})  # fmt: skip
        assert not verify(public, signature, forged), "the signature covers the state"
    assert not verify(FLEET.public_key, Signature(**envelopes[0]["signature"]), b"x")


def test_an_unenrolled_agent_acknowledges_unsigned(world) -> None:
    agent, publisher, _ = world()
    feed(agent, command(CommandType.DRAIN))
    envelopes = publisher.on("agent-command-acks")
    assert len(envelopes) == 2 and all("signature" not in e for e in envelopes)


def test_a_drain_or_throttle_older_than_a_resume_work_delivered_first_is_superseded(world) -> None:
    agent, publisher, _ = world()
    feed(agent, command(CommandType.RESUME_WORK))
    feed(agent, command(CommandType.DRAIN, ago_s=5))  # issued before the resume, delivered after it
    feed(agent, command(CommandType.THROTTLE, ago_s=5, calls_per_minute=0))
    assert not agent.draining and agent.throttle is None
    assert ("c-drain-1", "done", "superseded") in publisher.acks()
    assert ("c-throttle-1", "done", "superseded") in publisher.acks()
    feed(agent, command(CommandType.DRAIN, 2))  # a newer drain still drains
    assert agent.draining


def test_a_re_sent_command_runs_once_and_is_re_acknowledged_with_its_furthest_state(world) -> None:
    agent, publisher, _ = world()
    runs: list[str] = []
    agent.on_command(CommandType.CLEAR_CACHE, lambda cmd: runs.append(cmd.command_id))
    assert feed(agent, command(CommandType.CLEAR_CACHE)) is not None
    assert feed(agent, command(CommandType.CLEAR_CACHE)) is None  # the same id again: the fleet lost our ack
    assert runs == ["c-clear_cache-1"]
    done = ("c-clear_cache-1", "done", "handled")
    assert publisher.acks() == [("c-clear_cache-1", "acknowledged", ""), done, done]
    feed(agent, command(CommandType.PAUSE))
    feed(agent, command(CommandType.PAUSE))  # not a remediation command: never acknowledged
    other = command(CommandType.CLEAR_CACHE).model_copy(update={"agent_id": "agent-2"})
    feed(agent, other)  # another agent's: not ours to acknowledge
    assert publisher.acks() == [("c-clear_cache-1", "acknowledged", ""), done, done]


def test_clear_cache_without_a_handler_fails_and_a_raising_handler_fails_with_its_class_only(world) -> None:
    agent, publisher, _ = world()
    feed(agent, command(CommandType.CLEAR_CACHE, 1))

    @agent.on_command(CommandType.CLEAR_CACHE)
    def clear(cmd: Command) -> None:
        raise KeyError("sk-secret-token in the cache")

    assert clear.__name__ == "clear"  # the decorator returns the function
    feed(agent, command(CommandType.CLEAR_CACHE, 2))
    assert publisher.acks()[1] == ("c-clear_cache-1", "failed", "no handler")
    assert publisher.acks()[3] == ("c-clear_cache-2", "failed", "handler raised KeyError")
    assert "sk-secret" not in repr(publisher.messages)


def test_only_remediation_commands_take_handlers(world) -> None:
    agent, _, _ = world()
    with pytest.raises(ValueError, match="not a remediation command"):
        agent.on_command(CommandType.PAUSE, lambda cmd: None)


def test_drain_and_throttle_handlers_run_after_the_default(world) -> None:
    agent, publisher, _ = world()
    seen: list[tuple[str, bool, int | None]] = []
    for kind in (CommandType.DRAIN, CommandType.THROTTLE):
        agent.on_command(kind, lambda cmd: seen.append((cmd.command, agent.draining, agent.throttle)))
    feed(agent, command(CommandType.DRAIN))
    feed(agent, command(CommandType.THROTTLE, calls_per_minute=5))
    assert seen == [("drain", True, None), ("throttle", True, 5)]
    assert publisher.acks()[-1] == ("c-throttle-1", "done", "throttled to 5 calls/min")


def test_a_throttle_without_a_cap_fails(world) -> None:
    agent, publisher, _ = world()
    feed(agent, command(CommandType.THROTTLE))
    assert agent.throttle is None
    assert publisher.acks()[-1] == ("c-throttle-1", "failed", "no calls_per_minute")


@pytest.mark.parametrize(("kind", "code"), [(CommandType.RESTART, EXIT_RESTART), (CommandType.STOP, EXIT_STOP)])
def test_stop_and_restart_by_default_close_the_agent_then_exit(world, kind: CommandType, code: int) -> None:
    agent, publisher, exits = world()
    agent.start()
    with agent.costs.call("chat", model="gpt-4o") as call:
        call.tokens(10, 5)
    feed(agent, command(kind, deadline=datetime.now(UTC) + timedelta(seconds=30)))
    assert exits.called.wait(WAIT_S)
    assert exits.codes == [code] and code == (75 if kind is CommandType.RESTART else 0)
    cid = f"c-{kind}-1"
    assert exits.acks_then == [(cid, "acknowledged", ""), (cid, "done", f"exiting with code {code}")]
    assert not agent.running, "the heartbeat loop stopped"
    assert agent.costs.closed and publisher.on("agent-costs"), "the call's record left before the exit"
    with pytest.raises(RuntimeError, match="closed"):
        agent.heartbeat()


def test_a_second_stop_while_exiting_exits_once(world) -> None:
    agent, publisher, exits = world()
    gate = threading.Event()
    exits_first = exits.__call__

    def slow_exit(code: int) -> None:
        gate.wait(WAIT_S)
        exits_first(code)

    stop_first = agent.stop

    def held_stop(timeout: float | None = 10.0) -> bool:
        gate.wait(WAIT_S)  # the agent stays open until the second command came (it can acknowledge it)
        return stop_first(timeout)

    agent._given_exit = slow_exit  # held until the second command came
    agent.stop = held_stop  # type: ignore[method-assign]
    feed(agent, command(CommandType.STOP, 1))
    feed(agent, command(CommandType.RESTART, 2))
    gate.set()
    assert exits.called.wait(WAIT_S)
    assert exits.codes == [0]
    assert ("c-restart-2", "done", "exiting already") in publisher.acks()


def test_a_stop_handler_runs_instead_of_the_default(world) -> None:
    agent, publisher, exits = world()
    handled = threading.Event()
    agent.on_command(CommandType.STOP, lambda cmd: handled.set())
    feed(agent, command(CommandType.STOP))
    assert handled.wait(WAIT_S)
    for _ in range(1000):  # the done ack follows the handler's return, on its thread
        if len(publisher.acks()) == 2:
            break
        threading.Event().wait(0.01)
    assert publisher.acks() == [("c-stop-1", "acknowledged", ""), ("c-stop-1", "done", "handled")]
    assert exits.codes == [] and not agent.costs.closed


def test_a_restart_issued_before_the_agent_was_made_is_done_without_exiting(world) -> None:
    agent, publisher, exits = world()
    feed(agent, command(CommandType.RESTART, ago_s=120))  # re-sent to the process that restarted since
    assert publisher.acks() == [("c-restart-1", "acknowledged", ""), ("c-restart-1", "done", "restarted since")]
    assert exits.codes == []


def test_paused_heartbeats_send_nothing_while_commands_still_apply(world) -> None:
    agent, publisher, _ = world()
    turns = threading.Semaphore(0)

    class Counting(threading.Event):
        def wait(self, timeout: float | None = None) -> bool:
            turns.release()
            return super().wait(0.01)  # a short pause between beats, whatever the interval

    agent._stop = Counting()
    agent.pause_heartbeats()
    agent.start()
    for _ in range(3):
        assert turns.acquire(timeout=WAIT_S)  # three turns of the loop while paused
    feed(agent, command(CommandType.DRAIN))
    assert agent.heartbeats_paused and agent.draining and publisher.on("agent-heartbeats") == []
    agent.resume_heartbeats()
    for _ in range(1000):  # bounded: the loop beats again once resumed
        if publisher.on("agent-heartbeats"):
            break
        turns.acquire(timeout=WAIT_S)
    agent.stop(timeout=1)
    assert publisher.on("agent-heartbeats"), "the loop beats again once resumed"
