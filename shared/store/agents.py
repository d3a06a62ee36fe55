"""The agents collection: optimistic read-decide-write with a per-instance cache.

A heartbeat costs one document read at most, and usually none: the instance keeps the agent
document it last wrote, computes the plan from it, and writes with a precondition on that
document's update time. If another writer got there first the precondition fails, the
document is read again and the plan recomputed. Decisions are therefore always made on the
document as it is at write time, without the three round trips of a transaction.

A refusal (``Rejected``) computed on the cached document is never final: it is decided again on a
fresh read, so a change made by another instance (a key rotation, a new enrollment) cannot refuse
events the stored document accepts. An acceptance needs no such care: its write carries the
precondition, so a change made since (a revocation) fails it and the decision is made again.
"""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from shared.domain.agent_record import AgentRecord, Plan
from shared.domain.rejections import Rejected
from shared.platform import metering, settings
from shared.store import audit, db, episodes
from shared.store import enrollment_tokens as token_store

AGENTS = "agents"
VERSIONS = "versions"
HISTORY = "history"
#: Skips that a stale cached document cannot get wrong: seq and registration event ids only grow.
_SAFE_FROM_CACHE = frozenset({"stale", "duplicate"})
#: Attempts at an optimistic write before giving up (and letting Pub/Sub redeliver).
MAX_ATTEMPTS = 8


@dataclass(frozen=True)
class Snapshot:
    record: AgentRecord
    update_time: Any  # the document's update time, the precondition of the next write
    #: When this instance read or wrote it (monotonic), for readers that accept only so much staleness.
    seen_at: float = field(default_factory=time.monotonic)


class _Cache:
    """Agent documents this instance last read or wrote, bounded (LRU)."""

    def __init__(self, size: int) -> None:
        self._items: OrderedDict[str, Snapshot] = OrderedDict()
        self._size = size
        self._lock = threading.Lock()

    def get(self, agent_id: str) -> Snapshot | None:
        with self._lock:
            snap = self._items.get(agent_id)
            if snap is not None:
                self._items.move_to_end(agent_id)
            return snap

    def put(self, agent_id: str, snap: Snapshot) -> None:
        with self._lock:
            self._items[agent_id] = snap
            self._items.move_to_end(agent_id)
            while len(self._items) > self._size:
                self._items.popitem(last=False)

    def drop(self, agent_id: str) -> None:
        with self._lock:
            self._items.pop(agent_id, None)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


cache = _Cache(settings.get().agent_cache_size)


def ref(agent_id: str) -> Any:
    return db.client().collection(AGENTS).document(agent_id)


def read(agent_id: str) -> Snapshot | None:
    """The agent as stored now (one read); also refreshes the cache."""
    data, update_time = db.get_fields(ref(agent_id))
    if data is None:
        cache.drop(agent_id)
        return None
    snap = Snapshot(from_stored(data), update_time)
    cache.put(agent_id, snap)
    return snap


def current(agent_id: str, max_age_s: float) -> Snapshot | None:
    """The agent as this instance last saw it, if no older than ``max_age_s``; else read again.

    For readers whose decisions depend on fields other instances change (budgets, holds): the cost
    function sees a budget changed through the API within ``max_age_s``.
    """
    snap = cache.get(agent_id)
    if snap is not None and time.monotonic() - snap.seen_at < max_age_s:
        return snap
    return read(agent_id)


class TokenConflict(RuntimeError):
    """An enrollment's write failed its precondition with a token use in it: the caller reads the token
    and the agent again and decides again (the agent's cached copy is dropped already)."""


def update(
    agent_id: str, decide: Callable[[AgentRecord | None], Plan], *, token: token_store.TokenSnapshot | None = None
) -> Plan:
    """Compute a plan from the current agent and write it atomically, retrying on conflicts.

    ``decide`` is pure and may be called more than once; it may raise ``Rejected`` (confirmed on a fresh
    read when made on the cached document). A plan's ``token_use`` is written in the same batch, on
    ``token`` as read; a conflict then raises :class:`TokenConflict`.
    """
    snap = cache.get(agent_id)
    from_cache = snap is not None
    if snap is None:
        snap = read(agent_id)
    for _attempt in range(MAX_ATTEMPTS):
        try:
            plan = decide(snap.record if snap else None)
        except Rejected:
            if not from_cache:
                raise
            snap, from_cache = read(agent_id), False
            continue
        if from_cache and not (plan.changes or plan.create or plan.sample) and plan.skipped not in _SAFE_FROM_CACHE:
            # Only the agent write carries the precondition: a plan without one must be made
            # on the document as stored, not on what this instance last saw.
            snap, from_cache = read(agent_id), False
            continue
        if plan.writes == 0:
            return plan
        try:
            _commit(agent_id, snap, plan, token)
            return plan
        except Exception as exc:
            if not db.is_conflict(exc):
                raise
            metering.count(conflicts=1)
            cache.drop(agent_id)
            if plan.token_use is not None:
                raise TokenConflict(f"agent {agent_id} or its enrollment token changed") from exc
            snap, from_cache = read(agent_id), False
    raise RuntimeError(f"agent {agent_id}: {MAX_ATTEMPTS} conflicting writes in a row")


def _commit(agent_id: str, snap: Snapshot | None, plan: Plan, token: token_store.TokenSnapshot | None = None) -> None:
    client = db.client()
    batch = client.batch()
    agent_ref = ref(agent_id)
    new_record: AgentRecord | None = None
    if plan.create is not None:
        batch.create(agent_ref, to_stored(plan.create.to_doc()))
        new_record = plan.create
    elif plan.changes or plan.sample:
        assert snap is not None, "an update needs the document it was computed from"
        fields = dict(plan.changes)
        cached = dict(plan.changes)
        if plan.sample is not None:
            slot, sample = plan.sample
            fields[f"recent.{slot}"] = _sample_json(sample)
            cached["recent"] = {**snap.record.recent, slot: sample}
        if "ml" in fields:
            fields["ml"] = ml_json(fields["ml"])
        batch.update(agent_ref, fields, option=client.write_option(last_update_time=snap.update_time))
        new_record = snap.record.model_copy(update=cached)
    if plan.version_doc is not None:
        batch.set(agent_ref.collection(VERSIONS).document(plan.version_doc["version"]), plan.version_doc)
    if plan.history_chunk is not None:
        chunk_slot, chunk = plan.history_chunk
        stored_chunk = {**chunk, "samples": [_sample_json(sample) for sample in chunk["samples"]]}
        batch.set(agent_ref.collection(HISTORY).document(f"{chunk_slot:05d}"), stored_chunk)
    if plan.token_use is not None:
        assert token is not None, "a token use needs the token it was computed from"
        token_store.add_use(batch, token, plan.token_use)
    for entry in plan.audit:
        audit.add(batch, entry)
    for write in plan.episodes:
        episodes.add_to(batch, write)
    results = batch.commit(**db.call_options())
    metering.count(writes=plan.writes)
    if new_record is not None:
        cache.put(agent_id, Snapshot(new_record, results[0].update_time))


# Heartbeat samples are stored as compact JSON strings in a map of slots (``recent.s00`` ...).
# As a Firestore map a sample is about 25 values, each a protobuf message built in Python; as a
# string it is one. Nothing queries inside a sample: readers (the API, the models) take them whole.
# A heartbeat writes only its own slot (field path ``recent.sNN``).
#
# The learned models' state (``ml``: the rolling baseline, the persistence runs, the failure trend
# window; about 3.4 KB and 200 values with both models in service) changes on every heartbeat and is
# stored the same way, as one JSON string: as a map it was re-encoded value by value into protobuf on
# every heartbeat (about a quarter of the function's time under load) and indexed value by value.
# Nothing queries inside it. Documents written when it was a map still load (``from_stored``).


def _sample_json(sample: dict[str, Any]) -> str:
    return json.dumps(sample, separators=(",", ":"))


def ml_json(state: dict[str, Any]) -> str:
    """The learned models' state as stored: compact JSON (floats round-trip exactly)."""
    return json.dumps(state, separators=(",", ":"))


def ml_state(stored: Any) -> dict[str, Any]:
    """The learned models' state from a stored agent document's ``ml``: a JSON string, or a map as
    documents written before it was a string hold it (or nothing)."""
    if isinstance(stored, str):
        state: dict[str, Any] = json.loads(stored)
        return state
    return dict(stored or {})


def _decoded(texts: Iterable[str]) -> list[dict[str, Any]]:
    """Samples as stored (compact JSON strings, in the ring and in history chunks) back as dicts."""
    return [json.loads(text) for text in texts]


def to_stored(doc: dict[str, Any]) -> dict[str, Any]:
    """An agent document as Firestore holds it (the samples and the models' state as JSON)."""
    recent = {slot: _sample_json(s) for slot, s in (doc.get("recent") or {}).items()}
    return {**doc, "recent": recent, "ml": ml_json(doc.get("ml") or {})}


def from_stored(data: dict[str, Any] | None) -> AgentRecord:
    data = dict(data or {})
    data["recent"] = {slot: json.loads(text) for slot, text in (data.get("recent") or {}).items()}
    data["ml"] = ml_state(data.get("ml"))
    return AgentRecord.model_validate(data)


#: Inside :func:`reads_once`, the agents ``get`` has read in this request (None: not read yet).
_read_once: ContextVar[dict[str, AgentRecord | None] | None] = ContextVar("agents_read_once", default=None)


@contextmanager
def reads_once() -> Iterator[None]:
    """Within this block, :func:`get` reads each agent at most once: a read-only view built from several
    API handlers (the console's agent page) pays one read of the agent, not one per handler."""
    token = _read_once.set({})
    try:
        yield
    finally:
        _read_once.reset(token)


def get(agent_id: str) -> AgentRecord | None:
    """The agent as stored now (one read, or none again inside :func:`reads_once`)."""
    seen = _read_once.get()
    if seen is not None and agent_id in seen:
        return seen[agent_id]
    snap = read(agent_id)
    record = snap.record if snap else None
    if seen is not None:
        seen[agent_id] = record
    return record


def history(agent_id: str, limit: int | None = None) -> list[dict[str, Any]]:
    """The agent's stored heartbeat samples, oldest first (chunks, then the unflushed tail); with ``limit``
    only the newest ``limit``, read from the newest chunks only (``chunk_no`` descending, a page of as many
    chunks as should hold the samples still missing, again while short). One read per chunk read."""
    agent = get(agent_id)
    if agent is None:
        return []
    collection = ref(agent_id).collection(HISTORY)
    docs: list[Any] = []
    if limit is None:
        docs = list(collection.stream(**db.call_options()))
        metering.count(reads=max(1, len(docs)))
    else:
        last: Any = None
        per_chunk = max(1, len(agent.recent))  # the ring holds one chunk's worth of samples
        short = limit - len([s for s in agent.samples if s["seq"] > agent.flushed_seq])
        while short > 0:
            want = -(-short // per_chunk)
            query = collection.order_by("chunk_no", direction="DESCENDING")
            page = list((query if last is None else query.start_after(last)).limit(want).stream(**db.call_options()))
            metering.count(reads=max(1, len(page)))
            docs += page
            short -= sum(len((d.to_dict() or {}).get("samples") or ()) for d in page)
            if len(page) < want:
                break
            last = page[-1]
    chunks = sorted((d.to_dict() or {} for d in docs), key=lambda c: c["chunk_no"])
    samples = _decoded(s for chunk in chunks for s in chunk["samples"])
    newest = samples[-1]["seq"] if samples else -1
    samples += [s for s in agent.samples if s["seq"] > newest]
    return samples if limit is None else samples[-limit:]


def list_agents(
    *, tenant: str | None, status: str | None, page_size: int, after: str | None
) -> tuple[list[AgentRecord], str | None]:
    """A page of agents ordered by id; returns the page and the id to continue after (or None)."""
    from google.cloud.firestore_v1.base_query import FieldFilter

    query: Any = db.client().collection(AGENTS)
    if tenant:
        query = query.where(filter=FieldFilter("tenant", "==", tenant))
    if status:
        query = query.where(filter=FieldFilter("status", "==", status))
    query = query.order_by("__name__")
    if after:
        query = query.start_after({"__name__": ref(after)})
    docs = list(query.limit(page_size + 1).stream())
    metering.count(reads=max(1, len(docs)))
    records = [from_stored(d.to_dict()) for d in docs[:page_size]]
    more = len(docs) > page_size
    return records, (records[-1].agent_id if more and records else None)


def _of_tenant(tenant: str, liveness: list[str] | None) -> Any:
    from google.cloud.firestore_v1.base_query import FieldFilter

    query: Any = db.client().collection(AGENTS).where(filter=FieldFilter("tenant", "==", tenant))
    if liveness:
        query = query.where(filter=FieldFilter("liveness", "in", liveness))
    return query


def count(tenant: str, liveness: list[str] | None = None) -> int:
    """How many agents the tenant has (with one of these liveness rungs): a count aggregation."""
    result = _of_tenant(tenant, liveness).count().get(**db.call_options())
    metering.count(reads=1)  # billed per 1,000 index entries read; a tenant is rarely larger
    return int(result[0][0].value)


def ids(tenant: str, liveness: list[str] | None = None, limit: int = 20) -> list[str]:
    docs = list(_of_tenant(tenant, liveness).limit(limit).stream(**db.call_options()))
    metering.count(reads=max(1, len(docs)))
    return [doc.id for doc in docs]


def each(tenant: str | None, page_size: int = 200) -> Iterator[AgentRecord]:
    """Every agent (of ``tenant``), by id, a page at a time (one read each)."""
    after: str | None = None
    while True:
        page, after = list_agents(tenant=tenant, status=None, page_size=page_size, after=after)
        yield from page
        if after is None:
            return


def fleet_history() -> dict[str, tuple[float, list[dict[str, Any]], str, list[Any]]]:
    """Every agent's stored heartbeat samples, for retraining: ``{agent_id: (interval, samples, agent_type,
    version times)}`` (samples unordered, possibly repeated; shared/ml/retrain.py orders them by ``seq``;
    version times: when each of its versions was first registered). One read per agent, per history chunk
    (a chunk holds ``FLEET_HISTORY_CHUNK`` heartbeats) and per version registered."""
    client = db.client()
    agents: dict[str, tuple[float, list[dict[str, Any]], str, list[Any]]] = {}
    for snap in client.collection(AGENTS).stream(**db.call_options()):
        metering.count(reads=1)
        data = snap.to_dict() or {}
        interval = float(data.get("heartbeat_interval_s") or 30)
        recent = _decoded((data.get("recent") or {}).values())
        agents[snap.id] = (interval, recent, str(data.get("agent_type") or ""), [])
    for snap in client.collection_group(HISTORY).stream(**db.call_options()):
        metering.count(reads=1)
        chunk = snap.to_dict() or {}
        owner = agents.get(str(chunk.get("agent_id")))
        if owner is not None:
            owner[1].extend(_decoded(chunk.get("samples") or ()))
    for snap in client.collection_group(VERSIONS).stream(**db.call_options()):
        metering.count(reads=1)
        parent = snap.reference.parent.parent  # agents/{id}/versions/{v}; the models' registry has its own
        seen = (snap.to_dict() or {}).get("first_seen_at")
        if parent is not None and parent.parent.id == AGENTS and parent.id in agents and seen is not None:
            agents[parent.id][3].append(seen)
    return agents
