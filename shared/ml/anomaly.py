"""Anomaly scoring of heartbeats: an IsolationForest on per-agent baseline features (issue 7).

``AnomalyDetector`` (a ``Detector`` named ``isolation_forest``):

- ``fit`` computes the features (``shared.ml.features``) of every agent's healthy stream, fits one
  ``IsolationForest`` on a sample of them and learns, from the anomaly scores (``-score_samples``) of
  *all* healthy rows, a threshold per agent (a high quantile plus a margin, never under a fleet-wide
  floor). ``predict`` and its contamination cut-off are not used: they would flag a fixed share of a
  healthy fleet.
- An isolation forest cannot rank a value outside the range it was trained on (every split threshold
  lies inside it, and a feature that never varied in training, such as the stuck run, is never split
  on), so a row is also *high* when a feature leaves the healthy envelope learned in ``fit`` (the
  fleet's range of that feature, widened). A heartbeat gap is reported at once by the same detector.
- Scoring uses ``FlatForest`` (shared/ml/anomaly_forest.py): the fitted trees as flat numpy arrays,
  ``score_samples`` (within ``provenance.RTOL``) for one row in tens of microseconds (sklearn's per-call
  overhead is milliseconds), and vectorised for many rows.
- ``detect`` runs a stream's rows in order: the first ``WARMUP`` rows are "insufficient data"; ``k``
  consecutive high rows open an episode (rule ``anomaly``, with the 3 features that drove it), ``m``
  consecutive normal rows close it (``Persistence`` and ``Verdict``: shared/ml/anomaly_episodes.py).
  ``observe`` is the same for one heartbeat at a time.
- ``to_bytes``/``from_bytes``: an ``.npz`` without pickles (the flat trees, thresholds, envelope, JSON
  metadata, makers' versions and self-check: ``provenance``), plus the forest as skops bytes when skops is
  installed, loaded trusting only the sklearn tree type. Scoring a loaded model never needs scikit-learn.

scikit-learn and skops are imported inside the methods that need them only.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shared.ml import features as fe
from shared.ml import provenance, storage
from shared.ml.anomaly_episodes import ANOMALOUS, INSUFFICIENT, NORMAL, RULE, Persistence, Status, Verdict
from shared.ml.anomaly_forest import FlatForest
from shared.ml.data import AgentStream, Detection
from shared.ml.provenance import Provenance
from shared.ml.simulate import simulate_rows

#: Format version of ``to_bytes``.
MODEL_FORMAT = 1
#: The only types the skops bytes of a forest may contain beyond skops' own trusted defaults.
TRUSTED_SKOPS_TYPES = frozenset({"sklearn.tree._tree.Tree"})


@dataclass
class _Live:
    """One agent's streaming state."""

    baseline: fe.Baseline
    episode: Persistence
    last_t: float | None = None
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
    margin: float = 0.04
    floor_quantile: float = 0.99
    envelope_pad: float = 0.25
    gap_min: float = 2.5
    #: History an agent needs before it is scored (one daily cycle): ``insufficient_data`` before.
    min_history_s: float = 86_400.0
    max_fit_rows: int = 200_000
    name: str = "isolation_forest"

    flat: FlatForest | None = field(default=None, repr=False)
    forest: Any = field(default=None, repr=False)
    thresholds: dict[str, float] = field(default_factory=dict, repr=False)
    fleet_threshold: float = 1.0
    env_lo: np.ndarray = field(default_factory=lambda: np.full(fe.N_FEATURES, -np.inf), repr=False)
    env_hi: np.ndarray = field(default_factory=lambda: np.full(fe.N_FEATURES, np.inf), repr=False)
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
        per_agent = fe.batch_features_many([streams[a] for a in ids])
        blocks = [F[valid] for F, valid in per_agent]
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
        self.fleet_threshold = float(np.quantile(scores, self.floor_quantile))
        self.thresholds = {}
        start = 0
        for agent_id, block in zip(ids, blocks, strict=True):
            own = scores[start : start + block.shape[0]]
            start += block.shape[0]
            if own.size:
                self.thresholds[agent_id] = max(
                    self.fleet_threshold, float(np.quantile(own, self.quantile)) + self.margin
                )
        lo, hi = X.min(axis=0), X.max(axis=0)
        pad = self.envelope_pad * (hi - lo) + _MIN_PAD
        self.env_lo, self.env_hi = lo - pad, hi + pad
        self.gap_threshold = max(self.gap_min, float(hi[fe._I_GAP]) * 1.5)
        self.env_lo[fe._I_GAP], self.env_hi[fe._I_GAP] = -np.inf, np.inf  # gaps have their own rule
        self.version = f"iforest-{X.shape[0]}rows-{len(ids)}agents"
        self.provenance = provenance.at_training(X, scores, self.fleet_threshold, "-IsolationForest.score_samples")
        self._live.clear()
        self._status.clear()

    def threshold(self, agent_id: str) -> float:
        """The agent's threshold (the fleet floor for an agent not seen in training)."""
        return self.thresholds.get(agent_id, self.fleet_threshold)

    def _require(self) -> FlatForest:
        if self.flat is None:
            raise RuntimeError("the detector is not fitted")
        return self.flat

    def _out_of_envelope(self, F: np.ndarray) -> np.ndarray:
        return np.asarray((np.greater(F, self.env_hi) | np.less(F, self.env_lo)).any(axis=-1))

    def _clear(self, F: np.ndarray) -> np.ndarray:
        """Rows whose metrics are all back within ``clear_z`` deviations and not stuck."""
        z = F[..., : len(fe.Z_LIKE)]
        return (np.abs(z).max(axis=-1) < self.clear_z) & (F[..., fe._I_STUCK] == 0.0)

    def _scaled(self, f: np.ndarray) -> np.ndarray:
        """|feature| in comparable units, for naming what drove a score."""
        return np.abs(fe._scaled(f))

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
        self, stream: AgentStream, computed: tuple[np.ndarray, np.ndarray] | None = None
    ) -> tuple[list[Detection], list[Status]]:
        """Detections and the status of every row, the rows taken in order (``computed``: the stream's
        ``(features, valid)`` when already known)."""
        if computed is None:
            F, valid, scores = self.score_rows(stream)
        else:
            F, valid = computed
            scores = np.full(F.shape[0], np.nan)
            if valid.any():
                scores[valid] = self._require().score(F[valid])
        thr = self.threshold(stream.agent_id)
        high = valid & ((scores > thr) | self._out_of_envelope(F))
        clear = self._clear(F)
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
                i, row_high, bool(clear[i]), self._scaled(F[i]) if row_high else _ZEROS, stream.agent_id
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
        computed = fe.batch_features_many(streams)
        return {s.agent_id: self.detect_rows(s, c)[0] for s, c in zip(streams, computed, strict=True)}

    def observe(self, agent_id: str, t: float, row: np.ndarray, interval_s: float) -> Verdict:
        """One heartbeat of an agent, live: the same features, score and persistence rule as ``detect``."""
        self._require()
        live = self._live.get(agent_id)
        if live is None:
            live = self._live[agent_id] = _Live(fe.Baseline.new(interval_s), Persistence(self.k, self.m))
        dt = interval_s if live.last_t is None else t - live.last_t
        live.last_t = t
        ready = live.baseline.ready
        f = fe.features(row, dt, live.baseline)
        verdict = self.judge(agent_id, f, ready, live.baseline.n - 1, live.episode)
        live.status = verdict.status
        self._status[agent_id] = verdict.status
        return verdict

    def new_episode_state(self) -> Persistence:
        """The persistence state of an agent not seen yet (callers that keep state themselves)."""
        return Persistence(self.k, self.m)

    def episode_state(self, doc: Mapping[str, Any] | None) -> Persistence:
        """An agent's persistence state from its ``to_doc`` form (a fresh one for None)."""
        return Persistence.from_doc(doc, self.k, self.m) if doc else Persistence(self.k, self.m)

    def judge(self, agent_id: str, f: np.ndarray, ready: bool, i: int, episode: Persistence, kind: str = "") -> Verdict:
        """Score one feature vector ``f`` (row ``i`` of the agent; ``ready``: past warm-up) and advance the
        agent's persistence state ``episode``: the part of ``observe`` after the features, for callers
        that keep each agent's state themselves (the heartbeat function keeps it in the agent document)."""
        flat = self._require()
        if not ready:
            return Verdict(INSUFFICIENT)
        score = flat.score_one(f)
        high = score > self.threshold(agent_id) or bool(self._out_of_envelope(f))
        gap = bool(f[fe._I_GAP] > self.gap_threshold)
        was_open = episode.opened is not None
        clear = bool(self._clear(f))
        closed, inside = episode.step(i, high, clear, self._scaled(f) if high else _ZEROS, agent_id)
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
            "params": {
                "k": self.k,
                "m": self.m,
                "clear_z": self.clear_z,
                "n_estimators": self.n_estimators,
                "max_samples": self.max_samples,
                "random_state": self.random_state,
                "quantile": self.quantile,
                "margin": self.margin,
                "floor_quantile": self.floor_quantile,
                "envelope_pad": self.envelope_pad,
                "gap_min": self.gap_min,
            },
            "thresholds": self.thresholds,
            "fleet_threshold": self.fleet_threshold,
            "gap_threshold": self.gap_threshold,
            "warmup": fe.WARMUP,
            **self.provenance.meta(),
        }

    def to_bytes(self) -> bytes:
        """The safe format (shared/ml/storage.py): flat trees, envelope and metadata; the forest as skops."""
        flat = self._require()
        arrays = {f"flat_{k}": v for k, v in flat.arrays().items()}
        arrays["env_lo"], arrays["env_hi"] = self.env_lo, self.env_hi
        return provenance.packed(arrays, self.metadata(), self.provenance, self.forest)

    @classmethod
    def from_bytes(cls, data: bytes, load_forest: bool = True) -> AnomalyDetector:
        """Load ``to_bytes`` output; the forest (skops) only with ``load_forest`` and skops installed,
        trusting nothing but ``TRUSTED_SKOPS_TYPES`` beyond skops' defaults."""
        arrays, meta = storage.unpack(data)
        if meta.get("format") != MODEL_FORMAT:
            raise ValueError(f"unknown model format {meta.get('format')!r}")
        if tuple(meta["features"]) != fe.FEATURES:
            raise ValueError("the model was trained on other features")
        det = cls(**meta["params"])
        det.flat = FlatForest.from_arrays(storage.prefixed(arrays, "flat_"))
        det.env_lo, det.env_hi = arrays["env_lo"], arrays["env_hi"]
        det.thresholds = {str(a): float(v) for a, v in meta["thresholds"].items()}
        det.fleet_threshold = float(meta["fleet_threshold"])
        det.gap_threshold = float(meta["gap_threshold"])
        det.version = str(meta["version"])
        # refused (SelfCheckFailed) if the flat scorer fails the self-check
        det.provenance = provenance.verified(meta, arrays, det.flat.score, det.flat.score_one, f"anomaly {det.version}")
        if load_forest:
            det.forest = storage.sklearn_object(arrays, TRUSTED_SKOPS_TYPES)
        return det


#: Minimum widening of the healthy envelope per feature (in the feature's unit).
_MIN_PAD = np.asarray([0.5 if name != "error_excess" else 0.05 for name in fe.FEATURES], dtype=np.float64)
_ZEROS = np.zeros(fe.N_FEATURES)


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
