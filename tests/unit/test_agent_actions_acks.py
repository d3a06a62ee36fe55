"""Acknowledgements of remediation commands and their re-send and escalation (shared/domain/agent_actions.py
``acknowledge`` and ``overdue``): states move forward only, unknown commands are refused, a command not
acknowledged is re-sent once with the same id and then escalated as an episode that an ack resolves."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from fleet_agent.contracts import CommandType
from fleet_agent.messages.commands import AckState, CommandAck

from shared.domain import agent_actions
from shared.domain.agent_record import AgentRecord, Plan
from shared.domain.episodes import AlertingConfig
from shared.domain.lifecycle import State
from shared.domain.rejections import Code, Rejected
from tests.unit.test_agent_actions import T0, issue, record

CONFIG = AlertingConfig()


def applied(current: AgentRecord, plan: Plan) -> AgentRecord:
    return current.model_copy(update=plan.changes) if plan.changes else current


def sent(action: CommandType = CommandType.DRAIN, **kw: Any) -> tuple[AgentRecord, str]:
    current = record()
    plan = issue(current, action, deadline_s=30, **kw)
    return applied(current, plan), plan.commands[0].command_id


def ack(cid: str, state: AckState, command: CommandType = CommandType.DRAIN, detail: str = "") -> CommandAck:
    return CommandAck(agent_id="agent-1", command_id=cid, command=command, state=state, detail=detail, sent_at=T0)


def test_states_move_forward_only_whatever_the_order() -> None:
    current, cid = sent()
    done = agent_actions.acknowledge(current, ack(cid, AckState.DONE), at=T0 + timedelta(seconds=2), config=CONFIG)
    after = applied(current, done)
    entry = after.commands[cid]
    assert entry["state"] == "done" and entry["done_at"] == entry["acked_at"] == T0 + timedelta(seconds=2)
    assert after.command_due_at is None
    (audit,) = done.audit
    assert audit.action == "agent.command.drain" and audit.outcome == "done" and audit.actor == "agent:agent-1"
    for late in (AckState.ACKNOWLEDGED, AckState.DONE, AckState.FAILED):  # reordered or redelivered
        again = agent_actions.acknowledge(after, ack(cid, late), at=T0 + timedelta(seconds=3), config=CONFIG)
        assert again.skipped == "duplicate" and not again.changes and not again.audit


def test_acknowledged_then_failed_keeps_the_detail() -> None:
    current, cid = sent(CommandType.CLEAR_CACHE)
    first = agent_actions.acknowledge(
        current, ack(cid, AckState.ACKNOWLEDGED, CommandType.CLEAR_CACHE), at=T0, config=CONFIG
    )
    current = applied(current, first)
    assert current.commands[cid]["state"] == "acknowledged" and not first.audit and current.command_due_at is None
    failed = ack(cid, AckState.FAILED, CommandType.CLEAR_CACHE, "no handler")
    current = applied(current, agent_actions.acknowledge(current, failed, at=T0, config=CONFIG))
    assert current.commands[cid]["state"] == "failed" and current.commands[cid]["detail"] == "no handler"


@pytest.mark.parametrize("which", ["unknown", "other type"])
def test_an_ack_for_a_command_not_sent_is_refused(which: str) -> None:
    current, cid = sent()
    other = ack(cid, AckState.DONE, CommandType.RESTART)
    wrong = ack("drain.not-sent-here", AckState.DONE) if which == "unknown" else other
    with pytest.raises(Rejected) as refused:
        agent_actions.acknowledge(current, wrong, at=T0, config=CONFIG)
    assert refused.value.code is Code.UNKNOWN_COMMAND and refused.value.agent_id == "agent-1"


def test_an_unacknowledged_command_is_resent_once_then_escalated_and_an_ack_resolves_it() -> None:
    current, cid = sent()
    assert agent_actions.overdue(current, T0 + timedelta(seconds=29), CONFIG).skipped == "unchanged"
    first_due = T0 + timedelta(seconds=30)
    resend = agent_actions.overdue(current, first_due, CONFIG)
    assert [c.command_id for c in resend.commands] == [cid] and not resend.episodes
    current = applied(current, resend)
    assert current.commands[cid]["attempts"] == 2 and current.command_due_at == first_due + timedelta(seconds=30)
    assert agent_actions.overdue(current, first_due + timedelta(seconds=10), CONFIG).skipped == "unchanged"
    escalate = agent_actions.overdue(current, first_due + timedelta(seconds=30), CONFIG)
    assert not escalate.commands
    (episode,) = escalate.episodes
    assert episode.fields["rule"] == "command_unacknowledged" and episode.fields["severity"] == "high"
    assert episode.fields["title"] == "Command not acknowledged"
    current = applied(current, escalate)
    assert current.commands[cid]["state"] == "unacknowledged" and current.command_due_at is None
    assert "command_unacknowledged" in current.episodes
    assert agent_actions.overdue(current, first_due + timedelta(minutes=5), CONFIG).skipped == "unchanged"
    late = agent_actions.acknowledge(
        current, ack(cid, AckState.DONE), at=first_due + timedelta(minutes=6), config=CONFIG
    )
    (resolved,) = late.episodes
    assert resolved.fields["state"] == "resolved"
    current = applied(current, late)
    assert current.commands[cid]["state"] == "done" and "command_unacknowledged" not in current.episodes


def test_an_acknowledged_command_is_not_resent() -> None:
    current, cid = sent()
    current = applied(
        current, agent_actions.acknowledge(current, ack(cid, AckState.ACKNOWLEDGED), at=T0, config=CONFIG)
    )
    assert agent_actions.overdue(current, T0 + timedelta(hours=1), CONFIG).skipped == "unchanged"


def test_an_overdue_command_the_agent_can_no_longer_take_fails_instead_of_being_resent() -> None:
    current, cid = sent()
    for update, detail in (({"supports": []}, "unsupported"), ({"status": State.DECOMMISSIONING}, "retired")):
        plan = agent_actions.overdue(current.model_copy(update=update), T0 + timedelta(seconds=31), CONFIG)
        assert not plan.commands and not plan.episodes
        entry = plan.changes["commands"][cid]
        assert entry["state"] == "failed" and entry["detail"].startswith(detail)
        assert plan.changes["command_due_at"] is None
        assert [(a.action, a.outcome) for a in plan.audit] == [("agent.command.drain", "failed")]


def test_until_belongs_to_throttle() -> None:
    with pytest.raises(agent_actions.NotAllowed, match="until belongs to throttle"):
        issue(record(), CommandType.RESTART, until=T0 + timedelta(hours=1))
