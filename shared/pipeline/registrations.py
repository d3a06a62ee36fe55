"""A registration: its key decision (enrollment, rotation, policy), the agent's write, its command channel.

The token document is read only for an enrollment (an agent without a key presenting a token:
shared/domain/registration_keys.py says when, by raising NeedsToken). The key it binds and the token
use are written in one batch, with preconditions on the agent document and on the token document as
read; when either changed meanwhile, both are read again and the registration decided again. A
redelivered enrollment is a duplicate (its event id is remembered with the agent) and consumes nothing.

A rotation (a registration carrying a new key, signed by the current one) is confirmed to the agent with
a signed ``key_rotated`` command naming the new key, sent once the new key is stored as current (and
again for a redelivered or repeated rotation): the SDK signs with the new key only then, so no event
signed by it arrives before the key is bound (Pub/Sub does not order across topics).

After an enrollment the agent's own command subscription is made (idempotent) before any command is
published to it; a registration carrying a token makes sure of it every time it is accepted or found a
duplicate, so a failure there (raise, redelivery) is repaired by the redelivery.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from fleet_agent.contracts import Command, CommandType

from shared.domain import agents as agent_domain
from shared.domain import identity, registration_keys
from shared.domain.agent_record import AgentRecord, Plan
from shared.domain.lifecycle import State
from shared.domain.rejections import Rejected
from shared.pipeline.decoding import Decoded
from shared.platform import settings
from shared.services import agent_commands, command_channels, lease_grants, leases
from shared.store import agents as agent_store
from shared.store import audit as audit_store
from shared.store import config
from shared.store import enrollment_tokens as token_store

#: Times an enrollment is decided again when its agent or token changed under it.
MAX_TOKEN_ATTEMPTS = 5


def process(decoded: Decoded) -> Plan:
    reg = decoded.registration
    received_at = decoded.message.published_at
    token: token_store.TokenSnapshot | None = None
    token_read = False
    overlap = timedelta(seconds=settings.get().key_overlap_s)
    signer = decoded.signature.key_id if decoded.signature is not None else None
    confirm: list[str] = []  # the rotation's new key id, when it is the agent's current key as written

    def decide(current: AgentRecord | None) -> Plan:
        tenant = current.tenant if current is not None else reg.tenant
        proof = registration_keys.Proof(
            signature=decoded.signature,
            message=decoded.signed_bytes,
            token=token.token if token is not None else None,
            token_read=token_read,
            overlap=overlap,
        )
        keys = registration_keys.decide(
            current.identity if current is not None else None, tenant, reg, proof,
            policy=config.identity(tenant).policy, received_at=received_at, event_id=decoded.event_id,
        )  # fmt: skip
        rotation = reg.identity.public_key if reg.identity is not None and not reg.identity.enrollment_token else None
        stored = keys.identity if keys.identity is not None else (current.identity if current is not None else None)
        confirm[:] = [key_id] if (key_id := identity.rotated_to(stored, rotation, signer)) else []
        return agent_domain.apply_registration(
            current, reg, event_id=decoded.event_id, received_at=received_at, keys=keys
        )

    carries_token = reg.identity is not None and reg.identity.enrollment_token is not None
    try:
        for _attempt in range(MAX_TOKEN_ATTEMPTS):
            try:
                plan = agent_store.update(reg.agent_id, decide, token=token)
                break
            except registration_keys.NeedsToken as needed:
                token, token_read = token_store.read(needed.token_id), True
            except agent_store.TokenConflict:
                token_id = token.token.token_id if token is not None else registration_keys.token_id_of(reg)
                token = token_store.read(token_id) if token_id else None
        else:
            raise RuntimeError(f"agent {reg.agent_id}: its enrollment kept conflicting")
    except Rejected as rejected:
        if carries_token:
            tenant = rejected.tenant or reg.tenant
            audit_store.append(registration_keys.refused_audit(reg, tenant, decoded.event_id, received_at, rejected))
        raise
    token_id = registration_keys.token_id_of(reg)
    if carries_token and plan.skipped != "superseded":
        # The principal of the token that enrolled the agent is granted subscriber on the subscription alone
        # (Google Cloud IAM: terraform/README.md). Only that token's: a signed registration naming any other
        # token (a stolen key's holder, say) grants nothing (None leaves the readers as they are). A
        # redelivered enrollment read no token: read it (rare) so the grant is repaired when the first
        # attempt failed after the agent's write.
        principal = None
        if _enrolled_by(reg.agent_id, token_id):
            if token is None and token_id is not None:
                token = token_store.read(token_id)
            principal = token.token.principal if token is not None and token.token.token_id == token_id else None
        command_channels.ensure(reg.agent_id, principal)
    if confirm and plan.skipped != "superseded":
        plan.commands.append(key_rotated(reg.agent_id, confirm[0]))
    if plan.commands:  # the agent's holds, re-sent to a restarted agent; a rotation's confirmation
        agent_commands.publish(plan.commands)
    if reg.leases and plan.skipped != "superseded":
        # The (re)started agent holds no lease: its first one, answering the registration as a request (a
        # redelivered registration gets the same lease). None while a hold stops it: the lease follows
        # its lifting, when the agent asks.
        current = agent_store.current(reg.agent_id, settings.get().config_cache_s)
        if current is not None and current.record.status is not State.DECOMMISSIONED:
            first = lease_grants.grant(
                current.record, leases.request_of(decoded.event_id), datetime.now(UTC), asked_at=received_at
            )
            if first is not None:
                agent_commands.publish([first])
                plan.commands.append(first)
    return plan


def _enrolled_by(agent_id: str, token_id: str | None) -> bool:
    """Whether the agent's stored key was bound by this token (as this instance last wrote or read it)."""
    snap = agent_store.cache.get(agent_id)
    bound = identity.AgentIdentity.of(snap.record.identity).token_id if snap is not None else None
    return token_id is not None and bound == token_id


def key_rotated(agent_id: str, key_id: str) -> Command:
    """The confirmation of a rotation to ``key_id`` (one id per key: the SDK acts on it once)."""
    return Command(
        agent_id=agent_id,
        command=CommandType.KEY_ROTATED,
        reason=f"key {key_id} is now the agent's key",
        issued_at=datetime.now(UTC),
        command_id=f"key_rotated.{key_id}",
        key_id=key_id,
    )
