"""Issuing remediation commands: the pure decision (shared/domain/agent_actions.issue) and the service
that writes and publishes it (shared/services/agent_actions.act, with the store and publisher faked)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fleet_agent.contracts import CommandType
from fleet_agent.messages.commands import COMMANDS_V2

from shared.domain import agent_actions
from shared.domain.agent_record import AgentRecord, Plan
from shared.domain.lifecycle import State
from shared.services import agent_actions as service
from shared.services import agent_controls

T0 = datetime(2026, 12, 6, 10, 0, tzinfo=UTC)


def record(supports: tuple[str, ...] = (COMMANDS_V2,), **kw: Any) -> AgentRecord:
    fields: dict[str, Any] = {
        "agent_id": "agent-1",
        "tenant": "acme",
        "name": "A",
        "agent_type": "llm",
        "version": "1",
        "owner": "o",
        "status": State.ACTIVE,
        "status_since": T0,
        "registered_at": T0,
        "last_registered_at": T0,
        "supports": list(supports),
    }
    return AgentRecord(**{**fields, **kw})


def issue(current: AgentRecord, action: CommandType = CommandType.DRAIN, **kw: Any) -> Plan:
    args: dict[str, Any] = {"at": T0, "actor": "api:ops", "reason": "leaking", "key": "api.r1"}
    return agent_actions.issue(current, action, **{**args, **kw})


def test_a_command_is_tracked_sent_and_audited() -> None:
    plan = issue(record(), CommandType.STOP, deadline_s=60)
    ((cid, entry),) = plan.changes["commands"].items()
    assert entry["state"] == "sent" and entry["attempts"] == 1 and entry["origin"] == "operator"
    assert entry["deadline"] == T0 + timedelta(seconds=60) == plan.changes["command_due_at"]
    (command,) = plan.commands
    assert command.command_id == cid and command.command is CommandType.STOP
    assert command.deadline == T0 + timedelta(seconds=60) and command.reason == "leaking"
    (audit,) = plan.audit
    assert audit.action == "agent.command.stop" and audit.actor == "api:ops" and audit.details["command_id"] == cid


def test_the_same_key_resends_the_same_id_and_changes_nothing() -> None:
    first = issue(record())
    after = record(commands=first.changes["commands"])
    again = issue(after)
    assert again.skipped == "duplicate" and not again.changes and not again.audit
    assert [c.command_id for c in again.commands] == [c.command_id for c in first.commands]
    other = issue(after, key="api.r2")
    assert other.commands[0].command_id != first.commands[0].command_id
    assert issue(after, CommandType.RESTART).commands[0].command_id != first.commands[0].command_id


def test_throttle_carries_its_cap_and_end() -> None:
    until = T0 + timedelta(hours=1)
    plan = issue(record(), CommandType.THROTTLE, calls_per_minute=5, until=until)
    assert plan.commands[0].calls_per_minute == 5 and plan.commands[0].until == until
    with pytest.raises(agent_actions.NotAllowed, match="calls_per_minute"):
        issue(record(), CommandType.THROTTLE)
    with pytest.raises(agent_actions.NotAllowed, match="belongs to throttle"):
        issue(record(), CommandType.DRAIN, calls_per_minute=5)


def test_an_old_sdk_is_refused_and_a_retired_agent_too() -> None:
    with pytest.raises(agent_actions.Unsupported, match="does not support remediation commands"):
        issue(record(supports=()))
    with pytest.raises(agent_actions.NotAllowed, match="decommissioned"):
        issue(record(status=State.DECOMMISSIONED))
    with pytest.raises(agent_actions.NotAllowed, match="not a remediation command"):
        issue(record(), CommandType.PAUSE)


def test_the_map_is_bounded_but_never_drops_a_pending_command() -> None:
    current = record()
    first = issue(current, key="k0")
    current = current.model_copy(update=first.changes)
    pending_id = first.commands[0].command_id
    for n in range(1, 30):
        plan = issue(current, at=T0 + timedelta(seconds=n), key=f"k{n}")
        changes = dict(plan.changes)
        (cid,) = [c.command_id for c in plan.commands]
        changes["commands"] = {**changes["commands"], cid: {**changes["commands"][cid], "state": "done"}}
        current = current.model_copy(update=changes)
    assert len(current.commands) == agent_actions.KEEP
    assert pending_id in current.commands
    newest = agent_actions.newest_first(current.commands)
    assert newest[0][1]["sent_at"] == T0 + timedelta(seconds=29)


class FakeStore:
    def __init__(self, current: AgentRecord | None) -> None:
        self.current = current
        self.writes = 0

    def update(self, agent_id: str, decide: Any) -> Plan:
        plan: Plan = decide(self.current)
        if plan.changes and self.current is not None:
            self.current = self.current.model_copy(update=plan.changes)
            self.writes += 1
        return plan


@pytest.fixture
def wired(monkeypatch: pytest.MonkeyPatch) -> tuple[FakeStore, list[Any]]:
    store, sent = FakeStore(record()), []
    monkeypatch.setattr(agent_controls.agent_store, "update", store.update)
    monkeypatch.setattr(service.agent_commands, "publish", lambda commands: sent.extend(commands) or [])
    return store, sent


def test_act_writes_then_publishes_and_a_retry_resends_the_same_id(wired: tuple[FakeStore, list[Any]]) -> None:
    store, sent = wired
    actor = agent_controls.Actor("api:ops", request_id="r1")
    agent, command = service.act("agent-1", CommandType.DRAIN, actor, "leaking", T0)
    assert command.command_id in agent.commands and store.writes == 1
    _again, same = service.act("agent-1", CommandType.DRAIN, actor, "leaking", T0)
    assert same.command_id == command.command_id and store.writes == 1
    assert [c.command_id for c in sent] == [command.command_id] * 2


def test_act_refuses_with_409_and_404(wired: tuple[FakeStore, list[Any]]) -> None:
    store, sent = wired
    actor = agent_controls.Actor("api:ops")
    store.current = record(supports=())
    with pytest.raises(agent_controls.Refused) as refused:
        service.act("agent-1", CommandType.RESTART, actor, "", T0)
    assert refused.value.status == 409 and "does not support" in refused.value.reason
    store.current = record()
    with pytest.raises(agent_controls.Refused) as hidden:
        service.act("agent-1", CommandType.RESTART, agent_controls.Actor("api:x", tenants=frozenset({"other"})), "", T0)
    assert hidden.value.status == 404 and not sent and store.writes == 0
