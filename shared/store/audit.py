"""The audit log (``audit/{id}``): append-only entries, most written in the same batch as the change
they describe; refusals on their own."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from shared.domain.audit import AuditEntry
from shared.platform import metering
from shared.store import db

AUDIT = "audit"


def add(batch: Any, entry: AuditEntry) -> None:
    batch.set(db.client().collection(AUDIT).document(entry.id), entry.as_doc())


def append(entry: AuditEntry) -> bool:
    """Write one entry on its own; False when an entry with its id exists already (a retried request:
    the first outcome stands, the log is never rewritten)."""
    ref = db.client().collection(AUDIT).document(entry.id)
    return db.unless_changed(lambda: ref.create(entry.as_doc(), **db.call_options())) is not None


#: Filters GET /v1/audit takes (each has an index with ``at`` descending, alone and with tenant).
FILTERS = ("actor", "action", "target", "outcome")


def list_entries(
    *,
    tenant: str | None,
    filters: dict[str, str],
    before: datetime | None,
    limit: int,
    after: str | None = None,
) -> list[dict[str, Any]]:
    """Entries newest first; ``before`` filters by time, ``after`` (an entry's id) continues a listing
    after that entry: the cursor carries its time and id, so entries sharing a time are not skipped."""
    from google.cloud.firestore_v1.base_query import FieldFilter

    collection = db.client().collection(AUDIT)
    query: Any = collection
    if tenant is not None:
        query = query.where(filter=FieldFilter("tenant", "==", tenant))
    for name, value in filters.items():
        query = query.where(filter=FieldFilter(name, "==", value))
    if before is not None:
        query = query.where(filter=FieldFilter("at", "<", before))
    query = query.order_by("at", direction="DESCENDING")
    if after is not None:
        cursor = db.get(collection.document(after))
        if not cursor.exists:
            return []
        query = query.start_after(cursor)
    docs = list(query.limit(limit).stream(**db.call_options()))
    metering.count(reads=max(1, len(docs)))
    return [{"id": d.id, **(d.to_dict() or {})} for d in docs]
