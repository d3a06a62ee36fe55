"""The demo's training scene: a training job for one simulated agent, run through the local backend.

Through the real path: ``POST /v1/jobs`` estimates and queues the job and admits it within the
requester's quota; ``fleet-actions`` launches it as a local process (jobs/train.py, scikit-learn)
that reports each epoch on ``job-progress``; the reconcile tick (``jobs-reconcile``, published here
as Cloud Scheduler would) follows it to the end. A second job asking more GPUs than are left waits,
and says why, until the first is done.
"""

from __future__ import annotations

import json
import time
from typing import Any

import requests
from rich.console import Console
from rich.table import Table


def _api(env: dict[str, str], method: str, path: str, body: Any = None, **params: str) -> Any:
    headers = {"Authorization": f"Bearer {env['FLEET_API_KEY']}"}
    reply = requests.request(method, env["FLEET_API_URL"] + path, json=body, params=params, headers=headers, timeout=30)
    reply.raise_for_status()
    return reply.json()


def _tick(env: dict[str, str]) -> None:
    from google.cloud import pubsub_v1

    client = pubsub_v1.PublisherClient()
    topic = client.topic_path(env["GOOGLE_CLOUD_PROJECT"], "tick-jobs-reconcile")
    client.publish(topic, json.dumps({"job": "jobs-reconcile"}).encode(), job="jobs-reconcile").result(timeout=30)


def run(env: dict[str, str], agent_id: str, console: Console, timeout: float = 90.0) -> bool:
    """True when the first job succeeded with metrics and the second waited for quota, then ran."""
    base = {"agent_id": agent_id, "requester": "maya@example.com"}
    first = _api(
        env,
        "POST",
        "/v1/jobs",
        {
            **base,
            "name": "failure-predictor",
            "resources": {"cpu": 2, "memory_gb": 4, "gpu": 2, "gpu_type": "nvidia-l4"},
            "hyperparameters": {"epochs": 6},
            "training_config": {"rows": 6000, "step_sleep_s": 0.5},
            "priority": 7,
        },
    )
    second = _api(
        env,
        "POST",
        "/v1/jobs",
        {**base, "name": "latency-model", "resources": {"gpu": 1}, "training_config": {"rows": 3000}},
    )
    console.print(
        f"job {first['id']} `{first['name']}`: {first['state']} on {first['backend']} ({first['backend_reason']}), "
        f"estimate ${first['estimate']['usd']}"
    )
    console.print(
        f"job {second['id']} `{second['name']}`: {second['state']}, #{second['position']}: {second['reason']}"
    )
    started = time.monotonic()
    jobs = {first["id"]: first, second["id"]: second}
    seen_progress: set[int] = set()
    while time.monotonic() - started < timeout:
        time.sleep(1.0)
        _tick(env)
        jobs = {job_id: _api(env, "GET", f"/v1/jobs/{job_id}") for job_id in jobs}
        progress = jobs[first["id"]].get("progress") or {}
        step = progress.get("step")
        if isinstance(step, int) and step not in seen_progress and progress.get("phase") == "progress":
            seen_progress.add(step)
            loss = progress.get("metrics", {}).get("val_loss")
            console.print(f"  {first['name']}: epoch {step}/{progress.get('total_steps')}, val_loss {loss:.3f}")
        if all(j["state"] in ("succeeded", "failed", "cancelled") for j in jobs.values()):
            break
    table = Table(title="Training jobs (local backend)")
    for column in ("job", "name", "state", "backend", "metrics", "history"):
        table.add_column(column)
    for job in jobs.values():
        result = job.get("result") or {}
        metrics = ", ".join(f"{k} {result[k]:.3f}" for k in ("accuracy", "f1", "roc_auc") if k in result)
        states = " → ".join(e["to_state"] for e in job["history"] if e["kind"] == "state")
        table.add_row(job["id"], job["name"], job["state"], job["backend"], metrics, states)
    console.print(table)
    done = jobs[first["id"]]
    ok = (
        done["state"] == "succeeded"
        and bool((done.get("result") or {}).get("accuracy"))
        and jobs[second["id"]]["state"] == "succeeded"
        and second["state"] == "queued"
    )
    console.print(f"training scene {'passed' if ok else 'FAILED'} in {time.monotonic() - started:.0f}s")
    return ok
