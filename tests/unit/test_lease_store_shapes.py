"""Lease state as stored (shared/store/leases.py and lease_reserve.py), without Firestore: reserve fields
and increments, the ledger's epoch documents, and the reserve's increments for spend outside a lease."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from fleet_agent.contracts import CostBatch, CostRecord
from google.cloud.firestore_v1 import DELETE_FIELD
from google.cloud.firestore_v1.types import document, write

from shared.domain.leases import Amount, Epoch
from shared.domain.periods import Period, window
from shared.domain.pricing import Price, PriceTable
from shared.domain.usage import month_field, tally
from shared.store import lease_reserve
from shared.store.lease_reserve import _slot_of, outside_lease, remember, slot_field, writes
from shared.store.leases import _epoch_doc, _ledger_fields, parse, release_at

USD = 1_000_000_000
T0 = datetime(2026, 12, 6, 11, 20, tzinfo=UTC)
TABLE = PriceTable(prices={"gpt-4o": Price(Decimal("0.0000025"), Decimal("0.00001"))})
HOUR, DAY, MONTH = (Period.HOUR, "2026-12-06T11"), (Period.DAY, "2026-12-06"), (Period.MONTH, "2026-12")


@pytest.mark.parametrize(
    ("slot", "expected"),
    [
        ((Period.HOUR, "2026-12-06T11"), ("2026-12", "h0611")),
        ((Period.DAY, "2026-12-06"), ("2026-12", "d06")),
        ((Period.MONTH, "2026-12"), ("2026-12", "m")),
        ((Period.HOUR, "2027-01-31T00"), ("2027-01", "h3100")),
    ],
)
def test_slot_field_names_the_month_document_and_field(slot: tuple[Period, str], expected: tuple[str, str]) -> None:
    assert slot_field(slot) == expected


@pytest.mark.parametrize(
    "at",
    [T0, datetime(2026, 12, 31, 23, 59, 59, tzinfo=UTC), datetime(2028, 2, 29, 0, 0, tzinfo=UTC)],
)
def test_slot_fields_match_the_usage_fields_and_read_back_as_the_same_slot(at: datetime) -> None:
    for period in Period:
        win = window(period, at)
        month, name = slot_field((period, win.key))
        assert (month, name) == (window(Period.MONTH, at).key, month_field(period, win))
        assert _slot_of(month, name) == (period, win.key)


@pytest.mark.parametrize("name", ["open", "tenant", "month", "expire_at", "d6", "h061", "x06"])
def test_other_reserve_fields_are_no_slot(name: str) -> None:
    assert _slot_of("2026-12", name) is None


# -- the ledger's epochs ------------------------------------------------------------------------------

EPOCH = Epoch(
    id="aaaaaaaaaaaa", started_at=T0, expires_at=T0 + timedelta(minutes=5), seq=3,
    windows={Period.HOUR: "2026-12-06T11", Period.DAY: "2026-12-06", Period.MONTH: "2026-12"},
    granted=Amount(2 * USD, 7), charged=Amount(3 * USD, 8), tokens_limited=True, rate=Amount(41_666_666, 12),
)  # fmt: skip
PREVIOUS = Epoch(
    id="bbbbbbbbbbbb", started_at=T0 - timedelta(minutes=30), expires_at=T0 - timedelta(seconds=20), seq=9,
    windows={Period.HOUR: "2026-12-06T10", Period.DAY: "2026-12-06", Period.MONTH: "2026-12"},
    granted=Amount(USD, 0), charged=Amount(USD + 5, 3), tokens_limited=False,
)  # fmt: skip


def test_a_ledger_reads_back_as_written_with_its_previous_epoch_and_rates() -> None:
    doc, prev = _epoch_doc(EPOCH), _epoch_doc(PREVIOUS)
    assert doc["windows"] == {"hour": "2026-12-06T11", "day": "2026-12-06", "month": "2026-12"}
    assert doc["rate"] == {"usd_nanos": 41_666_666, "tokens": 12} and prev["rate"] == {"usd_nanos": 0, "tokens": 0}
    assert "base" not in doc and "release_at" not in doc
    data = {"tenant": "acme", "epoch": doc, "previous": prev, "last": {"x": 1}, "answered": ["r1", "r2"]}
    led = parse("agent-1", data)
    assert led.epoch == EPOCH and led.previous == PREVIOUS
    assert (led.agent_id, led.tenant, led.last, led.answered) == ("agent-1", "acme", {"x": 1}, ("r1", "r2"))
    assert parse("agent-1", {"previous": prev}).previous == PREVIOUS  # a previous epoch without an open one


def test_an_epoch_stored_before_rates_reads_with_no_rate() -> None:
    doc = _epoch_doc(EPOCH)
    del doc["rate"]
    led = parse("agent-1", {"epoch": doc})
    assert led.epoch is not None and led.epoch.rate == Amount()


def test_naive_stored_times_read_as_utc() -> None:
    doc = _epoch_doc(EPOCH)
    doc["started_at"], doc["expires_at"] = T0.replace(tzinfo=None), EPOCH.expires_at.replace(tzinfo=None)
    epoch = parse("agent-1", {"epoch": doc}).epoch
    assert epoch is not None and epoch.started_at == T0 and epoch.started_at.tzinfo is not None


@pytest.mark.parametrize(
    "data",
    [
        None, {}, {"epoch": None}, {"epoch": {"granted": {"usd_nanos": -5, "tokens": 0}}}, {"last": {}},
        {"previous": {"charged": {"usd_nanos": 5}}},
    ],
    ids=["no-document", "empty", "no-epoch", "only-give-back-increments", "empty-last", "previous-increments"],
)  # fmt: skip
def test_a_ledger_without_epochs(data: dict[str, object] | None) -> None:
    led = parse("agent-1", data)
    assert led.epoch is None and led.previous is None and led.last is None and led.answered == ()
    assert led.tenant == ""


def test_release_at_is_the_earlier_return_due() -> None:
    assert release_at(EPOCH, None, 60) == EPOCH.expires_at + timedelta(seconds=60)
    assert release_at(EPOCH, PREVIOUS, 60) == PREVIOUS.expires_at + timedelta(seconds=60)
    assert release_at(None, PREVIOUS, 30) == PREVIOUS.expires_at + timedelta(seconds=30)
    assert release_at(None, None, 60) is None


def test_ledger_fields_write_both_epochs_or_delete_them() -> None:
    both = _ledger_fields(EPOCH, PREVIOUS, 60)
    assert both == {
        "epoch": _epoch_doc(EPOCH), "previous": _epoch_doc(PREVIOUS),
        "release_at": PREVIOUS.expires_at + timedelta(seconds=60),
    }  # fmt: skip
    only_open = _ledger_fields(EPOCH, None, 60)
    assert only_open["previous"] is DELETE_FIELD and only_open["release_at"] == EPOCH.expires_at + timedelta(seconds=60)
    none = _ledger_fields(None, None, 60)
    assert none == {"epoch": DELETE_FIELD, "previous": DELETE_FIELD, "release_at": DELETE_FIELD}


# -- the reserve's increments ----------------------------------------------------------------------------


def as_map(docs: list[Any]) -> dict[str, dict[tuple[str, ...], int]]:
    assert len({w.doc_id for w in docs}) == len(docs)
    return {w.doc_id: dict(zip(w.paths, w.amounts, strict=True)) for w in docs}


def test_reserve_writes_add_each_slot_and_the_open_epochs_by_month() -> None:
    nov_hour = (Period.HOUR, "2026-11-30T23")
    docs = writes("acme", {HOUR: Amount(5, 1), DAY: Amount(-2, 0), nov_hour: Amount(7, 0)}, {"2026-11": -1})
    assert as_map(docs) == {
        "t.acme.2026-12": {
            ("h0611", "usd_nanos"): 5, ("h0611", "tokens"): 1, ("d06", "usd_nanos"): -2, ("d06", "tokens"): 0,
        },
        "t.acme.2026-11": {("h3023", "usd_nanos"): 7, ("h3023", "tokens"): 0, ("open",): -1},
    }  # fmt: skip
    dec = next(d for d in docs if d.doc_id == "t.acme.2026-12")
    assert dec.collection == "leases" and dec.static["tenant"] == "acme" and dec.static["month"] == "2026-12"
    assert dec.static["expire_at"] == datetime(2026, 12, 1, tzinfo=UTC) + lease_reserve.RESERVE_RETENTION


def test_remember_reads_the_totals_back_by_slot_and_caches_them() -> None:
    lease_reserve.reserves.clear()
    docs = writes("acme", {HOUR: Amount(5, 1), MONTH: Amount(9, 2)}, {"2026-12": 1})
    result = write.WriteResult(
        transform_results=[document.Value(integer_value=v) for v in (105, 11, 909, 22, 4)]
    )  # the totals after the increments, in the order sent
    assert remember(docs, [result]) == {HOUR: Amount(105, 11), MONTH: Amount(909, 22)}
    cached = lease_reserve.reserve("acme", T0, max_age_s=60)
    assert cached.totals[Period.HOUR] == Amount(105, 11) and cached.totals[Period.MONTH] == Amount(909, 22)
    assert cached.open_epochs == 4 and cached.totals[Period.DAY] == Amount()
    lease_reserve.reserves.clear()


def rec(n: int, at: datetime, cost: str) -> CostRecord:
    return CostRecord(
        call_id=f"call-{n:06d}", at=at, model="gpt-4o", input_tokens=10, output_tokens=5,
        cost_usd=Decimal(cost), success=True, latency_ms=1.0, operation="ask",
    )  # fmt: skip


def outside(*records: CostRecord) -> dict[str, dict[tuple[str, ...], int]]:
    t = tally(CostBatch(agent_id="agent-1", batch_id="batch-0001", records=list(records)), "acme", TABLE)
    return as_map(outside_lease("acme", t))


def test_spend_outside_a_lease_goes_to_the_reserve_of_each_window_it_was_spent_in() -> None:
    late = datetime(2026, 12, 6, 10, 59, tzinfo=UTC)  # the hour before
    incs = outside(rec(1, late, "0.25"), rec(2, T0, "0.5"), rec(3, T0 + timedelta(minutes=1), "0.125"))
    assert incs == {
        "t.acme.2026-12": {
            ("h0610", "usd_nanos"): USD // 4, ("h0610", "tokens"): 15,
            ("h0611", "usd_nanos"): 5 * USD // 8, ("h0611", "tokens"): 30,
            ("d06", "usd_nanos"): 7 * USD // 8, ("d06", "tokens"): 45,
            ("m", "usd_nanos"): 7 * USD // 8, ("m", "tokens"): 45,
        },
    }  # fmt: skip


def test_spend_outside_a_lease_across_a_month_goes_to_each_month_reserve() -> None:
    nov, dec = datetime(2026, 11, 30, 23, 59, tzinfo=UTC), datetime(2026, 12, 1, 0, 1, tzinfo=UTC)
    incs = outside(rec(1, nov, "0.25"), rec(2, dec, "0.5"))
    assert set(incs) == {"t.acme.2026-11", "t.acme.2026-12"}
    assert incs["t.acme.2026-11"][("m", "usd_nanos")] == incs["t.acme.2026-11"][("h3023", "usd_nanos")] == USD // 4
    assert incs["t.acme.2026-11"][("d30", "usd_nanos")] == USD // 4
    assert incs["t.acme.2026-12"][("m", "usd_nanos")] == incs["t.acme.2026-12"][("h0100", "usd_nanos")] == USD // 2
    assert ("open",) not in incs["t.acme.2026-12"]  # spend outside a lease opens no epoch
