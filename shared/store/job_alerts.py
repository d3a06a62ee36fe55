"""The reads of the job alerts (shared/services/job_alerts.py): a tenant's queue (a count and its oldest
queued job), the jobs that ended in a UTC day (two counts), and the tenants whose alert document has
open job episodes. Every read is counted (shared/platform/metering); a count aggregation is one read per
1,000 index entries, counted as one.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from shared.domain import job_alerts as rules
from shared.domain.jobs import JobState
from shared.platform import metering
from shared.store import db
from shared.store import episodes as episode_store
from shared.store import jobs as job_store


def _jobs_of(tenant: str, states: list[JobState]) -> Any:
    query = job_store._where(db.client().collection(job_store.JOBS), "tenant", "==", tenant)
    if len(states) == 1:
        return job_store._where(query, "state", "==", states[0].value)
    return job_store._where(query, "state", "in", [s.value for s in states])


def _count(query: Any) -> int:
    result = query.count().get(**db.call_options())
    metering.count(reads=1)
    return int(result[0][0].value)


def queue(tenant: str) -> tuple[int, datetime | None]:
    """How many jobs the tenant has queued, and when the longest-waiting one entered the queue."""
    queued = _count(_jobs_of(tenant, [JobState.QUEUED]))
    if not queued:
        return 0, None
    docs = list(_jobs_of(tenant, [JobState.QUEUED]).order_by("queued_at").limit(1).stream(**db.call_options()))
    metering.count(reads=1)
    oldest = (docs[0].to_dict() or {}).get("queued_at") if docs else None
    return queued, oldest if isinstance(oldest, datetime) else None


def ended_since(tenant: str, since: datetime, before: datetime | None = None) -> tuple[int, int]:
    """The tenant's jobs that succeeded or failed since ``since`` (their ``finished_at``; before ``before``
    when given), and of them failed."""

    def window(query: Any) -> Any:
        query = job_store._where(query, "finished_at", ">=", since)
        return query if before is None else job_store._where(query, "finished_at", "<", before)

    ended = _count(window(_jobs_of(tenant, [JobState.SUCCEEDED, JobState.FAILED])))
    if not ended:
        return 0, 0
    failed = _count(window(_jobs_of(tenant, [JobState.FAILED])))
    return ended, failed


def tenants_open(limit: int = 1000) -> set[str]:
    """Tenants whose alert document has open job episodes (to resolve them once their condition clears)."""
    collection = db.client().collection(episode_store.TENANT_ALERTS)
    docs = list(job_store._where(collection, rules.OPEN_FLAG, "==", True).limit(limit).stream(**db.call_options()))
    metering.count(reads=max(1, len(docs)))
    return {str((d.to_dict() or {}).get("tenant") or d.id) for d in docs}
