"""What a registration does to an agent's keys: enrollment with a token, rotation, re-registration, and
the replay rules of signed registrations. Pure: the caller reads the token document (only when this
says an enrollment needs it, :class:`NeedsToken`) and applies the decision (shared/domain/agents.py).

- An agent with a key: the registration must be signed by a key identity.check accepts, under any
  policy. Carrying a public key other than the current one and signed by the current key: a rotation
  (the old key keeps verifying events received during the overlap). A registration that also carries an
  enrollment token is treated the same way when signed by the current key (a redelivered enrollment, or
  an agent that keeps sending its token): the token is ignored and nothing consumed. Signed by any other
  key, a token cannot replace a key: refused; revoke the key first, then enroll again.
- An agent without a key (new, never enrolled, or revoked) with a token: the token is checked, the
  registration must be signed by the key it enrolls (possession), then the key is bound and one use of
  the token consumed, in the agent's write.
- Without a key and without a token: the tenant's policy (required: refused ``unsigned``; optional:
  accepted, and the agent shows ``identity: unsigned``).
- Replay: a signed registration carries ``sent_at``. One sent more than MAX_BEHIND before, or MAX_AHEAD
  after, its Pub/Sub publish time is refused (``implausible_time``): a captured registration replays for
  minutes at most. Within that window, one not sent after the newest accepted signed registration
  (``identity.registration_sent_at``) is superseded (no change), and a redelivery is a duplicate by its
  event id: replaying a captured registration changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from fleet_agent.contracts import Registration, Signature
from fleet_agent.identity import EnrollmentToken as TokenText
from fleet_agent.identity import key_id_of

from shared.domain import enrollment, identity
from shared.domain.audit import AuditEntry
from shared.domain.enrollment import EnrollmentToken
from shared.domain.identity import AgentIdentity, Policy
from shared.domain.rejections import Code, Rejected

#: How far a signed registration's ``sent_at`` may be behind / ahead of its publish time.
MAX_BEHIND = timedelta(minutes=10)
MAX_AHEAD = timedelta(minutes=5)


class NeedsToken(Exception):
    """An enrollment: the decision needs the token's document (``token_id``), read by the caller."""

    def __init__(self, token_id: str) -> None:
        super().__init__(f"enrollment token {token_id} must be read")
        self.token_id = token_id


@dataclass(frozen=True)
class Proof:
    """What a registration brings to prove who sent it."""

    signature: Signature | None
    #: The signed bytes for an agent of a tenant (built only when a signature is checked).
    message: Callable[[str], Callable[[], bytes]]
    #: The token document, once read (``token_read``; None when it does not exist).
    token: EnrollmentToken | None = None
    token_read: bool = False
    overlap: timedelta = timedelta(minutes=10)


@dataclass
class KeyDecision:
    """The identity after the registration (None: unchanged), a token use to write, audit entries."""

    identity: dict[str, Any] | None = None
    token_use: dict[str, Any] | None = None
    audit: list[AuditEntry] = field(default_factory=list)
    #: Whether the registration was signed by a key the fleet accepts (then its ``sent_at`` counts).
    signed: bool = False


def token_id_of(reg: Registration) -> str | None:
    """The id of the token a registration carries (never the secret), if it parses."""
    claim = reg.identity
    if claim is None or claim.enrollment_token is None:
        return None
    return token_id_of_text(claim.enrollment_token)


def token_id_of_text(text: str) -> str | None:
    try:
        return TokenText.parse(text).token_id
    except ValueError:
        return None


def decide(
    stored: dict[str, Any] | None,
    tenant: str,
    reg: Registration,
    proof: Proof,
    *,
    policy: Policy,
    received_at: datetime,
    event_id: str,
) -> KeyDecision:
    """The key decision for ``reg`` on an agent of ``tenant`` whose identity is ``stored``. Raises
    Rejected (an unproven identity, a token refused) or NeedsToken."""
    current = AgentIdentity.of(stored)
    claim = reg.identity
    message = proof.message(tenant)
    agent_id = reg.agent_id
    if current.current is not None:
        key = identity.check(stored, proof.signature, message, policy=policy, received_at=received_at,
                             agent_id=agent_id, tenant=tenant)  # fmt: skip
        assert key is not None  # an agent with a key accepts signed events only
        decision = KeyDecision(signed=True)
        if claim is not None and claim.public_key != current.current.public_key:
            if key.key_id != current.current.key_id:
                raise Rejected(
                    Code.UNKNOWN_KEY,
                    f"agent {agent_id}: a new key must be presented signed by the current key "
                    f"{current.current.key_id}, not {key.key_id} (or revoke and enroll again)",
                    agent_id=agent_id,
                    tenant=tenant,
                )
            _not_revoked(current, claim.public_key, agent_id, tenant)
            decision.identity = identity.rotate(stored, claim.public_key, at=received_at, overlap=proof.overlap)
            details = {"from_key_id": key.key_id, "to_key_id": AgentIdentity.of(decision.identity).keys[0].key_id}
            decision.audit.append(_audit(reg, tenant, event_id, received_at, "agent.key_rotate", "rotated", details))
        return decision
    if claim is not None and claim.enrollment_token is not None:
        try:
            token = TokenText.parse(claim.enrollment_token)
        except ValueError:
            raise Rejected(Code.TOKEN_UNKNOWN, f"enrollment of agent {agent_id}: not an enrollment token",
                           agent_id=agent_id, tenant=tenant) from None  # fmt: skip
        # Before the token is read or a use consumed: a revoked key stays revoked, enroll with a new one.
        _not_revoked(current, claim.public_key, agent_id, tenant)
        if not proof.token_read:
            raise NeedsToken(token.token_id)
        enrollment.check(proof.token, token.secret_sha256, agent_id=agent_id, tenant=tenant, at=received_at)
        assert proof.token is not None
        identity.check_possession(claim.public_key, proof.signature, message, agent_id, tenant)
        bound = identity.bind(stored, claim.public_key, token_id=token.token_id, at=received_at)
        use = enrollment.use(proof.token, agent_id)
        details = {"token_id": token.token_id, "key_id": AgentIdentity.of(bound).keys[0].key_id, "uses": use["uses"]}
        entry = _audit(reg, tenant, event_id, received_at, "enrollment.use", "enrolled", details)
        return KeyDecision(identity=bound, token_use=use, audit=[entry], signed=True)
    key = identity.check(stored, proof.signature, message, policy=policy, received_at=received_at,
                         agent_id=agent_id, tenant=tenant)  # fmt: skip
    assert key is None  # no key to sign with: an accepted registration is an unsigned one
    return KeyDecision()


def _not_revoked(current: AgentIdentity, public_key: str, agent_id: str, tenant: str) -> None:
    if key_id_of(public_key) in current.revoked_key_ids:
        raise Rejected(
            Code.REVOKED_KEY,
            f"agent {agent_id}: key {key_id_of(public_key)} was revoked; enroll with a new key",
            agent_id=agent_id,
            tenant=tenant,
        )


def replayed(reg: Registration, stored: dict[str, Any] | None, received_at: datetime) -> bool:
    """For a signed registration: raises Rejected (implausible_time) when its ``sent_at`` is missing or
    too far from its publish time; True when it was not sent after the newest one accepted (superseded)."""
    sent_at = reg.sent_at
    if sent_at is None or not received_at - MAX_BEHIND <= sent_at <= received_at + MAX_AHEAD:
        raise Rejected(
            Code.IMPLAUSIBLE_TIME,
            f"a signed registration of agent {reg.agent_id} must carry sent_at within {MAX_BEHIND} before and "
            f"{MAX_AHEAD} after its publish time {received_at.isoformat()}; it says "
            f"{sent_at.isoformat() if sent_at else 'nothing'}: check the agent's clock (or a replay)",
            agent_id=reg.agent_id,
        )
    newest = AgentIdentity.of(stored).registration_sent_at
    return newest is not None and sent_at <= newest


def with_sent_at(identity_doc: dict[str, Any], reg: Registration) -> dict[str, Any]:
    """``identity_doc`` after accepting the signed ``reg``."""
    return {**identity_doc, "registration_sent_at": reg.sent_at}


def refused_audit(reg: Registration, tenant: str, event_id: str, at: datetime, rejected: Rejected) -> AuditEntry:
    """The audit entry of a refused enrollment (the token's id, never its secret)."""
    details = {"token_id": token_id_of(reg), "code": rejected.code.value, "reason": rejected.reason}
    return _audit(reg, tenant, event_id, at, "enrollment.refused", rejected.code.value, details)


def _audit(reg: Registration, tenant: str, event_id: str, at: datetime, action: str, outcome: str,
           details: dict[str, Any]) -> AuditEntry:  # fmt: skip
    return AuditEntry(
        id=f"{reg.agent_id}.{event_id}.{action}",
        at=at,
        actor=f"agent:{reg.agent_id}",
        action=action,
        target=reg.agent_id,
        outcome=outcome,
        tenant=tenant,
        details=details,
    )
