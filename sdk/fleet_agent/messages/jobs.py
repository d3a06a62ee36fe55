"""What a training run reports on itself: its phase, progress and metrics (topic ``job-progress``)."""

from __future__ import annotations

import math
from enum import StrEnum
from typing import Annotated

from pydantic import AwareDatetime, Field, StringConstraints, field_validator

from fleet_agent.messages.fields import MAX_INT, AgentId, Label, Strict

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


class JobProgress(Strict):
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
