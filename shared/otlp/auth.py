"""Who sent an OTLP request: the agent whose enrolled key signed its bearer token (docs/otlp.md).

The token (sdk/fleet_agent/otlp_token.py) is checked by the rules of a signed event
(shared/domain/identity.py ``check``) on the agent's document as this instance last saw it (at most
FLEET_CONFIG_CACHE_S old, as on the cost path); a refusal made on a cached copy is made again on a fresh
read, so a rotation elsewhere never refuses the new key's tokens.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from fleet_agent.messages.fields import AGENT_ID_PATTERN
from fleet_agent.otlp_token import MAX_LIFETIME_S, OtlpToken

from shared.domain import identity
from shared.domain.agent_record import AgentRecord
from shared.domain.lifecycle import State
from shared.domain.rejections import Code, Rejected
from shared.platform import settings
from shared.store import agents as agent_store

#: A token issued this far in the future (the agent's clock ahead of ours) is still accepted.
CLOCK_SKEW = timedelta(minutes=5)
_ID = re.compile(AGENT_ID_PATTERN)


@dataclass
class AuthRefused(Exception):
    """401 or 403; ``rejected``: what to record (None: an anonymous request, logged only)."""

    status: int
    code: str
    reason: str
    rejected: Rejected | None = None


def bearer(header: str | None) -> OtlpToken:
    """The token of an ``Authorization: Bearer afot1...`` header. Raises :class:`AuthRefused` (401, not recorded)."""
    scheme, _, text = (header or "").strip().partition(" ")
    if scheme.lower() != "bearer" or not text.strip():
        raise AuthRefused(401, "unauthenticated", "send Authorization: Bearer <token of fleet-agent otlp-token>")
    try:
        token = OtlpToken.parse(text)
    except (ValueError, RecursionError) as exc:  # RecursionError: a payload of nested JSON arrays
        raise AuthRefused(401, "unauthenticated", str(exc)[:300]) from None
    if not _ID.match(token.agent_id) or not _ID.match(token.tenant):
        raise AuthRefused(401, "unauthenticated", "the token's agent id or tenant is not a valid id")
    return token


def _refused(status: int, rejected: Rejected) -> AuthRefused:
    return AuthRefused(status, rejected.code.value, rejected.reason, rejected)


def _check(token: OtlpToken, record: AgentRecord, now: datetime) -> None:
    identity.check(
        record.identity,
        token.signature,
        lambda: token.signed_bytes(record.tenant),
        policy=identity.Policy.REQUIRED,
        received_at=now,
        agent_id=record.agent_id,
        tenant=record.tenant,
    )


def _key_known(record: AgentRecord, key_id: str) -> bool:
    """Whether ``key_id`` is (or was) a key of the agent: enrolled, rotated out or revoked."""
    ident = identity.AgentIdentity.of(record.identity)
    return key_id in ident.revoked_key_ids or any(k.key_id == key_id for k in ident.keys)


def _decide(token: OtlpToken, snap: agent_store.Snapshot | None, now: datetime) -> AgentRecord:
    claim = {"agent_id": token.agent_id, "tenant": token.tenant}
    if snap is None:  # anyone can name an agent id: logged only (docs/otlp.md, "Forged tokens")
        raise AuthRefused(401, Code.UNKNOWN_AGENT.value, f"agent {token.agent_id} is not registered")
    record = snap.record
    if not _key_known(record, token.key_id):  # a key id nobody enrolled: logged only, as above
        raise AuthRefused(
            401, Code.UNKNOWN_KEY.value, f"key {token.key_id[:40]} is not a key of agent {record.agent_id}"
        )
    at = now.timestamp()  # compared as numbers: a forged iat or exp may be beyond any datetime
    if token.exp - token.iat > MAX_LIFETIME_S or token.iat > at + CLOCK_SKEW.total_seconds() or at >= token.exp:
        why = "expired" if at >= token.exp else "issued in the future or lives more than 30 days"
        raise _refused(
            401, Rejected(Code.TOKEN_EXPIRED, f"the OTLP token is {why} (exp {str(token.exp)[:20]})", **claim)
        )
    try:
        _check(token, record, now)
    except ValueError as exc:  # the signed bytes cannot be made (not canonical JSON): no signature verifies
        raise _refused(
            401, Rejected(Code.BAD_SIGNATURE, f"the token cannot be verified: {exc}"[:300], **claim)
        ) from None
    if record.status is State.DECOMMISSIONED:
        raise _refused(403, Rejected(Code.DECOMMISSIONED, f"agent {record.agent_id} was decommissioned",
                                     agent_id=record.agent_id, tenant=record.tenant))  # fmt: skip
    return record


def authenticate(header: str | None, now: datetime) -> AgentRecord:
    """The agent the request speaks for. Raises :class:`AuthRefused`: 401 (not proven), 403 (decommissioned)
    or :class:`Rejected` (the signature check's refusal)."""
    token = bearer(header)
    started = time.monotonic()
    snap = agent_store.current(token.agent_id, settings.get().config_cache_s)
    try:
        return _decide(token, snap, now)
    except (AuthRefused, Rejected) as refused:
        about_keys = isinstance(refused, Rejected) or refused.code == Code.UNKNOWN_KEY.value
        if snap is None or snap.seen_at >= started or not about_keys:
            raise
    # Refused on a cached copy: a rotation elsewhere may have enrolled the key since, so read it again.
    return _decide(token, agent_store.read(token.agent_id), now)


def checked(header: str | None, now: datetime) -> AgentRecord:
    """:func:`authenticate`, with identity refusals turned into 401s."""
    try:
        return authenticate(header, now)
    except Rejected as rejected:
        raise _refused(401, rejected) from None
