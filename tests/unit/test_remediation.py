"""Remediation policies (shared/domain/remediation.py): conditions read from the agent document, once per
episode, and the safety rules (unsupported SDK, restart loop, hourly cap, dry run, critical stop)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fleet_agent.contracts import CommandType
from pydantic import ValidationError

from shared.domain import agent_actions, liveness, notices, remediation, remediation_frozen
from shared.domain.agent_record import AgentRecord, Liveness, Plan
from shared.domain.agents import apply_registration
from shared.domain.episodes import AlertingConfig
from shared.domain.lifecycle import Outcome, State
from shared.domain.remediation import Condition
from shared.domain.remediation_policy import Mode, RemediationPolicy, Rule
from tests.unit.test_agent_domain import reg

T0 = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
V2 = ["commands.v2"]


def agent(supports: list[str] | None = None, **kw: Any) -> AgentRecord:
    plan = apply_registration(
        None, reg(supports=V2 if supports is None else supports, **kw), event_id="ev-1", received_at=T0
    )
    assert plan.create is not None
    return plan.create


def after(record: AgentRecord, plan: Plan) -> AgentRecord:
    return AgentRecord.model_validate({**record.to_doc(), **plan.changes})


#: When the sweep finds the agent (30 s interval) frozen.
FROZEN_AT = T0 + timedelta(seconds=301)


def frozen(record: AgentRecord | None = None) -> tuple[AgentRecord, Plan]:
    """The sweep step that freezes a silent agent (the policy follows it, as in shared/services/sweep.py)."""
    record = (record or agent()).model_copy(update={"sweep_at": FROZEN_AT})
    return record, liveness.step(record, FROZEN_AT, config=AlertingConfig())


def with_episode(record: AgentRecord, rule: str, opened_at: datetime = T0, **health: Any) -> AgentRecord:
    index = {
        **record.episodes,
        rule: {"id": f"a.{record.agent_id}.{rule}.1", "severity": "high", "opened_at": opened_at.isoformat()},
    }
    return record.model_copy(update={"episodes": index, "health": {**record.health, **health}})


def policy_command(at: datetime, command: str = "restart") -> dict[str, Any]:
    return {"command": command, "state": "done", "origin": "policy:x", "sent_at": at}


def test_a_frozen_agent_is_restarted_once_per_episode_audited_and_posted_in_its_thread() -> None:
    record, step = frozen()
    asks: list[remediation.Ask] = []
    plan = remediation.after(record, step, RemediationPolicy(), T0 + timedelta(minutes=6), remediation.ON_SWEEP, asks)
    assert plan.changes["liveness"] is Liveness.FROZEN and plan.changes["status"] is State.FROZEN
    [command] = plan.commands
    assert command.command is CommandType.RESTART and command.deadline is not None
    entry = plan.changes["commands"][command.command_id]
    assert entry["origin"] == "policy:frozen-restart" and entry["episode"] == plan.changes["episodes"]["liveness"]["id"]
    assert plan.changes["episodes"]["liveness"]["remediation"] == "sent"
    [audit] = [a for a in plan.audit if a.action == "agent.remediation"]
    assert audit.outcome == "sent" and audit.details["rule"] == "frozen-restart"
    notice = next(w.notice for w in plan.episodes if w.notice and w.notice["event"] == "remediation-sent")
    assert notice["episode_id"] == entry["episode"] and "restart" in notice["summary"]
    # The same episode later: decided already, nothing more (no extra write on the common path).
    again = remediation.decide(after(record, plan), RemediationPolicy(), T0 + timedelta(hours=2), remediation.ON_SWEEP)
    assert again.plan.skipped == "unchanged" and not again.plan.changes and not again.plan.audit


def test_an_agent_without_commands_v2_is_skipped_and_that_is_recorded_once() -> None:
    record, step = frozen(agent(supports=[]))
    plan = remediation.after(record, step, RemediationPolicy(), FROZEN_AT, remediation.ON_SWEEP, [])
    assert not plan.commands and "commands" not in plan.changes
    assert plan.changes["episodes"]["liveness"]["remediation"] == "unsupported"
    assert [a.outcome for a in plan.audit if a.action == "agent.remediation"] == ["unsupported"]
    assert not [w for w in plan.episodes if w.notice and str(w.notice.get("event", "")).startswith("remediation")]
    again = remediation.decide(after(record, plan), RemediationPolicy(), FROZEN_AT, remediation.ON_SWEEP)
    assert not again.plan.audit


def test_dry_run_records_what_it_would_have_done_and_sends_nothing() -> None:
    record, step = frozen()
    plan = remediation.after(record, step, RemediationPolicy(mode=Mode.DRY_RUN), FROZEN_AT, remediation.ON_SWEEP, [])
    assert not plan.commands and "commands" not in plan.changes
    [audit] = [a for a in plan.audit if a.action == "agent.remediation"]
    assert audit.outcome == "dry_run" and "would restart" in audit.details["summary"]


def test_mode_off_adds_nothing() -> None:
    record, step = frozen()
    plan = remediation.after(record, step, RemediationPolicy(mode=Mode.OFF), FROZEN_AT, remediation.ON_SWEEP, [])
    assert plan is step and "remediation" not in plan.changes["episodes"]["liveness"]


def test_a_restart_loop_escalates_to_a_person_instead_of_restarting_again() -> None:
    base = agent()
    history = {f"c{i}": policy_command(T0 - timedelta(minutes=10 * i)) for i in range(3)}
    record, step = frozen(base.model_copy(update={"commands": history}))
    plan = remediation.after(record, step, RemediationPolicy(), FROZEN_AT, remediation.ON_SWEEP, [])
    assert not plan.commands
    assert plan.changes["episodes"][remediation.ESCALATED]["severity"] == "critical"
    assert plan.changes["episodes"]["liveness"]["remediation"] == "escalated"
    opened = [w for w in plan.episodes if w.fields.get("rule") == remediation.ESCALATED]
    assert opened and opened[0].notice is not None and opened[0].notice["event"] == "open"


def test_the_hourly_cap_counts_the_policy_commands_of_the_last_hour() -> None:
    base = agent()
    recent = {f"c{i}": policy_command(T0 - timedelta(minutes=5), "drain") for i in range(3)}
    record = with_episode(base.model_copy(update={"commands": recent}), "failure_risk")
    out = remediation.decide(record, RemediationPolicy(), T0, remediation.ON_HEARTBEAT)
    assert not out.plan.commands and out.plan.changes["episodes"]["failure_risk"]["remediation"] == "capped"
    # An hour later they no longer count.
    old = {k: {**v, "sent_at": T0 - timedelta(minutes=61)} for k, v in recent.items()}
    out = remediation.decide(
        record.model_copy(update={"commands": old}), RemediationPolicy(), T0, remediation.ON_HEARTBEAT
    )
    assert [c.command for c in out.plan.commands] == [CommandType.DRAIN]
    # Operator commands never count towards the policy's cap.
    ops = {k: {**v, "origin": "operator"} for k, v in recent.items()}
    out = remediation.decide(
        record.model_copy(update={"commands": ops}), RemediationPolicy(), T0, remediation.ON_HEARTBEAT
    )
    assert out.plan.commands


def test_error_rate_throttles_only_after_its_episode_was_open_for_s() -> None:
    record = with_episode(agent(), "error_rate")
    early = remediation.decide(record, RemediationPolicy(), T0 + timedelta(minutes=9), remediation.ON_HEARTBEAT)
    assert not early.plan.changes
    late = remediation.decide(record, RemediationPolicy(), T0 + timedelta(minutes=10), remediation.ON_HEARTBEAT)
    [command] = late.plan.commands
    assert command.command is CommandType.THROTTLE and command.calls_per_minute == 10
    assert command.until == T0 + timedelta(minutes=70)


def test_saturation_restarts_only_when_memory_is_the_saturated_metric() -> None:
    cpu = with_episode(agent(), "saturation", cpu_high_since=T0.isoformat())
    assert not remediation.decide(cpu, RemediationPolicy(), T0, remediation.ON_HEARTBEAT).plan.changes
    memory = with_episode(agent(), "saturation", memory_high_since=T0.isoformat())
    [command] = remediation.decide(memory, RemediationPolicy(), T0, remediation.ON_HEARTBEAT).plan.commands
    assert command.command is CommandType.RESTART


def test_the_most_specific_rule_wins_and_a_stop_on_a_critical_agent_asks_an_approver() -> None:
    rules = [
        Rule(name="any", when=Condition.FAILURE_RISK, action=CommandType.DRAIN),
        Rule(name="gpu-critical", when=Condition.FAILURE_RISK, action=CommandType.STOP, agent_type="llm",
             labels={"critical": "true"}),
    ]  # fmt: skip
    policy = RemediationPolicy(rules=rules)
    plain = with_episode(agent(), "failure_risk")
    assert [c.command for c in remediation.decide(plain, policy, T0, remediation.ON_HEARTBEAT).plan.commands] == [
        CommandType.DRAIN
    ]
    critical = with_episode(agent(labels={"critical": "true"}), "failure_risk")
    out = remediation.decide(critical, policy, T0, remediation.ON_HEARTBEAT)
    assert not out.plan.commands and out.plan.changes["episodes"]["failure_risk"]["remediation"] == "approval"
    [ask] = out.asks
    assert ask.action == "stop" and ask.rule == "gpu-critical" and ask.episode_id == "a.agent-1.failure_risk.1"
    # Not critical by the tenant's label: the stop is sent.
    other = remediation.decide(critical, policy.model_copy(update={"critical_label": "tier=gold"}), T0,
                               remediation.ON_HEARTBEAT)  # fmt: skip
    assert [c.command for c in other.plan.commands] == [CommandType.STOP]


def test_a_registration_after_a_policy_restart_lifts_frozen_and_otherwise_frozen_stays() -> None:
    record, step = frozen()
    at = T0 + timedelta(minutes=6)
    restarted = after(record, remediation.after(record, step, RemediationPolicy(), at, remediation.ON_SWEEP, []))
    assert restarted.status is State.FROZEN
    back = apply_registration(restarted, reg(supports=V2), event_id="ev-2", received_at=at + timedelta(seconds=30))
    assert back.changes["status"] is State.ACTIVE and back.changes["status_reason"] == "restarted by remediation policy"
    assert back.changes["liveness"] is Liveness.OK and back.changes["sweep_at"] is not None
    assert "liveness" not in back.changes["episodes"]
    assert any(a.details.get("reason") == "restarted by remediation policy" for a in back.audit)
    # Frozen without a policy restart (the dry run): sticky, only an approver releases it.
    record, step = frozen()
    dry = after(
        record, remediation.after(record, step, RemediationPolicy(mode=Mode.DRY_RUN), at, remediation.ON_SWEEP, [])
    )
    held = apply_registration(dry, reg(supports=V2), event_id="ev-3", received_at=at + timedelta(seconds=30))
    assert "status" not in held.changes and held.transition is not None and held.transition.outcome is Outcome.HELD


def test_the_policy_is_validated_whole() -> None:
    with pytest.raises(ValidationError, match="calls_per_minute"):
        RemediationPolicy.for_tenant({"rules": [{"name": "t", "when": "error_rate", "action": "throttle"}]})
    with pytest.raises(ValidationError, match="not a remediation command"):
        RemediationPolicy.for_tenant({"rules": [{"name": "p", "when": "frozen", "action": "pause"}]})
    with pytest.raises(ValidationError):
        RemediationPolicy.for_tenant({"mode": "sometimes"})
    merged = RemediationPolicy.for_tenant({"restart_loop": {"restarts": 2}})
    assert merged.restart_loop.within_s == 3600 and len(merged.rules) == 4


def test_the_thread_reply_escapes_agent_text() -> None:
    text, blocks = notices.remediation(
        {"title": "Agent silent", "tenant": "acme", "agent_id": "a-1", "summary": "restart <!channel> & co"}
    )
    assert "a-1" in text
    assert "<!channel>" not in blocks[0]["text"]["text"] and "&lt;!channel&gt;" in blocks[0]["text"]["text"]
    assert text


def test_the_common_path_adds_nothing_to_a_heartbeat() -> None:
    record = agent()
    plan = Plan(changes={"last_seq": 1})
    same = remediation.after(record, plan, RemediationPolicy(), T0, remediation.ON_HEARTBEAT, [])
    assert same is plan and same.changes == {"last_seq": 1} and not same.audit and not same.episodes
    decided = with_episode(record, "failure_risk")
    decided.episodes["failure_risk"]["remediation"] = "sent"
    assert remediation.after(decided, plan, RemediationPolicy(), T0, remediation.ON_HEARTBEAT, []).changes == {
        "last_seq": 1
    }


def test_an_agent_in_a_state_a_person_imposed_is_held_once_and_sent_nothing() -> None:
    for status in (State.COMPROMISED, State.QUARANTINED, State.MAINTENANCE, State.SUSPENDED):
        record = with_episode(agent().model_copy(update={"status": status}), "saturation", memory_high_since="x")
        out = remediation.decide(record, RemediationPolicy(), T0 + timedelta(minutes=1), remediation.ON_HEARTBEAT)
        assert not out.plan.commands and not out.asks
        assert out.plan.changes["episodes"]["saturation"]["remediation"] == "held"
        assert [(e.action, e.outcome) for e in out.plan.audit] == [("agent.remediation", "held")]
        again = remediation.decide(after(record, out.plan), RemediationPolicy(), T0, remediation.ON_HEARTBEAT)
        assert again.plan.skipped == "unchanged"


def test_only_the_frozen_rules_restart_answered_by_a_later_registration_lifts_frozen() -> None:
    record, step = frozen()
    off = after(record, remediation.after(record, step, RemediationPolicy(mode=Mode.OFF), FROZEN_AT,
                                          remediation.ON_SWEEP, []))  # fmt: skip
    assert off.status is State.FROZEN
    later = FROZEN_AT + timedelta(minutes=5)
    # The memory rule restarts the frozen agent: not the frozen rule's restart, frozen stays.
    sat = with_episode(off, "saturation", opened_at=later, memory_high_since=later.isoformat())
    memory = after(sat, remediation.decide(sat, RemediationPolicy(), later, remediation.ON_HEARTBEAT).plan)
    held = apply_registration(memory, reg(supports=V2), event_id="ev-9", received_at=later + timedelta(seconds=30))
    assert "status" not in held.changes
    # The frozen rule's restart, and a registration published before it was sent: frozen stays.
    record, step = frozen()
    at = FROZEN_AT + timedelta(minutes=2)
    restarted = after(record, remediation.after(record, step, RemediationPolicy(), at, remediation.ON_SWEEP, []))
    old = apply_registration(restarted, reg(supports=V2), event_id="ev-o", received_at=at - timedelta(seconds=60))
    assert "status" not in old.changes
    # A registration after it was sent lifts frozen, and marks the restart done.
    back = apply_registration(restarted, reg(supports=V2), event_id="ev-n", received_at=at + timedelta(seconds=5))
    assert back.changes["status"] is State.ACTIVE
    (cid,) = restarted.commands
    assert back.changes["commands"][cid]["state"] == "done"
    assert back.changes["commands"][cid]["detail"] == "agent re-registered"


def test_the_restarts_done_ack_after_its_registration_lifts_frozen() -> None:
    record, step = frozen()
    at = FROZEN_AT + timedelta(minutes=2)
    restarted = after(record, remediation.after(record, step, RemediationPolicy(), at, remediation.ON_SWEEP, []))
    (cid,) = restarted.commands
    # The ack's check compares the agent's last registration with the restart's sent_at.
    registered = restarted.model_copy(update={"last_registered_at": at + timedelta(seconds=3)})
    lifted = remediation_frozen.lift_frozen(registered, at + timedelta(seconds=4), f"ack.{cid}",
                                     registered_at=registered.last_registered_at)  # fmt: skip
    assert lifted.changes["status"] is State.ACTIVE
    stale = remediation_frozen.lift_frozen(restarted, at + timedelta(seconds=4), f"ack.{cid}",
                                    registered_at=restarted.last_registered_at)  # fmt: skip
    assert "status" not in stale.changes


def test_a_policy_drain_is_undone_when_its_episode_resolves() -> None:
    record = with_episode(agent(), "failure_risk")
    out = remediation.decide(record, RemediationPolicy(), T0, remediation.ON_HEARTBEAT)
    assert [c.command for c in out.plan.commands] == [CommandType.DRAIN]
    drained = after(record, out.plan)
    episode = drained.episodes["failure_risk"]["id"]

    # A heartbeat whose plan resolves the failure_risk episode (the index without it).
    def resolves() -> Plan:
        return Plan(changes={"episodes": {k: v for k, v in drained.episodes.items() if k != "failure_risk"}})

    later = T0 + timedelta(hours=1)
    plan = remediation.after(drained, resolves(), RemediationPolicy(), later, remediation.ON_HEARTBEAT, [])
    (resume,) = plan.commands
    assert resume.command is CommandType.RESUME_WORK
    entry = plan.changes["commands"][resume.command_id]
    assert entry["origin"] == "policy:failure-risk-drain" and episode in entry["reason"]
    assert [a.action for a in plan.audit] == ["agent.command.resume_work"]
    # An episode that stays open, or one the policy did not drain for: nothing.
    assert not remediation.undo(drained, Plan(changes={"episodes": drained.episodes}), T0).commands
    off = remediation.after(drained, resolves(), RemediationPolicy(mode=Mode.OFF), T0, remediation.ON_HEARTBEAT, [])
    assert [c.command for c in off.commands] == [CommandType.RESUME_WORK]  # undone even with the policy off


def test_a_dry_run_never_opens_an_escalation() -> None:
    history = {f"c{i}": policy_command(T0 - timedelta(minutes=10 * i)) for i in range(3)}
    record, step = frozen(agent().model_copy(update={"commands": history}))
    plan = remediation.after(record, step, RemediationPolicy(mode=Mode.DRY_RUN), FROZEN_AT, remediation.ON_SWEEP, [])
    assert remediation.ESCALATED not in plan.changes["episodes"] and not plan.commands
    assert plan.changes["episodes"]["liveness"]["remediation"] == "dry_run"
    (entry,) = [a for a in plan.audit if a.action == "agent.remediation"]
    assert entry.outcome == "dry_run" and "would escalate" in entry.details["summary"]


def test_a_frozen_rule_cannot_wait() -> None:
    with pytest.raises(ValidationError, match="for_s must be 0"):
        Rule(name="f", when=Condition.FROZEN, action=CommandType.RESTART, for_s=600)
    assert Rule(name="f", when=Condition.FROZEN, action=CommandType.RESTART).for_s == 0


def test_the_cap_and_the_loop_fit_the_tracked_commands() -> None:
    with pytest.raises(ValidationError, match="must not exceed max_actions_per_hour"):
        RemediationPolicy.for_tenant({"max_actions_per_hour": 2})  # the loop (3) could never be reached
    with pytest.raises(ValidationError):
        RemediationPolicy.for_tenant({"max_actions_per_hour": 50, "restart_loop": {"restarts": 50}})
    assert RemediationPolicy.for_tenant({"max_actions_per_hour": 0}).max_actions_per_hour == 0
    # Operators' commands do not push the policy's of the last hour out of the bounded map.
    policy = {f"p{i}": policy_command(T0 - timedelta(minutes=30 + i)) for i in range(3)}
    ops = {f"o{i}": {**policy_command(T0 - timedelta(minutes=i)), "origin": "operator"} for i in range(25)}
    kept = agent_actions.bounded({**policy, **ops}, T0)
    assert set(policy) <= set(kept) and len(kept) == agent_actions.KEEP
    assert remediation.policy_commands(agent().model_copy(update={"commands": kept}), T0 - timedelta(hours=1)) == 3


def test_an_escalation_resolves_with_the_episode_it_escalated() -> None:
    history = {f"c{i}": policy_command(T0 - timedelta(minutes=10 * i)) for i in range(3)}
    record = with_episode(agent().model_copy(update={"commands": history}), "saturation", memory_high_since="x")
    out = remediation.decide(record, RemediationPolicy(), T0, remediation.ON_HEARTBEAT)
    looped = after(record, out.plan)
    assert looped.episodes["saturation"]["remediation"] == "escalated" and remediation.ESCALATED in looped.episodes
    # Memory back to normal: the heartbeat's plan resolves the saturation episode (the agent stays active).
    index = {k: v for k, v in looped.episodes.items() if k != "saturation"}
    plan = remediation.undo(looped, Plan(changes={"episodes": index}), T0 + timedelta(minutes=5))
    assert remediation.ESCALATED not in plan.changes["episodes"]
    assert any(w.notice is not None and w.notice["event"] == "resolve" for w in plan.episodes)
    # While it is open, nothing happens to the escalation.
    same = remediation.undo(looped, Plan(changes={"episodes": dict(looped.episodes)}), T0 + timedelta(minutes=5))
    assert remediation.ESCALATED in same.changes["episodes"] and not same.episodes


def test_a_dead_frozen_agent_is_paged_once_and_its_restart_is_done_when_it_comes_back() -> None:
    record, step = frozen()
    at = FROZEN_AT
    rec = after(record, remediation.after(record, step, RemediationPolicy(), at, remediation.ON_SWEEP, []))
    rec = after(rec, agent_actions.overdue(rec, at + timedelta(seconds=61), AlertingConfig()))
    rec = after(rec, agent_actions.overdue(rec, at + timedelta(seconds=122), AlertingConfig()))
    (cid,) = rec.commands
    assert rec.commands[cid]["state"] == "unacknowledged"
    assert agent_actions.UNACKNOWLEDGED_RULE not in rec.episodes  # the liveness episode pages already
    back = apply_registration(rec, reg(supports=V2), event_id="ev-2", received_at=at + timedelta(seconds=200))
    rec = after(rec, back)
    assert rec.status is State.ACTIVE and rec.commands[cid]["state"] == "done"
    assert rec.commands[cid]["detail"] == "agent re-registered"


def test_a_registration_marks_an_earlier_restart_done_and_resolves_its_escalation() -> None:
    rec = agent()
    rec = after(rec, agent_actions.issue(rec, CommandType.RESTART, at=T0, actor="a", reason="r", key="k"))
    rec = after(rec, agent_actions.overdue(rec, T0 + timedelta(seconds=301), AlertingConfig()))
    rec = after(rec, agent_actions.overdue(rec, T0 + timedelta(seconds=602), AlertingConfig()))
    assert agent_actions.UNACKNOWLEDGED_RULE in rec.episodes  # an agent not silent: escalated
    back = apply_registration(rec, reg(supports=V2), event_id="ev-2", received_at=T0 + timedelta(seconds=700))
    rec = after(rec, back)
    (entry,) = rec.commands.values()
    assert entry["state"] == "done" and agent_actions.UNACKNOWLEDGED_RULE not in rec.episodes
    assert ("agent.command.restart", "done") in [(a.action, a.outcome) for a in back.audit]


def test_a_key_rotation_is_no_restart_unless_the_agent_acknowledged_it() -> None:
    record, step = frozen()
    at = FROZEN_AT + timedelta(minutes=2)
    restarted = after(record, remediation.after(record, step, RemediationPolicy(), at, remediation.ON_SWEEP, []))
    (cid,) = restarted.commands
    rotate = reg(supports=V2, identity={"public_key": "k" * 43})  # no enrollment token: the running process
    rotated = apply_registration(restarted, rotate, event_id="ev-r", received_at=at + timedelta(seconds=5))
    assert "status" not in rotated.changes  # still frozen
    assert after(restarted, rotated).commands[cid]["state"] == "sent"  # the restart is still pending
    # The agent acknowledged the restart (it is exiting): the registration after it is its result.
    acked = restarted.model_copy(update={"commands": {cid: {**restarted.commands[cid], "state": "acknowledged"}}})
    back = apply_registration(acked, rotate, event_id="ev-r2", received_at=at + timedelta(seconds=5))
    assert back.changes["status"] is State.ACTIVE and back.changes["commands"][cid]["state"] == "done"


def test_the_policy_does_not_undo_a_later_operator_or_bulk_drain() -> None:
    record = with_episode(agent(), "failure_risk")
    drained = after(record, remediation.decide(record, RemediationPolicy(), T0, remediation.ON_HEARTBEAT).plan)
    later = T0 + timedelta(hours=1)

    def resolves(current: AgentRecord) -> Plan:
        return Plan(changes={"episodes": {k: v for k, v in current.episodes.items() if k != "failure_risk"}})

    for origin in ("operator", "bulk"):  # drained for maintenance after the policy's drain
        person = agent_actions.issue(drained, CommandType.DRAIN, at=T0 + timedelta(minutes=5), actor="ann",
                                     reason="maintenance", key=f"{origin}.1", origin=origin)  # fmt: skip
        held = after(drained, person)
        plan = remediation.after(held, resolves(held), RemediationPolicy(), later, remediation.ON_HEARTBEAT, [])
        assert not plan.commands, origin
        # Once that drain was resumed, the policy's undo applies again.
        resumed = agent_actions.issue(held, CommandType.RESUME_WORK, at=T0 + timedelta(minutes=6), actor="ann",
                                      reason="done", key=f"{origin}.2", origin=origin)  # fmt: skip
        back = after(held, resumed)
        plan = remediation.after(back, resolves(back), RemediationPolicy(), later, remediation.ON_HEARTBEAT, [])
        assert [c.command for c in plan.commands] == [CommandType.RESUME_WORK], origin
