"""Slack users' roles per tenant: ``tenants/{t}.roles`` (the map an admin manages) mirrored per user in
``slack_users/{user}.roles`` (tenant -> role), written together in one transaction."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from shared.domain import roles
from shared.domain.api_keys import Role
from shared.domain.audit import AuditEntry
from shared.platform import metering
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


def role_in(user_id: str, tenant: str) -> Role | None:
    """The user's role in ``tenant`` (read now: a revoked approver must not decide)."""
    return roles.role_of(of_user(user_id), tenant)


def replace(tenant: str, roles: dict[str, str], entry: AuditEntry) -> dict[str, str]:
    """Make ``roles`` the tenant's whole map; returns the previous map."""
    previous, _updated = change(tenant, lambda _current: roles, lambda _previous, _updated: entry)
    return previous


def change(
    tenant: str,
    apply: Callable[[dict[str, str]], dict[str, str]],
    entry: Callable[[dict[str, str], dict[str, str]], AuditEntry],
) -> tuple[dict[str, str], dict[str, str]]:
    """Change the tenant's map in one transaction: ``apply`` gets the map as stored and returns the new
    one (or raises to refuse: it may run more than once, so it must not have side effects); the users'
    mirrors and the audit entry are written with it. Two admins changing roles at once both count.
    Returns (previous, updated)."""
    from google.cloud import firestore

    client = db.client()
    tenant_ref = client.collection(config.TENANTS).document(tenant)
    result: list[dict[str, str]] = []

    @firestore.transactional
    def run(transaction: Any) -> None:
        snap = tenant_ref.get(transaction=transaction)
        previous = dict(((snap.to_dict() or {}) if snap.exists else {}).get("roles") or {})
        updated = apply(dict(previous))
        transaction.set(tenant_ref, {"tenant": tenant, "roles": updated}, merge=["tenant", "roles"])
        for user in set(previous) | set(updated):
            if previous.get(user) != updated.get(user):
                value: Any = updated.get(user, firestore.DELETE_FIELD)
                transaction.set(client.collection(SLACK_USERS).document(user), {"roles": {tenant: value}}, merge=True)
        audit_store.add(transaction, entry(previous, updated))
        result[:] = [previous, updated]

    run(client.transaction())
    previous, updated = result
    changed = {u for u in set(previous) | set(updated) if previous.get(u) != updated.get(u)}
    metering.count(reads=1, writes=2 + len(changed))
    config.forget(tenant)
    return previous, updated
