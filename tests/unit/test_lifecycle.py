from __future__ import annotations

import pytest
from fleet_agent.contracts import ReportedStatus

from shared.domain.lifecycle import REPORTED, STICKY, TRANSITIONS, Cause, Outcome, State, decide


def test_every_state_has_a_transition_row() -> None:
    assert set(TRANSITIONS) == set(State)
    for targets in TRANSITIONS.values():
        assert targets <= set(State)


def test_every_reported_status_maps_to_a_state() -> None:
    assert set(REPORTED) == set(ReportedStatus)


@pytest.mark.parametrize("sticky", sorted(STICKY))
@pytest.mark.parametrize("cause", [Cause.HEARTBEAT, Cause.REGISTRATION])
def test_agent_events_never_lift_a_sticky_state(sticky: State, cause: Cause) -> None:
    decision = decide(sticky, State.ACTIVE, cause)
    assert decision.outcome is Outcome.HELD
    assert decision.state is sticky


def test_operator_releases_maintenance() -> None:
    decision = decide(State.MAINTENANCE, State.ACTIVE, Cause.OPERATOR)
    assert decision.outcome is Outcome.APPLIED
    assert decision.state is State.ACTIVE


def test_illegal_transition_is_refused() -> None:
    decision = decide(State.DECOMMISSIONING, State.ACTIVE, Cause.OPERATOR)
    assert decision.outcome is Outcome.ILLEGAL
    assert decision.state is State.DECOMMISSIONING
    assert "not an allowed transition" in decision.reason


def test_decommissioned_is_terminal() -> None:
    assert TRANSITIONS[State.DECOMMISSIONED] == frozenset()
    for target in State:
        if target is not State.DECOMMISSIONED:
            assert decide(State.DECOMMISSIONED, target, Cause.OPERATOR).outcome is Outcome.ILLEGAL


def test_same_state_is_unchanged() -> None:
    assert decide(State.BUSY, State.BUSY, Cause.HEARTBEAT).outcome is Outcome.UNCHANGED


def test_offline_agent_recovers_on_heartbeat() -> None:
    assert decide(State.OFFLINE, State.IDLE, Cause.HEARTBEAT).outcome is Outcome.APPLIED
