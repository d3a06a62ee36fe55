"""Agent search (``GET /v1/agents`` with filters, and bulk actions' selection): the filters Firestore
serves, one page at a time ordered by id.

Every filter sent to Firestore is an equality (tenant, status, liveness, version, ``labels.<key>``) or
one ``array_contains`` (a capability): Firestore serves any mix of them from its automatic single-field
indexes (merged), ordered by document id, so no composite index is needed. What no index can serve (the
security score, which recovers with time) is filtered by the caller on each page.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from shared.domain.agent_record import AgentRecord
from shared.platform import metering
from shared.store import agents as agent_store
from shared.store import db
from shared.store.agents import AGENTS, from_stored, ref


@dataclass(frozen=True)
class Filters:
    """The filters Firestore applies (None: any)."""

    tenant: str | None = None
    status: str | None = None
    liveness: str | None = None
    version: str | None = None
    capability: str | None = None
    #: (key, value): the agent's label ``key`` equals ``value``.
    label: tuple[str, str] | None = None
    #: Only these agents (a bulk action naming them).
    agent_ids: tuple[str, ...] | None = None


def page(filters: Filters, page_size: int, after: str | None) -> tuple[list[AgentRecord], str | None]:
    """Up to ``page_size`` agents matching ``filters``, ordered by id, after ``after``; and the id to continue
    after (None: no more). One read per agent returned (at least one per query)."""
    others = (filters.liveness, filters.version, filters.capability, filters.label, filters.agent_ids)
    if all(f is None for f in others):  # the plain list (tenant, status): the same query
        return agent_store.list_agents(tenant=filters.tenant, status=filters.status, page_size=page_size, after=after)
    # lazy: the Firestore query types load with the client, only when a search runs
    from google.cloud.firestore_v1.base_query import FieldFilter
    from google.cloud.firestore_v1.field_path import FieldPath

    query: Any = db.client().collection(AGENTS)
    equal = {
        "tenant": filters.tenant,
        "status": filters.status,
        "liveness": filters.liveness,
        "version": filters.version,
    }
    for name, value in equal.items():
        if value is not None:
            query = query.where(filter=FieldFilter(name, "==", value))
    if filters.label is not None:
        key, value = filters.label
        query = query.where(filter=FieldFilter(FieldPath("labels", key).to_api_repr(), "==", value))
    if filters.capability is not None:
        query = query.where(filter=FieldFilter("capabilities", "array_contains", filters.capability))
    if filters.agent_ids is not None:
        if not filters.agent_ids:
            return [], None
        query = query.where(filter=FieldFilter("__name__", "in", [ref(a) for a in sorted(filters.agent_ids)[:30]]))
    query = query.order_by("__name__")
    if after:
        query = query.start_after({"__name__": ref(after)})
    docs = list(query.limit(page_size + 1).stream(**db.call_options()))
    metering.count(reads=max(1, len(docs)))
    records = [from_stored(d.to_dict()) for d in docs[:page_size]]
    more = len(docs) > page_size
    return records, (records[-1].agent_id if more and records else None)
