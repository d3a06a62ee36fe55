"""The pure training-job rules: states and transitions, the admission queue (priority, aging,
quotas, budgets, backfill and reservation), backend choice and what a run's status means. (The prices
are tests/unit/test_job_costs.py.)"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from pydantic import ValidationError

from shared.domain import job_costs, job_policy, job_queue, job_runs
from shared.domain import jobs as domain
from shared.domain.job_costs import Estimate
from shared.domain.job_policy import NoBackend
from shared.domain.job_queue import Decision
from shared.domain.jobs import (
    MAX_HISTORY,
    NEXT,
    Event,
    Job,
    JobRequest,
    JobResources,
    JobsConfig,
    JobState,
    Quota,
    Refused,
)
from shared.domain.pricing import to_nanos
from shared.domain.run_phase import Backend, Phase, Preemption, RunStatus
from tests.unit.test_job_costs import PRICES

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
CFG = JobsConfig()
MIN = timedelta(minutes=1)
HOUR = timedelta(hours=1)
USD = 1_000_000_000  # nano-dollars


def res(cpu: float = 1, memory_gb: float = 1, gpu: int = 0, storage_gb: float = 0, **kw: Any) -> JobResources:
    return JobResources(cpu=cpu, memory_gb=memory_gb, gpu=gpu, storage_gb=storage_gb, **kw)


def make_job(
    job_id: str = "j-1",
    *,
    requester: str = "alice",
    agent_id: str = "agent-a",
    priority: int = 5,
    created_at: datetime = T0,
    state: JobState = JobState.QUEUED,
    resources: JobResources | None = None,
    hourly: str = "1",
    hours: str = "1",
    backend: Backend = Backend.GKE,
    max_cost_usd: Decimal | None = None,
    **fields: Any,
) -> Job:
    """A stored job; its estimate is ``hourly`` x ``hours`` USD (so budgets are easy to reason about)."""
    return Job(
        id=job_id,
        tenant="acme",
        agent_id=agent_id,
        requester=requester,
        requested_via="api:ci",
        name=f"train {job_id}",
        resources=resources if resources is not None else res(),
        priority=priority,
        max_runtime_s=int(Decimal(hours) * 3600),
        max_cost_usd=max_cost_usd,
        backend=backend,
        estimate=Estimate(backend.value, "test-machine", False, Decimal(hourly), Decimal(hours)).to_doc(),
        state=state,
        created_at=created_at,
        updated_at=created_at,
        **fields,
    )


def holding(job_id: str, **kw: Any) -> Job:
    return make_job(job_id, state=JobState.RUNNING, admitted_at=T0, started_at=T0, **kw)


def no_budget(_scope: str) -> int | None:
    return None


def budgets(**left_usd: str | None) -> Callable[[str], int | None]:
    """``budget_left`` from USD strings per scope (``tenant=``, ``agent_a=`` for ``agent:agent-a``)."""
    table = {
        ("tenant" if k == "tenant" else "agent:" + k.replace("_", "-")): (None if v is None else to_nanos(Decimal(v)))
        for k, v in left_usd.items()
    }
    return lambda scope: table.get(scope)


def by_id(decisions: list[Decision]) -> dict[str, Decision]:
    return {d.job_id: d for d in decisions}


def admitted(decisions: list[Decision]) -> list[str]:
    return [d.job_id for d in decisions if d.admit]


#: No limit for users; the tenant may hold one vCPU at once (jobs of 1 vCPU: exactly one admitted).
ONE_AT_A_TIME = JobsConfig(user_quota=Quota(), tenant_quota=Quota(cpu=1))
NO_QUOTAS = JobsConfig(user_quota=Quota(), tenant_quota=Quota())


# --------------------------------------------------------------------------------------------------
# Settings and requests: validation
# --------------------------------------------------------------------------------------------------


def test_jobs_config_defaults_are_the_documented_ones() -> None:
    cfg = JobsConfig()
    assert cfg.user_quota == Quota(cpu=10, memory_gb=20, gpu=2, storage_gb=100)
    assert cfg.tenant_quota == Quota(cpu=64, memory_gb=256, gpu=8, storage_gb=2000)
    assert cfg.approval_threshold_usd == Decimal(50)
    assert cfg.backends == [Backend.CLOUDRUN, Backend.GKE]
    assert cfg.default_backend is None
    assert cfg.price_factor == Decimal(1)
    assert (cfg.start_timeout_s, cfg.release_after_s) == (900, 3600)
    assert (cfg.aging_s, cfg.reserve_after_s) == (1800, 3600)
    assert (cfg.default_runtime_s, cfg.max_runtime_s, cfg.max_retries) == (3600, 3 * 86400, 1)


@pytest.mark.parametrize("release_after_s", [600, 599, 120])
def test_jobs_config_rejects_a_release_not_after_the_start_timeout(release_after_s: int) -> None:
    with pytest.raises(ValidationError, match="release_after_s must be longer than start_timeout_s"):
        JobsConfig(start_timeout_s=600, release_after_s=release_after_s)


def test_jobs_config_accepts_a_release_one_second_after_the_start_timeout() -> None:
    assert JobsConfig(start_timeout_s=600, release_after_s=601).release_after_s == 601


def test_jobs_config_rejects_a_default_runtime_above_the_maximum() -> None:
    with pytest.raises(ValidationError, match="default_runtime_s must not exceed max_runtime_s"):
        JobsConfig(default_runtime_s=7200, max_runtime_s=3600)
    assert JobsConfig(default_runtime_s=3600, max_runtime_s=3600).max_runtime_s == 3600


@pytest.mark.parametrize(
    "field",
    [
        {"backends": []},
        {"price_factor": Decimal(0)},
        {"price_factor": Decimal(11)},
        {"aging_s": 59},
        {"unknown": 1},
        {"user_quota": {"gpu": -1}},
    ],
)
def test_jobs_config_rejects_out_of_range_settings(field: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        JobsConfig(**field)


def test_job_resources_defaults_and_demand() -> None:
    r = JobResources()
    assert (r.cpu, r.memory_gb, r.gpu, r.gpu_type, r.spot, r.storage_gb) == (2, 4, 0, None, False, 10)
    assert res(cpu=3, memory_gb=5, gpu=1, storage_gb=7).demand() == {
        "cpu": 3,
        "memory_gb": 5,
        "gpu": 1,
        "storage_gb": 7,
    }


def test_job_resources_reject_an_unknown_gpu_type_and_name_the_known_ones() -> None:
    with pytest.raises(ValidationError) as info:
        JobResources(gpu=1, gpu_type="nvidia-v100")
    assert "gpu_type must be one of nvidia-l4, nvidia-tesla-t4, nvidia-tesla-a100, nvidia-h100-80gb" in str(info.value)


def test_job_resources_reject_a_gpu_type_without_gpus() -> None:
    with pytest.raises(ValidationError, match="gpu_type needs gpu >= 1"):
        JobResources(gpu=0, gpu_type="nvidia-l4")


@pytest.mark.parametrize("gpu_type", job_costs.GPU_TYPES)
def test_job_resources_accept_every_offered_gpu_type(gpu_type: str) -> None:
    assert JobResources(gpu=1, gpu_type=gpu_type).gpu_type == gpu_type


@pytest.mark.parametrize("bad", [{"cpu": 0}, {"gpu": 17}, {"memory_gb": 0}, {"storage_gb": -1}, {"disk": 1}])
def test_job_resources_reject_out_of_range_values(bad: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        JobResources(**bad)


def test_job_request_defaults() -> None:
    req = JobRequest(agent_id="agent-a", requester=" alice ", name=" nightly ")
    assert (req.requester, req.name) == ("alice", "nightly")
    assert req.priority == 5
    assert req.resources == JobResources()
    assert (req.backend, req.request_id, req.max_runtime_s, req.max_cost_usd) == (None, None, None, None)


@pytest.mark.parametrize(
    "bad",
    [
        {"priority": 0},
        {"priority": 11},
        {"agent_id": "A"},
        {"request_id": "short"},
        {"request_id": "has space in it"},
        {"max_cost_usd": Decimal(0)},
        {"max_runtime_s": 59},
        {"unexpected": True},
    ],
)
def test_job_request_rejects_invalid_fields(bad: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        JobRequest(**{"agent_id": "agent-a", "requester": "alice", "name": "n", **bad})


def test_job_id_is_deterministic_with_a_request_id() -> None:
    a = domain.job_id("acme", "alice", "req-00000001")
    assert a == domain.job_id("acme", "alice", "req-00000001")
    assert re.fullmatch(r"j-[0-9a-f]{20}", a)
    assert a != domain.job_id("acme", "alice", "req-00000002")
    assert a != domain.job_id("acme", "bob", "req-00000001")
    assert a != domain.job_id("other", "alice", "req-00000001")


def test_job_id_is_random_without_a_request_id() -> None:
    ids = {domain.job_id("acme", "alice", None) for _ in range(20)}
    assert len(ids) == 20
    assert all(re.fullmatch(r"j-[0-9a-f]{20}", i) for i in ids)


# --------------------------------------------------------------------------------------------------
# Job: properties and transitions
# --------------------------------------------------------------------------------------------------


def test_job_final_and_active_follow_its_state() -> None:
    for state in JobState:
        job = make_job(state=state)
        assert job.final is (state in {JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})
        assert job.active is (state in {JobState.ADMITTED, JobState.RUNNING})


def test_job_estimate_usd_and_costing_come_from_its_estimate() -> None:
    job = make_job(hourly="2.5", hours="3")
    assert job.estimate_usd == Decimal("7.5000")
    assert job.costing() == Estimate("gke", "test-machine", False, Decimal("2.5"), Decimal("3"))
    assert job.costing().nanos == 7_500_000_000


def test_job_to_doc_keeps_timestamps_as_datetimes_and_the_rest_as_json() -> None:
    job = make_job(state=JobState.ADMITTED, admitted_at=T0 + MIN, stalled_at=T0 + 2 * MIN)
    doc = job.to_doc()
    assert doc["created_at"] == T0 and isinstance(doc["created_at"], datetime)
    assert doc["admitted_at"] == T0 + MIN
    assert doc["stalled_at"] == T0 + 2 * MIN
    assert doc["started_at"] is None
    assert doc["state"] == "admitted"
    assert doc["backend"] == "gke"
    assert doc["cost_usd"] == "0"


def test_final_states_have_no_successors() -> None:
    for state in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED):
        assert state not in NEXT


@pytest.mark.parametrize("to", list(JobState))
@pytest.mark.parametrize("start", list(JobState))
def test_advance_allows_exactly_what_next_allows(start: JobState, to: JobState) -> None:
    job = make_job(state=start)
    at = T0 + 5 * MIN
    if to in NEXT.get(start, frozenset()):
        changed = domain.advance(job, to, at, "why", "alice")
        assert changed.state is to
        assert changed.reason == "why"
        assert changed.updated_at == at
        assert changed.history[-1] == Event(
            at=at, kind="state", reason="why", by="alice", from_state=start, to_state=to
        )
    else:
        with pytest.raises(Refused, match=f"job j-1 is {start.value}; it cannot become {to.value}"):
            domain.advance(job, to, at, "why")


@pytest.mark.parametrize(
    ("start", "to"),
    [
        (JobState.SUCCEEDED, JobState.RUNNING),
        (JobState.QUEUED, JobState.RUNNING),
        (JobState.AWAITING_APPROVAL, JobState.ADMITTED),
        (JobState.CANCELLED, JobState.QUEUED),
        (JobState.RUNNING, JobState.ADMITTED),
    ],
)
def test_advance_refuses_notable_forbidden_changes_and_leaves_the_job_alone(start: JobState, to: JobState) -> None:
    job = make_job(state=start)
    with pytest.raises(Refused):
        domain.advance(job, to, T0, "late event")
    assert job.state is start and job.history == []


def test_advance_to_admitted_stamps_admitted_at_and_clears_the_position() -> None:
    job = make_job(position=3, reason="quota of ...")
    changed = domain.advance(job, JobState.ADMITTED, T0 + MIN, "admitted")
    assert changed.admitted_at == T0 + MIN
    assert changed.position is None
    assert (changed.started_at, changed.finished_at, changed.unsettled) == (None, None, False)
    assert job.position == 3  # the original is untouched (frozen copies)


def test_advance_keeps_an_explicit_timestamp_field() -> None:
    changed = domain.advance(make_job(), JobState.ADMITTED, T0 + MIN, "admitted", admitted_at=T0)
    assert changed.admitted_at == T0


def test_advance_to_running_stamps_started_at_and_clears_the_stall_flag() -> None:
    job = make_job(state=JobState.ADMITTED, admitted_at=T0, stalled_at=T0 + 15 * MIN)
    changed = domain.advance(job, JobState.RUNNING, T0 + 20 * MIN, "running")
    assert changed.started_at == T0 + 20 * MIN
    assert changed.stalled_at is None
    assert changed.admitted_at == T0


@pytest.mark.parametrize("final", [JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED])
def test_advance_to_a_final_state_stamps_finished_at_and_marks_it_unsettled(final: JobState) -> None:
    job = make_job(state=JobState.RUNNING, admitted_at=T0, started_at=T0)
    changed = domain.advance(job, final, T0 + 30 * MIN, "done")
    assert changed.finished_at == T0 + 30 * MIN
    assert changed.unsettled is True
    assert changed.position is None
    assert changed.final and not changed.active


def test_cancelling_a_queued_job_clears_its_position() -> None:
    changed = domain.advance(make_job(position=2), JobState.CANCELLED, T0, "cancelled by alice", "alice")
    assert (changed.position, changed.unsettled, changed.finished_at) == (None, True, T0)
    assert changed.history[-1].by == "alice"


def test_history_grows_by_one_event_per_change() -> None:
    job = make_job(state=JobState.AWAITING_APPROVAL)
    job = domain.advance(job, JobState.QUEUED, T0 + MIN, "approved", "bob")
    job = domain.advance(job, JobState.ADMITTED, T0 + 2 * MIN, "admitted")
    job = domain.note(job, Event(at=T0 + 3 * MIN, kind="launched", reason="gke: fleet-j-1"), launch_attempts=1)
    job = domain.advance(job, JobState.RUNNING, T0 + 4 * MIN, "running")
    assert [(e.kind, e.to_state) for e in job.history] == [
        ("state", JobState.QUEUED),
        ("state", JobState.ADMITTED),
        ("launched", None),
        ("state", JobState.RUNNING),
    ]
    assert job.launch_attempts == 1
    assert job.updated_at == T0 + 4 * MIN


def test_note_adds_an_event_sets_fields_and_updated_at() -> None:
    job = make_job(state=JobState.RUNNING)
    event = Event(at=T0 + 7 * MIN, kind="preemption", reason="spot reclaimed", key="pod-1")
    changed = domain.note(job, event, preemptions=1)
    assert changed.history == [event]
    assert changed.preemptions == 1
    assert changed.updated_at == T0 + 7 * MIN
    assert changed.state is JobState.RUNNING


def _filled_history() -> list[Event]:
    return [Event(at=T0, kind="launch_failed", reason=f"attempt {n}") for n in range(MAX_HISTORY)]


def test_history_is_bounded_by_advance_keeping_the_first_events_and_dropping_the_middle() -> None:
    job = make_job(history=_filled_history())
    changed = domain.advance(job, JobState.ADMITTED, T0 + MIN, "admitted")
    assert len(changed.history) == MAX_HISTORY
    assert changed.history[:20] == job.history[:20]  # submission, approval, admission stay
    assert changed.history[20] == job.history[21]  # the oldest event after them went
    assert changed.history[-1].to_state is JobState.ADMITTED


def test_history_is_bounded_by_note_keeping_the_first_events() -> None:
    job = make_job(history=_filled_history())
    changed = domain.note(job, Event(at=T0, kind="stalled", reason="slow"))
    assert len(changed.history) == MAX_HISTORY
    assert changed.history[0] == job.history[0] and changed.history[20] == job.history[21]
    assert changed.history[-1].kind == "stalled"


def test_runtime_s_is_zero_before_start_then_runs_to_now_then_to_finish() -> None:
    job = make_job(state=JobState.ADMITTED)
    assert domain.runtime_s(job, T0 + 60 * MIN) == 0.0
    running = job.model_copy(update={"state": JobState.RUNNING, "started_at": T0})
    assert domain.runtime_s(running, T0 + 90 * MIN) == 5400.0
    assert domain.runtime_s(running, T0 - MIN) == 0.0  # a clock behind the start: never negative
    done = running.model_copy(update={"finished_at": T0 + 30 * MIN})
    assert domain.runtime_s(done, T0 + 999 * MIN) == 1800.0


def test_cost_so_far_is_the_hourly_price_times_the_runtime() -> None:
    job = make_job(state=JobState.RUNNING, started_at=T0, hourly="2.4")
    assert domain.cost_so_far(job, T0 + 15 * MIN) == Decimal("0.6000")
    assert domain.cost_so_far(job, T0) == Decimal("0.0000")


# --------------------------------------------------------------------------------------------------
# Queue: order and aging
# --------------------------------------------------------------------------------------------------


def test_higher_priority_goes_first_whatever_the_age() -> None:
    old_low = make_job("j-old", priority=3, created_at=T0)
    new_high = make_job("j-new", priority=7, created_at=T0 + MIN)
    now = T0 + 2 * MIN
    decisions = job_queue.plan([old_low, new_high], [], ONE_AT_A_TIME, now, no_budget)
    assert [d.job_id for d in decisions] == ["j-new", "j-old"]
    assert admitted(decisions) == ["j-new"]
    assert by_id(decisions)["j-old"].position == 1


def test_same_priority_goes_oldest_first() -> None:
    jobs = [make_job(f"j-{n}", created_at=T0 + n * MIN) for n in (3, 1, 2)]
    decisions = job_queue.plan(jobs, [], ONE_AT_A_TIME, T0 + 5 * MIN, no_budget)
    assert [d.job_id for d in decisions] == ["j-1", "j-2", "j-3"]
    assert admitted(decisions) == ["j-1"]


def test_equal_priority_and_age_are_ordered_by_id() -> None:
    jobs = [make_job(i) for i in ("j-c", "j-a", "j-b")]
    assert [j.id for j in job_queue.order(jobs, T0, 1800)] == ["j-a", "j-b", "j-c"]


def test_effective_priority_gains_one_level_per_aging_period_up_to_ten() -> None:
    job = make_job(priority=3, created_at=T0)
    assert job_queue.effective_priority(job, T0, 1800) == 3
    assert job_queue.effective_priority(job, T0 + timedelta(seconds=1799), 1800) == 3
    assert job_queue.effective_priority(job, T0 + timedelta(seconds=1800), 1800) == 4
    assert job_queue.effective_priority(job, T0 + timedelta(seconds=2.5 * 1800), 1800) == 5
    assert job_queue.effective_priority(job, T0 + timedelta(days=30), 1800) == 10
    assert job_queue.effective_priority(job, T0 - timedelta(hours=1), 1800) == 3  # created "in the future"


def test_a_long_waiting_low_priority_job_overtakes_a_fresh_high_priority_one() -> None:
    cfg = ONE_AT_A_TIME.model_copy(update={"aging_s": 600})
    old = make_job("j-old", priority=2, created_at=T0)
    now = T0 + timedelta(seconds=5 * 600)  # 2 + 5 = 7
    fresh = make_job("j-fresh", priority=6, created_at=now)
    assert admitted(job_queue.plan([fresh, old], [], cfg, now, no_budget)) == ["j-old"]
    fresh8 = make_job("j-fresh", priority=8, created_at=now)
    assert admitted(job_queue.plan([fresh8, old], [], cfg, now, no_budget)) == ["j-fresh"]


@pytest.mark.parametrize(("stream_priority", "periods"), [(9, 8), (10, 9)])
def test_no_stream_of_new_high_priority_jobs_starves_an_old_priority_1_job(stream_priority: int, periods: int) -> None:
    """Each aging period a fresh high-priority job arrives (the previous one has finished): the
    priority-1 job loses until it has waited ``periods`` aging periods, then it is admitted first."""
    old = make_job("j-old", priority=1, created_at=T0)
    winners = []
    for k in range(periods + 1):
        now = T0 + timedelta(seconds=k * ONE_AT_A_TIME.aging_s)
        fresh = make_job(f"j-new-{k}", priority=stream_priority, created_at=now)
        decisions = job_queue.plan([fresh, old], [], ONE_AT_A_TIME, now, no_budget)
        winners.append(admitted(decisions))
    assert winners[:periods] == [[f"j-new-{k}"] for k in range(periods)]
    assert winners[periods] == ["j-old"]


# --------------------------------------------------------------------------------------------------
# Queue: quotas, usage and positions
# --------------------------------------------------------------------------------------------------


def test_user_quota_blocks_only_that_user_and_others_are_admitted_past_it() -> None:
    held = [holding("h-1", requester="alice", resources=res(cpu=8))]
    blocked = make_job("j-alice", requester="alice", resources=res(cpu=4), created_at=T0)
    other = make_job("j-bob", requester="bob", resources=res(cpu=4), created_at=T0 + MIN)
    decisions = by_id(job_queue.plan([blocked, other], held, CFG, T0 + 2 * MIN, no_budget))
    assert decisions["j-bob"] == Decision("j-bob", True)
    assert decisions["j-alice"] == Decision(
        "j-alice", False, 1, "quota of user alice: 8 of 10 vCPU in use, this job asks 4", False
    )


def test_gpu_quota_defaults_to_two_per_user() -> None:
    held = [holding(f"h-{n}", requester="alice", resources=res(gpu=1)) for n in range(2)]
    third = make_job("j-alice", requester="alice", resources=res(gpu=1))
    bobs = make_job("j-bob", requester="bob", resources=res(gpu=2), created_at=T0 + MIN)
    decisions = by_id(job_queue.plan([third, bobs], held, CFG, T0 + 2 * MIN, no_budget))
    assert decisions["j-alice"].reason == "quota of user alice: 2 of 2 GPU in use, this job asks 1"
    assert decisions["j-bob"].admit


@pytest.mark.parametrize(
    ("asked", "reason"),
    [
        (res(memory_gb=12), "quota of user alice: 10 of 20 GB memory in use, this job asks 12"),
        (res(storage_gb=91), "quota of user alice: 10 of 100 GB storage in use, this job asks 91"),
    ],
)
def test_user_quota_names_the_resource_that_is_short(asked: JobResources, reason: str) -> None:
    held = [holding("h-1", resources=res(memory_gb=10, storage_gb=10))]
    (decision,) = job_queue.plan([make_job("j-1", resources=asked)], held, CFG, T0, no_budget)
    assert (decision.admit, decision.reason) == (False, reason)


def test_tenant_quota_blocks_when_every_user_is_within_their_own() -> None:
    held = [holding(f"h-{u}", requester=u, resources=res(gpu=2)) for u in ("u1", "u2", "u3", "u4")]
    job = make_job("j-1", requester="u5", resources=res(gpu=1))
    cpu_job = make_job("j-2", requester="u5", resources=res(gpu=0), created_at=T0 + MIN)
    decisions = by_id(job_queue.plan([job, cpu_job], held, CFG, T0 + 2 * MIN, no_budget))
    assert decisions["j-1"].reason == "quota of the tenant: 8 of 8 GPU in use, this job asks 1"
    assert decisions["j-1"].position == 1
    assert decisions["j-2"].admit  # it needs no GPU: it passes


def test_user_quota_is_checked_before_the_tenant_quota() -> None:
    cfg = JobsConfig(user_quota=Quota(gpu=1), tenant_quota=Quota(gpu=1))
    held = [holding("h-1", requester="alice", resources=res(gpu=1))]
    (decision,) = job_queue.plan([make_job("j-1", resources=res(gpu=1))], held, cfg, T0, no_budget)
    assert decision.reason == "quota of user alice: 1 of 1 GPU in use, this job asks 1"


def test_jobs_admitted_in_a_pass_take_quota_from_the_jobs_behind_them() -> None:
    jobs = [make_job(f"j-{n}", resources=res(cpu=4), created_at=T0 + n * MIN) for n in range(3)]
    decisions = job_queue.plan(jobs, [], CFG, T0 + 5 * MIN, no_budget)
    assert admitted(decisions) == ["j-0", "j-1"]
    assert by_id(decisions)["j-2"].reason == "quota of user alice: 8 of 10 vCPU in use, this job asks 4"


def test_usage_is_recomputed_from_the_holding_jobs_passed_in() -> None:
    held = [holding(f"h-{n}", resources=res(gpu=1)) for n in range(2)]
    job = make_job("j-1", resources=res(gpu=1))
    assert not job_queue.plan([job], held, CFG, T0, no_budget)[0].admit
    assert job_queue.plan([job], held[:1], CFG, T0, no_budget)[0].admit  # one ended: its quota is free
    assert job_queue.plan([job], [], CFG, T0, no_budget)[0].admit


def test_positions_number_only_the_waiting_jobs_in_queue_order() -> None:
    jobs = [
        make_job("j-a", priority=9, resources=res(cpu=6)),
        make_job("j-b", priority=8, resources=res(cpu=6)),
        make_job("j-c", priority=7, resources=res(cpu=4)),
        make_job("j-d", priority=6, resources=res(cpu=6)),
        make_job("j-e", priority=5, resources=res(cpu=1)),
    ]
    decisions = job_queue.plan(jobs, [], CFG, T0, no_budget)
    assert [(d.job_id, d.admit, d.position) for d in decisions] == [
        ("j-a", True, None),
        ("j-b", False, 1),
        ("j-c", True, None),
        ("j-d", False, 2),
        ("j-e", False, 3),
    ]


def test_an_empty_queue_plans_nothing() -> None:
    assert job_queue.plan([], [holding("h-1")], CFG, T0, no_budget) == []


def test_no_quota_at_all_admits_everything() -> None:
    jobs = [make_job(f"j-{n}", resources=res(cpu=200, gpu=16)) for n in range(5)]
    assert len(admitted(job_queue.plan(jobs, [], NO_QUOTAS, T0, no_budget))) == 5


def test_a_job_that_exactly_fills_the_quota_is_admitted_whatever_the_fractions() -> None:
    held = [holding("h-1", resources=res(cpu=0.3)), holding("h-2", resources=res(cpu=7.9))]
    (decision,) = job_queue.plan([make_job("j-1", resources=res(cpu=1.8))], held, CFG, T0, no_budget)
    assert decision.admit, decision.reason


# --------------------------------------------------------------------------------------------------
# Queue: budgets
# --------------------------------------------------------------------------------------------------


def test_agent_budget_less_committed_estimates_blocks_and_names_the_numbers() -> None:
    held = [holding("h-1", hourly="1", hours="3")]  # 3 USD committed for agent-a
    job = make_job("j-1", hourly="1", hours="2")
    (blocked,) = job_queue.plan([job], held, CFG, T0, budgets(agent_a="4.999999999"))
    assert blocked == Decision(
        "j-1",
        False,
        1,
        "budget of agent agent-a: $4.999999999 left, $3 of it committed to admitted jobs, this job may cost $2",
        False,
    )
    (fits,) = job_queue.plan([job], held, CFG, T0, budgets(agent_a="5"))  # exactly enough
    assert fits.admit


def test_tenant_budget_counts_every_agents_committed_estimates() -> None:
    held = [holding("h-1", agent_id="agent-b", hourly="3")]
    job = make_job("j-1", agent_id="agent-a", hourly="2")
    (decision,) = job_queue.plan([job], held, CFG, T0, budgets(agent_a="4", tenant="4"))
    assert decision.reason == "budget of the tenant: $4 left, $3 of it committed to admitted jobs, this job may cost $2"
    # agent-b's job does not count against agent-a's own budget
    (decision,) = job_queue.plan([job], held, CFG, T0, budgets(agent_a="4"))
    assert decision.admit


def test_the_agent_budget_is_checked_before_the_tenant_budget() -> None:
    (decision,) = job_queue.plan([make_job("j-1", hourly="2")], [], CFG, T0, budgets(agent_a="1", tenant="1"))
    assert decision.reason.startswith("budget of agent agent-a: $1 left, $0 of it committed")


def test_no_budget_means_no_limit() -> None:
    (decision,) = job_queue.plan([make_job("j-1", hourly="1000", hours="72")], [], CFG, T0, no_budget)
    assert decision.admit


def test_jobs_admitted_in_a_pass_commit_their_estimates_for_the_jobs_behind() -> None:
    jobs = [make_job(f"j-{n}", hourly="2", created_at=T0 + n * MIN) for n in range(3)]
    decisions = job_queue.plan(jobs, [], CFG, T0 + 5 * MIN, budgets(agent_a="5"))
    assert admitted(decisions) == ["j-0", "j-1"]
    assert by_id(decisions)["j-2"].reason == (
        "budget of agent agent-a: $5 left, $4 of it committed to admitted jobs, this job may cost $2"
    )


def test_a_budget_blocked_job_is_passed_by_a_cheaper_one() -> None:
    dear = make_job("j-dear", hourly="10", created_at=T0)
    cheap = make_job("j-cheap", hourly="1", created_at=T0 + MIN)
    decisions = by_id(job_queue.plan([dear, cheap], [], CFG, T0 + 2 * MIN, budgets(agent_a="5")))
    assert not decisions["j-dear"].admit and decisions["j-dear"].position == 1
    assert decisions["j-cheap"].admit


def test_budget_left_is_asked_only_for_jobs_that_fit_their_quotas() -> None:
    asked: list[str] = []

    def left(scope: str) -> int | None:
        asked.append(scope)
        return None

    held = [holding("h-1", requester="alice", resources=res(gpu=2))]
    over_quota = make_job("j-1", requester="alice", agent_id="agent-blocked", resources=res(gpu=1))
    fits = make_job("j-2", requester="bob", agent_id="agent-ok", resources=res(gpu=1), created_at=T0 + MIN)
    decisions = job_queue.plan([over_quota, fits], held, CFG, T0 + 2 * MIN, left)
    assert admitted(decisions) == ["j-2"]
    assert asked == ["agent:agent-ok", "tenant"]


# --------------------------------------------------------------------------------------------------
# Queue: backfill and reservation
# --------------------------------------------------------------------------------------------------

#: Users unlimited; the tenant may hold 4 GPUs. carol holds 3; alice's big job needs 2, bob's small one 1.
GPU4 = JobsConfig(user_quota=Quota(), tenant_quota=Quota(gpu=4))
KEEP = "; it has waited long enough to keep its place (smaller jobs no longer pass it)"


def _reservation_queue() -> tuple[list[Job], list[Job]]:
    held = [holding("h-carol", requester="carol", resources=res(gpu=3))]
    big = make_job("j-big", requester="alice", resources=res(gpu=2), created_at=T0)
    small = make_job("j-small", requester="bob", resources=res(gpu=1), created_at=T0 + 10 * MIN)
    return [big, small], held


def test_before_reserve_after_s_a_smaller_job_backfills_past_a_blocked_big_one() -> None:
    queued, held = _reservation_queue()
    now = T0 + timedelta(seconds=GPU4.reserve_after_s - 1)
    decisions = job_queue.plan(queued, held, GPU4, now, no_budget)
    assert [d.job_id for d in decisions] == ["j-big", "j-small"]
    assert decisions[0] == Decision(
        "j-big", False, 1, "quota of the tenant: 3 of 4 GPU in use, this job asks 2", reserved=False
    )
    assert decisions[1] == Decision("j-small", True)


def test_after_reserve_after_s_a_blocked_big_job_keeps_its_resources_and_stops_backfill() -> None:
    queued, held = _reservation_queue()
    now = T0 + timedelta(seconds=GPU4.reserve_after_s)
    big, small = job_queue.plan(queued, held, GPU4, now, no_budget)
    assert big == Decision(
        "j-big", False, 1, "quota of the tenant: 3 of 4 GPU in use, this job asks 2" + KEEP, reserved=True
    )
    assert not small.admit
    assert small.position == 2
    assert small.reserved is False  # it has not waited long enough itself
    assert small.reason.startswith("quota of the tenant: ")
    assert small.reason.endswith("this job asks 1")


def test_a_job_that_fits_beside_a_reservation_still_passes_it() -> None:
    queued, held = _reservation_queue()
    cpu_only = make_job("j-cpu", requester="bob", resources=res(cpu=2, gpu=0), created_at=T0 + 20 * MIN)
    now = T0 + timedelta(seconds=GPU4.reserve_after_s)
    decisions = by_id(job_queue.plan([*queued, cpu_only], held, GPU4, now, no_budget))
    assert decisions["j-big"].reserved
    assert not decisions["j-small"].admit
    assert decisions["j-cpu"].admit, decisions["j-cpu"].reason


def test_a_job_asking_none_of_an_overused_resource_is_not_blocked_by_it() -> None:
    cfg = JobsConfig(user_quota=Quota(), tenant_quota=Quota(gpu=2))
    held = [holding("h-1", requester="carol", resources=res(gpu=3))]  # admitted before the quota was lowered
    (decision,) = job_queue.plan([make_job("j-cpu", resources=res(gpu=0))], held, cfg, T0, no_budget)
    assert decision.admit, decision.reason


def test_a_user_quota_reservation_holds_that_users_resources() -> None:
    cfg = JobsConfig(user_quota=Quota(gpu=2), tenant_quota=Quota())
    held = [holding("h-1", requester="alice", resources=res(gpu=1))]
    big = make_job("j-big", requester="alice", resources=res(gpu=2), created_at=T0)
    small = make_job("j-small", requester="alice", resources=res(gpu=1), created_at=T0 + MIN)
    bobs = make_job("j-bob", requester="bob", resources=res(gpu=1), created_at=T0 + 2 * MIN)
    early = by_id(job_queue.plan([big, small, bobs], held, cfg, T0 + 30 * MIN, no_budget))
    assert early["j-small"].admit and early["j-bob"].admit
    late = by_id(job_queue.plan([big, small, bobs], held, cfg, T0 + 60 * MIN, no_budget))
    assert late["j-big"].reserved
    assert not late["j-small"].admit  # alice's reservation keeps her own smaller job back
    assert late["j-bob"].admit  # bob's quota is his own


def test_no_reservation_is_made_for_a_budget_blocked_job() -> None:
    dear = make_job("j-dear", hourly="10", created_at=T0)
    cheap = make_job("j-cheap", hourly="1", created_at=T0 + MIN)
    now = T0 + timedelta(days=1)  # far past reserve_after_s
    decisions = by_id(job_queue.plan([dear, cheap], [], CFG, now, budgets(agent_a="5")))
    assert decisions["j-dear"].reserved is False
    assert KEEP not in decisions["j-dear"].reason
    assert decisions["j-dear"].reason.startswith("budget of agent agent-a")
    assert decisions["j-cheap"].admit


# --------------------------------------------------------------------------------------------------
# Queue: never_fits
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("asked", "reason"),
    [
        (res(cpu=11), "it asks 11 vCPU; the quota of user alice allows 10 in all"),
        (res(memory_gb=21), "it asks 21 GB memory; the quota of user alice allows 20 in all"),
        (res(gpu=3), "it asks 3 GPU; the quota of user alice allows 2 in all"),
        (res(storage_gb=100.5), "it asks 100.5 GB storage; the quota of user alice allows 100 in all"),
    ],
)
def test_never_fits_against_the_user_quota(asked: JobResources, reason: str) -> None:
    assert job_queue.never_fits(asked, "alice", CFG) == reason


@pytest.mark.parametrize(
    ("asked", "reason"),
    [
        (res(cpu=65), "it asks 65 vCPU; the quota of the tenant allows 64 in all"),
        (res(memory_gb=257), "it asks 257 GB memory; the quota of the tenant allows 256 in all"),
        (res(gpu=9), "it asks 9 GPU; the quota of the tenant allows 8 in all"),
        (res(storage_gb=2001), "it asks 2001 GB storage; the quota of the tenant allows 2000 in all"),
    ],
)
def test_never_fits_against_the_tenant_quota(asked: JobResources, reason: str) -> None:
    cfg = JobsConfig(user_quota=Quota())
    assert job_queue.never_fits(asked, "alice", cfg) == reason


def test_never_fits_is_none_when_it_fits_exactly_or_there_is_no_limit() -> None:
    assert job_queue.never_fits(res(cpu=10, memory_gb=20, gpu=2, storage_gb=100), "alice", CFG) is None
    assert job_queue.never_fits(res(cpu=256, memory_gb=4096, gpu=16), "alice", NO_QUOTAS) is None


def test_never_fits_reports_the_user_quota_before_the_tenant_quota() -> None:
    assert job_queue.never_fits(res(gpu=9), "alice", CFG) == "it asks 9 GPU; the quota of user alice allows 2 in all"


# --------------------------------------------------------------------------------------------------
# Backend policy
# --------------------------------------------------------------------------------------------------


def choose(resources: JobResources, asked: Backend | None = None, cfg: JobsConfig = CFG) -> tuple[Backend, str]:
    return job_policy.choose(resources, 3600, asked, cfg, prices=PRICES)


def test_a_cpu_job_goes_to_cloud_run() -> None:
    assert choose(JobResources()) == (Backend.CLOUDRUN, "CPU job: Cloud Run job")


@pytest.mark.parametrize("gpu_type", [None, "nvidia-l4"])
def test_a_single_on_demand_l4_with_enough_cpu_and_memory_goes_to_cloud_run(gpu_type: str | None) -> None:
    r = JobResources(cpu=4, memory_gb=16, gpu=1, gpu_type=gpu_type)
    assert choose(r) == (Backend.CLOUDRUN, "single L4 on demand: Cloud Run job")


@pytest.mark.parametrize(
    ("resources", "why"),
    [
        (JobResources(spot=True), "spot capacity: GKE node pool"),
        (JobResources(cpu=4, memory_gb=16, gpu=1, gpu_type="nvidia-l4", spot=True), "spot capacity: GKE node pool"),
        (JobResources(cpu=4, memory_gb=16, gpu=2, gpu_type="nvidia-l4"), "2 x nvidia-l4: GKE GPU node pool"),
        (JobResources(gpu=1, gpu_type="nvidia-tesla-a100"), "1 x nvidia-tesla-a100: GKE GPU node pool"),
        (JobResources(gpu=1, gpu_type="nvidia-tesla-t4"), "1 x nvidia-tesla-t4: GKE GPU node pool"),
        (JobResources(cpu=2, memory_gb=8, gpu=1), "1 x GPU: GKE GPU node pool"),  # an L4 too small for Cloud Run
        (JobResources(cpu=16, memory_gb=64), "GKE"),
        (JobResources(cpu=4, memory_gb=33), "GKE"),
    ],
)
def test_everything_else_goes_to_gke(resources: JobResources, why: str) -> None:
    assert choose(resources) == (Backend.GKE, why)


@pytest.mark.parametrize(
    ("resources", "reason"),
    [
        (JobResources(spot=True), "Cloud Run has no spot capacity"),
        (JobResources(cpu=4, memory_gb=16, gpu=2), "Cloud Run jobs take one GPU per task"),
        (
            JobResources(cpu=4, memory_gb=16, gpu=1, gpu_type="nvidia-tesla-t4"),
            "Cloud Run jobs offer only the NVIDIA L4",
        ),
        (JobResources(cpu=2, memory_gb=16, gpu=1), "an L4 on Cloud Run needs at least 4 vCPU and 16 GiB"),
        (JobResources(cpu=4, memory_gb=15, gpu=1), "an L4 on Cloud Run needs at least 4 vCPU and 16 GiB"),
        (JobResources(cpu=9), "Cloud Run jobs have at most 8 vCPU and 32 GiB"),
        (JobResources(memory_gb=32.5), "Cloud Run jobs have at most 8 vCPU and 32 GiB"),
    ],
)
def test_why_not_cloud_run(resources: JobResources, reason: str) -> None:
    assert job_policy.why_not(Backend.CLOUDRUN, resources, 3600, prices=PRICES) == reason


def test_why_not_cloud_run_beyond_its_task_runtime() -> None:
    too_long = job_policy.CLOUD_RUN_MAX_RUNTIME_S + 1
    assert (
        job_policy.why_not(Backend.CLOUDRUN, JobResources(), too_long, prices=PRICES)
        == "Cloud Run tasks run at most 168 hours"
    )
    assert job_policy.why_not(Backend.CLOUDRUN, JobResources(cpu=8, memory_gb=32), 3600, prices=PRICES) is None


def test_why_not_gke_is_the_machine_tables_reason_and_local_runs_anything() -> None:
    huge = JobResources(cpu=4, memory_gb=16, gpu=9)
    assert job_policy.why_not(Backend.GKE, huge, 3600, prices=PRICES) == (
        "no nvidia-l4 machine has 4 vCPU, 16 GB and 9 GPU (largest: 96 vCPU, 384 GB, 8 GPU)"
    )
    assert job_policy.why_not(Backend.GKE, JobResources(), 3600, prices=PRICES) is None
    assert job_policy.why_not(Backend.LOCAL, huge, 7 * 86400, prices=PRICES) is None


def test_h100_on_demand_below_eight_gpus_is_refused_as_spot_only_capacity() -> None:
    one = JobResources(cpu=8, memory_gb=32, gpu=1, gpu_type="nvidia-h100-80gb")
    assert job_policy.why_not(Backend.GKE, one, 3600, prices=PRICES) == (
        "a3-highgpu-1g is sold only as spot capacity: ask for spot, or for 8 GPUs on demand"
    )
    assert job_policy.why_not(Backend.GKE, one.model_copy(update={"spot": True}), 3600, prices=PRICES) is None
    eight = one.model_copy(update={"gpu": 8})
    assert job_policy.why_not(Backend.GKE, eight, 3600, prices=PRICES) is None
    with pytest.raises(job_policy.NoBackend, match="sold only as spot"):
        choose(one, cfg=JobsConfig(backends=[Backend.GKE]))


def test_gke_refuses_a_gpu_type_the_deployment_has_no_pools_of() -> None:
    t4 = JobResources(gpu=1, gpu_type="nvidia-tesla-t4")
    assert job_policy.why_not(Backend.GKE, t4, 3600, prices=PRICES, gpu_types={"nvidia-l4"}) == (
        "this deployment's GKE cluster has no nvidia-tesla-t4 nodes (it has: nvidia-l4)"
    )
    assert job_policy.why_not(Backend.GKE, t4, 3600, prices=PRICES, gpu_types=None) is None
    l4 = JobResources(gpu=2)  # no gpu_type: an L4
    assert job_policy.why_not(Backend.GKE, l4, 3600, prices=PRICES, gpu_types={"nvidia-l4"}) is None
    assert job_policy.why_not(Backend.GKE, JobResources(), 3600, prices=PRICES, gpu_types=set()) is None  # CPU
    with pytest.raises(job_policy.NoBackend, match="no nvidia-tesla-t4 nodes"):
        job_policy.choose(t4, 3600, None, JobsConfig(backends=[Backend.GKE]), prices=PRICES, gpu_types=["nvidia-l4"])


def test_an_asked_backend_that_can_run_the_job_is_used() -> None:
    assert choose(JobResources(), Backend.GKE) == (Backend.GKE, "asked for")


def test_an_asked_backend_that_is_not_enabled_is_refused_with_the_enabled_list() -> None:
    cfg = JobsConfig(backends=[Backend.CLOUDRUN])
    with pytest.raises(NoBackend) as info:
        choose(JobResources(), Backend.GKE, cfg)
    assert str(info.value) == "backend gke is not enabled for this tenant (enabled: cloudrun)"
    with pytest.raises(NoBackend, match=r"backend local is not enabled for this tenant \(enabled: cloudrun, gke\)"):
        choose(JobResources(), Backend.LOCAL)


def test_the_default_backend_counts_as_enabled() -> None:
    cfg = JobsConfig(backends=[Backend.CLOUDRUN], default_backend=Backend.LOCAL)
    assert choose(JobResources(), Backend.LOCAL, cfg) == (Backend.LOCAL, "asked for")
    with pytest.raises(NoBackend, match=r"\(enabled: cloudrun, local\)"):
        choose(JobResources(), Backend.GKE, cfg)


def test_asking_cloud_run_for_a_spot_job_is_refused_with_the_reason() -> None:
    with pytest.raises(NoBackend) as info:
        choose(JobResources(spot=True), Backend.CLOUDRUN)
    assert str(info.value) == "cloudrun cannot run this job: Cloud Run has no spot capacity"


def test_a_local_default_backend_wins_for_every_job() -> None:
    cfg = JobsConfig(default_backend=Backend.LOCAL)
    for r in (JobResources(), JobResources(gpu=8, gpu_type="nvidia-h100-80gb", spot=True, cpu=200)):
        assert choose(r, None, cfg) == (Backend.LOCAL, "the tenant's default backend")


def test_an_asked_backend_beats_the_default_backend() -> None:
    cfg = JobsConfig(default_backend=Backend.LOCAL)
    assert choose(JobResources(), Backend.CLOUDRUN, cfg) == (Backend.CLOUDRUN, "asked for")


def test_a_default_backend_that_cannot_run_the_job_falls_back_to_the_preference() -> None:
    cfg = JobsConfig(default_backend=Backend.CLOUDRUN)
    assert choose(JobResources(spot=True), None, cfg) == (Backend.GKE, "spot capacity: GKE node pool")
    assert choose(JobResources(), None, cfg) == (Backend.CLOUDRUN, "the tenant's default backend")


def test_the_preference_skips_backends_that_are_not_enabled() -> None:
    cfg = JobsConfig(backends=[Backend.GKE])
    assert choose(JobResources(), None, cfg) == (Backend.GKE, "GKE")


def test_local_is_the_last_resort_when_enabled() -> None:
    cfg = JobsConfig(backends=[Backend.CLOUDRUN, Backend.GKE, Backend.LOCAL])
    assert choose(JobResources(cpu=4, memory_gb=16, gpu=10), None, cfg) == (Backend.LOCAL, "local")


def test_when_every_enabled_backend_is_ruled_out_the_reason_lists_each() -> None:
    with pytest.raises(NoBackend) as info:
        choose(JobResources(cpu=4, memory_gb=16, gpu=10))
    assert str(info.value) == (
        "no enabled backend can run this job (cloudrun: Cloud Run jobs take one GPU per task; "
        "gke: no nvidia-l4 machine has 4 vCPU, 16 GB and 10 GPU (largest: 96 vCPU, 384 GB, 8 GPU))"
    )


def test_cloud_run_only_tenant_cannot_run_a_spot_job() -> None:
    with pytest.raises(NoBackend, match=r"^no enabled backend can run this job \(cloudrun: Cloud Run has no spot"):
        choose(JobResources(spot=True), None, JobsConfig(backends=[Backend.CLOUDRUN]))


# --------------------------------------------------------------------------------------------------
# Runs: what a backend's status means for the job
# --------------------------------------------------------------------------------------------------


def admitted_job(**kw: Any) -> Job:
    return make_job(state=JobState.ADMITTED, admitted_at=T0, hourly="2", hours="3", **kw)


def running_job(**kw: Any) -> Job:
    return make_job(state=JobState.RUNNING, admitted_at=T0, started_at=T0, hourly="2", hours="3", **kw)


def test_running_status_moves_an_admitted_job_to_running_with_the_backends_start_time() -> None:
    job = admitted_job(stalled_at=T0 + 15 * MIN)
    obs = job_runs.observe(job, RunStatus(Phase.RUNNING, started_at=T0 + 20 * MIN), T0 + 23 * MIN, CFG)
    assert obs.stop is None
    assert obs.job is not None
    assert obs.job.state is JobState.RUNNING
    assert obs.job.started_at == T0 + 20 * MIN
    assert obs.job.stalled_at is None
    assert obs.job.updated_at == T0 + 23 * MIN
    assert obs.job.cost_usd == Decimal("0.1000")  # 3 minutes at 2 USD an hour
    assert obs.job.history[-1].to_state is JobState.RUNNING
    assert obs.job.history[-1].reason == "running"


def test_running_status_without_a_start_time_uses_now() -> None:
    obs = job_runs.observe(admitted_job(), RunStatus(Phase.RUNNING), T0 + 5 * MIN, CFG)
    assert obs.job is not None
    assert obs.job.started_at == T0 + 5 * MIN
    assert obs.job.cost_usd == Decimal(0)


def test_a_running_job_records_its_cost_so_far() -> None:
    obs = job_runs.observe(running_job(), RunStatus(Phase.RUNNING, started_at=T0), T0 + 45 * MIN, CFG)
    assert obs.job is not None
    assert obs.job.state is JobState.RUNNING
    assert obs.job.cost_usd == Decimal("1.5000")
    assert obs.job.history == []
    assert obs.stop is None


def test_succeeded_status_finishes_the_job_with_its_actual_cost() -> None:
    status = RunStatus(Phase.SUCCEEDED, started_at=T0, finished_at=T0 + 90 * MIN)
    obs = job_runs.observe(running_job(), status, T0 + 2 * 60 * MIN, CFG)
    assert obs.stop is None
    job = obs.job
    assert job is not None
    assert job.state is JobState.SUCCEEDED
    assert job.finished_at == T0 + 90 * MIN
    assert job.cost_usd == Decimal("3.0000")  # 1.5 hours at 2 USD an hour, not until now
    assert job.unsettled is True
    assert job.reason == "succeeded"


def test_a_final_status_on_an_admitted_job_takes_the_backends_start_time() -> None:
    status = RunStatus(Phase.SUCCEEDED, started_at=T0 + 10 * MIN, finished_at=T0 + 40 * MIN)
    obs = job_runs.observe(admitted_job(), status, T0 + 45 * MIN, CFG)
    assert obs.job is not None
    assert obs.job.state is JobState.SUCCEEDED
    assert (obs.job.started_at, obs.job.finished_at) == (T0 + 10 * MIN, T0 + 40 * MIN)
    assert obs.job.cost_usd == Decimal("1.0000")


def test_a_final_status_keeps_the_start_time_already_recorded() -> None:
    status = RunStatus(Phase.SUCCEEDED, started_at=T0 + 10 * MIN, finished_at=T0 + 30 * MIN)
    obs = job_runs.observe(running_job(), status, T0 + 45 * MIN, CFG)
    assert obs.job is not None
    assert obs.job.started_at == T0
    assert obs.job.cost_usd == Decimal("1.0000")


def test_a_final_status_without_times_finishes_now_and_costs_nothing_if_it_never_started() -> None:
    obs = job_runs.observe(admitted_job(), RunStatus(Phase.CANCELLED), T0 + 5 * MIN, CFG)
    assert obs.job is not None
    assert obs.job.state is JobState.CANCELLED
    assert obs.job.reason == "cancelled"
    assert obs.job.finished_at == T0 + 5 * MIN
    assert obs.job.cost_usd == Decimal(0)


def test_failed_status_message_becomes_the_reason_truncated() -> None:
    status = RunStatus(Phase.FAILED, finished_at=T0 + 10 * MIN, message="BackoffLimitExceeded: OOMKilled")
    obs = job_runs.observe(running_job(), status, T0 + 11 * MIN, CFG)
    assert obs.job is not None
    assert (obs.job.state, obs.job.reason) == (JobState.FAILED, "BackoffLimitExceeded: OOMKilled")
    assert obs.job.history[-1].reason == "BackoffLimitExceeded: OOMKilled"
    long = RunStatus(Phase.FAILED, message="x" * 2000)
    obs = job_runs.observe(running_job(), long, T0 + 11 * MIN, CFG)
    assert obs.job is not None
    assert obs.job.reason == "x" * 500


def test_missing_run_fails_the_job() -> None:
    obs = job_runs.observe(running_job(), RunStatus(Phase.MISSING), T0 + 10 * MIN, CFG)
    assert obs.stop is None
    assert obs.job is not None
    assert obs.job.state is JobState.FAILED
    assert obs.job.reason == "the backend has no run for this job any more (deleted outside the fleet?)"
    assert obs.job.finished_at == T0 + 10 * MIN
    assert obs.job.unsettled


def test_each_preemption_is_recorded_once_by_key_across_observations() -> None:
    now = T0 + 30 * MIN
    p1 = Preemption("pod-a", T0 + 5 * MIN, "spot VM reclaimed")
    p2 = Preemption("pod-b", None, "node drained")
    first = job_runs.observe(running_job(), RunStatus(Phase.RUNNING, preemptions=(p1, p2, p1)), now, CFG)
    assert first.job is not None
    assert first.job.preemptions == 2
    events = [e for e in first.job.history if e.kind == "preemption"]
    assert [(e.key, e.at, e.reason) for e in events] == [
        ("pod-a", T0 + 5 * MIN, "spot VM reclaimed"),
        ("pod-b", now, "node drained"),  # no time from the backend: when it was seen
    ]
    p3 = Preemption("pod-c", T0 + 25 * MIN, "x" * 900)
    second = job_runs.observe(first.job, RunStatus(Phase.RUNNING, preemptions=(p1, p2, p3)), now, CFG)
    assert second.job is not None
    assert second.job.preemptions == 3
    assert [e.key for e in second.job.history if e.kind == "preemption"] == ["pod-a", "pod-b", "pod-c"]
    assert [e for e in second.job.history if e.kind == "preemption"][-1].reason == "x" * 500
    assert second.job.state is JobState.RUNNING
    third = job_runs.observe(second.job, RunStatus(Phase.RUNNING, preemptions=(p1, p2, p3)), now, CFG)
    assert third == job_runs.Observation(job=None, stop=None)


def test_preemptions_are_recorded_on_a_final_status_too() -> None:
    status = RunStatus(Phase.SUCCEEDED, finished_at=T0 + 60 * MIN, preemptions=(Preemption("p", None, "spot"),))
    obs = job_runs.observe(running_job(), status, T0 + 61 * MIN, CFG)
    assert obs.job is not None
    assert obs.job.preemptions == 1
    assert [e.kind for e in obs.job.history] == ["preemption", "relaunch", "state"]


def test_nothing_changed_gives_no_job_to_write() -> None:
    job = admitted_job()
    assert job_runs.observe(job, RunStatus(Phase.PENDING), T0 + 5 * MIN, CFG) == job_runs.Observation(None)
    assert job_runs.observe(job, None, T0 + 5 * MIN, CFG) == job_runs.Observation(None)


def test_an_admitted_job_not_running_after_start_timeout_is_flagged_once() -> None:
    job = admitted_job()
    before = T0 + timedelta(seconds=CFG.start_timeout_s - 1)
    assert job_runs.observe(job, RunStatus(Phase.PENDING), before, CFG).job is None
    at = T0 + timedelta(seconds=CFG.start_timeout_s)
    flagged = job_runs.observe(job, RunStatus(Phase.PENDING), at, CFG)
    assert flagged.stop is None
    assert flagged.job is not None
    assert flagged.job.stalled_at == at
    assert flagged.job.state is JobState.ADMITTED
    assert [(e.kind, e.reason) for e in flagged.job.history] == [
        ("stalled", "admitted 15 min ago and not running yet (capacity, image pull?)")
    ]
    again = job_runs.observe(flagged.job, RunStatus(Phase.PENDING), at + 10 * MIN, CFG)
    assert again == job_runs.Observation(None)


def test_a_job_not_yet_launched_is_flagged_too() -> None:
    flagged = job_runs.observe(admitted_job(), None, T0 + 20 * MIN, CFG)
    assert flagged.job is not None
    assert flagged.job.stalled_at == T0 + 20 * MIN
    assert flagged.job.history[-1].reason.startswith("admitted 20 min ago")


def test_an_admitted_job_not_running_after_release_after_s_is_stopped_as_failed() -> None:
    reason = "not running 60 min after admission: stopped, its quota released"
    stalled = admitted_job(stalled_at=T0 + 15 * MIN)
    at = T0 + timedelta(seconds=CFG.release_after_s)
    obs = job_runs.observe(stalled, RunStatus(Phase.PENDING), at, CFG)
    assert obs == job_runs.Observation(None, job_runs.Stop(JobState.FAILED, reason))
    before = job_runs.observe(stalled, RunStatus(Phase.PENDING), at - timedelta(seconds=1), CFG)
    assert before.stop is None
    # never flagged before (no tick in between): stopped, with no stall event added
    fresh = job_runs.observe(admitted_job(), RunStatus(Phase.PENDING), at + MIN, CFG)
    assert fresh == job_runs.Observation(None, job_runs.Stop(JobState.FAILED, reason))


def test_release_after_s_follows_the_tenants_setting() -> None:
    cfg = JobsConfig(start_timeout_s=300, release_after_s=600)
    obs = job_runs.observe(admitted_job(), None, T0 + 10 * MIN, cfg)
    assert obs.stop == job_runs.Stop(JobState.FAILED, "not running 10 min after admission: stopped, its quota released")


def test_a_running_job_is_never_released_for_slowness() -> None:
    obs = job_runs.observe(running_job(), RunStatus(Phase.RUNNING), T0 + 10 * 60 * MIN, CFG)
    assert obs.stop is None
    assert obs.job is not None and obs.job.stalled_at is None


def test_a_running_job_reaching_its_max_cost_is_stopped_as_cancelled() -> None:
    job = running_job(max_cost_usd=Decimal("1"))
    under = job_runs.observe(job, RunStatus(Phase.RUNNING), T0 + 29 * MIN, CFG)
    assert under.stop is None
    assert under.job is not None and under.job.cost_usd == Decimal("0.9667")
    at = job_runs.observe(job, RunStatus(Phase.RUNNING), T0 + 30 * MIN, CFG)
    assert at.stop == job_runs.Stop(JobState.CANCELLED, "reached its cost limit: $1.0000 of max_cost_usd $1")
    assert at.job is not None and at.job.cost_usd == Decimal("1.0000")
    assert at.job.state is JobState.RUNNING  # the caller stops the run, then records the state


def test_a_finished_job_is_not_stopped_for_its_cost() -> None:
    job = running_job(max_cost_usd=Decimal("1"))
    status = RunStatus(Phase.SUCCEEDED, finished_at=T0 + 60 * MIN)
    obs = job_runs.observe(job, status, T0 + 60 * MIN, CFG)
    assert obs.stop is None
    assert obs.job is not None and obs.job.cost_usd == Decimal("2.0000")


def test_a_queued_job_that_can_no_longer_fit_is_refused_not_kept_waiting() -> None:
    lowered = JobsConfig(tenant_quota=Quota(gpu=2))
    big = make_job("j-big", resources=res(gpu=4), created_at=T0 - 2 * HOUR)
    small = make_job("j-small", requester="bob", resources=res(gpu=1))
    decisions = job_queue.plan([big, small], [], lowered, T0, no_budget)
    refused = next(d for d in decisions if d.job_id == "j-big")
    assert refused.refuse and not refused.admit and "allows 2 in all" in refused.reason
    assert admitted(decisions) == ["j-small"]  # nothing is reserved for a job that can never run


def test_a_reservation_is_kept_only_in_the_quota_that_blocks_the_job() -> None:
    cfg = JobsConfig(user_quota=Quota(gpu=2), tenant_quota=Quota(gpu=4))
    running = [holding("h-1", requester="alice", resources=res(gpu=2))]
    waiting = make_job("j-alice", requester="alice", resources=res(gpu=2), created_at=T0 - 2 * HOUR)
    bob = make_job("j-bob", requester="bob", resources=res(gpu=2))
    decisions = job_queue.plan([waiting, bob], running, cfg, T0, no_budget)
    alice = next(d for d in decisions if d.job_id == "j-alice")
    assert alice.reserved and "quota of user alice" in alice.reason
    # Alice's reservation is against her own quota: the tenant's two free GPUs still go to bob.
    assert admitted(decisions) == ["j-bob"]


def test_approval_time_does_not_count_as_waiting() -> None:
    approved_late = make_job("j-a", priority=5, created_at=T0 - 10 * HOUR, queued_at=T0 - MIN)
    fresh = make_job("j-b", priority=6, created_at=T0 - 2 * MIN, queued_at=T0 - 2 * MIN)
    assert job_queue.effective_priority(approved_late, T0, CFG.aging_s) == 5
    assert [j.id for j in job_queue.order([approved_late, fresh], T0, CFG.aging_s)] == ["j-b", "j-a"]
