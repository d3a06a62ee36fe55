"""The independent mixed-fleet simulator (shared/ml/simulate_mixed.py) and its harness (evaluate_mixed.py): the
fleet is deterministic, its history is healthy, each fault has its signature, and the harness's matching, deploy
flagging and targets hold on a toy detector that raises known detections."""

from __future__ import annotations

import itertools
from collections.abc import Mapping

import numpy as np
import pytest

from shared.ml import evaluate_mixed
from shared.ml import simulate_mixed as sm
from shared.ml.data import METRICS, AgentStream, Detection, FaultEvent
from shared.ml.evaluate_mixed import (
    DEPLOY_GRACE,
    TOLERANCE,
    aggregate,
    evaluate_seed,
    fault_is,
    format_markdown,
    score,
    targets_met,
)
from shared.ml.simulate_mixed_faults import CHANGE_GAP, FAULT_GAP, FAULT_KINDS, NEEDS, MixedFleet

LAT, ERR, CPU, MEM, TOK, COST = range(len(METRICS))


@pytest.fixture(scope="module")
def fleet() -> MixedFleet:
    return sm.simulate_mixed(7, agents=60)


@pytest.fixture(scope="module")
def clean(fleet: MixedFleet) -> MixedFleet:
    """The same seed with no faults and no changes: the healthy reference of every agent."""
    patch = pytest.MonkeyPatch()
    patch.setattr(sm, "plan_faults", lambda series, first, rng: ([], {}, {}))
    patch.setattr(sm, "add_changes", lambda series, first, faults, rng: ([], {}))
    try:
        return sm.simulate_mixed(7, agents=60)
    finally:
        patch.undo()


def _unchanged(fleet: MixedFleet, agent_id: str) -> bool:
    return not any(c.agent_id == agent_id for c in fleet.changes)


def test_deterministic_per_seed() -> None:
    a, b, c = sm.simulate_mixed(3, agents=12), sm.simulate_mixed(3, agents=12), sm.simulate_mixed(4, agents=12)
    assert a.events == b.events and a.changes == b.changes
    assert all(np.array_equal(a.streams[i].X, b.streams[i].X) for i in a.streams)
    assert all(np.array_equal(a.streams[i].t, b.streams[i].t) for i in a.streams)
    assert a.events != c.events


def test_shape_times_and_kinds(fleet: MixedFleet) -> None:
    assert fleet.train_rows == 2880
    kinds = [s.kind for s in fleet.streams.values()]
    assert {k: kinds.count(k) for k in sm.AGENT_KINDS} == dict.fromkeys(sm.AGENT_KINDS, 15)
    for s in fleet.streams.values():
        assert len(s) == 5760 and s.X.shape == (5760, len(METRICS)) and s.interval_s == 30.0
        gaps = np.diff(s.t)
        assert 0.0 <= s.t[0] < 32.0 and gaps.min() > 20.0 and gaps.max() < 45.0  # late, never missing
        assert np.all(np.isfinite(s.X)) and s.X.min() >= 0.0 and s.X[:, ERR].max() <= 1.0
    trainers = [s for s in fleet.streams.values() if s.kind == "trainer"]
    assert all(not s.X[:, [TOK, COST]].any() for s in trainers)  # no tokens nor cost
    chats = [s for s in fleet.streams.values() if s.kind == "chat"]
    assert 0 < sum(not s.X[:, COST].any() for s in chats) < len(chats)  # some chat agents report no cost


def test_history_untouched_by_faults_and_changes(fleet: MixedFleet, clean: MixedFleet) -> None:
    for agent_id, s in fleet.streams.items():
        assert np.array_equal(s.X[: fleet.train_rows], clean.streams[agent_id].X[: fleet.train_rows])
        assert np.array_equal(s.t, clean.streams[agent_id].t)
    assert min(e.start for e in fleet.events + fleet.changes) >= fleet.train_rows


def test_about_seventy_percent_faulty_and_kinds_spread(fleet: MixedFleet) -> None:
    faulty = {e.agent_id for e in fleet.events}
    assert len(faulty) == 42 and len(fleet.events) == 49
    per_kind = [sum(e.kind == k for e in fleet.events) for k in FAULT_KINDS]
    assert min(per_kind) >= 7 and max(per_kind) <= 13
    assert set(fleet.strengths) == set(fleet.events) and all(0 <= v <= 1 for v in fleet.strengths.values())
    for agent_id in faulty:
        mine = sorted((e for e in fleet.events if e.agent_id == agent_id), key=lambda e: e.start)
        assert len(mine) <= 2
        assert all(b.start - a.end >= FAULT_GAP for a, b in itertools.pairwise(mine))


def test_faults_only_on_agents_reporting_their_metrics(fleet: MixedFleet, clean: MixedFleet) -> None:
    for e in fleet.events:
        ref = clean.streams[e.agent_id].X
        assert all(ref[:, METRICS.index(m)].any() for m in NEEDS[e.kind]), e
    assert not any(e.kind in ("token_collapse", "pricier_model") for e in fleet.events if "trainer" in e.agent_id)


def _windows(fleet: MixedFleet, clean: MixedFleet, kind: str) -> list[tuple[FaultEvent, np.ndarray, np.ndarray]]:
    chosen = [e for e in fleet.events if e.kind == kind and _unchanged(fleet, e.agent_id)]
    assert chosen, kind
    return [
        (e, fleet.streams[e.agent_id].X[e.start : e.end], clean.streams[e.agent_id].X[e.start : e.end]) for e in chosen
    ]


def test_memory_leak_slope_and_recovery(fleet: MixedFleet, clean: MixedFleet) -> None:
    for e, X, ref in _windows(fleet, clean, "memory_leak"):
        rise = X[:, MEM] - ref[:, MEM]
        slope = np.polyfit(np.arange(rise.size), rise, 1)[0]
        assert slope == pytest.approx(fleet.magnitudes[e], rel=0.25) and 0.02 <= fleet.magnitudes[e] <= 0.08
        assert e.end - e.start <= 900 and (e.end - e.start >= 300 or X[-1, MEM] >= 97.0)
        after = slice(e.end, e.end + 20)
        assert np.array_equal(fleet.streams[e.agent_id].X[after, MEM], clean.streams[e.agent_id].X[after, MEM])


def test_latency_ramp_factor(fleet: MixedFleet, clean: MixedFleet) -> None:
    for e, X, ref in _windows(fleet, clean, "latency_ramp"):
        factor = X[:, LAT] / ref[:, LAT]
        assert factor[0] < 1.1 and factor[-1] == pytest.approx(fleet.magnitudes[e]) and 2.0 <= factor[-1] <= 4.0
        assert np.all(np.diff(factor) >= -1e-9)  # rising over 1-3 hours, then held for 60-300 heartbeats
        held = int(np.count_nonzero(np.isclose(factor, factor[-1])))
        assert 60 <= held <= 300 and 120 <= factor.size - held + 1 <= 360
        assert np.array_equal(X[:, CPU], ref[:, CPU])


def test_error_step_below_the_static_rule(fleet: MixedFleet, clean: MixedFleet) -> None:
    for _, X, ref in _windows(fleet, clean, "error_step"):
        assert 0.04 <= X[:, ERR].mean() <= 0.11 and X[:, ERR].max() <= 0.2 and X[:, ERR].mean() > 2 * ref[:, ERR].mean()


def test_token_collapse_keeps_cpu_and_latency(fleet: MixedFleet, clean: MixedFleet) -> None:
    for e, X, ref in _windows(fleet, clean, "token_collapse"):
        share = np.median(X[:, TOK] / ref[:, TOK])
        assert share == pytest.approx(fleet.magnitudes[e], rel=0.1) and 0.05 <= share <= 0.22
        assert np.array_equal(X[:, [LAT, CPU, MEM]], ref[:, [LAT, CPU, MEM]])


def test_pricier_model_keeps_tokens_flat(fleet: MixedFleet, clean: MixedFleet) -> None:
    for e, X, ref in _windows(fleet, clean, "pricier_model"):
        assert np.array_equal(X[:, TOK], ref[:, TOK])
        assert np.median(X[:, COST] / ref[:, COST]) == pytest.approx(fleet.magnitudes[e], rel=0.05)
        assert 1.4 <= fleet.magnitudes[e] <= 1.8


def test_deploys_and_scale_ups(fleet: MixedFleet, clean: MixedFleet) -> None:
    deploys = [c for c in fleet.changes if c.kind == "deploy"]
    scale_ups = [c for c in fleet.changes if c.kind == "scale_up"]
    assert len(deploys) == 10 and len(scale_ups) == 4
    for c in deploys:
        s = fleet.streams[c.agent_id]
        assert c.start in s.versions and c.end == c.start + 1
        assert not np.array_equal(s.X[c.start :, MEM], clean.streams[c.agent_id].X[c.start :, MEM])
    assert sum(len(s.versions) for s in fleet.streams.values()) == len(deploys)
    for c in scale_ups:
        assert fleet.streams[c.agent_id].kind in ("chat", "retriever") and 10 <= c.end - c.start <= 20
        ratio = np.median(fleet.streams[c.agent_id].X[c.end :, TOK] / clean.streams[c.agent_id].X[c.end :, TOK])
        assert 1.3 <= ratio <= 1.6 or 0.6 <= ratio <= 0.75
    for c in fleet.changes:
        for e in fleet.events:
            if e.agent_id == c.agent_id:
                assert c.end + CHANGE_GAP <= e.start or c.start >= e.end + TOLERANCE + CHANGE_GAP


class Toy:
    """A detector raising known detections: every memory leak at +5, one false alarm, and a deploy flagged long."""

    name = "toy"

    def __init__(self, seed: int, agents: int, deploy_rows: int) -> None:
        self.fleet = sm.simulate_mixed(seed, agents)
        self.deploy_rows = deploy_rows
        self.fitted: list[str] = []

    def fit(self, streams: Mapping[str, AgentStream]) -> None:
        self.fitted = sorted(streams)

    def detect(self, stream: AgentStream) -> list[Detection]:
        a = stream.agent_id
        events = [e for e in self.fleet.events if e.agent_id == a]
        found = [Detection(a, e.start + 5, e.start + 9, "x") for e in events if e.kind == "memory_leak"]
        late = [e.end + TOLERANCE for e in events if e.kind == "error_step"]  # just too late: false alarms
        found += [Detection(a, r, r + 1, "x") for r in late]
        found.append(Detection(a, 10, 20, "x"))  # in the history: not scored
        deploys = [c.start for c in self.fleet.changes if c.agent_id == a and c.kind == "deploy"]
        return found + [Detection(a, r, r + self.deploy_rows, "x") for r in deploys]


@pytest.mark.parametrize("deploy_rows", [DEPLOY_GRACE, 30])
def test_harness_on_a_toy_detector(deploy_rows: int) -> None:
    toy = Toy(11, 20, deploy_rows)
    out = evaluate_seed([toy], 11, agents=20, unseen=0.25)["toy"]
    assert len(toy.fitted) == 15  # the unseen quarter is left out of fit
    fleet = toy.fleet
    leaks = [e for e in fleet.events if e.kind == "memory_leak"]
    steps = [e for e in fleet.events if e.kind == "error_step"]
    deploys = [c for c in fleet.changes if c.kind == "deploy"]
    assert leaks and steps and deploys
    assert out.recall(fault_is("memory_leak")) == 1.0 and out.recall() == pytest.approx(len(leaks) / len(fleet.events))
    assert all(e.delay == 5 for e in out.events if e.kind == "memory_leak")
    assert out.false_alarms() == len(steps) + len(deploys)
    assert out.precision == pytest.approx(len(leaks) / (len(leaks) + len(steps) + len(deploys)))
    assert [n for n, _ in out.deploys] == [deploy_rows] * len(deploys)
    met = targets_met(out)
    assert met[f"deploys flagged for no more than their first {DEPLOY_GRACE} heartbeats"] == (
        deploy_rows <= DEPLOY_GRACE
    )
    assert not met["recall >= 0.8"] and not met["precision >= 0.9"]
    total = aggregate([{"toy": out}, {"toy": out}])["toy"]
    assert len(total.events) == 2 * len(out.events) and total.recall() == out.recall()
    text = format_markdown({"toy": total})
    assert "#### Against the targets" in text and "**not met**" in text


def test_perfect_detector_meets_the_targets() -> None:
    fleet = sm.simulate_mixed(5, agents=12)
    found = {a: [Detection(a, e.start, e.end, "x") for e in fleet.events if e.agent_id == a] for a in fleet.streams}
    out = score(fleet, found)
    assert out.recall() == 1.0 and out.precision == 1.0 and out.false_per_1000() == 0.0
    assert all(targets_met(out).values())
    assert "static" not in format_markdown({"perfect": out})


def test_cli_static_only(capsys: pytest.CaptureFixture[str]) -> None:
    assert evaluate_mixed.main(["--seeds", "2", "--agents", "8", "--static-only"]) == 0
    text = capsys.readouterr().out
    assert "Command: `python -m shared.ml.evaluate_mixed --seeds 2 --agents 8 --static-only`" in text
    assert "| memory_leak |" in text and "| unseen |" in text
