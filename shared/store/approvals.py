"""Approval requests (``approvals/{id}``): created once, decided once with a conditional write."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from shared.domain import approvals as domain
from shared.domain.approvals import Approval, State
from shared.domain.audit import AuditEntry
from shared.store import audit as audit_store
from shared.store import db

APPROVALS = "approvals"


def ref(approval_id: str) -> Any:
    return db.client().collection(APPROVALS).document(approval_id)


def create(approval: Approval, entry: AuditEntry) -> bool:
    """Store a new request with its audit entry; False when one with this id exists (a redelivery)."""
    client = db.client()
    batch = client.batch()
    batch.create(ref(approval.id), domain.to_doc(approval))
    audit_store.add(batch, entry)
    return db.unless_changed(lambda: batch.commit(**db.call_options()), writes=2) is not None


def read(approval_id: str) -> tuple[Approval, Any] | None:
    """The request and its update time (the precondition of :func:`replace`), or None."""
    doc = db.get(ref(approval_id))
    if not doc.exists:
        return None
    return domain.from_doc(doc.to_dict() or {}), doc.update_time


def get(approval_id: str) -> Approval | None:
    found = read(approval_id)
    return found[0] if found else None


def replace(approval: Approval, update_time: Any, entries: tuple[AuditEntry, ...] = ()) -> bool:
    """Write the request as decided (or posted) unless someone else changed it since it was read,
    with its audit entries in the same commit; False when another writer won."""
    client = db.client()
    batch = client.batch()
    option = client.write_option(last_update_time=update_time)
    batch.update(ref(approval.id), domain.to_doc(approval), option=option)
    for entry in entries:
        audit_store.add(batch, entry)
    return db.unless_changed(lambda: batch.commit(**db.call_options()), writes=1 + len(entries)) is not None


def set_fields(approval_id: str, fields: dict[str, Any]) -> None:
    ref(approval_id).update(fields, **db.call_options())
    db.count(writes=1)


def list_approvals(
    *, tenant: str | None = None, state: str | None = None, kind: str | None = None, limit: int = 50
) -> list[Approval]:
    """Newest first, filtered by tenant and state in Firestore (indexed) and by kind here."""
    from google.cloud.firestore_v1.base_query import FieldFilter

    query: Any = db.client().collection(APPROVALS)
    for name, value in (("tenant", tenant), ("state", state)):
        if value is not None:
            query = query.where(filter=FieldFilter(name, "==", value))
    fetch = limit if kind is None else min(limit * 10, 1000)
    docs = list(query.order_by("created_at", direction="DESCENDING").limit(fetch).stream(**db.call_options()))
    db.count(reads=max(1, len(docs)))
    found = [domain.from_doc(d.to_dict() or {}) for d in docs]
    return [a for a in found if kind is None or a.kind.value == kind][:limit]


def due(now: datetime, limit: int = 100) -> list[tuple[Approval, Any]]:
    """Pending requests past their expiry, and pending ones never posted to Slack (Slack refused)."""
    from google.cloud.firestore_v1.base_query import FieldFilter

    collection = db.client().collection(APPROVALS)
    expired = collection.where(filter=FieldFilter("pending_until", "<=", now)).limit(limit)
    unposted = collection.where(filter=FieldFilter("post_due", "==", True)).limit(limit)
    found: dict[str, tuple[Approval, Any]] = {}
    for query in (expired, unposted):
        docs = list(query.stream(**db.call_options()))
        db.count(reads=max(1, len(docs)))  # a query is billed one read even when it finds nothing
        for doc in docs:
            approval = domain.from_doc(doc.to_dict() or {})
            if approval.state is State.PENDING:
                found[approval.id] = (approval, doc.update_time)
    return list(found.values())
