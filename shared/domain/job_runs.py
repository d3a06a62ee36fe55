"""What a backend's view of a run means for its job (the reconcile tick's decisions). Pure.

Given the job and the backend's :class:`RunStatus` (None: not launched yet), :func:`observe` returns
the job as it should now be recorded (state, times, cost so far, each preemption once and each
relaunch (a preemption, a retried attempt) with the GPU-hours it lost: shared/domain/job_relaunch.py,
the stall flag) and whether the run must be stopped: it reached its ``max_cost_usd``, or it was
admitted and has not started within ``release_after_s`` (its quota is then released with the reason).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from shared.domain import job_relaunch
from shared.domain import jobs as domain
from shared.domain.jobs import Job, JobsConfig, JobState
from shared.domain.run_phase import FINAL_PHASES, Phase, RunStatus

_FINAL = {Phase.SUCCEEDED: JobState.SUCCEEDED, Phase.FAILED: JobState.FAILED, Phase.CANCELLED: JobState.CANCELLED}


@dataclass(frozen=True)
class Stop:
    """Stop the run on its backend, then record the job in ``state`` with ``reason``."""

    state: JobState
    reason: str


@dataclass(frozen=True)
class Observation:
    #: The job to write, or None when nothing changed.
    job: Job | None
    stop: Stop | None = None


def observe(job: Job, status: RunStatus | None, now: datetime, cfg: JobsConfig) -> Observation:
    changed = job
    if status is not None:
        for preemption in status.preemptions:
            if preemption.key in changed.preempted:
                continue
            event = domain.Event(
                at=preemption.at or now, kind="preemption", reason=preemption.detail[:500], key=preemption.key
            )
            keys = [*changed.preempted, preemption.key][-domain.MAX_PREEMPTION_KEYS :]
            changed = domain.note(changed, event, preemptions=changed.preemptions + 1, preempted=keys)
            changed = job_relaunch.relaunched(
                changed, at=event.at, cause="preemption", key=preemption.key, seen=now, started=status.started_at
            )
        if status.failed_attempts > changed.retries_seen and status.phase not in FINAL_PHASES:
            for retry in range(changed.retries_seen + 1, status.failed_attempts + 1):
                changed = job_relaunch.relaunched(
                    changed,
                    at=job_relaunch.retry_stop(changed, retry, now),
                    cause="retry",
                    key=f"retry-{retry}",
                    seen=now,
                    started=status.started_at,
                    attempt=retry,
                )
            changed = changed.model_copy(update={"retries_seen": status.failed_attempts})
        started = status.started_at
        if status.phase is Phase.RUNNING and changed.state is JobState.ADMITTED:
            changed = domain.advance(changed, JobState.RUNNING, now, "running", started_at=started or now)
        elif status.phase in FINAL_PHASES:
            fields: dict[str, Any] = {"finished_at": status.finished_at or now}
            if changed.started_at is None and started is not None:
                fields["started_at"] = started
            reason = status.message or status.phase.value
            changed = domain.advance(changed, _FINAL[status.phase], now, reason[:500], **fields)
            changed = changed.model_copy(update={"cost_usd": domain.cost_so_far(changed, now)})
        elif status.phase is Phase.MISSING:
            reason = "the backend has no run for this job any more (deleted outside the fleet?)"
            changed = domain.advance(changed, JobState.FAILED, now, reason)
            changed = changed.model_copy(update={"cost_usd": domain.cost_so_far(changed, now)})
    stop = None
    if changed.active:
        cost = domain.cost_so_far(changed, now)
        if cost != changed.cost_usd:
            changed = changed.model_copy(update={"cost_usd": cost})
        if job.max_cost_usd is not None and cost >= job.max_cost_usd:
            stop = Stop(JobState.CANCELLED, f"reached its cost limit: ${cost} of max_cost_usd ${job.max_cost_usd}")
        if changed.state is JobState.ADMITTED and changed.admitted_at is not None:
            waited = (now - changed.admitted_at).total_seconds()
            if waited >= cfg.release_after_s:
                stop = Stop(
                    JobState.FAILED,
                    f"not running {cfg.release_after_s // 60} min after admission: stopped, its quota released",
                )
            elif waited >= cfg.start_timeout_s and changed.stalled_at is None:
                event = domain.Event(
                    at=now,
                    kind="stalled",
                    reason=f"admitted {int(waited // 60)} min ago and not running yet (capacity, image pull?)",
                )
                changed = domain.note(changed, event, stalled_at=now)
    return Observation(None if changed == job else changed, stop)
