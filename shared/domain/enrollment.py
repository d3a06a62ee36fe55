"""Enrollment tokens: what lets an agent bind its first key, within a scope, a number of uses and a time.

A token is created by an approver or admin of a tenant and shown once (``afmt1.<id>.<secret>.<fleet
key>``, fleet_agent.identity.EnrollmentToken); the fleet keeps only the SHA-256 of its secret. A
registration that carries it, signed by the key it enrolls, consumes one use in the same atomic write
that binds the key (shared/store/enrollment_tokens.py), so a redelivery never consumes two.
"""

from __future__ import annotations

import hmac
import re
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from fleet_agent.contracts import AGENT_ID_PATTERN
from pydantic import BaseModel, Field

from shared.domain.rejections import Code, Rejected

#: Longest a token may live.
MAX_TOKEN_TTL = timedelta(days=30)
#: Agents remembered on a token (who used it), newest last.
REMEMBERED_USERS = 50
MAX_USES = 100_000
DEFAULT_TOKEN_TTL = timedelta(days=1)
#: A Google IAM principal granted subscriber on the agent's command subscription at enrollment.
#: One identity only (shared/services/command_channels.py grants nothing wider: never a domain, a group, allUsers
#: or a principalSet). Printable ASCII: the same set in JSON Schema's (ECMA) and pydantic's (Rust) regexes.
PRINCIPAL_PATTERN = r"^(?:(?:serviceAccount|user):[!-?A-~]+@[!-?A-~]+|principal://[!-~]+)$"


class TokenState(StrEnum):
    """Whether a token can still enroll (revoked wins over expired, expired over used up)."""

    ACTIVE = "active"
    EXPIRED = "expired"
    USED_UP = "used_up"
    REVOKED = "revoked"


class EnrollmentToken(BaseModel):
    """A stored token (``enrollment_tokens/{token_id}``): never its secret, only the secret's hash."""

    token_id: str
    tenant: str
    secret_sha256: str
    label: str = ""
    #: Scope within the tenant: one agent id, or ids starting with a prefix, or (neither) any.
    agent_id: str | None = None
    agent_prefix: str | None = None
    max_uses: int = Field(default=1, ge=1, le=MAX_USES)
    uses: int = 0
    used_by: list[str] = Field(default_factory=list)
    expires_at: datetime
    created_at: datetime
    created_by: str
    revoked_at: datetime | None = None
    revoked_by: str | None = None
    #: Optional Google principal given subscriber on the agent's command subscription when it enrolls.
    principal: str | None = Field(default=None, pattern=PRINCIPAL_PATTERN)

    def public(self) -> dict[str, Any]:
        """What the API lists (no hash)."""
        return self.model_dump(mode="json", exclude={"secret_sha256"})

    def state(self, at: datetime) -> TokenState:
        if self.revoked_at is not None:
            return TokenState.REVOKED
        if at >= self.expires_at:
            return TokenState.EXPIRED
        return TokenState.USED_UP if self.uses >= self.max_uses else TokenState.ACTIVE

    def in_scope(self, agent_id: str) -> bool:
        if self.agent_id is not None:
            return agent_id == self.agent_id
        return self.agent_prefix is None or agent_id.startswith(self.agent_prefix)


def validate_scope(agent_id: str | None, agent_prefix: str | None) -> None:
    """Raises ValueError when a requested scope is not one an agent id can have."""
    if agent_id is not None and agent_prefix is not None:
        raise ValueError("name an agent_id or an agent_prefix, not both")
    if agent_id is not None and not re.fullmatch(AGENT_ID_PATTERN, agent_id):
        raise ValueError("agent_id must be 3-63 chars of a-z, 0-9, - and _")
    if agent_prefix is not None and not re.fullmatch(r"^[a-z0-9][a-z0-9_-]{0,62}$", agent_prefix):
        raise ValueError("agent_prefix must be 1-63 chars of a-z, 0-9, - and _")


def issue(
    token_id: str,
    secret_sha256: str,
    *,
    tenant: str,
    label: str,
    agent_id: str | None,
    agent_prefix: str | None,
    max_uses: int,
    ttl: timedelta,
    principal: str | None,
    at: datetime,
    by: str,
) -> EnrollmentToken:
    """A new token's stored form. Raises ValueError for a scope, a number of uses or a lifetime out of bounds."""
    validate_scope(agent_id, agent_prefix)
    if not timedelta(minutes=1) <= ttl <= MAX_TOKEN_TTL:
        raise ValueError(f"a token lives from 1 minute to {MAX_TOKEN_TTL.days} days")
    return EnrollmentToken(
        token_id=token_id,
        tenant=tenant,
        secret_sha256=secret_sha256,
        label=label,
        agent_id=agent_id,
        agent_prefix=agent_prefix,
        max_uses=max_uses,
        expires_at=at + ttl,
        created_at=at,
        created_by=by,
        principal=principal,
    )


def scope_text(token: EnrollmentToken) -> str:
    """The agents a token enrolls, as people read it: ``agent-7``, ``build-*`` or ``any agent``."""
    if token.agent_id is not None:
        return token.agent_id
    return f"{token.agent_prefix}*" if token.agent_prefix is not None else "any agent"


def check(token: EnrollmentToken | None, secret_sha256: str, *, agent_id: str, tenant: str, at: datetime) -> None:
    """Raises Rejected (``token_*``) unless ``token`` may enroll ``agent_id`` of ``tenant`` at ``at``."""

    def refused(code: Code, why: str) -> Rejected:
        return Rejected(code, f"enrollment of agent {agent_id}: {why}", agent_id=agent_id, tenant=tenant)

    # An unknown id and a wrong secret read the same: the refusal does not say which ids exist.
    if token is None or not hmac.compare_digest(token.secret_sha256, secret_sha256):
        raise refused(Code.TOKEN_UNKNOWN, "the enrollment token is not known")
    if token.tenant != tenant:
        raise refused(Code.TOKEN_OUT_OF_SCOPE, f"token {token.token_id} is not for tenant {tenant}")
    if token.revoked_at is not None:
        raise refused(Code.TOKEN_REVOKED, f"token {token.token_id} was revoked")
    if at >= token.expires_at:
        raise refused(Code.TOKEN_EXPIRED, f"token {token.token_id} expired at {token.expires_at.isoformat()}")
    if token.uses >= token.max_uses:
        used = f"{token.uses} of {token.max_uses}"
        raise refused(Code.TOKEN_USED_UP, f"token {token.token_id} has been used {used} times")
    if not token.in_scope(agent_id):
        scope = token.agent_id or f"{token.agent_prefix}*"
        raise refused(Code.TOKEN_OUT_OF_SCOPE, f"token {token.token_id} enrolls {scope} only")


def use(token: EnrollmentToken, agent_id: str) -> dict[str, Any]:
    """The token's changed fields after one use by ``agent_id``."""
    return {"uses": token.uses + 1, "used_by": [*token.used_by, agent_id][-REMEMBERED_USERS:]}
