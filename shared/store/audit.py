"""The audit log (``audit/{id}``): entries written in the same batch as the change they describe."""

from __future__ import annotations

from typing import Any

from shared.domain.audit import AuditEntry
from shared.store import db

AUDIT = "audit"


def add(batch: Any, entry: AuditEntry) -> None:
    batch.set(db.client().collection(AUDIT).document(entry.id), entry.as_doc())
