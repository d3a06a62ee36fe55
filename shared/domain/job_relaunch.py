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

A retry's stop time is not in Cloud Run's answer: it is dated by the first report of the attempt after it
(each report carries its attempt; the job's progress keeps its attempt's first as ``attempt_since``), else
by the tick that first sees it; only checkpoints saved by attempts before the retry count for it (the
job keeps the earlier attempt's last one beside a newer attempt's). Without a newer checkpoint the loss counts from the
relaunched run's resume report (its own start), else the previous relaunch. Each relaunch is counted in the
daily report of the day the tick recorded it (``seen_at``), so one seen just after midnight is not missed.
Retries seen on a run that has ended are not relaunches (nothing was started again).
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
CHECKPOINT_STEP, CHECKPOINT_AT, RESUMED_FROM = "checkpoint_step", "checkpoint_at", "resumed_from_step"


def checkpoint_fields(
    job: Job, metrics: Mapping[str, float], message: str, attempt: int = 0, at: datetime | None = None
) -> dict[str, Any]:
    """The job's ``checkpoint`` as a newly accepted report (of the run's ``attempt``, sent ``at``) names
    it; nothing when it names none (or an older one than the job has). The checkpoint keeps the attempt
    that saved it and, as ``earlier``, the last one an earlier attempt saved (a Cloud Run retry loses the
    work since that one, even when the tick sees the retry after the new attempt has checkpointed). A
    ``resumed`` report also sets ``resumed_at``: the relaunched run started again there."""
    out: dict[str, Any] = {}
    if RESUMED_FROM in metrics and at is not None:
        out["resumed_at"] = at
    if CHECKPOINT_STEP not in metrics or CHECKPOINT_AT not in metrics:
        return out
    try:
        saved = datetime.fromtimestamp(float(metrics[CHECKPOINT_AT]), UTC)
    except (OverflowError, OSError, ValueError):
        return out
    current = job.checkpoint or {}
    if current.get("at") and datetime.fromisoformat(str(current["at"])) >= saved and RESUMED_FROM in metrics:
        return out  # the resumed checkpoint is the one the job has: it stays the earlier attempt's
    if current.get("at") and datetime.fromisoformat(str(current["at"])) > saved:
        return out
    if RESUMED_FROM in metrics:
        attempt -= 1  # saved by a run before this one
    uri = message.split(" ", 1)[1] if message.startswith("checkpoint ") else current.get("uri")
    checkpoint: dict[str, Any] = {"step": int(metrics[CHECKPOINT_STEP]), "at": saved.isoformat(), "uri": uri}
    checkpoint["attempt"] = attempt
    if current.get("at"):
        if int(current.get("attempt", 0)) < attempt:
            checkpoint["earlier"] = {k: current[k] for k in ("step", "at", "attempt") if k in current}
        elif current.get("earlier"):
            checkpoint["earlier"] = current["earlier"]
    out["checkpoint"] = checkpoint
    return out


def retry_stop(job: Job, retry: int, now: datetime) -> datetime:
    """When the attempt that retry ``retry`` replaced stopped, at the latest: the first report of the
    attempt that followed it (the job's progress keeps its attempt's first report as ``attempt_since``),
    else ``now`` (the tick that sees the retry); never before the previous relaunch. Over- rather than
    under-counted: the failed attempt's own last report may be long before it died."""
    progress = job.progress or {}
    stop = now
    if progress.get("attempt_since") and int(progress.get("attempt", 0)) >= retry:
        stop = min(now, datetime.fromisoformat(str(progress["attempt_since"])))
    return max(stop, job.relaunches[-1].at) if job.relaunches else stop


def _checkpoint_before(job: Job, attempt: int | None) -> dict[str, Any] | None:
    """The job's last checkpoint, or with ``attempt`` the last one saved by an attempt before it."""
    checkpoint = job.checkpoint
    if attempt is None or checkpoint is None:
        return checkpoint
    for candidate in (checkpoint, checkpoint.get("earlier")):
        if candidate and int(candidate.get("attempt", 0)) < attempt:
            return dict(candidate)
    return None


def _lost_since(
    job: Job, at: datetime, started: datetime | None, attempt: int | None
) -> tuple[datetime, str, int | None]:
    """Where the work lost at ``at`` starts, what that time is, and the checkpoint's step (None: none)."""
    candidates: list[tuple[datetime, str]] = []
    start = job.started_at or started
    if start is not None:
        candidates.append((start, "start"))
    if job.relaunches:
        candidates.append((job.relaunches[-1].at, "relaunch"))
    if job.resumed_at is not None and job.resumed_at < at:  # a relaunched run's own start: rescheduling
        candidates.append((job.resumed_at, "resume"))  # time is not work lost (a later run's is not this one's)
    step: int | None = None
    checkpoint = _checkpoint_before(job, attempt)
    if checkpoint and checkpoint.get("at"):
        checkpoint_at = datetime.fromisoformat(str(checkpoint["at"]))
        if checkpoint_at <= at:
            step = int(checkpoint["step"])
            candidates.append((checkpoint_at, "checkpoint"))
        elif checkpoint_at <= at + NOTICE:  # saved on the notice (SIGTERM): nothing was lost
            return at, "checkpoint", int(checkpoint["step"])
    usable = [c for c in candidates if c[0] <= at]
    if not usable:
        return at, "none", step
    since, source = max(usable, key=lambda c: c[0])
    return since, source, step


def relaunched(
    job: Job,
    *,
    at: datetime,
    cause: str,
    key: str,
    seen: datetime,
    started: datetime | None = None,
    attempt: int | None = None,
) -> Job:
    """The job with one more relaunch (and its history event), stopped ``at`` and recorded ``seen`` (the
    daily report counts it on the day it was recorded: one seen after midnight is in the next day's);
    ``started``: the run's start as the backend reports it, for a run not yet recorded as running;
    ``attempt``: the retry's attempt, whose own checkpoints do not count for the stop before it."""
    since, source, step = _lost_since(job, at, started, attempt)
    hours = round(max(0.0, (at - since).total_seconds()) / 3600 * job.resources.gpu, 6)
    relaunch = Relaunch(
        at=at,
        cause=cause,
        key=key,
        checkpoint_step=step,
        lost_since=since,
        lost_since_source=source,
        gpu_hours_lost=hours,
        seen_at=seen,
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
        relaunched_at=max(seen, job.relaunched_at) if job.relaunched_at else seen,
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
        inside = [r for r in job.relaunches if start <= (r.seen_at or r.at) < end]
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
