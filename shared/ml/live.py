"""The learned models on the live heartbeat path: one heartbeat of one agent in, a ``Learned`` out.

The heartbeat function keeps no state between events (its instances come and go), so everything a
model needs to carry from one heartbeat to the next — the agent's rolling baseline (``features.Baseline``'s
document form, which ``features_live`` advances as it is), the anomaly persistence runs, the failure
predictor's trend window — lives in the agent document (``ml``), written in the same conditional write as
the heartbeat itself: no extra Firestore read or write per event, and a redelivered or stale heartbeat
(refused before this runs) never advances it twice.

The baseline is advanced on every heartbeat even before a model is deployed, so an agent is warm when
the first model arrives. Scoring is numpy only (the models' flattened trees); scikit-learn is never
imported here.

Heartbeat metrics map onto the model's columns (``features.METRICS``): ``latency_ms`` is the reported
``latency_ms_p95`` (or a ``latency_ms`` extra), ``tokens_per_s`` and ``cost_per_min`` are extra metrics
of those names; a metric an agent does not report is 0 in every row, so it neither moves its z nor
its stuck run. An agent that reports fewer than ``MIN_METRICS`` of the six is not scored.

History is counted in time: the state keeps ``since`` (the first heartbeat's time), and the anomaly
detector scores an agent only once it has ``min_history_s`` of it (one daily cycle); before, its status
is ``insufficient_data`` with ``history_s``, ``scored_from`` and a reason in hours. What lets the baseline
move (``Baseline.rebase``: its ``age`` back to 0): a new version in the agent's registration (the state keeps the
last ``version`` seen), or a person acknowledging its anomaly (the acknowledgement writes
``ml_rebase_at`` on the agent document, read with it; the state keeps ``rebased_at``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np

from shared.domain import learned as L
from shared.ml import features as fe
from shared.ml import features_live, serving
from shared.ml.anomaly_regimes import DRIVERS, Relearned, absolute
from shared.ml.baseline import WINDOW, current_doc, ready, relearning, settling
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
#: History an agent needs before it is scored when no anomaly model is in service to say
#: (``AnomalyDetector.min_history_s``'s default: one daily cycle).
MIN_HISTORY_S = 86_400.0
#: State fields kept when an agent is not scored for reporting too few metrics.
_KEPT = ("baseline", "last_t", "since", "version", "rebased_at")


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


def _top(f: np.ndarray, a: np.ndarray | None, names: tuple[str, ...]) -> dict[str, float]:
    """The values of the features an episode names (relative ones from ``f``, absolute ones from ``a``)."""
    row = f if a is None else np.concatenate([f, a])
    kept = (n for n in names if n in DRIVERS and DRIVERS.index(n) < row.shape[0])
    return {n: round(float(row[DRIVERS.index(n)]), 3) for n in kept}


def _relearned(
    det: AnomalyDetector,
    agent_id: str,
    state: Mapping[str, Any],
    new: Mapping[str, Any],
    model: str | None,
    moved: bool,
) -> Relearned | None:
    """The agent's regimes re-learning after a rebase later than the model's training of it (None: no such
    rebase, or one regime): carried on from the state unless the rebase is this heartbeat's or the model changed."""
    r = det.regimes.of(agent_id)
    rebased_at = new.get("rebased_at")
    if r is None or rebased_at is None or det.regimes.fresh(r, float(rebased_at)):
        return None
    doc = state.get("regimes")
    if moved or not isinstance(doc, Mapping) or doc.get("model") != model:
        return Relearned()
    return Relearned.from_doc(doc)


#: Format of the state kept in the agent document; a state of another format is started afresh.
STATE_VERSION = 1
_BOTH = (L.ANOMALY, L.FAILURE_RISK)


def _unscored(reason: str, keep: Mapping[str, Any] | None = None) -> L.Learned:
    """Not scored: say why, and close any learned episode (nothing would close it otherwise)."""
    state = {**dict(keep or {}), "v": STATE_VERSION, "status": L.UNSCORED, "reason": reason, "score": None}
    state.update(episode=None, failure=None, risk=None)
    return L.Learned(state, resolves=[L.Resolution(rule, f"not scored any more: {reason}") for rule in _BOTH])


@dataclass(frozen=True)
class Beat:
    """One heartbeat as the step sees it: when, the agent's interval, and what its registration says."""

    at: datetime
    interval_s: float
    version: str | None = None  # the agent's current version (a new one rebases the baseline)
    kind: str = ""  # its agent_type (a young agent is calibrated by its kind)
    rebase_at: datetime | None = None  # when a person last acknowledged its anomaly (``ml_rebase_at``)


def step(
    models: Models,
    agent_id: str,
    state: Mapping[str, Any],
    metrics: Mapping[str, Any],
    at: datetime,
    interval_s: float,
    *,
    version: str | None = None,
    kind: str = "",
    rebase_at: datetime | None = None,
) -> L.Learned:
    """Advance an agent's model state by one heartbeat and say which learned episodes change. Never raises:
    a state this code cannot read (another format, a bug) is started afresh and the reason recorded, so a
    heartbeat is never refused because of the models. ``version``, ``kind`` and ``rebase_at`` come from the
    agent's record (``for_heartbeats``)."""
    beat = Beat(at, interval_s, version, kind, rebase_at)
    try:
        if not state or state.get("v") == STATE_VERSION:
            return _step(models, agent_id, state, metrics, beat)
        out = _step(models, agent_id, _history_of(state), metrics, beat)
        out.resolves = [L.Resolution(r, "model state started afresh (new format)") for r in _BOTH] + out.resolves
        return out
    except Exception as exc:
        return _unscored(f"model state reset after {type(exc).__name__}: {exc}"[:300], keep=_history_of(state))


def _history_of(state: Mapping[str, Any]) -> dict[str, Any]:
    """What survives a state started afresh: when the agent's history began and what moved its baseline, so
    a reset costs a baseline's warm-up (30 heartbeats), not another day of insufficient data."""
    try:
        return {k: state[k] for k in ("since", "version", "rebased_at") if k in state}
    except Exception:  # a state this code cannot read at all
        return {}


def _since(state: Mapping[str, Any], baseline: Mapping[str, Any], t: float) -> float:
    """When the agent's history began: the state's ``since``; for a state written before it was kept, the
    baseline's heartbeats back from now (running agents are not sent back to warm-up); else now."""
    if state.get("since") is not None:
        return float(state["since"])
    if state.get("baseline"):
        return t - int(baseline["n"]) * float(baseline["interval"])
    return t


def _moved(state: Mapping[str, Any], beat: Beat, since: float) -> str | None:
    """Why the baseline must move at this heartbeat, or None: a new version registered (the first one seen
    is only recorded), or an acknowledgement of the agent's anomaly newer than its last rebase."""
    if not state.get("baseline"):
        return None
    if beat.version is not None and state.get("version") not in (None, beat.version):
        return f"a new version ({beat.version})"
    if beat.rebase_at is not None and beat.rebase_at.timestamp() > float(state.get("rebased_at") or since):
        return "its anomaly was acknowledged"
    return None


def _hours(seconds: float) -> str:
    return f"{seconds / 3600.0:.1f}".removesuffix(".0")


def _history(new: dict[str, Any], history_s: float, needed: float, since: float) -> None:
    """Say, in time, why an agent is not scored yet (or drop the fields once it is)."""
    if history_s >= needed:
        for key in ("history_s", "scored_from"):
            new.pop(key, None)
        return
    start = datetime.fromtimestamp(since + needed, UTC).replace(microsecond=0)
    new.update(
        history_s=round(history_s, 1),
        scored_from=start.isoformat().replace("+00:00", "Z"),
        reason=f"{_hours(history_s)} h of the {_hours(needed)} h of history an agent needs before it is scored "
        f"(scored from {start:%Y-%m-%d %H:%M} UTC)",
    )


def _step(models: Models, agent_id: str, state: Mapping[str, Any], metrics: Mapping[str, Any], beat: Beat) -> L.Learned:
    interval_s = beat.interval_s
    row, present = row_of(metrics)
    if present < MIN_METRICS:
        reason = f"reports {present} of the {len(fe.METRICS)} metrics the models use (needs {MIN_METRICS})"
        return _unscored(reason, keep={k: v for k, v in state.items() if k in _KEPT})
    new: dict[str, Any] = {**dict(state), "v": STATE_VERSION}
    t = beat.at.timestamp()
    # the state as its document's lists: the live features work on them as they are (features_live)
    baseline = current_doc(state["baseline"]) if state.get("baseline") else fe.Baseline.new(interval_s).to_doc()
    baseline["interval"] = float(interval_s)  # (re-registered with another interval: the new one)
    since = _since(state, baseline, t)
    moved = _moved(state, beat, since)
    if moved is not None:
        baseline["age"] = 0.0  # ``Baseline.rebase``
        new.update(rebased_at=t, rebased_for=moved)
    if beat.version is not None:
        new["version"] = beat.version
    last_t = state.get("last_t")
    dt = float(interval_s) if last_t is None else t - float(last_t)
    n, age = int(baseline["n"]), float(baseline["age"])
    is_ready, is_relearning, is_settling = ready(age), relearning(n, age), settling(n, age)
    f = features_live.step(baseline, row, dt)
    new.update(baseline=baseline, last_t=t, since=since, reason=None)
    if is_relearning:
        new["reason"] = f"re-learning its levels after {new.get('rebased_for') or 'a rebase'}"
    out = L.Learned(new)

    det = models.anomaly
    history_s = t - since
    if det is None:
        new.update(status=L.UNSCORED if is_ready else L.INSUFFICIENT, score=None, anomaly_model=None, episode=None)
        _history(new, 0.0, 0.0, since)  # no model: no time to be scored from
        if is_ready:
            new["reason"] = "no anomaly model in service"
        out.resolves.append(L.Resolution(L.ANOMALY, f"{agent_id}: no anomaly model in service"))
    else:
        needed = det.history_needed(interval_s)
        _history(new, history_s, needed, since)
        episode = det.episode_state(state.get("episode"))
        was_open = episode.opened is not None
        # the absolute features only for an agent judged in its regimes (they cost a sort and eight logs)
        has_regimes = det.regimes.of(agent_id) is not None
        a = None
        if has_regimes:
            ring = np.asarray(baseline["ring"], dtype=np.float64).reshape(WINDOW, -1)
            a = absolute(ring, np.asarray(baseline["level"], dtype=np.float64))
        relearned = _relearned(det, agent_id, state, new, models.anomaly_version, moved is not None)
        verdict = det.judge(
            agent_id,
            f,
            is_ready and history_s >= needed,
            n,
            episode,
            kind=beat.kind,
            settling=is_settling,
            absolute=a,
            relearned=relearned,
        )
        new.update(
            regimes=None if relearned is None else {**relearned.to_doc(), "model": models.anomaly_version},
            episode=episode.to_doc(),
            status=verdict.status,
            score=None if verdict.score is None else round(float(verdict.score), 4),
            anomaly_model=models.anomaly_version,
        )
        if verdict.closed is not None:
            out.resolves.append(L.Resolution(L.ANOMALY, f"{agent_id}: heartbeats back to normal"))
        if episode.opened is not None and not was_open:
            drivers = _top(f, a, episode.why)
            shown = ", ".join(f"{k}={v:g}" for k, v in drivers.items())
            threshold = det.threshold(agent_id, beat.kind)
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
        fv = pred.observe(fstate, f, row, is_ready)
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
        return step(
            models,
            record.agent_id,
            record.ml,
            metrics,
            at,
            float(record.heartbeat_interval_s),
            version=getattr(record, "version", None),
            kind=getattr(record, "agent_type", ""),
            rebase_at=getattr(record, "ml_rebase_at", None),
        )

    return learned
