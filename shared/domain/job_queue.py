"""The admission policy of training jobs: who runs next, and why the others wait. Pure.

One pass over a tenant's queue (shared/training/admission.py runs it in a transaction):

- **Usage is recomputed** from the jobs that hold quota now (admitted and running), never kept as a
  counter, so it cannot drift when a job ends, is cancelled or a pass crashes.
- **Order**: effective priority (the job's priority plus one level per ``aging_s`` waited, at most
  10), then age. A low-priority job therefore reaches the top eventually: nothing starves.
- **Quotas**: a job is admitted when the requester's quota and the tenant's quota both still have
  room for its cpu, memory, GPUs and storage. A job that could never fit is refused when submitted
  (:func:`never_fits`).
- **Budgets**: its estimate must fit what is left of the agent's and the tenant's hard USD budgets,
  less the estimates of their jobs already admitted or running (not charged until they end).
- **Backfill**: a job that does not fit is passed by smaller ones behind it, until it has waited
  ``reserve_after_s`` for quota: then it holds its place, the resources it needs are kept for it in
  the scope that blocks it (its requester's quota, or the tenant's) and only jobs that fit beside
  that reservation pass it.
- A queued job that can no longer fit at all (a quota lowered below what it asks) is failed with the
  reason, so it neither waits forever nor reserves what can never be granted.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from shared.domain.jobs import Job, JobResources, JobsConfig, Quota
from shared.domain.pricing import format_usd

RESOURCES = ("cpu", "memory_gb", "gpu", "storage_gb")
_UNITS = {"cpu": "vCPU", "memory_gb": "GB memory", "gpu": "GPU", "storage_gb": "GB storage"}
#: Budget scopes passed to the ``budget_left`` callable.
TENANT = "tenant"


def agent_scope(agent_id: str) -> str:
    return f"agent:{agent_id}"


@dataclass
class Usage:
    cpu: float = 0.0
    memory_gb: float = 0.0
    gpu: float = 0.0
    storage_gb: float = 0.0

    def add(self, resources: JobResources) -> None:
        for name, value in resources.demand().items():
            setattr(self, name, getattr(self, name) + value)

    def as_dict(self) -> dict[str, float]:
        return {name: getattr(self, name) for name in RESOURCES}


@dataclass(frozen=True)
class Decision:
    job_id: str
    admit: bool
    #: 1 = next in line (waiting jobs only).
    position: int | None = None
    #: Why it waits: which quota or budget, in numbers.
    reason: str = ""
    #: It waited long enough to keep its resources (backfill behind it stopped).
    reserved: bool = False
    #: It can never be admitted any more (a quota was lowered below what it asks): fail it.
    refuse: bool = False


@dataclass
class _Books:
    """What the jobs holding quota (and the reservations) take, per user and for the tenant."""

    users: dict[str, Usage] = field(default_factory=lambda: defaultdict(Usage))
    tenant: Usage = field(default_factory=Usage)
    #: Budget scope -> nano-dollars committed to admitted and running jobs' estimates.
    committed: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    def take(self, job: Job) -> None:
        self.users[job.requester].add(job.resources)
        self.tenant.add(job.resources)
        self.commit(job)

    def commit(self, job: Job) -> None:
        self.committed[agent_scope(job.agent_id)] += job.costing().nanos
        self.committed[TENANT] += job.costing().nanos

    def reserve(self, job: Job, scope: str) -> None:
        """Keep the job's resources in the scope that blocks it (its user's, or the tenant's)."""
        if scope == "user":
            self.users[job.requester].add(job.resources)
        else:
            self.tenant.add(job.resources)


def _fmt(value: float) -> str:
    return f"{value:g}"


def never_fits(resources: JobResources, requester: str, config: JobsConfig) -> str | None:
    """Why a job can never be admitted (it asks more than a quota allows in total); None if it can."""
    for scope, quota in ((f"user {requester}", config.user_quota), ("the tenant", config.tenant_quota)):
        for name, asked in resources.demand().items():
            limit = getattr(quota, name)
            if limit is not None and asked > limit:
                return f"it asks {_fmt(asked)} {_UNITS[name]}; the quota of {scope} allows {_fmt(limit)} in all"
    return None


def _quota_block(scope: str, quota: Quota, used: Usage, resources: JobResources) -> str | None:
    for name, asked in resources.demand().items():
        limit = getattr(quota, name)
        # Only what the job asks counts (a quota lowered below its use blocks only jobs asking more of
        # it); sums are rounded so fractions of a vCPU that exactly fill a quota fit.
        if limit is not None and asked > 0 and round(getattr(used, name) + asked, 6) > limit:
            return (
                f"quota of {scope}: {_fmt(getattr(used, name))} of {_fmt(limit)} {_UNITS[name]} in use, "
                f"this job asks {_fmt(asked)}"
            )
    return None


def waiting_since(job: Job) -> datetime:
    """When the job entered the queue (not when it was submitted: an approval's wait does not count)."""
    return job.queued_at or job.created_at


def effective_priority(job: Job, now: datetime, aging_s: int) -> int:
    waited = max(0.0, (now - waiting_since(job)).total_seconds())
    return min(10, job.priority + int(waited // aging_s))


def order(queued: Sequence[Job], now: datetime, aging_s: int) -> list[Job]:
    return sorted(queued, key=lambda j: (-effective_priority(j, now, aging_s), waiting_since(j), j.id))


def plan(
    queued: Sequence[Job],
    holding: Sequence[Job],
    config: JobsConfig,
    now: datetime,
    budget_left: Callable[[str], int | None],
) -> list[Decision]:
    """One decision per queued job, in queue order. ``holding``: the admitted and running jobs.
    ``budget_left(scope)``: nano-dollars left of the scope's tightest hard USD budget (None: no limit);
    called only for jobs that fit their quotas."""
    books = _Books()
    for job in holding:
        books.take(job)
    out: list[Decision] = []
    position = 0
    for job in order(queued, now, config.aging_s):
        never = never_fits(job.resources, job.requester, config)
        if never is not None:
            out.append(Decision(job.id, False, reason=never, refuse=True))
            continue
        scope = "user"
        quota_reason = _quota_block(
            f"user {job.requester}", config.user_quota, books.users[job.requester], job.resources
        )
        if quota_reason is None:
            scope = "tenant"
            quota_reason = _quota_block("the tenant", config.tenant_quota, books.tenant, job.resources)
        reason = quota_reason or _budget_block(job, books, budget_left)
        if reason is None:
            books.take(job)
            out.append(Decision(job.id, True))
            continue
        position += 1
        waited = (now - waiting_since(job)).total_seconds()
        reserved = quota_reason is not None and waited >= config.reserve_after_s
        if reserved:
            books.reserve(job, scope)
            reason += "; it has waited long enough to keep its place (smaller jobs no longer pass it)"
        out.append(Decision(job.id, False, position, reason, reserved))
    return out


def _budget_block(job: Job, books: _Books, budget_left: Callable[[str], int | None]) -> str | None:
    need = job.costing().nanos
    for scope, label in ((agent_scope(job.agent_id), f"agent {job.agent_id}"), (TENANT, "the tenant")):
        left = budget_left(scope)
        if left is None:
            continue
        committed = books.committed[scope]
        if left - committed < need:
            return (
                f"budget of {label}: ${format_usd(left)} left, ${format_usd(committed)} of it committed to "
                f"admitted jobs, this job may cost ${format_usd(need)}"
            )
    return None
