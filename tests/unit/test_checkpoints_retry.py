"""A Cloud Run retry seen after its new attempt already checkpointed loses the failed attempt's work (its
own checkpoints and stop, not the new attempt's); a relaunched run's resume bounds the next loss; the
daily losses count a relaunch on the day the tick recorded it."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from fleet_agent.contracts import JobProgress

from shared.domain import job_relaunch, job_runs
from shared.domain.jobs import Job
from shared.domain.run_phase import Phase, Preemption, RunStatus
from shared.training import job_keys, progress
from tests.unit.test_checkpoints_relaunch import gpu_job
from tests.unit.test_job_identity import NOW, decoded, fleet, job_doc  # noqa: F401
from tests.unit.test_jobs_domain import CFG, MIN, T0


def report(job: Job, at: datetime, attempt: int, metrics: dict[str, float], message: str = "") -> Job:
    """``job`` after a progress report, as shared/training/progress.py records it."""
    previous = job.progress or {}
    progress: dict[str, object] = {"attempt": attempt, "at": at.isoformat(), "metrics": metrics}
    same_attempt = previous.get("attempt_since") and int(previous.get("attempt", 0)) == attempt
    progress["attempt_since"] = previous["attempt_since"] if same_attempt else at.isoformat()
    fields = job_relaunch.checkpoint_fields(job, metrics, message, attempt, at)
    return job.model_copy(update={"progress": progress, **fields})


def saved(step: int, at: datetime) -> dict[str, float]:
    return {"checkpoint_step": step, "checkpoint_at": at.timestamp()}


def test_a_retry_seen_after_the_new_attempt_checkpointed_counts_the_failed_attempts_work() -> None:
    job = report(gpu_job(gpu=2), T0 + 30 * MIN, 0, saved(3, T0 + 30 * MIN), "checkpoint gs://b/x/3")
    job = report(job, T0 + 50 * MIN, 0, {"loss": 0.2})  # attempt 0's last sign of life
    job = report(job, T0 + 51 * MIN, 1, {**saved(3, T0 + 30 * MIN), "resumed_from_step": 3})
    job = report(job, T0 + 52 * MIN, 1, saved(4, T0 + 52 * MIN), "checkpoint gs://b/x/4")
    status = RunStatus(Phase.RUNNING, T0, failed_attempts=1)
    [relaunch] = job_runs.observe(job, status, T0 + 53 * MIN, CFG).job.relaunches  # type: ignore[union-attr]
    assert relaunch.checkpoint_step == 3
    assert (relaunch.lost_since, relaunch.at) == (T0 + 30 * MIN, T0 + 51 * MIN)  # up to attempt 1's first report
    assert relaunch.gpu_hours_lost == round(21 / 60 * 2, 6)
    assert relaunch.seen_at == T0 + 53 * MIN


def test_a_resumed_report_keeps_the_checkpoint_as_the_earlier_attempts() -> None:
    job = report(gpu_job(), T0 + 30 * MIN, 0, saved(3, T0 + 30 * MIN), "checkpoint gs://b/x/3")
    job = report(job, T0 + 51 * MIN, 1, {**saved(3, T0 + 30 * MIN), "resumed_from_step": 3})
    assert job.checkpoint is not None and job.checkpoint["attempt"] == 0
    assert job.resumed_at == T0 + 51 * MIN


def test_without_a_newer_checkpoint_the_loss_counts_from_the_relaunched_runs_resume() -> None:
    job = report(gpu_job(gpu=1), T0 + 30 * MIN, 0, saved(3, T0 + 30 * MIN), "checkpoint gs://b/x/3")
    p1 = Preemption("pod-a", T0 + 40 * MIN, "spot")
    job = job_runs.observe(job, RunStatus(Phase.RUNNING, T0, preemptions=(p1,)), T0 + 41 * MIN, CFG).job  # type: ignore[assignment]
    job = report(job, T0 + 70 * MIN, 0, {**saved(3, T0 + 30 * MIN), "resumed_from_step": 3})  # rescheduled 30 min
    p2 = Preemption("pod-b", T0 + 80 * MIN, "spot")
    status = RunStatus(Phase.RUNNING, T0, preemptions=(p1, p2))
    second = job_runs.observe(job, status, T0 + 81 * MIN, CFG).job
    assert second is not None
    assert (second.relaunches[-1].lost_since, second.relaunches[-1].lost_since_source) == (T0 + 70 * MIN, "resume")
    assert second.relaunches[-1].gpu_hours_lost == round(10 / 60, 6)


def test_a_preemption_seen_after_midnight_is_in_the_next_days_losses() -> None:
    midnight = T0.replace(hour=0, minute=0) + timedelta(days=1)
    job = gpu_job(gpu=1)
    status = RunStatus(Phase.RUNNING, T0, preemptions=(Preemption("pod-a", midnight - MIN, "spot"),))
    seen = job_runs.observe(job, status, midnight + 5 * MIN, CFG).job
    assert seen is not None and seen.relaunched_at == midnight + 5 * MIN
    assert job_relaunch.day_losses([seen], midnight - timedelta(days=1), midnight) == []
    [tenant] = job_relaunch.day_losses([seen], midnight, midnight + timedelta(days=1))
    assert tenant.relaunches == 1


def test_the_progress_handler_keeps_each_attempts_first_report_and_the_checkpoints_attempt(
    fleet: Any,  # noqa: F811
    job_doc: dict[str, Any],  # noqa: F811
) -> None:
    key = job_keys.for_job("j-00000001")
    sent = [(1, 0, 10, saved(1, NOW + 9 * MIN)), (2, 0, 20, {"loss": 0.1}), (3, 1, 30, {"loss": 0.1})]
    for seq, attempt, minute, metrics in sent:
        event = JobProgress.model_validate(
            {"job_id": "j-00000001", "agent_id": "chat-1", "phase": "progress", "seq": seq, "attempt": attempt,
             "metrics": metrics, "at": (NOW + minute * MIN).isoformat()}
        )  # fmt: skip
        progress.process(decoded(event, key, at=NOW + minute * MIN))
        if seq == 2:
            assert job_doc["job"].progress["attempt_since"] == (NOW + 10 * MIN).isoformat()
    stored = job_doc["job"]
    assert stored.progress["attempt_since"] == (NOW + 30 * MIN).isoformat()
    assert stored.checkpoint["attempt"] == 0
    assert job_relaunch.retry_stop(stored, 1, NOW + 31 * MIN) == NOW + 30 * MIN
