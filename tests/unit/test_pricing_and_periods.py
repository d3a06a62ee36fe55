from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest
from fleet_agent.contracts import CostBatch, CostRecord
from pydantic import ValidationError

from shared.domain.periods import Period, window, windows
from shared.domain.pricing import Price, PriceTable, Source, price, to_nanos, to_usd

AT = datetime(2026, 12, 31, 23, 59, 59, tzinfo=UTC)


def record(**kw: object) -> CostRecord:
    data: dict[str, object] = dict(
        call_id="call-0001", at=AT, model="gpt-4o-2024-08-06", input_tokens=1000, output_tokens=200,
        success=True, latency_ms=900, operation="chat",
    )  # fmt: skip
    data.update(kw)
    return CostRecord.model_validate(data)


TABLE = PriceTable(
    prices={
        "gpt-4o": Price(Decimal("0.0000025"), Decimal("0.00001")),
        "gpt-4o-mini": Price(Decimal("1.5e-7"), Decimal("6e-7")),
    },
    tenant_prices={"acme": {"gpt-4o": Price(Decimal("0.000002"), Decimal("0.000008"))}},
)


def test_money_is_exact_in_nano_dollars() -> None:
    assert to_nanos(Decimal("0.1")) * 3 == to_nanos(Decimal("0.3"))
    assert to_usd(to_nanos(Decimal("12.345678901"))) == Decimal("12.345678901")


def test_reported_cost_wins() -> None:
    assert price(record(cost_usd="0.0042"), TABLE) == price(record(cost_usd=Decimal("0.0042")), TABLE)
    assert price(record(cost_usd="0.0042"), TABLE).nanos == 4_200_000


def test_table_price_by_longest_prefix_and_tenant_override() -> None:
    assert price(record(), TABLE).nanos == 2_500_000 + 2_000_000
    assert price(record(), TABLE).source is Source.TABLE
    assert price(record(model="gpt-4o-mini"), TABLE).nanos == 150_000 + 120_000
    assert price(record(), TABLE, tenant="acme").nanos == 2_000_000 + 1_600_000


@pytest.mark.parametrize("model", ["gpt-4o-2024-08-06", "gpt-4o-20240806", "gpt-4o-latest", "gpt-4o@v2", "gpt-4o-002"])
def test_dated_and_versioned_releases_take_the_models_price(model: str) -> None:
    assert price(record(model=model), TABLE).nanos == 2_500_000 + 2_000_000


@pytest.mark.parametrize("model", ["gpt-4o-audio", "gpt-4orca", "gpt-4o-mini-tts"])
def test_other_models_sharing_a_prefix_are_unpriced_not_mispriced(model: str) -> None:
    assert price(record(model=model), TABLE).unpriced


def test_tokens_without_price_or_cost_are_unpriced_not_free() -> None:
    priced = price(record(model="mystery-model"), TABLE)
    assert priced.unpriced and priced.nanos == 0
    assert price(record(model="mystery-model", input_tokens=0, output_tokens=0), TABLE).source is Source.FREE


@pytest.mark.parametrize(
    "bad",
    [{"input_tokens": -1}, {"output_tokens": 10**9}, {"cost_usd": "-0.01"}, {"cost_usd": "1e9"}, {"model": "a b"}],
)
def test_absurd_records_are_refused(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        record(**bad)


def test_a_batch_refuses_repeated_call_ids() -> None:
    with pytest.raises(ValidationError, match="call_id repeated"):
        CostBatch(agent_id="agent-1", batch_id="batch-0001", records=[record(), record()])


def test_periods_key_counters_and_say_when_they_reset() -> None:
    w = windows(AT)
    assert (w[Period.HOUR].key, w[Period.DAY].key, w[Period.MONTH].key) == ("2026-12-31T23", "2026-12-31", "2026-12")
    assert w[Period.HOUR].resets_at == datetime(2027, 1, 1, tzinfo=UTC)
    assert w[Period.MONTH].resets_at == datetime(2027, 1, 1, tzinfo=UTC)
    assert window(Period.MONTH, datetime(2026, 2, 10, tzinfo=UTC)).resets_at == datetime(2026, 3, 1, tzinfo=UTC)


def test_periods_are_utc_whatever_the_offset() -> None:
    local = datetime(2026, 12, 1, 0, 30, tzinfo=timezone(timedelta(hours=2)))
    assert window(Period.DAY, local).key == "2026-11-30"
