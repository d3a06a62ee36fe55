"""Failure prediction (issue 7, "Failure prediction"): gradient boosting that predicts, from an agent's
recent heartbeats, that it will fail (an error burst or going silent) within the next ``horizon`` rows,
and raises a warning before the failure.

Features per row are ``features.batch_features`` (deviations from the agent's own baseline) plus short
trends over the last ``TREND_WINDOW`` rows (least-squares slopes of the latency, error-rate and memory
deviations and of the error rate, and the mean error excess), all causal. A row is labelled 1 when a
failure starts within the next ``horizon`` rows; rows inside a failure and warm-up rows are left out.

The model is a ``HistGradientBoostingClassifier`` trained on balanced classes (positive rows
repeated). ``fit`` chooses the warning threshold on out-of-fold risks of the training fleet (event-level
F1, preferring thresholds with a warning precision of at least ``TARGET_PRECISION``), then trains the
model on every training agent. scikit-learn is imported inside methods only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from shared.ml.data import METRICS, AgentStream, FaultEvent
from shared.ml.features import FEATURES, batch_features_many

#: Rows over which the trend features are computed.
TREND_WINDOW = 10
#: Consecutive rows at or above the threshold before a warning is raised.
PERSISTENCE = 2
#: Rows of slack after the horizon in which a failure starting still makes a warning correct.
SLACK = 5
#: Preferred minimum precision of warnings when the threshold is chosen.
TARGET_PRECISION = 0.8
#: Folds of agents for the out-of-fold risks the threshold is chosen on.
FOLDS = 2

_Z = {m: FEATURES.index(f"z_{m}") for m in METRICS}
_ZS = {m: FEATURES.index(f"zs_{m}") for m in METRICS}
_ERR_EXCESS = FEATURES.index("error_excess")
_ERR_COL = METRICS.index("error_rate")
TREND_FEATURES: tuple[str, ...] = (
    "slope_z_latency_ms",
    "slope_z_error_rate",
    "slope_z_memory_pct",
    "slope_error_rate",
    "mean_error_excess",
    "mean_zs_latency_ms",
)
ALL_FEATURES: tuple[str, ...] = (*FEATURES, *TREND_FEATURES)


def _slope(y: np.ndarray, w: int = TREND_WINDOW) -> np.ndarray:
    """Least-squares slope of ``y`` over the last ``w`` rows at every row (causal; the first value repeated
    before the start)."""
    if y.shape[0] == 0:
        return y.copy()
    k = np.arange(w, dtype=np.float64)
    k -= k.mean()
    k /= np.sum(k**2)
    padded = np.concatenate([np.full(w - 1, y[0]), y])
    # out[i] = sum_j k[j] * padded[i + j]  (window ending at row i)
    return np.convolve(padded, k[::-1], mode="valid")


def _mean(y: np.ndarray, w: int = TREND_WINDOW) -> np.ndarray:
    if y.shape[0] == 0:
        return y.copy()
    padded = np.concatenate([np.full(w - 1, y[0]), y])
    return np.convolve(padded, np.full(w, 1.0 / w), mode="valid")


def _design(F: np.ndarray, stream: AgentStream) -> np.ndarray:
    """The base features of a stream with the trend features appended."""
    trends = np.column_stack(
        [
            _slope(F[:, _Z["latency_ms"]]),
            _slope(F[:, _Z["error_rate"]]),
            _slope(F[:, _Z["memory_pct"]]),
            _slope(np.asarray(stream.X[:, _ERR_COL], dtype=np.float64)),
            _mean(F[:, _ERR_EXCESS]),
            _mean(F[:, _ZS["latency_ms"]]),
        ]
    )
    return np.hstack([F, trends.reshape(F.shape[0], len(TREND_FEATURES))])


def design_many(streams: Sequence[AgentStream]) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(features (n, len(ALL_FEATURES)), valid (n,))`` of each stream."""
    return [(_design(F, s), valid) for (F, valid), s in zip(batch_features_many(streams), streams, strict=True)]


def labels(n: int, events: Sequence[FaultEvent], horizon: int) -> tuple[np.ndarray, np.ndarray]:
    """Row labels of one agent's stream of ``n`` rows: ``(y, keep)``; ``y[i]`` is 1 when a failure starts
    in rows ``(i, i + horizon]``, and ``keep`` is false for rows inside a failure."""
    y = np.zeros(n, dtype=np.int8)
    keep = np.ones(n, dtype=bool)
    for e in events:
        y[max(0, e.start - horizon) : min(n, e.start)] = 1
    for e in events:
        keep[max(0, e.start) : min(n, e.end)] = False
    y[~keep] = 0
    return y, keep


def warnings_from_risk(risk: np.ndarray, threshold: float, persistence: int = PERSISTENCE) -> list[int]:
    """Rows where a warning is raised: the risk has been at or above ``threshold`` for ``persistence``
    consecutive rows; the next warning needs the risk to fall below the threshold first."""
    out: list[int] = []
    run = 0
    for i, high in enumerate(np.asarray(risk) >= threshold):
        run = run + 1 if high else 0
        if run == persistence:
            out.append(i)
    return out


@dataclass(frozen=True)
class WarningScore:
    """Event-level quality of warnings over a fleet."""

    failures: int
    warned: int  # failures with a warning in [start - horizon - SLACK, start)
    lead_times: tuple[int, ...]  # heartbeats from the first such warning to the failure's start
    warnings: int
    correct: int  # warnings followed by a failure start within horizon + SLACK rows
    healthy_rows: int  # rows neither inside a failure nor in the horizon + SLACK rows before one

    @property
    def share_warned(self) -> float | None:
        return self.warned / self.failures if self.failures else None

    @property
    def precision(self) -> float | None:
        return self.correct / self.warnings if self.warnings else None

    @property
    def false_per_1000(self) -> float | None:
        return 1000.0 * (self.warnings - self.correct) / self.healthy_rows if self.healthy_rows else None

    @property
    def median_lead(self) -> float | None:
        return float(np.median(self.lead_times)) if self.lead_times else None

    @property
    def f1(self) -> float:
        p, r = self.precision or 0.0, self.share_warned or 0.0
        return 2 * p * r / (p + r) if p + r else 0.0


def score_warnings(
    warned_rows: Mapping[str, Sequence[int]],
    lengths: Mapping[str, int],
    events: Sequence[FaultEvent],
    horizon: int,
) -> WarningScore:
    """Score warnings (row indices per agent) against failure events."""
    reach = horizon + SLACK
    by_agent: dict[str, list[FaultEvent]] = {}
    for e in events:
        by_agent.setdefault(e.agent_id, []).append(e)
    failures = warned = n_warn = correct = healthy = 0
    leads: list[int] = []
    for agent_id, n in lengths.items():
        rows = list(warned_rows.get(agent_id, ()))
        evs = by_agent.get(agent_id, [])
        unhealthy = np.zeros(n, dtype=bool)
        for e in evs:
            unhealthy[max(0, e.start - reach) : min(n, e.end)] = True
            failures += 1
            before = [w for w in rows if e.start - reach <= w < e.start]
            if before:
                warned += 1
                leads.append(e.start - min(before))
        healthy += int(n - unhealthy.sum())
        n_warn += len(rows)
        correct += sum(1 for w in rows if any(w < e.start <= w + reach for e in evs))
    return WarningScore(failures, warned, tuple(leads), n_warn, correct, healthy)


class FailurePredictor:
    """Predicts per row the risk that the agent fails within ``horizon`` rows; warns above ``threshold``."""

    def __init__(self, max_iter: int = 200, learning_rate: float = 0.1, random_state: int = 0) -> None:
        self.max_iter = max_iter
        self.learning_rate = learning_rate
        self.random_state = random_state
        self.horizon = 10
        self.threshold = 0.5
        self.model: Any = None
        self.validation: WarningScore | None = None

    def _train(self, designs: Sequence[tuple[np.ndarray, np.ndarray]], ys: Sequence[np.ndarray]) -> Any:
        from sklearn.ensemble import HistGradientBoostingClassifier

        X = np.vstack([d for d, _ in designs])
        y = np.concatenate(list(ys))
        # Balanced classes by repeating the positive rows (the same as integer class weights; sklearn's
        # weighted binning, which class_weight="balanced" triggers, is about 30 times slower).
        pos = np.flatnonzero(y == 1)
        if pos.size:
            repeat = max(1, round((y.size - pos.size) / pos.size)) - 1
            extra = np.tile(pos, repeat)
            X, y = np.vstack([X, X[extra]]), np.concatenate([y, y[extra]])
        model = HistGradientBoostingClassifier(
            max_iter=self.max_iter,
            learning_rate=self.learning_rate,
            early_stopping=False,
            random_state=self.random_state,
        )
        model.fit(X, y)
        return model

    def fit(
        self, streams: Mapping[str, AgentStream], events: Sequence[FaultEvent], horizon: int = 10
    ) -> FailurePredictor:
        """Choose the threshold on out-of-fold risks (the agents split in ``FOLDS`` folds), then train the
        model on every agent (see the module docstring)."""
        self.horizon = horizon
        ids = sorted(streams)
        by_agent: dict[str, list[FaultEvent]] = {}
        for e in events:
            by_agent.setdefault(e.agent_id, []).append(e)
        ordered = [streams[a] for a in ids]
        designs = design_many(ordered)
        rows: list[tuple[np.ndarray, np.ndarray]] = []
        ys: list[np.ndarray] = []
        for s, (D, valid) in zip(ordered, designs, strict=True):
            y, keep = labels(len(s), by_agent.get(s.agent_id, []), horizon)
            mask = keep & valid
            rows.append((D[mask], valid[mask]))
            ys.append(y[mask])

        fold = np.random.default_rng(self.random_state).permutation(len(ids)) % FOLDS
        risks: dict[str, np.ndarray] = {}
        for k in range(FOLDS) if len(ids) >= FOLDS else ():
            inside = np.flatnonzero(fold != k)
            self.model = self._train([rows[i] for i in inside], [ys[i] for i in inside])
            for i in np.flatnonzero(fold == k):
                risks[ids[i]] = self._risk(*designs[i])
        self.model = self._train(rows, ys)
        if not risks:  # too few agents to hold any out: in-sample risks
            risks = {a: self._risk(*d) for a, d in zip(ids, designs, strict=True)}

        lengths = {s.agent_id: len(s) for s in ordered}
        best: tuple[tuple[bool, float], float, WarningScore] | None = None
        for threshold in np.round(np.arange(0.05, 1.0, 0.025), 3):
            warned = {a: warnings_from_risk(r, float(threshold)) for a, r in risks.items()}
            sc = score_warnings(warned, lengths, events, horizon)
            key = ((sc.precision or 0.0) >= TARGET_PRECISION, sc.f1)
            if best is None or key > best[0]:
                best = (key, float(threshold), sc)
        assert best is not None
        self.threshold, self.validation = best[1], best[2]
        return self

    def _risk(self, D: np.ndarray, valid: np.ndarray) -> np.ndarray:
        if self.model is None:
            raise RuntimeError("FailurePredictor is not fitted")
        risk = np.zeros(D.shape[0])
        if valid.any():
            risk[valid] = self.model.predict_proba(D[valid])[:, 1]
        return risk

    def predict_risk(self, stream: AgentStream) -> np.ndarray:
        """The risk per row that a failure starts within ``horizon`` rows (0 during warm-up)."""
        ((D, valid),) = design_many([stream])
        return self._risk(D, valid)

    def predict_risk_many(self, streams: Sequence[AgentStream]) -> list[np.ndarray]:
        """``predict_risk`` of several streams, sharing the feature pass."""
        return [self._risk(D, valid) for D, valid in design_many(streams)]

    def warnings(self, stream: AgentStream, threshold: float | None = None) -> list[int]:
        """Rows where a warning is raised (risk at or above the threshold for ``PERSISTENCE`` rows)."""
        return warnings_from_risk(self.predict_risk(stream), self.threshold if threshold is None else threshold)


def evaluate(
    train: tuple[Mapping[str, AgentStream], Sequence[FaultEvent]],
    test: tuple[Mapping[str, AgentStream], Sequence[FaultEvent]],
    horizon: int = 10,
    predictor: FailurePredictor | None = None,
) -> tuple[FailurePredictor, WarningScore]:
    """Fit on the ``train`` fleet, score the warnings on the ``test`` fleet."""
    model = (predictor or FailurePredictor()).fit(train[0], train[1], horizon=horizon)
    streams = list(test[0].values())
    warned = {
        s.agent_id: warnings_from_risk(r, model.threshold)
        for s, r in zip(streams, model.predict_risk_many(streams), strict=True)
    }
    return model, score_warnings(warned, {s.agent_id: len(s) for s in streams}, test[1], horizon)
