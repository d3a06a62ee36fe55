"""An operator's edit of an agent (shared/services/agent_controls.edit_plan) and what a later
registration does with it: the API's owner, labels and heartbeat interval win over the agent's."""

from __future__ import annotations

from datetime import timedelta

import pytest

from shared.domain.agents import apply_registration
from shared.domain.lifecycle import State
from shared.services.agent_controls import Actor, Refused, edit_plan
from tests.unit.test_agent_domain import T0, reg, registered

ACTOR = Actor("api:oncall", "req1")


def test_a_later_registration_keeps_what_the_api_set_and_takes_the_rest() -> None:
    record = registered(labels={"team": "a"})
    plan = edit_plan(record, ACTOR, {"owner": "ml-platform", "heartbeat_interval_s": 120}, T0, "agent.update")
    edited = record.model_copy(update=plan.changes)
    assert edited.api_fields == ["heartbeat_interval_s", "owner"]
    later = reg(owner="bob", heartbeat_interval_s=10, labels={"team": "b"}, version="1.1")
    again = apply_registration(edited, later, event_id="ev-00000002", received_at=T0 + timedelta(minutes=1))
    after = edited.model_copy(update=again.changes)
    assert after.owner == "ml-platform" and after.heartbeat_interval_s == 120
    assert after.labels == {"team": "b"} and after.version == "1.1"
    # The liveness deadline follows the interval the API set, not the registration's 10 s.
    assert after.late_after is not None and after.late_after - (T0 + timedelta(minutes=1)) > timedelta(seconds=120)


def test_labels_merge_and_null_removes_one() -> None:
    record = registered(labels={"team": "a", "env": "dev"})
    plan = edit_plan(record, ACTOR, {"labels": {"env": None, "tier": "gold"}}, T0, "agent.update")
    assert plan.changes["labels"] == {"team": "a", "tier": "gold"}
    assert plan.audit[0].details["previous"] == {"labels": {"team": "a", "env": "dev"}}


def test_an_edit_that_changes_nothing_writes_nothing_and_a_decommissioned_agent_refuses() -> None:
    record = registered(owner="ann")
    first = edit_plan(record, ACTOR, {"owner": "ann"}, T0, "agent.update")
    assert first.changes == {"api_fields": ["owner"]}  # the value is the same, but it is now the API's
    pinned = record.model_copy(update=first.changes)
    assert edit_plan(pinned, ACTOR, {"owner": "ann"}, T0, "agent.update").skipped == "unchanged"
    with pytest.raises(Refused) as refused:
        edit_plan(record.model_copy(update={"status": State.DECOMMISSIONED}), ACTOR, {"owner": "x"}, T0, "u")
    assert refused.value.status == 409


def test_the_interval_is_a_tolerance_never_below_the_agents_own_beat() -> None:
    record = registered(heartbeat_interval_s=30)
    assert record.registered_interval_s == 30
    with pytest.raises(Refused) as refused:
        edit_plan(record, ACTOR, {"heartbeat_interval_s": 1}, T0, "agent.update")
    assert refused.value.status == 409 and "30 s" in refused.value.reason
    plan = edit_plan(record, ACTOR, {"heartbeat_interval_s": 60}, T0, "agent.update")
    edited = record.model_copy(update=plan.changes)
    # The agent later registers a slower beat than the API's tolerance: the tolerance follows the agent.
    later = reg(heartbeat_interval_s=90, version="1.1")
    again = apply_registration(edited, later, event_id="ev-00000003", received_at=T0 + timedelta(minutes=1))
    after = edited.model_copy(update=again.changes)
    assert after.heartbeat_interval_s == 90 and after.registered_interval_s == 90
    assert after.late_after is not None and after.late_after - (T0 + timedelta(minutes=1)) > timedelta(seconds=90)
    with pytest.raises(Refused):
        edit_plan(after, ACTOR, {"heartbeat_interval_s": 60}, T0, "agent.update")
