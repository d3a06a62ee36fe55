"""A training run's own reports (``job-progress``, sent with fleet_agent.jobs.JobReporter).

The latest report by ``seq`` is kept on the job (``progress``); a final one's metrics become the job's
``result``. A redelivered or reordered report (``seq`` not above the stored one) changes nothing, so
the handler is idempotent. The job's *state* stays the backend's word (the reconcile tick).
"""

from __future__ import annotations

from fleet_agent.contracts import JobPhase, JobProgress

from shared.domain.agent_record import Plan
from shared.domain.audit import AuditEntry
from shared.domain.jobs import Job
from shared.domain.rejections import Code, Rejected
from shared.pipeline.decoding import Decoded
from shared.store import jobs as store


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
        if job.agent_id != event.agent_id:
            raise Rejected(
                Code.UNKNOWN_JOB, f"job {event.job_id} belongs to agent {job.agent_id}", agent_id=event.agent_id
            )
        if job.progress is not None and int(job.progress.get("seq", -1)) >= event.seq:
            outcome[:] = ["duplicate"]
            return None
        outcome.clear()
        update: dict[str, object] = {"progress": report}
        if event.phase in (JobPhase.SUCCEEDED, JobPhase.FAILED):
            update["result"] = {**dict(event.metrics), "phase": event.phase.value, "message": event.message}
        return job.model_copy(update=update), []

    if store.change(event.job_id, step) is None:  # one read when the report is recorded
        raise Rejected(Code.UNKNOWN_JOB, f"job {event.job_id} does not exist", agent_id=event.agent_id)
    return Plan(skipped=outcome[0] if outcome else None)
