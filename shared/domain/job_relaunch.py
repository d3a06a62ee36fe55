"""Relaunches of a training run and the GPU-hours they lose (pure).

A GKE run whose pod is preempted (a ``DisruptionTarget``) is started again by its Kubernetes Job (the
podFailurePolicy ignores the disruption); a Cloud Run run whose task failed is retried in the same
execution; both get the same ``FLEET_CHECKPOINT_URI`` and resume after their last checkpoint
(jobs/train.py). The reconcile tick records each such restart once (:func:`relaunched`, by the preemption's
pod or the retry's number) with the GPU-hours lost: the wall time from the last checkpoint to the stop,
times the job's GPUs.

**Where the checkpoint's time comes from: the run's last progress report that named one**
(``checkpoint_step`` and ``checkpoint_at``, JobReporter.checkpointed), kept on the job as ``checkpoint``
by :func:`checkpoint_fields`. Not from the storage object: the tick already holds the job document (no
Storage call per preemption, no read access to every tenant's checkpoints for the functions), the report
is signed by the job's own key, and it means the same on every backend. The report is sent right after the
save, so it names the time the checkpoint became usable; if it was lost, the older checkpoint is used and
the loss is over- rather than under-counted. Without a checkpoint newer than the run's (re)start, the loss
counts from the previous relaunch, else from the run's start. A checkpoint saved within
:data:`NOTICE` after the stop was saved on the notice (jobs/train.py finishes its epoch on SIGTERM): 0 lost.

A retry's stop time is not in Cloud Run's answer: the tick that first sees it dates it (at most a tick
late). Retries seen on a run that has ended are not relaunches (nothing was started again).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import Field

from shared.domain import jobs as domain
from shared.domain.jobs import Job, Relaunch
from shared.domain.reports import ReportModel

#: A checkpoint saved this long after the stop was saved on its notice (a spot VM's is 30 s): no work lost.
#: One saved later is the relaunched run's own (the stop was seen late) and does not count for this stop.
NOTICE = timedelta(seconds=60)
#: Metric names of a report naming a checkpoint (fleet_agent.jobs: CHECKPOINT_STEP, CHECKPOINT_AT).
CHECKPOINT_STEP, CHECKPOINT_AT = "checkpoint_step", "checkpoint_at"


def checkpoint_fields(job: Job, metrics: Mapping[str, float], message: str) -> dict[str, Any]:
    """The job's ``checkpoint`` as a newly accepted report names it; nothing when it names none (or an
    older one than the job has)."""
    if CHECKPOINT_STEP not in metrics or CHECKPOINT_AT not in metrics:
        return {}
    try:
        at = datetime.fromtimestamp(float(metrics[CHECKPOINT_AT]), UTC)
    except (OverflowError, OSError, ValueError):
        return {}
    current = job.checkpoint or {}
    if current.get("at") and datetime.fromisoformat(str(current["at"])) > at:
        return {}
    uri = message.split(" ", 1)[1] if message.startswith("checkpoint ") else current.get("uri")
    return {"checkpoint": {"step": int(metrics[CHECKPOINT_STEP]), "at": at.isoformat(), "uri": uri}}


def _lost_since(job: Job, at: datetime, started: datetime | None) -> tuple[datetime, str, int | None]:
    """Where the work lost at ``at`` starts, what that time is, and the checkpoint's step (None: none)."""
    candidates: list[tuple[datetime, str]] = []
    start = job.started_at or started
    if start is not None:
        candidates.append((start, "start"))
    if job.relaunches:
        candidates.append((job.relaunches[-1].at, "relaunch"))
    step: int | None = None
    if job.checkpoint and job.checkpoint.get("at"):
        checkpoint_at = datetime.fromisoformat(str(job.checkpoint["at"]))
        if checkpoint_at <= at:
            step = int(job.checkpoint["step"])
            candidates.append((checkpoint_at, "checkpoint"))
        elif checkpoint_at <= at + NOTICE:  # saved on the notice (SIGTERM): nothing was lost
            return at, "checkpoint", int(job.checkpoint["step"])
    usable = [c for c in candidates if c[0] <= at]
    if not usable:
        return at, "none", step
    since, source = max(usable, key=lambda c: c[0])
    return since, source, step


def relaunched(job: Job, *, at: datetime, cause: str, key: str, started: datetime | None = None) -> Job:
    """The job with one more relaunch (and its history event); ``started``: the run's start as the backend
    reports it, for a run not yet recorded as running."""
    since, source, step = _lost_since(job, at, started)
    hours = round(max(0.0, (at - since).total_seconds()) / 3600 * job.resources.gpu, 6)
    relaunch = Relaunch(
        at=at,
        cause=cause,
        key=key,
        checkpoint_step=step,
        lost_since=since,
        lost_since_source=source,
        gpu_hours_lost=hours,
    )
    resumes = f"resumes after epoch {step} (checkpoint of {since:%H:%M:%S})" if step is not None else "starts over"
    event = domain.Event(
        at=at,
        kind="relaunch",
        reason=f"relaunched after {cause} {key}: {resumes}; {hours:g} GPU-hours lost"[:500],
        key=f"relaunch:{key}",
    )
    return domain.note(
        job,
        event,
        relaunches=[*job.relaunches, relaunch][-domain.MAX_RELAUNCHES :],
        relaunch_count=job.relaunch_count + 1,
        gpu_hours_lost=round(job.gpu_hours_lost + hours, 6),
        relaunched_at=at,
    )


class JobLoss(ReportModel):
    """One job's relaunches in the day and the GPU-hours they lost."""

    job_id: str
    name: str
    agent_id: str
    relaunches: int
    gpu_hours_lost: float


class TenantLoss(ReportModel):
    """A tenant's GPU-hours lost to relaunches in a day, and the jobs they were lost in."""

    tenant: str
    gpu_hours_lost: float = Field(
        description="Wall time from each relaunched run's last checkpoint to its stop, x GPUs."
    )
    relaunches: int
    jobs: list[JobLoss] = Field(description="Most GPU-hours lost first.")


def day_losses(jobs: Iterable[Job], start: datetime, end: datetime, tenant: str | None = None) -> list[TenantLoss]:
    """GPU-hours lost to relaunches between ``start`` and ``end``, per tenant (most first) and job."""
    by_tenant: dict[str, list[JobLoss]] = {}
    for job in jobs:
        if tenant is not None and job.tenant != tenant:
            continue
        inside = [r for r in job.relaunches if start <= r.at < end]
        if inside:
            hours = round(sum(r.gpu_hours_lost for r in inside), 6)
            line = JobLoss(
                job_id=job.id, name=job.name, agent_id=job.agent_id, relaunches=len(inside), gpu_hours_lost=hours
            )
            by_tenant.setdefault(job.tenant, []).append(line)
    out = [
        TenantLoss(
            tenant=name,
            gpu_hours_lost=round(sum(j.gpu_hours_lost for j in lines), 6),
            relaunches=sum(j.relaunches for j in lines),
            jobs=sorted(lines, key=lambda j: (-j.gpu_hours_lost, j.job_id)),
        )
        for name, lines in by_tenant.items()
    ]
    return sorted(out, key=lambda t: (-t.gpu_hours_lost, t.tenant))
