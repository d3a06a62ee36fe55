"""Failure prediction (issue 7, "Failure prediction"): gradient boosting that predicts, from an agent's
recent heartbeats, that it will fail (an error burst or going silent) within the next ``horizon`` rows,
and raises a warning before the failure.

Features per row are ``features.batch_features`` (deviations from the agent's own baseline) plus short
trends over the last ``TREND_WINDOW`` rows (least-squares slopes of the latency, error-rate and memory
deviations and of the error rate, and the mean error excess), all causal. A row is labelled 1 when a
failure starts within the next ``horizon`` rows; rows inside a failure and warm-up rows are left out
(the design rows and labels: shared/ml/failure_features.py; warnings and their scoring:
shared/ml/failure_warnings.py).

The model is a ``HistGradientBoostingClassifier`` trained on balanced classes (positive rows
repeated). ``fit`` chooses the warning threshold on out-of-fold risks of the training fleet (event-level
F1, preferring thresholds with a warning precision of at least ``TARGET_PRECISION``), then trains the
model on every training agent.

Risks are computed with ``flat.FlatTrees`` (the boosted trees as numpy arrays, ``predict_proba`` within
``provenance.RTOL``), so a model loaded from ``to_bytes`` (an ``.npz`` without pickles, with its makers'
versions and self-check; the sklearn model as skops bytes when skops is installed) predicts without
scikit-learn. ``observe`` is the live path: one heartbeat of one agent at a time, its state
(``FailureState``, the trend window and the warning runs) kept by the caller as a JSON-able document between
heartbeats, giving the same risks and warnings as the batch path. scikit-learn and skops are imported inside
methods only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shared.ml import provenance, storage
from shared.ml.data import METRICS, AgentStream, FaultEvent
from shared.ml.failure_features import (
    ALL_FEATURES,
    ERR_COL,
    TREND_INPUTS,
    TREND_WINDOW,
    design_many,
    explain,
    labels,
    trend_inputs,
    window_trends,
)
from shared.ml.failure_warnings import PERSISTENCE, WarningScore, score_warnings, warnings_from_risk
from shared.ml.features import FEATURES
from shared.ml.flat import FlatTrees

#: Preferred minimum precision of warnings when the threshold is chosen.
TARGET_PRECISION = 0.8
#: Folds of agents for the out-of-fold risks the threshold is chosen on.
FOLDS = 2

#: Name and version of the ``to_bytes`` format.
MODEL_FORMAT = "failure_predictor"
MODEL_FORMAT_VERSION = 1
#: The only types the skops bytes of the model may contain beyond skops' own trusted defaults.
TRUSTED_SKOPS_TYPES = frozenset({"sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor"})


@dataclass
class FailureState:
    """One agent's state for ``FailurePredictor.observe``, kept by the caller between heartbeats.

    ``window``: the ``TREND_INPUTS`` of the last ``TREND_WINDOW`` rows (oldest first), filled with the
    first row's values on the first row, as ``_slope``/``_mean`` pad a stream; ``high_run``: consecutive
    rows with the risk at or above the threshold (the persistence rule of ``warnings_from_risk``);
    ``low_run``: consecutive rows below it while a warning is ``open``.
    """

    rows: int = 0
    window: np.ndarray = field(default_factory=lambda: np.zeros((TREND_WINDOW, len(TREND_INPUTS))))
    high_run: int = 0
    low_run: int = 0
    open: bool = False

    def push(self, inputs: np.ndarray) -> None:
        """Add one row's trend inputs to the window."""
        if self.rows == 0:
            self.window = np.tile(inputs, (TREND_WINDOW, 1))
        else:  # shifted in place: no new window per heartbeat
            window = self.window
            window[:-1] = window[1:]
            window[-1] = inputs
        self.rows += 1

    def to_doc(self) -> dict[str, Any]:
        """A JSON-able (and Firestore-able: a map of flat lists, no nested arrays) document."""
        return {
            "rows": int(self.rows),
            "window": dict(zip(TREND_INPUTS, self.window.T.tolist(), strict=True)),
            "high_run": int(self.high_run),
            "low_run": int(self.low_run),
            "open": bool(self.open),
        }

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> FailureState:
        """The inverse of ``to_doc``; a window of another length or other inputs is rejected."""
        window = doc["window"]
        if set(window) != set(TREND_INPUTS) or any(len(window[name]) != TREND_WINDOW for name in TREND_INPUTS):
            raise ValueError("the failure state was kept for other trend features")
        return cls(
            rows=int(doc["rows"]),
            window=np.asarray([window[name] for name in TREND_INPUTS], dtype=np.float64).T.copy(),
            high_run=int(doc["high_run"]),
            low_run=int(doc["low_run"]),
            open=bool(doc["open"]),
        )


@dataclass(frozen=True)
class FailureVerdict:
    """What ``observe`` says about one heartbeat.

    ``warn`` is true exactly on the rows where ``warnings_from_risk`` raises a warning (so a warning that
    re-arms after a single row below the threshold warns again while still ``open``); ``cleared`` on the
    row that closes an open warning: the ``PERSISTENCE``-th consecutive row below the threshold.
    ``features``: what drove a high risk (``explain``), empty on rows below the threshold.
    """

    risk: float
    high: bool = False
    warn: bool = False
    cleared: bool = False
    open: bool = False
    features: tuple[str, ...] = ()


class FailurePredictor:
    """Predicts per row the risk that the agent fails within ``horizon`` rows; warns above ``threshold``."""

    def __init__(
        self, max_iter: int = 120, learning_rate: float = 0.15, random_state: int = 0, max_train_rows: int = 200_000
    ) -> None:
        self.max_iter = max_iter
        #: More training rows than this and healthy rows are sampled (all failure rows kept).
        self.max_train_rows = max_train_rows
        self.learning_rate = learning_rate
        self.random_state = random_state
        self.horizon = 10
        self.threshold = 0.5
        self.model: Any = None
        self.flat: FlatTrees | None = None
        self.validation: WarningScore | None = None
        self.version = ""
        self.provenance = provenance.Provenance()

    def _use(self, model: Any) -> None:
        """Make ``model`` the one that predicts (with its flat trees)."""
        self.model = model
        self.flat = FlatTrees.from_hist_gradient_boosting(model)

    def _train(self, designs: Sequence[tuple[np.ndarray, np.ndarray]], ys: Sequence[np.ndarray]) -> Any:
        # lazy: scikit-learn only to train; importing or serving a model never loads it
        from sklearn.ensemble import HistGradientBoostingClassifier

        X = np.vstack([d for d, _ in designs])
        y = np.concatenate(list(ys))
        if y.size > self.max_train_rows:
            # A large fleet: every failure row is kept, healthy rows are sampled (they are alike; the
            # threshold is chosen afterwards on out-of-fold risks, so the sampling is accounted for).
            neg = np.flatnonzero(y == 0)
            keep_neg = max(self.max_train_rows - int(y.size - neg.size), 1)
            if keep_neg < neg.size:
                rng = np.random.default_rng(self.random_state)
                chosen = np.sort(np.concatenate([np.flatnonzero(y == 1), rng.choice(neg, keep_neg, replace=False)]))
                X, y = X[chosen], y[chosen]
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
            if np.unique(np.concatenate([ys[i] for i in inside])).size < 2:
                # The other folds' agents never failed (or only failed): no model to hold this fold out with.
                continue
            self._use(self._train([rows[i] for i in inside], [ys[i] for i in inside]))
            for i in np.flatnonzero(fold == k):
                risks[ids[i]] = self.risk_of(*designs[i])
        self._use(self._train(rows, ys))
        self.version = f"hgb-{sum(y.size for y in ys)}rows-{len(ids)}agents"
        # Agents no fold could hold out (too few agents, or a fold without both classes): in-sample risks.
        for a, d in zip(ids, designs, strict=True):
            if a not in risks:
                risks[a] = self.risk_of(*d)

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
        X = provenance.take([d for d, _ in rows], provenance.balanced(np.concatenate(ys), self.random_state))
        reference = self.model.predict_proba(X)[:, 1]  # scikit-learn's own scores, for the self-check
        self.provenance = provenance.at_training(X, reference, self.threshold, "predict_proba[:, 1]")
        return self

    def _proba(self, D: np.ndarray) -> np.ndarray:
        """The probability of a failure for design rows: the flat trees when present (always after ``fit``
        or ``from_bytes``; no scikit-learn needed), the sklearn model otherwise. Both agree within
        ``provenance.RTOL``."""
        if self.model is not None and D.shape[0] > 256:
            # A batch while the scikit-learn model is at hand (fit, evaluation): sklearn is faster there.
            return np.asarray(self.model.predict_proba(D)[:, 1], dtype=np.float64)
        if self.flat is not None:
            return self.flat.predict_proba1(D)
        if self.model is None:
            raise RuntimeError("FailurePredictor is not fitted")
        return np.asarray(self.model.predict_proba(D)[:, 1], dtype=np.float64)

    def risk_of(self, D: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """The risk per design row of ``D`` (``design_many``'s rows; 0 where not ``valid``)."""
        risk = np.zeros(D.shape[0])
        if self.flat is None and self.model is None:
            raise RuntimeError("FailurePredictor is not fitted")
        if valid.any():
            risk[valid] = self._proba(D[valid])
        return risk

    def predict_risk(self, stream: AgentStream) -> np.ndarray:
        """The risk per row that a failure starts within ``horizon`` rows (0 during warm-up)."""
        ((D, valid),) = design_many([stream])
        return self.risk_of(D, valid)

    def predict_risk_many(self, streams: Sequence[AgentStream]) -> list[np.ndarray]:
        """``predict_risk`` of several streams, sharing the feature pass."""
        return [self.risk_of(D, valid) for D, valid in design_many(streams)]

    def warnings(self, stream: AgentStream, threshold: float | None = None) -> list[int]:
        """Rows where a warning is raised (risk at or above the threshold for ``PERSISTENCE`` rows)."""
        return warnings_from_risk(self.predict_risk(stream), self.threshold if threshold is None else threshold)

    # ------------------------------------------------------------------------------------ live path
    def observe(self, state: FailureState, f: np.ndarray, row: np.ndarray, valid: bool) -> FailureVerdict:
        """One heartbeat of one agent, live (updates ``state``): the same risk and warnings as
        ``predict_risk`` + ``warnings_from_risk`` over the agent's whole stream.

        ``f`` is the heartbeat's ``features.features`` vector and ``row`` its raw metrics (``METRICS``
        order); ``valid`` whether the features are past warm-up (the risk is 0 before). Every heartbeat must
        be observed, warm-up included: the trend window spans it."""
        f = np.asarray(f, dtype=np.float64)
        row = np.asarray(row, dtype=np.float64)
        if f.shape != (len(FEATURES),) or row.shape != (len(METRICS),):
            raise ValueError(f"expected {len(FEATURES)} features and {len(METRICS)} metrics")
        state.push(trend_inputs(f, row[ERR_COL]))
        risk = 0.0
        d: np.ndarray | None = None
        if valid:
            d = np.concatenate([f, window_trends(state.window)])
            risk = float(self._proba(d[None, :])[0])
        elif self.flat is None and self.model is None:
            raise RuntimeError("FailurePredictor is not fitted")
        high = risk >= self.threshold
        state.high_run = state.high_run + 1 if high else 0
        warn = state.high_run == PERSISTENCE
        cleared = False
        if warn:
            state.open, state.low_run = True, 0
        elif state.open:
            state.low_run = 0 if high else state.low_run + 1
            if state.low_run >= PERSISTENCE:
                state.open, state.low_run, cleared = False, 0, True
        why = explain(d) if high and d is not None else ()
        return FailureVerdict(risk, high, warn, cleared, state.open, why)

    # ---------------------------------------------------------------------------------- persistence
    def metadata(self) -> dict[str, Any]:
        """Format, version, features, horizon, threshold, parameters and validation score (JSON-able)."""
        v = self.validation
        return {
            "format": MODEL_FORMAT,
            "format_version": MODEL_FORMAT_VERSION,
            "version": self.version,
            "features": list(ALL_FEATURES),
            "trend_window": TREND_WINDOW,
            "persistence": PERSISTENCE,
            "horizon": int(self.horizon),
            "threshold": float(self.threshold),
            **self.provenance.meta(),
            "params": {
                "max_iter": int(self.max_iter),
                "learning_rate": float(self.learning_rate),
                "random_state": int(self.random_state),
                "max_train_rows": int(self.max_train_rows),
            },
            "validation": None
            if v is None
            else {
                "failures": int(v.failures),
                "warned": int(v.warned),
                "lead_times": [int(x) for x in v.lead_times],
                "warnings": int(v.warnings),
                "correct": int(v.correct),
                "healthy_rows": int(v.healthy_rows),
                "share_warned": v.share_warned,
                "precision": v.precision,
                "false_per_1000": v.false_per_1000,
                "median_lead": v.median_lead,
                "f1": float(v.f1),
            },
        }

    def to_bytes(self) -> bytes:
        """An ``.npz`` without pickles (the flat trees and JSON metadata), plus the sklearn model as skops
        bytes when skops is installed."""
        if self.flat is None:
            raise RuntimeError("FailurePredictor is not fitted")
        arrays = {f"flat_{k}": v for k, v in self.flat.arrays().items()}
        return provenance.packed(arrays, self.metadata(), self.provenance, self.model)

    @classmethod
    def from_bytes(cls, data: bytes, load_model: bool = False) -> FailurePredictor:
        """Load ``to_bytes`` output. Predicting needs only the flat trees; the sklearn model is loaded only
        with ``load_model`` and skops installed, trusting nothing but ``TRUSTED_SKOPS_TYPES`` beyond skops'
        defaults."""
        arrays, meta = storage.unpack(data)
        if meta.get("format") != MODEL_FORMAT or meta.get("format_version") != MODEL_FORMAT_VERSION:
            raise provenance.Incompatible(f"unknown model format {meta.get('format')!r} {meta.get('format_version')!r}")
        if tuple(meta["features"]) != ALL_FEATURES or meta.get("trend_window") != TREND_WINDOW:
            raise provenance.Incompatible("the model was trained on other features")
        pred = cls(**meta["params"])
        pred.flat = flat = FlatTrees.from_arrays(storage.prefixed(arrays, "flat_"))
        if pred.flat.n_features != len(ALL_FEATURES):
            raise ValueError("the model's trees do not match its features")
        pred.horizon = int(meta["horizon"])
        pred.threshold = float(meta["threshold"])
        pred.version = str(meta["version"])
        pred.provenance = provenance.verified(
            meta, arrays, flat.predict_proba1, lambda r: float(flat.predict_proba1(r)[0]), f"failure {pred.version}"
        )
        v = meta.get("validation")
        if v is not None:
            pred.validation = WarningScore(
                int(v["failures"]),
                int(v["warned"]),
                tuple(int(x) for x in v["lead_times"]),
                int(v["warnings"]),
                int(v["correct"]),
                int(v["healthy_rows"]),
            )
        if load_model:
            pred.model = storage.sklearn_object(arrays, TRUSTED_SKOPS_TYPES)
        return pred


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
