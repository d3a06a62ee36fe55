"""Approval requests (``approvals/{id}``): created once, decided once with a conditional write."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from shared.domain import approvals as domain
from shared.domain.approvals import Approval, State
from shared.domain.audit import AuditEntry
from shared.platform import metering
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
    metering.count(writes=1)


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
    metering.count(reads=max(1, len(docs)))
    found = [domain.from_doc(d.to_dict() or {}) for d in docs]
    return [a for a in found if kind is None or a.kind.value == kind][:limit]


@dataclass
class Due:
    """What the minute job has to do: requests past their expiry, pending ones still unposted, and
    decisions whose carrying out never finished."""

    expired: list[tuple[Approval, Any]] = field(default_factory=list)
    unposted: list[Approval] = field(default_factory=list)
    unfinished: list[Approval] = field(default_factory=list)


def due(now: datetime, limit: int = 100) -> Due:
    from google.cloud.firestore_v1.base_query import FieldFilter

    collection = db.client().collection(APPROVALS)
    out = Due()
    for name in ("pending_until", "post_due_at", "followup_due_at"):
        docs = list(collection.where(filter=FieldFilter(name, "<=", now)).limit(limit).stream(**db.call_options()))
        metering.count(reads=max(1, len(docs)))  # a query is billed one read even when it finds nothing
        for doc in docs:
            approval = domain.from_doc(doc.to_dict() or {})
            if name == "pending_until" and approval.state is State.PENDING:
                out.expired.append((approval, doc.update_time))
            elif name == "post_due_at" and approval.state is State.PENDING and approval.message is None:
                out.unposted.append(approval)
            elif name == "followup_due_at" and approval.state is not State.PENDING and approval.done_at is None:
                out.unfinished.append(approval)
    return out
