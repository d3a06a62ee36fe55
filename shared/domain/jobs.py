"""Training jobs: what is asked, the states a job goes through, and each tenant's job settings. Pure.

States: ``awaiting_approval`` (its estimate is above the tenant's threshold: an approver decides in
Slack) -> ``queued`` (waits for quota and budget; shared/domain/job_queue.py decides) -> ``admitted``
(quota taken, launch under way) -> ``running`` -> ``succeeded`` | ``failed`` | ``cancelled``.
A preemption is an event in the job's history, not a state: the backend retries the pod.
Every change is a :class:`Event` in the job's history, with when, why and by whom.
"""

from __future__ import annotations

import hashlib
import uuid
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any

from fleet_agent.contracts import AGENT_ID_PATTERN, NAME_PATTERN
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator

from shared.domain import job_costs
from shared.domain.run_phase import Backend

#: History kept on a job (the oldest events beyond it are dropped; the audit log keeps every change).
MAX_HISTORY = 200
#: Preemption keys remembered per job (each preemption is counted once, however long the history).
MAX_PREEMPTION_KEYS = 1000
#: Relaunches kept on a job (the newest; the totals count them all).
MAX_RELAUNCHES = 100


class JobState(StrEnum):
    AWAITING_APPROVAL = "awaiting_approval"
    QUEUED = "queued"
    ADMITTED = "admitted"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


FINAL = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})
#: States that hold quota: usage is recomputed from the jobs in them on every admission pass.
ACTIVE = frozenset({JobState.ADMITTED, JobState.RUNNING})
#: Which state may follow which (anything else is refused: a late or repeated event changes nothing).
NEXT: dict[JobState, frozenset[JobState]] = {
    JobState.AWAITING_APPROVAL: frozenset({JobState.QUEUED, JobState.CANCELLED}),
    JobState.QUEUED: frozenset({JobState.ADMITTED, JobState.CANCELLED, JobState.FAILED}),
    JobState.ADMITTED: frozenset({JobState.RUNNING, JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED}),
    JobState.RUNNING: frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED}),
}


class Quota(BaseModel):
    """Most a user (or a tenant) may hold at once across its admitted and running jobs; None: no limit."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cpu: float | None = Field(default=None, ge=0)
    memory_gb: float | None = Field(default=None, ge=0)
    gpu: int | None = Field(default=None, ge=0)
    storage_gb: float | None = Field(default=None, ge=0)


class JobsConfig(BaseModel):
    """A tenant's training-job settings; every field has a default (``PUT /v1/tenants/{t}/jobs``)."""

    model_config = ConfigDict(extra="forbid")

    user_quota: Quota = Quota(cpu=10, memory_gb=20, gpu=2, storage_gb=100)
    tenant_quota: Quota = Quota(cpu=64, memory_gb=256, gpu=8, storage_gb=2000)
    #: Jobs whose estimate is above this wait for an approver in Slack.
    approval_threshold_usd: Decimal = Field(default=Decimal(50), ge=0)
    #: Backends this tenant may use; the first that can run a job is chosen when it names none.
    backends: list[Backend] = Field(default_factory=lambda: [Backend.CLOUDRUN, Backend.GKE], min_length=1)
    #: Every job goes here unless it names a backend (the local stack sets ``local`` for everyone).
    default_backend: Backend | None = None
    #: Prices are the table's times this (a discount, another region): shared/domain/job_costs.py.
    price_factor: Decimal = Field(default=Decimal(1), gt=0, le=10)
    #: An admitted job not running after this is flagged (GPU nodes scaling from zero take minutes)...
    start_timeout_s: int = Field(default=900, ge=60, le=86400)
    #: ...and after this it is stopped and fails with the reason, its quota released.
    release_after_s: int = Field(default=3600, ge=120, le=7 * 86400)
    #: A waiting job gains one priority level per this many seconds (up to 10): nothing starves.
    aging_s: int = Field(default=1800, ge=60, le=7 * 86400)
    #: A job waiting longer than this keeps the resources it needs: smaller jobs behind it no longer
    #: pass it (backfill stops), so a large job is not overtaken forever.
    reserve_after_s: int = Field(default=3600, ge=60, le=7 * 86400)
    default_runtime_s: int = Field(default=3600, ge=60, le=7 * 86400)
    max_runtime_s: int = Field(default=3 * 86400, ge=60, le=7 * 86400)
    #: Retries of a failed run by the backend (preemptions are not failures and don't count).
    max_retries: int = Field(default=1, ge=0, le=10)
    #: Job alerts (shared/domain/job_alerts.py; 0 turns one off): failed share of the jobs that ended in a
    #: UTC day, once at least ``alert_failure_min_jobs`` ended; queued jobs; the longest wait in the queue.
    alert_failure_rate: float = Field(default=0.2, ge=0, le=1)
    alert_failure_min_jobs: int = Field(default=5, ge=1, le=100_000)
    alert_queue_length: int = Field(default=50, ge=0, le=1_000_000)
    alert_wait_s: int = Field(default=7200, ge=0, le=30 * 86400)

    @model_validator(mode="after")
    def _order(self) -> JobsConfig:
        if self.release_after_s <= self.start_timeout_s:
            raise ValueError("release_after_s must be longer than start_timeout_s")
        if self.default_runtime_s > self.max_runtime_s:
            raise ValueError("default_runtime_s must not exceed max_runtime_s")
        return self


Name = Annotated[str, StringConstraints(min_length=1, max_length=100, strip_whitespace=True)]
Requester = Annotated[str, StringConstraints(min_length=1, max_length=200, strip_whitespace=True)]


class JobResources(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    cpu: float = Field(default=2, gt=0, le=256)
    memory_gb: float = Field(default=4, gt=0, le=4096)
    gpu: int = Field(default=0, ge=0, le=16)
    #: A GKE accelerator name (``nvidia-l4``, ``nvidia-tesla-t4``, ``nvidia-tesla-a100``, ``nvidia-h100-80gb``).
    gpu_type: str | None = Field(default=None, pattern=r"^[a-z0-9-]{2,40}$")
    spot: bool = False
    storage_gb: float = Field(default=10, ge=0, le=10000)

    @model_validator(mode="after")
    def _gpu(self) -> JobResources:
        if self.gpu_type is not None and self.gpu_type not in job_costs.GPU_TYPES:
            raise ValueError(f"gpu_type must be one of {', '.join(job_costs.GPU_TYPES)}")
        if self.gpu == 0 and self.gpu_type is not None:
            raise ValueError("gpu_type needs gpu >= 1")
        return self

    def demand(self) -> dict[str, float]:
        return {"cpu": self.cpu, "memory_gb": self.memory_gb, "gpu": self.gpu, "storage_gb": self.storage_gb}


class JobRequest(BaseModel):
    """``POST /v1/jobs`` (and ``/fleet train``). Neither ``image`` nor ``command``: the built-in workload."""

    model_config = ConfigDict(extra="forbid")

    agent_id: Annotated[str, StringConstraints(pattern=AGENT_ID_PATTERN)]
    #: Whose quota the job counts against. Left out: the caller (``api:<key name>``, the Slack user);
    #: only admin keys may name someone else (they submit for people, e.g. from a portal).
    requester: Requester | None = None
    #: Whom the job's alerts mention in Slack (an e-mail address or a Slack user id), when not the
    #: requester: any key may set it (it is no quota and no part of the job's id), only for the mention.
    notify: Requester | None = None
    name: Name
    image: Annotated[str, StringConstraints(min_length=1, max_length=500)] | None = None
    command: list[Annotated[str, StringConstraints(max_length=2000)]] | None = Field(default=None, max_length=100)
    hyperparameters: dict[Annotated[str, StringConstraints(pattern=NAME_PATTERN)], Any] = Field(
        default_factory=dict, max_length=100
    )
    training_config: dict[Annotated[str, StringConstraints(pattern=NAME_PATTERN)], Any] = Field(
        default_factory=dict, max_length=100
    )
    resources: JobResources = Field(default_factory=JobResources)
    priority: int = Field(default=5, ge=1, le=10)
    max_runtime_s: int | None = Field(default=None, ge=60, le=7 * 86400)
    max_cost_usd: Decimal | None = Field(default=None, gt=0, le=Decimal(1_000_000))
    backend: Backend | None = None
    #: Makes the request idempotent: the same requester and request_id always name the same job.
    request_id: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.:-]{8,64}$")] | None = None

    @field_validator("hyperparameters", "training_config")
    @classmethod
    def _plain_numbers(cls, value: dict[str, Any]) -> dict[str, Any]:
        """The API reads numbers as exact decimals; the run gets plain JSON numbers (2, 0.25)."""
        return {key: _plain(item) for key, item in value.items()}


def _plain(value: Any) -> Any:
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() and "." not in str(value) else float(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def job_id(tenant: str, requester: str, request_id: str | None) -> str:
    """Deterministic when the request carries a ``request_id`` (a retried POST finds its job)."""
    if request_id is None:
        return f"j-{uuid.uuid4().hex[:20]}"
    return "j-" + hashlib.sha256(f"{tenant}|{requester}|{request_id}".encode()).hexdigest()[:20]


class Event(BaseModel):
    """One entry of a job's history: a state change, a preemption, a flag, a launch."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    at: AwareDatetime
    kind: str  # state | preemption | stalled | launched | launch_failed
    reason: str = ""
    by: str = "system"
    from_state: JobState | None = None
    to_state: JobState | None = None
    #: A preemption's stable key (pod / attempt): recorded once however often it is seen.
    key: str | None = None


class Relaunch(BaseModel):
    """A run started again by its backend (a preemption; a failed attempt retried) and the GPU-hours lost:
    the wall time from its last checkpoint to the stop, times its GPUs (shared/domain/job_relaunch.py)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    at: AwareDatetime
    cause: str  # preemption | retry
    #: The preemption's or retry's stable key (pod, ``retry-<n>``).
    key: str
    #: The epoch of the checkpoint it resumes from; None: it starts over.
    checkpoint_step: int | None = None
    #: Work is lost from here: the last checkpoint (``checkpoint``), else the previous relaunch or the start.
    lost_since: AwareDatetime
    lost_since_source: str
    gpu_hours_lost: float = 0.0
    #: When the tick recorded it (the daily report's day); None on relaunches recorded before this field.
    seen_at: AwareDatetime | None = None


class JobFields(BaseModel):
    """What a job is and where it stands: the stored job's public part (the API shows exactly this)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    id: str
    tenant: str
    agent_id: str
    requester: str
    #: How it was asked: ``api:<key name>`` or ``slack:<user id>``; a Slack requester is told the outcome.
    requested_via: str
    #: Whom the job's alerts mention (``JobRequest.notify``); None: the requester.
    notify: str | None = None
    name: str
    image: str | None = None
    command: list[str] | None = None
    hyperparameters: dict[str, Any] = Field(default_factory=dict)
    training_config: dict[str, Any] = Field(default_factory=dict)
    resources: JobResources
    priority: int
    max_runtime_s: int
    max_cost_usd: Decimal | None = None
    backend: Backend
    #: Why this backend (the policy's words).
    backend_reason: str = ""
    #: shared/domain/job_costs.py Estimate.to_doc(): backend, machine, spot, hourly_usd, hours, usd.
    estimate: dict[str, Any]
    state: JobState
    #: Why it waits (which quota or budget, in numbers), why it failed or was cancelled.
    reason: str = ""
    #: Place in the tenant's queue (1 = next), while queued.
    position: int | None = None
    created_at: AwareDatetime
    updated_at: AwareDatetime
    #: When it (last) entered the queue: its wait, for aging and reservations, counts from here (an
    #: approval's wait does not count).
    queued_at: AwareDatetime | None = None
    admitted_at: AwareDatetime | None = None
    launched_at: AwareDatetime | None = None
    started_at: AwareDatetime | None = None
    finished_at: AwareDatetime | None = None
    #: Set when admitted but not running after ``start_timeout_s``.
    stalled_at: AwareDatetime | None = None
    approval_id: str | None = None
    #: Where the run lives on its backend (Kubernetes Job, Cloud Run job and execution, local dir).
    handle: dict[str, Any] | None = None
    launch_attempts: int = 0
    preemptions: int = 0
    #: The run's last checkpoint as its reports named it: ``step``, ``at`` (ISO time), ``uri``.
    checkpoint: dict[str, Any] | None = None
    #: Each restart of the run by its backend, newest last (at most :data:`MAX_RELAUNCHES`), and the totals.
    relaunches: list[Relaunch] = Field(default_factory=list)
    relaunch_count: int = 0
    gpu_hours_lost: float = 0.0
    relaunched_at: AwareDatetime | None = None
    #: When the run last reported resuming from a checkpoint (a relaunched run's own start).
    resumed_at: AwareDatetime | None = None
    #: Cost so far (running) or the actual cost (finished): runtime times the hourly price.
    cost_usd: Decimal = Decimal(0)
    #: The run's latest report (fleet_agent.jobs): phase, step, total_steps, metrics, seq, at.
    progress: dict[str, Any] | None = None
    #: Final metrics the run reported.
    result: dict[str, Any] | None = None
    #: Every state change, preemption, stall and launch, oldest first.
    history: list[Event] = Field(default_factory=list)


class Job(JobFields):
    """The stored job (``jobs/{id}``): its public fields and the bookkeeping of settling it."""

    #: The keys (pod, attempt) of the preemptions counted.
    preempted: list[str] = Field(default_factory=list)
    #: Failed attempts the backend retried, as last seen (each new one is a relaunch).
    retries_seen: int = 0
    #: Set once the actual cost was charged to the agent's usage (exactly once: a cost batch marker).
    charged: bool = False
    notified: bool = False
    #: Final, but its cost not yet charged or its requester not yet told (the tick finishes that).
    unsettled: bool = False
    #: Stopped by the fleet (cancel, release, cost limit) while its run may still be going: settling
    #: stops the run on its backend, again until the backend confirms.
    stop_pending: bool = False
    #: What the backend keeps of the ended run was freed (a Cloud Run job deleted).
    released: bool = False
    #: The public half of the job's own key (shared/training/job_keys.py), written before its run starts:
    #: the run's reports are signed with the private half, which only the run holds.
    job_key: str | None = None

    @property
    def final(self) -> bool:
        return self.state in FINAL

    @property
    def active(self) -> bool:
        return self.state in ACTIVE

    @property
    def estimate_usd(self) -> Decimal:
        return Decimal(str(self.estimate["usd"]))

    def costing(self) -> job_costs.Estimate:
        return job_costs.Estimate.from_doc(self.estimate)

    def to_doc(self) -> dict[str, Any]:
        data = self.model_dump(mode="json", exclude={"created_at", "updated_at"})
        for name in (
            "created_at",
            "updated_at",
            "queued_at",
            "admitted_at",
            "launched_at",
            "started_at",
            "finished_at",
        ):
            data[name] = getattr(self, name)  # Firestore timestamps, not strings (queries order by them)
        data["stalled_at"] = self.stalled_at
        data["relaunched_at"] = self.relaunched_at  # the daily report queries it
        return data


class Refused(ValueError):
    """A state change that is not allowed now (the job moved on); ``reason`` says why."""


def advance(job: Job, to: JobState, at: datetime, reason: str, by: str = "system", **fields: Any) -> Job:
    """The job in state ``to``, with the change in its history. Refuses changes :data:`NEXT` forbids."""
    if to not in NEXT.get(job.state, frozenset()):
        raise Refused(f"job {job.id} is {job.state.value}; it cannot become {to.value}")
    event = Event(at=at, kind="state", reason=reason, by=by, from_state=job.state, to_state=to)
    update: dict[str, Any] = {"state": to, "reason": reason, "updated_at": at, **fields}
    if to is JobState.QUEUED:
        update.setdefault("queued_at", at)
    if to is JobState.ADMITTED:
        update.setdefault("admitted_at", at)
        update["position"] = None
    if to is JobState.RUNNING:
        update.setdefault("started_at", at)
        update["stalled_at"] = None
    if to in FINAL:
        update.setdefault("finished_at", at)
        update["position"] = None
        update["unsettled"] = True
    return job.model_copy(update={**update, "history": _bounded([*job.history, event])})


def note(job: Job, event: Event, **fields: Any) -> Job:
    """The job with one more history event (a preemption, a flag, a launch) and ``fields`` changed."""
    return job.model_copy(update={"updated_at": event.at, **fields, "history": _bounded([*job.history, event])})


#: The first events (submission, approval, admission, launch) are always kept.
_KEEP_FIRST = 20


def _bounded(events: list[Event]) -> list[Event]:
    if len(events) <= MAX_HISTORY:
        return events
    return events[:_KEEP_FIRST] + events[-(MAX_HISTORY - _KEEP_FIRST) :]


def runtime_s(job: Job, now: datetime) -> float:
    """Seconds it has run (or ran): from start to finish, or to ``now``."""
    if job.started_at is None:
        return 0.0
    end = job.finished_at or now
    return max(0.0, (end - job.started_at).total_seconds())


def cost_so_far(job: Job, now: datetime) -> Decimal:
    return job.costing().cost_of(runtime_s(job, now))
