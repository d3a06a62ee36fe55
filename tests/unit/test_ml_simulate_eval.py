"""The fleet simulator, the static-rules baseline and the event-level scoring of issue 7's harness."""

from __future__ import annotations

import itertools
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from shared.ml.data import METRICS, AgentStream, Detection, FaultEvent, Fleet
from shared.ml.evaluate import main as evaluate_main
from shared.ml.evaluate import run, score
from shared.ml.simulate import DURATIONS, FAULT_KINDS, simulate, simulate_rows
from shared.ml.static_rules import StaticRules


@pytest.fixture(scope="module")
def fleet() -> Fleet:
    return simulate()


def test_modules_do_not_import_sklearn():
    code = (
        "import sys, shared.ml.data, shared.ml.simulate, shared.ml.static_rules, shared.ml.evaluate\n"
        "assert not [m for m in sys.modules if m.startswith('sklearn')], 'sklearn imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[2])


def test_simulator_is_deterministic(fleet):
    again = simulate()
    assert again.events == fleet.events
    for agent_id, stream in fleet.streams.items():
        assert np.array_equal(stream.t, again.streams[agent_id].t)
        assert np.array_equal(stream.X, again.streams[agent_id].X)
    other = simulate(seed=8)
    assert other.events != fleet.events


def test_shapes_and_times(fleet):
    assert len(fleet.streams) == 60
    for stream in fleet.streams.values():
        assert len(stream) == 1500 and stream.X.shape == (1500, len(METRICS))
        assert np.all(np.diff(stream.t) > 0)
        assert np.all(np.isfinite(stream.X))
        assert len(stream.head(600)) == 600 and len(stream.tail(600)) == 900
        assert stream.tail(600).agent_id == stream.agent_id and stream.tail(600).t[0] == stream.t[600]


def test_events_within_bounds_and_not_overlapping(fleet):
    by_agent: dict[str, list[FaultEvent]] = {}
    for event in fleet.events:
        assert fleet.train_rows <= event.start < event.end <= 1500
        if event.kind == "drift":  # its detection allowance is inside the stream
            assert event.end + 50 <= 1500
        by_agent.setdefault(event.agent_id, []).append(event)
    faulty = len(by_agent)
    assert faulty == round(0.6 * 60)
    for events in by_agent.values():
        assert 1 <= len(events) <= 2
        events.sort(key=lambda e: e.start)
        for earlier, later in itertools.pairwise(events):
            assert earlier.end <= later.start
            assert earlier.kind != "drift"  # drift never ends, so it is always an agent's last fault


def test_each_kind_present_and_balanced(fleet):
    counts = Counter(e.kind for e in fleet.events)
    assert set(counts) == set(FAULT_KINDS)
    assert max(counts.values()) - min(counts.values()) <= 1
    for event in fleet.events:
        length = event.end - event.start
        low, high = DURATIONS[event.kind]
        if event.kind == "gap":
            assert length == 1
        else:
            assert low <= length <= high


def test_training_period_is_untouched_by_faults(fleet):
    clean = simulate(fault_share=0.0)
    assert clean.events == []
    for agent_id, stream in fleet.streams.items():
        head, clean_head = stream.head(fleet.train_rows), clean.streams[agent_id].head(fleet.train_rows)
        assert np.array_equal(head.t, clean_head.t) and np.array_equal(head.X, clean_head.X)


def test_gap_is_a_jump_in_time(fleet):
    gaps = [e for e in fleet.events if e.kind == "gap"]
    assert gaps
    for event in gaps:
        stream = fleet.streams[event.agent_id]
        step = stream.t[event.start] - stream.t[event.start - 1]
        assert step >= (DURATIONS["gap"][0] + 1) * stream.interval_s * 0.9
    # Elsewhere the heartbeats arrive on time (jitter of at most 10 %).
    gap_rows = {(e.agent_id, e.start) for e in gaps}
    for agent_id, stream in fleet.streams.items():
        late = {(agent_id, int(i) + 1) for i in np.flatnonzero(np.diff(stream.t) > 1.1 * stream.interval_s)}
        assert late <= gap_rows


def test_stuck_rows_are_exactly_constant(fleet):
    stuck = [e for e in fleet.events if e.kind == "stuck"]
    assert stuck
    for event in stuck:
        X = fleet.streams[event.agent_id].X
        assert np.array_equal(
            X[event.start : event.end], np.repeat(X[event.start - 1 : event.start], event.end - event.start, 0)
        )
        assert not np.array_equal(X[event.end], X[event.end - 1])


def test_fault_signatures(fleet):
    for event in fleet.events:
        X = fleet.streams[event.agent_id].X[event.start : event.end]
        if event.kind == "error_burst":
            assert np.all((X[:, 1] >= 0.25) & (X[:, 1] <= 0.6))
        elif event.kind == "runaway_cost":
            healthy = fleet.streams[event.agent_id].X[: fleet.train_rows, 5]
            assert X[:, 5].min() > 4 * np.median(healthy)
    healthy = np.concatenate([s.head(fleet.train_rows).X for s in fleet.streams.values()])
    assert healthy[:, 1].max() < 0.15  # the error-rate rule never fires on a healthy agent
    assert 200 * 0.7 < np.median(healthy[:, 0]) < 2000


def test_simulate_rows_is_fast_and_healthy():
    streams = simulate_rows(100_000, rows_per_agent=1000)
    assert len(streams) == 100 and sum(len(s) for s in streams.values()) == 100_000


def test_static_rules_catch_bursts_and_gaps_and_miss_drift(fleet):
    result = run([StaticRules()], fleet)["static"].report
    assert result.per_kind["error_burst"].recall == 1.0
    assert result.per_kind["gap"].recall == 1.0
    assert result.per_kind["error_burst"].median_delay == 0.0
    assert result.per_kind["drift"].recall == 0
    assert result.false_alarms_per_1000 is not None and result.false_alarms_per_1000 < 0.5


def test_static_rules_quiet_on_healthy_fleet():
    clean = simulate(agents=30, fault_share=0.0)
    rules = StaticRules()
    assert sum(len(rules.detect(s)) for s in clean.streams.values()) == 0


def _stream(rows: int, interval: float = 30.0) -> tuple[np.ndarray, np.ndarray]:
    t = np.arange(rows, dtype=float) * interval
    X = np.tile(np.array([500.0, 0.01, 40.0, 50.0, 100.0, 0.1]), (rows, 1))
    return t, X


def test_static_rules_mirror_health_thresholds():
    t, X = _stream(100)
    X[10:14, 1] = [0.21, 0.5, 0.16, 0.2]  # opens over 20 %, holds down to 15 %
    X[14, 1] = 0.149  # clears
    X[20, 1] = 0.20  # exactly 20 %: not over the threshold
    X[30:60, 2] = 96.0  # CPU over 95 % from t=900 s: saturated from 600 s later (row 50)
    X[60:65, 2] = 92.0  # under 95 but not under 90: still open
    t[80:] += 60.0  # a 90 s silence: 3 missed intervals of 30 s, late
    t[90:] += 30.0  # 60 s: not late
    found = StaticRules().detect(AgentStream("a", 30.0, t, X))
    assert found == [
        Detection("a", 10, 14, "error_rate", ("error_rate",)),
        Detection("a", 50, 65, "saturation", ("cpu_pct",)),
        Detection("a", 80, 81, "liveness", ("heartbeat_gap",)),
    ]


def test_static_rules_are_causal(fleet):
    rules = StaticRules()
    stream = fleet.streams[fleet.events[0].agent_id]
    full = rules.detect(stream)
    cut = 1000
    # Episodes closed before the cut are identical when the stream is truncated there.
    assert [d for d in rules.detect(stream.head(cut)) if d.end < cut] == [d for d in full if d.end < cut]


def _tiny_fleet() -> Fleet:
    t, X = _stream(200)
    streams = {a: AgentStream(a, 30.0, t, X) for a in ("a", "b")}
    events = [
        FaultEvent("a", "spike", 110, 115),  # window [110, 120)
        FaultEvent("a", "drift", 130, 150),  # window [130, 200)
        FaultEvent("b", "stuck", 120, 140),  # window [120, 145)
    ]
    return Fleet(streams, events, train_rows=100)


def test_score_matching_exact():
    fleet = _tiny_fleet()
    found = {
        "a": [
            Detection("a", 50, 60, "anomaly"),  # training period: ignored
            Detection("a", 119, 121, "anomaly"),  # last row of the spike's tolerance: caught, delay 9
            Detection("a", 112, 113, "other"),  # earlier match for the spike: delay 2
            Detection("a", 190, 199, "anomaly"),  # drift: ramp end + 40, delay 60
            Detection("a", 125, 126, "anomaly"),  # matches nothing
        ],
        "b": [
            Detection("b", 145, 150, "anomaly"),  # one past the stuck window: false alarm
            Detection("b", 119, 121, "anomaly"),  # one before: false alarm
        ],
    }
    report = score(fleet, found)
    assert report.events == 3 and report.detected == 2
    assert report.detections == 6 and report.matched == 3 and report.false_alarms == 3
    assert report.precision == 0.5 and report.recall == pytest.approx(2 / 3)
    assert report.per_kind["spike"].delays == (2,) and report.per_kind["spike"].within_3 == 1.0
    assert report.per_kind["drift"].delays == (60,) and report.per_kind["drift"].within_3 == 0.0
    assert report.per_kind["stuck"].recall == 0.0 and report.per_kind["stuck"].median_delay is None
    assert report.per_kind["gap"].events == 0 and report.per_kind["gap"].recall is None
    assert report.per_rule["anomaly"].detections == 5 and report.per_rule["anomaly"].matched == 2
    assert report.per_rule["other"].precision == 1.0
    # Healthy rows: 2 x 100 test rows minus the windows (10 + 70 for a, 25 for b).
    assert report.healthy_rows == 200 - 105
    assert report.false_alarms_per_1000 == pytest.approx(3000 / 95)


def test_score_delay_quantiles():
    t, X = _stream(300)
    events = [FaultEvent("a", "spike", 100 + 20 * i, 105 + 20 * i) for i in range(5)]
    fleet = Fleet({"a": AgentStream("a", 30.0, t, X)}, events, train_rows=100)
    found = {
        "a": [
            Detection("a", e.start + d, e.start + d + 1, "anomaly")
            for e, d in zip(events, [0, 1, 2, 4, 8], strict=True)
        ]
    }
    kind = score(fleet, found).per_kind["spike"]
    assert kind.recall == 1.0 and kind.median_delay == 2.0
    assert kind.p90_delay == pytest.approx(6.4)  # linear interpolation between 4 and 8
    assert kind.within_3 == pytest.approx(3 / 5)


def test_score_empty_detections(fleet):
    report = score(fleet, {})
    assert report.recall == 0.0 and report.precision is None and report.false_alarms == 0


class _Oracle:
    """A fake learned detector: raises every labelled fault two rows late, and remembers what it was fitted on."""

    name = "anomaly"
    fleet: Fleet | None = None

    def __init__(self) -> None:
        self.fitted_rows: list[int] = []

    def fit(self, streams):
        self.fitted_rows = [len(s) for s in streams.values()]

    def detect(self, stream):
        assert self.fleet is not None
        events = [e for e in self.fleet.events if e.agent_id == stream.agent_id]
        return [Detection(e.agent_id, e.start + 2, e.end + 2, "anomaly", ("latency_ms",)) for e in events]


def test_run_fits_on_training_period_only(fleet):
    oracle = _Oracle()
    _Oracle.fleet = fleet
    results = run([StaticRules(), oracle], fleet)
    assert set(oracle.fitted_rows) == {fleet.train_rows}
    report = results["anomaly"].report
    assert report.precision == 1.0 and report.recall == 1.0 and report.per_kind["stuck"].median_delay == 2.0
    assert results["static"].us_per_row > 0


def test_main_side_by_side_and_without_learned_detector(monkeypatch, capsys):
    small = ["--agents", "12", "--rows", "900", "--train-rows", "400"]
    _Oracle.fleet = simulate(agents=12, rows=900, train_rows=400)
    fake = type(sys)("shared.ml.anomaly")
    fake.AnomalyDetector = _Oracle  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "shared.ml.anomaly", fake)
    assert evaluate_main(small) == 0
    out = capsys.readouterr().out
    assert "| fault | events | static recall" in out and "anomaly recall" in out
    assert "python -m shared.ml.evaluate --agents 12" in out

    monkeypatch.setitem(sys.modules, "shared.ml.anomaly", None)  # importing it raises ImportError
    assert evaluate_main([*small, "--rows-1m"]) == 0
    out = capsys.readouterr().out
    assert "learned detector not available" in out and "anomaly recall" not in out and "skipped" in out
