"""jobs/train.py with checkpoints (a local directory as FLEET_CHECKPOINT_URI): each epoch saves one, a
terminated run finishes and saves the epoch it is in, and the next run resumes after the latest checkpoint
(reported as ``resumed``) instead of starting at epoch 1, ending with the same metrics as an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fleet_agent.contracts import JobPhase, JobProgress
from fleet_agent.jobs import CHECKPOINT_AT, CHECKPOINT_STEP, RESUMED_FROM, JobReporter
from sklearn.ensemble import HistGradientBoostingClassifier

from jobs import train
from jobs.checkpoints import Checkpoint, CheckpointStore, object_name
from tests.unit.test_sdk_client import FakePublisher

ROOT = Path(__file__).resolve().parents[2]
JOB = "j-0123456789abcdef0c01"


@pytest.fixture(autouse=True)
def no_stop() -> Any:
    train.STOP.clear()
    yield
    train.STOP.clear()


def env_for(where: Path, hyperparameters: dict[str, Any], **config: Any) -> dict[str, str]:
    return {
        "FLEET_HYPERPARAMETERS": json.dumps(hyperparameters),
        "FLEET_TRAINING_CONFIG": json.dumps({"rows": 2000, "seed": 3, **config}),
        "FLEET_CHECKPOINT_URI": str(where),
    }


def run(env: dict[str, str], attempt: int = 0) -> tuple[int, list[JobProgress]]:
    publisher = FakePublisher()
    reporter = JobReporter(JOB, "agent-1", project="proj", publisher=publisher, attempt=attempt)
    try:
        code = train.run(env, reporter)
    except SystemExit as exc:
        code = int(exc.code or 0)
    reporter.close(timeout=5)
    return code, publisher.reports()


@pytest.mark.parametrize("hyperparameters", [{"epochs": 5}, {"model": "hgb", "epochs": 4, "max_iter": 20}])
def test_a_terminated_run_saves_its_epoch_and_the_next_resumes_after_it(
    tmp_path: Path, hyperparameters: dict[str, Any]
) -> None:
    epochs = hyperparameters["epochs"]
    straight_code, straight = run(env_for(tmp_path / "straight", hyperparameters))
    assert straight_code == 0

    where = tmp_path / "ckpt"
    env = env_for(where, hyperparameters)
    publisher = FakePublisher()
    reporter = JobReporter(JOB, "agent-1", project="proj", publisher=publisher)
    original = reporter.checkpointed

    def stop_after_two(step: int, *args: Any, **kwargs: Any) -> Any:
        if step == 2:
            train.STOP.set()  # the SIGTERM handler's effect, during epoch 2's report
        return original(step, *args, **kwargs)

    reporter.checkpointed = stop_after_two  # type: ignore[method-assign]
    with pytest.raises(SystemExit) as ended:
        train.run(env, reporter)
    assert ended.value.code == 143
    reporter.close(timeout=5)
    first = publisher.reports()
    assert [r.step for r in first if r.phase is JobPhase.PROGRESS] == [1, 2]
    assert all(r.phase is not JobPhase.FAILED for r in first)  # terminated is not failed
    assert CheckpointStore.from_uri(str(where)).epochs() == [1, 2]
    saved = [r for r in first if CHECKPOINT_STEP in r.metrics]
    assert saved[-1].metrics[CHECKPOINT_STEP] == 2 and saved[-1].message.endswith(object_name(2))

    train.STOP.clear()
    code, second = run(env, attempt=1)
    assert code == 0
    resumed = [r for r in second if RESUMED_FROM in r.metrics]
    assert len(resumed) == 1 and resumed[0].step == 2 and resumed[0].metrics[RESUMED_FROM] == 2
    assert resumed[0].metrics[CHECKPOINT_AT] == saved[-1].metrics[CHECKPOINT_AT]
    trained = [r.step for r in second if r.phase is JobPhase.PROGRESS and RESUMED_FROM not in r.metrics]
    assert trained == list(range(3, epochs + 1))  # the epoch after the last checkpoint, not 1
    assert second[-1].phase is JobPhase.SUCCEEDED
    final, expected = second[-1].metrics, straight[-1].metrics
    for name in ("accuracy", "roc_auc", "f1"):
        assert final[name] == pytest.approx(expected[name], abs=0.02), name
    assert CheckpointStore.from_uri(str(where)).epochs() == list(range(1, epochs + 1))


def test_an_unreadable_latest_checkpoint_is_skipped_for_the_one_before(tmp_path: Path) -> None:
    env = env_for(tmp_path, {"epochs": 3}, fail_at_step=3)
    assert run(env)[0] == 1  # epochs 1 and 2 saved, then a simulated failure
    (tmp_path / object_name(2)).write_bytes(b"not a checkpoint")
    code, reports = run(env_for(tmp_path, {"epochs": 3}), attempt=1)
    assert code == 0
    assert [r.step for r in reports if r.phase is JobPhase.PROGRESS] == [1, 2, 3]  # resumed after 1


def test_a_checkpoint_with_an_untrusted_type_is_not_loaded(tmp_path: Path) -> None:
    store = CheckpointStore.from_uri(str(tmp_path))
    store.save(Checkpoint(1, train._estimator(train.settings_from_env({}, JOB))))
    assert store.latest(frozenset())[0] is not None  # SGD needs nothing beyond skops' defaults
    x, y = np.random.default_rng(1).random((200, 3)), np.arange(200) % 2
    store.save(Checkpoint(2, HistGradientBoostingClassifier(max_iter=2).fit(x, y)))
    found, skipped = store.latest(frozenset())
    assert found is not None and found.epoch == 1 and "untrusted" in skipped[0]


def test_a_checkpoint_that_cannot_be_saved_does_not_fail_the_run(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("a file where the directory should be")
    code, reports = run(env_for(blocker / "ckpt", {"epochs": 2}))
    assert code == 0
    assert not any(CHECKPOINT_STEP in r.metrics for r in reports)


def test_sigterm_mid_epoch_finishes_and_saves_that_epoch_then_exits_143(tmp_path: Path) -> None:
    env = {
        **os.environ,
        **env_for(tmp_path, {"epochs": 50}, step_sleep_s=0.5),
        "FLEET_JOB_ID": JOB,
        "FLEET_AGENT_ID": "agent-1",
        "GOOGLE_CLOUD_PROJECT": "proj",
        "PUBSUB_EMULATOR_HOST": "127.0.0.1:9",  # nothing listens: reports fail, the run does not care
        "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'sdk'}",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "jobs.train"], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    seen = threading.Event()

    def watch() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if b'"checkpoint_step"' in line:
                seen.set()

    threading.Thread(target=watch, daemon=True).start()
    assert seen.wait(60), "no checkpoint reported"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 143
    epochs = CheckpointStore.from_uri(str(tmp_path)).epochs()
    assert epochs and epochs == list(range(1, epochs[-1] + 1)) and epochs[-1] < 50


def test_a_location_that_cannot_be_listed_trains_from_the_start(monkeypatch: pytest.MonkeyPatch) -> None:
    def unreachable(self: CheckpointStore) -> list[int]:
        raise ConnectionError("no bucket")

    monkeypatch.setattr(CheckpointStore, "epochs", unreachable)
    code, reports = run(env_for(Path("/nonexistent/ckpt"), {"epochs": 2}))
    assert code == 0
    assert [r.step for r in reports if r.phase is JobPhase.PROGRESS] == [1, 2]
