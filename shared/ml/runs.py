"""The daily retraining run (schedule ``model-retrain``): launched as a job through the training launchers
(a Cloud Run job in Google Cloud, a local process on the local stack), never inside the function.

One run per day: its id is the date (``retrain-YYYYMMDD``), recorded in ``model_runs/`` before the launch,
and the backend's resource is named from it, so a redelivered tick launches nothing twice. The tick also
looks at the last runs: one still marked running whose backend says it ended without recording its end
(killed, out of memory, timed out) is marked failed with the backend's reason, and the backend's
leftovers of an ended run (its Cloud Run job) are deleted.
"""

from __future__ import annotations

import os
import sys
from datetime import UTC, datetime
from typing import Any

from shared.domain.run_phase import FINAL_PHASES, Backend, Phase
from shared.launchers import registry
from shared.launchers.base import Handle, LaunchError, LaunchSpec
from shared.platform import settings
from shared.store import models as store
from shared.training.launch import image

#: System runs are launched under this tenant and agent (the launchers label every resource with both).
SYSTEM_TENANT = "fleet"
SYSTEM_AGENT = "model-retrain"
#: A retraining run's limits.
CPU = 2.0
MEMORY_GB = 8.0
MAX_RUNTIME_S = 3600


def backend() -> Backend:
    """``FLEET_RETRAIN_BACKEND`` (Terraform: cloudrun; the local stack: local)."""
    chosen = Backend(os.environ.get("FLEET_RETRAIN_BACKEND", Backend.CLOUDRUN.value))
    if chosen is Backend.CLOUDRUN and not os.environ.get("FLEET_RETRAIN_SERVICE_ACCOUNT"):
        # Without an identity of its own it would run as the tenants' training account, which must not
        # be able to write the models every heartbeat is judged by.
        raise LaunchError(
            "set FLEET_RETRAIN_SERVICE_ACCOUNT: the retraining job needs its own identity", transient=False
        )
    return chosen


def run_id_for(now: datetime) -> str:
    return f"retrain-{now.astimezone(UTC):%Y%m%d}"


def spec(run_id: str, chosen: Backend) -> LaunchSpec:
    command: tuple[str, ...] = ("python", "-m", "jobs.retrain", "--run-id", run_id)
    if chosen is Backend.LOCAL:
        command = (sys.executable, *command[1:])
    s = settings.get()
    return LaunchSpec(
        job_id=run_id,
        tenant=SYSTEM_TENANT,
        agent_id=SYSTEM_AGENT,
        image=os.environ.get("FLEET_RETRAIN_IMAGE") or image(),
        command=command,
        env={"GOOGLE_CLOUD_PROJECT": s.project, "FLEET_MODELS_BUCKET": s.models_bucket},
        cpu=CPU,
        memory_gb=MEMORY_GB,
        max_runtime_s=MAX_RUNTIME_S,
        max_retries=0,
        labels={"fleet-run": "model-retrain"},
        # Its own identity (Firestore, the models bucket), never the tenants' training account.
        service_account=os.environ.get("FLEET_RETRAIN_SERVICE_ACCOUNT") or None,
    )


def launch(now: datetime, run_id: str | None = None) -> dict[str, Any]:
    """Record and launch the day's run (or ``run_id``); check earlier runs still marked running."""
    checked = check_running(now)
    run_id = run_id or run_id_for(now)
    try:
        chosen = backend()
    except LaunchError as exc:  # misconfigured: recorded (GET /v1/models shows it), not retried
        store.start_run(run_id, {"state": "failed", "started_at": now, "finished_at": now, "error": str(exc)})
        return {"run_id": run_id, "launched": False, "state": "failed", "error": str(exc), **checked}
    new = store.start_run(run_id, {"state": "launching", "started_at": now, "backend": chosen.value})
    if not new:
        existing = store.run_ref(run_id).get().to_dict() or {}
        if existing.get("handle"):
            return {"run_id": run_id, "launched": False, "state": existing.get("state"), **checked}
    try:
        handle = registry.get(chosen).launch(spec(run_id, chosen))
    except LaunchError as exc:
        if exc.transient:
            raise  # the tick fails; Pub/Sub redelivers it within its max age
        store.update_run(run_id, {"state": "failed", "finished_at": now, "error": str(exc)[:500]})
        return {"run_id": run_id, "launched": False, "state": "failed", "error": str(exc), **checked}
    store.update_run(run_id, {"handle": handle.to_doc(), "state": "running"})
    return {"run_id": run_id, "launched": True, "backend": chosen.value, **checked}


def check_running(now: datetime) -> dict[str, Any]:
    """The last few runs against their backends: one still marked running whose backend says it ended
    without recording it (killed, out of memory, timed out) is marked failed; the backend's leftovers of
    an ended run (a Cloud Run job) are released once."""
    failed = released = 0
    for run in store.runs(limit=5):
        if not run.get("handle") or run.get("released"):
            continue
        handle = Handle.from_doc(run["handle"])
        try:
            launcher = registry.get(handle.backend)
            status = launcher.status(handle)
            if run.get("state") == "running" and status.phase in (Phase.FAILED, Phase.CANCELLED, Phase.MISSING):
                error = f"{status.phase.value}: {status.message}"[:500]
                store.update_run(run["run_id"], {"state": "failed", "finished_at": now, "error": error})
                failed += 1
            elif run.get("state") != "running" and status.phase in (*FINAL_PHASES, Phase.MISSING):
                launcher.release(handle)
                store.update_run(run["run_id"], {"released": True})
                released += 1
        except LaunchError:
            continue  # the backend cannot tell now: the next tick asks again
    return {"stale_runs_failed": failed, "runs_released": released}
