"""The audit log (``audit/{id}``): entries written in the same batch as the change they describe."""

from __future__ import annotations

from typing import Any

from shared.domain.audit import AuditEntry
from shared.store import db

AUDIT = "audit"


def add(batch: Any, entry: AuditEntry) -> None:
    batch.set(db.client().collection(AUDIT).document(entry.id), entry.as_doc())


def list_for(target: str, limit: int = 100) -> list[dict[str, Any]]:
    from google.cloud.firestore_v1.base_query import FieldFilter

    query = db.client().collection(AUDIT).where(filter=FieldFilter("target", "==", target)).limit(limit)
    docs = list(query.stream())
    db.count(reads=max(1, len(docs)))
    entries = [{"id": d.id, **(d.to_dict() or {})} for d in docs]
    return sorted(entries, key=lambda e: e["at"])
