"""Anomaly scoring of heartbeats: an IsolationForest on per-agent baseline features (issue 7).

``AnomalyDetector`` (a ``Detector`` named ``isolation_forest``):

- ``fit`` computes the features (``shared.ml.features``) of every agent's healthy stream, fits one
  ``IsolationForest`` on a sample of them and calibrates each agent from its own healthy rows
  (shared/ml/anomaly_calibration.py): a threshold on its anomaly scores (``-score_samples``) and an
  envelope per feature, shrunk toward its kind's while its history is short. ``predict`` and its
  contamination cut-off are not used: they would flag a fixed share of a healthy fleet.
- An isolation forest cannot rank a value outside the range it was trained on (every split threshold
  lies inside it, and a feature that never varied in training, such as the stuck run, is never split
  on), so a row is also *high* when a feature leaves the agent's healthy envelope. A heartbeat gap is
  reported at once by the same detector.
- Scoring uses ``FlatForest`` (shared/ml/anomaly_forest.py): the fitted trees as flat numpy arrays,
  ``score_samples`` (within ``provenance.RTOL``) for one row in tens of microseconds (sklearn's per-call
  overhead is milliseconds), and vectorised for many rows.
- ``detect`` runs a stream's rows in order: rows before the agent has ``min_history_s`` (a day) of
  history, its first ``WARMUP`` rows and the rows of a rebase are "insufficient data"; ``k``
  consecutive high rows open an episode (rule ``anomaly``, with the 3 features that drove it), ``m``
  consecutive normal rows close it (``Persistence`` and ``Verdict``: shared/ml/anomaly_episodes.py).
  ``observe`` is the same for one heartbeat at a time.
- An agent whose rows fall into two activity regimes (a batch worker's night window, a trainer's evaluations)
  is judged on its own levels in each instead (shared/ml/anomaly_regimes.py; rows: anomaly_rows.py).
- ``to_bytes``/``from_bytes``: an ``.npz`` without pickles (flat trees, calibration, regimes, JSON metadata,
  makers' versions and self-check: ``provenance``), plus the forest as skops bytes when skops is installed,
  loaded trusting only the sklearn tree type. Scoring a loaded model never needs scikit-learn (nor skops).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shared.ml import anomaly_regimes as reg
from shared.ml import anomaly_rows as rows
from shared.ml import features as fe
from shared.ml import provenance, storage
from shared.ml.anomaly_calibration import Calibration, calibrate
from shared.ml.anomaly_episodes import ANOMALOUS, INSUFFICIENT, NORMAL, RULE, Persistence, Status, Verdict
from shared.ml.anomaly_forest import FlatForest
from shared.ml.data import AgentStream, Detection
from shared.ml.features_live import features as live_features
from shared.ml.provenance import Provenance
from shared.ml.simulate import simulate_rows

#: The constructor's parameters a stored model keeps.
_PARAMS = (
    *("k", "m", "clear_z", "n_estimators", "max_samples", "random_state", "quantile", "margin", "envelope_pad"),
    *("shrink_rows", "tail_pad", "settle_rows", "gap_min", "min_history_s", "use_regimes"),
)
#: Format version of ``to_bytes``.
MODEL_FORMAT = 3
#: The only types the skops bytes of a forest may contain beyond skops' own trusted defaults.
TRUSTED_SKOPS_TYPES = frozenset({"sklearn.tree._tree.Tree"})


@dataclass
class _Live:
    """One agent's streaming state."""

    baseline: fe.Baseline
    episode: Persistence
    last_t: float | None = None
    since: float | None = None
    status: Status = INSUFFICIENT


@dataclass
class AnomalyDetector:
    """IsolationForest anomaly scoring with per-agent thresholds and a persistence rule."""

    k: int = 3
    m: int = 5
    clear_z: float = 4.0
    n_estimators: int = 100
    max_samples: int = 256
    random_state: int = 7
    quantile: float = 0.995
    margin: float = 0.1
    envelope_pad: float = 0.25
    #: Healthy rows at which an agent's own bounds weigh as much as its kind's (shrinkage).
    shrink_rows: float = 720.0
    #: Widening of an envelope by its tails (multiples of how far its extremes lie beyond the 1st/99th percentile).
    tail_pad: float = 1.0
    #: Rows of an agent's history left out of calibration (its baseline is still settling).
    settle_rows: int = fe.WARMUP
    gap_min: float = 2.5
    #: History an agent needs before it is scored (one daily cycle): ``insufficient_data`` before.
    min_history_s: float = 86_400.0
    max_fit_rows: int = 200_000
    name: str = "isolation_forest"

    flat: FlatForest | None = field(default=None, repr=False)
    forest: Any = field(default=None, repr=False)
    calibration: Calibration = field(default_factory=Calibration, repr=False)
    regimes: reg.Regimes = field(default_factory=reg.Regimes, repr=False)
    #: Judge agents with two activity regimes on their own levels in each (shared/ml/anomaly_regimes.py).
    use_regimes: bool = True
    gap_threshold: float = 2.5
    version: str = ""
    provenance: Provenance = field(default_factory=Provenance, repr=False)
    _live: dict[str, _Live] = field(default_factory=dict, repr=False)
    _status: dict[str, Status] = field(default_factory=dict, repr=False)

    # ----------------------------------------------------------------------------------- fitting
    def fit(self, streams: Mapping[str, AgentStream]) -> None:
        """Learn the forest, per-agent thresholds and the envelope from healthy streams."""
        # lazy: scikit-learn only to train; importing or serving a model never loads it
        from sklearn.ensemble import IsolationForest

        ids = list(streams)
        per_agent = fe.batch_features_levels([streams[a] for a in ids])
        keep = [valid & (np.arange(valid.shape[0]) >= self.settle_rows) for _, valid, _ in per_agent]
        blocks = [F[k] for (F, _, _), k in zip(per_agent, keep, strict=True)]
        X = np.concatenate(blocks) if blocks else np.empty((0, fe.N_FEATURES))
        if X.shape[0] < self.max_samples:
            raise ValueError(f"need at least {self.max_samples} healthy rows after warm-up, got {X.shape[0]}")
        rng = np.random.default_rng(self.random_state)
        sample = X if X.shape[0] <= self.max_fit_rows else X[rng.choice(X.shape[0], self.max_fit_rows, replace=False)]
        forest = IsolationForest(
            n_estimators=self.n_estimators, max_samples=self.max_samples, random_state=self.random_state
        ).fit(sample)
        self.forest = forest
        self.flat = FlatForest.from_forest(forest)
        scores = -forest.score_samples(X)
        cuts = np.cumsum([b.shape[0] for b in blocks])[:-1]
        self.calibration = calibrate(
            ids,
            [streams[a].kind for a in ids],
            blocks,
            np.split(scores, cuts),
            quantile=self.quantile,
            margin=self.margin,
            pad=self.envelope_pad,
            shrink_rows=self.shrink_rows,
            tail_pad=self.tail_pad,
        )
        self.regimes = reg.fit_regimes(
            ids,
            [reg.absolute_rows(streams[a].X, L)[k] for a, (_, _, L), k in zip(ids, per_agent, keep, strict=True)],
            [float(streams[a].t[-1]) if len(streams[a]) else 0.0 for a in ids],
            pad=self.envelope_pad,
            tail_pad=self.tail_pad,
        )
        self.gap_threshold = max(self.gap_min, float(X[:, fe._I_GAP].max()) * 1.5)
        self.version = f"iforest-{X.shape[0]}rows-{len(ids)}agents"
        self.provenance = provenance.at_training(X, scores, self.check_threshold, "-IsolationForest.score_samples")
        self._live.clear()
        self._status.clear()

    @property
    def check_threshold(self) -> float:
        """The typical agent's own score quantile (the median agent's threshold less the margin): the
        self-check's rows lie on both sides of it."""
        cal = self.calibration
        return (float(np.median(cal.thresholds)) if cal.thresholds.size else cal.fleet.threshold) - self.margin

    @property
    def thresholds(self) -> dict[str, float]:
        """Each calibrated agent's threshold."""
        cal = self.calibration
        return {a: float(cal.thresholds[i]) for a, i in cal.agents.items()}

    def history_needed(self, interval_s: float) -> float:
        """Seconds of heartbeats an agent needs before it is scored: ``min_history_s``, a daily cycle (every
        phase of its day seen once by its calibration; its baseline's warm-up lies inside it). The same for
        every interval; ``interval_s`` is there for callers that would count it in heartbeats."""
        return max(float(self.min_history_s), 0.0)

    def threshold(self, agent_id: str, kind: str = "") -> float:
        """The agent's threshold (its kind's, or the fleet's, for an agent not seen in training)."""
        return self.calibration.bounds(agent_id, kind).threshold

    def _require(self) -> FlatForest:
        if self.flat is None:
            raise RuntimeError("the detector is not fitted")
        return self.flat

    # --------------------------------------------------------------------------------- detection
    def score_rows(self, stream: AgentStream) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(features, valid, anomaly score) of every row of a stream (score NaN during warm-up)."""
        flat = self._require()
        F, valid = fe.batch_features(stream)
        scores = np.full(F.shape[0], np.nan)
        if valid.any():
            scores[valid] = flat.score(F[valid])
        return F, valid, scores

    def detect_rows(
        self, stream: AgentStream, computed: tuple[np.ndarray, ...] | None = None
    ) -> tuple[list[Detection], list[Status]]:
        """Detections and the status of every row, the rows taken in order (``computed``: the stream's
        ``(features, valid)`` or ``(features, valid, levels)`` when already known)."""
        if computed is None:
            computed = fe.batch_features_levels([stream])[0]
        F, valid = computed[0], computed[1]
        scores = np.full(F.shape[0], np.nan)
        if valid.any():
            scores[valid] = self._require().score(F[valid])
        b = self.calibration.bounds(stream.agent_id, stream.kind)
        t = np.asarray(stream.t, dtype=np.float64)
        # scored once the agent has a daily cycle of history after its warm-up
        valid = valid & ((t - t[0]) >= self.history_needed(stream.interval_s)) if t.size else valid
        r = self.regimes.of(stream.agent_id) if self.use_regimes else None
        if r is not None:  # judged on its levels in its regime (re-learned after a rebase later than training)
            A = reg.absolute_rows(
                stream.X, computed[2] if len(computed) > 2 else fe.batch_features_levels([stream])[0][2]
            )
            out = reg.out_rows(self.regimes, r, A, t, stream.versions)
            high = valid & ((scores > b.threshold) | rows.kept(F, b) | out)
            clear = ~out & (F[:, fe._I_STUCK] == 0.0)
            scaled: Any = lambda i: rows.regime_scaled(self.regimes, r, F[i], A[i], b)  # noqa: E731
        else:
            settling = np.zeros(F.shape[0], dtype=bool)
            for v in stream.versions:
                if v > 0:  # a version at the first row is the first one seen, not a deploy (as live)
                    settling[v : v + fe.SETTLE] = True
            level_high = (scores > b.threshold) | rows.out_of_envelope(F, b)
            relational_high = rows.out_of_envelope(F[:, rows.RELATIONAL], rows.relational(b))
            high = valid & np.where(settling, relational_high, level_high)
            clear = rows.clear(F, b, self.clear_z)
            scaled = lambda i: rows.scaled(F[i], b, bool(settling[i]))  # noqa: E731
        gaps = valid & (F[:, fe._I_GAP] > self.gap_threshold)
        episode = Persistence(self.k, self.m)
        found: list[Detection] = []
        status: list[Status] = []
        for i in range(F.shape[0]):
            if not valid[i]:
                status.append(INSUFFICIENT)
                continue
            if gaps[i]:
                found.append(Detection(stream.agent_id, i, i + 1, RULE, ("gap_ratio",)))
            row_high = bool(high[i])
            closed, inside = episode.step(
                i, row_high, bool(clear[i]), scaled(i) if row_high else rows.ZEROS, stream.agent_id
            )
            if closed is not None:
                found.append(closed)
            status.append(ANOMALOUS if inside or gaps[i] else NORMAL)
        last = episode.flush(F.shape[0], stream.agent_id)
        if last is not None:
            found.append(last)
        found.sort(key=lambda d: d.start)
        if status:
            self._status[stream.agent_id] = status[-1]
        return found, status

    def detect(self, stream: AgentStream) -> list[Detection]:
        """Episodes raised over a whole stream (streaming semantics: no row looks ahead)."""
        return self.detect_rows(stream)[0]

    def detect_many(self, streams: Sequence[AgentStream]) -> dict[str, list[Detection]]:
        """``detect`` of several streams, their features computed side by side (much faster for a fleet)."""
        computed = fe.batch_features_levels(streams)
        return {s.agent_id: self.detect_rows(s, c)[0] for s, c in zip(streams, computed, strict=True)}

    def observe(self, agent_id: str, t: float, row: np.ndarray, interval_s: float, kind: str = "") -> Verdict:
        """One heartbeat of an agent, live: the same features, score and persistence rule as ``detect``."""
        self._require()
        live = self._live.get(agent_id)
        if live is None:
            live = self._live[agent_id] = _Live(fe.Baseline.new(interval_s), Persistence(self.k, self.m))
        dt = interval_s if live.last_t is None else t - live.last_t
        live.last_t = t
        live.since = t if live.since is None else live.since
        ready = live.baseline.ready and t - live.since >= self.history_needed(interval_s)
        settling = live.baseline.settling
        f = live_features(row, dt, live.baseline)
        a = reg.absolute(live.baseline.ring[0], live.baseline.level[0])
        verdict = self.judge(agent_id, f, ready, live.baseline.n - 1, live.episode, kind, settling, a)
        live.status = verdict.status
        self._status[agent_id] = verdict.status
        return verdict

    def new_episode_state(self) -> Persistence:
        """The persistence state of an agent not seen yet (callers that keep state themselves)."""
        return Persistence(self.k, self.m)

    def episode_state(self, doc: Mapping[str, Any] | None) -> Persistence:
        """An agent's persistence state from its ``to_doc`` form (a fresh one for None)."""
        return Persistence.from_doc(doc, self.k, self.m) if doc else Persistence(self.k, self.m)

    def judge(
        self,
        agent_id: str,
        f: np.ndarray,
        ready: bool,
        i: int,
        episode: Persistence,
        kind: str = "",
        settling: bool = False,
        absolute: np.ndarray | None = None,
        relearned: reg.Relearned | None = None,
    ) -> Verdict:
        """Score one feature vector ``f`` (row ``i`` of the agent; ``ready``: past warm-up and history;
        ``settling``: its baseline settles after a rebase, so only ``features.RELATIONAL`` is judged) and
        advance the agent's persistence state ``episode``: the part of ``observe`` after the features, for
        callers that keep each agent's state themselves (the heartbeat function keeps it in the agent
        document). ``absolute``: the row's ``anomaly_regimes.absolute`` features, for an agent with two regimes;
        ``relearned``: its regimes' re-learning after a rebase later than its training (None: no such rebase)."""
        flat = self._require()
        if not ready:
            return Verdict(INSUFFICIENT)
        score = flat.score_one(f)
        b = self.calibration.bounds(agent_id, kind)
        r = self.regimes.of(agent_id) if self.use_regimes and absolute is not None else None
        if r is not None and absolute is not None:  # judged on its levels in its regime
            out = reg.judge_row(self.regimes, r, absolute, relearned)
            high = score > b.threshold or out or bool(rows.kept(f, b))
            clear = not out and f[fe._I_STUCK] == 0.0
            scaled = rows.regime_scaled(self.regimes, r, f, absolute, b) if high else rows.ZEROS
        else:
            if settling:
                high = bool(rows.out_of_envelope(f[rows.RELATIONAL], rows.relational(b)))
            else:
                high = score > b.threshold or bool(rows.out_of_envelope(f, b))
            clear = bool(rows.clear(f, b, self.clear_z))
            scaled = rows.scaled(f, b, settling) if high else rows.ZEROS
        gap = bool(f[fe._I_GAP] > self.gap_threshold)
        was_open = episode.opened is not None
        closed, inside = episode.step(i, high, clear, scaled, agent_id)
        opened = (inside and not was_open) or gap
        why = ("gap_ratio",) if gap and not (inside and not was_open) else episode.why if inside else ()
        status = ANOMALOUS if inside or gap else NORMAL
        return Verdict(status, score, high, opened, why, closed)

    def status(self, agent_id: str) -> Status:
        """The agent's status after its last heartbeat seen (``insufficient_data`` if none)."""
        return self._status.get(agent_id, INSUFFICIENT)

    # ------------------------------------------------------------------------------- persistence
    def metadata(self) -> dict[str, Any]:
        """Version, features and thresholds (JSON-able)."""
        return {
            "format": MODEL_FORMAT,
            "version": self.version,
            "features": list(fe.FEATURES),
            "params": {name: getattr(self, name) for name in _PARAMS},
            "calibration": self.calibration.meta(),
            "regimes": self.regimes.meta(),
            "absolute_features": list(reg.ABS_FEATURES),
            "gap_threshold": self.gap_threshold,
            "warmup": fe.WARMUP,
            **self.provenance.meta(),
        }

    def to_bytes(self) -> bytes:
        """The safe format (shared/ml/storage.py): flat trees, envelope and metadata; the forest as skops."""
        flat = self._require()
        arrays = {f"flat_{k}": v for k, v in flat.arrays().items()}
        arrays.update(self.calibration.arrays())
        arrays.update(self.regimes.arrays())
        return provenance.packed(arrays, self.metadata(), self.provenance, self.forest)

    @classmethod
    def from_bytes(cls, data: bytes, load_forest: bool = True) -> AnomalyDetector:
        """Load ``to_bytes`` output; the forest (skops) only with ``load_forest`` and skops installed,
        trusting nothing but ``TRUSTED_SKOPS_TYPES`` beyond skops' defaults."""
        arrays, meta = storage.unpack(data)
        if meta.get("format") != MODEL_FORMAT:
            raise provenance.Incompatible(f"unknown model format {meta.get('format')!r}")
        if tuple(meta["features"]) != fe.FEATURES:
            raise provenance.Incompatible("the model was trained on other features")
        det = cls(**meta["params"])
        det.flat = FlatForest.from_arrays(storage.prefixed(arrays, "flat_"))
        if tuple(meta.get("absolute_features", ())) != reg.ABS_FEATURES:
            raise provenance.Incompatible("the model was trained on other absolute features")
        det.calibration = Calibration.load(arrays, meta["calibration"])
        det.regimes = reg.Regimes.load(arrays, meta["regimes"])
        det.gap_threshold = float(meta["gap_threshold"])
        det.version = str(meta["version"])
        # refused (SelfCheckFailed) if the flat scorer fails the self-check
        det.provenance = provenance.verified(meta, arrays, det.flat.score, det.flat.score_one, f"anomaly {det.version}")
        if load_forest:
            det.forest = storage.sklearn_object(arrays, TRUSTED_SKOPS_TYPES)
        return det


def fit_seconds(rows: int = 1_000_000, detector: AnomalyDetector | None = None) -> float:
    """Seconds ``fit`` takes on about ``rows`` healthy simulated heartbeat rows."""
    streams = simulate_rows(rows)
    started = time.perf_counter()
    (detector or AnomalyDetector()).fit(streams)
    return time.perf_counter() - started


def explain_row(f: np.ndarray, top: int = 3) -> tuple[str, ...]:
    """The ``top`` features that drive a feature vector (see ``features.explain``)."""
    return fe.explain(f, top)


__all__: Sequence[str] = (
    "AnomalyDetector",
    "explain_row",
    "fit_seconds",
)
