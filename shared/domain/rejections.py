"""Why an event was refused. A rejection is acknowledged (never retried) and recorded with its payload."""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from fleet_agent.contracts import MAX_EVENT_BYTES

#: Bytes of the original payload kept on a rejection (the size and sha256 of the whole are kept too):
#: every valid event fits whole, so a rejection can be replayed once its cause is fixed.
PAYLOAD_KEPT_BYTES = MAX_EVENT_BYTES


class Code(StrEnum):
    OVERSIZED = "oversized"
    NOT_JSON = "not_json"
    BAD_ENVELOPE = "bad_envelope"
    SCHEMA_VIOLATION = "schema_violation"
    WRONG_ATTRIBUTES = "wrong_attributes"
    UNSUPPORTED_SCHEMA_VERSION = "unsupported_schema_version"
    UNKNOWN_AGENT = "unknown_agent"
    TENANT_CONFLICT = "tenant_conflict"
    ILLEGAL_TRANSITION = "illegal_transition"
    DECOMMISSIONED = "agent_decommissioned"
    UNSTORABLE = "unstorable"
    IMPLAUSIBLE_TIME = "implausible_time"
    DELIVERY_EXHAUSTED = "delivery_exhausted"
    #: A training run reported on a job that does not exist or is another agent's.
    UNKNOWN_JOB = "unknown_job"
    #: A report, signed by its job's key, received after the job ended (its run was still stopping).
    JOB_ENDED = "job_ended"
    #: A command acknowledgement for a command the fleet did not send the agent (or of another type).
    UNKNOWN_COMMAND = "unknown_command"
    # Identity (shared/domain/identity.py): the claimed agent_id is unproven, so these rejections are kept
    # apart from that agent's record (``claimed_agent_id``) and count towards ``forged_events``.
    #: No signature, from an agent that has a key or of a tenant whose policy requires one.
    UNSIGNED = "unsigned"
    #: A signature that does not verify: forged, or the event was changed after it was signed.
    BAD_SIGNATURE = "bad_signature"
    #: Signed by a key the agent does not have (never had, or its overlap after a rotation is over).
    UNKNOWN_KEY = "unknown_key"
    #: Signed by a key that was revoked: the agent must enroll again with a new token.
    REVOKED_KEY = "revoked_key"
    # Enrollment tokens (shared/domain/enrollment.py), on a registration that binds a first key.
    TOKEN_UNKNOWN = "token_unknown"
    TOKEN_EXPIRED = "token_expired"
    TOKEN_USED_UP = "token_used_up"
    TOKEN_REVOKED = "token_revoked"
    TOKEN_OUT_OF_SCOPE = "token_out_of_scope"
    #: An OTLP span names another agent (``gen_ai.agent.id``) than the token that sent it (docs/otlp.md).
    AGENT_MISMATCH = "agent_mismatch"


#: Refusals whose ``agent_id`` is a claim nobody proved: recorded apart from the agent (``claimed_agent_id``).
UNPROVEN: frozenset[Code] = frozenset(
    {
        Code.UNSIGNED,
        Code.BAD_SIGNATURE,
        Code.UNKNOWN_KEY,
        Code.REVOKED_KEY,
        Code.TOKEN_UNKNOWN,
        Code.TOKEN_EXPIRED,
        Code.TOKEN_USED_UP,
        Code.TOKEN_REVOKED,
        Code.TOKEN_OUT_OF_SCOPE,
    }
)


class Rejected(Exception):
    """Raised by decoding and domain checks; the entry point records it and acknowledges."""

    def __init__(
        self, code: Code, reason: str, *, agent_id: str | None = None, details: Any = None, tenant: str | None = None
    ) -> None:
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason
        self.agent_id = agent_id
        self.details = details
        #: The tenant the event claimed (or its agent's): refused identities are counted per tenant too.
        self.tenant = tenant

    @property
    def unproven(self) -> bool:
        """Whether ``agent_id`` is only a claim (an identity refusal): kept apart from that agent."""
        return self.code in UNPROVEN


@dataclass(frozen=True)
class Payload:
    """The original message, kept for diagnosis and replay."""

    size: int
    sha256: str
    text: str | None = None  # when UTF-8
    base64: str | None = None  # otherwise
    truncated: bool = False
    attributes: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, raw: bytes, attributes: dict[str, str]) -> Payload:
        kept = raw[:PAYLOAD_KEPT_BYTES]
        try:
            text: str | None = kept.decode()
            b64 = None
        except UnicodeDecodeError:
            text, b64 = None, base64.b64encode(kept).decode()
        return cls(
            size=len(raw),
            sha256=hashlib.sha256(raw).hexdigest(),
            text=text,
            base64=b64,
            truncated=len(raw) > PAYLOAD_KEPT_BYTES,
            attributes=dict(attributes),
        )

    def as_dict(self) -> dict[str, Any]:
        out = {
            "size": self.size,
            "sha256": self.sha256,
            "truncated": self.truncated,
            "attributes": self.attributes,
        }
        if self.text is not None:
            out["text"] = self.text
        if self.base64 is not None:
            out["base64"] = self.base64
        return out
