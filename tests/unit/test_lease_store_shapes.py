"""Lease state as stored (shared/store/leases.py and lease_reserve.py), without a Firestore server: reserve
fields and increments, the ledger's epoch documents, the reserve's increments for spend outside a lease, and
the writes of a grant's and a release's commit (an offline client records them)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from fleet_agent.contracts import CostBatch, CostRecord, LeaseUse
from google.api_core.datetime_helpers import DatetimeWithNanoseconds
from google.auth.credentials import AnonymousCredentials
from google.cloud import firestore
from google.cloud.firestore_v1 import DELETE_FIELD
from google.cloud.firestore_v1.types import document, write

from shared.domain.budgets import Limit
from shared.domain.leases import Amount, Config, Epoch, GrantPlan, Ledger, Spend, plan_grant
from shared.domain.leases import release as domain_release
from shared.domain.periods import Period, window
from shared.domain.pricing import Price, PriceTable
from shared.domain.usage import month_field, tally
from shared.store import db, lease_reserve
from shared.store.lease_reserve import _slot_of, outside_lease, remember, slot_field, writes
from shared.store.leases import Snapshot, _epoch_doc, _ledger_fields, commit_grant, parse, release, release_at

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


# -- unreserved epochs (begun while the tenant had no budget) ----------------------------------------------


def test_an_epoch_reserve_flag_round_trips_and_defaults_to_reserved() -> None:
    unreserved = replace(EPOCH, reserved=False)
    doc = _epoch_doc(unreserved)
    assert doc["reserved"] is False and _epoch_doc(EPOCH)["reserved"] is True
    assert parse("agent-1", {"epoch": doc}).epoch == unreserved
    del doc["reserved"]  # stored before the flag: its grants went into the reserve
    led = parse("agent-1", {"epoch": doc})
    assert led.epoch is not None and led.epoch.reserved is True


class _Client(firestore.Client):
    """Offline: a batch's commit records its writes and answers as Firestore would (zeros read back)."""

    def __init__(self) -> None:
        super().__init__(project="p", credentials=AnonymousCredentials())
        self.commits: list[list[Any]] = []

    def batch(self) -> Any:
        batch = super().batch()

        def commit(**_: Any) -> list[Any]:
            pbs = [type(w).pb(w) for w in batch._write_pbs]
            self.commits.append(pbs)
            stamp = DatetimeWithNanoseconds(2026, 12, 6, 11, 20, 1, tzinfo=UTC)
            zeros = [[document.Value(integer_value=0)] * len(w.update_transforms) for w in pbs]
            return [write.WriteResult(update_time=stamp, transform_results=z) for z in zeros]

        batch.commit = commit
        return batch


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[_Client]:
    client = _Client()
    monkeypatch.setattr(db, "client", lambda: client)
    lease_reserve.reserves.clear()
    yield client
    lease_reserve.reserves.clear()


def docs_of(pbs: list[Any]) -> list[str]:
    return [pb.update.name.rsplit("/", 1)[-1] for pb in pbs]


def plan(led: Ledger, tenant_limits: list[Limit], request: LeaseUse | None = None) -> GrantPlan:
    return plan_grant(
        led, now=T0, spend=Spend({p: Amount() for p in Period}), agent_limits=[], tenant_limits=tenant_limits,
        reserve={}, open_epochs=0, request=request, new_epoch_id="cccccccccccc", cfg=Config(),
    )  # fmt: skip


BUDGET = [Limit(Period.DAY, "usd", 100 * USD, None)]


def test_a_grant_without_a_budget_is_final_in_one_write_and_writes_no_reserve(fake: _Client) -> None:
    p = plan(Ledger("agent-1", "acme"), [])
    assert p.started and not p.epoch.reserved
    command = {"type": "lease", "lease_id": p.lease_id}
    after = commit_grant(Snapshot(Ledger("agent-1", "acme"), None), p, request_id="r1", grace_s=60, command=command)
    assert after is not None and after[0] == {}
    [pbs] = fake.commits
    assert docs_of(pbs) == ["a.agent-1"]  # the ledger alone: no reserve document
    fields = pbs[0].update.fields
    assert fields["last"].map_value.fields["lease_id"].string_value == p.lease_id
    assert fields["pending"].WhichOneof("value_type") == "null_value"
    assert fields["epoch"].map_value.fields["reserved"].boolean_value is False


def test_a_grant_with_a_budget_is_pending_and_adds_to_the_reserve(fake: _Client) -> None:
    p = plan(Ledger("agent-1", "acme"), BUDGET)
    assert p.started and p.epoch.reserved
    after = commit_grant(Snapshot(Ledger("agent-1", "acme"), None), p, request_id="r1", grace_s=60, command=None)
    assert after is not None
    [pbs] = fake.commits
    assert docs_of(pbs) == ["a.agent-1", "t.acme.2026-12"]
    assert pbs[0].update.fields["pending"].string_value == p.lease_id
    assert pbs[0].update.fields["last"].WhichOneof("value_type") == "null_value"
    paths = {t.field_path: t.increment.integer_value for t in pbs[1].update_transforms}
    assert paths["open"] == 1 and paths["d06.usd_nanos"] == p.want.usd_nanos


def test_release_writes_no_reserve_for_an_unreserved_epoch(fake: _Client) -> None:
    gone = replace(EPOCH, expires_at=T0 - timedelta(minutes=2), reserved=False)
    old = replace(PREVIOUS, reserved=True)
    snap = Snapshot(
        Ledger("agent-1", "acme", epoch=gone, previous=old), DatetimeWithNanoseconds(2026, 12, 6, tzinfo=UTC)
    )
    assert release(snap, [domain_release(gone, Amount(USD, 0))], T0, 60)
    assert docs_of(fake.commits[-1]) == ["a.agent-1"]  # its charge never went into the reserve: none comes out
    assert release(snap, [domain_release(gone, Amount()), domain_release(old, Amount(5, 0))], T0, 60)
    pbs = fake.commits[-1]
    assert docs_of(pbs) == ["a.agent-1", "t.acme.2026-12"]
    paths = {t.field_path: t.increment.integer_value for t in pbs[1].update_transforms}
    assert paths["open"] == -1 and paths["h0610.usd_nanos"] == -USD  # the reserved one alone: $1 + 5 less 5


def test_a_grant_without_a_budget_still_returns_a_reserved_previous_epoch(fake: _Client) -> None:
    live = replace(EPOCH, id="bbbbbbbbbbbb", started_at=T0 - timedelta(seconds=30), tokens_limited=False)
    older = replace(PREVIOUS, id="aaaaaaaaaaaa", expires_at=T0 - timedelta(seconds=20))
    led = Ledger("agent-1", "acme", epoch=live, previous=older)
    p = plan(led, [], LeaseUse(lease_id=None, request_id="request-0001"))  # a restart, the budget gone
    assert p.started and not p.epoch.reserved and p.released is not None and p.released.epoch.reserved
    assert p.adjust[(Period.HOUR, "2026-12-06T10")] == Amount(-USD - 5, -3)  # the domain returns it
    commit_grant(Snapshot(led, DatetimeWithNanoseconds(2026, 12, 6, tzinfo=UTC)), p, request_id="r1", grace_s=60,
                 command={"type": "lease", "lease_id": p.lease_id})  # fmt: skip
    [pbs] = fake.commits
    assert "t.acme.2026-12" in docs_of(pbs)
