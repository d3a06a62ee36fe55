"""Rejected events (``rejections/{message_id}``): one document per message, so redelivery rewrites it.

A refused identity (``Rejected.unproven``: unsigned, bad signature, unknown or revoked key, a bad
enrollment token) names an agent nobody proved it is: it is kept apart from that agent's record, under
``claimed_agent_id`` and ``claimed_tenant`` with ``identity_refusal: true`` and no ``agent_id``, so listing
an agent's rejections never shows a stranger's forgeries as the agent's own.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from shared.domain.rejections import Payload, Rejected
from shared.platform import metering, settings
from shared.store import db

REJECTIONS = "rejections"


class PageTokenExpired(LookupError):
    """The rejection a page token continues after is gone (expired by TTL)."""


def record(
    rejected: Rejected,
    *,
    message_id: str,
    source: str,
    event_type: str | None,
    payload: Payload,
    received_at: datetime,
) -> dict[str, Any]:
    doc = {
        "id": message_id,
        "code": rejected.code.value,
        "reason": rejected.reason,
        "details": rejected.details,
        **_subject(rejected),
        "event_type": event_type,
        "source": source,
        "payload": payload.as_dict(),
        "received_at": received_at,
        "expire_at": received_at + timedelta(days=settings.get().retention_days),
    }
    db.client().collection(REJECTIONS).document(message_id).set(doc, **db.call_options())
    metering.count(writes=1)
    return doc


def _subject(rejected: Rejected) -> dict[str, Any]:
    """Whose rejection it is: the agent's, or only a claim of an agent (and tenant) when unproven."""
    if rejected.unproven:
        return {"claimed_agent_id": rejected.agent_id, "claimed_tenant": rejected.tenant, "identity_refusal": True}
    return {"agent_id": rejected.agent_id}


def list_page(
    *,
    agent_id: str | None,
    code: str | None,
    page_size: int,
    after: str | None,
    claimed_agent_id: str | None = None,
) -> tuple[list[dict[str, Any]], str | None]:
    """Newest first. ``after`` is the id of the last rejection of the previous page. ``agent_id`` finds an
    agent's own rejections; ``claimed_agent_id`` the refused identities that named it."""
    from google.cloud.firestore import Query
    from google.cloud.firestore_v1.base_query import FieldFilter

    collection = db.client().collection(REJECTIONS)
    query: Any = collection
    if agent_id:
        query = query.where(filter=FieldFilter("agent_id", "==", agent_id))
    if claimed_agent_id:
        query = query.where(filter=FieldFilter("claimed_agent_id", "==", claimed_agent_id))
    if code:
        query = query.where(filter=FieldFilter("code", "==", code))
    query = query.order_by("received_at", direction=Query.DESCENDING).order_by("__name__", direction=Query.DESCENDING)
    if after:
        cursor = db.get(collection.document(after))
        if not cursor.exists:
            raise PageTokenExpired(f"page token points at rejection {after}, which has expired; start again")
        query = query.start_after(cursor)
    docs = list(query.limit(page_size + 1).stream())
    metering.count(reads=max(1, len(docs)))
    items = [d.to_dict() for d in docs[:page_size]]
    more = len(docs) > page_size
    return items, (items[-1]["id"] if more and items else None)


def get(rejection_id: str) -> dict[str, Any] | None:
    doc = db.get(db.client().collection(REJECTIONS).document(rejection_id))
    return doc.to_dict() if doc.exists else None


def mark_replayed(rejection_id: str, message_id: str) -> None:
    """Note on the rejection that it was published again (replays are idempotent; this is for people)."""
    from datetime import UTC

    db.client().collection(REJECTIONS).document(rejection_id).update(
        {"replayed_at": datetime.now(UTC), "replayed_as": message_id}
    )
    metering.count(writes=1)
