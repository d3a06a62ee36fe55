"""The liveness ladder (shared/domain/liveness.py) and its wiring into heartbeats and registrations."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fleet_agent.contracts import Heartbeat, ReportedStatus

from shared.domain import episodes, liveness
from shared.domain.agent_record import AgentRecord, Liveness, Plan
from shared.domain.agents import apply_heartbeat, apply_registration
from shared.domain.alerts import Severity
from shared.domain.episodes import AlertingConfig
from shared.domain.lifecycle import Cause, Outcome, State
from tests.unit.test_agent_domain import reg

T0 = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
CONFIG = AlertingConfig()


def hb(seq: int, status: ReportedStatus = ReportedStatus.BUSY) -> Heartbeat:
    return Heartbeat(agent_id="agent-1", seq=seq, sent_at=T0, status=status, metrics={"cpu_pct": 5})


def registered(**kw: object) -> AgentRecord:
    plan = apply_registration(None, reg(**kw), event_id="ev-00000001", received_at=T0)
    assert plan.create is not None
    return plan.create


def merged(record: AgentRecord, plan: Plan) -> AgentRecord:
    """The record after a plan, as the store writes it."""
    data: dict[str, Any] = {**record.to_doc(), **plan.changes}
    if plan.sample is not None:
        data["recent"] = {**record.recent, plan.sample[0]: plan.sample[1]}
    return AgentRecord.model_validate(data)


def beat(record: AgentRecord, seq: int, at: datetime, status: ReportedStatus = ReportedStatus.BUSY) -> Plan:
    return apply_heartbeat(
        record,
        hb(seq, status),
        received_at=at,
        event_id=f"hb-{seq:08d}",
        chunk_size=3,
        slots=2,
        retention=timedelta(days=1),
    )


def step(record: AgentRecord, now: datetime, maintenance_until: datetime | None = None) -> Plan:
    return liveness.step(record, now, config=CONFIG, maintenance_until=maintenance_until)


def secs(n: float) -> timedelta:
    return timedelta(seconds=n)


def climbed(record: AgentRecord, *nows: datetime) -> AgentRecord:
    for now in nows:
        record = merged(record, step(record, now))
    return record


# --- rungs ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("missed", "rung"),
    [
        (0, Liveness.OK),
        (2, Liveness.OK),
        (3, Liveness.LATE),
        (4, Liveness.LATE),
        (5, Liveness.OFFLINE),
        (9, Liveness.OFFLINE),
        (10, Liveness.FROZEN),
        (500, Liveness.FROZEN),
    ],
)
def test_rung_for_missed_intervals(missed: int, rung: Liveness) -> None:
    assert liveness.rung_for(missed) is rung


def test_next_rung_climbs_and_stops_at_frozen() -> None:
    assert liveness.next_rung(Liveness.OK) is Liveness.LATE
    assert liveness.next_rung(Liveness.LATE) is Liveness.OFFLINE
    assert liveness.next_rung(Liveness.OFFLINE) is Liveness.FROZEN
    assert liveness.next_rung(Liveness.FROZEN) is None


@pytest.mark.parametrize(
    ("seconds", "text"), [(30, "30s"), (119, "119s"), (120, "2m"), (7199, "119m"), (7200, "2h00m"), (9000, "2h30m")]
)
def test_describe_silence_duration(seconds: int, text: str) -> None:
    assert liveness.describe(secs(seconds)) == text


# --- deadlines set by registrations and heartbeats ------------------------------------------------------


def test_registration_sets_sweep_at_three_own_intervals_later() -> None:
    assert registered(heartbeat_interval_s=60).sweep_at == T0 + secs(180)


def test_heartbeat_moves_sweep_at_to_three_intervals_after_it() -> None:
    plan = beat(registered(heartbeat_interval_s=20), 1, T0 + secs(50))
    assert plan.changes["sweep_at"] == T0 + secs(110)
    assert "liveness" not in plan.changes  # already ok


def test_reregistration_with_new_interval_uses_the_new_interval() -> None:
    plan = apply_registration(registered(), reg(heartbeat_interval_s=60), event_id="ev-00000002", received_at=T0)
    assert plan.changes["sweep_at"] == T0 + secs(180)


# --- the sweep step ----------------------------------------------------------------------------------


def test_step_before_sweep_at_is_not_due() -> None:
    plan = step(registered(), T0 + secs(89))
    assert plan.skipped == "not_due" and plan.changes == {} and plan.writes == 0


def test_step_without_sweep_at_is_not_due() -> None:
    record = registered().model_copy(update={"sweep_at": None})
    assert step(record, T0 + timedelta(days=1)).skipped == "not_due"


def test_late_at_three_missed_intervals_opens_a_warning_episode() -> None:
    now = T0 + secs(90)
    plan = step(registered(), now)
    assert plan.changes["liveness"] is Liveness.LATE
    assert plan.changes["sweep_at"] == T0 + secs(150)  # the offline rung next
    [write] = plan.episodes
    assert write.episode_id == "a.agent-1.liveness.1"
    assert write.fields["severity"] == "warning" and write.fields["state"] == "open"
    assert write.fields["details"] == {"missed_intervals": 3, "last_seen": T0.isoformat(), "liveness": "late"}
    assert write.notice is not None
    assert write.notice["id"] == "a.agent-1.liveness.1.open"
    assert write.notice["due_at"] == now  # the sweep's notices wait for no group window
    assert plan.changes["episodes"]["liveness"]["id"] == "a.agent-1.liveness.1"
    assert plan.changes["episode_seq"] == 1


def test_late_changes_no_lifecycle_state_and_writes_no_audit() -> None:
    plan = step(registered(), T0 + secs(90))
    assert "status" not in plan.changes and plan.transition is None and plan.audit == []


def test_late_summary_says_how_long_and_how_many_intervals() -> None:
    [write] = step(registered(), T0 + secs(95)).episodes
    assert write.fields["summary"] == "agent-1 (acme) silent for 95s (3 intervals of 30s): late"


def test_offline_at_five_missed_escalates_to_high_and_goes_offline() -> None:
    record = climbed(registered(), T0 + secs(90))
    now = T0 + secs(150)
    plan = step(record, now)
    assert plan.changes["liveness"] is Liveness.OFFLINE
    assert plan.changes["sweep_at"] == T0 + secs(300)
    [write] = plan.episodes
    assert write.episode_id == "a.agent-1.liveness.1"  # the same episode, escalated
    assert write.fields["severity"] == "high"
    assert write.notice is not None and write.notice["event"] == "escalate-high"
    assert plan.changes["status"] is State.OFFLINE
    assert plan.changes["status_cause"] == Cause.SYSTEM.value
    assert plan.changes["status_reason"] == "no heartbeat for 2m"


def test_offline_transition_is_audited_by_the_sweep() -> None:
    record = climbed(registered(), T0 + secs(90))
    [entry] = step(record, T0 + secs(150)).audit
    assert entry.id == "agent-1.liveness.20261121T120000.offline"
    assert entry.actor == "system:liveness-sweep" and entry.action == "agent.liveness"
    assert entry.outcome == "applied" and entry.tenant == "acme"
    assert entry.details == {"from": "registered", "to": "offline", "missed_intervals": 5}


def test_frozen_at_ten_missed_is_critical_and_stops_the_sweep() -> None:
    record = climbed(registered(), T0 + secs(90), T0 + secs(150))
    plan = step(record, T0 + secs(300))
    assert plan.changes["liveness"] is Liveness.FROZEN
    assert plan.changes["sweep_at"] is None
    assert plan.changes["status"] is State.FROZEN
    [write] = plan.episodes
    assert write.fields["severity"] == "critical"
    assert write.notice is not None and write.notice["id"] == "a.agent-1.liveness.1.escalate-critical"
    [entry] = plan.audit
    assert entry.details["from"] == "offline" and entry.details["to"] == "frozen"


def test_ladder_counts_the_agents_own_interval() -> None:
    record = registered(heartbeat_interval_s=60)
    assert step(record, T0 + secs(179)).skipped == "not_due"
    assert step(record, T0 + secs(180)).changes["liveness"] is Liveness.LATE


def test_ladder_counts_from_the_last_heartbeat() -> None:
    record = merged(registered(), beat(registered(), 1, T0 + secs(40)))
    plan = step(record, T0 + secs(130))
    assert plan.changes["liveness"] is Liveness.LATE
    assert plan.episodes[0].fields["details"]["last_seen"] == (T0 + secs(40)).isoformat()


def test_step_between_rungs_only_reschedules() -> None:
    late = climbed(registered(), T0 + secs(90))
    record = late.model_copy(update={"sweep_at": T0 + secs(100)})
    plan = step(record, T0 + secs(140))  # 4 missed: still late
    assert plan.changes == {"sweep_at": T0 + secs(150)}
    assert plan.episodes == [] and plan.audit == []


def test_late_sweep_jumps_straight_to_frozen() -> None:
    now = T0 + secs(305)
    plan = step(registered(), now)
    assert plan.changes["liveness"] is Liveness.FROZEN
    assert plan.changes["status"] is State.FROZEN
    assert plan.changes["sweep_at"] is None
    [write] = plan.episodes  # one episode, opened at critical: no late or offline notices first
    assert write.notice is not None and write.notice["event"] == "open"
    assert write.fields["severity"] == "critical"
    [entry] = plan.audit
    assert entry.id.endswith(".frozen") and entry.details["missed_intervals"] == 10


def test_late_sweep_jumps_straight_to_offline() -> None:
    plan = step(registered(), T0 + secs(200))
    assert plan.changes["liveness"] is Liveness.OFFLINE
    assert plan.changes["status"] is State.OFFLINE
    assert plan.changes["sweep_at"] == T0 + secs(300)
    [write] = plan.episodes
    assert write.notice is not None and write.notice["event"] == "open" and write.fields["severity"] == "high"


@pytest.mark.parametrize("at", [90, 150, 300, 305])
def test_second_step_on_the_result_does_nothing(at: int) -> None:
    record = climbed(registered(), *[T0 + secs(s) for s in (90, 150, 300) if s < at])
    result = merged(record, step(record, T0 + secs(at)))
    again = step(result, T0 + secs(at))
    assert again.skipped == "not_due" and again.writes == 0


def test_two_sweeps_on_the_same_record_decide_the_same_ids() -> None:
    record = climbed(registered(), T0 + secs(90))
    first, second = step(record, T0 + secs(150)), step(record, T0 + secs(150))
    assert [w.notice["id"] for w in first.episodes if w.notice] == [w.notice["id"] for w in second.episodes if w.notice]
    assert [a.id for a in first.audit] == [a.id for a in second.audit]


def test_frozen_agent_is_not_swept_again() -> None:
    record = climbed(registered(), T0 + secs(305))
    assert record.sweep_at is None
    assert step(record, T0 + timedelta(days=3)).skipped == "not_due"


def test_system_offline_agent_is_still_watched_to_frozen() -> None:
    record = climbed(registered(), T0 + secs(150))
    assert record.status is State.OFFLINE and record.status_cause == Cause.SYSTEM.value
    assert step(record, T0 + secs(300)).changes["liveness"] is Liveness.FROZEN


def test_a_sticky_state_stays_and_the_ladder_is_recorded_in_liveness_only() -> None:
    record = registered().model_copy(update={"status": State.QUARANTINED, "status_cause": "system"})
    plan = step(record, T0 + secs(150))
    assert plan.changes["liveness"] is Liveness.OFFLINE
    assert "status" not in plan.changes and plan.transition is None and plan.audit == []
    assert plan.episodes  # the silence is still an alert


# --- not watched -----------------------------------------------------------------------------------


def test_stopped_agent_is_not_watched() -> None:
    record = merged(registered(), beat(registered(), 1, T0 + secs(10), ReportedStatus.STOPPING))
    assert record.status is State.OFFLINE and record.status_cause == Cause.HEARTBEAT.value
    plan = step(record, T0 + timedelta(hours=1))
    assert plan.changes == {"sweep_at": None}
    assert plan.episodes == [] and plan.audit == []


@pytest.mark.parametrize("status", [State.DECOMMISSIONING, State.DECOMMISSIONED])
def test_decommissioned_agent_is_not_watched(status: State) -> None:
    record = registered().model_copy(update={"status": status})
    assert step(record, T0 + timedelta(hours=1)).changes == {"sweep_at": None}


def test_registration_after_a_stop_watches_the_agent_again() -> None:
    stopped = merged(registered(), beat(registered(), 1, T0 + secs(10), ReportedStatus.STOPPING))
    stopped = merged(stopped, step(stopped, T0 + secs(100)))
    assert stopped.sweep_at is None
    at = T0 + secs(600)
    plan = apply_registration(stopped, reg(), event_id="ev-00000002", received_at=at)
    assert plan.changes["sweep_at"] == at + secs(90)
    assert plan.changes["status"] is State.REGISTERED


def test_restart_registration_counts_as_a_sign_of_life() -> None:
    stopped = merged(registered(), beat(registered(), 1, T0 + secs(10), ReportedStatus.STOPPING))
    at = T0 + timedelta(days=1)
    record = merged(stopped, apply_registration(stopped, reg(), event_id="ev-00000002", received_at=at))
    plan = step(record, at + secs(90))
    assert plan.changes["liveness"] is Liveness.LATE


# --- maintenance windows ---------------------------------------------------------------------------


def test_maintenance_postpones_the_ladder_to_the_end_of_the_window() -> None:
    until = T0 + timedelta(hours=2)
    plan = step(registered(), T0 + secs(400), maintenance_until=until)
    assert plan.changes == {"liveness_from": until, "sweep_at": until + secs(90)}
    assert plan.episodes == [] and plan.audit == []


def test_after_maintenance_silence_counts_from_the_window_end() -> None:
    until = T0 + timedelta(hours=2)
    record = merged(registered(), step(registered(), T0 + secs(400), maintenance_until=until))
    assert step(record, until + secs(89)).skipped == "not_due"
    plan = step(record, until + secs(90))
    assert plan.changes["liveness"] is Liveness.LATE
    assert plan.episodes[0].fields["details"]["last_seen"] == until.isoformat()


def test_an_ended_maintenance_window_postpones_nothing() -> None:
    plan = step(registered(), T0 + secs(90), maintenance_until=T0 + secs(90))
    assert plan.changes["liveness"] is Liveness.LATE


def test_heartbeat_after_maintenance_clears_liveness_from() -> None:
    until = T0 + timedelta(hours=2)
    record = merged(registered(), step(registered(), T0 + secs(400), maintenance_until=until))
    plan = beat(record, 1, until + secs(5))
    assert plan.changes["liveness_from"] is None
    assert plan.changes["sweep_at"] == until + secs(95)


# --- after_heartbeat and recovery -----------------------------------------------------------------


def test_after_heartbeat_when_ok_sets_only_the_next_deadline() -> None:
    assert liveness.after_heartbeat(registered(), T0 + secs(7)) == {"sweep_at": T0 + secs(97)}


def test_after_heartbeat_resets_a_late_agent_to_ok() -> None:
    record = climbed(registered(), T0 + secs(90))
    changes = liveness.after_heartbeat(record, T0 + secs(100))
    assert changes == {"sweep_at": T0 + secs(190), "liveness": Liveness.OK}


def test_after_heartbeat_keeps_a_frozen_agent_frozen_and_unwatched() -> None:
    record = climbed(registered(), T0 + secs(305))
    assert liveness.after_heartbeat(record, T0 + secs(400)) == {"sweep_at": None}


def test_heartbeat_after_late_resolves_the_episode_with_a_recovery_notice() -> None:
    record = climbed(registered(), T0 + secs(90))
    at = T0 + secs(130)
    plan = beat(record, 1, at)
    assert plan.changes["liveness"] is Liveness.OK
    assert plan.changes["sweep_at"] == at + secs(90)
    [write] = plan.episodes
    assert write.episode_id == "a.agent-1.liveness.1"
    assert write.fields["state"] == "resolved" and write.fields["resolved_at"] == at
    assert write.notice is not None and write.notice["id"] == "a.agent-1.liveness.1.resolve"
    assert write.notice["summary"] == "agent-1 is back after 2m of silence"
    assert plan.changes["episodes"] == {}


def test_heartbeat_after_offline_resolves_and_brings_the_agent_back() -> None:
    record = climbed(registered(), T0 + secs(90), T0 + secs(150))
    plan = beat(record, 1, T0 + secs(200))
    assert plan.changes["liveness"] is Liveness.OK
    assert plan.changes["status"] is State.BUSY
    assert [w.notice["event"] for w in plan.episodes if w.notice] == ["resolve"]
    assert any(a.action == "agent.transition" and a.outcome == "applied" for a in plan.audit)


def test_after_recovery_a_new_silence_opens_a_new_episode() -> None:
    record = climbed(registered(), T0 + secs(90))
    record = merged(record, beat(record, 1, T0 + secs(100)))
    plan = step(record, T0 + secs(190))
    assert plan.episodes[0].episode_id == "a.agent-1.liveness.2"


def test_frozen_agent_stays_frozen_on_heartbeat() -> None:
    record = climbed(registered(), T0 + secs(305))
    plan = beat(record, 1, T0 + secs(400))
    assert plan.transition is not None and plan.transition.outcome is Outcome.HELD
    assert "status" not in plan.changes and "liveness" not in plan.changes
    assert plan.changes["sweep_at"] is None
    assert plan.episodes == []  # still open: only a release resolves it
    assert merged(record, plan).episodes["liveness"]["severity"] == "critical"


def test_registration_after_late_resolves_the_liveness_episode() -> None:
    record = climbed(registered(), T0 + secs(90))
    at = T0 + secs(120)
    plan = apply_registration(record, reg(), event_id="ev-00000002", received_at=at)
    assert plan.changes["liveness"] is Liveness.OK
    assert plan.changes["sweep_at"] == at + secs(90)
    assert [w.notice["event"] for w in plan.episodes if w.notice] == ["resolve"]
    assert plan.changes["episodes"] == {}


def test_registration_of_a_frozen_agent_keeps_it_frozen() -> None:
    record = climbed(registered(), T0 + secs(305))
    plan = apply_registration(record, reg(), event_id="ev-00000002", received_at=T0 + secs(400))
    assert plan.changes["sweep_at"] is None
    assert "liveness" not in plan.changes and plan.episodes == []


def test_liveness_severities_by_rung() -> None:
    assert liveness.SEVERITY == {
        Liveness.LATE: Severity.WARNING,
        Liveness.OFFLINE: Severity.HIGH,
        Liveness.FROZEN: Severity.CRITICAL,
    }
    assert episodes.LIVENESS == "liveness"
