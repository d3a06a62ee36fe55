"""Retraining: new models from the fleet's recorded heartbeats, compared with the models in service on
held-out recent data, promoted only when at least as good. No I/O here (jobs/retrain.py reads the history
and writes the registry); scikit-learn is imported by the models' ``fit`` only.

- **History to streams.** Each agent's samples (history chunks and the unflushed ring, as stored by the
  heartbeat function) become an ``AgentStream``: times are the server's receive times, columns are the
  heartbeat metrics mapped as the live path maps them (``live.row_of``); each carries the agent's kind
  (its ``agent_type``) and the rows where it registered a new version (``versions``), when the history
  records them. Samples that report fewer than ``live.MIN_METRICS`` metrics are left out.
- **A day of history.** Agents with less than ``MIN_HISTORY_S`` of history (one daily cycle, the anomaly
  detector's ``min_history_s``) are left out of the fit: their normal phases would look anomalous. They
  are calibrated by their kind when they are scored (after a day). The job's result says how many.
- **Held-out data.** Every stream is cut to the same length ``n`` (its most recent rows); the first
  ``TRAIN_SHARE`` of them train, the rest is held out.
- **Anomaly model.** Fitted on the training rows. Recorded history has no labels, so both models, new
  and current, are scored on the held-out rows with labelled faults injected into them
  (``simulate.inject_faults``: spikes, drift, stuck values, gaps, error bursts, runaway cost) and on the
  same rows as they are (false alarms). Compared by event-level F1.
- **Failure model.** Failures are read off the history itself (``derive_failures``: a silence of more than
  ``GAP_FAILURE`` intervals, or an error rate of at least ``BURST_ERROR_RATE`` for ``BURST_ROWS`` rows).
  Trained on the failures of the training rows, compared on those of the held-out rows by the F1 of its
  warnings. With fewer than ``MIN_FAILURES`` failures to learn from, no model is trained (said so).
- **Decision.** The new version is promoted when its score is at least the current one's on the same
  held-out data (or when nothing is in service); either way it is recorded with both evaluations. Its bytes
  are loaded back as serving loads them: one whose scorer fails its stored self-check
  (shared/ml/provenance.py) is recorded, never promoted.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import numpy as np

from shared.ml import assign, live, serving
from shared.ml import features as fe
from shared.ml.anomaly import AnomalyDetector
from shared.ml.data import AgentStream, FaultEvent, Fleet
from shared.ml.evaluate import score
from shared.ml.failure import FailurePredictor
from shared.ml.failure_features import design_many
from shared.ml.failure_warnings import score_warnings, warnings_from_risk
from shared.ml.provenance import SelfCheckFailed
from shared.ml.simulate import inject_faults

#: Share of each agent's rows used to train; the rest is held out for the comparison.
TRAIN_SHARE = 0.7
#: Agents with less history than this (seconds: one daily cycle) are left out of the fit.
MIN_HISTORY_S = AnomalyDetector.min_history_s
#: A stream needs at least this many rows to be a stream at all.
MIN_STREAM_ROWS = 2
#: The streams are cut to this quantile of their lengths; the shorter ones (the youngest agents) are left
#: out, so one new agent never shortens everyone's window.
LENGTH_QUANTILE = 0.25
#: A stream longer than this is cut to its most recent rows.
MAX_AGENT_ROWS = 5000
#: Failures read off the history: a silence of more than this many intervals ...
GAP_FAILURE = 4.0
#: ... or an error rate at least this high for this many heartbeats in a row.
BURST_ERROR_RATE = 0.25
BURST_ROWS = 3
#: Fewer failures than this in the training rows and no failure model is trained.
MIN_FAILURES = 5
#: The comparison runs on at most this many agents (a fixed sample: the same for both models), so a large
#: fleet's retraining stays within minutes.
EVAL_MAX_AGENTS = 120
#: Fault injection of the anomaly comparison.
EVAL_SEED = 17
EVAL_FAULT_SHARE = 0.6


def _moment(at: Any) -> float:
    moment = at if isinstance(at, datetime) else datetime.fromisoformat(str(at))
    return moment.astimezone(UTC).timestamp()


def streams_from_samples(agents: Mapping[str, tuple[Any, ...]]) -> dict[str, AgentStream]:
    """``{agent_id: (heartbeat interval, samples[, kind[, version times]])}`` (samples as the heartbeat
    function stores them: ``seq``, ``at``, ``metrics``; any order, duplicates allowed; version times: when
    each of its versions was first registered, as ``shared.store.agents.fleet_history`` reads them) as
    streams in time order. A version first registered after the stream's first row marks the first row
    received at or after it (``AgentStream.versions``)."""
    out: dict[str, AgentStream] = {}
    for agent_id, entry in agents.items():
        interval, samples = entry[0], entry[1]
        kind = str(entry[2] or "") if len(entry) > 2 else ""
        version_times = entry[3] if len(entry) > 3 else ()
        by_seq = {int(s["seq"]): s for s in samples}
        rows: list[np.ndarray] = []
        times: list[float] = []
        for seq in sorted(by_seq):
            sample = by_seq[seq]
            row, present = live.row_of(sample.get("metrics") or {})
            if present < live.MIN_METRICS:
                continue
            times.append(_moment(sample["at"]))
            rows.append(row)
        if len(rows) < MIN_STREAM_ROWS:
            continue
        t = np.asarray(times, dtype=np.float64)
        keep = np.concatenate([[True], np.diff(t) > 0])  # receive times must increase
        t = t[keep]
        marks = np.searchsorted(t, sorted(_moment(v) for v in version_times))
        versions = tuple(sorted({int(i) for i in marks if 0 < i < len(t)}))
        out[agent_id] = AgentStream(agent_id, float(interval), t - t[0], np.vstack(rows)[keep], kind, versions)
    return out


def history_s(stream: AgentStream) -> float:
    """How much history a stream covers, in seconds."""
    return float(stream.t[-1] - stream.t[0]) if len(stream) else 0.0


def young(streams: Mapping[str, AgentStream]) -> list[str]:
    """The agents with less than a day (``MIN_HISTORY_S``) of history: left out of the fit."""
    return sorted(a for a, s in streams.items() if history_s(s) < MIN_HISTORY_S)


def derive_failures(stream: AgentStream) -> list[FaultEvent]:
    """Failures in a recorded stream: where an agent went silent, or where an error burst began."""
    events: list[FaultEvent] = []
    dt = np.diff(stream.t, prepend=stream.t[0] if len(stream) else 0.0)
    for gap in np.flatnonzero(dt > GAP_FAILURE * stream.interval_s):
        events.append(FaultEvent(stream.agent_id, "gap", int(gap), int(gap) + 1))
    high = stream.X[:, fe.METRICS.index("error_rate")] >= BURST_ERROR_RATE
    i, n = 0, len(stream)
    while i < n:
        if high[i]:
            j = i
            while j < n and high[j]:
                j += 1
            if j - i >= BURST_ROWS:
                events.append(FaultEvent(stream.agent_id, "error_burst", i, j))
            i = j
        else:
            i += 1
    return sorted(events, key=lambda e: e.start)


@dataclass(frozen=True)
class Split:
    """The streams cut to one length ``n``: rows ``[0, train_rows)`` train, the rest is held out."""

    streams: dict[str, AgentStream]
    train_rows: int

    @property
    def rows(self) -> int:
        return sum(len(s) for s in self.streams.values())

    def train(self) -> dict[str, AgentStream]:
        return {a: s.head(self.train_rows) for a, s in self.streams.items()}

    def sample(self, most: int = EVAL_MAX_AGENTS) -> Split:
        """At most ``most`` of the agents, evenly spaced in id order (deterministic)."""
        if len(self.streams) <= most:
            return self
        ids = sorted(self.streams)
        picked = [ids[round(i * (len(ids) - 1) / (most - 1))] for i in range(most)]
        return Split({a: self.streams[a] for a in picked}, self.train_rows)


def split(streams: Mapping[str, AgentStream], max_rows: int = MAX_AGENT_ROWS) -> Split | None:
    """The most recent ``n`` rows of the streams with a day of history that are at least ``n`` long (``n``:
    the ``LENGTH_QUANTILE`` of their lengths, capped); None without any. Younger agents are left out
    (``young``)."""
    grown = {a: s for a, s in streams.items() if history_s(s) >= MIN_HISTORY_S}
    lengths = sorted(len(s) for s in grown.values())
    if not lengths:
        return None
    n = min(lengths[int(LENGTH_QUANTILE * (len(lengths) - 1))], max_rows)
    cut = {a: s.tail(len(s) - n) for a, s in grown.items() if len(s) >= n}
    cut = {a: replace(s, t=s.t - s.t[0]) for a, s in cut.items()}
    return Split(cut, int(n * TRAIN_SHARE))


@dataclass
class Candidate:
    """One kind's outcome of a retraining run."""

    kind: str
    model: Any = None
    version: str | None = None
    data: bytes = b""
    sha256: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    current_version: str | None = None
    current_metrics: dict[str, Any] | None = None
    promote: bool = False
    reason: str = ""
    train_seconds: float = 0.0
    trained_rows: int = 0
    agents: int = 0

    def record(self) -> dict[str, Any]:
        """The registry's record of this version (JSON-able)."""
        return {
            "format": "npz",
            "sha256": self.sha256,
            "size_bytes": len(self.data),
            "metrics": self.metrics,
            "compared_with": self.current_version,
            "current_metrics": self.current_metrics,
            "decision": "promote" if self.promote else "keep_current",
            "reason": self.reason,
            "train_seconds": round(self.train_seconds, 2),
            "trained_rows": self.trained_rows,
            "agents": self.agents,
        }


def version_name(kind: str, data: bytes, at: datetime) -> str:
    """``<kind>-<UTC time>-<content hash>``: sorts by time, and names its bytes."""
    return f"{kind}-{at.astimezone(UTC):%Y%m%dT%H%M%S}-{hashlib.sha256(data).hexdigest()[:10]}"


def _decide(cand: Candidate, key: str, *, lower_is_better: bool = False, serving: str = "the current") -> None:
    measured = cand.metrics.get(key)
    if measured is None:
        cand.promote, cand.reason = False, f"the new version has no {key} on the held-out data: not comparable"
        return
    new = float(measured)
    if cand.current_metrics is None:
        cand.promote, cand.reason = True, f"no model in service; {key} {new:.3f}"
        return
    if cand.current_metrics.get(key) is None:
        cand.promote, cand.reason = True, f"{key} {new:.3f}; {serving} has none on the held-out data"
        return
    old = float(cand.current_metrics[key])
    cand.promote = new <= old if lower_is_better else new >= old
    verb = "at least as good as" if cand.promote else "worse than"
    cand.reason = f"{key} {new:.3f} {verb} {serving} {old:.3f} on the same held-out data"


def _anomaly_metrics(det: Any, fleet: Fleet, clean: Fleet, features: dict[str, list[Any]]) -> dict[str, Any]:
    """``det`` scored on the injected and the clean held-out fleets; ``features`` holds each fleet's
    ``batch_features_many`` (computed once, shared by the two models compared)."""
    found = {}
    if getattr(det, "min_history_s", 0.0):
        # The held-out rows follow each agent's own history, which the serving gate on history (a day before an
        # agent is scored) is about; what is measured here is detection on those rows.
        det = replace(det, min_history_s=0.0, _live={}, _status={})
    for name, data in (("injected", fleet), ("clean", clean)):
        streams = list(data.streams.values())
        if name not in features:
            features[name] = fe.batch_features_many(streams)
        found[name] = {s.agent_id: det.detect_rows(s, c)[0] for s, c in zip(streams, features[name], strict=True)}
    report = score(fleet, found["injected"])
    quiet = score(clean, found["clean"])
    p, r = report.precision or 0.0, report.recall or 0.0
    held_out = sum(len(s) - clean.train_rows for s in clean.streams.values())
    return {
        "precision": round(p, 4),
        "recall": round(r, 4),
        "f1": round(2 * p * r / (p + r), 4) if p + r else 0.0,
        "events": report.events,
        "false_alarms_per_1000": round(1000.0 * quiet.detections / held_out, 3) if held_out else None,
        "per_kind_recall": {k: round(v.recall, 3) for k, v in report.per_kind.items() if v.recall is not None},
    }


def retrain_anomaly(data: Split, current: Any = None, current_version: str | None = None) -> Candidate:
    """Fit a new anomaly detector and compare it with ``current`` (see the module docstring)."""
    cand = Candidate("anomaly", current_version=current_version, agents=len(data.streams))
    started = time.perf_counter()
    det = AnomalyDetector()
    det.fit(data.train())
    cand.train_seconds = time.perf_counter() - started
    cand.trained_rows = data.train_rows * len(data.streams)
    held = data.sample()
    clean = Fleet(streams=dict(held.streams), events=[], train_rows=held.train_rows)
    try:
        injected = inject_faults(held.streams, held.train_rows, seed=EVAL_SEED, fault_share=EVAL_FAULT_SHARE)
    except ValueError as exc:  # held-out period too short for some fault
        cand.reason = f"held-out data too short to evaluate: {exc}"
        return cand
    cand.model = det
    features: dict[str, list[Any]] = {}
    cand.metrics = _anomaly_metrics(det, injected, clean, features)
    if current is not None:
        cand.current_metrics = _anomaly_metrics(current, injected, clean, features)
    _decide(cand, "f1")
    return cand


def retrain_failure(data: Split, current: Any = None, current_version: str | None = None) -> Candidate:
    """Train a new failure predictor on failures read off the history and compare it with ``current``."""
    cand = Candidate("failure", current_version=current_version, agents=len(data.streams))
    events = [e for s in data.streams.values() for e in derive_failures(s)]
    train_events = [e for e in events if e.start < data.train_rows]
    test_events = [e for e in events if e.start >= data.train_rows]
    if len(train_events) < MIN_FAILURES or not test_events:
        cand.reason = (
            f"not enough failures in the history: {len(train_events)} to learn from (needs {MIN_FAILURES}), "
            f"{len(test_events)} held out (needs 1)"
        )
        return cand
    started = time.perf_counter()
    pred = FailurePredictor().fit(data.train(), train_events)
    cand.train_seconds = time.perf_counter() - started
    cand.trained_rows = data.train_rows * len(data.streams)
    streams = list(data.streams.values())
    lengths = {s.agent_id: len(s) for s in streams}

    designs = design_many(streams)  # computed once, shared by the two models compared

    def measure(model: Any) -> dict[str, Any]:
        warned = {
            s.agent_id: [
                w for w in warnings_from_risk(model.risk_of(D, valid), model.threshold) if w >= data.train_rows
            ]
            for s, (D, valid) in zip(streams, designs, strict=True)
        }
        sc = score_warnings(warned, lengths, test_events, model.horizon)
        return {
            "f1": round(sc.f1, 4),
            "warned_share": None if sc.share_warned is None else round(sc.share_warned, 4),
            "precision": None if sc.precision is None else round(sc.precision, 4),
            "median_lead_heartbeats": sc.median_lead,
            "failures_held_out": len(test_events),
            "failures_trained_on": len(train_events),
            "threshold": model.threshold,
        }

    cand.model = pred
    cand.metrics = measure(pred)
    if current is not None:
        cand.current_metrics = measure(current)
    _decide(cand, "f1")
    return cand


#: Fewer recorded task outcomes than this and no assignment model is trained.
MIN_TASK_OUTCOMES = 50


def retrain_task(outcomes: Sequence[Any], current: Any = None, current_version: str | None = None) -> Candidate:
    """Train a task-assignment model on recorded outcomes (the most recent 20 % held out) and compare it, by
    Brier score, with the model in service, or with the heuristic that serves while there is none."""
    cand = Candidate("task_assignment", current_version=current_version)
    usable = assign.usable(outcomes)
    if len(usable) < MIN_TASK_OUTCOMES:
        cand.reason = f"not enough task outcomes: {len(usable)} recorded with features (needs {MIN_TASK_OUTCOMES})"
        return cand
    if len({o.success for o in usable}) < 2:
        kind = "success" if usable[0].success else "failure"
        cand.reason = f"every one of the {len(usable)} recorded outcomes is a {kind}: nothing to learn"
        return cand
    started = time.perf_counter()
    model, metrics = assign.train_and_evaluate(usable)
    cand.train_seconds = time.perf_counter() - started
    _train, holdout = assign.split_by_time(usable)
    cand.trained_rows = int(metrics["train"])
    cand.agents = len({o.agent_id for o in usable})
    cand.model = model
    cand.metrics = {**metrics["model"], "holdout": metrics["holdout"], "train": metrics["train"]}
    if current is not None:
        cand.current_metrics = assign.evaluate(current, holdout)
        _decide(cand, "brier", lower_is_better=True)
    else:
        cand.current_metrics = metrics["heuristic"]
        _decide(cand, "brier", lower_is_better=True, serving="the heuristic's")
    return cand


def package(cand: Candidate, at: datetime) -> Candidate:
    """Serialise a trained candidate and name its version, then load the bytes back as serving will: a
    candidate whose scorer fails its own stored self-check is recorded but not promoted. Any other error
    loading bytes just written is a bug, not a verdict on the model: it propagates, and the job records the
    kind as failed (jobs/retrain.py)."""
    if cand.model is not None:
        cand.data = cand.model.to_bytes()
        cand.sha256 = hashlib.sha256(cand.data).hexdigest()
        cand.version = version_name(cand.kind, cand.data, at)
        try:
            serving.loader(cand.kind)(cand.data)
        except SelfCheckFailed as exc:
            cand.promote, cand.reason = False, f"{exc}; {cand.reason}"[:500]
    return cand
