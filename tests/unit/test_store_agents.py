"""The agent document as stored: the learned models' state is one JSON string, and documents written when it
was a map still load; the heartbeat's conditional update writes it as that string; reads_once; the history
read (all chunks, or only the newest ones a ``limit`` needs) and the history route's ``limit``."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta
from typing import Any

import flask
import pytest

from shared.api import agents as agents_api
from shared.api import router
from shared.domain.agent_record import AgentRecord, Plan
from shared.domain.api_keys import Role
from shared.ml import live
from shared.platform import metering
from shared.store import agents as agent_store
from shared.store import api_keys
from shared.store.api_keys import Principal

T0 = datetime(2026, 11, 1, tzinfo=UTC)
ADMIN = Principal("00000000000000aa", "admin", Role.ADMIN, None)


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


class _Chunk:
    def __init__(self, doc: dict[str, Any]) -> None:
        self.doc = doc

    def to_dict(self) -> dict[str, Any]:
        return self.doc


class _History:
    """An agent's ``history`` subcollection: ``order_by("chunk_no", DESCENDING)``, ``start_after``, ``limit``,
    ``stream``; records each query's limit and what it returned."""

    def __init__(self, chunks: list[dict[str, Any]]) -> None:
        self.chunks = chunks
        self.queries: list[tuple[int | None, int]] = []
        self._newest_first = False
        self._after: _Chunk | None = None
        self._limit: int | None = None

    def _with(self, **changes: Any) -> _History:
        query = _History(self.chunks)
        query.queries = self.queries
        query._newest_first, query._after, query._limit = self._newest_first, self._after, self._limit
        for name, value in changes.items():
            setattr(query, f"_{name}", value)
        return query

    def order_by(self, field: str, direction: str) -> _History:
        assert (field, direction) == ("chunk_no", "DESCENDING")
        return self._with(newest_first=True)

    def start_after(self, snapshot: _Chunk) -> _History:
        return self._with(after=snapshot)

    def limit(self, n: int) -> _History:
        return self._with(limit=n)

    def stream(self, **_: Any) -> list[_Chunk]:
        docs = sorted(self.chunks, key=lambda c: c["chunk_no"], reverse=self._newest_first)
        if self._after is not None:
            docs = [d for d in docs if d["chunk_no"] < self._after.doc["chunk_no"]]
        found = [_Chunk(d) for d in docs[: self._limit]]
        self.queries.append((self._limit, len(found)))
        return found


def _stored_history(chunks: int, per_chunk: int = 10, tail: int = 4) -> tuple[AgentRecord, _History]:
    """An agent with ``chunks`` full history chunks (seq 0...) and ``tail`` samples not yet flushed; its ring
    holds ``per_chunk`` slots (the last chunk's samples, then the tail's)."""

    def sample(seq: int) -> dict[str, Any]:
        return {"seq": seq, "at": (T0 + timedelta(seconds=30 * seq)).isoformat(), "status": "ok", "metrics": {}}

    stored = [
        {"chunk_no": n, "samples": [json.dumps(sample(n * per_chunk + i)) for i in range(per_chunk)]}
        for n in range(chunks)
    ]
    flushed = chunks * per_chunk - 1
    kept = range(max(0, flushed - per_chunk + 1), flushed + 1 + tail)
    ring = {f"s{seq % per_chunk:02d}": sample(seq) for seq in kept}  # the tail overwrites the oldest slots
    return _record(recent=ring, flushed_seq=flushed), _History(stored)


@pytest.fixture
def stored(monkeypatch: pytest.MonkeyPatch) -> Any:
    def install(chunks: int, tail: int = 4) -> _History:
        record, collection = _stored_history(chunks, tail=tail)
        monkeypatch.setattr(agent_store, "get", lambda agent_id: record)
        agent_ref = type("Ref", (), {"collection": lambda _, name: collection})()
        monkeypatch.setattr(agent_store, "ref", lambda agent_id: agent_ref)
        return collection

    return install


def test_history_with_a_limit_reads_only_the_newest_chunks(stored: Any) -> None:
    collection = stored(chunks=144)  # the FLEET_HISTORY_SLOTS default, full
    with metering.metered() as meter:
        samples = agent_store.history("a-1", 25)
    assert [s["seq"] for s in samples] == list(range(1444 - 25, 1444))  # the newest 25, oldest first
    assert collection.queries == [(3, 3)]  # 21 missing after the 4 unflushed: 3 chunks of 10, not 144
    assert meter.reads == 3


def test_history_with_a_limit_the_tail_holds_reads_no_chunk(stored: Any) -> None:
    collection = stored(chunks=5)
    with metering.metered() as meter:
        samples = agent_store.history("a-1", 3)
    assert [s["seq"] for s in samples] == [51, 52, 53] and collection.queries == [] and meter.reads == 0


def test_history_with_a_limit_stops_when_the_chunks_run_out(stored: Any) -> None:
    collection = stored(chunks=2)
    with metering.metered() as meter:
        samples = agent_store.history("a-1", 100)
    assert [s["seq"] for s in samples] == list(range(24))
    assert collection.queries == [(10, 2)] and meter.reads == 2


def test_history_with_a_limit_reads_again_while_short(stored: Any) -> None:
    """Chunks smaller than the ring (the chunk size was lowered): a second page of chunks, after the first."""
    collection = stored(chunks=6)
    for chunk in collection.chunks:
        chunk["samples"] = chunk["samples"][5:]  # 5 samples each now, the ring still holds 10
    with metering.metered() as meter:
        samples = agent_store.history("a-1", 14)
    assert [s["seq"] for s in samples] == [45, 46, 47, 48, 49, 55, 56, 57, 58, 59, 60, 61, 62, 63]
    assert collection.queries == [(1, 1), (1, 1)] and meter.reads == 2


def test_history_without_a_limit_reads_every_chunk(stored: Any) -> None:
    collection = stored(chunks=3)
    collection.order_by = None  # every chunk: no ordered query
    with metering.metered() as meter:
        samples = agent_store.history("a-1")
    assert [s["seq"] for s in samples] == list(range(34)) and meter.reads == 3


def _api(path: str, monkeypatch: pytest.MonkeyPatch, **query: str) -> tuple[int, Any, list[Any]]:
    """GET ``path`` from the REST API (an admin key), the agent store's history replaced: its calls."""
    asked: list[Any] = []

    def history(agent_id: str, limit: int | None = None) -> list[dict[str, Any]]:
        asked.append((agent_id, limit))
        return []

    monkeypatch.setattr(api_keys, "verify", lambda token: ADMIN if token == "admin-token" else None)
    monkeypatch.setattr(agent_store, "get", lambda agent_id: _record(agent_id=agent_id))
    monkeypatch.setattr(agent_store, "history", history)
    headers = {"Authorization": "Bearer admin-token"}
    with flask.Flask(__name__).test_request_context(path, headers=headers, query_string=query):
        response = router.handle(flask.request)
    return response.status_code, response.get_json(), asked


def test_the_history_route_passes_its_limit_to_the_store(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _api("/v1/agents/a-1/history", monkeypatch, limit="120")[::2] == (200, [("a-1", 120)])
    assert _api("/v1/agents/a-1/history", monkeypatch)[::2] == (200, [("a-1", None)])  # every sample
    for bad in ("0", "10001", "abc", "-3"):
        status, body, asked = _api("/v1/agents/a-1/history", monkeypatch, limit=bad)
        assert status == 400 and "limit" in body["error"]["reason"] and asked == []


def test_the_history_routes_limit_is_documented_in_openapi(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = _api("/openapi.json", monkeypatch)[1]
    params = spec["paths"]["/v1/agents/{agent_id}/history"]["get"]["parameters"]
    (limit,) = [p for p in params if p["name"] == "limit"]
    assert limit["in"] == "query" and limit["schema"]["maximum"] == agents_api.MAX_HISTORY
