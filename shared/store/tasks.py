"""Task assignments (``tasks/{task_id}``) and each agent's outcome summary (``task_stats/{agent_id}``).

- **Assign** (:func:`create`): one atomic batch creates the task document (the pick, its reasons and
  the chosen agent's features at that moment), counts the assignment on the agent's summary (a counter
  and the time in one of ``ASSIGNED_SLOTS`` slots: load the next heartbeat will report) and writes the
  audit entry. ``create`` fails when the task exists, so a retried request changes nothing and gets
  the stored pick.
- **Outcome** (:func:`record_outcome`): reads the task and the agent's summary, then writes the outcome
  on the task, the summary advanced by it and the audit entry in one batch, conditional on both being
  unchanged since they were read. The task document says whether an outcome is recorded, so a retried
  or concurrent request finds it and never counts one twice.
- **Reads** the assignment needs are one per candidate (:func:`stats_of`) and, when a model is in service,
  one count (:func:`outcomes_at_least`); training reads a tenant's recent outcomes (:func:`recent_outcomes`,
  index ``tasks``: tenant, outcome_at desc).
- **Settings**: the tenant's ``tasks`` overrides (``tenants/{tenant}.tasks``: weights, min_outcomes),
  cached like the other tenant settings.
"""

from __future__ import annotations

import functools
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from shared.domain.assignment_agents import AgentStats, RecordedOutcome
from shared.domain.assignment_tasks import AssignmentConfig, OutcomeReport
from shared.domain.audit import AuditEntry
from shared.domain.periods import Period, window
from shared.domain.usage import Totals
from shared.platform import metering
from shared.store import audit as audit_store
from shared.store import config, db
from shared.store import usage as usage_store

TASKS = "tasks"
STATS = "task_stats"
#: Seconds an instance trusts a tenant's outcome count once it reached the threshold (it only grows).
COUNT_CACHE_S = 300.0
#: Documents per batched read.
GET_ALL_CHUNK = 300
#: Attempts at the outcome's conditional write before giving up (each loser reads again).
MAX_ATTEMPTS = 8


def ref(task_id: str) -> Any:
    return db.client().collection(TASKS).document(task_id)


def stats_ref(agent_id: str) -> Any:
    return db.client().collection(STATS).document(agent_id)


def get(task_id: str) -> dict[str, Any] | None:
    """The task document (one read), or None."""
    doc = db.get(ref(task_id))
    return (doc.to_dict() or {}) if doc.exists else None


def create(doc: dict[str, Any], *, slot: str, entry: AuditEntry) -> bool:
    """Store a new assignment with the agent's assignment count and the audit entry, atomically. False
    when the task exists already (a retried or concurrent request): nothing is written then."""
    from google.cloud import firestore

    batch = db.client().batch()
    batch.create(ref(doc["task_id"]), doc)
    counted = {
        "agent_id": doc["agent_id"],
        "tenant": doc["tenant"],
        "assigned": firestore.Increment(1),
        "assigned_at": {slot: doc["assigned_at"]},
    }
    batch.set(stats_ref(doc["agent_id"]), counted, merge=True)
    audit_store.add(batch, entry)
    return db.unless_changed(lambda: batch.commit(**db.call_options()), writes=3) is not None


def stats_of(agent_ids: Sequence[str]) -> dict[str, AgentStats]:
    """The outcome summaries of these agents (one read each, batched); an agent without one has none."""
    client = db.client()
    out = {agent_id: AgentStats() for agent_id in agent_ids}
    ids = list(agent_ids)
    for start in range(0, len(ids), GET_ALL_CHUNK):
        docs = list(client.get_all([stats_ref(a) for a in ids[start : start + GET_ALL_CHUNK]], **db.call_options()))
        metering.count(reads=len(docs))
        for doc in docs:
            if doc.exists:
                out[doc.id] = AgentStats.from_doc(doc.to_dict())
    return out


Recorded = Literal["recorded", "same", "conflict", "missing"]


@dataclass(frozen=True)
class OutcomeResult:
    #: recorded: written now; same: this outcome was recorded already (nothing written); conflict: a
    #: different one was; missing: no such task (or the caller may not see it).
    status: Recorded
    task: dict[str, Any] | None


def record_outcome(
    task_id: str,
    report: OutcomeReport,
    *,
    at: datetime,
    actor: str,
    visible: Callable[[str], bool],
    entry: Callable[[dict[str, Any]], AuditEntry],
) -> OutcomeResult:
    """Record the outcome of an assigned task and advance its agent's summary, atomically.

    Optimistic, like the other stores: read the task and the summary, then write both (and the audit
    entry) in one batch on the condition that neither changed since. A writer that lost (a concurrent
    outcome of the task, an assignment to the agent) reads again and decides again, so it finds the
    outcome recorded and changes nothing: nothing is counted twice and no lock is held."""
    client = db.client()
    task_ref = ref(task_id)
    for attempt in range(1, MAX_ATTEMPTS + 1):
        snap = db.get(task_ref)
        task = (snap.to_dict() or {}) if snap.exists else None
        if task is None or not visible(str(task.get("tenant"))):
            return OutcomeResult("missing", None)
        stored = task.get("outcome")
        if stored is not None:
            return OutcomeResult("same" if report.same_as(stored) else "conflict", task)
        agent_ref = stats_ref(task["agent_id"])
        stats_snap = db.get(agent_ref)
        stats = AgentStats.from_doc(stats_snap.to_dict() if stats_snap.exists else None)
        advanced = stats.with_outcome(
            success=report.success,
            capabilities=task.get("required_capabilities") or [],
            at=at,
            estimated_duration_s=float(task.get("estimated_duration_s") or 0.0),
            duration_s=report.duration_s,
            cost_nanos=report.cost_nanos,
        )
        changes = {
            "state": "succeeded" if report.success else "failed",
            "outcome": {**report.as_doc(), "recorded_at": at, "recorded_by": actor},
            "outcome_at": at,
            "success": report.success,
        }
        stats_fields = {"agent_id": task["agent_id"], "tenant": task["tenant"], **advanced.outcome_fields()}
        updated = {**task, **changes}
        batch = client.batch()
        batch.update(task_ref, changes, option=client.write_option(last_update_time=snap.update_time))
        if stats_snap.exists:  # whole fields replaced (the capability map too: it was read above)
            batch.update(agent_ref, stats_fields, option=client.write_option(last_update_time=stats_snap.update_time))
        else:
            batch.create(agent_ref, stats_fields)
        audit_store.add(batch, entry(updated))
        if db.unless_changed(functools.partial(batch.commit, **db.call_options()), writes=3) is not None:
            return OutcomeResult("recorded", updated)
        time.sleep(random.uniform(0.0, 0.02) * attempt)  # another writer got there first: read again
    raise RuntimeError(f"task {task_id}: {MAX_ATTEMPTS} conflicting writes in a row")


def _where(query: Any, name: str, op: str, value: Any) -> Any:
    from google.cloud.firestore_v1.base_query import FieldFilter

    return query.where(filter=FieldFilter(name, op, value))


def _outcomes_query(tenant: str | None) -> Any:
    """The (tenant's) tasks with an outcome, newest outcome first (a task without one has no
    ``outcome_at`` and is not in the order)."""
    query: Any = db.client().collection(TASKS)
    if tenant is not None:
        query = _where(query, "tenant", "==", tenant)
    return query.order_by("outcome_at", direction="DESCENDING")


def recent_outcomes(tenant: str | None, limit: int = 5000, before: datetime | None = None) -> list[RecordedOutcome]:
    """The most recent outcomes of a tenant (None: of every tenant, for the fleet-wide model), before
    ``before``, newest first, as training rows."""
    query = _outcomes_query(tenant)
    if before is not None:
        query = _where(query, "outcome_at", "<", before)
    docs = list(query.limit(limit).stream(**db.call_options()))
    metering.count(reads=max(1, len(docs)))
    out = []
    for doc in docs:
        data = doc.to_dict() or {}
        if data.get("outcome") is None or not isinstance(data.get("features"), dict):
            continue
        out.append(
            RecordedOutcome(
                task_id=str(data.get("task_id") or doc.id),
                tenant=str(data["tenant"]),
                agent_id=str(data["agent_id"]),
                success=bool(data["outcome"]["success"]),
                at=data["outcome_at"],
                features={str(k): float(v) for k, v in data["features"].items()},
            )
        )
    return out


class _Counts:
    """Per instance: a tenant's outcome count once it reached a threshold (it never falls below again)."""

    def __init__(self) -> None:
        self._reached: dict[tuple[str, int], float] = {}
        self._lock = threading.Lock()

    def reached(self, tenant: str, at_least: int) -> bool:
        with self._lock:
            seen = self._reached.get((tenant, at_least))
        return seen is not None and time.monotonic() - seen < COUNT_CACHE_S

    def remember(self, tenant: str, at_least: int) -> None:
        with self._lock:
            self._reached[(tenant, at_least)] = time.monotonic()

    def clear(self) -> None:
        with self._lock:
            self._reached.clear()


counts = _Counts()


def outcomes_at_least(tenant: str, at_least: int) -> int:
    """How many outcomes the tenant has recorded, counted up to ``at_least`` (a count aggregation: one
    read). Once the count reached it, the instance remembers that for ``COUNT_CACHE_S``."""
    if at_least <= 0 or counts.reached(tenant, at_least):
        return at_least
    result = _outcomes_query(tenant).limit(at_least).count().get(**db.call_options())
    metering.count(reads=1)
    found = int(result[0][0].value)
    if found >= at_least:
        counts.remember(tenant, at_least)
    return found


@dataclass(frozen=True)
class Spend:
    """An agent's spend this month (the cost fallback when it has no recorded task costs)."""

    totals: Totals
    month_start: datetime


def spend_this_month(agent_ids: Sequence[str], now: datetime) -> dict[str, Spend]:
    """The month counters (``m`` only) of these agents' usage documents: one read each, batched."""
    month = window(Period.MONTH, now)
    client = db.client()
    collection = client.collection(usage_store.USAGE)
    out: dict[str, Spend] = {}
    ids = list(agent_ids)
    for start in range(0, len(ids), GET_ALL_CHUNK):
        chunk = ids[start : start + GET_ALL_CHUNK]
        refs = [collection.document(usage_store.agent_month_id(a, month.key)) for a in chunk]
        docs = list(client.get_all(refs, field_paths=["m"], **db.call_options()))
        metering.count(reads=len(docs))
        by_id = {usage_store.agent_month_id(a, month.key): a for a in chunk}
        for doc in docs:
            if doc.exists and doc.id in by_id:
                out[by_id[doc.id]] = Spend(Totals.from_dict((doc.to_dict() or {}).get("m")), month.starts_at)
    return out


def assignment_config(tenant: str) -> AssignmentConfig:
    """The tenant's task-assignment settings over the defaults (``PUT /v1/tenants/{t}/tasks``; the tenant's
    settings are cached ``FLEET_CONFIG_CACHE_S``)."""
    return AssignmentConfig.for_tenant(config.tenant(tenant).tasks)
