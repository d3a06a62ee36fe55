"""Enrollment tokens (``enrollment_tokens/{token_id}``), stored hashed (shared/domain/enrollment.py).

A use is never written alone: :func:`add_use` puts it in the same batch as the agent write that binds the
key, with a precondition on the token document as read, so two registrations racing for the last use of
a token cannot both have it (the loser's batch fails as a conflict and is decided again).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from shared.domain.enrollment import EnrollmentToken
from shared.platform import metering
from shared.store import db

ENROLLMENT_TOKENS = "enrollment_tokens"


@dataclass(frozen=True)
class TokenSnapshot:
    token: EnrollmentToken
    update_time: Any  # the precondition of the use written with the agent


def ref(token_id: str) -> Any:
    return db.client().collection(ENROLLMENT_TOKENS).document(token_id)


def create(token: EnrollmentToken) -> None:
    ref(token.token_id).create(token.model_dump())
    metering.count(writes=1)


def read(token_id: str) -> TokenSnapshot | None:
    """The token as stored now (one read), or None."""
    data, update_time = db.get_fields(ref(token_id))
    if data is None:
        return None
    return TokenSnapshot(EnrollmentToken.model_validate(data), update_time)


def get(token_id: str) -> EnrollmentToken | None:
    snap = read(token_id)
    return snap.token if snap else None


def add_use(batch: Any, snap: TokenSnapshot, changes: dict[str, Any]) -> None:
    """Add one use (``changes``, from enrollment.use) to ``batch``, on the token as read."""
    client = db.client()
    batch.update(ref(snap.token.token_id), changes, option=client.write_option(last_update_time=snap.update_time))


def list_tenant(tenant: str, limit: int = 200) -> list[EnrollmentToken]:
    """The tenant's tokens, newest first (at most ``limit``)."""
    from google.cloud.firestore_v1.base_query import FieldFilter

    query = (
        db.client()
        .collection(ENROLLMENT_TOKENS)
        .where(filter=FieldFilter("tenant", "==", tenant))
        .order_by("created_at", direction="DESCENDING")
        .limit(limit)
    )
    docs = list(query.stream(**db.call_options()))
    metering.count(reads=max(1, len(docs)))
    return [EnrollmentToken.model_validate(d.to_dict()) for d in docs]


def revoke(token_id: str, *, at: datetime, by: str) -> EnrollmentToken | None:
    """Revoke a token (idempotent: the first revocation's time and author stay); None if unknown."""
    snap = read(token_id)
    if snap is None:
        return None
    if snap.token.revoked_at is not None:
        return snap.token
    ref(token_id).update({"revoked_at": at, "revoked_by": by})
    metering.count(writes=1)
    return snap.token.model_copy(update={"revoked_at": at, "revoked_by": by})
