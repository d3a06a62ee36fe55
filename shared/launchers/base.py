"""What every backend offers (:class:`Launcher`) and what passes through it. Pure: no client here.

A launch is idempotent: the backend's resource is named from the job id (:func:`run_name`), so a
retried launch finds the run it started before instead of starting a second one; a resource of that
name that another job owns (its ``fleet-job-id`` label differs) is a :class:`NotOurs` error.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Protocol

from shared.domain.run_phase import Backend, RunStatus

#: Label (Kubernetes) / label (Cloud Run) that ties a backend resource to its fleet job.
JOB_LABEL = "fleet-job-id"
TENANT_LABEL = "fleet-tenant"
AGENT_LABEL = "fleet-agent-id"
#: The container's name in every backend (podFailurePolicy rules name it).
CONTAINER = "train"


def label_value(value: str) -> str:
    """``value`` as a label value: lowercase letters, digits, ``-`` and ``_``, starting and ending with
    a letter or digit, at most 63 characters."""
    cleaned = "".join(c if c.isascii() and (c.isalnum() or c in "-_") else "-" for c in value.lower())[:63]
    return cleaned.strip("-_") or "x"


def run_name(job_id: str) -> str:
    """The backend resource's name: DNS-1123 (lowercase, digits, '-'), at most 40 characters, so
    Cloud Run's ``<job>-<execution token>`` and Kubernetes' pod names stay within 63."""
    return f"fleet-{job_id.lower().replace('_', '-')}"[:40].rstrip("-")


def execution_token(job_id: str) -> str:
    """Cloud Run's ``start_execution_token`` for a job: derived from the job id, so creating the Cloud
    Run job twice can never start two executions (the second create is refused with 409)."""
    return "x" + hashlib.sha256(job_id.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class LaunchSpec:
    """Everything a backend needs to start one run of a job (built by shared/domain/jobs.py)."""

    job_id: str
    tenant: str
    agent_id: str
    #: Container image (GKE, Cloud Run); the local backend ignores it.
    image: str
    #: argv; empty means the image's entrypoint.
    command: tuple[str, ...]
    env: dict[str, str]
    cpu: float
    memory_gb: float
    gpu: int = 0
    #: GKE accelerator name, e.g. ``nvidia-l4``, ``nvidia-tesla-t4``, ``nvidia-tesla-a100``.
    gpu_type: str | None = None
    spot: bool = False
    #: The machine type the job was priced on (GKE: selected by ``node.kubernetes.io/instance-type``);
    #: None: any node of the accelerator (and spot or not) will do.
    machine_type: str | None = None
    max_runtime_s: int = 3600
    #: Retries of a failed run (Kubernetes backoffLimit, Cloud Run max_retries); preemptions don't count.
    max_retries: int = 1
    #: Seconds a finished Kubernetes Job is kept before it is deleted (ttlSecondsAfterFinished).
    keep_finished_s: int = 86400
    labels: dict[str, str] = field(default_factory=dict)
    #: Environment variables whose values are secret (the job's key, ``FLEET_JOB_KEY``): the process
    #: environment locally, a Kubernetes Secret owned by the Job on GKE, the job's env on Cloud Run.
    secrets: dict[str, str] = field(default_factory=dict, repr=False)
    #: The identity the run gets (Cloud Run); None: the backend's default for tenant training jobs. System
    #: runs (retraining) name their own, so a tenant's image never runs with their rights.
    service_account: str | None = None

    @property
    def name(self) -> str:
        return run_name(self.job_id)

    def all_labels(self) -> dict[str, str]:
        """The spec's labels and the three that tie the resource to its job, as label values both
        Kubernetes and Cloud Run accept (an id may end in ``-`` or ``_``; a label value may not)."""
        labels = {**self.labels, TENANT_LABEL: self.tenant, AGENT_LABEL: self.agent_id}
        # The job id is compared as it is (ownership); shared/domain/jobs.py makes it a valid value.
        return {**{key: label_value(value) for key, value in labels.items()}, JOB_LABEL: self.job_id}


@dataclass(frozen=True)
class Handle:
    """Where a launched run lives: enough to find it again (stored on the job)."""

    backend: str
    #: The resource's full name: ``<namespace>/<job>`` (GKE), ``projects/.../jobs/<job>`` (Cloud Run),
    #: the run directory (local).
    name: str
    #: Backend details worth showing (cluster, namespace, execution...).
    details: dict[str, str] = field(default_factory=dict)

    def to_doc(self) -> dict[str, object]:
        return {"backend": self.backend, "name": self.name, "details": dict(self.details)}

    @classmethod
    def from_doc(cls, data: dict[str, object]) -> Handle:
        details = data.get("details") or {}
        assert isinstance(details, dict)
        return cls(str(data["backend"]), str(data["name"]), {str(k): str(v) for k, v in details.items()})


class LaunchError(Exception):
    """A launch or a call that failed. ``transient``: retry later (Pub/Sub redelivers); otherwise the
    job fails with this reason."""

    def __init__(self, reason: str, *, transient: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.transient = transient


class NotOurs(LaunchError):
    """The backend resource named for this job exists and belongs to another job: never adopted."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason, transient=False)


class Launcher(Protocol):
    """One backend. Every method is safe to call again after a failure or a crash."""

    backend: Backend

    def launch(self, spec: LaunchSpec) -> Handle:
        """Start the run, or find the one started for this job before; never two runs."""
        ...

    def status(self, handle: Handle) -> RunStatus:
        """The run's phase, times and preemptions as the backend sees them now."""
        ...

    def cancel(self, handle: Handle) -> None:
        """Stop the run; a run that is gone or finished is not an error."""
        ...

    def release(self, handle: Handle) -> None:
        """Free what the backend keeps of a run that ended (Cloud Run jobs are kept until deleted;
        Kubernetes deletes finished Jobs itself; local runs keep their directory for their logs)."""
        ...
