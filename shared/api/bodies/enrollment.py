"""The REST API's identity bodies: an enrollment token (asked for, created once with its text, listed
without it), and an agent's identity as its view shows it (shared/domain/identity.py)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fleet_agent.contracts import AGENT_ID_PATTERN
from fleet_agent.identity import PUBLIC_KEY_PATTERN
from pydantic import BaseModel, ConfigDict, Field

from shared.api.bodies.common import Reason, Timestamp, View
from shared.domain import enrollment
from shared.domain.enrollment import EnrollmentToken, TokenState
from shared.domain.identity import AgentIdentity, Status

_PREFIX_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"
_MAX_TTL_S = int(enrollment.MAX_TOKEN_TTL.total_seconds())


def _one_scope_doc(schema: dict[str, Any]) -> None:
    # The validation refuses agent_id and agent_prefix together: the document says so.
    schema["not"] = {"required": ["agent_id", "agent_prefix"], "properties": {
        "agent_id": {"type": "string"}, "agent_prefix": {"type": "string"}}}  # fmt: skip


class EnrollmentTokenCreate(BaseModel):
    """An enrollment token to make: its scope within the tenant, its uses and lifetime."""

    model_config = ConfigDict(extra="forbid", frozen=True, json_schema_extra=_one_scope_doc)

    label: str = Field(default="", max_length=200, description="What the token is for (shown in listings).")
    agent_id: str | None = Field(default=None, pattern=AGENT_ID_PATTERN, description="Enroll this agent only.")
    agent_prefix: str | None = Field(
        default=None, pattern=_PREFIX_PATTERN, description="Enroll agents whose id starts with this only."
    )
    max_uses: int = Field(default=1, ge=1, le=enrollment.MAX_USES, description="Enrollments it allows.")
    expires_in_s: int = Field(
        default=int(enrollment.DEFAULT_TOKEN_TTL.total_seconds()),
        ge=60,
        le=_MAX_TTL_S,
        description=f"Lifetime in seconds, from 60 to {_MAX_TTL_S} (30 days); default one day.",
    )
    principal: str | None = Field(
        default=None,
        pattern=enrollment.PRINCIPAL_PATTERN,
        max_length=300,
        description="A Google principal (e.g. serviceAccount:agent@project.iam.gserviceaccount.com) granted "
        "subscriber on the agent's command subscription when it enrolls.",
    )


class EnrollmentTokenView(View):
    """A stored enrollment token: never its secret nor the secret's hash."""

    token_id: str
    tenant: str
    label: str = ""
    scope: str = Field(description="The agents it enrolls: an agent id, a prefix followed by *, or 'any agent'.")
    agent_id: str | None = None
    agent_prefix: str | None = None
    max_uses: int
    uses: int = 0
    used_by: list[str] = Field(default_factory=list, description="Agents it enrolled, most recent last.")
    state: TokenState
    expires_at: Timestamp
    created_at: Timestamp
    created_by: str
    revoked_at: Timestamp | None = None
    revoked_by: str | None = None
    principal: str | None = None


class EnrollmentTokenCreated(EnrollmentTokenView):
    """A new token, with its text: shown once, never again."""

    token: str = Field(description="afmt1.<token_id>.<secret>.<fleet public key>: give it to the agent, once.")
    fleet_public_key: str = Field(
        pattern=PUBLIC_KEY_PATTERN, description="The key fleet commands are signed with (also inside the token)."
    )
    command_subscription: str = Field(
        description="The agent's own command subscription, created at enrollment (agent-commands.<agent_id>)."
    )


class EnrollmentTokenList(View):
    items: list[EnrollmentTokenView] = Field(description="Newest first.")


class IdentityView(View):
    """An agent's identity: whether its events are signed, and by which key."""

    status: Status = Field(description="signed (it has a key), unsigned (never enrolled) or revoked.")
    key_id: str | None = None
    public_key: str | None = Field(default=None, description="The current key (public, unpadded base64url).")
    enrolled_at: Timestamp | None = None
    rotations: int = 0
    token_id: str | None = Field(default=None, description="The enrollment token it last enrolled with.")
    revoked_at: Timestamp | None = None


class KeyRevokeRequest(BaseModel):
    """Why the key (or the token) is revoked, kept in the audit log."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    reason: Reason | None = None


class KeyRevokeView(View):
    """An agent's identity after its key was revoked: its events are refused until it enrolls again."""

    agent_id: str
    tenant: str
    revoked_now: bool = Field(description="False when it had no key already (revoking again changes nothing).")
    identity: IdentityView


def token_view(token: EnrollmentToken, at: datetime) -> EnrollmentTokenView:
    return EnrollmentTokenView.model_validate(_fields(token, at))


def created_view(token: EnrollmentToken, text: str, fleet_public_key: str, subscription: str,
                 at: datetime) -> EnrollmentTokenCreated:  # fmt: skip
    return EnrollmentTokenCreated.model_validate(
        {
            **_fields(token, at),
            "token": text,
            "fleet_public_key": fleet_public_key,
            "command_subscription": subscription,
        }
    )


def _fields(token: EnrollmentToken, at: datetime) -> dict[str, Any]:
    return {**token.public(), "scope": enrollment.scope_text(token), "state": token.state(at)}


def identity_view(stored: dict[str, Any] | None) -> IdentityView:
    identity = AgentIdentity.of(stored)
    current = identity.current
    return IdentityView(
        status=identity.status,
        key_id=current.key_id if current else None,
        public_key=current.public_key if current else None,
        enrolled_at=identity.enrolled_at,
        rotations=identity.rotations,
        token_id=identity.token_id,
        revoked_at=identity.revoked_at,
    )
