"""The admission pass of one tenant's queue (the policy is shared/domain/job_queue.py).

It runs in a Firestore transaction that first reads the tenant's queue document, so two passes of
one tenant (a submit and the tick at the same moment) serialize instead of both admitting into the
same free quota; usage is recomputed from the jobs' states inside that transaction. Admitted jobs
are handed to ``fleet-actions`` to launch after the commit; a hand-over that is lost is redone by
the reconcile tick (an admitted job without a backend handle), and launching is idempotent.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from shared.domain import job_queue
from shared.domain import jobs as domain
from shared.domain.jobs import JobState
from shared.platform import logs, metering
from shared.services import handoff
from shared.store import config, db
from shared.store import jobs as store
from shared.training import budget
from shared.training.job_audit import entry

log = logs.get_logger("training.admission")
#: Transaction attempts before a pass gives up (the next tick or submit runs it again).
MAX_ATTEMPTS = 5


def run_pass(tenant: str, now: datetime) -> list[str]:
    """Admit what fits; record for every waiting job why it waits and where it stands. Returns the
    ids admitted (and handed over for launch)."""
    # lazy: google.cloud.firestore is heavy; the client is only needed once a pass runs
    from google.cloud import firestore

    cfg = config.jobs(tenant)
    left = budget.left_of(tenant, now)
    client = db.client()

    @firestore.transactional
    def admit(transaction: Any) -> list[str]:
        queue = store.queue_ref(tenant)
        queue.get(transaction=transaction)
        metering.count(reads=1)
        # The queued jobs in the transaction; the admitted and running ones outside it, so a pass
        # never holds their documents (the tick and progress reports write them): only a pass makes a
        # job active, and passes of a tenant serialize on its queue document.
        queued = [job for job, _ in store.of_tenant(tenant, (JobState.QUEUED,), transaction)]
        holding = [job for job, _ in store.of_tenant(tenant, tuple(domain.ACTIVE))]
        jobs = {job.id: job for job in queued}
        decisions = job_queue.plan(queued, holding, cfg, now, left)
        admitted: list[str] = []
        writes = refused = 0
        for decision in decisions:
            job = jobs[decision.job_id]
            if decision.refuse:
                failed = domain.advance(job, JobState.FAILED, now, f"can no longer be admitted: {decision.reason}")
                transaction.set(store.ref(job.id), failed.to_doc())
                audit = entry(failed, "job.refuse", "system", now, "failed")
                transaction.set(client.collection("audit").document(audit.id), audit.as_doc())
                refused += 1
                writes += 2
            elif decision.admit:
                changed = domain.advance(job, JobState.ADMITTED, now, "admitted: within quotas and budgets")
                transaction.set(store.ref(job.id), changed.to_doc())
                audit = entry(changed, "job.admit", "system", now, "admitted", position=job.position)
                transaction.set(client.collection("audit").document(audit.id), audit.as_doc())
                admitted.append(job.id)
                writes += 2
            elif (job.reason, job.position) != (decision.reason, decision.position):
                transaction.update(store.ref(job.id), {"reason": decision.reason, "position": decision.position})
                writes += 1
        transaction.set(queue, {"tenant": tenant, "passed_at": now, "waiting": len(queued) - len(admitted) - refused})
        metering.count(writes=writes + 1)
        return admitted

    admitted: list[str] = admit(client.transaction(max_attempts=MAX_ATTEMPTS))
    for job_id in admitted:
        hand_over(job_id)
    if admitted:
        logs.log(log, f"{tenant}: admitted {', '.join(admitted)}", tenant=tenant, admitted=admitted)
    return admitted


def try_pass(tenant: str, now: datetime) -> list[str]:
    """A pass after something already stored (a submit, an approval, a cancel): its failure is left to
    the reconcile tick (the tenant's queue is marked waiting) instead of failing what was done."""
    try:
        return run_pass(tenant, now)
    except Exception as exc:
        logs.log(log, f"admission pass of {tenant} left to the tick: {type(exc).__name__}: {exc}", tenant=tenant)
        return []


def hand_over(job_id: str) -> bool:
    """A launch work item for ``fleet-actions``; a failed publish is redone by the reconcile tick."""
    return handoff.hand_over(handoff.JOB_LAUNCH, job_id=job_id)
