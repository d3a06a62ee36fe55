"""The pure cost rules: tallies, budget crossings, breaker, runaway, spikes, holds."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

from fleet_agent.contracts import BudgetSpec, CommandType, CostBatch, CostRecord

from shared.domain import budgets, holds, protection
from shared.domain.agent_record import AgentRecord
from shared.domain.budgets import Kind
from shared.domain.lifecycle import Cause, State
from shared.domain.periods import Period, window
from shared.domain.pricing import Price, PriceTable, format_usd, to_nanos
from shared.domain.usage import MAX_MODEL_DAYS_PER_BATCH, OTHER_MODELS, Minute, ModelDay, Totals, tally

T0 = datetime(2026, 11, 21, 22, 59, 30, tzinfo=UTC)
TABLE = PriceTable(prices={"gpt-4o": Price(Decimal("0.0000025"), Decimal("0.00001"))})


def rec(
    n: int, *, at: datetime = T0, cost: str | None = "0.01", ok: bool = True, op: str = "ask", **kw: Any
) -> CostRecord:
    return CostRecord(
        call_id=f"call-{n:06d}", at=at, model=kw.get("model", "gpt-4o"), input_tokens=kw.get("inp", 10),
        output_tokens=kw.get("out", 5), cost_usd=Decimal(cost) if cost else None, success=ok, latency_ms=1.0,
        operation=op,
    )  # fmt: skip


def test_tally_splits_a_batch_across_hours_days_and_months_by_each_call_time() -> None:
    late = datetime(2026, 11, 30, 23, 59, 59, tzinfo=UTC)
    early = datetime(2026, 12, 1, 0, 0, 1, tzinfo=UTC)
    t = tally(
        CostBatch(agent_id="agent-1", batch_id="batch-0001", records=[rec(1, at=late), rec(2, at=early)]), "acme", TABLE
    )
    assert set(t.months) == {"2026-11", "2026-12"}
    assert t.months["2026-11"]["m"].usd_nanos == to_nanos(Decimal("0.01"))
    assert t.months["2026-11"]["d30"].calls == 1 and t.months["2026-11"]["h3023"].calls == 1
    assert t.months["2026-12"]["h0100"].calls == 1
    assert t.total.calls == 2 and t.total.usd_nanos == 20_000_000


def test_tally_prices_from_the_table_and_flags_unpriced_models() -> None:
    t = tally(
        CostBatch(
            agent_id="agent-1",
            batch_id="batch-0001",
            records=[rec(1, cost=None, inp=1000, out=100), rec(2, cost=None, model="mystery", inp=5, out=5)],
        ),
        "acme",
        TABLE,
    )
    assert t.total.usd_nanos == to_nanos(Decimal("0.0035"))
    assert t.total.unpriced == 1 and t.unpriced_models == {"mystery"}
    assert t.sources == {"table": 1, "unpriced": 1}


def test_failure_streak_is_the_trailing_run_of_failures() -> None:
    records = [rec(1, ok=False), rec(2, at=T0 + timedelta(seconds=1)), rec(3, ok=False, at=T0 + timedelta(seconds=2))]
    t = tally(CostBatch(agent_id="agent-1", batch_id="batch-0001", records=records), "acme", TABLE)
    assert (t.trailing_failures, t.all_failed) == (1, False)
    t = tally(CostBatch(agent_id="agent-1", batch_id="batch-0002", records=[rec(1, ok=False)]), "acme", TABLE)
    assert (t.trailing_failures, t.all_failed) == (1, True)


def _totals(period: Period, after_usd: str, delta_usd: str) -> budgets.WindowTotals:
    return {
        (period, window(period, T0)): (
            Totals(usd_nanos=to_nanos(Decimal(after_usd))),
            Totals(usd_nanos=to_nanos(Decimal(delta_usd))),
        )
    }


def test_each_threshold_is_crossed_by_exactly_one_update() -> None:
    spec = BudgetSpec(daily_usd=Decimal("10"))
    steps = [("4", "4"), ("6", "2"), ("8.5", "2.5"), ("9", "0.5"), ("10", "1"), ("12", "2")]
    seen = []
    for after, delta in steps:
        for finding in budgets.crossings(spec, "agent", "a1", _totals(Period.DAY, after, delta)):
            seen.append((finding.kind, finding.ratio, after))
    assert seen == [
        (Kind.THRESHOLD, 0.5, "6"),
        (Kind.THRESHOLD, 0.8, "8.5"),
        (Kind.SOFT, None, "8.5"),
        (Kind.THRESHOLD, 1.0, "10"),
        (Kind.HARD, None, "10"),
    ]


def test_level_findings_include_earlier_crossings_and_ids_are_stable() -> None:
    spec = BudgetSpec(hourly_usd=Decimal("1"), soft_hourly_usd=Decimal("0.3"), alert_at=[0.9])
    found = budgets.reached(spec, "agent", "a1", _totals(Period.HOUR, "2", "0"))
    assert sorted(f.kind.value for f in found) == ["budget_exhausted", "budget_soft_limit", "budget_threshold"]
    again = budgets.reached(spec, "agent", "a1", _totals(Period.HOUR, "2", "0"))
    assert [f.alert_id for f in found] == [f.alert_id for f in again]
    assert found[-1].alert_id.endswith("hourly_usd.2026-11-21T22")


def test_token_limits_and_remaining() -> None:
    spec = BudgetSpec(monthly_tokens=1000)
    totals = {(Period.MONTH, window(Period.MONTH, T0)): (Totals(tokens=1200), Totals(tokens=300))}
    assert [f.kind for f in budgets.crossings(spec, "agent", "a1", totals)][-1] is Kind.HARD
    assert budgets.remaining(spec, Period.MONTH, "tokens", 1200) == (1000, 0)
    assert budgets.remaining(spec, Period.DAY, "tokens", 1200) == (None, None)


def test_format_usd_is_exact_and_never_exponent() -> None:
    assert format_usd(to_nanos(Decimal("10"))) == "10"
    assert format_usd(to_nanos(Decimal("0.000002"))) == "0.000002"
    assert format_usd(0) == "0"


RULES = protection.Protection()


def test_breaker_opens_on_a_streak_or_a_failure_rate() -> None:
    change = protection.breaker(RULES, None, streak=5, minutes={}, outcomes=[], received_at=T0)
    assert change is not None and change.action == "open" and change.cooldown_s == 60
    quiet = protection.breaker(RULES, None, streak=4, minutes={"22:59": Minute(19, 19)}, outcomes=[], received_at=T0)
    assert quiet is None
    change = protection.breaker(RULES, None, streak=0, minutes={"22:59": Minute(20, 10)}, outcomes=[], received_at=T0)
    assert change is not None and "10 of 20 calls failed" in change.reason


def test_half_open_trials_close_or_reopen_the_breaker_with_a_longer_cooldown() -> None:
    hold = {"until": T0, "cooldown_s": 60}
    early = T0 - timedelta(seconds=1)  # published before the cooldown ended: calls in flight
    assert protection.breaker(RULES, hold, streak=0, minutes={}, outcomes=[False], received_at=early) is None
    closed = protection.breaker(RULES, hold, streak=0, minutes={}, outcomes=[True], received_at=T0)
    assert closed is not None and closed.action == "close"
    reopened = protection.breaker(RULES, hold, streak=1, minutes={}, outcomes=[True, False], received_at=T0)
    assert reopened is not None and reopened.action == "open" and reopened.cooldown_s == 120


def test_runaway_on_calls_per_minute_or_an_operation_far_above_its_norm() -> None:
    assert protection.runaway(RULES, minutes={"05": Minute(1201, 0)}, op_minutes={}, op_hour={}) is not None
    quiet = protection.runaway(
        RULES, minutes={"30": Minute(190, 0)}, op_minutes={"30": {"ask": 190}}, op_hour={"ask": 790}
    )
    assert quiet is None  # 600 calls in the 30 minutes before: a norm of 20/min; 190 is under 10x
    loud = protection.runaway(
        RULES, minutes={"30": Minute(300, 0)}, op_minutes={"30": {"ask": 300}}, op_hour={"ask": 600}
    )
    assert loud is not None and "operation ask called 300 times" in loud
    new_op = protection.runaway(
        RULES, minutes={"30": Minute(300, 0)}, op_minutes={"30": {"new": 300}}, op_hour={"new": 300}
    )
    assert new_op is None  # no norm yet for an operation new this hour: only calls per minute apply


def test_cost_spike_fires_once_when_the_hour_passes_the_baseline() -> None:
    hours = {T0.replace(minute=0, second=0) - timedelta(hours=h): to_nanos(Decimal("1")) for h in range(1, 5)}
    base = protection.baseline(hours, T0, 24)
    assert base.hours == 4 and base.mean_nanos == to_nanos(Decimal("1"))
    assert protection.spike(RULES, base, before=to_nanos(Decimal("1.1")), after=to_nanos(Decimal("1.3"))) is not None
    assert protection.spike(RULES, base, before=to_nanos(Decimal("1.3")), after=to_nanos(Decimal("1.5"))) is None
    few = protection.Baseline(to_nanos(Decimal("1")), 2)
    assert protection.spike(RULES, few, before=0, after=to_nanos(Decimal("5"))) is None


def test_protection_layers_override_in_order() -> None:
    rules = protection.resolve({"breaker_cooldown_s": 30, "spike_pct": 50}, {"breaker_cooldown_s": 5})
    assert rules.breaker_cooldown_s == 5 and rules.spike_pct == 50 and rules.breaker_min_calls == 20


def agent(**kw: Any) -> AgentRecord:
    data: dict[str, Any] = dict(
        agent_id="agent-1", tenant="acme", name="A", agent_type="llm", version="1", owner="o",
        status=State.ACTIVE, status_since=T0, registered_at=T0, last_registered_at=T0,
    )  # fmt: skip
    data.update(kw)
    return AgentRecord(**data)


def test_a_budget_hold_suspends_once_and_lifting_it_reactivates() -> None:
    a = agent()
    plan = holds.place(a, "budget", reason="over", at=T0, key="budget.k1", actor="system", until=T0)
    assert plan.changes["status"] is State.SUSPENDED and plan.changes["status_hold"] == "budget"
    assert [c.command for c in plan.commands] == [CommandType.BUDGET_EXHAUSTED] and plan.commands[0].until == T0
    held = a.model_copy(update=plan.changes)
    assert holds.place(held, "budget", reason="over", at=T0, key="budget.k1", actor="s").skipped
    assert holds.expired(held, T0) == ["budget"]
    lifted = holds.lift(held, "budget", reason="reset", at=T0, actor="system")
    assert lifted.changes["status"] is State.ACTIVE and lifted.changes["holds"] == {}
    assert [c.command for c in lifted.commands] == [CommandType.BUDGET_RESTORED]


def test_lifting_one_of_two_budget_holds_keeps_the_agent_blocked() -> None:
    a = agent()
    for name in ("budget", "tenant_budget"):
        a = a.model_copy(update=holds.place(a, name, reason=name, at=T0, key=f"{name}.k1", actor="s").changes)
    assert a.status is State.SUSPENDED
    plan = holds.lift(a, "budget", reason="raised", at=T0, actor="api")
    assert "status" not in plan.changes and plan.changes["status_hold"] == "tenant_budget"
    assert plan.commands == []  # the agent stays blocked by its tenant's budget


def test_an_operator_pause_is_not_lifted_by_a_breaker_closing() -> None:
    a = agent()
    a = a.model_copy(
        update=holds.place(a, "pause", reason="p", at=T0, key="pause.k1", actor="u", cause=Cause.OPERATOR).changes
    )
    a = a.model_copy(update=holds.place(a, "breaker", reason="b", at=T0, key="breaker.k1", actor="s").changes)
    plan = holds.lift(a, "breaker", reason="ok", at=T0, actor="s")
    assert "status" not in plan.changes and [c.command for c in plan.commands] == [CommandType.BREAKER_CLOSED]


def test_command_ids_are_deterministic_and_fit_the_contract() -> None:
    one = holds.command_id("budget", "a" * 63, "daily_usd", "2026-11-21")
    assert one == holds.command_id("budget", "a" * 63, "daily_usd", "2026-11-21") and len(one) <= 64
    assert one != holds.command_id("budget", "a" * 63, "daily_usd", "2026-11-22")


def test_protection_overrides_mirror_every_threshold_with_its_bounds() -> None:
    defaults = protection.Protection.model_fields
    overrides = protection.ProtectionOverrides.model_fields
    assert set(defaults) == set(overrides)
    for name, info in defaults.items():
        assert info.metadata == overrides[name].metadata, name


def test_a_hold_placed_again_after_a_lift_gets_a_new_command_id() -> None:
    a = agent()
    first = holds.place(a, "budget", reason="over", at=T0, key="daily_usd.2026-11-21", actor="s", until=T0)
    a = a.model_copy(update=first.changes)
    a = a.model_copy(update=holds.lift(a, "budget", reason="raised", at=T0, actor="api").changes)
    again = holds.place(a, "budget", reason="over", at=T0, key="daily_usd.2026-11-21", actor="s", until=T0)
    # The SDK applies a command id once: reusing the first id would leave the agent unblocked.
    assert again.commands[0].command_id != first.commands[0].command_id


def test_two_holds_sharing_a_command_block_for_the_longer_of_the_two() -> None:
    a = agent()
    month_end = T0 + timedelta(days=9)
    a = a.model_copy(
        update=holds.place(a, "tenant_budget", reason="t", at=T0, key="m", actor="s", until=month_end).changes
    )
    plan = holds.place(a, "budget", reason="a", at=T0, key="h", actor="s", until=T0 + timedelta(minutes=1))
    assert plan.commands[0].until == month_end  # the SDK keeps one budget block: it must outlast both


def test_an_operator_transition_ends_the_hold_that_imposed_the_status() -> None:
    from shared.domain.agents import apply_transition

    a = agent()
    a = a.model_copy(update=holds.place(a, "budget", reason="b", at=T0, key="k", actor="s", until=T0).changes)
    moved = apply_transition(
        a, State.ACTIVE, cause=Cause.OPERATOR, actor="ann", reason="manual", at=T0, action_id="op-1"
    )
    assert moved.changes["status_hold"] is None


def test_a_batch_is_bounded_in_operations_and_time_span() -> None:
    import pytest
    from pydantic import ValidationError

    many_ops = [rec(i, op=f"op{i}") for i in range(51)]
    with pytest.raises(ValidationError, match="distinct operations"):
        CostBatch(agent_id="agent-1", batch_id="batch-0001", records=many_ops)
    spread = [rec(1), rec(2, at=T0 + timedelta(hours=1, seconds=1))]
    with pytest.raises(ValidationError, match="within"):
        CostBatch(agent_id="agent-1", batch_id="batch-0001", records=spread)
    with pytest.raises(ValidationError):
        CostRecord.model_validate({**rec(1).model_dump(), "input_tokens": True})


# -- per model and day ---------------------------------------------------------------------------

MODEL = "anthropic/claude-3.5-sonnet:beta"


def repeated(record: CostRecord) -> CostRecord:
    return record.model_copy(update={"repeat": True})


def test_tally_counts_each_model_per_utc_day_with_failed_and_repeat_costs() -> None:
    before, after = datetime(2026, 11, 21, 23, 59, 50, tzinfo=UTC), datetime(2026, 11, 22, 0, 0, 10, tzinfo=UTC)
    records = [
        rec(1, at=before, cost="0.01"),
        repeated(rec(2, at=before, cost="0.01")),
        rec(3, at=before, cost="0.02", ok=False),
        rec(4, at=before, cost=None, model="gpt-4o", inp=1000, out=100),  # priced from the table: $0.0035
        rec(5, at=before, cost="0.5", model=MODEL, inp=7, out=3),
        repeated(rec(6, at=after, cost="0.03", ok=False)),  # the next UTC day
        rec(7, at=after.astimezone(timezone(timedelta(hours=-5))), cost="0.04", model=MODEL),  # same instant
    ]
    t = tally(CostBatch(agent_id="agent-1", batch_id="batch-0001", records=records), "acme", TABLE)
    nanos = to_nanos
    assert set(t.models) == {"2026-11"} and set(t.models["2026-11"]) == {"21", "22"}
    day21, day22 = t.models["2026-11"]["21"], t.models["2026-11"]["22"]
    assert day21["gpt-4o"] == ModelDay(
        calls=4, failures=1, input_tokens=1030, output_tokens=115,
        usd_nanos=nanos(Decimal("0.0435")), failed_usd_nanos=nanos(Decimal("0.02")),
        repeats=1, repeat_usd_nanos=nanos(Decimal("0.01")), sources={"agent": 3, "override:fleet": 1},
    )  # fmt: skip
    assert day21[MODEL] == ModelDay(
        calls=1, input_tokens=7, output_tokens=3, usd_nanos=nanos(Decimal("0.5")), sources={"agent": 1}
    )
    assert day22["gpt-4o"].as_dict() == {
        "calls": 1, "failures": 1, "input_tokens": 10, "output_tokens": 5, "usd_nanos": nanos(Decimal("0.03")),
        "failed_usd_nanos": nanos(Decimal("0.03")), "repeats": 1, "repeat_usd_nanos": nanos(Decimal("0.03")),
    }  # fmt: skip
    assert day22[MODEL].calls == 1 and day22[MODEL].usd_nanos == nanos(Decimal("0.04"))
    # The per-model counters add up to the day's totals.
    for day, models in t.models["2026-11"].items():
        summed = ModelDay()
        for counters in models.values():
            summed.add(counters)
        totals = t.months["2026-11"][f"d{day}"]
        assert (summed.calls, summed.usd_nanos, summed.failures) == (totals.calls, totals.usd_nanos, totals.failures)
    assert ModelDay.from_dict({**day21["gpt-4o"].as_dict(), "src": day21["gpt-4o"].sources}) == day21["gpt-4o"]
    assert ModelDay.from_dict({"calls": 2}) == ModelDay(calls=2) and ModelDay.from_dict(None) == ModelDay()


def test_tally_splits_model_days_across_months() -> None:
    late, early = datetime(2026, 11, 30, 23, 59, 59, tzinfo=UTC), datetime(2026, 12, 1, 0, 0, 1, tzinfo=UTC)
    t = tally(
        CostBatch(agent_id="agent-1", batch_id="batch-0001", records=[rec(1, at=late), rec(2, at=early)]), "acme", TABLE
    )
    assert {m: {d: list(x) for d, x in days.items()} for m, days in t.models.items()} == {
        "2026-11": {"30": ["gpt-4o"]},
        "2026-12": {"01": ["gpt-4o"]},
    }


def test_a_batch_of_many_models_keeps_the_most_expensive_and_sums_the_rest() -> None:
    records = [rec(i, cost=f"0.{i:03d}", model=f"model-{i}") for i in range(1, 61)]
    t = tally(CostBatch(agent_id="agent-1", batch_id="batch-0001", records=records), "acme", TABLE)
    day = t.models["2026-11"]["21"]
    assert len(day) == MAX_MODEL_DAYS_PER_BATCH
    assert "model-60" in day and "model-1" not in day
    assert day[OTHER_MODELS].calls == 60 - (MAX_MODEL_DAYS_PER_BATCH - 1)
    assert sum(m.usd_nanos for m in day.values()) == t.total.usd_nanos


class _FakeRef:
    def __init__(self, doc_id: str) -> None:
        self.doc_id = doc_id
        self._document_path = f"projects/p/databases/(default)/documents/usage/{doc_id}"


class _FakeBatch:
    """Stands in for a Firestore write batch: keeps the write protobufs, answers each increment
    with its own amount (the totals of documents that did not exist)."""

    def __init__(self) -> None:
        self.pbs: list[Any] = []

    def create(self, ref: Any, data: dict[str, Any]) -> None:
        pass

    def _add_write_pbs(self, pbs: list[Any]) -> None:
        self.pbs += pbs

    def commit(self, **_: Any) -> list[Any]:
        from google.cloud.firestore_v1.types import document, write

        results = [write.WriteResult()]  # the marker
        for pb in self.pbs:
            values = [document.Value(integer_value=t.increment.integer_value) for t in pb.update_transforms]
            results.append(write.WriteResult(transform_results=values))
        return results


class _FakeClient:
    def __init__(self) -> None:
        self.batches: list[_FakeBatch] = []

    def collection(self, name: str) -> Any:
        return type("Collection", (), {"document": staticmethod(_FakeRef)})()

    def batch(self) -> _FakeBatch:
        self.batches.append(_FakeBatch())
        return self.batches[-1]


def test_model_counters_go_to_the_agent_month_document_under_quoted_field_paths(monkeypatch: Any) -> None:
    from google.cloud.firestore_v1.field_path import FieldPath

    from shared.store import db
    from shared.store import usage as usage_store

    fake = _FakeClient()
    monkeypatch.setattr(db, "client", lambda: fake)
    records = [rec(1, cost="0.5", model=MODEL), repeated(rec(2, cost="0.5", model=MODEL)), rec(3, ok=False)]
    t = tally(CostBatch(agent_id="agent-1", batch_id="batch-0001", records=records), "acme", TABLE)
    applied = usage_store.apply(t, batch_id="batch-0001", received_at=T0, shards=8, marker_retention=timedelta(days=8))
    by_doc = {pb.update.name.rsplit("/", 1)[-1]: pb for pb in fake.batches[0].pbs}
    assert set(by_doc) == {"a.agent-1.2026-11", f"t.acme.2026-11.{usage_store.shard_of('agent-1', 8):02d}",
                           "r.agent-1.2026-11-21T22"}  # fmt: skip
    month_paths = [t.field_path for t in by_doc["a.agent-1.2026-11"].update_transforms]
    assert f"x21.`{MODEL}`.calls" in month_paths
    models = {
        tuple(FieldPath.from_api_repr(p).parts): tr.increment.integer_value
        for tr in by_doc["a.agent-1.2026-11"].update_transforms
        if (p := tr.field_path).startswith("x")
    }
    assert models == {  # only the non-zero counters are written
        ("x21", MODEL, "calls"): 2, ("x21", MODEL, "input_tokens"): 20, ("x21", MODEL, "output_tokens"): 10,
        ("x21", MODEL, "usd_nanos"): to_nanos(Decimal("1")), ("x21", MODEL, "repeats"): 1,
        ("x21", MODEL, "repeat_usd_nanos"): to_nanos(Decimal("0.5")),
        ("x21", "gpt-4o", "calls"): 1, ("x21", "gpt-4o", "failures"): 1, ("x21", "gpt-4o", "input_tokens"): 10,
        ("x21", "gpt-4o", "output_tokens"): 5, ("x21", "gpt-4o", "usd_nanos"): to_nanos(Decimal("0.01")),
        ("x21", "gpt-4o", "failed_usd_nanos"): to_nanos(Decimal("0.01")),
        # what priced them: the agent's own cost (shared/domain/pricing.py), in the same write
        ("x21", MODEL, "src", "agent"): 2, ("x21", "gpt-4o", "src", "agent"): 1,
    }  # fmt: skip
    for doc_id, pb in by_doc.items():
        if not doc_id.startswith("a."):
            assert not any(tr.field_path.startswith("x") for tr in pb.update_transforms)
    # The totals read back from the commit are still the period totals, not shifted by the new transforms.
    (day_after, day_delta) = applied.agent[(Period.DAY, window(Period.DAY, T0))]
    assert day_after == day_delta == t.months["2026-11"]["d21"] and day_after.calls == 3
    assert applied.streak == 1 and applied.writes == 4


def test_the_readers_parse_the_per_model_maps(monkeypatch: Any) -> None:
    from datetime import date

    from shared.store import db
    from shared.store import usage as usage_store

    stored = {
        "m": {"calls": 3},
        "x21": {MODEL: {"calls": 2, "usd_nanos": 7}, "gpt-4o": {"calls": 1, "failures": 1}},
        "x03": {"gpt-4o": {"calls": 5, "repeats": 2}},
        "d21": {"calls": 3},
    }
    read: list[str] = []

    class Doc:
        exists = True

        def to_dict(self) -> dict[str, Any]:
            return stored

    def get(ref: Any) -> Doc:
        read.append(ref.doc_id)
        return Doc()

    monkeypatch.setattr(db, "client", _FakeClient)
    monkeypatch.setattr(db, "get", get)
    assert usage_store.agent_day_models("agent-1", date(2026, 11, 21)) == {
        MODEL: ModelDay(calls=2, usd_nanos=7),
        "gpt-4o": ModelDay(calls=1, failures=1),
    }
    assert usage_store.agent_day_models("agent-1", date(2026, 11, 22)) == {}
    month = usage_store.agent_month_models("agent-1", "2026-11")
    assert list(month) == ["03", "21"] and month["03"]["gpt-4o"] == ModelDay(calls=5, repeats=2)
    assert read == ["a.agent-1.2026-11"] * 3
