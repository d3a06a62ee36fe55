"""Slack users' roles per tenant: ``tenants/{t}.roles`` (the map an admin manages) mirrored per user in
``slack_users/{user}.roles`` (tenant -> role), written together in one transaction."""

from __future__ import annotations

from typing import Any

from shared.domain.audit import AuditEntry
from shared.store import audit as audit_store
from shared.store import config, db

SLACK_USERS = "slack_users"


def of_tenant(tenant: str) -> dict[str, str]:
    """The tenant's map: Slack user id -> role."""
    doc = db.get(db.client().collection(config.TENANTS).document(tenant))
    return dict(((doc.to_dict() or {}) if doc.exists else {}).get("roles") or {})


def of_user(user_id: str) -> dict[str, str]:
    """A user's roles: tenant -> role. One read, never cached: a granted or revoked role counts from
    the next click (Slack requests are few; a stale approver must not decide)."""
    doc = db.get(db.client().collection(SLACK_USERS).document(user_id))
    return dict(((doc.to_dict() or {}) if doc.exists else {}).get("roles") or {})


def replace(tenant: str, roles: dict[str, str], entry: AuditEntry) -> dict[str, str]:
    """Make ``roles`` the tenant's whole map; the users' mirrors follow in the same transaction.
    Returns the previous map."""
    from google.cloud import firestore

    client = db.client()
    tenant_ref = client.collection(config.TENANTS).document(tenant)
    previous: dict[str, str] = {}

    @firestore.transactional
    def run(transaction: Any) -> None:
        snap = tenant_ref.get(transaction=transaction)
        previous.clear()
        previous.update(((snap.to_dict() or {}) if snap.exists else {}).get("roles") or {})
        transaction.set(tenant_ref, {"tenant": tenant, "roles": roles}, merge=["tenant", "roles"])
        for user in set(previous) | set(roles):
            if previous.get(user) == roles.get(user):
                continue
            value: Any = roles.get(user, firestore.DELETE_FIELD)
            user_ref = client.collection(SLACK_USERS).document(user)
            transaction.set(user_ref, {"roles": {tenant: value}}, merge=True)
        audit_store.add(transaction, entry)

    run(client.transaction())
    changed = {u for u in set(previous) | set(roles) if previous.get(u) != roles.get(u)}
    db.count(reads=1, writes=2 + len(changed))
    config.forget(tenant)
    return previous
