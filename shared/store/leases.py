"""Each agent's lease ledger in Firestore (``leases/a.{agent}``, shared/domain/leases.py ``Ledger``): its
open epoch, the previous one until its charge is returned, the latest grant as sent, the requests answered
lately, and ``release_at`` (when an epoch's unspent charge is due back: the minute tick finds it with a
single-field range query, no composite index). The tenants' reserves are shared/store/lease_reserve.py's.

A grant is two commits. The first writes the ledger (with a precondition on the version it was planned
from, so two grants of one agent never both count) and the reserve's increments, whose totals come back
with it; the second makes the grant final (``last``) and gives back what the reserve could not hold. A
crash between the two leaves the grant charged to its epoch, never sent, and returned when the epoch is.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from shared.domain.leases import Amount, Epoch, GrantPlan, Ledger, Release, Slot
from shared.domain.periods import Period
from shared.platform import metering
from shared.store import db
from shared.store import lease_reserve as reserve_store
from shared.store.increments import Increments
from shared.store.lease_reserve import LEASES, _Cache

#: Request ids a ledger remembers (a redelivered request is answered with the same lease).
ANSWERED = 8


def ledger_id(agent_id: str) -> str:
    return f"a.{agent_id}"


def _ref(doc_id: str) -> Any:
    return db.client().collection(LEASES).document(doc_id)


# -- the ledger as stored ------------------------------------------------------------------------


def _epoch_doc(epoch: Epoch) -> dict[str, Any]:
    return {
        "id": epoch.id,
        "started_at": epoch.started_at,
        "expires_at": epoch.expires_at,
        "seq": epoch.seq,
        "windows": {p.value: k for p, k in epoch.windows.items()},
        "granted": epoch.granted.as_dict(),
        "charged": epoch.charged.as_dict(),
        "tokens_limited": epoch.tokens_limited,
        "rate": epoch.rate.as_dict(),
        "reserved": epoch.reserved,
    }


def _epoch(data: Any) -> Epoch | None:
    if not isinstance(data, dict) or not data.get("id"):
        return None
    return Epoch(
        id=str(data["id"]),
        started_at=_aware(data["started_at"]),
        expires_at=_aware(data["expires_at"]),
        seq=int(data.get("seq") or 0),
        windows={Period(p): str(k) for p, k in (data.get("windows") or {}).items()},
        granted=Amount.of(data.get("granted")),
        charged=Amount.of(data.get("charged")),
        tokens_limited=bool(data.get("tokens_limited")),
        rate=Amount.of(data.get("rate")),
        reserved=bool(data.get("reserved", True)),
    )


def _aware(value: Any) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def parse(agent_id: str, data: dict[str, Any] | None) -> Ledger:
    data = data or {}
    return Ledger(
        agent_id=agent_id,
        tenant=str(data.get("tenant") or ""),
        epoch=_epoch(data.get("epoch")),
        previous=_epoch(data.get("previous")),
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


ledgers = _Cache()


def cached(agent_id: str, max_age_s: float) -> Ledger:
    """The agent's ledger as this instance last saw it (at most ``max_age_s`` old), else read."""
    hit = ledgers.get(agent_id, max_age_s)
    return hit if hit is not None else read(agent_id).ledger


def _month_of(epoch: Epoch) -> str:
    return epoch.windows[Period.MONTH]


# -- commits ---------------------------------------------------------------------------------------


def release_at(epoch: Epoch | None, previous: Epoch | None, grace_s: int) -> datetime | None:
    """When the ledger next has an epoch's charge to return: the earlier of its epochs' expiry + grace."""
    times = [e.release_at(grace_s) for e in (epoch, previous) if e is not None]
    return min(times) if times else None


def _ledger_fields(epoch: Epoch | None, previous: Epoch | None, grace_s: int) -> dict[str, Any]:
    # lazy: the Firestore client library, loaded on first use rather than at import (cold start)
    from google.cloud.firestore_v1 import DELETE_FIELD

    when = release_at(epoch, previous, grace_s)
    return {
        "epoch": _epoch_doc(epoch) if epoch is not None else DELETE_FIELD,
        "previous": _epoch_doc(previous) if previous is not None else DELETE_FIELD,
        "release_at": when if when is not None else DELETE_FIELD,
    }


def commit_grant(
    snap: Snapshot, plan: GrantPlan, *, request_id: str | None, grace_s: int, command: dict[str, Any] | None
) -> tuple[dict[Slot, Amount], Any] | None:
    """The grant's commit: the ledger (precondition: unchanged since ``snap``) and, for a tenant with a
    budget, the reserve's increments. Returns the reserve's totals after it and the ledger's new update
    time, or None when another grant got there first.

    With ``command`` (a tenant without a budget: nothing limits what is kept) the grant is final at once.
    Without, it is not final yet (``last`` cleared, ``pending`` set): :func:`finish` writes it as sent, with
    what the reserve could not hold given back. A crash between the two leaves the whole grant charged to
    the epoch (returned when it ends) and never sent."""
    # lazy: the Google API client library, loaded on first use rather than at import (cold start)
    from google.api_core import exceptions
    from google.cloud.firestore_v1 import DELETE_FIELD

    ledger = snap.ledger
    answered = ([request_id] if request_id else []) + [r for r in ledger.answered if r != request_id]
    fields = {
        "agent_id": ledger.agent_id,
        "tenant": ledger.tenant,
        **_ledger_fields(plan.epoch, plan.previous, grace_s),
        "last": command,
        "pending": None if command is not None else plan.lease_id,
        "answered": answered[:ANSWERED],
    }
    writes: list[Increments] = []
    opened: dict[str, int] = {}
    if plan.started and plan.epoch.reserved:
        opened[_month_of(plan.epoch)] = 1
    if plan.released is not None and plan.released.epoch.reserved:
        month = _month_of(plan.released.epoch)
        opened[month] = opened.get(month, 0) - 1
    if command is None:
        writes = reserve_store.writes(ledger.tenant, plan.deltas(), opened)
    elif opened or plan.adjust:  # no budget now, but an older epoch that was reserved is returned
        writes = reserve_store.writes(ledger.tenant, plan.adjust, opened)
    client = db.client()
    batch = client.batch()
    ref = _ref(ledger_id(ledger.agent_id))
    if snap.update_time is None:
        batch.create(ref, {k: v for k, v in fields.items() if v is not DELETE_FIELD})
    else:
        batch.update(ref, fields, option=client.write_option(last_update_time=snap.update_time))
    batch._add_write_pbs([w.to_pb(_ref(w.doc_id)._document_path) for w in writes])
    try:
        results = batch.commit(**db.call_options())
    except (exceptions.FailedPrecondition, exceptions.AlreadyExists, exceptions.NotFound):
        metering.count(conflicts=1)
        return None
    metering.count(writes=1 + len(writes))
    ledgers.put(ledger.agent_id, None)
    return reserve_store.remember(writes, results[1:]), results[0].update_time


def finish(ledger: Ledger, plan: GrantPlan, excess: Amount, *, command: dict[str, Any], update_time: Any) -> None:
    """Make the grant final (``last`` is the command as sent) and give back what the reserve could not hold
    (``excess``: from the epoch's grant and charge and from the reserve, in one commit). Conditional on
    the ledger as the grant left it; if another grant came between, the epoch is found where it now is
    (open, or previous) and only given back to, and nothing is given back once it has been returned (its
    whole charge was)."""
    # lazy: the Google API client library, loaded on first use rather than at import (cold start)
    from google.api_core import exceptions

    name: str | None = "epoch"
    final = True
    for _attempt in range(5):
        own = Increments(ledger_id(ledger.agent_id), {"last": command, "pending": None} if final else {},
                         collection=LEASES)  # fmt: skip
        own.unchanged_since = update_time
        writes = [own]
        if excess != Amount() and name is not None:
            back = -excess
            for counter in ("granted", "charged"):
                own.inc((name, counter, "usd_nanos"), back.usd_nanos)
                own.inc((name, counter, "tokens"), back.tokens)
            writes += reserve_store.writes(ledger.tenant, {slot: back for slot in plan.epoch.slots()}, {})
        if len(writes) == 1 and not final:
            return
        try:
            results = reserve_store.commit(writes)
        except (exceptions.FailedPrecondition, exceptions.NotFound):
            metering.count(conflicts=1)
            snap = read(ledger.agent_id)  # another grant came between: find the epoch where it is now
            update_time, final = snap.update_time, False
            now_open, before = snap.ledger.epoch, snap.ledger.previous
            name = "epoch" if now_open is not None and now_open.id == plan.epoch.id else None
            if name is None and before is not None and before.id == plan.epoch.id:
                name = "previous"
            continue
        ledgers.put(ledger.agent_id, None)
        reserve_store.remember(writes[1:], results[1:])
        return
    raise RuntimeError(f"lease {plan.lease_id}: its give-back kept conflicting")


def release(snap: Snapshot, releases: list[Release], now: datetime, grace_s: int) -> bool:
    """Return ended epochs' unspent charge (the ledger's previous, and its open epoch once expired), with
    a precondition: unchanged since ``snap``."""
    # lazy: the Google API client library, loaded on first use rather than at import (cold start)
    from google.api_core import exceptions

    ledger = snap.ledger
    gone = {r.epoch.id for r in releases}
    epoch = ledger.epoch if ledger.epoch is not None and ledger.epoch.id not in gone else None
    previous = ledger.previous if ledger.previous is not None and ledger.previous.id not in gone else None
    client = db.client()
    batch = client.batch()
    batch.update(
        _ref(ledger_id(ledger.agent_id)),
        _ledger_fields(epoch, previous, grace_s),
        option=client.write_option(last_update_time=snap.update_time),
    )
    deltas: dict[Slot, Amount] = {}
    opened: dict[str, int] = {}
    for rel in releases:
        if not rel.epoch.reserved:
            continue  # its grants never went into the reserve (the tenant had no budget)
        for slot, amount in rel.deltas().items():
            deltas[slot] = deltas.get(slot, Amount()) + amount
        opened[_month_of(rel.epoch)] = opened.get(_month_of(rel.epoch), 0) - 1
    writes = reserve_store.writes(ledger.tenant, deltas, opened)
    batch._add_write_pbs([w.to_pb(_ref(w.doc_id)._document_path) for w in writes])
    try:
        results = batch.commit(**db.call_options())
    except (exceptions.FailedPrecondition, exceptions.NotFound):
        metering.count(conflicts=1)
        return False
    metering.count(writes=1 + len(writes))
    ledgers.put(ledger.agent_id, None)
    reserve_store.remember(writes, results[1:])
    return True


def due(now: datetime, limit: int = 200) -> list[Snapshot]:
    """Ledgers with an epoch's charge due back (``release_at`` passed), oldest first."""
    # lazy: the Firestore client library, loaded on first use rather than at import (cold start)
    from google.cloud.firestore_v1.base_query import FieldFilter

    query = db.client().collection(LEASES).where(filter=FieldFilter("release_at", "<=", now))
    query = query.order_by("release_at").limit(limit)
    docs = list(query.stream(**db.call_options()))
    metering.count(reads=max(1, len(docs)))
    return [Snapshot(parse(doc.id.split(".", 1)[1], doc.to_dict()), doc.update_time) for doc in docs]
