"""Task assignment's success model (issue 7): the probability that an agent completes a task.

- **Features** (:data:`FEATURES`, :func:`feature_values`) of an (agent, task) pair, computed when the task
  is assigned from the agent's snapshot (status, last heartbeat's metrics) and its outcome summary
  (``AgentStats``): the smoothed success rates overall, recently and on the task's weakest required
  capability, how much history backs them, the capability overlap, the task's priority, size and
  deadline slack, the agent's load, CPU, memory, error rate, latency and heartbeat age. They are stored
  with the assignment and become a training row when the outcome arrives, so a model learns from what
  was known at the time, never from what happened after.
- **Model** (:class:`TaskModel`): a ``RandomForestClassifier`` (scikit-learn imported inside ``fit``
  only), served as flat numpy trees (``shared.ml.flat.FlatTrees``): no scikit-learn at serving time.
  ``to_bytes``/``from_bytes`` store an ``.npz`` with pickles disabled (the flat trees and JSON metadata:
  format, version, feature names, metrics, makers' versions and self-check: ``provenance``), plus the
  forest as skops bytes when skops is installed (loaded only on request, trusting only the tree type).
- **Heuristic**: the Beta(2,1)-smoothed success rate of the agent (the ``agent_rate`` feature). It is
  used with too little data, and :func:`evaluate` (``model=None``) scores it on the same rows, so a
  retraining job can compare a new model, the one in service and the heuristic on held-out recent
  outcomes (:func:`train_and_evaluate` holds out the most recent ones).
- **Synthetic outcomes** (``synthetic_outcomes``, shared/ml/assign_synthetic.py): agents whose true success
  depends on the capability and on their load, assigned tasks at random, their features computed by the
  production code. ``python -m shared.ml.assign_synthetic`` prints the model against the heuristic on them.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import numpy as np

from shared.domain.assignment_agents import (
    AgentSnapshot,
    AgentStats,
    RecordedOutcome,
    expected_duration_s,
    heartbeat_age_s,
    load_of,
)
from shared.domain.assignment_tasks import PRIORITY_LEVEL, Task
from shared.domain.lifecycle import State
from shared.ml import provenance, storage
from shared.ml.flat import FlatTrees

#: Format version of ``to_bytes``.
MODEL_FORMAT = 1
KIND = "task_assignment"
#: The only types the skops bytes of a forest may contain beyond skops' own trusted defaults.
TRUSTED_SKOPS_TYPES = frozenset({"sklearn.tree._tree.Tree"})
#: A metric the agent did not report.
UNKNOWN = -1.0
#: Deadline slack (in expected durations) is clipped to [-1, NO_DEADLINE]; no deadline is the maximum.
NO_DEADLINE = 10.0
#: Heartbeat age in intervals is capped here (no heartbeat yet counts as the cap).
MAX_AGE_INTERVALS = 20.0
#: Fewer training rows than this and no model is fitted.
MIN_TRAIN_ROWS = 20
_STATE_LEVEL = {State.IDLE: 0.0, State.ACTIVE: 1.0, State.BUSY: 2.0, State.DEGRADED: 3.0}

FEATURES: tuple[str, ...] = (
    "agent_rate",  # Beta(2,1)-smoothed success rate: the heuristic
    "agent_outcomes",  # log1p(outcomes recorded)
    "recent_rate",  # exponential moving average of success
    "cap_rate",  # smoothed success rate on the task's weakest required capability
    "cap_outcomes",  # log1p(outcomes on that capability)
    "n_required",  # capabilities the task requires
    "cap_share",  # required / the agent's capabilities (a specialist's share)
    "priority",  # 0 low .. 3 critical
    "duration_log",  # log1p(estimated duration s)
    "duration_ratio",  # the agent's recorded durations / their estimates
    "deadline_slack",  # (time left - expected duration) / expected duration, clipped
    "load",  # active tasks at the last heartbeat plus tasks assigned since
    "cpu_pct",
    "memory_pct",
    "error_rate",
    "latency_log",  # log1p(p95 latency ms)
    "heartbeat_age",  # intervals since the last heartbeat
    "state",  # 0 idle, 1 active, 2 busy, 3 degraded
)


def _metric(agent: AgentSnapshot, name: str) -> float:
    value = agent.metric(name)
    return UNKNOWN if value is None else value


def feature_values(agent: AgentSnapshot, stats: AgentStats, task: Task, now: datetime) -> dict[str, float]:
    """The features of assigning ``task`` to ``agent`` at ``now`` (every name of :data:`FEATURES`)."""
    cap_rate, cap_n = stats.capability_rate(task.capabilities)
    expected = expected_duration_s(agent, stats, task)
    if task.deadline is None:
        slack = NO_DEADLINE
    else:
        left = (task.deadline - now).total_seconds()
        slack = min(max((left - expected) / max(expected, 1.0), -1.0), NO_DEADLINE)
    age = heartbeat_age_s(agent, now)
    age_intervals = MAX_AGE_INTERVALS if age is None else min(age / max(agent.heartbeat_interval_s, 1.0), 20.0)
    latency = agent.metric("latency_ms_p95")
    return {
        "agent_rate": stats.success_rate,
        "agent_outcomes": math.log1p(stats.outcomes),
        "recent_rate": stats.recent_rate,
        "cap_rate": cap_rate,
        "cap_outcomes": math.log1p(cap_n),
        "n_required": float(len(task.capabilities)),
        "cap_share": len(task.capabilities) / max(len(agent.capabilities), 1),
        "priority": float(PRIORITY_LEVEL[task.priority]),
        "duration_log": math.log1p(task.estimated_duration_s),
        "duration_ratio": stats.duration_ratio,
        "deadline_slack": slack,
        "load": load_of(agent, stats),
        "cpu_pct": _metric(agent, "cpu_pct"),
        "memory_pct": _metric(agent, "memory_pct"),
        "error_rate": _metric(agent, "error_rate"),
        "latency_log": UNKNOWN if latency is None else math.log1p(max(latency, 0.0)),
        "heartbeat_age": age_intervals,
        "state": _STATE_LEVEL.get(agent.status, 1.0),
    }


def matrix(rows: Sequence[Mapping[str, float]], names: Sequence[str] = FEATURES) -> np.ndarray:
    """Rows of features as an ``(n, len(names))`` array in the order of ``names``."""
    out = np.empty((len(rows), len(names)), dtype=np.float64)
    for i, row in enumerate(rows):
        try:
            out[i] = [float(row[name]) for name in names]
        except KeyError as exc:
            raise ValueError(f"a row lacks the feature {exc.args[0]}") from None
    return out


def usable(outcomes: Sequence[RecordedOutcome], names: Sequence[str] = FEATURES) -> list[RecordedOutcome]:
    """The outcomes whose stored features include every one of ``names`` (older rows may not)."""
    wanted = set(names)
    return [o for o in outcomes if wanted <= set(o.features)]


class TaskModel:
    """Random forest on :data:`FEATURES`, predicting the probability that a task succeeds."""

    def __init__(
        self,
        n_estimators: int = 200,
        max_depth: int | None = 10,
        min_samples_leaf: int = 10,
        max_features: float | str = "sqrt",
        random_state: int = 0,
    ) -> None:
        self.n_estimators = n_estimators
        self.max_depth = max_depth
        self.min_samples_leaf = min_samples_leaf
        self.max_features = max_features
        self.random_state = random_state
        self.features: tuple[str, ...] = FEATURES
        self.flat: FlatTrees | None = None
        self.forest: Any = None
        self.version = ""
        self.trained_rows = 0
        self.base_rate = float("nan")
        #: Evaluation on held-out outcomes (set by :func:`train_and_evaluate`), stored in the metadata.
        self.metrics: dict[str, Any] = {}
        self.provenance = provenance.Provenance()

    def params(self) -> dict[str, Any]:
        return {
            "n_estimators": self.n_estimators,
            "max_depth": self.max_depth,
            "min_samples_leaf": self.min_samples_leaf,
            "max_features": self.max_features,
            "random_state": self.random_state,
        }

    def fit(self, outcomes: Sequence[RecordedOutcome]) -> TaskModel:
        """Train on recorded outcomes (rows lacking a feature are left out). Needs ``MIN_TRAIN_ROWS`` rows
        and both successes and failures; raises ``ValueError`` otherwise."""
        # lazy: scikit-learn only to train; importing or serving a model never loads it
        from sklearn.ensemble import RandomForestClassifier

        rows = usable(outcomes, self.features)
        y = np.asarray([int(o.success) for o in rows], dtype=np.int64)
        if len(rows) < MIN_TRAIN_ROWS:
            raise ValueError(f"{len(rows)} usable outcomes; at least {MIN_TRAIN_ROWS} are needed to train")
        if y.min() == y.max():
            raise ValueError("every outcome is a " + ("success" if y[0] else "failure") + "; nothing to learn")
        forest = RandomForestClassifier(**self.params(), n_jobs=1)
        X = matrix([o.features for o in rows], self.features)
        forest.fit(X, y)
        # The self-check: scikit-learn's own scores of a few rows, on both sides of 0.5 (assignment ranks
        # candidates; it has no threshold of its own).
        pool = provenance.balanced(y, self.random_state)
        reference = forest.predict_proba(X[pool])[:, 1]
        self.provenance = provenance.at_training(X[pool], reference, 0.5, "predict_proba[:, 1]")
        self.forest = forest
        self.flat = FlatTrees.from_random_forest(forest)
        self.trained_rows = len(rows)
        self.base_rate = float(y.mean())
        digest = hashlib.sha256()
        for name, array in sorted(self.flat.arrays().items()):
            digest.update(name.encode())
            digest.update(np.ascontiguousarray(array).tobytes())
        self.version = f"rf-{digest.hexdigest()[:12]}"
        return self

    def predict_success(self, rows: np.ndarray | Sequence[Mapping[str, float]]) -> np.ndarray:
        """The probability of success per row: an array in the order of ``self.features``, or feature
        mappings (each must hold every one of ``self.features``; others are ignored)."""
        X = np.asarray(rows, dtype=np.float64) if isinstance(rows, np.ndarray) else matrix(rows, self.features)
        if X.ndim == 1:
            X = X.reshape(1, -1)
        if X.shape[0] == 0:
            return np.empty(0)
        if self.flat is not None:
            return np.clip(self.flat.predict_proba1(X), 0.0, 1.0)
        if self.forest is not None:
            return np.asarray(self.forest.predict_proba(X)[:, 1], dtype=np.float64)
        raise RuntimeError("TaskModel is not fitted")

    # ------------------------------------------------------------------------------- persistence
    def metadata(self) -> dict[str, Any]:
        """Format, version, features, parameters and metrics (JSON-able)."""
        return {
            "format": MODEL_FORMAT,
            "kind": KIND,
            "version": self.version,
            "features": list(self.features),
            "params": self.params(),
            "trained_rows": self.trained_rows,
            "base_rate": None if math.isnan(self.base_rate) else self.base_rate,
            "metrics": self.metrics,
            **self.provenance.meta(),
        }

    def to_bytes(self) -> bytes:
        """An ``.npz`` without pickles; the forest as skops bytes inside when skops is installed."""
        if self.flat is None:
            raise RuntimeError("TaskModel is not fitted")
        arrays = {f"flat_{k}": v for k, v in self.flat.arrays().items()}
        return provenance.packed(arrays, self.metadata(), self.provenance, self.forest)

    @classmethod
    def from_bytes(cls, data: bytes, load_model: bool = False) -> TaskModel:
        """Load ``to_bytes`` output. Scoring needs only the flat trees; the forest (skops) is loaded with
        ``load_model`` and skops installed, trusting nothing but ``TRUSTED_SKOPS_TYPES`` beyond skops'
        defaults. A model trained on features this code no longer computes is refused."""
        arrays, meta = storage.unpack(data)
        if meta.get("format") != MODEL_FORMAT or meta.get("kind") != KIND:
            raise ValueError(f"not a task-assignment model of format {MODEL_FORMAT}")
        features = tuple(str(f) for f in meta["features"])
        unknown = sorted(set(features) - set(FEATURES))
        if unknown:
            raise ValueError(f"the model uses features this code does not compute: {', '.join(unknown)}")
        model = cls(**meta["params"])
        model.features = features
        model.flat = FlatTrees.from_arrays(storage.prefixed(arrays, "flat_"))
        if model.flat.n_features != len(features):
            raise ValueError("the trees and the feature list disagree")
        model.version = str(meta["version"])
        model.trained_rows = int(meta.get("trained_rows") or 0)
        model.base_rate = float("nan") if meta.get("base_rate") is None else float(meta["base_rate"])
        model.metrics = dict(meta.get("metrics") or {})
        model.provenance = provenance.verified(
            meta, arrays, model.predict_success, lambda r: float(model.predict_success(r)[0]), f"{KIND} {model.version}"
        )
        if load_model:
            model.forest = storage.sklearn_object(arrays, TRUSTED_SKOPS_TYPES)
        return model


# --- evaluation ---------------------------------------------------------------------------------------

#: Probabilities are clipped to [EPS, 1 - EPS] for the log loss.
EPS = 1e-6


def _auc(p: np.ndarray, y: np.ndarray) -> float | None:
    """Area under the ROC curve (Mann-Whitney, ties averaged); None with one class only."""
    pos, neg = int(y.sum()), int(y.size - y.sum())
    if pos == 0 or neg == 0:
        return None
    order = np.argsort(p, kind="mergesort")
    ranks = np.empty(p.size)
    sorted_p = p[order]
    i = 0
    while i < p.size:
        j = i
        while j + 1 < p.size and sorted_p[j + 1] == sorted_p[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return float((ranks[y == 1].sum() - pos * (pos + 1) / 2.0) / (pos * neg))


def evaluate(model: TaskModel | None, holdout: Sequence[RecordedOutcome]) -> dict[str, Any]:
    """Comparable metrics of ``model`` (None: the heuristic, the ``agent_rate`` feature) on ``holdout``:
    ``n``, ``brier`` (lower is better), ``log_loss``, ``accuracy`` (at 0.5), ``auc``, ``base_rate`` (share
    of successes), ``mean_p``. Rows lacking a feature the scorer needs are left out (``n`` says how many
    were scored)."""
    names = model.features if model is not None else ("agent_rate",)
    rows = usable(holdout, names)
    y = np.asarray([float(o.success) for o in rows])
    out: dict[str, Any] = {"method": "heuristic" if model is None else "model", "n": len(rows)}
    if model is not None:
        out["version"] = model.version
    if not rows:
        return {
            **out,
            "brier": None,
            "log_loss": None,
            "accuracy": None,
            "auc": None,
            "base_rate": None,
            "mean_p": None,
        }
    if model is None:
        p = np.asarray([float(o.features["agent_rate"]) for o in rows])
    else:
        p = model.predict_success([o.features for o in rows])
    q = np.clip(p, EPS, 1 - EPS)
    return {
        **out,
        "brier": float(np.mean((p - y) ** 2)),
        "log_loss": float(-np.mean(y * np.log(q) + (1 - y) * np.log(1 - q))),
        "accuracy": float(np.mean((p >= 0.5) == (y == 1))),
        "auc": _auc(p, y),
        "base_rate": float(y.mean()),
        "mean_p": float(p.mean()),
    }


def split_by_time(
    outcomes: Sequence[RecordedOutcome], holdout_fraction: float = 0.2
) -> tuple[list[RecordedOutcome], list[RecordedOutcome]]:
    """(train, holdout): the most recent ``holdout_fraction`` of the outcomes are held out (ties by task id)."""
    if not 0 < holdout_fraction < 1:
        raise ValueError("holdout_fraction must be between 0 and 1")
    ordered = sorted(outcomes, key=lambda o: (o.at, o.task_id))
    k = max(1, round(len(ordered) * holdout_fraction)) if ordered else 0
    return ordered[: len(ordered) - k], ordered[len(ordered) - k :]


def train_and_evaluate(
    outcomes: Sequence[RecordedOutcome], holdout_fraction: float = 0.2, **params: Any
) -> tuple[TaskModel, dict[str, Any]]:
    """Train on the older outcomes, score the model and the heuristic on the most recent ones. The
    metrics (also kept in the model's metadata) are ``{"model": ..., "heuristic": ..., "train": n,
    "holdout": n, "holdout_from": iso time}``; a retraining job adds ``evaluate(current, holdout)`` of
    the model in service on the same rows (:func:`split_by_time`) before it promotes the new one."""
    train, holdout = split_by_time(outcomes, holdout_fraction)
    model = TaskModel(**params).fit(train)
    model.metrics = {
        "model": evaluate(model, holdout),
        "heuristic": evaluate(None, holdout),
        "train": len(train),
        "holdout": len(holdout),
        "holdout_from": holdout[0].at.isoformat() if holdout else None,
    }
    return model, model.metrics
