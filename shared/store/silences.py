"""Silences and maintenance windows (``silences/{id}``)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from shared.domain.silences import Silence
from shared.platform import metering
from shared.store import db

SILENCES = "silences"


def _ref(silence_id: str) -> Any:
    return db.client().collection(SILENCES).document(silence_id)


def create(silence: Silence) -> None:
    _ref(silence.id).create(silence.to_doc(), **db.call_options())
    metering.count(writes=1)


def get(silence_id: str) -> Silence | None:
    doc = db.get(_ref(silence_id))
    return _of(doc.to_dict()) if doc.exists else None


def end(silence_id: str, *, at: datetime, by: str) -> None:
    _ref(silence_id).update({"ended_at": at, "ended_by": by}, **db.call_options())
    metering.count(writes=1)


def active(now: datetime) -> list[Silence]:
    """Silences not expired yet (ended ones are filtered here: a handful at most)."""
    from google.cloud.firestore_v1.base_query import FieldFilter

    query = db.client().collection(SILENCES).where(filter=FieldFilter("expires_at", ">", now))
    docs = list(query.stream(**db.call_options()))
    metering.count(reads=max(1, len(docs)))
    return [s for s in (_of(d.to_dict()) for d in docs) if s.active(now) or s.starts_at > now]


def _of(data: dict[str, Any] | None) -> Silence:
    data = {k: v for k, v in (data or {}).items() if k != "expire_at"}
    return Silence.model_validate(data)
