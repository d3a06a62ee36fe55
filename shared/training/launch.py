"""Start an admitted job on its backend, once (the ``job.launch`` work item, and the reconcile tick
for a job whose hand-over was lost or whose launch crashed).

The launch itself is idempotent (the backend resource is named from the job id), so launching again
after a crash finds the first run. The handle is then written with a precondition; a job cancelled
meanwhile gets its fresh run cancelled.

Before the run starts, the public half of the job's own key (shared/training/job_keys.py, the same key
on every attempt) is written on the job; the private half goes to the run only (``FLEET_JOB_KEY``).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from datetime import datetime

from fleet_agent.identity import AgentKey

from shared.domain import jobs as domain
from shared.domain.audit import AuditEntry
from shared.domain.jobs import Job, JobState
from shared.launchers import registry
from shared.launchers.base import Handle, Launcher, LaunchError, LaunchSpec
from shared.platform import fleet_key, logs, metering, settings
from shared.store import config, db
from shared.store import jobs as store
from shared.training import checkpoints, job_keys
from shared.training.job_audit import entry

log = logs.get_logger("training.launch")
#: The built-in workload (jobs/train.py), and the image it ships in on GKE and Cloud Run.
BUILT_IN = ("python", "-m", "jobs.train")
PROGRESS_TOPIC = "job-progress"


def image() -> str:
    s = settings.get()
    region = os.environ.get("FLEET_CLOUDRUN_REGION", "us-central1")
    return os.environ.get("FLEET_TRAINING_IMAGE") or f"{region}-docker.pkg.dev/{s.project}/fleet/training:latest"


def priced_machine(job: Job) -> str | None:
    """The GKE machine type a GKE job's estimate priced (``n1-standard-4+t4`` is an n1-standard-4 with a T4),
    so the Job lands on that pool; None for other backends (or an estimate that named no GKE machine)."""
    if job.backend.value != "gke" or job.estimate.get("backend") != "gke" or not job.estimate.get("machine"):
        return None
    return str(job.estimate["machine"]).split("+", 1)[0]


def spec_of(job: Job, key: AgentKey | None = None) -> LaunchSpec:
    """What the backend runs: the job's image and command, or the built-in workload; ``key``: the job's
    own key, handed to the run as the secret ``FLEET_JOB_KEY``."""
    command: tuple[str, ...] = tuple(job.command or ())
    if not command and job.image is None:
        command = (sys.executable, "-m", "jobs.train") if job.backend.value == "local" else BUILT_IN
    env = {
        "FLEET_JOB_ID": job.id,
        "FLEET_AGENT_ID": job.agent_id,
        "FLEET_TENANT": job.tenant,
        "FLEET_HYPERPARAMETERS": json.dumps(job.hyperparameters, separators=(",", ":"), default=str),
        "FLEET_TRAINING_CONFIG": json.dumps(job.training_config, separators=(",", ":"), default=str),
        "FLEET_JOB_PROGRESS_TOPIC": PROGRESS_TOPIC,
        "GOOGLE_CLOUD_PROJECT": settings.get().project,
        checkpoints.ENV: checkpoints.uri(job.tenant, job.id),
    }
    res = job.resources
    return LaunchSpec(
        job_id=job.id,
        tenant=job.tenant,
        agent_id=job.agent_id,
        image=job.image or image(),
        command=command,
        env=env,
        cpu=res.cpu,
        memory_gb=res.memory_gb,
        gpu=res.gpu,
        gpu_type=(res.gpu_type or "nvidia-l4") if res.gpu else None,
        spot=res.spot,
        machine_type=priced_machine(job),
        max_runtime_s=job.max_runtime_s,
        max_retries=config.jobs(job.tenant).max_retries,
        labels={"fleet-job-name": job.name},
        secrets={job_keys.ENV: job_keys.env_value(key)} if key is not None else {},
    )


def launch(job_id: str, now: datetime) -> str:
    """Launch the job if it is admitted and not launched yet; returns what happened.

    Raises LaunchError(transient) so Pub/Sub redelivers; a permanent error fails the job.
    """
    found = store.get(job_id)
    if found is None:
        return "unknown_job"
    if found.final and found.stop_pending:  # stopped while launching, and its run not stopped yet
        return _stop_started(found)
    if found.state is not JobState.ADMITTED or found.handle is not None:
        return "nothing_to_do"
    try:
        key = job_keys.for_job(job_id)
    except fleet_key.MissingFleetKey as exc:  # a deployment's mistake: retried, never launched keyless
        _count_attempt(job_id, now, str(exc))
        raise LaunchError(str(exc), transient=True) from exc
    if found.job_key != key.public_key:
        found = _record_key(job_id, key.public_key)
        if found is None or found.state is not JobState.ADMITTED or found.handle is not None:
            return "nothing_to_do"
    try:
        handle = registry.get(found.backend).launch(spec_of(found, key))
    except LaunchError as exc:
        if exc.transient:
            _count_attempt(job_id, now, exc.reason)
            raise
        fail(job_id, now, f"launch refused by {found.backend.value}: {exc.reason}")
        return "failed"
    written = _record(job_id, handle, now)
    if written is not None and written.final and written.stop_pending:
        return _stop_started(written)  # cancelled (or released) while launching: stop the fresh run
    logs.log(log, f"job {job_id} launched on {found.backend.value}: {handle.name}", job_id=job_id)
    return "launched"


def on_backend(job: Job, what: str, call: Callable[[Launcher, Handle], None]) -> bool:
    """Do ``call`` (a stop, a release) to the job's run; False when the backend cannot now (tried again
    later). A backend refusing for good (the run or cluster is gone) counts as done."""
    if not job.handle:
        return True
    try:
        call(registry.get(job.backend), Handle.from_doc(job.handle))
    except LaunchError as exc:
        logs.log(log, f"run of job {job.id} not {what}: {exc.reason}", job_id=job.id, transient=exc.transient)
        return not exc.transient
    return True


def stop_run(job: Job) -> bool:
    """Stop a stopped job's run on its backend (see :func:`on_backend`)."""
    return on_backend(job, "stopped", lambda launcher, handle: launcher.cancel(handle))


def _stop_started(job: Job) -> str:
    """The run of a job that ended while it was being launched: stopped now, or Pub/Sub redelivers."""
    if not stop_run(job):
        raise LaunchError(f"the run of {job.id} (stopped while launching) could not be stopped yet", transient=True)
    store.ref(job.id).update({"stop_pending": False}, **db.call_options())
    metering.count(writes=1)
    return "cancelled"


def _record_key(job_id: str, public_key: str) -> Job | None:
    """Write the job key's public half on the admitted job, before its run can report."""

    def step(job: Job) -> tuple[Job, list[AuditEntry]] | None:
        if job.state is not JobState.ADMITTED or job.handle is not None or job.job_key == public_key:
            return None
        return job.model_copy(update={"job_key": public_key}), []

    return store.change(job_id, step)


def _record(job_id: str, handle: Handle, now: datetime) -> Job | None:
    """Write the handle: on the admitted job (launched), or on a job stopped meanwhile (its run must
    then be stopped: ``stop_pending``)."""

    def step(job: Job) -> tuple[Job, list[AuditEntry]] | None:
        if job.handle is not None:
            return None
        if job.final:
            event = domain.Event(at=now, kind="launched", reason=f"{handle.name}, after the job ended: stopping it")
            return domain.note(job, event, handle=handle.to_doc(), stop_pending=True), []
        if job.state is not JobState.ADMITTED:
            return None
        event = domain.Event(at=now, kind="launched", reason=f"{job.backend.value}: {handle.name}")
        changed = domain.note(
            job, event, handle=handle.to_doc(), launched_at=now, launch_attempts=job.launch_attempts + 1
        )
        return changed, [entry(changed, "job.launch", "system", now, "launched", handle=handle.name)]

    return store.change(job_id, step)


def _count_attempt(job_id: str, now: datetime, reason: str) -> None:
    def step(job: Job) -> tuple[Job, list[AuditEntry]] | None:
        if job.state is not JobState.ADMITTED:
            return None
        event = domain.Event(at=now, kind="launch_failed", reason=reason[:500])
        return domain.note(job, event, launch_attempts=job.launch_attempts + 1), []

    store.change(job_id, step)


def fail(job_id: str, now: datetime, reason: str) -> Job | None:
    def step(job: Job) -> tuple[Job, list[AuditEntry]] | None:
        if job.final:
            return None
        changed = domain.advance(job, JobState.FAILED, now, reason[:500])
        return changed, [entry(changed, "job.fail", "system", now, "failed")]

    return store.change(job_id, step)
