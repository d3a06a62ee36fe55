"""Each tenant's lease reserve in Firestore (``leases/t.{tenant}.{YYYY-MM}``), by window like the usage
documents (``m``, ``dDD``, ``hDDHH``, each ``usd_nanos`` and ``tokens``), and ``open``: the epochs not yet
returned. Only ever incremented (a grant, a give-back, a return, spend outside a lease), so writers never
conflict, and each commit reads the totals back (shared/domain/leases.py ``kept``). The agents' ledgers,
in the same collection, are shared/store/leases.py's.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from shared.domain.leases import Amount, Slot
from shared.domain.periods import Period, window
from shared.domain.usage import Tally, month_field
from shared.platform import metering
from shared.store import db
from shared.store.increments import Increments

LEASES = "leases"
RESERVE_RETENTION = timedelta(days=400)


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


reserves = _Cache()


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


def writes(tenant: str, deltas: dict[Slot, Amount], open_by_month: dict[str, int]) -> list[Increments]:
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


def remember(docs: list[Increments], results: Iterable[Any]) -> dict[Slot, Amount]:
    """The reserve's totals read back from a commit, by slot; also kept for sizing later grants."""
    out: dict[Slot, Amount] = {}
    for write, result in zip(docs, results, strict=True):
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


def outside_lease(tenant: str, tally: Tally) -> list[Increments]:
    """The reserve's increments for spend counted outside a lease (no lease, an epoch already returned,
    failing open), made in the batch's own commit, so they happen exactly when it is counted."""
    deltas: dict[Slot, Amount] = {}
    for month, by_period in tally.windows.items():
        for period, wins in by_period.items():
            for win in wins:
                totals = tally.months[month][month_field(period, win)]
                amount = Amount(totals.usd_nanos, totals.tokens)
                deltas[(period, win.key)] = deltas.get((period, win.key), Amount()) + amount
    return writes(tenant, deltas, {})


def commit(docs: list[Increments]) -> list[Any]:
    """Commit increments of ``leases`` documents (reserves, ledgers) as one atomic batch."""
    batch = db.client().batch()
    batch._add_write_pbs([w.to_pb(_ref(w.doc_id)._document_path) for w in docs])
    results = batch.commit(**db.call_options())
    metering.count(writes=len(docs))
    return list(results)


def raise_reserve(tenant: str, now: datetime, spent: dict[Period, Amount]) -> None:
    """Bring the tenant's reserve up to its exact spend where it is below (spend before leases, or by
    agents without them while the tenant had no budget): when a budget is set. Only ever raises."""
    month = window(Period.MONTH, now).key
    key = reserve_id(tenant, month)
    reserves.put(key, None)
    current = reserve(tenant, now, 0).totals
    deltas = {
        (period, window(period, now).key): (spent[period] - current[period]).clamp()
        for period in Period
        if (spent[period] - current[period]).clamp() != Amount()
    }
    if deltas:
        commit(writes(tenant, deltas, {}))
        reserves.put(key, None)
