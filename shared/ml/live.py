"""The learned models on the live heartbeat path: one heartbeat of one agent in, a ``Learned`` out.

The heartbeat function keeps no state between events (its instances come and go), so everything a
model needs to carry from one heartbeat to the next — the agent's rolling baseline
(``features.Baseline``), the anomaly persistence runs, the failure predictor's trend window — lives in
the agent document (``ml``), written in the same conditional write as the heartbeat itself: no extra
Firestore read or write per event, and a redelivered or stale heartbeat (refused before this runs)
never advances it twice.

The baseline is advanced on every heartbeat even before a model is deployed, so an agent is warm when
the first model arrives. Scoring is numpy only (the models' flattened trees); scikit-learn is never
imported here.

Heartbeat metrics map onto the model's columns (``features.METRICS``): ``latency_ms`` is the reported
``latency_ms_p95`` (or a ``latency_ms`` extra), ``tokens_per_s`` and ``cost_per_min`` are extra metrics
of those names; a metric an agent does not report is 0 in every row, so it neither moves its z nor
its stuck run. An agent that reports fewer than ``MIN_METRICS`` of the six is not scored.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import numpy as np

from shared.domain import learned as L
from shared.ml import features as fe
from shared.ml import serving
from shared.ml.failure import FailureState
from shared.platform import settings

if TYPE_CHECKING:
    from shared.ml.anomaly import AnomalyDetector
    from shared.ml.failure import FailurePredictor

#: Fewer reported metrics than this and an agent is not scored (its rows would be mostly constant).
MIN_METRICS = 3
#: Where each model column comes from in a heartbeat's metrics (first present wins).
SOURCES: dict[str, tuple[str, ...]] = {
    "latency_ms": ("latency_ms_p95", "latency_ms"),
    "error_rate": ("error_rate",),
    "cpu_pct": ("cpu_pct",),
    "memory_pct": ("memory_pct",),
    "tokens_per_s": ("tokens_per_s",),
    "cost_per_min": ("cost_per_min",),
}
assert tuple(SOURCES) == fe.METRICS


def row_of(metrics: Mapping[str, Any]) -> tuple[np.ndarray, int]:
    """A heartbeat's metrics as a model row, and how many of the columns the agent reported."""
    row = np.zeros(len(fe.METRICS))
    present = 0
    for j, names in enumerate(SOURCES.values()):
        for name in names:
            value = metrics.get(name)
            if isinstance(value, int | float) and not isinstance(value, bool):
                row[j] = float(value)
                present += 1
                break
    return row, present


@dataclass(frozen=True)
class Models:
    """The models in service (either may be missing) and their versions."""

    anomaly: AnomalyDetector | None = None
    anomaly_version: str | None = None
    failure: FailurePredictor | None = None
    failure_version: str | None = None


def _top(f: np.ndarray, names: tuple[str, ...]) -> dict[str, float]:
    return {n: round(float(f[fe.FEATURES.index(n)]), 3) for n in names if n in fe.FEATURES}


#: Format of the state kept in the agent document; a state of another format is started afresh.
STATE_VERSION = 1
_BOTH = (L.ANOMALY, L.FAILURE_RISK)


def _unscored(reason: str, keep: Mapping[str, Any] | None = None) -> L.Learned:
    """Not scored: say why, and close any learned episode (nothing would close it otherwise)."""
    state = {**dict(keep or {}), "v": STATE_VERSION, "status": L.UNSCORED, "reason": reason, "score": None}
    state.update(episode=None, failure=None, risk=None)
    return L.Learned(state, resolves=[L.Resolution(rule, f"not scored any more: {reason}") for rule in _BOTH])


def step(
    models: Models,
    agent_id: str,
    state: Mapping[str, Any],
    metrics: Mapping[str, Any],
    at: datetime,
    interval_s: float,
) -> L.Learned:
    """Advance an agent's model state by one heartbeat and say which learned episodes change. Never raises:
    a state this code cannot read (another format, a bug) is started afresh and the reason recorded, so a
    heartbeat is never refused because of the models."""
    try:
        if not state or state.get("v") == STATE_VERSION:
            return _step(models, agent_id, state, metrics, (at, interval_s))
        out = _step(models, agent_id, {}, metrics, (at, interval_s))
        out.resolves = [L.Resolution(r, "model state started afresh (new format)") for r in _BOTH] + out.resolves
        return out
    except Exception as exc:
        return _unscored(f"model state reset after {type(exc).__name__}: {exc}"[:300])


def _step(
    models: Models, agent_id: str, state: Mapping[str, Any], metrics: Mapping[str, Any], when: tuple[datetime, float]
) -> L.Learned:
    at, interval_s = when
    row, present = row_of(metrics)
    if present < MIN_METRICS:
        reason = f"reports {present} of the {len(fe.METRICS)} metrics the models use (needs {MIN_METRICS})"
        return _unscored(reason, keep={k: v for k, v in state.items() if k in ("baseline", "last_t")})
    new: dict[str, Any] = {**dict(state), "v": STATE_VERSION}
    t = at.timestamp()
    baseline = fe.Baseline.from_doc(state["baseline"]) if state.get("baseline") else fe.Baseline.new(interval_s)
    if float(baseline.interval[0]) != float(interval_s):  # re-registered with another interval
        baseline.interval[0] = float(interval_s)
    last_t = state.get("last_t")
    dt = float(interval_s) if last_t is None else t - float(last_t)
    ready = baseline.ready
    f = fe.features(row, dt, baseline)
    new.update(baseline=baseline.to_doc(), last_t=t, reason=None)
    out = L.Learned(new)

    det = models.anomaly
    if det is None:
        new.update(status=L.UNSCORED if ready else L.INSUFFICIENT, score=None, anomaly_model=None, episode=None)
        out.resolves.append(L.Resolution(L.ANOMALY, f"{agent_id}: no anomaly model in service"))
    else:
        episode = det.episode_state(state.get("episode"))
        was_open = episode.opened is not None
        verdict = det.judge(agent_id, f, ready, baseline.n - 1, episode)
        new.update(
            episode=episode.to_doc(),
            status=verdict.status,
            score=None if verdict.score is None else round(float(verdict.score), 4),
            anomaly_model=models.anomaly_version,
        )
        if verdict.closed is not None:
            out.resolves.append(L.Resolution(L.ANOMALY, f"{agent_id}: heartbeats back to normal"))
        if episode.opened is not None and not was_open:
            drivers = _top(f, episode.why)
            shown = ", ".join(f"{k}={v:g}" for k, v in drivers.items())
            threshold = det.threshold(agent_id)
            out.opens.append(
                L.Opening(
                    L.ANOMALY,
                    "warning",
                    f"{agent_id}: heartbeat anomaly (score {verdict.score:.3f}, threshold {threshold:.3f}); {shown}",
                    {
                        "score": round(float(verdict.score or 0.0), 4),
                        "threshold": round(threshold, 4),
                        "features": list(episode.why),
                        "values": drivers,
                        "model": models.anomaly_version,
                    },
                )
            )

    pred = models.failure
    if pred is not None:
        fstate = FailureState.from_doc(state["failure"]) if state.get("failure") else FailureState()
        fv = pred.observe(fstate, f, row, ready)
        new.update(failure=fstate.to_doc(), risk=round(float(fv.risk), 4), failure_model=models.failure_version)
        if fv.cleared:
            out.resolves.append(L.Resolution(L.FAILURE_RISK, f"{agent_id}: failure risk back under the threshold"))
        if fv.warn:
            out.opens.append(
                L.Opening(
                    L.FAILURE_RISK,
                    "warning",
                    f"{agent_id}: likely to fail within ~{pred.horizon} heartbeats "
                    f"(risk {fv.risk:.2f}, threshold {pred.threshold:.2f}); {', '.join(fv.features)}",
                    {
                        "risk": round(float(fv.risk), 4),
                        "threshold": pred.threshold,
                        "horizon_heartbeats": pred.horizon,
                        "features": list(fv.features),
                        "model": models.failure_version,
                    },
                )
            )
    else:
        new.update(risk=None, failure_model=None, failure=None)
        out.resolves.append(L.Resolution(L.FAILURE_RISK, f"{agent_id}: no failure model in service"))
    return out


def for_heartbeats() -> Callable[[Any, dict[str, Any], datetime], L.Learned]:
    """The ``learned`` step ``agents.apply_heartbeat`` takes, with the models in service now (scoring
    turned off: one that closes any learned episode and says so)."""
    if not settings.get().ml_scoring:
        return lambda record, metrics, at: _unscored("scoring is turned off (FLEET_ML_SCORING)")
    anomaly, failure = serving.current("anomaly"), serving.current("failure")
    models = Models(
        anomaly.model if anomaly else None,
        anomaly.version if anomaly else None,
        failure.model if failure else None,
        failure.version if failure else None,
    )

    def learned(record: Any, metrics: dict[str, Any], at: datetime) -> L.Learned:
        return step(models, record.agent_id, record.ml, metrics, at, float(record.heartbeat_interval_s))

    return learned
