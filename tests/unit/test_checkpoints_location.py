"""Every run gets its checkpoint location, ``gs://<checkpoints bucket>/<tenant>/<job id>/``, as
``FLEET_CHECKPOINT_URI``: in the local process's environment, the GKE Job's container env and the Cloud Run
job's container env (the same on every attempt, so a relaunched run finds what its predecessor saved)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from shared.domain.jobs import Job, JobsConfig
from shared.launchers.cloudrun_job import job_message
from shared.launchers.gke_manifest import job_manifest
from shared.store import config
from shared.training import checkpoints, launch

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)


def job(backend: str, **changes: Any) -> Job:
    data: dict[str, Any] = {
        "id": "j-0000000000000000ab12", "tenant": "acme", "agent_id": "chat-1", "requester": "api:ann",
        "requested_via": "api:ann", "name": "train", "resources": {"cpu": 4, "memory_gb": 16}, "priority": 5,
        "max_runtime_s": 3600, "backend": backend, "estimate": {"usd": "1"}, "state": "admitted",
        "created_at": NOW, "updated_at": NOW,
    }  # fmt: skip
    return Job.model_validate({**data, **changes})


@pytest.fixture(autouse=True)
def settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config, "jobs", lambda tenant: JobsConfig())
    monkeypatch.delenv(checkpoints.BUCKET_ENV, raising=False)


def test_the_bucket_is_the_models_buckets_sibling_unless_named(monkeypatch: pytest.MonkeyPatch) -> None:
    project = launch.settings.get().project
    assert checkpoints.uri("acme", "j-1") == f"gs://{project}-fleet-checkpoints/acme/j-1/"
    monkeypatch.setenv(checkpoints.BUCKET_ENV, "ckpt-local")
    assert checkpoints.uri("acme", "j-1") == "gs://ckpt-local/acme/j-1/"


@pytest.mark.parametrize("backend", ["local", "gke", "cloudrun"])
def test_every_launch_spec_carries_the_jobs_checkpoint_uri(monkeypatch: pytest.MonkeyPatch, backend: str) -> None:
    monkeypatch.setenv(checkpoints.BUCKET_ENV, "ckpt")
    spec = launch.spec_of(job(backend))
    assert spec.env["FLEET_CHECKPOINT_URI"] == "gs://ckpt/acme/j-0000000000000000ab12/"


def test_the_gke_container_and_the_cloud_run_container_get_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(checkpoints.BUCKET_ENV, "ckpt")
    spec = launch.spec_of(job("gke"))
    manifest = job_manifest(spec, "fleet-acme")
    env = {e["name"]: e.get("value") for e in manifest["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["FLEET_CHECKPOINT_URI"] == "gs://ckpt/acme/j-0000000000000000ab12/"
    message = job_message(launch.spec_of(job("cloudrun")), project="p", region="us-central1")
    run_env = {e.name: e.value for e in message.template.template.containers[0].env}
    assert run_env["FLEET_CHECKPOINT_URI"] == "gs://ckpt/acme/j-0000000000000000ab12/"


def test_checkpoints_are_kept_longer_than_a_run_may_last() -> None:
    """terraform/variables.tf refuses a retention under 8 days: a Cloud Run task may run 168 h, and a
    relaunch near its end must still find its checkpoints."""
    text = (Path(__file__).resolve().parents[2] / "terraform" / "variables.tf").read_text()
    block = text.split('variable "checkpoint_retention_days" {', 1)[1].split("\n}\n", 1)[0]
    assert "validation {" in block and "var.checkpoint_retention_days >= 8" in block
