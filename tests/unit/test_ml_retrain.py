"""Retraining (shared/ml/retrain.py): history samples become streams (with the agent's kind and the rows
where it registered a new version), failures are read off them, agents with less than a day of history
are left out and the held-out split ignores young agents, and a new version is promoted only when at
least as good as the one in service on the same held-out data (None is never "better")."""

from __future__ import annotations

import copy
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from shared.ml import retrain
from shared.ml.anomaly import AnomalyDetector
from shared.ml.data import AgentStream
from shared.ml.simulate import simulate, simulate_rows

T0 = datetime(2026, 11, 1, tzinfo=UTC)


def stretched(streams: dict[str, AgentStream], k: float = 3.0) -> dict[str, AgentStream]:
    """The same rows a heartbeat every ``k`` intervals apart (features only see time in intervals): a
    simulated 30 s fleet of 1,200 rows becomes 30 hours of history, as retraining needs a day."""
    return {a: replace(s, interval_s=k * s.interval_s, t=k * s.t) for a, s in streams.items()}


def samples(n: int, *, start_seq: int = 0, metrics: dict | None = None) -> list[dict]:
    m = metrics or {"latency_ms_p95": 100.0, "error_rate": 0.01, "cpu_pct": 20.0, "memory_pct": 40.0}
    return [
        {"seq": start_seq + i, "at": (T0 + timedelta(seconds=30 * (start_seq + i))).isoformat(), "metrics": dict(m)}
        for i in range(n)
    ]


def test_history_samples_become_ordered_streams_without_repeats_or_unscored_agents() -> None:
    rows = samples(700)
    shuffled = list(reversed(rows)) + rows[:50]  # any order, chunks and the ring overlapping
    streams = retrain.streams_from_samples(
        {
            "ok": (30.0, shuffled),
            "young": (30.0, samples(100)),
            "few-metrics": (30.0, samples(700, metrics={"cpu_pct": 1.0})),
        }
    )
    assert list(streams) == ["ok", "young"]
    s = streams["ok"]
    assert len(s) == 700 and s.t[0] == 0.0 and np.all(np.diff(s.t) == 30.0)
    assert s.X[0].tolist() == [100.0, 0.01, 20.0, 40.0, 0.0, 0.0]
    assert s.kind == "" and s.versions == ()


def test_streams_carry_the_agents_kind_and_where_its_version_changed() -> None:
    rows = samples(100)
    first, deploy, late = T0 - timedelta(days=3), T0 + timedelta(seconds=30 * 40 + 5), T0 + timedelta(days=1)
    streams = retrain.streams_from_samples({"a": (30.0, rows, "retriever", [deploy, first, late.isoformat()])})
    assert streams["a"].kind == "retriever"
    assert streams["a"].versions == (41,)  # the first heartbeat after the registration; not before the history
    assert streams["a"].tail(30).versions == (11,) and streams["a"].head(30).versions == ()


def test_agents_with_less_than_a_day_of_history_are_left_out_of_the_fit() -> None:
    day = int(retrain.MIN_HISTORY_S / 30)
    streams = retrain.streams_from_samples({"old": (30.0, samples(day + 1)), "new": (30.0, samples(day))})
    assert retrain.MIN_HISTORY_S == 86_400.0
    assert retrain.young(streams) == ["new"]
    data = retrain.split(streams)
    assert data is not None and list(data.streams) == ["old"]
    assert retrain.split({"new": streams["new"]}) is None


def test_failures_are_read_off_the_history() -> None:
    t = np.arange(50, dtype=float) * 30.0
    t[20:] += 300.0  # silent for 10 intervals before row 20
    X = np.zeros((50, 6))
    X[30:34, 1] = 0.4  # an error burst of 4 heartbeats
    X[40:42, 1] = 0.5  # too short to count
    events = retrain.derive_failures(AgentStream("a", 30.0, t, X))
    assert [(e.kind, e.start, e.end) for e in events] == [("gap", 20, 21), ("error_burst", 30, 34)]


def test_a_young_agent_does_not_shorten_everyones_window() -> None:
    streams = stretched(simulate_rows(12 * 1200, rows_per_agent=1200), k=4.0)  # 40 hours each
    younger = next(iter(streams.values())).head(1000)  # 33 hours: over a day, but shorter than the others
    data = retrain.split({**streams, "younger": younger})
    assert data is not None and len(next(iter(data.streams.values()))) == 1200
    assert "younger" not in data.streams and data.train_rows == int(1200 * retrain.TRAIN_SHARE)
    assert retrain.split({"young": younger.head(700)}) is None  # 23 hours


@pytest.fixture(scope="module")
def data() -> retrain.Split:
    fleet = simulate(agents=24, rows=900, train_rows=600, seed=2)
    out = retrain.split(stretched(fleet.streams, k=3.5))  # 26 hours each
    assert out is not None
    return out


def test_a_version_is_promoted_only_if_at_least_as_good(data: retrain.Split) -> None:
    first = retrain.retrain_anomaly(data)
    assert first.promote and first.reason.startswith("no model in service")
    assert first.metrics["events"] > 0 and first.metrics["f1"] > 0.5
    # Against itself: the same score, so at least as good.
    again = retrain.retrain_anomaly(data, first.model, "v1")
    assert again.promote and "at least as good" in again.reason
    assert again.current_metrics == first.metrics
    # Against a model that never fires: better, promoted; and a blind new model is not promoted over it.
    blind = copy.deepcopy(first.model)
    cal = blind.calibration
    cal.thresholds[:], cal.kind_thresholds[:] = 1e9, 1e9
    cal.fleet = type(cal.fleet)(cal.fleet.lo, cal.fleet.hi, 1e9, "fleet")
    for lo, hi in ((cal.lo, cal.hi), (cal.kind_lo, cal.kind_hi), (cal.fleet.lo, cal.fleet.hi)):
        lo[:], hi[:] = -np.inf, np.inf
    blind.gap_threshold = 1e9
    vs_blind = retrain.retrain_anomaly(data, blind, "blind")
    assert vs_blind.promote and vs_blind.current_metrics["f1"] == 0.0
    cand = retrain.Candidate("anomaly", metrics={"f1": 0.0}, current_metrics=first.metrics)
    retrain._decide(cand, "f1")
    assert not cand.promote and "worse than" in cand.reason


def test_a_missing_metric_is_never_better() -> None:
    cand = retrain.Candidate("task_assignment", metrics={"brier": None}, current_metrics={"brier": 0.2})
    retrain._decide(cand, "brier", lower_is_better=True)
    assert not cand.promote and "not comparable" in cand.reason
    cand = retrain.Candidate("task_assignment", metrics={"brier": 0.19}, current_metrics={"brier": 0.2})
    retrain._decide(cand, "brier", lower_is_better=True)
    assert cand.promote


def test_packaged_versions_are_named_by_time_and_content(data: retrain.Split) -> None:
    cand = retrain.package(retrain.retrain_anomaly(data), T0)
    assert cand.version is not None and cand.version.startswith("anomaly-20261101T000000-")
    assert AnomalyDetector.from_bytes(cand.data, load_forest=False).flat is not None
    assert cand.record()["sha256"] == cand.sha256 and cand.record()["decision"] == "promote"


def test_task_outcomes_that_are_all_successes_train_nothing() -> None:
    from shared.domain.assignment_agents import RecordedOutcome
    from shared.ml.assign import FEATURES

    outcomes = [
        RecordedOutcome(f"t{i}", "acme", "a1", True, T0 + timedelta(minutes=i), dict.fromkeys(FEATURES, 0.5))
        for i in range(80)
    ]
    cand = retrain.retrain_task(outcomes)
    assert cand.model is None and "nothing to learn" in cand.reason
    assert "needs 50" in retrain.retrain_task(outcomes[:10]).reason


def test_the_retraining_run_has_its_own_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    from shared.domain.run_phase import Backend
    from shared.launchers.base import LaunchError
    from shared.launchers.cloudrun_job import job_message
    from shared.ml import runs

    monkeypatch.setenv("FLEET_RETRAIN_BACKEND", "cloudrun")
    monkeypatch.delenv("FLEET_RETRAIN_SERVICE_ACCOUNT", raising=False)
    with pytest.raises(LaunchError, match="its own identity"):
        runs.backend()
    monkeypatch.setenv("FLEET_RETRAIN_SERVICE_ACCOUNT", "fleet-retrain@p.iam.gserviceaccount.com")
    assert runs.backend() is Backend.CLOUDRUN
    spec = runs.spec(runs.run_id_for(T0), Backend.CLOUDRUN)
    assert spec.job_id == "retrain-20261101" and spec.command == (
        "python",
        "-m",
        "jobs.retrain",
        "--run-id",
        spec.job_id,
    )
    message = job_message(spec, project="p", region="r", service_account="fleet-training@p.iam.gserviceaccount.com")
    assert message.template.template.service_account == "fleet-retrain@p.iam.gserviceaccount.com"


def test_a_candidate_failing_its_own_self_check_is_recorded_but_never_promoted(monkeypatch: pytest.MonkeyPatch) -> None:
    """``package`` loads the new bytes back as serving will: if the flat trees disagree with the scores
    scikit-learn stored at training time (beyond the tolerance), the version is kept out of service."""
    from shared.ml.assign_synthetic import synthetic_outcomes
    from shared.ml.flat import FlatTrees

    outcomes = synthetic_outcomes(400, agents=8, seed=2)
    good = retrain.package(retrain.retrain_task(outcomes, current=None), T0)
    assert good.promote and good.version is not None  # better than the heuristic on these outcomes
    predict = FlatTrees.predict_proba1
    monkeypatch.setattr(FlatTrees, "predict_proba1", lambda self, X, chunk=1024: predict(self, X, chunk) * (1 + 1e-9))
    cand = retrain.package(retrain.retrain_task(outcomes, current=None), T0)
    assert cand.version is not None and cand.data and cand.sha256  # stored and recorded ...
    assert not cand.promote and cand.reason.startswith("self_check_failed")  # ... but not promoted
    assert cand.record()["decision"] == "keep_current" and "self_check_failed" in cand.record()["reason"]
