"""A training run's own reports (``job-progress``, sent with fleet_agent.jobs.JobReporter).

The latest report by ``seq`` is kept on the job (``progress``); a final one's metrics become the job's
``result``. A redelivered or reordered report (``seq`` not above the stored one) changes nothing, so
the handler is idempotent. The job's *state* stays the backend's word (the reconcile tick).

A report is proven by its job's own key (shared/training/job_keys.py: minted at launch, its public half
on the job, its private half given to the run alone), checked on the job document the handler reads
anyway, before anything is decided: no agent document is read. The key verifies reports Pub/Sub
received while the job was not final (shared/domain/identity.py ``check_job``). A job launched without a
key (no fleet key configured) is held to its tenant's identity policy like an agent without a key.
"""

from __future__ import annotations

from fleet_agent.contracts import JobPhase, JobProgress

from shared.domain import identity, job_relaunch
from shared.domain.agent_record import Plan
from shared.domain.audit import AuditEntry
from shared.domain.jobs import Job
from shared.domain.rejections import Code, Rejected
from shared.pipeline.decoding import Decoded
from shared.store import config
from shared.store import jobs as store


def check(decoded: Decoded, job: Job, agent_id: str) -> None:
    """``decoded`` (a report for ``job``) is signed by the job's key while the job runs. Raises Rejected."""
    unsigned_unkeyed = decoded.signature is None and job.job_key is None
    identity.check_job(
        job.job_key,
        job.finished_at if job.final else None,
        decoded.signature,
        decoded.signed_bytes(job.tenant),
        # The policy matters only to an unsigned report of a job without a key: read (cached) only then.
        policy=config.identity(job.tenant).policy if unsigned_unkeyed else identity.Policy.REQUIRED,
        received_at=decoded.message.published_at,
        agent_id=agent_id,
        tenant=job.tenant,
    )


def process(decoded: Decoded) -> Plan:
    event = decoded.event
    assert isinstance(event, JobProgress)
    report = {
        "phase": event.phase.value,
        "step": event.step,
        "total_steps": event.total_steps,
        "metrics": dict(event.metrics),
        "message": event.message,
        "seq": event.seq,
        "attempt": event.attempt,
        "at": event.at.isoformat(),
    }
    outcome: list[str] = []

    def step(job: Job) -> tuple[Job, list[AuditEntry]] | None:
        check(decoded, job, event.agent_id)  # first: nothing an unproven report says is looked at
        if job.agent_id != event.agent_id:
            raise Rejected(
                Code.UNKNOWN_JOB, f"job {event.job_id} belongs to agent {job.agent_id}", agent_id=event.agent_id
            )
        if job.progress is not None and int(job.progress.get("seq", -1)) >= event.seq:
            outcome[:] = ["duplicate"]
            return None
        outcome.clear()
        previous = job.progress or {}
        same_attempt = previous.get("attempt_since") and int(previous.get("attempt", 0)) == event.attempt
        report["attempt_since"] = previous["attempt_since"] if same_attempt else report["at"]  # dates a retry
        update: dict[str, object] = {"progress": report}
        fields = job_relaunch.checkpoint_fields(job, event.metrics, event.message, event.attempt, event.at)
        update.update(fields)  # GPU-hours lost count from it
        if event.phase in (JobPhase.SUCCEEDED, JobPhase.FAILED):
            update["result"] = {**dict(event.metrics), "phase": event.phase.value, "message": event.message}
        return job.model_copy(update=update), []

    if store.change(event.job_id, step) is None:  # one read when the report is recorded
        raise Rejected(Code.UNKNOWN_JOB, f"job {event.job_id} does not exist", agent_id=event.agent_id)
    return Plan(skipped=outcome[0] if outcome else None)
