"""The live step's history in time and what lets the baseline move (shared/ml/live.py): an agent is not
scored before a daily cycle of history (said in hours, with the time it will be), a state written before
``since`` was kept is migrated, a new version or an acknowledged anomaly rebases the baseline once, and
the agent's kind reaches the detector. A fake detector records what the step asks it."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from shared.domain import learned as L
from shared.ml import features as fe
from shared.ml import live
from shared.ml.anomaly import AnomalyDetector
from shared.ml.anomaly_episodes import INSUFFICIENT, NORMAL, Persistence, Verdict
from shared.ml.anomaly_regimes import Regimes, Relearned

T0 = datetime(2026, 12, 7, 3, 0, tzinfo=UTC)
INTERVAL = 600.0  # one heartbeat every 10 minutes: a day is 144 heartbeats, so these tests stay fast


@dataclass
class FakeDetector:
    """Judges every ready heartbeat normal, and records (ready, kind) of each call."""

    min_history_s: float = 86_400.0
    calls: list[tuple[bool, str]] = field(default_factory=list)
    regimes: Regimes = field(default_factory=Regimes)  # no agent with two regimes

    def episode_state(self, doc: Any) -> Persistence:
        return Persistence.from_doc(doc, 3, 5) if doc else Persistence(3, 5)

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
        relearned: Relearned | None = None,
    ) -> Verdict:
        self.calls.append((ready, kind))
        return Verdict(NORMAL, 0.1) if ready else Verdict(INSUFFICIENT)

    def threshold(self, agent_id: str) -> float:
        return 1.0

    def history_needed(self, interval_s: float) -> float:
        return self.min_history_s  # (the real detector adds its warm-up: test_ml_calibration.py)


def relearning(state: dict) -> bool:
    """Whether the stored baseline is re-learning its levels after a rebase (not its first warm-up)."""
    b = state["baseline"]
    return bool(b["age"] < fe.REBASE_ROWS and b["n"] > b["age"])


RNG = np.random.default_rng(5)


def metrics(i: int) -> dict[str, float]:
    noise = RNG.normal(0.0, 0.05, 6)
    base = (200.0, 0.01, 40.0, 50.0, 30.0, 0.2)
    names = ("latency_ms_p95", "error_rate", "cpu_pct", "memory_pct", "tokens_per_s", "cost_per_min")
    return {n: b * (1.0 + e) for n, b, e in zip(names, base, noise, strict=True)}


def beat(det: Any, state: dict, i: int, **kw: Any) -> dict:
    """Heartbeat ``i`` (``i * INTERVAL`` after T0) through the step; the state as Firestore gives it back."""
    at = T0 + timedelta(seconds=i * INTERVAL)
    out = live.step(live.Models(det, "v1"), "a1", state, metrics(i), at, INTERVAL, **kw)
    return json.loads(json.dumps(out.state))


def run(det: Any, rows: int, state: dict | None = None, start: int = 0, **kw: Any) -> list[dict]:
    states, current = [], dict(state or {})
    for i in range(start, start + rows):
        current = beat(det, current, i, **kw)
        states.append(current)
    return states


def test_insufficient_data_until_a_day_of_history_said_in_time() -> None:
    det = FakeDetector()
    day = int(86_400 / INTERVAL)
    states = run(det, day + 5)
    first = states[36]  # 6 hours in
    assert first["status"] == L.INSUFFICIENT
    assert first["history_s"] == 6 * 3600.0
    assert first["scored_from"] == "2026-12-08T03:00:00Z"
    assert first["reason"] == (
        "6 h of the 24 h of history an agent needs before it is scored (scored from 2026-12-08 03:00 UTC)"
    )
    assert "5.2 h of the 24 h" in states[31]["reason"]
    assert [s["status"] for s in states[:day]] == [L.INSUFFICIENT] * day
    assert [s["status"] for s in states[day:]] == [L.NORMAL] * 5
    assert "history_s" not in states[day] and "scored_from" not in states[day] and states[day]["reason"] is None
    assert [ready for ready, _ in det.calls] == [False] * day + [True] * 5
    assert all(s["since"] == T0.timestamp() for s in states)


def test_the_failure_predictor_keeps_its_own_readiness() -> None:
    """History in time gates the anomaly detector only: the failure predictor is told the baseline's."""
    seen: list[bool] = []

    class Pred:
        horizon, threshold = 10, 0.5

        def observe(self, fstate: Any, f: Any, row: Any, ready: bool) -> Any:
            seen.append(ready)
            return SimpleNamespace(risk=0.0, cleared=False, warn=False, features=())

    state: dict = {}
    for i in range(fe.WARMUP + 3):
        at = T0 + timedelta(seconds=i * INTERVAL)
        state = live.step(live.Models(FakeDetector(), "v1", Pred(), "f1"), "a1", state, metrics(i), at, INTERVAL).state  # type: ignore[arg-type]
    assert seen[-1] is True and state["status"] == L.INSUFFICIENT


def test_a_state_without_since_is_migrated_from_its_baseline() -> None:
    det = FakeDetector()
    state = run(det, 40)[-1]
    del state["since"]  # as written before this was kept
    after = beat(det, state, 40)
    n = state["baseline"]["n"]
    assert after["since"] == (T0 + timedelta(seconds=40 * INTERVAL)).timestamp() - n * INTERVAL
    assert after["history_s"] == n * INTERVAL
    fresh = beat(det, {}, 300)
    assert fresh["since"] == (T0 + timedelta(seconds=300 * INTERVAL)).timestamp()  # started afresh: now


def test_a_new_version_rebases_the_baseline_once() -> None:
    det = FakeDetector(min_history_s=0.0)
    states = run(det, 40, version="1.0")
    assert states[-1]["version"] == "1.0" and not relearning(states[-1])  # first seen: recorded
    assert states[-1]["status"] == L.NORMAL
    det.calls.clear()
    deployed = run(det, 3, states[-1], start=40, version="1.1")
    first = deployed[0]
    assert first["version"] == "1.1" and relearning(first)
    assert first["rebased_at"] == (T0 + timedelta(seconds=40 * INTERVAL)).timestamp()
    assert "a new version (1.1)" in first["reason"]
    assert [s["status"] for s in deployed] == [L.INSUFFICIENT] * 3  # the rebase rows are not scored
    assert [ready for ready, _ in det.calls] == [False] * 3
    assert {s["rebased_at"] for s in deployed} == {first["rebased_at"]}  # rebased once, not at every heartbeat
    unversioned = dict(states[-1])
    del unversioned["version"]  # a state written before versions were kept: the version is only recorded
    assert not relearning(beat(det, unversioned, 40, version="1.1"))


def test_an_acknowledged_anomaly_rebases_once() -> None:
    det = FakeDetector(min_history_s=0.0)
    states = run(det, 40)
    acked = T0 + timedelta(seconds=39.5 * INTERVAL)
    after = run(det, 3, states[-1], start=40, rebase_at=acked)
    assert relearning(after[0]) and after[0]["rebased_for"] == "its anomaly was acknowledged"
    assert {s["rebased_at"] for s in after} == {(T0 + timedelta(seconds=40 * INTERVAL)).timestamp()}
    assert after[0]["status"] == L.INSUFFICIENT
    # A marker older than the agent's history (a state started afresh since) moves nothing.
    fresh = run(det, 40, start=100, rebase_at=acked)
    assert all("rebased_at" not in s for s in fresh) and not relearning(fresh[-1])


def test_the_agents_kind_and_version_come_from_its_record(monkeypatch: pytest.MonkeyPatch) -> None:
    det = FakeDetector()
    monkeypatch.setattr(
        live.serving, "current", lambda kind: SimpleNamespace(model=det, version="v1") if kind == "anomaly" else None
    )
    learned = live.for_heartbeats()
    record = SimpleNamespace(
        agent_id="a1", ml={}, heartbeat_interval_s=30, version="2.0", agent_type="retriever", ml_rebase_at=None
    )
    out = learned(record, metrics(0), T0)
    assert det.calls == [(False, "retriever")]
    assert out.state["version"] == "2.0"


def test_the_default_history_is_the_detectors() -> None:
    assert live.MIN_HISTORY_S == AnomalyDetector().min_history_s == 86_400.0


def test_the_api_shows_the_history_while_data_is_insufficient() -> None:
    from shared.api.bodies.agents import agent_view
    from shared.domain.agent_record import AgentRecord

    states = run(FakeDetector(), int(86_400 / INTERVAL) + 1)
    fields = dict(agent_id="a1", tenant="acme", name="a1", agent_type="chat", version="1.0", owner="team")
    moments = dict(status_since=T0, registered_at=T0, last_registered_at=T0)
    young = agent_view(AgentRecord(**fields, **moments, ml=states[36]), at=T0).learned  # type: ignore[arg-type]
    assert young.status == L.INSUFFICIENT and young.history_s == 6 * 3600.0
    assert young.scored_from == datetime(2026, 12, 8, 3, 0, tzinfo=UTC)
    assert young.reason is not None and "6 h of the 24 h" in young.reason
    shown = agent_view(AgentRecord(**fields, **moments, ml=states[36]), at=T0).model_dump(mode="json")["learned"]
    assert shown["scored_from"] == "2026-12-08T03:00:00Z" and "baseline" not in shown
    scored = agent_view(AgentRecord(**fields, **moments, ml=states[-1]), at=T0).learned  # type: ignore[arg-type]
    assert scored.status == L.NORMAL and scored.history_s is None and scored.scored_from is None


def test_acknowledging_an_anomaly_marks_the_agent_in_the_same_transaction(monkeypatch: pytest.MonkeyPatch) -> None:
    """The acknowledging transaction writes ``ml_rebase_at`` on the agent of an ``anomaly`` episode (one more
    read and write, counted); another rule's episode, or an agent that is gone, gets no marker."""
    from google.cloud import firestore

    from shared.platform import metering
    from shared.store import db
    from shared.store import episodes as episode_store
    from tests.unit.test_episode_acknowledge import Ref, Transaction

    counted: list[dict[str, int]] = []
    monkeypatch.setattr(metering, "count", lambda **kw: counted.append(kw))
    monkeypatch.setattr(firestore, "transactional", lambda fn: fn)
    for rule, agent, marked in (
        ("anomaly", {"agent_id": "a1"}, True),
        ("anomaly", None, False),
        ("offline", {}, False),
    ):
        transaction, agent_ref = Transaction(), Ref(agent)
        monkeypatch.setattr(db, "client", lambda t=transaction: type("C", (), {"transaction": lambda self: t})())
        monkeypatch.setattr(
            episode_store, "episode_ref", lambda _id, r=rule: Ref({"state": "open", "rule": r, "agent_id": "a1"})
        )
        monkeypatch.setattr(episode_store, "_agent_ref", lambda agent_id, r=agent_ref: r)
        counted.clear()
        assert episode_store.acknowledge("e1", "api:ops", T0, require_open=True) is None
        assert ({"ml_rebase_at": T0} in transaction.updates) is marked
        assert agent_ref.reads_in_transaction == (rule == "anomaly")
        read = rule == "anomaly"  # a gone agent's document is read too, and counted
        assert counted == [{"reads": 1 + read, "writes": 1 + marked}]
    assert L.ack_details({"rule": "anomaly", "agent_id": "a1"}) == {
        "baseline": "anomaly acknowledged: baseline re-learned"
    }
    assert L.ack_details({"rule": "offline", "agent_id": "a1"}) == {}


def test_the_marker_on_the_record_rebases_at_the_next_heartbeat(monkeypatch: pytest.MonkeyPatch) -> None:
    det = FakeDetector(min_history_s=0.0)
    monkeypatch.setattr(
        live.serving, "current", lambda kind: SimpleNamespace(model=det, version="v1") if kind == "anomaly" else None
    )
    learned = live.for_heartbeats()
    state = run(det, 40)[-1]
    at = T0 + timedelta(seconds=40 * INTERVAL)
    record = SimpleNamespace(agent_id="a1", ml=state, heartbeat_interval_s=INTERVAL, version=None, agent_type="")
    assert not relearning(learned(record, metrics(40), at).state)
    record.ml_rebase_at = at - timedelta(seconds=60)  # type: ignore[attr-defined]
    moved = learned(record, metrics(40), at).state
    assert relearning(moved) and moved["reason"] == "re-learning its levels after its anomaly was acknowledged"


def test_the_console_agent_page_says_how_much_history_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    """The agent page shows the learned reason as the API gives it (escaped like everything else)."""
    from tests.unit import test_console_agent as page

    monkeypatch.setattr(page.agent_page, "call_api", page.FakeApi())
    monkeypatch.setattr(page.api_keys, "verify", lambda token: page.TOKENS.get(token))
    state = run(FakeDetector(), 32)[-1]
    learned = {k: state[k] for k in ("status", "reason", "history_s", "scored_from")}
    monkeypatch.setitem(page.AGENT, "learned", {**learned, "reason": learned["reason"] + " <b>"})
    html = page._get("/agents/agent-a1").get_data(as_text=True)
    assert "insufficient_data" in html
    assert (
        "5.2 h of the 24 h of history an agent needs before it is scored (scored from 2026-12-08 03:00 UTC) &lt;b&gt;"
        in html
    )


def test_a_state_started_afresh_keeps_its_history() -> None:
    """A state this code cannot read (another format, a bug) is started afresh, but the agent's history in
    time survives: a reset costs a baseline's warm-up, not another day of insufficient data."""
    det = FakeDetector(min_history_s=3_600.0)
    n = fe.WARMUP + 2  # past the warm-up, and past the hour of history it needs
    states = run(det, n)
    assert states[-1]["status"] == L.NORMAL
    broken = {**states[-1], "baseline": {"n": "not a number"}}
    after = beat(det, broken, n)
    assert after["status"] == L.UNSCORED and after["since"] == T0.timestamp()
    again = run(det, fe.WARMUP + 1, after, start=n + 1)
    assert again[-1]["status"] == L.NORMAL and again[-1]["since"] == T0.timestamp()
    other_format = {**states[-1], "v": 0}
    assert beat(det, other_format, n)["since"] == T0.timestamp()
