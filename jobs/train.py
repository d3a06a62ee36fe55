"""The built-in training workload: learn to predict an agent's failures from its heartbeats.

    FLEET_JOB_ID=j-0123456789abcdef0123 FLEET_AGENT_ID=acme-chat-01 GOOGLE_CLOUD_PROJECT=demo \\
    FLEET_HYPERPARAMETERS='{"epochs": 5}' python -m jobs.train

The agent's history is simulated (seeded, so a run is reproducible): heartbeat-like snapshots
(latency, error rate, CPU, memory, traffic, cost per call) labelled "fails within the next window".
A latent "trouble" drives latency, errors and memory and, with memory pressure and CPU saturation,
the chance of failing: a learnable signal under noise. The model trains incrementally so each step
is real progress, reported over Pub/Sub with :class:`fleet_agent.jobs.JobReporter`:

- ``model: "sgd"`` (default): a logistic regression, ``SGDClassifier(loss="log_loss")``, one
  ``partial_fit`` pass over the shuffled training set per epoch;
- ``model: "hgb"``: ``HistGradientBoostingClassifier`` with ``warm_start``, growing ``max_iter``
  trees by equal parts over the epochs.

After each epoch: ``progress(step, epochs, loss, val_loss, val_accuracy)``; at the end
``succeeded`` with the held-out metrics. Every report is also printed to stdout as one JSON line.
Exit code 0 on success, 1 on failure (after reporting it). A SIGTERM (preemption, cancellation)
exits 143 without a ``failed`` report: the backend decides whether the run is retried.

Checkpoints (``FLEET_CHECKPOINT_URI``, :mod:`jobs.checkpoints`): after each epoch the model, the epoch and
the metrics so far are saved (skops inside the models' ``.npz`` format, no pickle), and that epoch's report
names the checkpoint (``checkpointed``: ``checkpoint_step``, ``checkpoint_at``). At start the run resumes
from the latest checkpoint, reporting ``resumed`` at its epoch, and goes on with the next one (a run that is
not relaunched sees no checkpoint and starts at epoch 1). A SIGTERM finishes the epoch it is in and saves its
checkpoint before exiting 143 (the 30 s spot notice: an epoch longer than that is cut off, and the previous
checkpoint is the one a relaunch resumes from).

Its configuration (``FLEET_HYPERPARAMETERS``, ``FLEET_TRAINING_CONFIG``) is parsed by
:mod:`jobs.train_config`. scikit-learn and numpy are imported when training starts, not with this module.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Mapping
from types import FrameType
from typing import TYPE_CHECKING, Any

from fleet_agent.jobs import JOB_KEY_ENV, JobReporter

from jobs import checkpoints
from jobs.checkpoints import Checkpoint, CheckpointStore
from jobs.train_config import DEFAULT_HGB_TREES, DEFAULT_SGD_LEARNING_RATE, ConfigError, Settings, settings_from_env

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    Matrix = npt.NDArray[np.float64]
    Labels = npt.NDArray[np.int64]

#: Seconds a terminated run waits for its pending reports before exiting.
TERMINATED_FLUSH_S = 5.0
#: Set by SIGTERM: the run finishes the epoch it is in, saves its checkpoint, and exits 143.
STOP = threading.Event()
#: The types a checkpoint's model may hold beyond skops' defaults (HistGradientBoosting's trees).
TRUSTED = frozenset({"sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor"})
FEATURES = ("latency_ms", "error_rate", "cpu_pct", "memory_pct", "calls_per_min", "cost_per_call")


# -- data ---------------------------------------------------------------------------------------


def simulate(rows: int, seed: int) -> tuple[Matrix, Labels]:
    """``rows`` heartbeat snapshots (columns :data:`FEATURES`) and whether the agent failed next.

    Two hidden causes: *trouble* (a degrading dependency, a leak) raises latency, errors and memory;
    *load* raises traffic, CPU and latency. Failure odds grow with latency, errors, memory above 85%
    and CPU above 85%, plus noise the features cannot explain. About a quarter of the rows fail.
    """
    # lazy: numpy and scikit-learn load when training starts, not with the module
    import numpy as np

    rng = np.random.default_rng([seed, 0])
    trouble = rng.normal(size=rows)
    load = rng.normal(size=rows)
    calls_per_min = np.exp(3.0 + 0.6 * load + rng.normal(0.0, 0.2, rows))
    log_latency = 5.0 + 0.35 * trouble + 0.15 * load + rng.normal(0.0, 0.25, rows)
    error_logit = -4.0 + 1.0 * trouble + rng.normal(0.0, 0.5, rows)
    cpu_pct = np.clip(45.0 + 12.0 * load + 8.0 * trouble + rng.normal(0.0, 8.0, rows), 0.0, 100.0)
    memory_pct = np.clip(55.0 + 10.0 * trouble + rng.normal(0.0, 12.0, rows), 0.0, 100.0)
    cost_per_call = np.exp(-5.0 + 0.4 * (log_latency - 5.0) + rng.normal(0.0, 0.3, rows))
    # Standardised with the population's known mean and spread, so the world does not depend on `rows`.
    fail_logit = (
        -2.6
        + 2.2 * (log_latency - 5.0) / 0.455
        + 2.2 * (error_logit + 4.0) / 1.118
        + 1.5 * np.maximum(memory_pct - 85.0, 0.0) / 5.0
        + 1.0 * (cpu_pct > 85.0)
        + rng.normal(0.0, 0.3, rows)
    )
    labels = (rng.random(rows) < 1.0 / (1.0 + np.exp(-fail_logit))).astype(np.int64)
    features = np.column_stack(
        [np.exp(log_latency), 1.0 / (1.0 + np.exp(-error_logit)), cpu_pct, memory_pct, calls_per_min, cost_per_call]
    )
    return features, labels


def prepare(features: Matrix) -> Matrix:
    """Model inputs: logs of the heavy-tailed columns and the error rate's log-odds (a linear model
    needs them; trees do not mind)."""
    # lazy: numpy and scikit-learn load when training starts, not with the module
    import numpy as np

    latency, error_rate, cpu, memory, calls, cost = features.T
    error_rate = np.clip(error_rate, 1e-6, 1 - 1e-6)
    return np.column_stack(
        [np.log(latency), np.log(error_rate / (1 - error_rate)), cpu, memory, np.log(calls), np.log(cost)]
    )


# -- training -----------------------------------------------------------------------------------


def _estimator(settings: Settings) -> Any:
    if settings.model == "sgd":
        # lazy: scikit-learn loads when training starts, not with the module
        from sklearn.linear_model import SGDClassifier

        params = dict(settings.params)
        # A constant, small step: the loss falls visibly over the epochs instead of in the first one.
        eta0 = params.pop("learning_rate", DEFAULT_SGD_LEARNING_RATE)
        return SGDClassifier(loss="log_loss", learning_rate="constant", eta0=eta0, random_state=settings.seed, **params)
    # lazy: scikit-learn loads when training starts, not with the module
    from sklearn.ensemble import HistGradientBoostingClassifier

    params = {k: v for k, v in settings.params.items() if k != "max_iter"}
    return HistGradientBoostingClassifier(early_stopping=False, warm_start=True, random_state=settings.seed, **params)


def _resume(store: CheckpointStore | None, settings: Settings, reporter: JobReporter) -> Checkpoint | None:
    """The latest checkpoint of this job, reported as ``resumed``; None on a first run."""
    if store is None:
        return None
    try:
        found, skipped = store.latest(TRUSTED, at_most=settings.epochs)
    except Exception as exc:  # the location cannot be listed (no bucket, no access): train from the start
        print(f"jobs.train: checkpoints not readable, starting at epoch 1: {exc!r}", file=sys.stderr, flush=True)
        return None
    for reason in skipped:
        print(f"jobs.train: skipping an unreadable checkpoint: {reason}", file=sys.stderr, flush=True)
    if found is not None:
        reporter.resumed(found.epoch, settings.epochs, uri=found.uri, saved_at=found.saved_at)
        _echo(reporter)
    return found


def _open_store(location: str, env: Mapping[str, str], job_id: str) -> CheckpointStore | None:
    """The run's checkpoint store, signed with its key; None when it cannot be opened (no credentials, a
    bad location): the run trains without checkpoints rather than failing."""
    try:
        return CheckpointStore.from_uri(location, job_key=env.get(JOB_KEY_ENV) or None, job_id=job_id)
    except Exception as exc:
        print(f"jobs.train: checkpoints unavailable, training without: {exc!r}", file=sys.stderr, flush=True)
        return None


def _save(store: CheckpointStore | None, checkpoint: Checkpoint) -> Checkpoint | None:
    """Save ``checkpoint``; None without a store or when saving failed (the run goes on: a lost checkpoint
    costs a relaunch more epochs, a failed run all of them)."""
    if store is None:
        return None
    try:
        return store.save(checkpoint)
    except Exception as exc:
        print(f"jobs.train: checkpoint of epoch {checkpoint.epoch} not saved: {exc!r}", file=sys.stderr, flush=True)
        return None


def _train(
    settings: Settings, reporter: JobReporter, started_at: float, store: CheckpointStore | None = None
) -> dict[str, float]:
    """Train step by step, reporting (and checkpointing) after each; the held-out metrics at the end."""
    # lazy: numpy and scikit-learn load when training starts, not with the module
    import numpy as np
    from sklearn.metrics import accuracy_score, f1_score, log_loss, precision_score, recall_score, roc_auc_score
    from sklearn.preprocessing import StandardScaler

    features, labels = simulate(settings.rows, settings.seed)
    n_train = settings.rows - max(1, round(settings.rows * settings.val_fraction))
    scaler = StandardScaler().fit(prepare(features[:n_train]))
    x_train, x_val = scaler.transform(prepare(features[:n_train])), scaler.transform(prepare(features[n_train:]))
    y_train, y_val = labels[:n_train], labels[n_train:]
    for name, part in (("training", y_train), ("validation", y_val)):
        if part.min() == part.max():
            raise RuntimeError(f"the {name} split holds one class only: use more training_config.rows")

    model = _estimator(settings)
    shuffle = np.random.default_rng([settings.seed, 1])
    resumed = _resume(store, settings, reporter)
    history = list(resumed.metrics) if resumed else []
    if resumed is not None:
        model = resumed.model
        for _ in range(resumed.epoch if settings.model == "sgd" else 0):
            shuffle.permutation(n_train)  # the shuffles of the epochs done: the same order as an uninterrupted run
    trees = settings.params.get("max_iter", max(settings.epochs, DEFAULT_HGB_TREES))
    for step in range((resumed.epoch if resumed else 0) + 1, settings.epochs + 1):
        if STOP.is_set():  # terminated: the last epoch's checkpoint is saved; the relaunch resumes there
            raise SystemExit(128 + signal.SIGTERM)
        if settings.fail_at_step == step:
            raise RuntimeError(f"simulated failure at step {step} (training_config.fail_at_step)")
        if settings.model == "sgd":
            order = shuffle.permutation(n_train)
            model.partial_fit(x_train[order], y_train[order], classes=np.array([0, 1]))
            if not np.all(np.isfinite(model.coef_)):
                raise RuntimeError(f"training diverged at step {step}: try a smaller learning_rate")
        else:
            model.max_iter = round(trees * step / settings.epochs)
            model.fit(x_train, y_train)
        if settings.step_sleep_s:
            STOP.wait(settings.step_sleep_s)  # a SIGTERM ends the wait: the epoch is finished and saved at once
        metrics = {
            "loss": log_loss(y_train, model.predict_proba(x_train), labels=[0, 1]),
            "val_loss": log_loss(y_val, model.predict_proba(x_val), labels=[0, 1]),
            "val_accuracy": accuracy_score(y_val, model.predict(x_val)),
        }
        history.append(metrics)
        saved = _save(store, Checkpoint(step, model, history, attempt=reporter.attempt))
        if saved is None:
            reporter.progress(step, settings.epochs, **metrics)
        else:
            reporter.checkpointed(step, settings.epochs, uri=saved.uri, saved_at=saved.saved_at, **metrics)
        _echo(reporter)

    predicted = model.predict(x_val)
    scores = model.predict_proba(x_val)[:, 1]
    return {
        "accuracy": accuracy_score(y_val, predicted),
        "precision": precision_score(y_val, predicted, zero_division=0),
        "recall": recall_score(y_val, predicted, zero_division=0),
        "f1": f1_score(y_val, predicted, zero_division=0),
        "roc_auc": roc_auc_score(y_val, scores),
        "val_positive_rate": float(y_val.mean()),
        "train_rows": float(n_train),
        "val_rows": float(len(y_val)),
        "duration_s": round(time.monotonic() - started_at, 3),
    }


# -- the run ------------------------------------------------------------------------------------


def _echo(reporter: JobReporter) -> None:
    """The report just sent, as one JSON line on stdout (the job's logs show what the fleet got)."""
    report = reporter.last_report
    if report is not None:
        print(report.model_dump_json(), flush=True)


def _fail(reporter: JobReporter, message: str) -> int:
    print(f"jobs.train: {message}", file=sys.stderr, flush=True)
    try:
        reporter.failed(message)
        _echo(reporter)
    except Exception as exc:  # the run fails either way; the backend still sees exit code 1
        print(f"jobs.train: could not report the failure: {exc!r}", file=sys.stderr, flush=True)
    return 1


def run(env: Mapping[str, str], reporter: JobReporter) -> int:
    """One training run with configuration from ``env``, reported through ``reporter``; the exit code."""
    started_at = time.monotonic()
    try:
        settings = settings_from_env(env, reporter.job_id)
    except ConfigError as exc:
        return _fail(reporter, str(exc))
    if settings.ignored:
        print(f"jobs.train: ignoring unknown training_config keys: {', '.join(settings.ignored)}", file=sys.stderr)
    try:
        reporter.started(
            f"{settings.model}: {settings.epochs} epochs on {settings.rows} simulated heartbeats (seed {settings.seed})"
        )
        _echo(reporter)
        location = env.get(checkpoints.ENV, "").strip()
        store = _open_store(location, env, reporter.job_id) if location else None
        metrics = _train(settings, reporter, started_at, store)
        reporter.succeeded(**metrics)
        _echo(reporter)
    except Exception as exc:
        return _fail(reporter, f"{type(exc).__name__}: {exc}")
    return 0


def _terminated(signum: int, frame: FrameType | None) -> None:
    """SIGTERM: the epoch under way is finished and its checkpoint saved, then the run exits 143."""
    print("jobs.train: terminated: finishing this epoch and its checkpoint", file=sys.stderr, flush=True)
    STOP.set()


def main() -> int:
    """``python -m jobs.train``: the reporter from the environment, one run, the exit code."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    signal.signal(signal.SIGTERM, _terminated)  # then unwinds as SystemExit: pending reports are flushed
    try:
        reporter = JobReporter.from_env()
    except ValueError as exc:
        print(f"jobs.train: {exc}", file=sys.stderr)
        return 1
    try:
        code = run(os.environ, reporter)
    except BaseException:  # SIGTERM (as SystemExit), Ctrl-C: the grace period is short, flush what fits
        reporter.close(timeout=TERMINATED_FLUSH_S)
        raise
    reporter.close()
    return code


if __name__ == "__main__":
    sys.exit(main())
