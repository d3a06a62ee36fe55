"""A relaunched run (a preempted GKE pod, a retried Cloud Run task) is recorded once, with the GPU-hours
lost: from the checkpoint its last report named (else the previous relaunch, else the start) to the stop,
times its GPUs; the daily losses per tenant and job."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from shared.domain import job_relaunch, job_runs
from shared.domain.jobs import Job
from shared.domain.run_phase import Backend, Phase, Preemption, RunStatus
from tests.unit.test_jobs_domain import CFG, MIN, T0, res, running_job


def gpu_job(gpu: int = 2, **kw: object) -> Job:
    return running_job(resources=res(cpu=8, memory_gb=32, gpu=gpu, gpu_type="nvidia-l4"), **kw)


def with_checkpoint(job: Job, step: int, at: datetime) -> Job:
    fields = job_relaunch.checkpoint_fields(
        job, {"checkpoint_step": step, "checkpoint_at": at.timestamp(), "loss": 0.3}, "checkpoint gs://b/acme/j-1/x"
    )
    return job.model_copy(update=fields)


def test_a_checkpointed_report_sets_the_jobs_checkpoint_and_an_older_one_does_not() -> None:
    job = with_checkpoint(gpu_job(), 3, T0 + 30 * MIN)
    assert job.checkpoint == {"step": 3, "at": (T0 + 30 * MIN).isoformat(), "uri": "gs://b/acme/j-1/x", "attempt": 0}
    assert job_relaunch.checkpoint_fields(job, {"loss": 0.2}, "") == {}
    older = {"checkpoint_step": 2, "checkpoint_at": (T0 + 20 * MIN).timestamp()}
    assert job_relaunch.checkpoint_fields(job, older, "") == {}


def test_a_preemption_after_a_checkpoint_loses_the_time_since_it_times_the_gpus() -> None:
    job = with_checkpoint(gpu_job(gpu=2), 3, T0 + 30 * MIN)
    status = RunStatus(Phase.RUNNING, T0, preemptions=(Preemption("pod-a", T0 + 45 * MIN, "spot reclaimed"),))
    obs = job_runs.observe(job, status, T0 + 46 * MIN, CFG)
    assert obs.job is not None
    [relaunch] = obs.job.relaunches
    assert (relaunch.cause, relaunch.key, relaunch.checkpoint_step) == ("preemption", "pod-a", 3)
    assert (relaunch.lost_since, relaunch.lost_since_source) == (T0 + 30 * MIN, "checkpoint")
    assert relaunch.gpu_hours_lost == 0.5  # 15 min x 2 GPUs
    assert (obs.job.gpu_hours_lost, obs.job.relaunch_count, obs.job.relaunched_at) == (
        0.5,
        1,
        T0 + 46 * MIN,
    )  # recorded
    assert obs.job.history[-1].kind == "relaunch"
    assert "resumes after epoch 3" in obs.job.history[-1].reason
    again = job_runs.observe(obs.job, status, T0 + 47 * MIN, CFG)
    assert again.job is None or again.job.relaunch_count == 1  # seen again: not a second relaunch


def test_without_a_checkpoint_the_loss_counts_from_the_start_then_from_the_previous_relaunch() -> None:
    job = gpu_job(gpu=1)
    p1 = Preemption("pod-a", T0 + 60 * MIN, "spot")
    first = job_runs.observe(job, RunStatus(Phase.RUNNING, T0, preemptions=(p1,)), T0 + 61 * MIN, CFG).job
    assert first is not None
    assert (first.relaunches[0].lost_since_source, first.relaunches[0].gpu_hours_lost) == ("start", 1.0)
    assert first.relaunches[0].checkpoint_step is None and "starts over" in first.history[-1].reason
    p2 = Preemption("pod-b", T0 + 90 * MIN, "spot")
    second = job_runs.observe(first, RunStatus(Phase.RUNNING, T0, preemptions=(p1, p2)), T0 + 91 * MIN, CFG).job
    assert second is not None
    assert (second.relaunches[1].lost_since_source, second.relaunches[1].gpu_hours_lost) == ("relaunch", 0.5)
    assert second.gpu_hours_lost == 1.5


def test_a_checkpoint_older_than_the_previous_relaunch_does_not_count_twice() -> None:
    job = with_checkpoint(gpu_job(gpu=1), 2, T0 + 10 * MIN)
    p1, p2 = Preemption("a", T0 + 40 * MIN, ""), Preemption("b", T0 + 70 * MIN, "")
    obs = job_runs.observe(job, RunStatus(Phase.RUNNING, T0, preemptions=(p1, p2)), T0 + 71 * MIN, CFG).job
    assert obs is not None
    assert [(r.lost_since_source, r.gpu_hours_lost) for r in obs.relaunches] == [("checkpoint", 0.5), ("relaunch", 0.5)]


def test_a_retried_cloud_run_task_is_a_relaunch_dated_when_seen_and_not_once_the_run_ended() -> None:
    job = with_checkpoint(gpu_job(gpu=1, backend=Backend.CLOUDRUN), 4, T0 + 20 * MIN)
    obs = job_runs.observe(job, RunStatus(Phase.RUNNING, T0, failed_attempts=1), T0 + 32 * MIN, CFG).job
    assert obs is not None
    [relaunch] = obs.relaunches
    assert (relaunch.cause, relaunch.key, relaunch.at, relaunch.checkpoint_step) == (
        "retry",
        "retry-1",
        T0 + 32 * MIN,
        4,
    )
    assert relaunch.gpu_hours_lost == 0.2  # 12 min x 1 GPU
    same = job_runs.observe(obs, RunStatus(Phase.RUNNING, T0, failed_attempts=1), T0 + 33 * MIN, CFG).job
    assert same is None or same.relaunch_count == 1
    ended = RunStatus(Phase.FAILED, T0, T0 + 40 * MIN, "BackoffLimitExceeded", failed_attempts=2)
    final = job_runs.observe(obs, ended, T0 + 41 * MIN, CFG).job
    assert final is not None and final.relaunch_count == 1


def test_a_cpu_job_is_relaunched_without_gpu_hours_lost() -> None:
    obs = job_runs.observe(
        running_job(),
        RunStatus(Phase.RUNNING, T0, preemptions=(Preemption("p", T0 + 9 * MIN, ""),)),
        T0 + 10 * MIN,
        CFG,
    ).job
    assert obs is not None and obs.relaunch_count == 1 and obs.gpu_hours_lost == 0


def test_day_losses_per_tenant_and_job_count_only_the_days_relaunches() -> None:
    day = datetime(2026, 3, 2, tzinfo=UTC)
    job = gpu_job(gpu=2)
    for key, minute in (("a", 30), ("b", 60 * 25)):  # the second one is the next day
        status = RunStatus(Phase.RUNNING, T0, preemptions=(Preemption(key, T0 + minute * MIN, ""),))
        job = job_runs.observe(job, status, T0 + (minute + 1) * MIN, CFG).job or job
    other = gpu_job(gpu=1, job_id="j-2")
    assert job_relaunch.day_losses([job, other], day, day.replace(day=3)) == [
        job_relaunch.TenantLoss(
            tenant="acme",
            gpu_hours_lost=1.0,
            relaunches=1,
            jobs=[
                job_relaunch.JobLoss(
                    job_id="j-1", name="train j-1", agent_id="agent-a", relaunches=1, gpu_hours_lost=1.0
                )
            ],
        )
    ]
    assert job_relaunch.day_losses([job], day, day.replace(day=3), tenant="globex") == []


def test_a_checkpoint_saved_on_the_notice_loses_nothing_and_a_later_ones_is_not_this_stops() -> None:
    preempt = Preemption("pod-a", T0 + 45 * MIN, "spot reclaimed")
    status = RunStatus(Phase.RUNNING, T0, preemptions=(preempt,))
    on_notice = with_checkpoint(gpu_job(gpu=2), 5, T0 + 45 * MIN + timedelta(seconds=20))
    obs = job_runs.observe(on_notice, status, T0 + 46 * MIN, CFG).job
    assert obs is not None
    assert (obs.relaunches[0].checkpoint_step, obs.relaunches[0].gpu_hours_lost) == (5, 0.0)
    much_later = with_checkpoint(gpu_job(gpu=2), 7, T0 + 55 * MIN)  # the relaunched run's; the stop was seen late
    late = job_runs.observe(much_later, status, T0 + 56 * MIN, CFG).job
    assert late is not None
    assert (late.relaunches[0].lost_since_source, late.relaunches[0].gpu_hours_lost) == ("start", 1.5)
