"""Lease state in Firestore (collection ``leases``): each agent's ledger and each tenant's reserve.

- ``a.{agent}``: the agent's ledger (shared/domain/leases.py ``Ledger``): its open epoch, the latest grant
  as sent, the requests answered lately, and ``release_at`` (when the open epoch's unspent charge returns
  to the pool: the sweep finds it with a single-field range query, no composite index).
- ``t.{tenant}.{YYYY-MM}``: the tenant's reserve for a month, by window like the usage documents (``m``,
  ``dDD``, ``hDDHH``, each ``usd_nanos`` and ``tokens``), and ``open``: the epochs open in it.

A grant is one atomic commit: the ledger (with a precondition on the version it was planned from, so two
grants of one agent never both count) and the reserve's increments, whose totals come back with it. A
grant that the reserve cannot hold gives the excess back in a second commit; a crash between the two
leaves the excess reserved only until the epoch ends, when its whole unspent charge returns.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from shared.domain.leases import Amount, Epoch, GrantPlan, Ledger, Release, Slot
from shared.domain.periods import Period, Window, window
from shared.domain.usage import Tally, month_field
from shared.platform import metering
from shared.store import db
from shared.store.increments import Increments

LEASES = "leases"
RESERVE_RETENTION = timedelta(days=400)
#: Request ids a ledger remembers (a redelivered request is answered with the same lease).
ANSWERED = 8


def ledger_id(agent_id: str) -> str:
    return f"a.{agent_id}"


def reserve_id(tenant: str, month: str) -> str:
    return f"t.{tenant}.{month}"


def _ref(doc_id: str) -> Any:
    return db.client().collection(LEASES).document(doc_id)


def slot_field(slot: Slot) -> tuple[str, str]:
    """A reserve slot's month document and field: (hour, ``2026-12-06T11``) -> (``2026-12``, ``h0611``)."""
    period, key = slot
    if period is Period.MONTH:
        return key, "m"
    if period is Period.DAY:
        return key[:7], f"d{key[8:10]}"
    return key[:7], f"h{key[8:10]}{key[11:13]}"


# -- the ledger as stored ------------------------------------------------------------------------


def _epoch_doc(epoch: Epoch, grace_s: int) -> dict[str, Any]:
    return {
        "id": epoch.id,
        "started_at": epoch.started_at,
        "expires_at": epoch.expires_at,
        "release_at": epoch.release_at(grace_s),
        "seq": epoch.seq,
        "windows": {p.value: k for p, k in epoch.windows.items()},
        "base": {p.value: a.as_dict() for p, a in epoch.base.items()},
        "granted": epoch.granted.as_dict(),
        "charged": epoch.charged.as_dict(),
        "tokens_limited": epoch.tokens_limited,
    }


def _epoch(data: Any) -> Epoch | None:
    if not isinstance(data, dict) or not data.get("id"):
        return None  # none, or only the base increments of a batch that raced with the epoch's release
    return Epoch(
        id=str(data["id"]),
        started_at=_aware(data["started_at"]),
        expires_at=_aware(data["expires_at"]),
        seq=int(data.get("seq") or 0),
        windows={Period(p): str(k) for p, k in (data.get("windows") or {}).items()},
        base={Period(p): Amount.of(a) for p, a in (data.get("base") or {}).items()},
        granted=Amount.of(data.get("granted")),
        charged=Amount.of(data.get("charged")),
        tokens_limited=bool(data.get("tokens_limited")),
    )


def _aware(value: Any) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def parse(agent_id: str, data: dict[str, Any] | None) -> Ledger:
    data = data or {}
    return Ledger(
        agent_id=agent_id,
        tenant=str(data.get("tenant") or ""),
        epoch=_epoch(data.get("epoch")),
        last=data.get("last") or None,
        answered=tuple(data.get("answered") or ()),
    )


@dataclass(frozen=True)
class Snapshot:
    ledger: Ledger
    update_time: Any  # None: no document yet


def read(agent_id: str) -> Snapshot:
    """The agent's ledger, fresh (one read)."""
    doc = db.get(_ref(ledger_id(agent_id)))
    snap = Snapshot(parse(agent_id, doc.to_dict() if doc.exists else None), doc.update_time if doc.exists else None)
    ledgers.put(agent_id, snap.ledger)
    return snap


class _Cache:
    """Per instance: ledgers and reserves as last read or written, for ``max_age_s``."""

    def __init__(self) -> None:
        self._items: dict[str, tuple[float, Any]] = {}
        self._lock = threading.Lock()

    def get(self, key: str, max_age_s: float) -> Any:
        with self._lock:
            hit = self._items.get(key)
        return hit[1] if hit is not None and time.monotonic() - hit[0] < max_age_s else None

    def put(self, key: str, value: Any) -> None:
        with self._lock:
            if len(self._items) > 20_000:
                self._items.clear()
            self._items[key] = (time.monotonic(), value)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


ledgers = _Cache()
reserves = _Cache()


def cached(agent_id: str, max_age_s: float) -> Ledger:
    """The agent's ledger as this instance last saw it (at most ``max_age_s`` old), else read."""
    hit = ledgers.get(agent_id, max_age_s)
    return hit if hit is not None else read(agent_id).ledger


# -- the reserve -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reserve:
    """A tenant's reserve in the current windows, and the epochs open this month."""

    totals: dict[Period, Amount]
    open_epochs: int


def reserve(tenant: str, now: datetime, max_age_s: float) -> Reserve:
    """The tenant's reserve as last read or written by this instance (for sizing a grant), else read."""
    month = window(Period.MONTH, now)
    key = reserve_id(tenant, month.key)
    hit = reserves.get(key, max_age_s)
    data = hit if hit is not None else _read_reserve(key)
    totals = {}
    for period in Period:
        win = window(period, now)
        totals[period] = Amount.of(data.get(month_field(period, win)))
    return Reserve(totals, int(data.get("open") or 0))


def _read_reserve(key: str) -> dict[str, Any]:
    doc = db.get(_ref(key))
    data = doc.to_dict() or {} if doc.exists else {}
    reserves.put(key, data)
    return data


def _reserve_writes(tenant: str, deltas: dict[Slot, Amount], open_by_month: dict[str, int]) -> list[Increments]:
    """Increments of the tenant's reserve documents: each slot's USD and tokens, and open epochs."""
    docs: dict[str, Increments] = {}

    def doc(month: str) -> Increments:
        if month not in docs:
            starts = datetime.strptime(month, "%Y-%m").replace(tzinfo=UTC)
            docs[month] = Increments(
                reserve_id(tenant, month),
                {"tenant": tenant, "month": month, "expire_at": starts + RESERVE_RETENTION},
                collection=LEASES,
            )
        return docs[month]

    for slot, amount in deltas.items():
        month, name = slot_field(slot)
        doc(month).inc((name, "usd_nanos"), amount.usd_nanos)
        doc(month).inc((name, "tokens"), amount.tokens)
    for month, change in open_by_month.items():
        doc(month).inc(("open",), change)
    return list(docs.values())


def _remember(writes: list[Increments], results: Iterable[Any]) -> dict[Slot, Amount]:
    """The reserve's totals read back from a commit, by slot; also kept for sizing later grants."""
    out: dict[Slot, Amount] = {}
    for write, result in zip(writes, results, strict=True):
        values = write.results(result)
        month = write.doc_id.rsplit(".", 1)[-1]
        cached_doc = dict(reserves.get(write.doc_id, 1e9) or {})
        for (name, *rest), value in values.items():
            if not rest:
                cached_doc[name] = value
                continue
            cached_doc.setdefault(name, {})
            cached_doc[name] = {**cached_doc[name], rest[0]: value}
        reserves.put(write.doc_id, cached_doc)
        for name, counters in cached_doc.items():
            slot = _slot_of(month, name)
            if slot is not None and isinstance(counters, dict):
                out[slot] = Amount.of(counters)
    return out


def _slot_of(month: str, name: str) -> Slot | None:
    if name == "m":
        return (Period.MONTH, month)
    if name.startswith("d") and len(name) == 3:
        return (Period.DAY, f"{month}-{name[1:]}")
    if name.startswith("h") and len(name) == 5:
        return (Period.HOUR, f"{month}-{name[1:3]}T{name[3:5]}")
    return None


def _month_of(epoch: Epoch) -> str:
    return epoch.windows[Period.MONTH]


# -- commits ---------------------------------------------------------------------------------------


def commit_grant(
    snap: Snapshot, plan: GrantPlan, *, command: dict[str, Any], request_id: str | None, grace_s: int
) -> dict[Slot, Amount] | None:
    """The grant's commit: the ledger (precondition: unchanged since ``snap``) and the reserve's
    increments. Returns the reserve's totals after it, or None when another grant got there first."""
    # lazy: the Google API client library, loaded on first use rather than at import (cold start)
    from google.api_core import exceptions

    ledger = snap.ledger
    answered = ([request_id] if request_id else []) + [r for r in ledger.answered if r != request_id]
    fields = {
        "agent_id": ledger.agent_id,
        "tenant": ledger.tenant,
        "epoch": _epoch_doc(plan.epoch, grace_s),
        "release_at": plan.epoch.release_at(grace_s),
        "last": command,
        "answered": answered[:ANSWERED],
    }
    opened: dict[str, int] = {}
    if plan.started:
        opened[_month_of(plan.epoch)] = opened.get(_month_of(plan.epoch), 0) + 1
    if plan.released is not None:
        month = _month_of(plan.released.epoch)
        opened[month] = opened.get(month, 0) - 1
    writes = _reserve_writes(ledger.tenant, plan.deltas(), opened)
    client = db.client()
    batch = client.batch()
    ref = _ref(ledger_id(ledger.agent_id))
    if snap.update_time is None:
        batch.create(ref, fields)
    else:
        batch.update(ref, fields, option=client.write_option(last_update_time=snap.update_time))
    batch._add_write_pbs([w.to_pb(_ref(w.doc_id)._document_path) for w in writes])
    try:
        results = batch.commit(**db.call_options())
    except (exceptions.FailedPrecondition, exceptions.AlreadyExists, exceptions.NotFound):
        metering.count(conflicts=1)
        return None
    metering.count(writes=1 + len(writes))
    ledgers.put(ledger.agent_id, parse(ledger.agent_id, fields))
    return _remember(writes, results[1:])


def give_back(ledger: Ledger, plan: GrantPlan, excess: Amount, *, command: dict[str, Any]) -> None:
    """Return what the reserve could not hold: the ledger's grant and charge and the reserve, together."""
    back = -excess
    own = Increments(ledger_id(ledger.agent_id), {"last": command}, collection=LEASES)
    for name in ("granted", "charged"):
        own.inc(("epoch", name, "usd_nanos"), back.usd_nanos)
        own.inc(("epoch", name, "tokens"), back.tokens)
    writes = [own, *_reserve_writes(ledger.tenant, {slot: back for slot in plan.epoch.slots()}, {})]
    _commit(writes)
    ledgers.put(ledger.agent_id, None)  # re-read next time


def release(snap: Snapshot, rel: Release) -> bool:
    """End the ledger's epoch (precondition: unchanged since ``snap``) and return its unspent charge."""
    # lazy: the Google API client library, loaded on first use rather than at import (cold start)
    from google.api_core import exceptions
    from google.cloud.firestore_v1 import DELETE_FIELD

    ledger = snap.ledger
    client = db.client()
    batch = client.batch()
    batch.update(
        _ref(ledger_id(ledger.agent_id)),
        {"epoch": DELETE_FIELD, "release_at": DELETE_FIELD},
        option=client.write_option(last_update_time=snap.update_time),
    )
    writes = _reserve_writes(ledger.tenant, rel.deltas(), {_month_of(rel.epoch): -1})
    batch._add_write_pbs([w.to_pb(_ref(w.doc_id)._document_path) for w in writes])
    try:
        results = batch.commit(**db.call_options())
    except (exceptions.FailedPrecondition, exceptions.NotFound):
        metering.count(conflicts=1)
        return False
    metering.count(writes=1 + len(writes))
    ledgers.put(ledger.agent_id, None)
    _remember(writes, results[1:])
    return True


def _commit(writes: list[Increments]) -> list[Any]:
    batch = db.client().batch()
    batch._add_write_pbs([w.to_pb(_ref(w.doc_id)._document_path) for w in writes])
    results = batch.commit(**db.call_options())
    metering.count(writes=len(writes))
    return list(results)


def due(now: datetime, limit: int = 200) -> list[Snapshot]:
    """Ledgers whose open epoch's unspent charge is due back (``release_at`` passed), oldest first."""
    query = db.client().collection(LEASES).where("release_at", "<=", now).order_by("release_at").limit(limit)
    docs = list(query.stream(**db.call_options()))
    metering.count(reads=max(1, len(docs)))
    out = []
    for doc in docs:
        agent_id = doc.id.split(".", 1)[1]
        out.append(Snapshot(parse(agent_id, doc.to_dict()), doc.update_time))
    return out


def outside_lease(tenant: str, tally: Tally, epoch: Epoch | None, agent_id: str) -> list[Increments]:
    """Increments for spend counted outside the agent's open epoch (no lease, an ended epoch's late
    batch, failing open): added to the tenant's reserve and to the open epoch's base (it is not the
    epoch's spend), in the batch's own commit, so they happen exactly when it is counted."""
    deltas: dict[Slot, Amount] = {}
    base: dict[Period, Amount] = {}
    for month, by_period in tally.windows.items():
        for period, wins in by_period.items():
            for win in wins:
                totals = tally.months[month][month_field(period, win)]
                amount = Amount(totals.usd_nanos, totals.tokens)
                deltas[(period, win.key)] = deltas.get((period, win.key), Amount()) + amount
                if epoch is not None and epoch.windows.get(period) == win.key:
                    base[period] = base.get(period, Amount()) + amount
    writes = _reserve_writes(tenant, deltas, {})
    if base:
        own = Increments(ledger_id(agent_id), {}, collection=LEASES)
        for period, amount in base.items():
            own.inc(("epoch", "base", period.value, "usd_nanos"), amount.usd_nanos)
            own.inc(("epoch", "base", period.value, "tokens"), amount.tokens)
        writes.append(own)
    return writes


def windows_of(epoch: Epoch) -> dict[Period, Window]:
    """The epoch's windows as :class:`Window` objects (from their keys)."""
    hour = datetime.strptime(epoch.windows[Period.HOUR], "%Y-%m-%dT%H").replace(tzinfo=UTC)
    return {period: window(period, hour) for period in Period}
