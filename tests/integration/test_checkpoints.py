"""Checkpointed GPU runs through the real path: a spot GPU job launched on the GKE fake, its pod played by
a real ``python -m jobs.train`` process with the container's environment (FLEET_CHECKPOINT_URI in the
stack's storage stand-in), preempted mid-run (DisruptionTarget, then SIGTERM), relaunched by the Job: the
new pod resumes after the last checkpoint, the final metrics arrive, and the relaunch is on the job with
its GPU-hours lost. The same for an L4 job on the Cloud Run fake whose task is killed and retried."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from shared.training import job_keys
from tests.integration.conftest import Api, CloudFakes, tick, wait_for
from tests.integration.test_jobs import agent, agent_key, job, job_key, submit, tenant, until_state  # noqa: F401

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


class Pod:
    """One pod of the Kubernetes Job (or one attempt of the Cloud Run task): the container's command with
    its env (the job's key included: a Secret on GKE)."""

    def __init__(self, stack: Any, container: dict[str, Any], job_id: str, **extra: str) -> None:
        env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
        env[job_keys.ENV] = job_keys.env_value(job_key(stack, job_id))
        env.update({k: stack.env[k] for k in ("PUBSUB_EMULATOR_HOST", "STORAGE_EMULATOR_HOST")})
        env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{ROOT / 'sdk'}"
        env.update(extra)
        argv = [*container["command"], *container.get("args", [])]
        command = [sys.executable, *argv[1:]]  # python -m jobs.train, with this interpreter
        self.lines: list[dict[str, Any]] = []
        self.stderr = tempfile.TemporaryFile()  # noqa: SIM115 (read after the process ends; closed with the test)
        self.proc = subprocess.Popen(
            command, cwd=ROOT, env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=self.stderr
        )
        threading.Thread(target=self._read, daemon=True).start()

    def errors(self) -> str:
        self.stderr.seek(0)
        return self.stderr.read().decode(errors="replace")[-3000:]

    def checkpointed(self, step: int, timeout: float = 180) -> None:
        """Wait until this process reported the checkpoint of ``step`` (its stdout: what it sent)."""

        def seen() -> bool:
            assert self.proc.poll() is None, f"exited {self.proc.returncode}: {self.errors()}"
            return any(r["metrics"].get("checkpoint_step", 0) >= step for r in self.progress())

        wait_for(seen, timeout=timeout, every=0.1)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(json.loads(line))

    def progress(self) -> list[dict[str, Any]]:
        return [r for r in self.lines if r["phase"] == "progress"]


#: Five epochs of a second each: the first pod is stopped soon after its first checkpoint (four seconds to
#: spare), and the relaunch has the rest to run.
EPOCHS = 5
FAST = {"rows": 1500, "val_fraction": 0.25, "step_sleep_s": 1}


def test_a_preempted_gke_run_and_a_retried_cloud_run_task_resume_after_their_last_checkpoint(
    api: Api,
    publisher: Any,
    agent: str,  # noqa: F811
    tenant: str,  # noqa: F811
    stack: Any,
    cloud: CloudFakes,
) -> None:
    """The two scenarios are independent (their own jobs, backends and checkpoint locations): they run at
    the same time, so the test costs the longer of the two, not their sum."""
    settings = {
        "backends": ["gke", "cloudrun", "local"],
        "approval_threshold_usd": 1000,
        "user_quota": {"cpu": 16, "memory_gb": 64, "gpu": 4, "storage_gb": 100},  # both runs at once
    }
    assert api.send("PUT", f"/v1/tenants/{tenant}/jobs", settings).status_code == 200
    with ThreadPoolExecutor(max_workers=2) as pool:
        runs = [pool.submit(scenario, api, publisher, agent, tenant, stack, cloud) for scenario in (gke, cloud_run)]
        for run in runs:
            run.result()


def gke(api: Api, publisher: Any, requester_agent: str, tenant_name: str, stack: Any, cloud: CloudFakes) -> None:
    """A spot GPU job on GKE, preempted mid-run: the notice's SIGTERM saves the epoch under way, the Job's
    next pod resumes after it, the relaunch is recorded with the GPU-hours lost, the final metrics arrive."""
    asked = submit(
        api,
        requester_agent,
        name="ckpt-finetune",
        backend="gke",
        resources={"gpu": 2, "gpu_type": "nvidia-l4", "cpu": 8, "memory_gb": 16, "spot": True},
        hyperparameters={"epochs": EPOCHS},
        training_config=FAST,
    )
    launched = wait_for(lambda: job(api, asked["id"])["handle"], timeout=30)
    namespace, name = launched["name"].split("/")
    container = cloud.k8s.job(namespace, name)["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["FLEET_CHECKPOINT_URI"] == f"gs://{stack.env['FLEET_CHECKPOINTS_BUCKET']}/{tenant_name}/{asked['id']}/"

    cloud.k8s.set_running(namespace, name)
    first = Pod(stack, container, asked["id"])
    until_state(api, publisher, asked["id"], "running")
    first.checkpointed(1)
    # ... and the fleet has it (reports travel on job-progress, which nothing orders against the reconcile tick: a
    # checkpoint that lands after the tick that records the relaunch is not counted for it, a known gap)
    wait_for(lambda: ((job(api, asked["id"]).get("checkpoint") or {}).get("step") or 0) >= 1, timeout=30, every=0.1)
    cloud.k8s.preempt(namespace, name)  # the spot VM is reclaimed: its notice is the pod's SIGTERM
    first.proc.send_signal(signal.SIGTERM)
    assert first.proc.wait(timeout=30) == 143, first.errors()
    saved = max(r["step"] for r in first.progress())
    assert 1 <= saved < EPOCHS

    def relaunched() -> dict[str, Any] | None:
        tick(publisher, "jobs-reconcile")
        found = job(api, asked["id"])
        return found if found["relaunch_count"] == 1 and found["checkpoint"]["step"] == saved else None

    found = wait_for(relaunched, timeout=30, every=0.5)
    [relaunch] = found["relaunches"]
    assert relaunch["cause"] == "preemption" and relaunch["lost_since_source"] == "checkpoint"
    assert relaunch["checkpoint_step"] in (saved - 1, saved)  # the notice's save may reach the fleet after the tick
    assert 0 <= relaunch["gpu_hours_lost"] < 0.01 and found["gpu_hours_lost"] == relaunch["gpu_hours_lost"]
    assert [e["kind"] for e in found["history"]].count("relaunch") == 1

    cloud.k8s.set_running(namespace, name)  # the Job's new pod, with the same environment
    second = Pod(stack, container, asked["id"])
    assert second.proc.wait(timeout=120) == 0, second.errors()
    resumed = second.progress()[0]
    assert resumed["metrics"]["resumed_from_step"] == saved and resumed["step"] == saved
    assert [r["step"] for r in second.progress()[1:]] == list(range(saved + 1, EPOCHS + 1))  # not from epoch 1
    cloud.k8s.complete(namespace, name)
    done = until_state(api, publisher, asked["id"], "succeeded", "failed")
    assert done["state"] == "succeeded", done
    assert done["result"]["phase"] == "succeeded" and 0.6 < done["result"]["accuracy"] <= 1
    assert done["checkpoint"]["step"] == EPOCHS and done["relaunch_count"] == 1 and done["preemptions"] == 1


def cloud_run(api: Api, publisher: Any, requester_agent: str, tenant_name: str, stack: Any, cloud: CloudFakes) -> None:
    """An L4 job on Cloud Run whose task crashes mid-run and is retried: the retry is recorded as a
    relaunch with the GPU-hours lost since the last checkpoint, the next attempt resumes after it."""
    asked = submit(
        api,
        requester_agent,
        name="ckpt-l4",
        backend="cloudrun",
        resources={"gpu": 1, "cpu": 4, "memory_gb": 16},
        hyperparameters={"epochs": EPOCHS},
        training_config=FAST,
    )
    handle = wait_for(lambda: job(api, asked["id"])["handle"], timeout=30)
    container = cloud.cloudrun.job(handle["name"])["template"]["template"]["containers"][0]
    execution = next(iter(cloud.cloudrun.executions(handle["name"])))
    cloud.cloudrun.start(execution)
    first = Pod(stack, container, asked["id"], CLOUD_RUN_TASK_ATTEMPT="0")
    until_state(api, publisher, asked["id"], "running")
    first.checkpointed(1)

    def delivered() -> bool:
        """The fleet has the last checkpoint the task reported (reports are sent in the background: a kill
        right after one is printed could lose it), and the task has reported no other since."""
        step = max(r["step"] for r in first.progress())
        fleet = (job(api, asked["id"]).get("checkpoint") or {}).get("step")
        return fleet == step and max(r["step"] for r in first.progress()) == step

    wait_for(delivered, timeout=30, every=0.1)
    first.proc.kill()  # the task crashes (no notice): the epoch under way is lost
    first.proc.wait(timeout=10)
    saved = max(r["step"] for r in first.progress())
    assert 1 <= saved < EPOCHS
    assert (job(api, asked["id"]).get("checkpoint") or {}).get("step") == saved
    cloud.cloudrun.retry(execution)

    def relaunched() -> dict[str, Any] | None:
        tick(publisher, "jobs-reconcile")
        found = job(api, asked["id"])
        return found if found["relaunch_count"] == 1 else None

    found = wait_for(relaunched, timeout=30, every=0.5)
    [relaunch] = found["relaunches"]
    assert (relaunch["cause"], relaunch["key"], relaunch["checkpoint_step"]) == ("retry", "retry-1", saved)
    assert relaunch["lost_since_source"] == "checkpoint" and 0 < relaunch["gpu_hours_lost"] < 0.05

    second = Pod(stack, container, asked["id"], CLOUD_RUN_TASK_ATTEMPT="1")
    assert second.proc.wait(timeout=120) == 0, second.errors()
    assert second.progress()[0]["metrics"]["resumed_from_step"] == saved
    assert [r["step"] for r in second.progress()[1:]] == list(range(saved + 1, EPOCHS + 1))
    cloud.cloudrun.succeed(execution)
    done = until_state(api, publisher, asked["id"], "succeeded", "failed")
    assert done["state"] == "succeeded" and done["result"]["phase"] == "succeeded"
    assert done["relaunch_count"] == 1 and done["gpu_hours_lost"] == relaunch["gpu_hours_lost"]
