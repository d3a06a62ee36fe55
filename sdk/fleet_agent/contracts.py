"""The event contract between agents and Agent Fleet Manager.

This module is the one definition of every message an agent publishes. The SDK encodes
with it and the Cloud Functions decode with it, so the two can never disagree. It depends
on pydantic only, so agents can install it without the server's dependencies.

The messages are defined by family in :mod:`fleet_agent.messages` (fields, agents, costs, commands,
jobs); this module names every one of them (``__all__``), so agents and the server import them from
here. It holds the wire itself: the event types and their topics, the envelope, :func:`encode`.

Wire format: a Pub/Sub message whose body is the JSON of an :class:`Envelope` and whose
attributes are ``agent_id``, ``event_type`` and ``schema_version``.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Protocol, TypeAlias

from pydantic import BaseModel, StringConstraints

from fleet_agent.messages.agents import (
    MAX_EXTRA_METRICS,
    BudgetSpec,
    Heartbeat,
    HeartbeatMetrics,
    KeyClaim,
    Registration,
    ReportedStatus,
    Resources,
)
from fleet_agent.messages.commands import (
    ACKED_COMMANDS,
    BLOCKING_COMMANDS,
    COMMANDS_V2,
    MAX_APPROVAL_EXPIRY_S,
    MIN_APPROVAL_EXPIRY_S,
    AckState,
    ApprovalKind,
    ApprovalRequest,
    BudgetPeriod,
    Command,
    CommandAck,
    CommandType,
)
from fleet_agent.messages.costs import (
    MAX_BATCH_OPERATIONS,
    MAX_BATCH_RECORDS,
    MAX_BATCH_SPAN,
    MAX_COST_PER_CALL_USD,
    MAX_TOKENS_PER_CALL,
    CostBatch,
    CostRecord,
    ModelName,
)
from fleet_agent.messages.fields import (
    AGENT_ID_PATTERN,
    MAX_INT,
    NAME_PATTERN,
    VERSION_PATTERN,
    AgentId,
    CallId,
    Label,
    LimitTokens,
    LimitUsd,
    ShortText,
    Strict,
    TenantId,
)
from fleet_agent.messages.jobs import JOB_ID_PATTERN, MAX_JOB_METRICS, JobId, JobPhase, JobProgress
from fleet_agent.messages.leases import (
    LEASE_ID_PATTERN,
    MAX_LEASE_MODELS,
    MAX_REQUEST_MODELS,
    ExactPrice,
    LeaseGrant,
    LeaseId,
    LeaseUse,
    ModelPrice,
    PriceTier,
    epoch_of,
    seq_of,
)

__all__ = [
    "ACKED_COMMANDS",
    "AGENT_ID_PATTERN",
    "BLOCKING_COMMANDS",
    "COMMANDS_V2",
    "DEFAULT_TOPICS",
    "EVENT_MODELS",
    "JOB_ID_PATTERN",
    "LEASE_ID_PATTERN",
    "MAX_APPROVAL_EXPIRY_S",
    "MAX_BATCH_OPERATIONS",
    "MAX_BATCH_RECORDS",
    "MAX_BATCH_SPAN",
    "MAX_COST_PER_CALL_USD",
    "MAX_EVENT_BYTES",
    "MAX_EXTRA_METRICS",
    "MAX_INT",
    "MAX_JOB_METRICS",
    "MAX_LEASE_MODELS",
    "MAX_REQUEST_MODELS",
    "MAX_TOKENS_PER_CALL",
    "MIN_APPROVAL_EXPIRY_S",
    "NAME_PATTERN",
    "SCHEMA_VERSION",
    "SUPPORTED_SCHEMA_VERSIONS",
    "VERSION_PATTERN",
    "AckState",
    "AgentId",
    "ApprovalKind",
    "ApprovalRequest",
    "BudgetPeriod",
    "BudgetSpec",
    "CallId",
    "Command",
    "CommandAck",
    "CommandType",
    "CostBatch",
    "CostRecord",
    "Envelope",
    "Event",
    "EventType",
    "ExactPrice",
    "Heartbeat",
    "HeartbeatMetrics",
    "JobId",
    "JobPhase",
    "JobProgress",
    "KeyClaim",
    "Label",
    "LeaseGrant",
    "LeaseId",
    "LeaseUse",
    "LimitTokens",
    "LimitUsd",
    "ModelName",
    "ModelPrice",
    "PriceTier",
    "Registration",
    "ReportedStatus",
    "Resources",
    "ShortText",
    "Signature",
    "Signer",
    "TenantId",
    "canonical_json",
    "encode",
    "epoch_of",
    "event_type_of",
    "json_schemas",
    "seq_of",
    "utcnow",
]

SCHEMA_VERSION = "1"
SUPPORTED_SCHEMA_VERSIONS = frozenset({SCHEMA_VERSION})

#: Largest message body the functions accept; larger ones are rejected, not processed.
MAX_EVENT_BYTES = 64 * 1024


class EventType(StrEnum):
    """The ``event_type`` attribute: which contract the body follows."""

    REGISTRATION = "registration"
    HEARTBEAT = "heartbeat"
    COST = "cost"
    COMMAND = "command"
    APPROVAL = "approval"
    #: A training job's progress and final metrics, sent by the job itself (fleet_agent.jobs).
    JOB_PROGRESS = "job_progress"
    #: An agent's acknowledgement of a remediation command (fleet_agent.messages.commands.CommandAck).
    COMMAND_ACK = "command_ack"


#: Default topic per event type. Deployments may prefix or rename topics (Terraform
#: outputs the real names); the SDK takes overrides. tests/unit checks these against
#: topology.yaml, the manifest the server side reads.
DEFAULT_TOPICS: dict[EventType, str] = {
    EventType.REGISTRATION: "agent-registrations",
    EventType.HEARTBEAT: "agent-heartbeats",
    EventType.COST: "agent-costs",
    EventType.COMMAND: "agent-commands",
    EventType.APPROVAL: "agent-approvals",
    EventType.JOB_PROGRESS: "job-progress",
    EventType.COMMAND_ACK: "agent-command-acks",
}


class Signature(Strict):
    """A detached signature over an event's canonical bytes (fleet_agent.identity.event_signing_bytes):
    which key made it (its id), the algorithm (``ed25519``) and the signature (unpadded base64url)."""

    key_id: Annotated[str, StringConstraints(min_length=1, max_length=128)]
    alg: Annotated[str, StringConstraints(min_length=1, max_length=32)]
    value: Annotated[str, StringConstraints(min_length=1, max_length=1024)]


class Envelope(Strict):
    """The message body: an event, its id (for deduplication) and an optional signature."""

    event_id: Annotated[str, StringConstraints(min_length=8, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]
    data: dict[str, Any]
    signature: Signature | None = None


EVENT_MODELS: dict[EventType, type[BaseModel]] = {
    EventType.REGISTRATION: Registration,
    EventType.HEARTBEAT: Heartbeat,
    EventType.COST: CostBatch,
    EventType.APPROVAL: ApprovalRequest,
    EventType.JOB_PROGRESS: JobProgress,
    EventType.COMMAND_ACK: CommandAck,
}

#: Any event an agent publishes (the models of EVENT_MODELS).
Event: TypeAlias = Registration | Heartbeat | CostBatch | ApprovalRequest | JobProgress | CommandAck


def event_type_of(event: BaseModel) -> EventType:
    for event_type, model in EVENT_MODELS.items():
        if isinstance(event, model):
            return event_type
    raise TypeError(f"not an event: {type(event).__name__}")


class Signer(Protocol):
    """What signs an agent's events: :class:`fleet_agent.identity.AgentKey` is one."""

    def sign_event(self, event_type: str, agent_id: str, event_id: str, tenant: str, data: Any) -> Signature: ...


def encode(
    event: Event, *, event_id: str | None = None, signer: Signer | None = None, tenant: str | None = None
) -> tuple[bytes, dict[str, str]]:
    """Body and attributes of the Pub/Sub message that carries ``event``, signed by ``signer`` when given.

    A signature covers the agent's ``tenant`` too (a registration names it; other events do not), so the
    signer must be told it: fleet_agent.identity.event_signing_bytes says exactly what is signed.
    """
    event_id = event_id or uuid.uuid4().hex
    data = event.model_dump(mode="json", exclude_none=True)
    event_type = event_type_of(event)
    signature = None
    if signer is not None:
        owner = tenant or getattr(event, "tenant", None)
        if not owner:
            raise ValueError("a signed event needs its agent's tenant")
        signature = signer.sign_event(event_type.value, event.agent_id, event_id, owner, data)
    envelope = Envelope(event_id=event_id, data=data, signature=signature)
    body = envelope.model_dump_json(exclude_none=True).encode()
    attributes = {
        "agent_id": event.agent_id,
        "event_type": event_type.value,
        "schema_version": SCHEMA_VERSION,
    }
    return body, attributes


def canonical_json(data: dict[str, Any]) -> bytes:
    """The bytes a signature covers: sorted keys, no whitespace."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def json_schemas() -> dict[str, dict[str, Any]]:
    """JSON Schema of the envelope and of each event, as published in docs/schemas/."""
    schemas: dict[str, dict[str, Any]] = {"envelope": Envelope.model_json_schema()}
    for event_type, model in EVENT_MODELS.items():
        schemas[event_type.value] = model.model_json_schema()
    schemas["command"] = Command.model_json_schema()
    return schemas


def utcnow() -> datetime:
    return datetime.now(UTC)
