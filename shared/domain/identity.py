"""Agent identity: which keys speak for an agent, and whether an event's signature proves it did.

An agent's keys live in its own document (``identity``, read by every path that decides on the agent),
so checking a signature costs no read. The rules:

- An agent with a key must sign every event with it: an unsigned event is refused under any policy.
- An agent that never enrolled is refused under the tenant's ``required`` policy; under ``optional`` (a
  migration) its events are accepted and it shows as ``identity: unsigned``. An agent whose key was revoked
  is refused under either policy until it enrolls again (else anyone could speak for it, unsigned).
- After a rotation the previous key stays valid until ``valid_until`` (an overlap), judged by when Pub/Sub
  received the event, so events already in flight are not lost.
- A revoked key's events are refused; the agent enrolls again with a new token.
- The fleet speaks for an agent in one case only: a training job's settlement, the cost batch
  ``job.<job id>`` (shared/training/follow.py), is signed by the fleet key and by nothing else
  (:func:`check_settlement`). No other event is believed from the fleet key, and no agent may send a
  ``job.`` batch (it would take the settlement's marker and hide the job's spend).
- A training run signs its reports with its job's own key (:func:`check_job`), valid while the job runs.

Pure: the signature check is arithmetic (fleet_agent.identity.verify), no I/O.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from fleet_agent.contracts import Signature
from fleet_agent.identity import key_id_of, verify
from pydantic import BaseModel, ConfigDict, Field

from shared.domain.rejections import Code, Rejected

#: Cost batches with this id prefix are the fleet's job settlements: signed by the fleet key only.
SETTLEMENT_PREFIX = "job."
#: A job's key still verifies reports Pub/Sub received this long after the fleet recorded the job's end
#: (the clocks of Pub/Sub and of the function that saw the end may differ by this much).
JOB_KEY_GRACE = timedelta(seconds=30)

#: Revoked key ids remembered per agent (a revoked key is refused as revoked rather than unknown).
REMEMBERED_REVOKED = 10


class Policy(StrEnum):
    REQUIRED = "required"
    OPTIONAL = "optional"


class IdentityConfig(BaseModel):
    """A tenant's identity settings (``PUT /v1/tenants/{t}/identity``, a settings kind of shared/api/settings.py)."""

    model_config = ConfigDict(extra="forbid")

    #: ``required``: unsigned events are refused. ``optional``: a migration; unsigned agents are shown so.
    policy: Policy = Policy.REQUIRED
    #: Refused events per claimed agent (or for the tenant) in an hour above which ``forged_events`` opens.
    forged_events_per_hour: int = Field(default=10, ge=1, le=1_000_000)


class Status(StrEnum):
    """What the API shows as an agent's ``identity``."""

    SIGNED = "signed"
    UNSIGNED = "unsigned"
    REVOKED = "revoked"


class KeyRecord(BaseModel):
    key_id: str
    public_key: str
    bound_at: datetime
    #: Set on a key replaced by a rotation: it verifies events Pub/Sub received before this time.
    valid_until: datetime | None = None


class AgentIdentity(BaseModel):
    """The ``identity`` map of an agent document."""

    #: The current key first, then a rotated-out key still in its overlap.
    keys: list[KeyRecord] = Field(default_factory=list)
    revoked_key_ids: list[str] = Field(default_factory=list)
    revoked_at: datetime | None = None
    revoked_by: str | None = None
    #: The token of the last enrollment, and when it happened.
    token_id: str | None = None
    enrolled_at: datetime | None = None
    rotations: int = 0
    #: ``sent_at`` of the newest signed registration accepted: an older one is a replay or superseded.
    registration_sent_at: datetime | None = None

    @classmethod
    def of(cls, stored: dict[str, Any] | None) -> AgentIdentity:
        return cls.model_validate(stored or {})

    def doc(self) -> dict[str, Any]:
        return self.model_dump()

    @property
    def current(self) -> KeyRecord | None:
        return self.keys[0] if self.keys else None

    @property
    def status(self) -> Status:
        if self.keys:
            return Status.SIGNED
        return Status.REVOKED if self.revoked_key_ids else Status.UNSIGNED


def status_of(stored: dict[str, Any] | None) -> Status:
    return AgentIdentity.of(stored).status


def check(
    stored: dict[str, Any] | None,
    signature: Signature | None,
    message: Callable[[], bytes],
    *,
    policy: Policy,
    received_at: datetime,
    agent_id: str,
    tenant: str | None,
) -> KeyRecord | None:
    """The key that signed the event, or None for an unsigned event the policy accepts. Raises Rejected.

    ``message`` builds the signed bytes (fleet_agent.identity.event_signing_bytes), only when needed.
    """
    identity = AgentIdentity.of(stored)
    if signature is None:
        if identity.keys:
            raise _refused(Code.UNSIGNED, f"agent {agent_id} has a key: its events must be signed", agent_id, tenant)
        if identity.revoked_key_ids or identity.enrolled_at is not None:
            # Once enrolled, always signed: under ``optional`` a revoked agent would otherwise be anyone's to
            # speak for, unsigned, until it enrolls again.
            raise _refused(
                Code.UNSIGNED, f"agent {agent_id} enrolled once and its key was revoked: enroll again", agent_id,
                tenant,
            )  # fmt: skip
        if policy is Policy.REQUIRED:
            why = "its key was revoked; enroll again" if identity.revoked_key_ids else "it has not enrolled"
            raise _refused(
                Code.UNSIGNED, f"tenant {tenant} requires signed events and agent {agent_id}: {why}", agent_id, tenant
            )
        return None
    if signature.key_id in identity.revoked_key_ids:
        raise _refused(Code.REVOKED_KEY, f"key {signature.key_id} of agent {agent_id} was revoked", agent_id, tenant)
    key = next((k for k in identity.keys if k.key_id == signature.key_id), None)
    if key is None or (key.valid_until is not None and received_at >= key.valid_until):
        raise _refused(Code.UNKNOWN_KEY, f"key {signature.key_id} is not a key of agent {agent_id}", agent_id, tenant)
    if not verify(key.public_key, signature, message()):
        raise _refused(
            Code.BAD_SIGNATURE,
            f"the signature does not verify with key {key.key_id} of agent {agent_id} (forged or altered)",
            agent_id,
            tenant,
        )
    return key


def check_possession(public_key: str, signature: Signature | None, message: Callable[[], bytes], agent_id: str,
                     tenant: str) -> None:  # fmt: skip
    """An enrollment is signed by the key it binds: the agent proves it holds the private half."""
    if signature is None or signature.key_id != key_id_of(public_key) or not verify(public_key, signature, message()):
        raise _refused(
            Code.BAD_SIGNATURE, f"the enrollment of agent {agent_id} is not signed by the key it enrolls", agent_id,
            tenant,
        )  # fmt: skip


def is_settlement(batch_id: str) -> bool:
    return batch_id.startswith(SETTLEMENT_PREFIX)


def check_settlement(
    fleet_public_key: str | None, signature: Signature | None, message: Callable[[], bytes], *, agent_id: str,
    tenant: str | None,
) -> None:  # fmt: skip
    """A settlement batch (:func:`is_settlement`) is proven by the fleet key alone, for any agent of any
    tenant, whatever the agent's keys or its tenant's policy. Raises Rejected."""
    if fleet_public_key is None:
        raise _refused(Code.UNSIGNED, "no fleet key is configured to check a job settlement", agent_id, tenant)
    if signature is None:
        raise _refused(Code.UNSIGNED, f"job settlements ({SETTLEMENT_PREFIX}*) are signed by the fleet", agent_id,
                       tenant)  # fmt: skip
    if signature.key_id != key_id_of(fleet_public_key):
        raise _refused(
            Code.UNKNOWN_KEY,
            f"key {signature.key_id} is not the fleet's: batches {SETTLEMENT_PREFIX}* are the fleet's job settlements",
            agent_id,
            tenant,
        )
    if not verify(fleet_public_key, signature, message()):
        raise _refused(Code.BAD_SIGNATURE, "the settlement's signature does not verify with the fleet key", agent_id,
                       tenant)  # fmt: skip


def check_job(
    job_key: str | None,
    finished_at: datetime | None,
    signature: Signature | None,
    message: Callable[[], bytes],
    *,
    policy: Policy,
    received_at: datetime,
    agent_id: str,
    tenant: str,
) -> bool:
    """A training run's report, proven by its job's own key (``job_key``, minted at launch); True when
    signed. A job with a key must sign every report; a job without one (launched before jobs had keys)
    is held to its tenant's policy like an agent without a key. The key verifies reports Pub/Sub received
    before the job ended (``finished_at``, plus :data:`JOB_KEY_GRACE`): a finished job's key proves
    nothing. Raises Rejected."""
    if signature is None:
        if job_key is not None or policy is Policy.REQUIRED:
            raise _refused(Code.UNSIGNED, f"the job's reports must be signed with its job key (agent {agent_id})",
                           agent_id, tenant)  # fmt: skip
        return False
    if job_key is None or signature.key_id != key_id_of(job_key):
        raise _refused(Code.UNKNOWN_KEY, f"key {signature.key_id} is not the job's key", agent_id, tenant)
    if not verify(job_key, signature, message()):
        raise _refused(Code.BAD_SIGNATURE, "the report's signature does not verify with the job's key", agent_id,
                       tenant)  # fmt: skip
    if finished_at is not None and received_at >= finished_at + JOB_KEY_GRACE:
        # Proven (the job's own key), only late: a run still reporting while its stop is carried out is
        # not a forgery, so this is no identity refusal and never counts towards forged_events.
        raise Rejected(
            Code.JOB_ENDED,
            f"the job ended at {finished_at.isoformat()}; its run's later reports change nothing",
            agent_id=agent_id,
            tenant=tenant,
        )
    return True


def bind(stored: dict[str, Any] | None, public_key: str, *, token_id: str, at: datetime) -> dict[str, Any]:
    """The identity after an enrollment: ``public_key`` is the only key."""
    identity = AgentIdentity.of(stored)
    identity.keys = [KeyRecord(key_id=key_id_of(public_key), public_key=public_key, bound_at=at)]
    identity.token_id = token_id
    identity.enrolled_at = at
    identity.revoked_at = identity.revoked_by = None
    return identity.doc()


def rotate(stored: dict[str, Any] | None, public_key: str, *, at: datetime, overlap: timedelta) -> dict[str, Any]:
    """The identity after a rotation to ``public_key``; the old key verifies events received in ``overlap``."""
    identity = AgentIdentity.of(stored)
    if identity.current is not None and identity.current.public_key == public_key:
        return identity.doc()
    previous = [k.model_copy(update={"valid_until": k.valid_until or at + overlap}) for k in identity.keys[:1]]
    identity.keys = [KeyRecord(key_id=key_id_of(public_key), public_key=public_key, bound_at=at), *previous]
    identity.rotations += 1
    return identity.doc()


def rotated_to(stored: dict[str, Any] | None, claimed_public_key: str | None, signed_by: str | None) -> str | None:
    """The key id to confirm to the agent (``key_rotated``) when a rotation's new key (``claimed_public_key``,
    presented by a registration signed by another key, ``signed_by``) is the agent's current key in
    ``stored`` (its identity as written); None otherwise."""
    current = AgentIdentity.of(stored).current
    if claimed_public_key is None or current is None or current.public_key != claimed_public_key:
        return None
    if signed_by is None or signed_by == current.key_id:  # not a rotation: the key presents itself
        return None
    return current.key_id


def revoke(stored: dict[str, Any] | None, *, at: datetime, by: str) -> dict[str, Any]:
    """The identity after a revocation: no key; every key it had is refused as revoked."""
    identity = AgentIdentity.of(stored)
    revoked = [*identity.revoked_key_ids, *(k.key_id for k in identity.keys)]
    identity.revoked_key_ids = revoked[-REMEMBERED_REVOKED:]
    identity.keys = []
    identity.revoked_at = at
    identity.revoked_by = by
    return identity.doc()


def _refused(code: Code, reason: str, agent_id: str, tenant: str | None) -> Rejected:
    return Rejected(code, reason, agent_id=agent_id, tenant=tenant)
