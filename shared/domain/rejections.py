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


class Rejected(Exception):
    """Raised by decoding and domain checks; the entry point records it and acknowledges."""

    def __init__(self, code: Code, reason: str, *, agent_id: str | None = None, details: Any = None) -> None:
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason
        self.agent_id = agent_id
        self.details = details


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
