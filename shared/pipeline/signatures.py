"""An agent event's signature, checked against the keys in the agent document its path already reads.

Every processor calls :func:`check` on the record it decides on, before the record decides anything:
no read is added (the keys ride in the agent document), and the bytes the signature covers are built
only here (shared/pipeline/decoding.py ``Decoded.signed_bytes``). The tenant a signature covers is the
agent's as stored, so an event can never be moved to another tenant.

Staleness. A refusal computed on a cached copy of the agent is confirmed on a fresh read before it is
recorded (:func:`check_fresh`, and shared/store/agents.py ``update`` for the paths that write the agent),
so a rotation or enrollment made by another instance never refuses the new key's events. An acceptance
on a cached copy stands: on the heartbeat path the write carries a precondition (a revocation since
fails it, and the decision is made again); on the cost path see shared/services/accounting.py.

A job settlement (the cost batch ``job.<id>``) is the fleet's, not the agent's: :func:`check_settlement`
proves it with the fleet key this instance already loads to sign commands (no read either).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from shared.domain import identity
from shared.domain.agent_record import AgentRecord
from shared.domain.rejections import Rejected
from shared.pipeline.decoding import Decoded
from shared.platform import fleet_key
from shared.store import agents as agent_store
from shared.store import config


def check(decoded: Decoded, record: AgentRecord) -> identity.KeyRecord | None:
    """The key that signed ``decoded`` (None: unsigned, and the tenant's policy allows it). Raises Rejected."""
    tenant = record.tenant
    # The policy matters only to an unsigned event of an agent without a key: read (cached) only then.
    unsigned_unkeyed = decoded.signature is None and not record.identity.get("keys")
    return identity.check(
        record.identity,
        decoded.signature,
        decoded.signed_bytes(tenant),
        policy=config.identity(tenant).policy if unsigned_unkeyed else identity.Policy.REQUIRED,
        received_at=decoded.message.published_at,
        agent_id=record.agent_id,
        tenant=tenant,
    )


def check_fresh(
    decoded: Decoded, load: Callable[[], agent_store.Snapshot | None]
) -> tuple[agent_store.Snapshot | None, identity.KeyRecord | None]:
    """``load`` the agent (possibly from this instance's cache) and check ``decoded`` on it; a refusal
    made on a copy not read by this call is made again on a fresh read. Returns the snapshot decided on
    (None: the agent is unknown) and the key."""
    started = time.monotonic()
    snap = load()
    if snap is None:
        return None, None
    try:
        return snap, check(decoded, snap.record)
    except Rejected:
        if snap.seen_at >= started:  # read (or written) by this very call: as fresh as a read
            raise
    fresh = agent_store.read(snap.record.agent_id)
    if fresh is None:
        return None, None
    return fresh, check(decoded, fresh.record)


def fleet_public_key() -> str | None:
    """The fleet key's public half (loaded once per instance); None when no fleet key is configured."""
    try:
        return fleet_key.public_key()
    except fleet_key.MissingFleetKey:
        return None


def check_settlement(decoded: Decoded, record: AgentRecord) -> None:
    """A job settlement for ``record``'s agent, signed by the fleet key over the agent's tenant. Raises Rejected."""
    identity.check_settlement(
        fleet_public_key(), decoded.signature, decoded.signed_bytes(record.tenant), agent_id=record.agent_id,
        tenant=record.tenant,
    )  # fmt: skip
