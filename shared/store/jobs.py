"""Training jobs (``jobs/{id}``) and each tenant's queue lock (``job_queues/{tenant}``).

Every change of a job is a conditional write (the update time it was read at) with its audit entry
in the same commit, so two writers (the admission pass, a cancel, the reconcile tick, a late progress
report) never overwrite each other: the loser re-reads and decides again.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

from shared.domain.audit import AuditEntry
from shared.domain.jobs import ACTIVE, Job, JobState
from shared.platform import metering
from shared.store import audit as audit_store
from shared.store import db

JOBS = "jobs"
QUEUES = "job_queues"


def ref(job_id: str) -> Any:
    return db.client().collection(JOBS).document(job_id)


def _job(data: dict[str, Any]) -> Job:
    return Job.model_validate(data)


#: Commits of a new job before an aborted one (contention) is raised.
CREATE_ATTEMPTS = 5


def create(job: Job, entry: AuditEntry) -> bool:
    """Store a new job with its audit entry; False when a job with this id exists (a retried request).

    Only ``AlreadyExists`` means that. An aborted commit (contention on the tenant's queue document, which
    another submit's increment or an admission pass's transaction holds) wrote nothing: it is committed
    again, never taken for a duplicate (the request would answer with a job that was never stored)."""
    # lazy: google.cloud libraries load with the first write, as in shared/store/db.py
    from google.api_core import exceptions

    for attempt in range(CREATE_ATTEMPTS):
        batch = db.client().batch()
        batch.create(ref(job.id), job.to_doc())
        audit_store.add(batch, entry)
        writes = 2 + _mark_waiting(batch, job)
        try:
            batch.commit(**db.call_options())
        except exceptions.AlreadyExists:
            metering.count(conflicts=1)
            return False
        except exceptions.Aborted:
            metering.count(conflicts=1)
            if attempt == CREATE_ATTEMPTS - 1:
                raise
            time.sleep(0.05 * 2**attempt)
            continue
        metering.count(writes=writes)
        return True
    raise AssertionError("unreachable")


def _mark_waiting(batch: Any, job: Job) -> int:
    """A job that (re)enters the queue marks its tenant's queue as waiting in the same commit, so the
    reconcile tick passes that tenant even if the pass that should follow never ran (the pass then
    writes the exact count). Returns the writes added."""
    if job.state is not JobState.QUEUED:
        return 0
    from google.cloud import firestore

    batch.set(queue_ref(job.tenant), {"tenant": job.tenant, "waiting": firestore.Increment(1)}, merge=True)
    return 1


def read(job_id: str) -> tuple[Job, Any] | None:
    """The job and its update time (the precondition of :func:`replace`), or None."""
    doc = db.get(ref(job_id))
    if not doc.exists:
        return None
    return _job(doc.to_dict() or {}), doc.update_time


def get(job_id: str) -> Job | None:
    found = read(job_id)
    return found[0] if found else None


def replace(job: Job, update_time: Any, entries: Iterable[AuditEntry] = ()) -> bool:
    """Write the job unless someone changed it since it was read (False then), with audit entries."""
    client = db.client()
    batch = client.batch()
    batch.update(ref(job.id), job.to_doc(), option=client.write_option(last_update_time=update_time))
    entries = tuple(entries)
    for entry in entries:
        audit_store.add(batch, entry)
    writes = 1 + len(entries) + _mark_waiting(batch, job)
    return db.unless_changed(lambda: batch.commit(**db.call_options()), writes=writes) is not None


def change(job_id: str, step: Callable[[Job], tuple[Job, list[AuditEntry]] | None], attempts: int = 5) -> Job | None:
    """Read the job, let ``step`` decide (None: nothing to change) and write it conditionally, again
    when another writer got there first. Returns the job as written (or as found), None if absent."""
    for _ in range(attempts):
        found = read(job_id)
        if found is None:
            return None
        job, update_time = found
        decided = step(job)
        if decided is None:
            return job
        changed, entries = decided
        if replace(changed, update_time, entries):
            return changed
    raise RuntimeError(f"job {job_id} kept changing under {attempts} attempts")


def _where(query: Any, name: str, op: str, value: Any) -> Any:
    from google.cloud.firestore_v1.base_query import FieldFilter

    return query.where(filter=FieldFilter(name, op, value))


def of_tenant(tenant: str, states: Iterable[JobState], transaction: Any = None) -> list[tuple[Job, Any]]:
    """The tenant's jobs in ``states`` with their update times (read in ``transaction`` when given)."""
    query = _where(db.client().collection(JOBS), "tenant", "==", tenant)
    query = _where(query, "state", "in", [s.value for s in states])
    docs = list(query.stream(transaction=transaction) if transaction is not None else query.stream(**db.call_options()))
    metering.count(reads=max(1, len(docs)))
    return [(_job(d.to_dict() or {}), d.update_time) for d in docs]


#: Most active jobs one reconcile tick lists.
ACTIVE_PAGE = 500


def active(limit: int = ACTIVE_PAGE) -> list[tuple[Job, Any]]:
    """Every admitted or running job (the reconcile tick follows each with its backend)."""
    query = _where(db.client().collection(JOBS), "state", "in", [s.value for s in ACTIVE]).limit(limit)
    docs = list(query.stream(**db.call_options()))
    metering.count(reads=max(1, len(docs)))
    return [(_job(d.to_dict() or {}), d.update_time) for d in docs]


def unsettled(limit: int = 100) -> list[Job]:
    """Finished jobs whose cost or notice is still owed (a crash or Slack outage in between)."""
    docs = list(_where(db.client().collection(JOBS), "unsettled", "==", True).limit(limit).stream(**db.call_options()))
    metering.count(reads=max(1, len(docs)))
    return [_job(d.to_dict() or {}) for d in docs]


#: Jobs read per page of :func:`relaunched_since`.
RELAUNCH_PAGE = 500


def relaunched_since(at: datetime, tenant: str | None = None, page_size: int = RELAUNCH_PAGE) -> list[Job]:
    """Jobs whose run was last relaunched (recorded) at or after ``at``, of ``tenant`` (None: every tenant),
    oldest first, all of them (read in pages): the daily report's GPU-hours lost. A job relaunched that day
    and again later is found too. The tenant's query uses the tenant + relaunched_at index (topology.yaml)."""
    query: Any = db.client().collection(JOBS)
    if tenant is not None:
        query = _where(query, "tenant", "==", tenant)
    query = _where(query, "relaunched_at", ">=", at).order_by("relaunched_at")
    jobs: list[Job] = []
    last: Any = None
    while True:
        page = list((query if last is None else query.start_after(last)).limit(page_size).stream(**db.call_options()))
        metering.count(reads=max(1, len(page)))
        jobs += [_job(d.to_dict() or {}) for d in page]
        if len(page) < page_size:
            return jobs
        last = page[-1]


def tenants_waiting(limit: int = 1000) -> set[str]:
    """Tenants with queued jobs (the tick's admission passes: priorities age, budgets reset), from the
    queue documents: one read per such tenant, not per waiting job."""
    query = _where(db.client().collection(QUEUES), "waiting", ">", 0).limit(limit)
    docs = list(query.stream(**db.call_options()))
    metering.count(reads=max(1, len(docs)))
    return {str((d.to_dict() or {}).get("tenant") or d.id) for d in docs}


def list_jobs(
    *, tenant: str | None, state: str | None, agent_id: str | None, limit: int, before: datetime | None = None
) -> list[Job]:
    """Newest first; by tenant, and one of state or agent."""
    query: Any = db.client().collection(JOBS)
    for name, value in (("tenant", tenant), ("state", state), ("agent_id", agent_id)):
        if value is not None:
            query = _where(query, name, "==", value)
    if before is not None:
        query = _where(query, "created_at", "<", before)
    docs = list(query.order_by("created_at", direction="DESCENDING").limit(limit).stream(**db.call_options()))
    metering.count(reads=max(1, len(docs)))
    return [_job(d.to_dict() or {}) for d in docs]


def queue_ref(tenant: str) -> Any:
    return db.client().collection(QUEUES).document(tenant)
