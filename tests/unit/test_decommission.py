"""Decommissioning (shared/services/decommission.py ``plan``): the episodes only the agent could clear
(a command it did not acknowledge, the policy's escalation, its silence) are resolved with it."""

from __future__ import annotations

from datetime import timedelta

from shared.domain import agent_actions, episodes, remediation
from shared.domain.agent_record import AgentRecord
from shared.services import decommission
from shared.services.agent_controls import Actor
from tests.unit.test_remediation import T0, agent, with_episode


def test_decommission_resolves_the_episodes_the_agent_can_no_longer_clear() -> None:
    record = agent()
    rules = (agent_actions.UNACKNOWLEDGED_RULE, remediation.ESCALATED, episodes.LIVENESS)
    for rule in rules:
        record = with_episode(record, rule)
    record = with_episode(record, "budget")  # not the agent's to clear: stays
    at = T0 + timedelta(minutes=5)
    plan = decommission.plan(record, Actor("api:ops", request_id="r1"), "retired", at)
    assert set(plan.changes["episodes"]) == {"budget"}
    resolved = {w.episode_id: w.fields["state"] for w in plan.episodes}
    assert resolved == {record.episodes[rule]["id"]: "resolved" for rule in rules}
    # Called again on the decommissioned agent: nothing left to resolve, nothing changes.
    done = AgentRecord.model_validate({**record.to_doc(), **plan.changes})
    assert decommission.plan(done, Actor("api:ops", request_id="r2"), "retired", at).skipped == "unchanged"
