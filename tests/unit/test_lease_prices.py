"""A lease's prices (review S2, N5): the ceiling a call is reserved at covers every part and tier; with the
price's parts (``ModelPrice.parts``, sent under ``FLEET_LEASE_PRICE_PARTS``) the SDK debits a call exactly
what the fleet counts; without them (an older fleet, or the setting off) at the ceiling. The message stays
compatible: a lease without parts validates in a newer SDK, and the fleet sends none by default, because an
older SDK refuses a lease with them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from fleet_agent.contracts import Command, CommandType, LeaseGrant, ModelPrice
from fleet_agent.costs import CostRecorder
from fleet_agent.lease_prices import LeasePrice
from fleet_agent.leases import LeaseWallet, Reservation
from fleet_agent.messages.fields import Strict
from fleet_agent.messages.leases import TokenPrice
from pydantic import ValidationError

from shared.domain.pricing import Price
from shared.platform import settings
from shared.services.lease_grants import model_price
from shared.store import price_catalog
from tests.unit.test_sdk_costs import Clock, FakePublisher

T0 = datetime(2026, 12, 6, 12, tzinfo=UTC)
M = Decimal(1_000_000)
#: Claude Sonnet 4.5's shape: cache reads at 0.1x, writes at 1.25x, and a tier above 200k input tokens.
CLAUDE = Price(Decimal(3) / M, Decimal(15) / M, Decimal("0.3") / M, Decimal("3.75") / M, tiers=(
    (200_000, Price(Decimal(6) / M, Decimal("22.5") / M, Decimal("0.6") / M, Decimal("7.5") / M)),))  # fmt: skip
#: An OpenAI reasoning model's shape: cache reads at 0.25x, reasoning at its own price.
O_SERIES = Price(Decimal("1.1") / M, Decimal("4.4") / M, Decimal("0.275") / M, None, Decimal(5) / M)
#: (input, output, cache read, cache write, reasoning)
USAGES = [(1000, 100, 0, 0, 0), (10_000, 500, 8_000, 1_000, 0), (250_000, 4_000, 200_000, 50_000, 0),
          (250_000, 4_000, 0, 0, 0), (3_000, 2_000, 1_000, 0, 1_500), (0, 0, 0, 0, 0)]  # fmt: skip


class OldModelPrice(Strict):
    """ModelPrice as SDKs before the parts define it."""

    input_usd: TokenPrice
    output_usd: TokenPrice


def test_the_fleet_sends_the_ceiling_and_the_parts_only_when_set_to() -> None:
    plain = model_price(CLAUDE, parts=False)
    assert (plain.input_usd, plain.output_usd, plain.parts) == (Decimal("7.5") / M, Decimal("22.5") / M, None)
    full = model_price(CLAUDE, parts=True)
    assert (full.input_usd, full.output_usd) == (plain.input_usd, plain.output_usd)
    assert full.parts is not None and full.parts.cache_write_usd == Decimal("3.75") / M
    assert [(t.above_input_tokens, t.input_usd) for t in full.parts.tiers] == [(200_000, Decimal(6) / M)]


@pytest.mark.parametrize(("value", "on"), [(None, False), ("on", True), ("true", True), ("off", False), ("0", False)])
def test_the_fleet_is_set_to_send_parts_with_fleet_lease_price_parts(
    monkeypatch: pytest.MonkeyPatch, value: str | None, on: bool
) -> None:
    if value is None:
        monkeypatch.delenv("FLEET_LEASE_PRICE_PARTS", raising=False)  # off by default: older SDKs refuse them
    else:
        monkeypatch.setenv("FLEET_LEASE_PRICE_PARTS", value)
    settings.get.cache_clear()
    try:
        assert settings.get().lease_price_parts is on
    finally:
        settings.get.cache_clear()


def test_a_lease_price_without_parts_is_what_older_sdks_accept_and_newer_sdks_read() -> None:
    old_wire = model_price(CLAUDE, parts=False).model_dump_json(exclude_none=True)
    assert OldModelPrice.model_validate_json(old_wire)  # an older SDK takes it
    assert ModelPrice.model_validate_json('{"input_usd": "0.0000075", "output_usd": "0.0000225"}').parts is None
    with pytest.raises(ValidationError):  # why the fleet sends parts only when set to
        OldModelPrice.model_validate_json(model_price(CLAUDE, parts=True).model_dump_json(exclude_none=True))
    new_wire = model_price(CLAUDE, parts=True).model_dump_json(exclude_none=True)
    assert ModelPrice.model_validate_json(new_wire) == model_price(CLAUDE, parts=True)


@pytest.mark.parametrize("name", ["claude", "o-series", "gemini-2.5-pro"])
def test_with_the_parts_the_sdk_debits_exactly_what_the_fleet_counts(name: str) -> None:
    if name == "gemini-2.5-pro":
        quote = price_catalog.catalog.quote(name, T0)
        assert quote is not None
        price = quote.price
    else:
        price = CLAUDE if name == "claude" else O_SERIES
    exact = LeasePrice.of(model_price(price, parts=True), 0.0)
    ceiling = LeasePrice.of(model_price(price, parts=False), 0.0)
    for usage in USAGES:
        counted = price.cost_nanos(*usage)
        assert exact.debit(usage) == counted, usage
        assert ceiling.debit(usage) >= counted, usage  # an older fleet's lease: never less
        assert exact.worst(usage[0], usage[1]) >= counted  # the reservation still covers it
    if name == "claude":  # an uncached short call: $3 per million, not the ceiling's tier-high $7.50
        assert exact.debit((1000, 0)) * 5 == ceiling.debit((1000, 0)) * 2


def test_usage_that_does_not_add_up_is_debited_at_the_ceiling() -> None:
    exact = LeasePrice.of(model_price(CLAUDE, parts=True), 0.0)
    assert exact.debit((100, 10, 200, 0, 0)) == exact.worst(100, 10)  # more cache reads than input
    assert exact.debit((100, 10, 0, 0, 20)) == exact.worst(100, 10)  # more reasoning than output


def test_the_wallet_reserves_the_ceiling_and_debits_the_parts() -> None:
    wallet = LeaseWallet(monotonic=lambda: 0.0, default_max_tokens=1000)
    lease = LeaseGrant(
        lease_id="aaaaaaaaaaaa.1", usd=Decimal("1"), expires_at=T0 + timedelta(minutes=5),
        prices={"claude": model_price(CLAUDE, parts=True), "old": model_price(CLAUDE, parts=False)},
    )  # fmt: skip
    assert wallet.grant(lease, T0)
    usage = (10_000, 500, 8_000, 1_000, 0)
    for model in ("claude", "old"):
        before = wallet.snapshot()
        reservation = wallet.reserve(model, 1000, 10_000)
        assert isinstance(reservation, Reservation)
        assert reservation.usd == 75_000_000 + 22_500_000  # at the ceiling: $7.50 and $22.50 per million
        wallet.settle(reservation, model, usage, None)
        after = wallet.snapshot()
        assert before is not None and after is not None
        debited = int((before.balance_usd - after.balance_usd).scaleb(9))
        assert debited == (CLAUDE.cost_nanos(*usage) if model == "claude" else 75_000_000 + 11_250_000)
        assert after.reserved_usd == 0 and after.over_usd == 0
    # A call recorded by hand (no reservation) is debited exactly too, all of it over.
    before = wallet.snapshot()
    epoch = wallet.settle(None, "claude", usage, None)
    after = wallet.snapshot()
    assert before is not None and after is not None and epoch is not None
    assert int((before.balance_usd - after.balance_usd).scaleb(9)) == CLAUDE.cost_nanos(*usage) == epoch.over


def test_the_recorder_debits_a_cached_call_at_the_parts() -> None:
    """Through CostRecorder.call: the call's cache tokens reach the wallet (Call.usage)."""
    rec = CostRecorder("agent-1", FakePublisher(), "projects/p/topics/agent-costs", leases=True, clock=Clock(T0),
                       lease_wait_s=0.05, max_delay_s=60)  # fmt: skip
    grant = LeaseGrant(lease_id="aaaaaaaaaaaa.1", usd=Decimal("1"), expires_at=T0 + timedelta(minutes=5),
                       prices={"claude": model_price(CLAUDE, parts=True)})  # fmt: skip
    rec.apply(Command(agent_id="agent-1", command=CommandType.LEASE, issued_at=T0, command_id="lease-a1",
                      until=grant.expires_at, lease=grant))  # fmt: skip
    with rec.call("chat", model="claude", max_tokens=500, prompt_tokens=10_000) as call:
        call.tokens(10_000, 500, cache_read=8_000, cache_write=1_000)
    state = rec.lease
    assert state is not None and state.reserved_usd == 0 and state.over_usd == 0
    assert state.balance_usd == 1 - Decimal(CLAUDE.cost_nanos(10_000, 500, 8_000, 1_000)).scaleb(-9)
    rec.close()


def test_every_catalog_price_fits_a_lease_and_its_ceiling_is_never_rounded_down() -> None:
    quotes, more = price_catalog.catalog.listing(limit=10_000, at=T0)
    assert not more and len(quotes) > 2000
    for quote in quotes:
        sent = model_price(quote.price, parts=True)  # a price past the wire's 15 places raised here before
        ceiling = quote.price.ceiling()
        assert sent.input_usd >= ceiling.input_usd and sent.output_usd >= ceiling.output_usd, quote.matched
        assert sent.input_usd - ceiling.input_usd < Decimal("1e-15"), quote.matched
    odd = Price(Decimal("0.0000001234567890123456"), Decimal(0))
    assert model_price(odd, parts=True).input_usd == Decimal("0.000000123456790")
    assert model_price(odd, parts=True).parts is None  # not exact on the wire: the ceiling only


def test_a_grant_re_sent_after_the_parts_were_turned_off_carries_none(monkeypatch: pytest.MonkeyPatch) -> None:
    """A lease granted while FLEET_LEASE_PRICE_PARTS was on, re-sent after it was turned off, must be one an
    older SDK accepts: the parts go, the ceiling stays."""
    from shared.domain.leases import Ledger
    from shared.services.lease_grants import resend_last
    from tests.unit.test_http_api import record
    from tests.unit.test_lease_domain import EPOCH_A, epoch
    from tests.unit.test_lease_domain import T0 as START

    lease = LeaseGrant(
        lease_id=f"{EPOCH_A}.1", usd=Decimal("1"), expires_at=START + timedelta(minutes=5),
        prices={"claude": model_price(CLAUDE, parts=True)},
    )  # fmt: skip
    sent = Command(
        agent_id="agent-1", command=CommandType.LEASE, issued_at=START, command_id=f"lease.{EPOCH_A}.1", lease=lease
    )
    ledger = Ledger("agent-1", "acme", epoch=epoch(), last=sent.model_dump(mode="json", exclude_none=True))
    agent = record("agent-1", "acme")
    for value, has_parts in (("on", True), ("off", False)):
        monkeypatch.setenv("FLEET_LEASE_PRICE_PARTS", value)
        settings.get.cache_clear()
        try:
            again = resend_last(agent, START + timedelta(minutes=1), ledger=ledger)
        finally:
            settings.get.cache_clear()
        assert again is not None and again.lease is not None
        price = again.lease.prices["claude"]
        assert (price.parts is not None) is has_parts
        assert (price.input_usd, price.output_usd) == (Decimal("7.5") / M, Decimal("22.5") / M)
        if not has_parts:
            wire = price.model_dump_json(exclude_none=True)
            assert OldModelPrice.model_validate_json(wire)
