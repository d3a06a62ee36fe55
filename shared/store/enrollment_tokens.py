"""Enrollment tokens (``enrollment_tokens/{token_id}``), stored hashed (shared/domain/enrollment.py).

A use is never written alone: :func:`add_use` puts it in the same batch as the agent write that binds the
key, with a precondition on the token document as read, so two registrations racing for the last use of
a token cannot both have it (the loser's batch fails as a conflict and is decided again).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from shared.domain.audit import AuditEntry
from shared.domain.enrollment import EnrollmentToken
from shared.platform import metering
from shared.store import audit as audit_store
from shared.store import db

ENROLLMENT_TOKENS = "enrollment_tokens"


@dataclass(frozen=True)
class TokenSnapshot:
    token: EnrollmentToken
    update_time: Any  # the precondition of the use written with the agent


def ref(token_id: str) -> Any:
    return db.client().collection(ENROLLMENT_TOKENS).document(token_id)


def create(token: EnrollmentToken, entry: AuditEntry | None = None) -> None:
    """Store a new token, with the audit entry of its creation in the same commit."""
    if entry is None:
        ref(token.token_id).create(token.model_dump())
        metering.count(writes=1)
        return
    batch = db.client().batch()
    batch.create(ref(token.token_id), token.model_dump())
    audit_store.add(batch, entry)
    batch.commit(**db.call_options())
    metering.count(writes=2)


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


def revoke(
    token_id: str, *, at: datetime, by: str, entry: AuditEntry | None = None, tenant: str | None = None
) -> EnrollmentToken | None:
    """Revoke a token (idempotent: the first revocation's time and author stay), with its audit entry in
    the same commit; None if unknown (or, given ``tenant``, another tenant's)."""
    changes = {"revoked_at": at, "revoked_by": by}
    for _ in range(5):
        snap = read(token_id)
        if snap is None or (tenant is not None and snap.token.tenant != tenant):
            return None
        if snap.token.revoked_at is not None:
            return snap.token
        batch = db.client().batch()
        # On the token as read: a use written meanwhile makes this a conflict, and it is read again.
        option = db.client().write_option(last_update_time=snap.update_time)
        batch.update(ref(token_id), changes, option=option)
        if entry is not None:
            audit_store.add(batch, entry)
        if db.unless_changed(functools.partial(batch.commit, **db.call_options()), writes=2) is not None:
            return snap.token.model_copy(update=changes)
    raise RuntimeError(f"enrollment token {token_id} kept changing while being revoked")
