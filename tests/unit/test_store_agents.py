"""The agent document as stored: the learned models' state is one JSON string, and documents written when it
was a map still load; the heartbeat's conditional update writes it as that string."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from shared.domain.agent_record import AgentRecord, Plan
from shared.ml import live
from shared.store import agents as agent_store

T0 = datetime(2026, 11, 1, tzinfo=UTC)


def _record(**extra: Any) -> AgentRecord:
    doc = {
        "agent_id": "a-1",
        "tenant": "acme",
        "name": "A",
        "agent_type": "llm",
        "version": "1",
        "owner": "ann@acme.com",
        "heartbeat_interval_s": 30,
        "status_since": T0,
        "registered_at": T0,
        "last_registered_at": T0,
        **extra,
    }
    return AgentRecord.model_validate(doc)


def _ml_state(beats: int = 40) -> dict[str, Any]:
    """A real state: the live step's baseline after ``beats`` heartbeats (awkward floats included)."""
    state: dict[str, Any] = {}
    for i in range(beats):
        metrics = {"latency_ms_p95": 800.0 + i / 3, "error_rate": 0.01 * (1 + i % 7) / 3, "cpu_pct": 40.1 + i % 5,
                   "memory_pct": 50.0, "tokens_per_s": 12.5 + math.pi * i}  # fmt: skip
        state = live.step(live.Models(), "a-1", state, metrics, T0 + timedelta(seconds=30 * i), 30.0).state
    return state


def test_the_models_state_is_stored_as_one_json_string_and_reads_back_exactly() -> None:
    state = _ml_state()
    record = _record(ml=state)
    stored = agent_store.to_stored(record.to_doc())
    assert isinstance(stored["ml"], str)
    assert json.loads(stored["ml"]) == state
    back = agent_store.from_stored(stored)
    assert back.ml == state  # float64 values survive exactly (shortest repr round-trips)
    assert back == record


def test_a_document_written_when_the_state_was_a_map_still_loads() -> None:
    state = _ml_state()
    old = {**agent_store.to_stored(_record().to_doc()), "ml": state}  # the former encoding: a nested map
    assert agent_store.from_stored(old).ml == state
    assert agent_store.from_stored({**old, "ml": {}}).ml == {}
    missing = dict(old)
    del missing["ml"]
    assert agent_store.from_stored(missing).ml == {}


@pytest.mark.parametrize("stored", ["{}", {}, None])
def test_ml_state_reads_every_encoding(stored: Any) -> None:
    assert agent_store.ml_state(stored) == {}


class _Batch:
    def __init__(self) -> None:
        self.updates: list[dict[str, Any]] = []

    def update(self, ref: Any, fields: dict[str, Any], option: Any = None) -> None:
        self.updates.append(fields)

    def commit(self, **_: Any) -> list[Any]:
        return [type("Result", (), {"update_time": "t2"})()]


class _Client:
    def __init__(self) -> None:
        self.batch_ = _Batch()

    def batch(self) -> _Batch:
        return self.batch_

    def write_option(self, **_: Any) -> None:
        return None


def test_a_heartbeat_update_writes_the_state_as_a_string_and_caches_it_as_a_map(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    client = _Client()
    monkeypatch.setattr(agent_store.db, "client", lambda: client)
    monkeypatch.setattr(agent_store, "ref", lambda agent_id: None)
    state = _ml_state()
    snap = agent_store.Snapshot(_record(), "t1")
    agent_store.cache.drop("a-1")
    agent_store._commit("a-1", snap, Plan(changes={"heartbeats": 1, "ml": state}))
    (fields,) = client.batch_.updates
    assert fields == {"heartbeats": 1, "ml": agent_store.ml_json(state)}
    cached = agent_store.cache.get("a-1")
    assert cached is not None and cached.record.ml == state and cached.update_time == "t2"
    agent_store.cache.drop("a-1")


def test_reads_once_reads_each_agent_once_within_its_block(monkeypatch: pytest.MonkeyPatch) -> None:
    reads: list[str] = []

    def read(agent_id: str) -> Any:
        reads.append(agent_id)
        return None if agent_id == "gone" else agent_store.Snapshot(_record(agent_id=agent_id), None)

    monkeypatch.setattr(agent_store, "read", read)
    with agent_store.reads_once():
        assert agent_store.get("a1") is agent_store.get("a1")
        assert agent_store.get("gone") is None and agent_store.get("gone") is None
        agent_store.get("a2")
    assert reads == ["a1", "gone", "a2"]
    agent_store.get("a1")
    agent_store.get("a1")  # outside the block every get reads again
    assert reads == ["a1", "gone", "a2", "a1", "a1"]
