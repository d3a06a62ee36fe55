"""The default ``stop``/``restart`` of the SDK (sdk/fleet_agent/remediation.py) in the cases a review found:
an agent sharing its process, work during the exit, a handler calling ``sys.exit``, the exit's one budget,
and the registration's ``supports`` limit. Fakes only; ``exit_now`` is replaced, so nothing exits."""

from __future__ import annotations

import sys
import threading
import weakref
from collections.abc import Iterator
from typing import Any

import pytest
from fleet_agent import FleetAgent, remediation
from fleet_agent.call_records import CallRefused
from fleet_agent.contracts import CommandType
from pydantic import ValidationError

from tests.unit.test_sdk_remediation import WAIT_S, Exits, Publisher, command, feed, reg


class Recorded:
    """Stands in for :func:`remediation.exit_now`: records the codes, exits nothing."""

    def __init__(self) -> None:
        self.codes: list[int] = []
        self.called = threading.Event()

    def __call__(self, code: int) -> None:
        self.codes.append(code)
        self.called.set()


@pytest.fixture
def exit_now(monkeypatch: pytest.MonkeyPatch) -> Iterator[Recorded]:
    recorded = Recorded()
    monkeypatch.setattr(remediation, "exit_now", recorded)
    monkeypatch.setattr(remediation, "_AGENTS", weakref.WeakSet(), raising=False)  # only this test's agents are alive
    yield recorded


class OwnListener:
    """What ``listen()`` leaves on the agent, as far as closing it goes."""

    running = True

    def close(self, timeout: float = 0) -> None:
        self.running = False


def agent_of(agent_id: str, publisher: Publisher, **kwargs: Any) -> FleetAgent:
    return FleetAgent(reg(agent_id), project="test", publisher=publisher, leases=False, **kwargs)


def wait_closed(agent: FleetAgent) -> None:
    for _ in range(int(WAIT_S / 0.01)):
        if agent._closed and agent.pending == 0:
            return
        threading.Event().wait(0.01)
    raise AssertionError("the agent was not closed")


def test_the_default_stop_of_an_agent_sharing_its_process_closes_it_only_and_fails(exit_now) -> None:
    publisher = Publisher()
    one, two = agent_of("agent-1", publisher), agent_of("agent-2", publisher)
    try:
        feed(one, command(CommandType.STOP))  # as a shared CommandListener delivers it: no listen() of its own
        wait_closed(one)
        assert not exit_now.called.wait(0.2), "the process (and agent-2) goes on"
        assert ("c-stop-1", "failed", "shared process: pass exit_process") in publisher.acks()
        assert not two._closed
    finally:
        one.close(timeout=1)
        two.close(timeout=1)


def test_the_default_stop_of_the_only_agent_listening_on_its_own_exits(exit_now) -> None:
    publisher = Publisher()
    agent = agent_of("agent-1", publisher)
    agent._listener = OwnListener()  # type: ignore[assignment]  # as listen() leaves it
    other = agent_of("agent-2", publisher)
    other.close(timeout=1)  # a closed agent does not share the process any more
    feed(agent, command(CommandType.RESTART))
    assert exit_now.called.wait(WAIT_S)
    assert exit_now.codes == [75]
    assert ("c-restart-1", "done", "exiting with code 75") in publisher.acks()


def test_during_the_default_stop_the_agent_drains_and_refuses_calls_once_closed(exit_now) -> None:
    publisher = Publisher()
    exits = Exits(publisher)
    agent = agent_of("agent-1", publisher, exit_process=exits)
    costs = agent.costs
    feed(agent, command(CommandType.STOP))
    assert agent.draining, "no new task from the moment the stop came"
    assert exits.called.wait(WAIT_S)
    with pytest.raises(CallRefused) as refused:
        costs.admit("gpt-4o")  # would be paid for and never recorded
    assert refused.value.reason == "closed"


def test_a_stop_handler_calling_sys_exit_is_acknowledged_then_exits_with_its_code(exit_now) -> None:
    publisher = Publisher()
    exits = Exits(publisher)
    agent = agent_of("agent-1", publisher, exit_process=exits)
    agent.on_command(CommandType.STOP, lambda cmd: sys.exit(3))
    feed(agent, command(CommandType.STOP))
    assert exits.called.wait(WAIT_S)
    assert exits.codes == [3]
    assert ("c-stop-1", "done", "handler exited with code 3") in exits.acks_then
    assert agent._closed


def test_the_default_exit_spends_one_budget_across_its_steps(exit_now, monkeypatch: pytest.MonkeyPatch) -> None:
    publisher = Publisher()
    exits = Exits(publisher)
    agent = agent_of("agent-1", publisher, exit_process=exits)
    clock = [1000.0]
    monkeypatch.setattr(remediation, "_monotonic", lambda: clock[0], raising=False)
    given: list[float] = []
    stop_first = agent.stop

    def hanging_stop(timeout: float | None = 10.0) -> bool:
        given.append(timeout or 0.0)
        clock[0] += timeout or 0.0  # hangs as long as it may
        return stop_first(0)

    agent.stop = hanging_stop  # type: ignore[method-assign]
    feed(agent, command(CommandType.STOP))  # no deadline: DEFAULT_EXIT_S
    assert exits.called.wait(WAIT_S)
    assert given[0] == pytest.approx(remediation.DEFAULT_EXIT_S - remediation.MIN_EXIT_S / 2)
    assert given[1:] and all(timeout == 0 for timeout in given[1:]), "nothing left for the later steps"


def test_a_registration_with_no_room_left_for_commands_v2_is_refused() -> None:
    full = reg().model_copy(update={"supports": [f"feature-{n}" for n in range(32)]})
    with pytest.raises(ValidationError, match="supports"):
        FleetAgent(full, project="test", publisher=Publisher(), leases=False)
