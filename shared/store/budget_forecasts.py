"""The budget forecast's reads (shared/services/budget_forecasts.py, the usage API): the budgeted tenants and
agents, their month counters, and the open ``budget_forecast`` episodes. Every read is bounded and counted.

- tenants with a budget: ``tenants`` where ``budget`` is not null, at most ``limit`` (one read each);
- agents with a budget: ``agents`` where ``budget`` is not null, only their id, tenant and budget, at most
  ``limit`` (one read each);
- a tenant's month: its ``usage/t.{tenant}.{YYYY-MM}.{shard}`` shards summed (one read per shard);
- an agent's month: ``usage/a.{agent}.{YYYY-MM}`` (one read; the batched form is ``usage.agent_months``);
- open forecast episodes: ``episodes`` where ``rule`` and ``state`` are equal (single-field indexes merged,
  no composite index), at most ``limit`` (one read each, one for none).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from shared.domain.budget_forecast import RULE, month_fields
from shared.domain.periods import Period, window
from shared.domain.usage import Totals
from shared.platform import metering
from shared.store import db
from shared.store.agents import AGENTS
from shared.store.config import TENANTS
from shared.store.episodes import EPISODES
from shared.store.usage import USAGE, agent_month_id, tenant_shard_id


def _not_null(collection: str, fields: list[str], limit: int) -> list[Any]:
    # lazy: the Google API client library, loaded by the minute job rather than at import (cold start)
    from google.cloud.firestore_v1.base_query import FieldFilter

    query = db.client().collection(collection).where(filter=FieldFilter("budget", "!=", None)).select(fields)
    docs = list(query.limit(limit).stream(**db.call_options()))
    metering.count(reads=max(1, len(docs)))
    return docs


def tenants_with_budget(limit: int) -> list[tuple[str, dict[str, Any]]]:
    """(tenant, its budget as stored) for up to ``limit`` tenants that have one."""
    return [(doc.id, (doc.to_dict() or {})["budget"]) for doc in _not_null(TENANTS, ["budget"], limit)]


def agents_with_budget(limit: int) -> list[tuple[str, str, dict[str, Any]]]:
    """(agent id, tenant, its budget as stored) for up to ``limit`` agents that have one."""
    out = []
    for doc in _not_null(AGENTS, ["agent_id", "tenant", "budget"], limit):
        data = doc.to_dict() or {}
        out.append((str(data.get("agent_id") or doc.id), str(data.get("tenant") or ""), data["budget"]))
    return out


def agent_month(agent_id: str, now: datetime) -> dict[str, Totals]:
    """The agent's counters of the current month (``m``, ``dDD``, ``hDDHH``): one read."""
    doc = db.get(db.client().collection(USAGE).document(agent_month_id(agent_id, window(Period.MONTH, now).key)))
    return month_fields((doc.to_dict() or {}) if doc.exists else {})


def tenant_month(tenant: str, now: datetime, shards: int) -> dict[str, Totals]:
    """The tenant's counters of the current month, summed over its shards: one read per shard."""
    month = window(Period.MONTH, now).key
    collection = db.client().collection(USAGE)
    refs = [collection.document(tenant_shard_id(tenant, month, shard)) for shard in range(shards)]
    docs = list(db.client().get_all(refs, **db.call_options()))
    metering.count(reads=len(docs))
    sums: dict[str, Totals] = {}
    for doc in docs:
        for name, totals in month_fields((doc.to_dict() or {}) if doc.exists else {}).items():
            sums.setdefault(name, Totals()).add(totals)
    return sums


def open_episodes(limit: int) -> list[tuple[dict[str, Any], Any]]:
    """Open ``budget_forecast`` episodes with their update times (for the conditional resolution)."""
    # lazy: as above
    from google.cloud.firestore_v1.base_query import FieldFilter

    query = (
        db.client()
        .collection(EPISODES)
        .where(filter=FieldFilter("rule", "==", RULE))
        .where(filter=FieldFilter("state", "==", "open"))
    )
    docs = list(query.limit(limit).stream(**db.call_options()))
    metering.count(reads=max(1, len(docs)))
    return [(doc.to_dict() or {}, doc.update_time) for doc in docs]
