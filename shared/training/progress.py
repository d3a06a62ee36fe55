"""A training run's own reports (``job-progress``, sent with fleet_agent.jobs.JobReporter).

The latest report by ``seq`` is kept on the job (``progress``); a final one's metrics become the job's
``result``. A redelivered or reordered report (``seq`` not above the stored one) changes nothing, so
the handler is idempotent. The job's *state* stays the backend's word (the reconcile tick).

A report names its agent (``agent_id``, the job's agent): it is signed by that agent's key, checked on
the agent document as this instance last saw it (at most FLEET_CONFIG_CACHE_S old; a refusal is
confirmed on a fresh read) before the job is read. Reports are few (one per logged step), so this read
is about one per agent and instance every FLEET_CONFIG_CACHE_S, not one per report.
"""

from __future__ import annotations

from fleet_agent.contracts import JobPhase, JobProgress

from shared.domain.agent_record import Plan
from shared.domain.audit import AuditEntry
from shared.domain.jobs import Job
from shared.domain.rejections import Code, Rejected
from shared.pipeline import signatures
from shared.pipeline.decoding import Decoded
from shared.platform import settings
from shared.store import agents as agent_store
from shared.store import jobs as store


def process(decoded: Decoded) -> Plan:
    event = decoded.event
    assert isinstance(event, JobProgress)
    max_age = settings.get().config_cache_s
    snap, _key = signatures.check_fresh(decoded, lambda: agent_store.current(event.agent_id, max_age))
    if snap is None:  # a job names an agent that exists: no report of an unknown agent is believed
        raise Rejected(Code.UNKNOWN_JOB, f"agent {event.agent_id} of job {event.job_id} is not registered",
                       agent_id=event.agent_id)  # fmt: skip
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
