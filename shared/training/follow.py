"""The reconcile tick (schedule ``jobs-reconcile``, every minute) and cancel.

Each admitted or running job is compared with its backend (shared/domain/job_runs.py decides):
state changes, preemptions, cost so far, stalls, the end. A finished job is *settled*: its actual
cost is charged to its agent's usage exactly once (a cost batch named after the job, counted by
``fleet-costs`` like any other, so budgets and holds apply; signed by the fleet key, the only key
the cost path believes for a ``job.`` batch), and a Slack requester is told. Then
every tenant with waiting jobs gets an admission pass (quota freed, priorities aged).
"""

from __future__ import annotations

import contextvars
import os
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from fleet_agent.contracts import CostBatch, CostRecord, EventType, encode

from shared.domain import job_runs
from shared.domain import jobs as domain
from shared.domain.audit import AuditEntry
from shared.domain.jobs import Job, JobState
from shared.domain.run_phase import FINAL_PHASES
from shared.launchers import registry
from shared.launchers.base import Handle, LaunchError
from shared.platform import fleet_key, logs, metering, settings, topology
from shared.services import agent_commands, agent_controls, approvals, job_alerts
from shared.slack import web_api
from shared.store import config, db
from shared.store import jobs as store
from shared.training import admission, launch
from shared.training.job_audit import entry

log = logs.get_logger("training.follow")
#: An admitted job without a handle this long after admission lost its launch: launch it again.
LAUNCH_GRACE_S = int(os.environ.get("FLEET_JOB_LAUNCH_GRACE_S", "60"))
#: Jobs compared with their backends at the same time by one tick.
FOLLOW_WORKERS = 8
#: A cost record holds at most this (the contract's per-call limit); larger costs take several.
_MAX_RECORD_USD = Decimal(10000)


def reconcile(now: datetime) -> dict[str, Any]:
    """Follow every active job, settle finished ones, run the admission passes. Jobs are followed
    ``FOLLOW_WORKERS`` at a time (each is a backend call or two); a backend that fails is logged and
    retried next minute, it does not stop the others."""
    counts: dict[str, Any] = {"followed": 0, "changed": 0, "finished": 0, "relaunched": 0, "errors": 0}
    tenants: set[str] = set()
    rows = store.active()
    written: dict[str, Job] = {}  # each job as follow wrote it (the job alerts judge stalls on these)
    finished: set[str] = set()
    with ThreadPoolExecutor(max_workers=FOLLOW_WORKERS) as pool:
        futures = [
            (job, pool.submit(contextvars.copy_context().run, follow, job, now, update_time, written))
            for job, update_time in rows
        ]
        for job, future in futures:
            counts["followed"] += 1
            try:
                outcome = future.result()
            except LaunchError as exc:
                counts["errors"] += 1
                logs.log(log, f"job {job.id}: {job.backend.value} unavailable: {exc.reason}", job_id=job.id)
                continue
            except Exception as exc:  # Firestore or Pub/Sub trouble with this job: the next tick retries it
                counts["errors"] += 1
                logs.log(log, f"job {job.id} not followed: {type(exc).__name__}: {exc}", job_id=job.id)
                continue
            counts[outcome] = counts.get(outcome, 0) + 1
            if outcome == "finished":
                tenants.add(job.tenant)
                finished.add(job.id)
    for job in store.unsettled():
        try:
            settle(job, now)
        except Exception as exc:  # Pub/Sub or Slack trouble with this one: the next tick tries again
            counts["errors"] += 1
            logs.log(log, f"job {job.id} not settled: {type(exc).__name__}: {exc}", job_id=job.id)
    waiting = store.tenants_waiting()
    tenants |= waiting
    counts["admitted"] = 0
    for tenant in sorted(tenants):
        try:
            counts["admitted"] += len(admission.run_pass(tenant, now))
        except Exception as exc:
            counts["errors"] += 1
            logs.log(log, f"admission pass of {tenant} failed: {type(exc).__name__}: {exc}", tenant=tenant)
    # docs/jobs.md "Job alerts": stalls judged on the jobs as this tick left them (not as it listed them).
    listed = [written.get(job.id, job) for job, _ in rows if job.id not in finished]
    counts["alerts"] = job_alerts.tick(now, listed, waiting, complete=len(rows) < store.ACTIVE_PAGE)
    return counts


def follow(job: Job, now: datetime, update_time: Any = None, written_to: dict[str, Job] | None = None) -> str:
    """One job against its backend; returns unchanged, changed, finished or relaunched. With the
    ``update_time`` the job was listed at, a job that changed nothing costs no further read. ``written_to``
    gets the job as it was written (when it was)."""
    handle = Handle.from_doc(job.handle) if job.handle else None
    trouble: LaunchError | None = None
    if handle is None and job.admitted_at is not None and (now - job.admitted_at).total_seconds() > LAUNCH_GRACE_S:
        try:
            if launch.launch(job.id, now) == "launched":
                return "relaunched"
        except LaunchError as exc:  # the stall and release rules below still apply
            trouble = exc
        job, update_time = store.get(job.id) or job, None
        handle = Handle.from_doc(job.handle) if job.handle else None
    status = None
    if handle is not None:
        try:
            status = registry.get(job.backend).status(handle)
        except LaunchError as exc:
            trouble = exc
            if not exc.transient:  # the backend refuses for good (cluster gone, settings changed)
                stop(
                    job,
                    JobState.FAILED,
                    f"{job.backend.value} refuses to report on the run: {exc.reason}",
                    "system",
                    now,
                )
                return "finished"
    cfg = config.jobs(job.tenant)
    stops: list[job_runs.Stop] = []

    def step(current: Job) -> tuple[Job, list[AuditEntry]] | None:
        stops.clear()
        if not current.active:
            return None
        observed = job_runs.observe(current, status, now, cfg)
        if observed.stop is not None:
            stops.append(observed.stop)
        if observed.job is None:
            return None
        changed = observed.job
        entries = []
        if changed.state is not current.state:
            entries.append(entry(changed, f"job.{changed.state.value}", "system", now, changed.state.value))
        return changed, entries

    written: Job | None
    if update_time is None:
        written = store.change(job.id, step)
    else:
        decided = step(job)
        if decided is None:
            written = job
        elif store.replace(decided[0], update_time, decided[1]):
            written = decided[0]
        else:  # changed since it was listed (a cancel, a progress report): decide again on a fresh read
            written = store.change(job.id, step)
    if written is None:
        return "unchanged"
    if written_to is not None:
        written_to[job.id] = written
    if stops and written.active:
        stop(written, stops[0].state, stops[0].reason, "system", now)
        return "finished"
    if written.final:
        settle(written, now)
        return "finished"
    if trouble is not None:
        raise trouble  # counted as an error of this tick; the next one tries again
    return "unchanged" if written == job else "changed"


def stop(job: Job, state: JobState, reason: str, by: str, now: datetime) -> Job | None:
    """Record the job as ``state``, then stop its run on the backend with the handle as written (a
    launch that recorded its handle meanwhile is seen). A stop the backend could not do now stays due
    (``stop_pending``): settling retries it, so no run outlives its job."""

    def step(current: Job) -> tuple[Job, list[AuditEntry]] | None:
        if current.final:
            return None
        changed = domain.advance(current, state, now, reason[:500], by, stop_pending=current.handle is not None)
        changed = changed.model_copy(update={"cost_usd": domain.cost_so_far(changed, now)})
        return changed, [entry(changed, f"job.{state.value}", by, now, state.value)]

    written = store.change(job.id, step)
    if written is not None and written.final:
        try:
            settle(written, now)
        except Exception as exc:  # the run is stopped or its stop is due; the tick settles it again
            logs.log(log, f"job {job.id} not settled yet: {type(exc).__name__}: {exc}", job_id=job.id)
    return written


def cancel(job_id: str, actor: agent_controls.Actor, now: datetime, reason: str = "") -> Job:
    """Cancel a job for ``actor``: a waiting job at once, a launched one on its backend first."""
    job = store.get(job_id)
    if job is None or not actor.can_see(job.tenant):
        raise agent_controls.Refused(404, f"job {job_id} not found")
    if job.final:
        raise agent_controls.Refused(409, f"job {job_id} is already {job.state.value}")
    if job.handle:  # a run that has just ended is recorded as it ended, not as cancelled
        try:
            ended = registry.get(job.backend).status(Handle.from_doc(job.handle)).phase in FINAL_PHASES
        except LaunchError:
            ended = False  # the backend cannot say now: cancel; its stop is retried until it is done
        if ended:
            follow(job, now)
            found = store.get(job_id) or job
            raise agent_controls.Refused(409, f"job {job_id} has just {found.state.value}: {found.reason}"[:500])
    said = f"cancelled by {actor.name}" + (f": {reason}" if reason else "")
    written = stop(job, JobState.CANCELLED, said, actor.name, now)
    if written is None:
        raise agent_controls.Refused(404, f"job {job_id} not found")
    if job.state is JobState.AWAITING_APPROVAL and job.approval_id:  # nothing left to decide
        approvals.withdraw(job.approval_id, now, f"the job was {said}")
    if job.active:
        admission.try_pass(job.tenant, now)
    return store.get(job_id) or written


def settle(job: Job, now: datetime) -> None:
    """Charge a finished job's cost once and tell a Slack requester; then it is settled."""
    if not job.final or not job.unsettled:
        return
    stopped = not job.stop_pending or launch.stop_run(job)
    released = job.released or (stopped and _release(job))
    if not job.charged and job.cost_usd > 0:
        charge(job)
    told = job.notified or _tell_requester(job)
    alerted = job_alerts.on_final(job, now)  # once: the episode is a create under the job's id
    fields: dict[str, Any] = {
        "charged": True,
        "notified": told,
        "stop_pending": not stopped,
        "released": released,
        "unsettled": not (told and stopped and released and alerted),
    }
    store.ref(job.id).update(fields, **db.call_options())
    metering.count(writes=1)


def _release(job: Job) -> bool:
    """Free what the backend keeps of the ended run (a Cloud Run job); False when it cannot now."""
    return launch.on_backend(job, "released", lambda launcher, handle: launcher.release(handle))


def charge(job: Job) -> str:
    """The job's actual cost as a cost batch of its agent (batch id from the job id: counted once)."""
    records = []
    left, part = job.cost_usd, 0
    at = job.finished_at or job.updated_at
    if (datetime.now(UTC) - at).total_seconds() > 23 * 3600:  # settled late (a long outage): counted now,
        at = datetime.now(UTC)  # as fleet-costs refuses calls more than 24 h old
    while left > 0:
        amount = min(left, _MAX_RECORD_USD)
        records.append(
            CostRecord(
                call_id=f"{job.id}.{part}",
                at=at,
                model=f"job:{job.backend.value}:{job.resources.gpu_type or ('gpu' if job.resources.gpu else 'cpu')}",
                input_tokens=0,
                output_tokens=0,
                cost_usd=amount,
                success=True,
                latency_ms=min(domain.runtime_s(job, at) * 1000, 86_400_000),
                operation="training-job",
            )
        )
        left -= amount
        part += 1
    batch = CostBatch(agent_id=job.agent_id, batch_id=f"job.{job.id}", records=records)
    # Signed by the fleet key: the cost path believes a ``job.`` batch from the fleet only (docs/security.md).
    body, attributes = encode(batch, event_id=f"job.{job.id}", signer=fleet_key.get(), tenant=job.tenant)
    client = agent_commands.publisher()
    topic = client.topic_path(settings.get().project, topology.load().topic_for(EventType.COST.value).name)
    message_id = str(client.publish(topic, body, **attributes).result(timeout=agent_commands.PUBLISH_TIMEOUT_S))
    metering.count_publish()
    return message_id


def _tell_requester(job: Job) -> bool:
    """A direct message to a Slack requester; False when Slack is unavailable (the tick tries again).
    API requesters read the job (``GET /v1/jobs/{id}``)."""
    kind, _, user = job.requested_via.partition(":")
    if kind != "slack" or not user:
        return True
    cost = f"${job.cost_usd}" if job.cost_usd else "no cost"
    metrics = ""
    if job.result:
        shown = {k: v for k, v in job.result.items() if isinstance(v, int | float)}
        metrics = " · " + ", ".join(f"{k} {v:.3g}" for k, v in list(shown.items())[:6])
    text = f"Training job `{job.name}` ({job.id}) {job.state.value}: {job.reason or 'done'} · {cost}{metrics}"
    try:
        web_api.post(user, text)
    except web_api.SlackRefused as exc:
        logs.log(log, f"requester of {job.id} not told: {exc.error}", job_id=job.id)
    except web_api.SlackUnavailable as exc:
        logs.log(log, f"requester of {job.id} not told yet: {exc}", job_id=job.id)
        return False
    return True
