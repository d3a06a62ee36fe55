"""The run-phase types: which backend runs a job, and what a backend says of a run (its phase, times,
preemptions). Pure values, shared by the job rules (shared/domain/jobs.py, job_policy.py, job_runs.py)
and the launchers that report them (shared/launchers/)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum


class Backend(StrEnum):
    GKE = "gke"
    CLOUDRUN = "cloudrun"
    LOCAL = "local"


class Phase(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    #: The backend has no such run (deleted out of band, or never created).
    MISSING = "missing"


FINAL_PHASES = frozenset({Phase.SUCCEEDED, Phase.FAILED, Phase.CANCELLED})


@dataclass(frozen=True)
class Preemption:
    """One preemption (spot reclaim, node drain) of one attempt; ``key`` is stable (the pod or task
    attempt), so recording it twice is recognised."""

    key: str
    at: datetime | None
    detail: str


@dataclass(frozen=True)
class RunStatus:
    phase: Phase
    started_at: datetime | None = None
    finished_at: datetime | None = None
    #: Why it failed or was cancelled, in the backend's words (DeadlineExceeded, BackoffLimitExceeded...).
    message: str = ""
    preemptions: tuple[Preemption, ...] = ()
    #: Attempts that failed and were retried (not preemptions).
    failed_attempts: int = 0
