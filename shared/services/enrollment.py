"""Enrollment tokens as people handle them, whoever asks (the REST API, ``fleetctl enroll``, ``/fleet
enroll``): create one (shown once), list and revoke them, each change audited in its own commit.

Callers check who may do it (an approver or admin of the tenant); a token that cannot be made or found
raises shared.services.agent_controls.Refused. The token's text is returned to the caller only: it is
never logged, stored (only the SHA-256 of its secret is) nor written into an audit entry.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from fleet_agent.identity import EnrollmentToken as TokenText
from fleet_agent.identity import command_subscription
from pydantic import ValidationError

from shared.domain import enrollment
from shared.domain.enrollment import EnrollmentToken
from shared.platform import fleet_key
from shared.services.agent_controls import Actor, Refused, audit_entry
from shared.store import enrollment_tokens as token_store

#: The command subscription of an agent a token may enroll, when its id is not fixed by the token.
SUBSCRIPTION_PATTERN = command_subscription("<agent_id>")


@dataclass(frozen=True)
class Created:
    """A new token: its text (show it once, then forget it) and what is stored."""

    text: str
    token: EnrollmentToken
    fleet_public_key: str

    @property
    def subscription(self) -> str:
        """The agent's command subscription, created at enrollment (a pattern unless one agent is named)."""
        return command_subscription(self.token.agent_id) if self.token.agent_id else SUBSCRIPTION_PATTERN


def create(
    tenant: str,
    actor: Actor,
    at: datetime,
    *,
    label: str = "",
    agent_id: str | None = None,
    agent_prefix: str | None = None,
    max_uses: int = 1,
    ttl: timedelta = enrollment.DEFAULT_TOKEN_TTL,
    principal: str | None = None,
) -> Created:
    """Make and store a token for ``tenant``; 503 without a fleet key, 400 for a scope out of bounds."""
    try:
        fleet_public_key = fleet_key.public_key()
    except fleet_key.MissingFleetKey:
        raise Refused(
            503, "the fleet's command key is not configured (secret fleet-command-key), so no token can be made"
        ) from None
    text = TokenText.new(fleet_public_key)
    try:
        token = enrollment.issue(
            text.token_id,
            text.secret_sha256,
            tenant=tenant,
            label=label,
            agent_id=agent_id,
            agent_prefix=agent_prefix,
            max_uses=max_uses,
            ttl=ttl,
            principal=principal,
            at=at,
            by=actor.name,
        )
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        raise Refused(400, f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}") from None
    except ValueError as exc:
        raise Refused(400, str(exc)) from None
    details = {
        "token_id": token.token_id,
        "label": label,
        "scope": enrollment.scope_text(token),
        "max_uses": max_uses,
        "expires_at": token.expires_at.isoformat(),
        "principal": principal,
    }
    entry = audit_entry(actor, "enrollment_token.create", f"enrollment_token.{token.token_id}", tenant, details, at)
    token_store.create(token, entry)
    return Created(str(text), token, fleet_public_key)


def get(tenant: str, token_id: str) -> EnrollmentToken:
    """One token of the tenant; 404 when unknown or another tenant's (which are not told apart)."""
    token = token_store.get(token_id) if _is_token_id(token_id) else None
    if token is None or token.tenant != tenant:
        raise Refused(404, f"enrollment token {token_id[:64]} not found in tenant {tenant}")
    return token


def listing(tenant: str) -> list[EnrollmentToken]:
    """The tenant's tokens, newest first."""
    return token_store.list_tenant(tenant)


def revoke(tenant: str, token_id: str, actor: Actor, at: datetime) -> EnrollmentToken:
    """Revoke a token of the tenant (idempotent: revoking again changes nothing); 404 when unknown."""
    entry = audit_entry(actor, "enrollment_token.revoke", f"enrollment_token.{token_id}", tenant, {}, at)
    token = (
        token_store.revoke(token_id, at=at, by=actor.name, entry=entry, tenant=tenant)
        if _is_token_id(token_id)
        else None
    )
    if token is None:
        raise Refused(404, f"enrollment token {token_id[:64]} not found in tenant {tenant}")
    return token


def _is_token_id(value: str) -> bool:
    return len(value) == 16 and all(c in "0123456789abcdef" for c in value)
