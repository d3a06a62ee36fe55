"""API keys: ``afm_<key_id>_<secret>``. Only a SHA-256 of the secret is stored.

The secret is 32 random bytes, so a fast hash is enough (nothing to brute-force); the key id
lets a request find its key with one document read.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from enum import StrEnum

PREFIX = "afm"
_KEY = re.compile(rf"^{PREFIX}_([0-9a-f]{{16}})_([A-Za-z0-9_-]{{43}})$")


class Role(StrEnum):
    #: Reads GET /metrics only (a Prometheus server's key); every other route refuses it (403, audited).
    SCRAPE = "scrape"
    VIEWER = "viewer"  # reads
    OPERATOR = "operator"  # reads and operational writes: pause, resume, silences
    APPROVER = "approver"  # an operator who may also release frozen or quarantined agents
    ADMIN = "admin"  # everything, keys and settings included

    def allows(self, needed: Role) -> bool:
        order = [Role.SCRAPE, Role.VIEWER, Role.OPERATOR, Role.APPROVER, Role.ADMIN]
        return order.index(self) >= order.index(needed)


@dataclass(frozen=True)
class NewKey:
    key_id: str
    token: str  # shown once, never stored
    secret_hash: str


def generate() -> NewKey:
    key_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    return NewKey(key_id, f"{PREFIX}_{key_id}_{secret}", hash_secret(secret))


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def parse(token: str) -> tuple[str, str] | None:
    """(key_id, secret) of a well-formed token, else None."""
    match = _KEY.match(token)
    return (match.group(1), match.group(2)) if match else None


def matches(secret: str, stored_hash: str) -> bool:
    return hmac.compare_digest(hash_secret(secret), stored_hash)
