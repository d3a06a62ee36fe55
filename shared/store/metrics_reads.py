"""The bounded reads behind ``GET /metrics`` (shared/api/metrics.py): projections of the agents not
decommissioned, the open episodes and the waiting or active jobs (one read per document, each capped), and
one count aggregation per rejection code over the last hour (one read each, whatever the volume). Each
counts its reads."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from shared.domain.jobs import ACTIVE
from shared.domain.metrics import AGENT_STATUSES, PENDING
from shared.platform import metering
from shared.store import db
from shared.store.agents import AGENTS
from shared.store.episodes import EPISODES
from shared.store.jobs import JOBS
from shared.store.rejections import REJECTIONS

#: Documents read per page of a projection.
PAGE = 1000


def _projected(query: Any, fields: list[str], cap: int) -> tuple[list[dict[str, Any]], bool]:
    """Up to ``cap`` documents of ``query`` (only ``fields``), by id, a page at a time; and whether there were
    more. Each document is read once and at most ``cap + 1`` are read (the one past the cap says it was cut),
    plus one read for an empty last page."""
    query = query.select(fields).order_by("__name__")
    rows: list[dict[str, Any]] = []
    last = None
    while True:
        want = min(PAGE, cap + 1 - len(rows))
        page = query.start_after(last) if last is not None else query
        docs = list(page.limit(want).stream(**db.call_options()))
        metering.count(reads=max(1, len(docs)))
        rows += [{**(doc.to_dict() or {}), "_id": doc.id} for doc in docs]
        if len(docs) < want or len(rows) > cap:
            return rows[:cap], len(rows) > cap
        last = docs[-1]


def _of(collection: str, tenant: str | None) -> Any:
    # lazy: the Firestore client's query module loads with the first read, not at import
    from google.cloud.firestore_v1.base_query import FieldFilter

    query: Any = db.client().collection(collection)
    return query.where(filter=FieldFilter("tenant", "==", tenant)) if tenant is not None else query


def agents(tenant: str | None, cap: int) -> tuple[list[tuple[str, str, str]], bool]:
    """(tenant, agent id, status) of every agent (of ``tenant``) not decommissioned: one read per such agent.
    Decommissioned agents are never read (``status in`` the other 13 statuses, on the single-field indexes
    ``GET /v1/agents?status=`` already uses with ``tenant``)."""
    # lazy: the Firestore client's query module loads with the first read, not at import
    from google.cloud.firestore_v1.base_query import FieldFilter

    shown = FieldFilter("status", "in", [s.value for s in AGENT_STATUSES])
    rows, cut = _projected(_of(AGENTS, tenant).where(filter=shown), ["tenant", "status"], cap)
    return [(str(r.get("tenant") or ""), str(r["_id"]), str(r.get("status") or "registered")) for r in rows], cut


def open_episodes(tenant: str | None, cap: int) -> tuple[list[tuple[str, str, str]], bool]:
    """(tenant, severity, kind) of every open episode (of ``tenant``): one read per open episode. The kind
    (``details.kind``) is a ``fleet_health`` episode's; "" for others without one."""
    # lazy: the Firestore client's query module loads with the first read, not at import
    from google.cloud.firestore_v1.base_query import FieldFilter

    query = _of(EPISODES, tenant).where(filter=FieldFilter("state", "==", "open"))
    rows, cut = _projected(query, ["tenant", "severity", "details.kind"], cap)
    return [
        (
            str(r.get("tenant") or ""),
            str(r.get("severity") or "warning"),
            str((r.get("details") or {}).get("kind") or ""),
        )
        for r in rows
    ], cut


def live_jobs(tenant: str | None, cap: int) -> tuple[list[tuple[str, str, str]], bool]:
    """(tenant, backend, state) of every queued, admitted or running job: one read per such job."""
    # lazy: the Firestore client's query module loads with the first read, not at import
    from google.cloud.firestore_v1.base_query import FieldFilter

    states = sorted(s.value for s in PENDING | ACTIVE)
    query = _of(JOBS, tenant).where(filter=FieldFilter("state", "in", states))
    rows, cut = _projected(query, ["tenant", "backend", "state"], cap)
    return [(str(r.get("tenant") or ""), str(r.get("backend") or ""), str(r.get("state"))) for r in rows], cut


def rejections_since(codes: Iterable[str], since: datetime) -> dict[str, int]:
    """Rejections received since ``since``, per code: one count aggregation (one read) per code, on the
    (code, received_at) index the rejection list already uses."""
    # lazy: the Firestore client's query module loads with the first read, not at import
    from google.cloud.firestore_v1.base_query import FieldFilter

    out: dict[str, int] = {}
    collection: Any = db.client().collection(REJECTIONS)
    for code in codes:
        query = collection.where(filter=FieldFilter("code", "==", code)).where(
            filter=FieldFilter("received_at", ">=", since)
        )
        result = query.count().get(**db.call_options())
        metering.count(reads=1)  # billed per 1,000 index entries read; at least one
        out[code] = int(result[0][0].value)
    return out
