"""Spend counters in Firestore: one atomic write batch per cost batch, no read, no transaction.

Documents (collection ``usage``):

- ``a.{agent}.{YYYY-MM}``: the agent's month (``m``), days (``dDD``) and hours (``hDDHH``), each a
  map of counters, plus ``streak`` (failed calls in a row, for the breaker), and each day's counters
  per model (``xDD.<model>.<counter>``, :class:`ModelDay`; only non-zero counters are written; the
  priced calls per price source in ``xDD.<model>.src.<source>``);
- ``r.{agent}.{YYYY-MM-DDTHH}``: the agent's hour by minute (``n.MM``) and by operation (``o.op``,
  ``p.MM.op``), for the runaway and breaker rules; expires after a few days;
- ``t.{tenant}.{YYYY-MM}.{shard}``: one of N shards of the tenant's month, days and hours. An agent
  always writes the same shard (hash of its id), so no tenant document takes more than its share of
  the tenant's batches (Firestore sustains about one write per second per document).

A batch ``create``s ``cost_batches/{agent}.{batch}`` and increments the counters in the same atomic
commit: a redelivered batch fails with AlreadyExists and changes nothing. The commit's transform
results are the exact totals after the increments, which the rules compare with the deltas.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterable, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

from shared.domain.periods import Period, Window, window, windows
from shared.domain.usage import (
    SOURCES_FIELD,
    Applied,
    EpochSpend,
    EpochTag,
    Minute,
    ModelDay,
    Tally,
    Totals,
    model_day_field,
    month_field,
)
from shared.platform import metering
from shared.store import db
from shared.store.increments import Increments

USAGE = "usage"
MARKERS = "cost_batches"
#: Month documents are kept a bit over a year; hour documents a few days; markers as long as a
#: message can be redelivered or replayed.
MONTH_RETENTION = timedelta(days=400)
HOUR_RETENTION = timedelta(days=3)


def agent_month_id(agent_id: str, month: str) -> str:
    return f"a.{agent_id}.{month}"


def agent_hour_id(agent_id: str, hour: str) -> str:
    return f"r.{agent_id}.{hour}"


def tenant_shard_id(tenant: str, month: str, shard: int) -> str:
    return f"t.{tenant}.{month}.{shard:02d}"


def shard_of(agent_id: str, shards: int) -> int:
    return int(hashlib.sha256(agent_id.encode()).hexdigest()[:8], 16) % shards


def _ref(doc_id: str) -> Any:
    return db.client().collection(USAGE).document(doc_id)


def apply(
    tally: Tally, *, batch_id: str, received_at: datetime, shards: int, marker_retention: timedelta,
    extra: Sequence[Increments] = (), epoch: EpochTag | None = None,
) -> Applied:  # fmt: skip
    """Count a batch exactly once. Returns ``Applied(duplicate=True)`` when it was counted before.

    ``extra``: increments of other collections that must happen exactly when the batch is counted (the
    lease reserve, for spend outside a lease: shared/store/lease_reserve.py), in the same atomic commit.
    ``epoch``: the lease epoch the batch was spent under: its cost is added to the epoch's own counter,
    ``l.<epoch>`` in the agent's hour document of the batch's latest hour, with the largest ``over`` its
    batches reported (read back: ``Applied.epoch``)."""
    # lazy: the Google API client library, loaded on the first batch rather than at import (cold start)
    from google.api_core import exceptions

    client = db.client()
    batch = client.batch()
    agent_id, tenant = tally.agent_id, tally.tenant
    total = tally.total
    batch.create(
        client.collection(MARKERS).document(f"{agent_id}.{batch_id}"),
        {
            "agent_id": agent_id,
            "tenant": tenant,
            "batch_id": batch_id,
            "records": tally.records,
            "usd_nanos": total.usd_nanos,
            "received_at": received_at,
            "expire_at": received_at + marker_retention,
        },
    )
    writes: list[Increments] = []
    shard = shard_of(agent_id, shards)
    latest_month = max(tally.months)
    for month, fields_ in tally.months.items():
        starts = window(Period.MONTH, datetime.strptime(month, "%Y-%m").replace(tzinfo=UTC)).starts_at
        static = {"scope": "agent", "agent_id": agent_id, "tenant": tenant, "month": month}
        agent = Increments(agent_month_id(agent_id, month), {**static, "expire_at": starts + MONTH_RETENTION})
        tenant_doc = Increments(
            tenant_shard_id(tenant, month, shard),
            {
                "scope": "tenant",
                "tenant": tenant,
                "month": month,
                "shard": shard,
                "expire_at": starts + MONTH_RETENTION,
            },
        )
        for name, delta in fields_.items():
            # Every counter, zeros included (free: the write happens anyway), so that every total
            # read back is the real one, not a default.
            for counter, amount in delta.as_dict().items():
                agent.inc((name, counter), amount)
                tenant_doc.inc((name, counter), amount)
        if month == latest_month:
            if tally.all_failed:
                agent.inc(("streak",), tally.trailing_failures)
            else:
                agent.static["streak"] = tally.trailing_failures
        # Per model and day, in the agent's month document only, last (the read-back goes by path):
        # only the non-zero counters (``calls`` always is), a few transforms per model, no read back.
        for day, models in tally.models.get(month, {}).items():
            day_field = model_day_field(day)
            for model, counters in models.items():
                for counter, amount in counters.as_dict().items():
                    if amount:
                        agent.inc((day_field, model, counter), amount)
                for label, calls in counters.sources.items():  # what priced them (same write)
                    agent.inc((day_field, model, SOURCES_FIELD, label), calls)
        writes += [agent, tenant_doc]
    for hour, minutes in tally.minutes.items():
        hour_starts = datetime.strptime(hour, "%Y-%m-%dT%H").replace(tzinfo=UTC)
        recent = Increments(
            agent_hour_id(agent_id, hour),
            {"scope": "recent", "agent_id": agent_id, "tenant": tenant, "hour": hour,
             "expire_at": hour_starts + HOUR_RETENTION},
        )  # fmt: skip
        for minute, counts in minutes.items():
            recent.inc(("n", minute, "calls"), counts.calls)
            if counts.failures:
                recent.inc(("n", minute, "failures"), counts.failures)
        for op, count in tally.ops.get(hour, {}).items():
            recent.inc(("o", op), count)
        for minute, ops in tally.op_minutes.get(hour, {}).items():
            for op, count in ops.items():
                recent.inc(("p", minute, op), count)
        writes.append(recent)
    if epoch is not None:
        _count_epoch(writes, tally, epoch)
    # _add_write_pbs is how the client's own set() adds a write to a batch.
    batch._add_write_pbs([write.to_pb(_ref(write.doc_id)._document_path) for write in writes])
    batch._add_write_pbs([write.to_pb(_path(write)) for write in extra])
    try:
        results = batch.commit(**db.call_options())
    except exceptions.AlreadyExists:
        metering.count(conflicts=1)
        return Applied(duplicate=True)
    metering.count(writes=1 + len(writes) + len(extra))
    return _read_back(
        tally, writes, results[1 : 1 + len(writes)], streak_default=tally.trailing_failures,
        writes_count=1 + len(writes) + len(extra),
    )  # fmt: skip


def _count_epoch(writes: list[Increments], tally: Tally, epoch: EpochTag) -> None:
    """The batch's cost on its lease epoch's own counter, in the agent's document of the epoch's hour: one
    of the batch's hour documents, unless the agent's clock put every record in another hour (then one
    more write)."""
    doc_id = agent_hour_id(tally.agent_id, epoch.hour)
    target = next((w for w in writes if w.doc_id == doc_id), None)
    if target is None:
        hour_starts = datetime.strptime(epoch.hour, "%Y-%m-%dT%H").replace(tzinfo=UTC)
        target = Increments(
            doc_id,
            {"scope": "recent", "agent_id": tally.agent_id, "tenant": tally.tenant, "hour": epoch.hour,
             "expire_at": hour_starts + HOUR_RETENTION},
        )  # fmt: skip
        writes.append(target)
    total = tally.total
    target.inc(("l", epoch.epoch_id, "usd_nanos"), total.usd_nanos)
    target.inc(("l", epoch.epoch_id, "tokens"), total.tokens)
    target.maximum(("l", epoch.epoch_id, "over_nanos"), epoch.over_nanos)
    target.maximum(("l", epoch.epoch_id, "over_tokens"), epoch.over_tokens)


def _path(write: Increments) -> str:
    return str(db.client().collection(write.collection or USAGE).document(write.doc_id)._document_path)


def _read_back(
    tally: Tally, writes: list[Increments], results: list[Any], *, streak_default: int, writes_count: int
) -> Applied:
    out = Applied(writes=writes_count, streak=streak_default)
    for write, result in zip(writes, results, strict=True):
        values = write.results(result)
        if write.doc_id.startswith("r."):
            hour = write.doc_id.rsplit(".", 1)[-1]
            minutes = out.minutes.setdefault(hour, {})
            for minute in tally.minutes.get(hour, {}):
                minutes[minute] = Minute(
                    values.get(("n", minute, "calls"), 0), values.get(("n", minute, "failures"), 0)
                )
            out.op_hour[hour] = {op: values[("o", op)] for op in tally.ops.get(hour, {})}
            tagged = [path for path in values if path[0] == "l"]
            if tagged:
                name = tagged[0][1]
                out.epoch = EpochSpend(
                    hour, values[("l", name, "usd_nanos")], values[("l", name, "tokens")],
                    values[("l", name, "over_nanos")], values[("l", name, "over_tokens")],
                )  # fmt: skip
            out.op_minutes[hour] = {
                minute: {op: values[("p", minute, op)] for op in ops}
                for minute, ops in tally.op_minutes.get(hour, {}).items()
            }
            continue
        month = write.doc_id.split(".")[2]
        target = out.agent if write.doc_id.startswith("a.") else out.tenant_shard
        if write.doc_id.startswith("a.") and ("streak",) in values:
            out.streak = values[("streak",)]
        for period, wins in tally.windows.get(month, {}).items():
            for win in wins:
                name = month_field(period, win)
                delta = tally.months[month][name]
                after = Totals(**{c: values.get((name, c), 0) for c in Totals.names()})
                target[(period, win)] = (after, delta)
    return out


# -- reads -------------------------------------------------------------------------------------


def _period_totals(data: dict[str, Any], now: datetime) -> dict[Period, tuple[Window, Totals]]:
    out = {}
    for period, win in windows(now).items():
        out[period] = (win, Totals.from_dict(data.get(month_field(period, win))))
    return out


def agent_month(agent_id: str, month: str) -> dict[str, Any]:
    """The agent's month document (``a.{agent}.{YYYY-MM}``) as stored, {} when none: one read. Every
    single read of it goes through here (the batched form is :func:`agent_months`)."""
    doc = db.get(_ref(agent_month_id(agent_id, month)))
    return (doc.to_dict() or {}) if doc.exists else {}


def agent_periods(agent_id: str, now: datetime) -> dict[Period, tuple[Window, Totals]]:
    """The agent's current hour, day and month (one read)."""
    return _period_totals(agent_month(agent_id, window(Period.MONTH, now).key), now)


def epoch_spend(agent_id: str, epochs: Sequence[tuple[str, str]]) -> dict[str, tuple[int, int]]:
    """Lease epochs' own spend: (epoch id, its hour ``YYYY-MM-DDTHH``) -> (nano-dollars, tokens), from the
    agent's document of that hour (every batch of an epoch counts there). One read per distinct hour."""
    hours: dict[str, list[str]] = {}
    for epoch_id, hour in epochs:
        hours.setdefault(hour, []).append(epoch_id)
    out = {epoch_id: (0, 0) for epoch_id, _hour in epochs}
    if not hours:
        return out
    refs = [_ref(agent_hour_id(agent_id, h)) for h in hours]
    docs = list(db.client().get_all(refs, **db.call_options()))
    metering.count(reads=len(docs))
    for doc in docs:
        spent = (doc.to_dict() or {}).get("l", {}) if doc.exists else {}
        for epoch_id in hours.get(doc.id.rsplit(".", 1)[-1], []):
            counters = spent.get(epoch_id) or {}
            usd, tokens = out[epoch_id]
            out[epoch_id] = (usd + int(counters.get("usd_nanos") or 0), tokens + int(counters.get("tokens") or 0))
    return out


def agent_hours(agent_id: str, now: datetime) -> dict[datetime, int]:
    """Spend per hour (nano-dollars) this month: the cost-spike baseline (one read)."""
    month_win = window(Period.MONTH, now)
    data = agent_month(agent_id, month_win.key)
    out = {}
    for name, counters in data.items():
        if name.startswith("h") and len(name) == 5 and isinstance(counters, dict):
            hour = month_win.starts_at.replace(day=int(name[1:3]), hour=int(name[3:5]))
            out[hour] = int(counters.get("usd_nanos") or 0)
    return out


def day_models(data: Any) -> dict[str, ModelDay]:
    """One day's ``xDD`` map of a month document as counters per model."""
    if not isinstance(data, dict):
        return {}
    return {model: ModelDay.from_dict(counters) for model, counters in data.items() if isinstance(counters, dict)}


def agent_day_models(agent_id: str, day: date) -> dict[str, ModelDay]:
    """The agent's counters per model on one UTC day: model -> counters, {} when none (one read)."""
    return day_models(agent_month(agent_id, f"{day:%Y-%m}").get(model_day_field(f"{day:%d}")))


def agent_month_models(agent_id: str, month: str) -> dict[str, dict[str, ModelDay]]:
    """The agent's counters per day ("01".."31") and model in a month ("YYYY-MM"), days in order (one read)."""
    data = agent_month(agent_id, month)
    out = {}
    for name in sorted(data):
        if len(name) == 3 and name[0] == "x" and name[1:].isdigit() and isinstance(data[name], dict):
            out[name[1:]] = day_models(data[name])
    return out


def _shard_refs(tenant: str, month: str, shards: int, skip: Iterable[int] = ()) -> list[Any]:
    skipped = set(skip)
    return [_ref(tenant_shard_id(tenant, month, s)) for s in range(shards) if s not in skipped]


def tenant_month(tenant: str, month: str, shards: int, skip: Iterable[int] = ()) -> dict[str, Totals]:
    """The tenant's month document, summed over its shards (one read per shard): ``m``, ``dDD`` and
    ``hDDHH`` -> totals. Every read of a tenant's month goes through here."""
    docs = list(db.client().get_all(_shard_refs(tenant, month, shards, skip), **db.call_options()))
    metering.count(reads=len(docs))
    sums: dict[str, Totals] = {}
    for doc in docs:
        for name, counters in (doc.to_dict() or {} if doc.exists else {}).items():
            if isinstance(counters, dict) and (name == "m" or name[:1] in ("d", "h")):
                sums.setdefault(name, Totals()).add(Totals.from_dict(counters))
    return sums


def tenant_periods(tenant: str, now: datetime, shards: int) -> dict[Period, tuple[Window, Totals]]:
    """The tenant's current hour, day and month: the sum of its shards (one read per shard)."""
    sums = tenant_month(tenant, window(Period.MONTH, now).key, shards)
    return {period: (win, sums.get(month_field(period, win), Totals())) for period, win in windows(now).items()}


class _OtherShards:
    """Per instance: the tenant's shards other than the one this batch wrote, read at most every
    ``max_age_s``. Added to the exact totals of the written shard they estimate the tenant's total
    between reads; tenant alerts are deduplicated by id, so an estimate never raises one twice."""

    def __init__(self) -> None:
        self._items: dict[tuple[str, str, int], tuple[float, dict[str, Totals]]] = {}
        self._lock = threading.Lock()

    def get(self, tenant: str, month: str, shard: int, shards: int, max_age_s: float) -> dict[str, Totals]:
        key = (tenant, month, shard)
        with self._lock:
            cached = self._items.get(key)
        if cached is not None and time.monotonic() - cached[0] < max_age_s:
            return cached[1]
        sums = tenant_month(tenant, month, shards, skip=[shard])
        with self._lock:
            self._items[key] = (time.monotonic(), sums)
        return sums

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


other_shards = _OtherShards()


def other_shard_totals(
    tenant: str, months: Iterable[str], *, shards: int, max_age_s: float, agent_id: str
) -> dict[str, dict[str, Totals]]:
    """The tenant's shards other than the agent's, as last read (at most every ``max_age_s``), by month
    and field: added to the agent's shard's exact totals they estimate the tenant's (shared/domain/spend.py).
    Empty with one shard (the agent's shard is the tenant)."""
    if shards <= 1:
        return {}
    shard = shard_of(agent_id, shards)
    return {month: other_shards.get(tenant, month, shard, shards, max_age_s) for month in months}


#: Documents per batched read (``get_all``).
GET_ALL_CHUNK = 300


def agent_months(agent_ids: Sequence[str], month: str) -> dict[str, dict[str, Any]]:
    """The agents' month documents (``usage/a.{agent}.{month}``) by agent, batched: one read each."""
    client = db.client()
    out: dict[str, dict[str, Any]] = {}
    ids = list(agent_ids)
    for start in range(0, len(ids), GET_ALL_CHUNK):
        refs = [_ref(agent_month_id(a, month)) for a in ids[start : start + GET_ALL_CHUNK]]
        docs = list(client.get_all(refs, **db.call_options()))
        metering.count(reads=len(docs))
        for doc in docs:
            if doc.exists:
                data = doc.to_dict() or {}
                out[str(data.get("agent_id") or doc.id.split(".", 1)[1].rsplit(".", 1)[0])] = data
    return out
