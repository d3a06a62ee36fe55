"""The budget forecast's reads (shared/services/budget_forecasts.py): the budgeted tenants and
agents a page at a time after a rotating cursor, their month counters, and the open ``budget_forecast``
episodes. Every read is bounded and counted.

- tenants with a budget: ``tenants`` where ``budget`` is not null, ordered by budget then id, after the
  cursor, at most ``limit`` (one read each, one for none);
- agents with a budget: ``agents`` the same way, only their id, tenant, budget and holds;
- open forecasts' subjects not on the page: read by id (one read each, one ``get_all``);
- the cursor: one small document, ``markers/budget_forecast.cursor`` (one read; one write when it moves);
- the occurrence markers: ``markers/budget_forecast.<key>`` (``next``: the occurrence the key's next
  forecast opens as), read only for the keys about to open (one read each, one ``get_all``), written in the
  batch that resolves a forecast of the key (:func:`resolve`);
- a tenant's month: ``usage.tenant_month`` (its shards summed, one read per shard);
- agents' months: ``usage.agent_months`` (one read each, batched; the service reads it directly);
- open forecast episodes: ``episodes`` where ``rule`` and ``state`` are equal (single-field indexes merged,
  no composite index), at most ``limit`` (one read each, one for none).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, NamedTuple

from shared.domain import episodes as episode_rules
from shared.domain.budget_forecast import RULE, next_occurrence
from shared.domain.periods import Period, window
from shared.domain.usage import Totals
from shared.platform import metering
from shared.store import db, usage
from shared.store.agents import AGENTS
from shared.store.config import TENANTS
from shared.store.episodes import EPISODES, episode_ref, notice_ref
from shared.store.markers import MARKERS
from shared.store.markers import RETENTION as MARKER_RETENTION

CURSOR = "budget_forecast.cursor"


class Budgeted(NamedTuple):
    """One budgeted tenant or agent as listed."""

    doc_id: str
    subject: str  # the tenant, or the agent id
    tenant: str
    budget: Any  # as stored
    holds: dict[str, Any]

    @property
    def cursor(self) -> dict[str, Any]:
        """Where the next page starts after this one (the listing's order: budget, then document id)."""
        return {"budget": self.budget, "id": self.doc_id}


def _page(collection: str, fields: list[str], after: dict[str, Any] | None, limit: int) -> list[Any]:
    # lazy: the Google API client library, loaded by the minute job rather than at import (cold start)
    from google.cloud.firestore_v1.base_query import FieldFilter

    query = (
        db.client()
        .collection(collection)
        .where(filter=FieldFilter("budget", "!=", None))
        .order_by("budget")
        .order_by("__name__")
        .select(fields)
    )
    if after is not None:
        query = query.start_after({"budget": after["budget"], "__name__": str(after["id"])})
    docs = list(query.limit(limit).stream(**db.call_options()))
    metering.count(reads=max(1, len(docs)))
    return docs


def tenants_with_budget(limit: int, after: dict[str, Any] | None = None) -> list[Budgeted]:
    """Up to ``limit`` tenants that have a budget, after the cursor ``after`` (None: from the first)."""
    return [_row("tenant", doc) for doc in _page(TENANTS, ["budget"], after, limit)]


def agents_with_budget(limit: int, after: dict[str, Any] | None = None) -> list[Budgeted]:
    """Up to ``limit`` agents that have a budget, after the cursor ``after`` (None: from the first)."""
    return [_row("agent", doc) for doc in _page(AGENTS, ["agent_id", "tenant", "budget", "holds"], after, limit)]


def budgeted(kind: str, ids: Sequence[str]) -> list[Budgeted]:
    """The given tenants or agents (``kind``) that exist and still have a budget, read by id: one read each,
    one ``get_all`` (none for no id). The subjects of open forecasts not on the tick's page."""
    if not ids:
        return []
    collection = db.client().collection(TENANTS if kind == "tenant" else AGENTS)
    fields = ["budget"] if kind == "tenant" else ["agent_id", "tenant", "budget", "holds"]
    refs = [collection.document(i) for i in ids]
    docs = list(db.client().get_all(refs, field_paths=fields, **db.call_options()))
    metering.count(reads=len(docs))
    return [row for doc in docs if doc.exists and (row := _row(kind, doc)).budget is not None]


def _row(kind: str, doc: Any) -> Budgeted:
    data = doc.to_dict() or {}
    if kind == "tenant":
        return Budgeted(doc.id, doc.id, doc.id, data.get("budget"), {})
    holds = data.get("holds")
    return Budgeted(doc.id, str(data.get("agent_id") or doc.id), str(data.get("tenant") or ""), data.get("budget"),
                    holds if isinstance(holds, dict) else {})  # fmt: skip


def _cursor_ref() -> Any:
    return db.client().collection(MARKERS).document(CURSOR)


def cursors() -> dict[str, Any]:
    """Where this tick's pages start: ``{"tenant": cursor | None, "agent": cursor | None}`` (one read)."""
    doc = db.get(_cursor_ref())
    data = (doc.to_dict() or {}) if doc.exists else {}
    return {kind: data.get(kind) if isinstance(data.get(kind), dict) else None for kind in ("tenant", "agent")}


def save_cursors(values: dict[str, Any], now: datetime) -> None:
    """Where the next tick's pages start (one write). Two ticks at once write the same or neighbouring
    cursors: a page is at worst evaluated twice or a round one page shorter, never a subject skipped for
    good (every round starts again from the first)."""
    _cursor_ref().set({**values, "at": now}, **db.call_options())
    metering.count(writes=1)


def _occurrence_ref(key: str) -> Any:
    return db.client().collection(MARKERS).document(db.doc_id(f"{RULE}.{key}"))


def occurrences(keys: Sequence[str]) -> dict[str, int]:
    """The occurrence each budget-and-period ``key`` opens its next forecast as (1 when none of it has
    resolved yet): one read per key, one ``get_all`` (none for no key). Read only for keys about to open."""
    if not keys:
        return {}
    refs = {key: _occurrence_ref(key) for key in dict.fromkeys(keys)}
    docs = list(db.client().get_all(list(refs.values()), **db.call_options()))
    metering.count(reads=len(docs))
    found = {doc.id: (doc.to_dict() or {}) for doc in docs if doc.exists}
    return {key: next_occurrence(found.get(ref.id)) for key, ref in refs.items()}


def resolve(
    episode: dict[str, Any], update_time: Any, write: episode_rules.EpisodeWrite, key: str, following: int,
    now: datetime,
) -> bool:  # fmt: skip
    """Resolve a forecast episode only if it is as read (a conditional update), with its notice and, in the
    same batch, its key's occurrence marker raised to ``following`` (server-side maximum: a late or duplicate
    resolution never lowers it). True when this call resolved it, False when another tick changed it first
    (then nothing is written: the marker moves only with the resolution that wins). 3 writes (2 without a
    notice)."""
    # lazy: the Google API client library, loaded by the minute job rather than at import (cold start)
    from google.cloud.firestore import Maximum

    client = db.client()
    batch = client.batch()
    batch.update(episode_ref(episode["id"]), write.fields, option=client.write_option(last_update_time=update_time))
    if write.notice is not None:
        batch.set(notice_ref(write.notice["id"]), write.notice)
    marker = {"key": key, "next": Maximum(following), "at": now, "expire_at": now + MARKER_RETENTION}
    batch.set(_occurrence_ref(key), marker, merge=True)
    written = 2 + (write.notice is not None)
    return db.unless_changed(lambda: batch.commit(**db.call_options()), writes=written) is not None


def tenant_month(tenant: str, now: datetime, shards: int) -> dict[str, Totals]:
    """The tenant's counters of the current month, summed over its shards: one read per shard."""
    return usage.tenant_month(tenant, window(Period.MONTH, now).key, shards)


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
