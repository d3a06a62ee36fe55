"""Raised alerts (``alerts/{id}``), created once: a second ``create`` of the same id is refused."""

from __future__ import annotations

import threading
from typing import Any

from shared.domain.alerts import Alert
from shared.store import db

ALERTS = "alerts"
_raised: set[str] = set()
_lock = threading.Lock()


def raise_once(alert: Alert) -> bool:
    """True when this call raised the alert; False when it had been raised already (anywhere)."""
    from google.api_core import exceptions

    doc_id = db.doc_id(alert.id)
    with _lock:
        if doc_id in _raised:
            return False
    try:
        db.client().collection(ALERTS).document(doc_id).create(alert.as_doc(), **db.call_options())
        db.count(writes=1)
        raised = True
    except exceptions.AlreadyExists:
        db.count(conflicts=1)
        raised = False
    with _lock:
        if len(_raised) > 100_000:
            _raised.clear()
        _raised.add(doc_id)
    return raised


def list_recent(*, tenant: str | None, agent_id: str | None, limit: int) -> list[dict[str, Any]]:
    from google.cloud.firestore_v1.base_query import FieldFilter

    query: Any = db.client().collection(ALERTS)
    if tenant:
        query = query.where(filter=FieldFilter("tenant", "==", tenant))
    if agent_id:
        query = query.where(filter=FieldFilter("agent_id", "==", agent_id))
    docs = list(query.order_by("raised_at", direction="DESCENDING").limit(limit).stream(**db.call_options()))
    db.count(reads=max(1, len(docs)))
    return [doc.to_dict() or {} for doc in docs]
