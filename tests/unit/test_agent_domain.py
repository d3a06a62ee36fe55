from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from fleet_agent.contracts import Heartbeat, Registration, ReportedStatus

from shared.domain.agent_record import AgentRecord
from shared.domain.agents import apply_heartbeat, apply_registration, apply_transition
from shared.domain.lifecycle import Cause, Outcome, State
from shared.domain.rejections import Code, Rejected

T0 = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)


def reg(**kw: object) -> Registration:
    data: dict[str, object] = dict(
        agent_id="agent-1",
        tenant="acme",
        name="A",
        agent_type="llm",
        version="1.0",
        owner="ann",
        heartbeat_interval_s=30,
    )
    data.update(kw)
    return Registration.model_validate(data)


def hb(seq: int, status: ReportedStatus = ReportedStatus.BUSY, **metrics: float) -> Heartbeat:
    return Heartbeat(agent_id="agent-1", seq=seq, sent_at=T0, status=status, metrics=metrics or {"cpu_pct": 5})


def registered(**kw: object) -> AgentRecord:
    plan = apply_registration(None, reg(**kw), event_id="ev-00000001", received_at=T0)
    assert plan.create is not None
    return plan.create


def merged(record: AgentRecord, changes: dict[str, object], sample: tuple[str, dict] | None = None) -> AgentRecord:
    """The record after a plan, as the store writes it."""
    data = {**record.to_doc(), **changes}
    if sample is not None:
        data["recent"] = {**record.recent, sample[0]: sample[1]}
    return AgentRecord.model_validate(data)


def beat(record: AgentRecord, seq: int, at: datetime, **kw: object) -> tuple[AgentRecord, object]:
    plan = apply_heartbeat(
        record,
        hb(seq, **kw),
        received_at=at,
        event_id=f"hb-{seq:08d}",
        chunk_size=3,
        slots=2,
        retention=timedelta(days=1),
    )
    return merged(record, plan.changes, plan.sample), plan


def test_new_registration_creates_agent_version_and_audit() -> None:
    plan = apply_registration(None, reg(), event_id="ev-00000001", received_at=T0)
    assert plan.create is not None and plan.create.status is State.REGISTERED
    assert plan.version_doc is not None and plan.version_doc["version"] == "1.0"
    assert [a.action for a in plan.audit] == ["agent.register"]
    assert plan.writes == 3


def test_redelivered_registration_changes_nothing() -> None:
    record = registered()
    plan = apply_registration(record, reg(), event_id="ev-00000001", received_at=T0)
    assert plan.skipped == "duplicate" and plan.writes == 0


def test_new_version_is_recorded_not_overwritten_silently() -> None:
    record = registered()
    plan = apply_registration(record, reg(version="2.0"), event_id="ev-00000002", received_at=T0 + timedelta(1))
    assert plan.version_doc is not None and plan.version_doc["version"] == "2.0"
    assert plan.changes["version"] == "2.0"
    assert plan.changes["versions"] == ["1.0", "2.0"]
    assert plan.audit[0].action == "agent.upgrade"
    assert plan.audit[0].details == {"from_version": "1.0", "to_version": "2.0", "status": "registered"}


def test_late_older_registration_keeps_version_history_only() -> None:
    record = merged(
        registered(),
        apply_registration(
            registered(), reg(version="2.0"), event_id="ev-00000002", received_at=T0 + timedelta(2)
        ).changes,
    )
    plan = apply_registration(record, reg(version="1.5"), event_id="ev-00000003", received_at=T0 + timedelta(1))
    assert plan.version_doc is not None and plan.version_doc["version"] == "1.5"
    assert "version" not in plan.changes
    assert plan.audit == []


def test_other_tenant_is_refused() -> None:
    with pytest.raises(Rejected) as info:
        apply_registration(registered(), reg(tenant="globex"), event_id="ev-00000009", received_at=T0)
    assert info.value.code is Code.TENANT_CONFLICT
    assert "acme" in info.value.reason


def test_heartbeat_records_liveness_by_receive_time_and_maps_status() -> None:
    at = T0 + timedelta(seconds=5)
    record, _plan = beat(registered(), 1, at)
    assert record.last_heartbeat_at == at
    assert record.status is State.BUSY
    assert record.late_after == at + timedelta(seconds=90)
    assert record.last_sent_at == T0  # the client's clock is kept, never used for liveness
    assert record.metrics == {"cpu_pct": 5} and record.reported_status == "busy"


def test_stale_or_repeated_seq_changes_nothing() -> None:
    record, _ = beat(registered(), 5, T0)
    for seq in (5, 4):
        plan = apply_heartbeat(
            record, hb(seq), received_at=T0, event_id="x" * 8, chunk_size=3, slots=2, retention=timedelta(1)
        )
        assert plan.skipped == "stale" and plan.writes == 0


def test_history_flushes_every_chunk_and_rings_over_slots() -> None:
    record = registered()
    chunks = []
    for seq in range(1, 10):
        record, plan = beat(record, seq, T0 + timedelta(seconds=seq))
        if plan.history_chunk:  # type: ignore[attr-defined]
            chunks.append(plan.history_chunk)  # type: ignore[attr-defined]
    assert [slot for slot, _ in chunks] == [0, 1, 0]
    assert [c["chunk_no"] for _, c in chunks] == [0, 1, 2]
    assert [s["seq"] for s in chunks[2][1]["samples"]] == [7, 8, 9]
    assert [s["seq"] for s in record.samples] == [7, 8, 9] and record.history_chunks == 3
    record, _ = beat(record, 10, T0 + timedelta(seconds=10))
    assert [s["seq"] for s in record.samples] == [8, 9, 10]  # a ring: the oldest slot is reused


def test_writes_per_heartbeat_average_one_point_one_at_chunk_ten() -> None:
    record, writes = registered(), 0
    for seq in range(1, 101):
        plan = apply_heartbeat(
            record,
            hb(seq),
            received_at=T0,
            event_id=f"h{seq:07d}",
            chunk_size=10,
            slots=5,
            retention=timedelta(1),
        )
        writes += plan.writes
        record = merged(record, plan.changes, plan.sample)
    assert writes == 110


@pytest.mark.parametrize("sticky", [State.MAINTENANCE, State.QUARANTINED, State.SUSPENDED, State.FROZEN])
def test_heartbeat_never_lifts_sticky_state_but_records_liveness(sticky: State) -> None:
    record = registered().model_copy(update={"status": sticky})
    record, plan = beat(record, 1, T0)
    assert record.status is sticky
    assert record.last_seq == 1
    assert plan.transition.outcome is Outcome.HELD  # type: ignore[attr-defined]


def test_recovery_from_offline_is_audited() -> None:
    record = registered().model_copy(update={"status": State.OFFLINE})
    record, plan = beat(record, 1, T0, status=ReportedStatus.IDLE)
    assert record.status is State.IDLE
    assert [a.details["from"] for a in plan.audit] == ["offline"]  # type: ignore[attr-defined]


def test_decommissioned_agent_heartbeat_is_rejected() -> None:
    record = registered().model_copy(update={"status": State.DECOMMISSIONED})
    with pytest.raises(Rejected) as info:
        beat(record, 1, T0)
    assert info.value.code is Code.DECOMMISSIONED


def test_illegal_operator_transition_is_refused_and_audited() -> None:
    record = registered().model_copy(update={"status": State.DECOMMISSIONING})
    plan = apply_transition(
        record, State.ACTIVE, cause=Cause.OPERATOR, actor="ops:ann", reason="try", at=T0, action_id="act-1"
    )
    assert plan.changes == {}
    assert plan.audit[0].outcome == "illegal"


def test_graceful_stop_goes_offline_and_registration_brings_it_back() -> None:
    record, plan = beat(registered(), 1, T0, status=ReportedStatus.STOPPING)
    assert record.status is State.OFFLINE
    assert plan.audit[0].details["to"] == "offline"  # type: ignore[attr-defined]
    again = apply_registration(record, reg(), event_id="ev-00000002", received_at=T0 + timedelta(seconds=5))
    assert again.changes["status"] is State.REGISTERED


def test_registration_sets_a_liveness_deadline() -> None:
    record = registered()
    assert record.late_after == T0 + timedelta(seconds=90)


def test_restart_registration_overtaken_by_its_heartbeat_keeps_the_heartbeat_status() -> None:
    record, _ = beat(registered(), 1, T0 + timedelta(seconds=61), status=ReportedStatus.BUSY)
    plan = apply_registration(record, reg(), event_id="ev-restart1", received_at=T0 + timedelta(seconds=60))
    assert "status" not in plan.changes
    assert merged(record, plan.changes).status is State.BUSY


def test_late_older_registration_moves_registered_at_back() -> None:
    newer = apply_registration(None, reg(version="2.0"), event_id="ev-00000002", received_at=T0 + timedelta(5)).create
    assert newer is not None
    plan = apply_registration(newer, reg(version="1.0"), event_id="ev-00000001", received_at=T0)
    assert plan.changes["registered_at"] == T0
    assert "version" not in plan.changes


def test_heartbeat_sent_before_offline_does_not_lift_it() -> None:
    offline = registered().model_copy(update={"status": State.OFFLINE, "status_since": T0 + timedelta(seconds=100)})
    record, plan = beat(offline, 1, T0 + timedelta(seconds=99), status=ReportedStatus.IDLE)
    assert record.status is State.OFFLINE
    assert plan.transition.outcome is Outcome.HELD  # type: ignore[attr-defined]
    record, _ = beat(record, 2, T0 + timedelta(seconds=101), status=ReportedStatus.IDLE)
    assert record.status is State.IDLE


def test_audit_ids_belong_to_their_agent() -> None:
    one = apply_registration(None, reg(), event_id="same-event", received_at=T0)
    two = apply_registration(None, reg(agent_id="agent-2"), event_id="same-event", received_at=T0)
    assert one.audit[0].id != two.audit[0].id
    assert one.audit[0].id.startswith("agent-1.")


def test_status_change_records_its_cause() -> None:
    record = registered()
    plan = apply_transition(
        record, State.MAINTENANCE, cause=Cause.OPERATOR, actor="ops:ann", reason="upgrade", at=T0, action_id="act-2"
    )
    assert (plan.changes["status_cause"], plan.changes["status_reason"]) == ("operator", "upgrade")


@pytest.mark.parametrize(("before", "after"), [(10, 5), (10, 20), (3, 7)])
def test_changing_the_chunk_size_neither_loses_nor_duplicates_samples(before: int, after: int) -> None:
    record, flushed = registered(), []
    for seq in range(1, 61):
        size = before if seq <= 17 else after
        plan = apply_heartbeat(
            record, hb(seq), received_at=T0, event_id=f"h{seq:07d}", chunk_size=size, slots=100, retention=timedelta(1)
        )
        if plan.history_chunk:
            flushed += [s["seq"] for s in plan.history_chunk[1]["samples"]]
        record = merged(record, plan.changes, plan.sample)
    unflushed = [s["seq"] for s in record.samples if s["seq"] > record.flushed_seq]
    assert flushed + unflushed == list(range(1, 61))
