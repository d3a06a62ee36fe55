"""The event contract between agents and Agent Fleet Manager.

This module is the one definition of every message an agent publishes. The SDK encodes
with it and the Cloud Functions decode with it, so the two can never disagree. It depends
on pydantic only, so agents can install it without the server's dependencies.

Wire format: a Pub/Sub message whose body is the JSON of an :class:`Envelope` and whose
attributes are ``agent_id``, ``event_type`` and ``schema_version``.
"""

from __future__ import annotations

import json
import math
import re
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    StringConstraints,
    field_validator,
    model_serializer,
    model_validator,
)

SCHEMA_VERSION = "1"
SUPPORTED_SCHEMA_VERSIONS = frozenset({SCHEMA_VERSION})

#: Largest message body the functions accept; larger ones are rejected, not processed.
MAX_EVENT_BYTES = 64 * 1024

#: 3-63 chars of a-z, 0-9, - and _, starting with a letter or digit (Firestore reserves ``__x__`` ids).
AGENT_ID_PATTERN = r"^[a-z0-9][a-z0-9_-]{2,62}$"
AgentId = Annotated[str, StringConstraints(pattern=AGENT_ID_PATTERN)]
TenantId = Annotated[str, StringConstraints(pattern=AGENT_ID_PATTERN)]
ShortText = Annotated[str, StringConstraints(min_length=1, max_length=200, strip_whitespace=True)]
#: Names used as keys (labels, capabilities, metric names): start with a letter or digit.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:/-]{0,62}$"
Label = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]
#: Versions like 1.4.0, 2.0.0-rc.1+build.7 (no "/": a version names a document).
VERSION_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$"
#: Integers must fit Firestore's signed 64 bits.
MAX_INT = 2**63 - 1


class EventType(StrEnum):
    """The ``event_type`` attribute: which contract the body follows."""

    REGISTRATION = "registration"
    HEARTBEAT = "heartbeat"
    COST = "cost"
    COMMAND = "command"
    APPROVAL = "approval"
    #: A training job's progress and final metrics, sent by the job itself (fleet_agent.jobs).
    JOB_PROGRESS = "job_progress"


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
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Resources(_Strict):
    """What the agent runs on; used later for placement and cost estimates."""

    cpu: float = Field(default=1.0, ge=0, le=1024)
    memory_gb: float = Field(default=1.0, ge=0, le=16384)
    gpu: int = Field(default=0, ge=0, le=64)


#: A hard limit in USD: positive, cents to nano-dollars, at most a billion.
LimitUsd = Annotated[Decimal, Field(gt=0, le=Decimal("1000000000"), max_digits=20, decimal_places=9)]
LimitTokens = Annotated[int, Field(gt=0, le=MAX_INT)]


class BudgetSpec(_Strict):
    """Budget limits of an agent or a tenant, for any subset of the UTC hour, day and month.

    Hard limits stop the agent (``budget_exhausted``); soft limits raise an alert. A soft limit is
    ``soft_ratio`` of its hard limit unless given explicitly. ``alert_at`` are the shares of each
    hard limit at which a threshold alert fires, once per period.
    """

    hourly_usd: LimitUsd | None = None
    daily_usd: LimitUsd | None = None
    monthly_usd: LimitUsd | None = None
    hourly_tokens: LimitTokens | None = None
    daily_tokens: LimitTokens | None = None
    monthly_tokens: LimitTokens | None = None
    soft_ratio: float = Field(default=0.8, gt=0, le=1)
    soft_hourly_usd: LimitUsd | None = None
    soft_daily_usd: LimitUsd | None = None
    soft_monthly_usd: LimitUsd | None = None
    soft_hourly_tokens: LimitTokens | None = None
    soft_daily_tokens: LimitTokens | None = None
    soft_monthly_tokens: LimitTokens | None = None
    alert_at: list[Annotated[float, Field(gt=0, le=10)]] = Field(default_factory=lambda: [0.5, 0.8, 1.0], max_length=10)

    @model_validator(mode="after")
    def _soft_below_hard(self) -> BudgetSpec:
        for name in ("hourly_usd", "daily_usd", "monthly_usd", "hourly_tokens", "daily_tokens", "monthly_tokens"):
            soft, hard = getattr(self, f"soft_{name}"), getattr(self, name)
            if soft is not None and hard is not None and soft > hard:
                raise ValueError(f"soft_{name} ({soft}) is above {name} ({hard})")
        return self


class Registration(_Strict):
    """Sent when an agent starts (and again on every restart or upgrade)."""

    agent_id: AgentId
    tenant: TenantId
    name: ShortText
    agent_type: Annotated[str, StringConstraints(min_length=1, max_length=63)]
    version: Annotated[str, StringConstraints(pattern=VERSION_PATTERN)]
    owner: ShortText
    capabilities: list[Label] = Field(default_factory=list, max_length=100)
    resources: Resources = Field(default_factory=Resources)
    heartbeat_interval_s: int = Field(default=30, ge=1, le=3600)
    labels: dict[Label, Annotated[str, StringConstraints(max_length=200)]] = Field(default_factory=dict, max_length=64)
    #: The agent's budget as deployed with it. A budget set through the API wins over it.
    budget: BudgetSpec | None = None


class ReportedStatus(StrEnum):
    """The agent's own view of itself. The server maps it onto its lifecycle."""

    STARTING = "starting"
    ACTIVE = "active"
    IDLE = "idle"
    BUSY = "busy"
    DEGRADED = "degraded"
    STOPPING = "stopping"


MAX_EXTRA_METRICS = 32


class HeartbeatMetrics(BaseModel):
    """A snapshot of the agent's health. Extra numeric fields are allowed (up to 32)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    cpu_pct: float | None = Field(default=None, ge=0, le=100)
    memory_pct: float | None = Field(default=None, ge=0, le=100)
    error_rate: float | None = Field(default=None, ge=0, le=1)
    latency_ms_p95: float | None = Field(default=None, ge=0, le=86_400_000)
    active_tasks: int | None = Field(default=None, ge=0, le=MAX_INT)
    completed_tasks: int | None = Field(default=None, ge=0, le=MAX_INT)
    failed_tasks: int | None = Field(default=None, ge=0, le=MAX_INT)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bools(cls, value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError("metrics are numbers, not booleans")
        return value

    def model_post_init(self, __context: Any) -> None:
        extra = self.model_extra or {}
        if len(extra) > MAX_EXTRA_METRICS:
            raise ValueError(f"at most {MAX_EXTRA_METRICS} extra metrics")
        for key, value in extra.items():
            if not isinstance(key, str) or not re.fullmatch(NAME_PATTERN, key):
                raise ValueError(f"extra metric name {key!r} must match {NAME_PATTERN}")
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"extra metric {key!r} must be a number")
            if not math.isfinite(value) or (isinstance(value, int) and abs(value) > MAX_INT):
                raise ValueError(f"extra metric {key!r} must be finite and fit in 64 bits")

    def as_dict(self) -> dict[str, float | int]:
        """The metrics that were reported (unset standard fields left out)."""
        return {k: v for k, v in self.model_dump().items() if v is not None}


class Heartbeat(_Strict):
    """Sent every ``heartbeat_interval_s``. ``seq`` must grow per agent, across restarts."""

    agent_id: AgentId
    seq: int = Field(ge=0, le=MAX_INT)
    sent_at: AwareDatetime
    status: ReportedStatus
    metrics: HeartbeatMetrics = Field(default_factory=HeartbeatMetrics)

    @field_validator("sent_at")
    @classmethod
    def _plausible_time(cls, value: datetime) -> datetime:
        # Kept for diagnosis, never trusted; but it must be storable (years 2000-2999 in UTC).
        try:
            year = value.astimezone(UTC).year
        except OverflowError:
            year = 0
        if not 2000 <= year <= 2999:
            raise ValueError("sent_at must be between the years 2000 and 2999")
        return value


class Signature(_Strict):
    """Reserved for signed telemetry: a detached signature over the canonical ``data``."""

    key_id: Annotated[str, StringConstraints(min_length=1, max_length=128)]
    alg: Annotated[str, StringConstraints(min_length=1, max_length=32)]
    value: Annotated[str, StringConstraints(min_length=1, max_length=1024)]


class Envelope(_Strict):
    """The message body: an event, its id (for deduplication) and an optional signature."""

    event_id: Annotated[str, StringConstraints(min_length=8, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]
    data: dict[str, Any]
    signature: Signature | None = None


#: Records per cost batch: a full batch of realistic records stays well inside MAX_EVENT_BYTES.
MAX_BATCH_RECORDS = 200
#: Per call, an upper bound that no real LLM call reaches; beyond it a record is absurd, not costly.
MAX_TOKENS_PER_CALL = 10_000_000
#: Distinct operations and time span of one batch: bounds that keep its counter updates within
#: Firestore's limits on one commit (the SDK flushes earlier than both).
MAX_BATCH_OPERATIONS = 50
MAX_BATCH_SPAN = timedelta(hours=1)
MAX_COST_PER_CALL_USD = Decimal("10000")
CallId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{7,63}$")]
ModelName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:/@+-]{0,127}$")]


class CostRecord(_Strict):
    """One LLM (or other metered) call, as the agent saw it."""

    call_id: CallId
    at: AwareDatetime
    model: ModelName
    input_tokens: int = Field(ge=0, le=MAX_TOKENS_PER_CALL, strict=True)
    output_tokens: int = Field(ge=0, le=MAX_TOKENS_PER_CALL, strict=True)
    #: What the provider charged, when the agent knows it; otherwise the server prices the call.
    cost_usd: Decimal | None = Field(default=None, ge=0, le=MAX_COST_PER_CALL_USD, max_digits=20, decimal_places=12)
    success: bool
    latency_ms: float = Field(ge=0, le=86_400_000)
    operation: Label
    #: The SDK saw the same request (same request key) from this process within the last hour: a
    #: cache could have served it.
    repeat: bool = Field(default=False, strict=True)


class CostBatch(_Strict):
    """A batch of one agent's call records (the SDK flushes by size or after about a second)."""

    agent_id: AgentId
    batch_id: CallId
    records: list[CostRecord] = Field(min_length=1, max_length=MAX_BATCH_RECORDS)

    @model_serializer(mode="wrap")
    def _omit_false_repeat(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """A record's ``repeat`` is sent only when True: batch bodies stay as small as before, and a
        server that predates the field (it forbids unknown fields) still accepts them. One pass per
        batch, not a serializer call per record."""
        data: dict[str, Any] = handler(self)
        for record in data.get("records", ()):
            if record.get("repeat") is False:
                del record["repeat"]
        return data

    @model_validator(mode="after")
    def _unique_call_ids(self) -> CostBatch:
        counts = Counter(r.call_id for r in self.records)
        duplicates = sorted(call_id for call_id, n in counts.items() if n > 1)
        if duplicates:
            raise ValueError(f"call_id repeated inside the batch: {', '.join(duplicates[:5])}")
        operations = {r.operation for r in self.records}
        if len(operations) > MAX_BATCH_OPERATIONS:
            raise ValueError(f"{len(operations)} distinct operations in one batch; at most {MAX_BATCH_OPERATIONS}")
        times = [r.at for r in self.records]
        if max(times) - min(times) > MAX_BATCH_SPAN:
            raise ValueError(f"the records of a batch must lie within {MAX_BATCH_SPAN} of each other")
        return self


class CommandType(StrEnum):
    """What the fleet tells an agent on ``agent-commands``."""

    PAUSE = "pause"
    RESUME = "resume"
    BUDGET_EXHAUSTED = "budget_exhausted"
    BUDGET_RESTORED = "budget_restored"
    BREAKER_OPEN = "breaker_open"
    BREAKER_CLOSED = "breaker_closed"
    QUARANTINE = "quarantine"
    RELEASE = "release"
    #: The answer to an agent's :class:`ApprovalRequest` (``request_id``, ``approval_id``, ``approved``).
    APPROVAL_DECIDED = "approval_decided"


#: Commands after which the agent must not call its model, and the ones that lift each of them.
BLOCKING_COMMANDS: dict[CommandType, CommandType] = {
    CommandType.PAUSE: CommandType.RESUME,
    CommandType.BUDGET_EXHAUSTED: CommandType.BUDGET_RESTORED,
    CommandType.BREAKER_OPEN: CommandType.BREAKER_CLOSED,
    CommandType.QUARANTINE: CommandType.RELEASE,
}


class Command(_Strict):
    """A command to one agent (attribute ``agent_id``; the emulator does not filter, the SDK does)."""

    agent_id: AgentId
    command: CommandType
    reason: Annotated[str, StringConstraints(max_length=500)] = ""
    issued_at: AwareDatetime
    command_id: CallId
    #: When the block lifts by itself: the budget period's reset for ``budget_exhausted``, the end of
    #: the cooldown for ``breaker_open`` (the SDK then lets trial calls through: half-open).
    until: AwareDatetime | None = None
    #: ``approval_decided`` only: which request, the approval's id, and the decision (an expired
    #: request is answered ``approved=False`` with the reason ``expired``).
    request_id: CallId | None = None
    approval_id: Annotated[str, StringConstraints(max_length=128)] | None = None
    approved: bool | None = None


class ApprovalKind(StrEnum):
    """What an agent may ask a human for (the server has more kinds: release, training)."""

    #: Pre-approval of an expensive operation: nothing changes on approval, the agent goes ahead.
    OPERATION = "operation"
    #: A higher hard limit for one budget period of the agent (applied on approval).
    BUDGET_RAISE = "budget_raise"


class BudgetPeriod(StrEnum):
    HOURLY = "hourly"
    DAILY = "daily"
    MONTHLY = "monthly"


#: Shortest and longest time a request waits for a decision before it is denied as expired.
MIN_APPROVAL_EXPIRY_S = 60
MAX_APPROVAL_EXPIRY_S = 7 * 86_400


class ApprovalRequest(_Strict):
    """An agent asks a human (an approver of its tenant, in Slack) before doing something.

    ``request_id`` is chosen by the agent and makes the request idempotent: publishing it twice
    creates one approval. The decision comes back on ``agent-commands`` as ``approval_decided``.
    """

    agent_id: AgentId
    request_id: CallId
    kind: ApprovalKind = ApprovalKind.OPERATION
    #: What the agent wants to do, in a few words ("re-embed the 40k-document corpus").
    operation: ShortText
    #: Why, for the approver.
    reason: Annotated[str, StringConstraints(max_length=1000, strip_whitespace=True)] = ""
    estimated_cost_usd: Annotated[Decimal, Field(ge=0, le=Decimal("1000000000"), decimal_places=9)] | None = None
    expires_in_s: int = Field(default=3600, ge=MIN_APPROVAL_EXPIRY_S, le=MAX_APPROVAL_EXPIRY_S)
    requested_at: AwareDatetime
    #: ``budget_raise`` only: the period and its new hard limit in USD.
    budget_period: BudgetPeriod | None = None
    budget_usd: LimitUsd | None = None
    details: dict[Label, Annotated[str, StringConstraints(max_length=200)]] = Field(default_factory=dict, max_length=16)

    @model_validator(mode="after")
    def _budget_fields(self) -> ApprovalRequest:
        raise_fields = (self.budget_period, self.budget_usd)
        if self.kind is ApprovalKind.BUDGET_RAISE and None in raise_fields:
            raise ValueError("a budget_raise names budget_period and budget_usd")
        if self.kind is not ApprovalKind.BUDGET_RAISE and raise_fields != (None, None):
            raise ValueError("budget_period and budget_usd belong to a budget_raise")
        return self


#: A training job's id (shared/domain/jobs.py makes them): ``j-`` and 20 lowercase hex digits or letters.
JOB_ID_PATTERN = r"^j-[a-z0-9]{8,40}$"
JobId = Annotated[str, StringConstraints(pattern=JOB_ID_PATTERN)]
#: Progress metrics per report (loss, accuracy, ...).
MAX_JOB_METRICS = 32


class JobPhase(StrEnum):
    """Where a training run says it is. The job's *state* is the backend's word (the reconcile tick);
    these reports add progress and the final metrics to the job's record."""

    STARTED = "started"
    PROGRESS = "progress"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class JobProgress(_Strict):
    """A training run reports on itself (topic ``job-progress``). ``seq`` grows with each report of a
    run; a report older than the one recorded (redelivered, reordered) changes nothing."""

    agent_id: AgentId
    job_id: JobId
    #: Which attempt of the run (a preempted or retried run starts again; its ``seq`` still grows, being
    #: taken from the clock, so a later attempt's reports always win).
    attempt: int = Field(default=0, ge=0, le=1000)
    seq: int = Field(ge=0, le=MAX_INT)
    at: AwareDatetime
    phase: JobPhase
    step: int | None = Field(default=None, ge=0, le=MAX_INT)
    total_steps: int | None = Field(default=None, ge=1, le=MAX_INT)
    metrics: dict[Label, float] = Field(default_factory=dict, max_length=MAX_JOB_METRICS)
    message: Annotated[str, StringConstraints(max_length=500)] = ""

    @field_validator("metrics")
    @classmethod
    def _finite(cls, value: dict[str, float]) -> dict[str, float]:
        bad = sorted(name for name, number in value.items() if not math.isfinite(number))
        if bad:
            raise ValueError(f"metrics must be finite numbers: {', '.join(bad)}")
        return value


EVENT_MODELS: dict[EventType, type[BaseModel]] = {
    EventType.REGISTRATION: Registration,
    EventType.HEARTBEAT: Heartbeat,
    EventType.COST: CostBatch,
    EventType.APPROVAL: ApprovalRequest,
    EventType.JOB_PROGRESS: JobProgress,
}

Event = Registration | Heartbeat | CostBatch | ApprovalRequest | JobProgress


def event_type_of(event: BaseModel) -> EventType:
    for event_type, model in EVENT_MODELS.items():
        if isinstance(event, model):
            return event_type
    raise TypeError(f"not an event: {type(event).__name__}")


def encode(event: Event, *, event_id: str | None = None) -> tuple[bytes, dict[str, str]]:
    """Body and attributes of the Pub/Sub message that carries ``event``."""
    envelope = Envelope(event_id=event_id or uuid.uuid4().hex, data=event.model_dump(mode="json"))
    body = envelope.model_dump_json(exclude_none=True).encode()
    attributes = {
        "agent_id": event.agent_id,
        "event_type": event_type_of(event).value,
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
