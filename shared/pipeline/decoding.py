"""The single decode path: a Pub/Sub push (as a CloudEvent) -> a validated event, or a Rejected.

Every check on incoming agent telemetry lives here. The signature is carried through with what it
covers (:meth:`Decoded.signed_bytes`: the envelope's ``data`` as received, never the model's
re-serialisation); each processor checks it against the agent document it already reads
(shared/pipeline/signatures.py), since the agent's keys and tenant live there.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from fleet_agent.contracts import (
    AGENT_ID_PATTERN,
    EVENT_MODELS,
    MAX_EVENT_BYTES,
    SUPPORTED_SCHEMA_VERSIONS,
    Envelope,
    EventType,
    Heartbeat,
    Registration,
    Signature,
)
from fleet_agent.identity import event_signing_bytes
from pydantic import BaseModel, ValidationError, create_model

from shared.domain.rejections import Code, Rejected

_REQUIRED_ATTRIBUTES = ("agent_id", "event_type", "schema_version")
#: Signed bytes of an event whose data cannot be canonicalised: no signature verifies them.
UNSIGNABLE = b"\x00unsignable"


@dataclass(frozen=True)
class PushedMessage:
    """A Pub/Sub message as delivered by a push subscription (raw body, attributes, ids)."""

    message_id: str
    published_at: datetime
    raw: bytes
    attributes: dict[str, str]
    source: str = ""


@dataclass(frozen=True)
class Decoded:
    event: BaseModel
    event_type: EventType
    event_id: str
    message: PushedMessage
    signature: Signature | None

    def signed_bytes(self, tenant: str) -> Callable[[], bytes]:
        """What the signature must cover for an agent of ``tenant`` (built only when called: the fast
        path parsed the body once with pydantic; the raw ``data`` is parsed again only to verify)."""

        def build() -> bytes:
            try:
                data = json.loads(self.message.raw)["data"]
                agent_id = self.message.attributes["agent_id"]
                return event_signing_bytes(self.event_type.value, agent_id, self.event_id, tenant, data)
            except (ValueError, KeyError, TypeError, RecursionError):
                # Decoded, but not expressible as RFC 8785 JSON (an integer beyond 2**53): nothing
                # an honest signer could have signed, so no signature verifies.
                return UNSIGNABLE

        return build

    @property
    def registration(self) -> Registration:
        assert isinstance(self.event, Registration)
        return self.event

    @property
    def heartbeat(self) -> Heartbeat:
        assert isinstance(self.event, Heartbeat)
        return self.event


def message_from_cloudevent(data: Any, *, event_id: str, time: str | None, source: str = "") -> PushedMessage:
    """Unwrap what functions-framework makes of a push body: ``{"message": {data, attributes}}``."""
    message = (data or {}).get("message") or {}
    encoded = message.get("data") or ""
    try:
        raw = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raw = encoded.encode() if isinstance(encoded, str) else b""
    attributes = {str(k): str(v) for k, v in (message.get("attributes") or {}).items()}
    return PushedMessage(
        # Push bodies carry both spellings; a body with neither keeps the CloudEvent's id.
        message_id=str(message.get("messageId") or message.get("message_id") or event_id),
        published_at=_parse_time(message.get("publishTime") or time),
        raw=raw,
        attributes=attributes,
        source=source,
    )


def _parse_time(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, str) and value:
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            pass
    return datetime.now(UTC)


def decode(message: PushedMessage, expected: EventType) -> Decoded:
    """Validate size, attributes, envelope and event, in that order. Raises :class:`Rejected`."""
    attrs = message.attributes
    agent_attr = attrs.get("agent_id")
    agent_hint = agent_attr if agent_attr and re.fullmatch(AGENT_ID_PATTERN, agent_attr) else None
    if len(message.raw) > MAX_EVENT_BYTES:
        raise Rejected(
            Code.OVERSIZED,
            f"body is {len(message.raw)} bytes; the limit is {MAX_EVENT_BYTES}",
            agent_id=agent_hint,
        )
    missing = [name for name in _REQUIRED_ATTRIBUTES if not attrs.get(name)]
    if missing:
        raise Rejected(Code.WRONG_ATTRIBUTES, f"missing attributes: {', '.join(missing)}", agent_id=agent_hint)
    if attrs["event_type"] != expected.value:
        raise Rejected(
            Code.WRONG_ATTRIBUTES,
            f"event_type {attrs['event_type']!r} sent to the {expected.value} topic",
            agent_id=agent_hint,
        )
    if attrs["schema_version"] not in SUPPORTED_SCHEMA_VERSIONS:
        raise Rejected(
            Code.UNSUPPORTED_SCHEMA_VERSION,
            f"schema_version {attrs['schema_version']!r} is not one of {sorted(SUPPORTED_SCHEMA_VERSIONS)}",
            agent_id=agent_hint,
        )
    if agent_hint is None:
        raise Rejected(Code.WRONG_ATTRIBUTES, "attribute agent_id must be 3-63 chars of a-z, 0-9, - and _")
    try:
        # The fast path: one pass of pydantic-core over the raw bytes, for the valid messages that
        # are nearly all of them. Anything it refuses goes through the steps below, which say why.
        typed = _typed_envelope(expected).model_validate_json(message.raw)
        event = typed.data
    except ValueError:
        pass
    else:
        return _checked(Decoded(event, expected, typed.event_id, message, typed.signature), agent_hint)
    try:
        body = json.loads(message.raw)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, bad UTF-8, absurd nesting or numbers
        raise Rejected(Code.NOT_JSON, f"body is not JSON: {str(exc)[:200]}", agent_id=agent_hint) from None
    try:
        envelope = Envelope.model_validate(body)
    except ValidationError as exc:
        raise Rejected(Code.BAD_ENVELOPE, _summary(exc), agent_id=agent_hint, details=_errors(exc)) from None
    try:
        event = EVENT_MODELS[expected].model_validate(envelope.data)
    except ValidationError as exc:
        raise Rejected(Code.SCHEMA_VIOLATION, _summary(exc), agent_id=agent_hint, details=_errors(exc)) from None
    return _checked(Decoded(event, expected, envelope.event_id, message, envelope.signature), agent_hint)


def _checked(decoded: Decoded, agent_hint: str) -> Decoded:
    body_agent = getattr(decoded.event, "agent_id", None)
    if body_agent != agent_hint:
        raise Rejected(
            Code.WRONG_ATTRIBUTES,
            f"attribute agent_id {agent_hint!r} does not match body agent_id {body_agent!r}",
            agent_id=agent_hint,
        )
    return decoded


@functools.cache
def _typed_envelope(event_type: EventType) -> type[Envelope]:
    """The envelope with ``data`` typed as the event, validated from JSON in one pass."""
    model: type[Envelope] = create_model(
        f"{event_type.value.title()}Envelope", __base__=Envelope, data=(EVENT_MODELS[event_type], ...)
    )
    return model


def _errors(exc: ValidationError) -> list[dict[str, Any]]:
    return [{"loc": ".".join(str(p) for p in e["loc"]), "msg": e["msg"]} for e in exc.errors()[:20]]


def _summary(exc: ValidationError) -> str:
    parts = [f"{e['loc']}: {e['msg']}" for e in _errors(exc)[:5]]
    more = exc.error_count() - len(parts)
    return "; ".join(parts) + (f" (+{more} more)" if more > 0 else "")
