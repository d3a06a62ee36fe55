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
- Scoring uses ``FlatForest``: the fitted trees as flat numpy arrays, ``score_samples`` (within
  ``provenance.RTOL``) for one row in tens of microseconds (sklearn's per-call overhead is milliseconds),
  and vectorised for many rows.
- ``detect`` runs a stream's rows in order: the first ``WARMUP`` rows are "insufficient data"; ``k``
  consecutive high rows open an episode (rule ``anomaly``, with the 3 features that drove it), ``m``
  consecutive normal rows close it. ``observe`` is the same for one heartbeat at a time.
- ``to_bytes``/``from_bytes``: an ``.npz`` without pickles (the flat trees, thresholds, envelope, JSON
  metadata, makers' versions and self-check: ``provenance``), plus the forest as skops bytes when skops is
  installed, loaded trusting only the sklearn tree type. Scoring a loaded model never needs scikit-learn.

scikit-learn and skops are imported inside the methods that need them only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from shared.ml import features as fe
from shared.ml import provenance, storage
from shared.ml.data import AgentStream, Detection
from shared.ml.provenance import Provenance

Status = Literal["insufficient_data", "normal", "anomalous"]
INSUFFICIENT: Status = "insufficient_data"
NORMAL: Status = "normal"
ANOMALOUS: Status = "anomalous"

#: Format version of ``to_bytes``.
MODEL_FORMAT = 1
#: The only types the skops bytes of a forest may contain beyond skops' own trusted defaults.
TRUSTED_SKOPS_TYPES = frozenset({"sklearn.tree._tree.Tree"})
RULE = "anomaly"


def _average_path_length(n: np.ndarray) -> np.ndarray:
    """The average path length of an unsuccessful search in a BST of ``n`` nodes (as sklearn computes it)."""
    n = np.asarray(n, dtype=np.float64)
    out = np.zeros(n.shape)
    big = n > 2
    out[n == 2] = 1.0
    out[big] = 2.0 * (np.log(n[big] - 1.0) + np.euler_gamma) - 2.0 * (n[big] - 1.0) / n[big]
    return out


@dataclass(frozen=True)
class FlatForest:
    """The trees of a fitted ``IsolationForest`` as flat arrays (nodes of all trees concatenated).

    A leaf points to itself on both sides with threshold +inf, so every row walks exactly ``depth``
    steps. ``value`` holds, per node, its depth plus the average path length of its samples minus 1
    (what sklearn adds per tree); the score is ``2 ** -(sum over trees / denominator)``.
    """

    feature: np.ndarray
    threshold: np.ndarray
    left: np.ndarray
    right: np.ndarray
    value: np.ndarray
    roots: np.ndarray
    depth: int
    denominator: float

    @classmethod
    def from_forest(cls, forest: Any) -> FlatForest:
        """Flatten a fitted ``sklearn.ensemble.IsolationForest``."""
        feats, thrs, lefts, rights, values, roots = [], [], [], [], [], []
        offset = 0
        depth = 0
        for tree, used in zip(forest.estimators_, forest.estimators_features_, strict=True):
            t = tree.tree_
            count = int(t.node_count)
            leaf = t.children_left < 0
            own = np.arange(offset, offset + count, dtype=np.int64)
            feats.append(np.where(leaf, 0, np.asarray(used, dtype=np.int64)[np.maximum(t.feature, 0)]))
            thrs.append(np.where(leaf, np.inf, t.threshold.astype(np.float64)))
            lefts.append(np.where(leaf, own, t.children_left.astype(np.int64) + offset))
            rights.append(np.where(leaf, own, t.children_right.astype(np.int64) + offset))
            values.append(t.compute_node_depths().astype(np.float64) + _average_path_length(t.n_node_samples) - 1.0)
            roots.append(offset)
            depth = max(depth, int(t.max_depth))
            offset += count
        denominator = float(len(forest.estimators_) * _average_path_length(np.asarray([forest._max_samples]))[0])
        return cls(
            feature=np.concatenate(feats),
            threshold=np.concatenate(thrs),
            left=np.concatenate(lefts),
            right=np.concatenate(rights),
            value=np.concatenate(values),
            roots=np.asarray(roots, dtype=np.int64),
            depth=depth,
            denominator=denominator,
        )

    def score_one(self, row: np.ndarray) -> float:
        """``-score_samples([row])[0]`` of the forest (higher = more anomalous)."""
        x = np.asarray(row, dtype=np.float64).astype(np.float32).astype(np.float64)
        nodes = self.roots
        feature, threshold, left, right = self.feature, self.threshold, self.left, self.right
        for _ in range(self.depth):
            nodes = np.where(x[feature[nodes]] <= threshold[nodes], left[nodes], right[nodes])
        total = float(np.cumsum(self.value[nodes])[-1])
        return float(np.power(2.0, -(total / self.denominator)))

    def score(self, X: np.ndarray, chunk: int = 4096) -> np.ndarray:
        """``-score_samples(X)`` for many rows (vectorised over trees and rows)."""
        X = np.asarray(X, dtype=np.float64).astype(np.float32).astype(np.float64)
        out = np.empty(X.shape[0])
        for lo in range(0, X.shape[0], chunk):
            xt = X[lo : lo + chunk].T
            cols = np.arange(xt.shape[1])[None, :]
            nodes = np.broadcast_to(self.roots[:, None], (self.roots.size, xt.shape[1]))
            for _ in range(self.depth):
                nodes = np.where(
                    xt[self.feature[nodes], cols] <= self.threshold[nodes], self.left[nodes], self.right[nodes]
                )
            total = np.cumsum(self.value[nodes], axis=0)[-1]
            out[lo : lo + chunk] = np.power(2.0, -(total / self.denominator))
        return out

    def arrays(self) -> dict[str, np.ndarray]:
        """The arrays to persist."""
        return {
            "feature": self.feature,
            "threshold": self.threshold,
            "left": self.left,
            "right": self.right,
            "value": self.value,
            "roots": self.roots,
            "depth_denominator": np.asarray([self.depth, self.denominator], dtype=np.float64),
        }

    @classmethod
    def from_arrays(cls, a: Mapping[str, np.ndarray]) -> FlatForest:
        """The inverse of ``arrays``."""
        depth, denominator = a["depth_denominator"].tolist()
        return cls(
            feature=a["feature"].astype(np.int64),
            threshold=a["threshold"].astype(np.float64),
            left=a["left"].astype(np.int64),
            right=a["right"].astype(np.int64),
            value=a["value"].astype(np.float64),
            roots=a["roots"].astype(np.int64),
            depth=int(depth),
            denominator=float(denominator),
        )


@dataclass
class _Persistence:
    """``k`` consecutive high rows open an episode; ``m`` consecutive clear rows close it (clear: not
    high and every metric back within ``clear_z`` baseline deviations, so a level that stays shifted
    keeps its one episode open instead of flapping)."""

    k: int
    m: int
    high_run: int = 0
    normal_run: int = 0
    opened: int | None = None
    drivers: np.ndarray | None = None  # max |scaled feature| over the rows that opened the episode
    why: tuple[str, ...] = ()

    def step(self, i: int, high: bool, clear: bool, scaled: np.ndarray, agent_id: str) -> tuple[Detection | None, bool]:
        """Advance one row; returns (the episode it closed, if any; whether the row is in an episode)."""
        if self.opened is None:
            if high:
                self.high_run += 1
                self.drivers = (
                    scaled if self.drivers is None or self.high_run == 1 else np.maximum(self.drivers, scaled)
                )
                if self.high_run >= self.k:
                    self.opened = i
                    self.normal_run = 0
                    idx = np.argsort(-self.drivers, kind="stable")[:3]
                    self.why = tuple(fe.FEATURES[int(j)] for j in idx)
            else:
                self.high_run = 0
            return None, self.opened is not None
        if high or not clear:
            self.normal_run = 0
            return None, True
        self.normal_run += 1
        if self.normal_run >= self.m:
            done = Detection(agent_id, self.opened, i - self.m + 1, RULE, self.why)
            self.opened = None
            self.high_run = 0
            self.drivers = None
            return done, False
        return None, True

    def flush(self, n: int, agent_id: str) -> Detection | None:
        """The episode still open at the end of a stream (ending there)."""
        if self.opened is None:
            return None
        return Detection(agent_id, self.opened, n, RULE, self.why)

    def to_doc(self) -> dict[str, Any]:
        """Plain values for a Firestore map (see ``features.Baseline.to_doc``)."""
        return {
            "high_run": self.high_run,
            "normal_run": self.normal_run,
            "opened": self.opened,
            "drivers": None if self.drivers is None else self.drivers.tolist(),
            "why": list(self.why),
        }

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any], k: int, m: int) -> _Persistence:
        drivers = doc.get("drivers")
        return cls(
            k,
            m,
            high_run=int(doc.get("high_run", 0)),
            normal_run=int(doc.get("normal_run", 0)),
            opened=None if doc.get("opened") is None else int(doc["opened"]),
            drivers=None if drivers is None else np.asarray(drivers, dtype=np.float64),
            why=tuple(str(w) for w in doc.get("why", ())),
        )


@dataclass
class Verdict:
    """What ``observe`` says about one heartbeat."""

    status: Status
    score: float | None = None
    high: bool = False
    opened: bool = False  # an episode opened (or a gap was reported) with this heartbeat
    features: tuple[str, ...] = ()
    closed: Detection | None = None


@dataclass
class _Live:
    """One agent's streaming state."""

    baseline: fe.Baseline
    episode: _Persistence
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
        episode = _Persistence(self.k, self.m)
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
            live = self._live[agent_id] = _Live(fe.Baseline.new(interval_s), _Persistence(self.k, self.m))
        dt = interval_s if live.last_t is None else t - live.last_t
        live.last_t = t
        ready = live.baseline.ready
        f = fe.features(row, dt, live.baseline)
        verdict = self.judge(agent_id, f, ready, live.baseline.n - 1, live.episode)
        live.status = verdict.status
        self._status[agent_id] = verdict.status
        return verdict

    def new_episode_state(self) -> _Persistence:
        """The persistence state of an agent not seen yet (callers that keep state themselves)."""
        return _Persistence(self.k, self.m)

    def episode_state(self, doc: Mapping[str, Any] | None) -> _Persistence:
        """An agent's persistence state from its ``to_doc`` form (a fresh one for None)."""
        return _Persistence.from_doc(doc, self.k, self.m) if doc else _Persistence(self.k, self.m)

    def judge(self, agent_id: str, f: np.ndarray, ready: bool, i: int, episode: _Persistence) -> Verdict:
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
        arrays.update(self.provenance.arrays())
        return storage.pack(arrays, self.metadata(), self.forest)

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
        scorers = provenance.scorers(det.flat.score, det.flat.score_one)  # refused if they fail the self-check
        det.provenance = provenance.on_load(meta, arrays, scorers, f"anomaly {det.version}")
        if load_forest:
            det.forest = storage.sklearn_object(arrays, TRUSTED_SKOPS_TYPES)
        return det


#: Minimum widening of the healthy envelope per feature (in the feature's unit).
_MIN_PAD = np.asarray([0.5 if name != "error_excess" else 0.05 for name in fe.FEATURES], dtype=np.float64)
_ZEROS = np.zeros(fe.N_FEATURES)


def fit_seconds(rows: int = 1_000_000, detector: AnomalyDetector | None = None) -> float:
    """Seconds ``fit`` takes on about ``rows`` healthy simulated heartbeat rows."""
    import time

    from shared.ml.simulate import simulate_rows

    streams = simulate_rows(rows)
    started = time.perf_counter()
    (detector or AnomalyDetector()).fit(streams)
    return time.perf_counter() - started


def explain_row(f: np.ndarray, top: int = 3) -> tuple[str, ...]:
    """The ``top`` features that drive a feature vector (see ``features.explain``)."""
    return fe.explain(f, top)


__all__: Sequence[str] = (
    "ANOMALOUS",
    "INSUFFICIENT",
    "NORMAL",
    "AnomalyDetector",
    "FlatForest",
    "Verdict",
    "explain_row",
    "fit_seconds",
)
