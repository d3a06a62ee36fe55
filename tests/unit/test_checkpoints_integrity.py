"""Checkpoints are signed with the job's own key (FLEET_JOB_KEY) for its job id and epoch: one planted by
another run (no key, another key, another job's object) is not loaded; a store that cannot be opened at all
(no credentials, a bad location) leaves the run training without checkpoints instead of failing it."""

from __future__ import annotations

from pathlib import Path

import pytest
from fleet_agent.contracts import JobPhase

from jobs import train
from jobs.checkpoints import MAGIC, Checkpoint, CheckpointStore, object_name
from tests.unit.test_checkpoints_train import JOB, env_for, run

KEY = "-----BEGIN PRIVATE KEY-----\\nthe job's own\\n-----END PRIVATE KEY-----"


def save(store: CheckpointStore, epoch: int) -> None:
    store.save(Checkpoint(epoch, train._estimator(train.settings_from_env({}, JOB))))


def test_a_signed_checkpoint_loads_only_for_its_job_and_key(tmp_path: Path) -> None:
    mine = CheckpointStore.from_uri(str(tmp_path), job_key=KEY, job_id=JOB)
    save(mine, 1)
    assert (tmp_path / object_name(1)).read_bytes().startswith(MAGIC)
    assert mine.latest(frozenset())[0] is not None
    for other in (
        CheckpointStore.from_uri(str(tmp_path), job_key="another key", job_id=JOB),
        CheckpointStore.from_uri(str(tmp_path), job_key=KEY, job_id="j-someone-else"),
    ):
        found, skipped = other.latest(frozenset())
        assert found is None and "not signed with this job's key" in skipped[0]


def test_a_planted_checkpoint_is_skipped_for_the_jobs_own(tmp_path: Path) -> None:
    mine = CheckpointStore.from_uri(str(tmp_path), job_key=KEY, job_id=JOB)
    save(mine, 1)
    save(CheckpointStore.from_uri(str(tmp_path)), 2)  # written without the key: another tenant's run
    (tmp_path / object_name(3)).write_bytes((tmp_path / object_name(1)).read_bytes())  # epoch 1's, renamed
    found, skipped = mine.latest(frozenset())
    assert found is not None and found.epoch == 1 and len(skipped) == 2


def test_the_run_signs_its_checkpoints_with_fleet_job_key(tmp_path: Path) -> None:
    assert run({**env_for(tmp_path, {"epochs": 2}), "FLEET_JOB_KEY": KEY})[0] == 0
    assert CheckpointStore.from_uri(str(tmp_path), job_key=KEY, job_id=JOB).latest(frozenset())[0] is not None
    assert CheckpointStore.from_uri(str(tmp_path)).latest(frozenset())[0] is None  # unsigned reading fails


def test_a_store_that_cannot_be_opened_trains_without_checkpoints(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_credentials(*args: object, **kwargs: object) -> CheckpointStore:
        raise RuntimeError("DefaultCredentialsError: no credentials")

    monkeypatch.setattr(CheckpointStore, "from_uri", no_credentials)
    code, reports = run(env_for(Path("/nonexistent/ckpt"), {"epochs": 2}))
    assert code == 0
    assert [r.step for r in reports if r.phase is JobPhase.PROGRESS] == [1, 2]
