"""jobs/train.py in-process: run() with a fake publisher, small data, few epochs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from fleet_agent.contracts import JobPhase, JobProgress
from fleet_agent.jobs import JobReporter

from jobs import train, train_config
from tests.unit.test_sdk_client import FakePublisher

ROOT = Path(__file__).resolve().parents[2]
JOB = "j-0123456789abcdef0123"


def run(hyperparameters: dict[str, Any] | None = None, **config: Any) -> tuple[int, list[JobProgress]]:
    config = {"rows": 3000, "seed": 7, **config}
    env = {"FLEET_TRAINING_CONFIG": json.dumps(config)}
    if hyperparameters is not None:
        env["FLEET_HYPERPARAMETERS"] = json.dumps(hyperparameters)
    publisher = FakePublisher()
    reporter = JobReporter(JOB, "agent-1", project="proj", publisher=publisher)
    code = train.run(env, reporter)
    assert reporter.close(timeout=5)
    return code, publisher.reports()


@pytest.mark.parametrize(
    "hyperparameters",
    [{"epochs": 4}, {"model": "hgb", "epochs": 3, "max_iter": 30, "max_depth": 3, "learning_rate": 0.2}],
    ids=["sgd", "hgb"],
)
def test_a_run_reports_progress_then_success_with_useful_metrics(
    hyperparameters: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    code, reports = run(hyperparameters)
    assert code == 0
    epochs = hyperparameters["epochs"]
    assert [r.phase for r in reports] == [JobPhase.STARTED, *[JobPhase.PROGRESS] * epochs, JobPhase.SUCCEEDED]
    progress = reports[1:-1]
    assert [r.step for r in progress] == list(range(1, epochs + 1))
    assert {r.total_steps for r in progress} == {epochs}
    for r in progress:
        assert set(r.metrics) == {"loss", "val_loss", "val_accuracy"}
        assert 0 <= r.metrics["val_accuracy"] <= 1
    assert progress[-1].metrics["loss"] < progress[0].metrics["loss"]  # real training, step by step

    final = reports[-1].metrics
    for name in ("accuracy", "precision", "recall", "f1", "roc_auc"):
        assert 0 <= final[name] <= 1, name
    base_rate = max(final["val_positive_rate"], 1 - final["val_positive_rate"])
    assert final["accuracy"] > base_rate + 0.07  # learned something, not "always healthy"
    assert final["roc_auc"] > 0.85
    assert (final["train_rows"], final["val_rows"]) == (2400, 600)
    assert final["duration_s"] >= 0

    # one JSON line per report on stdout, exactly what was sent
    lines = capsys.readouterr().out.splitlines()
    assert [JobProgress.model_validate_json(line) for line in lines] == reports


def test_fail_at_step_reports_failed_and_exits_1() -> None:
    code, reports = run({"epochs": 4}, fail_at_step=3)
    assert code == 1
    assert [r.phase for r in reports] == [JobPhase.STARTED, JobPhase.PROGRESS, JobPhase.PROGRESS, JobPhase.FAILED]
    assert [r.step for r in reports[1:3]] == [1, 2]
    assert "step 3" in reports[-1].message and "fail_at_step" in reports[-1].message


def test_unknown_hyperparameter_fails_listing_the_accepted_ones() -> None:
    code, reports = run({"epochs": 2, "momentum": 0.9})
    assert code == 1
    (failed,) = reports
    assert failed.phase is JobPhase.FAILED
    assert "momentum" in failed.message
    for name in train_config.accepted_hyperparameters("sgd"):
        assert name in failed.message

    code, reports = run({"max_depth": 4})  # a tree hyperparameter for the linear model: says which model takes it
    assert code == 1
    assert "max_depth needs model 'hgb'" in reports[0].message


@pytest.mark.parametrize(
    ("hyperparameters", "config", "message"),
    [
        ({"epochs": 0}, {}, "epochs must be between 1 and 1000"),
        ({"epochs": True}, {}, "epochs must be a whole number"),
        ({"alpha": -1}, {}, "alpha must be above 0"),
        ({"model": "xgboost"}, {}, "model must be one of sgd, hgb"),
        ({"model": "hgb", "epochs": 10, "max_iter": 5}, {}, "max_iter"),
        ({"epochs": 2}, {"fail_at_step": 5}, "beyond the last step"),
        ({}, {"rows": 10}, "training_config.rows must be between"),
    ],
)
def test_invalid_values_fail_before_training(
    hyperparameters: dict[str, Any], config: dict[str, Any], message: str
) -> None:
    code, reports = run(hyperparameters, **config)
    assert code == 1
    assert [r.phase for r in reports] == [JobPhase.FAILED]
    assert message in reports[0].message


def test_malformed_json_fails_clearly() -> None:
    publisher = FakePublisher()
    reporter = JobReporter(JOB, "agent-1", project="proj", publisher=publisher)
    assert train.run({"FLEET_HYPERPARAMETERS": "{epochs: 3}"}, reporter) == 1
    assert "FLEET_HYPERPARAMETERS is not valid JSON" in publisher.reports()[0].message


def test_same_seed_same_run_and_the_default_seed_comes_from_the_job() -> None:
    def metrics(reports: list[JobProgress]) -> list[dict[str, float]]:
        return [{k: v for k, v in r.metrics.items() if k != "duration_s"} for r in reports]

    _, first = run({"epochs": 2}, seed=11)
    _, again = run({"epochs": 2}, seed=11)
    _, other = run({"epochs": 2}, seed=12)
    assert metrics(first) == metrics(again)
    assert metrics(first) != metrics(other)
    settings = train_config.settings_from_env({}, JOB)
    assert settings.seed == train_config.default_seed(JOB) == train_config.settings_from_env({}, JOB).seed
    assert (settings.model, settings.epochs, settings.rows) == ("sgd", 10, 20_000)


def test_simulated_history_is_plausible() -> None:
    features, labels = train.simulate(5000, seed=3)
    assert features.shape == (5000, len(train.FEATURES))
    latency, error_rate, cpu, memory, calls, cost = features.T
    assert (latency > 0).all() and ((error_rate >= 0) & (error_rate <= 1)).all()
    assert ((cpu >= 0) & (cpu <= 100)).all() and ((memory >= 0) & (memory <= 100)).all()
    assert (calls > 0).all() and (cost > 0).all()
    assert 0.1 < labels.mean() < 0.45
    # failing agents look worse
    assert latency[labels == 1].mean() > latency[labels == 0].mean()
    assert error_rate[labels == 1].mean() > error_rate[labels == 0].mean()


def test_module_import_is_light() -> None:
    code = "import sys, jobs.train; print(sorted(m for m in ('sklearn', 'numpy', 'grpc') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


def test_without_the_job_env_the_command_exits_1_with_a_clear_message() -> None:
    env = {"PATH": "", "GOOGLE_CLOUD_PROJECT": "proj"}
    out = subprocess.run([sys.executable, "-m", "jobs.train"], capture_output=True, text=True, cwd=ROOT, env=env)
    assert out.returncode == 1
    assert "FLEET_JOB_ID and FLEET_AGENT_ID not set" in out.stderr
