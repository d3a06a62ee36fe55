"""Lease state as stored (shared/store/leases.py), without Firestore: reserve fields, the ledger's epoch
document and the increments of spend outside a lease."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from fleet_agent.contracts import CostBatch, CostRecord

from shared.domain.leases import Amount, Epoch
from shared.domain.periods import Period, window
from shared.domain.pricing import Price, PriceTable
from shared.domain.usage import month_field, tally
from shared.store.leases import _epoch_doc, _slot_of, outside_lease, parse, slot_field

USD = 1_000_000_000
T0 = datetime(2026, 12, 6, 11, 20, tzinfo=UTC)
TABLE = PriceTable(prices={"gpt-4o": Price(Decimal("0.0000025"), Decimal("0.00001"))})


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


EPOCH = Epoch(
    id="aaaaaaaaaaaa", started_at=T0, expires_at=T0 + timedelta(minutes=5), seq=3,
    windows={Period.HOUR: "2026-12-06T11", Period.DAY: "2026-12-06", Period.MONTH: "2026-12"},
    base={Period.HOUR: Amount(1, 2), Period.DAY: Amount(3, 4), Period.MONTH: Amount(5, 6)},
    granted=Amount(2 * USD, 7), charged=Amount(3 * USD, 8), tokens_limited=True,
)  # fmt: skip


def test_an_epoch_reads_back_as_written() -> None:
    doc = _epoch_doc(EPOCH, grace_s=60)
    assert doc["release_at"] == EPOCH.expires_at + timedelta(seconds=60)
    assert doc["windows"] == {"hour": "2026-12-06T11", "day": "2026-12-06", "month": "2026-12"}
    led = parse("agent-1", {"tenant": "acme", "epoch": doc, "last": {"x": 1}, "answered": ["r1", "r2"]})
    assert led.epoch == EPOCH
    assert (led.agent_id, led.tenant, led.last, led.answered) == ("agent-1", "acme", {"x": 1}, ("r1", "r2"))


def test_naive_stored_times_read_as_utc() -> None:
    doc = _epoch_doc(EPOCH, grace_s=60)
    doc["started_at"], doc["expires_at"] = T0.replace(tzinfo=None), EPOCH.expires_at.replace(tzinfo=None)
    epoch = parse("agent-1", {"epoch": doc}).epoch
    assert epoch is not None and epoch.started_at == T0 and epoch.started_at.tzinfo is not None


@pytest.mark.parametrize(
    "data",
    [None, {}, {"epoch": None}, {"epoch": {"base": {"hour": {"usd_nanos": 5, "tokens": 1}}}}, {"last": {}}],
    ids=["no-document", "empty", "no-epoch", "only-base-increments", "empty-last"],
)
def test_a_ledger_without_an_epoch(data: dict[str, object] | None) -> None:
    led = parse("agent-1", data)
    assert led.epoch is None and led.last is None and led.answered == () and led.tenant == ""


def rec(n: int, at: datetime, cost: str) -> CostRecord:
    return CostRecord(
        call_id=f"call-{n:06d}", at=at, model="gpt-4o", input_tokens=10, output_tokens=5,
        cost_usd=Decimal(cost), success=True, latency_ms=1.0, operation="ask",
    )  # fmt: skip


def outside(*records: CostRecord, epoch: Epoch | None = EPOCH) -> dict[str, dict[tuple[str, ...], int]]:
    t = tally(CostBatch(agent_id="agent-1", batch_id="batch-0001", records=list(records)), "acme", TABLE)
    writes = outside_lease("acme", t, epoch, "agent-1")
    assert len({w.doc_id for w in writes}) == len(writes)
    return {w.doc_id: dict(zip(w.paths, w.amounts, strict=True)) for w in writes}


def test_spend_outside_a_lease_goes_to_the_reserve_and_the_open_epoch_base() -> None:
    late = datetime(2026, 12, 6, 10, 59, tzinfo=UTC)  # the hour before the epoch's
    incs = outside(rec(1, late, "0.25"), rec(2, T0, "0.5"))
    assert incs["t.acme.2026-12"] == {
        ("h0610", "usd_nanos"): USD // 4, ("h0610", "tokens"): 15,
        ("h0611", "usd_nanos"): USD // 2, ("h0611", "tokens"): 15,
        ("d06", "usd_nanos"): 3 * USD // 4, ("d06", "tokens"): 30,
        ("m", "usd_nanos"): 3 * USD // 4, ("m", "tokens"): 30,
    }  # fmt: skip
    assert incs["a.agent-1"] == {  # only the epoch's own windows: its hour is 11
        ("epoch", "base", "hour", "usd_nanos"): USD // 2, ("epoch", "base", "hour", "tokens"): 15,
        ("epoch", "base", "day", "usd_nanos"): 3 * USD // 4, ("epoch", "base", "day", "tokens"): 30,
        ("epoch", "base", "month", "usd_nanos"): 3 * USD // 4, ("epoch", "base", "month", "tokens"): 30,
    }  # fmt: skip


def test_spend_outside_a_lease_across_a_month_goes_to_each_month_reserve() -> None:
    first = replace(EPOCH, windows={Period.HOUR: "2026-12-01T00", Period.DAY: "2026-12-01", Period.MONTH: "2026-12"})
    nov, dec = datetime(2026, 11, 30, 23, 59, tzinfo=UTC), datetime(2026, 12, 1, 0, 1, tzinfo=UTC)
    incs = outside(rec(1, nov, "0.25"), rec(2, dec, "0.5"), epoch=first)
    assert set(incs) == {"t.acme.2026-11", "t.acme.2026-12", "a.agent-1"}
    assert incs["t.acme.2026-11"][("m", "usd_nanos")] == incs["t.acme.2026-11"][("h3023", "usd_nanos")] == USD // 4
    assert incs["t.acme.2026-12"][("m", "usd_nanos")] == incs["t.acme.2026-12"][("h0100", "usd_nanos")] == USD // 2
    assert {path[2]: n for path, n in incs["a.agent-1"].items() if path[3] == "usd_nanos"} == {
        "hour": USD // 2, "day": USD // 2, "month": USD // 2,
    }  # fmt: skip


def test_spend_outside_a_lease_without_an_open_epoch_touches_no_ledger() -> None:
    incs = outside(rec(1, T0, "0.5"), epoch=None)
    assert set(incs) == {"t.acme.2026-12"}


def test_spend_outside_a_lease_in_other_windows_than_the_epoch_leaves_its_base() -> None:
    incs = outside(rec(1, datetime(2026, 11, 30, 10, tzinfo=UTC), "0.5"))
    assert set(incs) == {"t.acme.2026-11"}
