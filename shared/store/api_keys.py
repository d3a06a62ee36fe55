"""API keys (``api_keys/{key_id}``), stored hashed; verified keys are cached briefly per instance."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from shared.domain import api_keys
from shared.domain.api_keys import Role
from shared.platform import metering, settings
from shared.store import db

API_KEYS = "api_keys"


@dataclass(frozen=True)
class Principal:
    key_id: str
    name: str
    role: Role
    tenant: str | None  # None: every tenant

    def can_see(self, tenant: str) -> bool:
        return self.tenant is None or self.tenant == tenant


#: key_id -> (trusted until, secret hash, principal)
_verified: dict[str, tuple[float, str, Principal]] = {}
_lock = threading.Lock()


def create(name: str, role: Role, tenant: str | None = None) -> tuple[str, str]:
    """Create a key; returns (key_id, token). The token is shown once and never stored."""
    key = api_keys.generate()
    doc = {
        "name": name,
        "role": role.value,
        "tenant": tenant,
        "hash": key.secret_hash,
        "created_at": datetime.now(UTC),
        "revoked_at": None,
    }
    db.client().collection(API_KEYS).document(key.key_id).create(doc)
    metering.count(writes=1)
    return key.key_id, key.token


def revoke(key_id: str) -> bool:
    ref = db.client().collection(API_KEYS).document(key_id)
    if not db.get(ref).exists:
        return False
    ref.update({"revoked_at": datetime.now(UTC)})
    metering.count(writes=1)
    with _lock:
        _verified.pop(key_id, None)
    return True


def list_keys() -> list[dict[str, Any]]:
    docs = list(db.client().collection(API_KEYS).stream())
    metering.count(reads=max(1, len(docs)))
    return [{"key_id": d.id, **{k: v for k, v in (d.to_dict() or {}).items() if k != "hash"}} for d in docs]


def verify(token: str) -> Principal | None:
    """The principal a bearer token stands for, or None (malformed, unknown, wrong or revoked)."""
    parsed = api_keys.parse(token)
    if parsed is None:
        return None
    key_id, secret = parsed
    now = time.monotonic()
    with _lock:
        cached = _verified.get(key_id)
    if cached and cached[0] > now and api_keys.matches(secret, cached[1]):
        return cached[2]
    doc = db.get(db.client().collection(API_KEYS).document(key_id))
    data = doc.to_dict() if doc.exists else None
    if not data or data.get("revoked_at") or not api_keys.matches(secret, data["hash"]):
        return None
    principal = Principal(key_id, data["name"], Role(data["role"]), data.get("tenant"))
    with _lock:
        _verified[key_id] = (now + settings.get().api_key_cache_s, data["hash"], principal)
    return principal
