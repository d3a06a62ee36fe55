"""The SDK's lease wallet (fleet_agent.leases): epochs, revocation, expiry, prices and the estimate, over."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from fleet_agent.contracts import LeaseGrant, ModelPrice
from fleet_agent.leases import LeaseWallet, Reservation, Shortfall, cost_nanos, femto, to_nanos

from shared.domain.pricing import Price

T0 = datetime(2026, 12, 6, 12, tzinfo=UTC)
EPOCH_A, EPOCH_B = "aaaaaaaaaaaa", "bbbbbbbbbbbb"
#: $1 per million input tokens, $4 per million output tokens.
PRICE = ModelPrice(input_usd=Decimal("0.000001"), output_usd=Decimal("0.000004"))


def grant(
    lease_id: str,
    usd: str,
    *,
    tokens: int | None = None,
    expires: datetime = T0 + timedelta(minutes=10),
    prices: dict[str, ModelPrice] | None = None,
    request_id: str | None = None,
) -> LeaseGrant:
    return LeaseGrant(
        lease_id=lease_id,
        usd=Decimal(usd),
        tokens=tokens,
        expires_at=expires,
        prices={"m": PRICE} if prices is None else prices,
        request_id=request_id,
    )


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def reserve(wallet: LeaseWallet, max_tokens: int, prompt: int = 0, now: float = 0.0, model: str = "m") -> object:
    return wallet.reserve(model, max_tokens, prompt, at(now).timestamp(), 0.0, 2.0)


def balance(wallet: LeaseWallet, now: float = 0.0) -> Decimal | None:
    state = wallet.snapshot(at(now).timestamp())
    return None if state is None else state.balance_usd


def test_a_grant_of_the_current_epoch_adds_and_another_epoch_replaces() -> None:
    wallet = LeaseWallet()
    assert wallet.grant(grant(f"{EPOCH_A}.1", "1.00"), at(0))
    assert wallet.grant(grant(f"{EPOCH_A}.2", "0.50", expires=at(900)), at(1))
    state = wallet.snapshot(at(2).timestamp())
    assert state is not None
    assert (state.epoch, state.lease_id, state.balance_usd, state.expires_at) == (EPOCH_A, f"{EPOCH_A}.2", 1.5, at(900))
    assert wallet.grant(grant(f"{EPOCH_B}.1", "0.25"), at(3))
    assert balance(wallet) == Decimal("0.25")


def test_a_lease_id_applies_once_and_a_late_older_epoch_is_ignored() -> None:
    wallet = LeaseWallet()
    assert wallet.grant(grant(f"{EPOCH_A}.1", "1"), at(10))
    assert not wallet.grant(grant(f"{EPOCH_A}.1", "1"), at(10))  # a redelivery
    assert not wallet.grant(grant(f"{EPOCH_B}.1", "5"), at(5))  # issued before the current epoch's grant
    assert balance(wallet) == 1


def test_an_older_grant_of_the_epoch_arriving_last_leaves_the_latest_named() -> None:
    """A lost grant re-sent by the fleet may arrive after a newer one: batches must still name the newest
    (the fleet re-sends the latest to a batch naming an older one, and the SDK ignores that re-send)."""
    wallet = LeaseWallet()
    wallet.grant(grant(f"{EPOCH_A}.1", "1"), at(0))
    wallet.grant(grant(f"{EPOCH_A}.3", "1"), at(5))
    assert wallet.grant(grant(f"{EPOCH_A}.2", "1"), at(3))  # the re-send of .2, late
    state = wallet.snapshot(at(6).timestamp())
    assert state is not None and (state.lease_id, state.balance_usd) == (f"{EPOCH_A}.3", 3)


def test_a_blocking_command_revokes_and_an_older_lease_does_not_revive() -> None:
    wallet = LeaseWallet()
    wallet.grant(grant(f"{EPOCH_A}.1", "1"), at(0))
    assert wallet.revoke(at(10))
    assert wallet.snapshot(at(11).timestamp()) is None
    assert isinstance(reserve(wallet, 10, now=11), Shortfall)
    assert not wallet.grant(grant(f"{EPOCH_A}.2", "1"), at(5))  # issued before the pause: reordered
    assert not wallet.grant(grant(f"{EPOCH_B}.1", "1"), at(9))
    assert wallet.grant(grant(f"{EPOCH_B}.2", "2"), at(20))  # after the block: a new epoch
    assert balance(wallet, 21) == 2


def test_the_epoch_ends_at_its_expiry() -> None:
    wallet = LeaseWallet()
    wallet.grant(grant(f"{EPOCH_A}.1", "1", expires=at(60)), at(0))
    assert isinstance(reserve(wallet, 10, now=59), Reservation)
    short = reserve(wallet, 10, now=60)
    assert isinstance(short, Shortfall) and short.reason == "lease_exhausted"
    assert wallet.snapshot(at(60).timestamp()) is None


def test_tokens_none_means_no_token_limit() -> None:
    wallet = LeaseWallet()
    wallet.grant(grant(f"{EPOCH_A}.1", "100", tokens=1000), at(0))
    assert isinstance(reserve(wallet, 900, prompt=100), Reservation)
    assert isinstance(reserve(wallet, 1), Shortfall)  # 1000 tokens reserved already
    wallet.grant(grant(f"{EPOCH_A}.2", "0", tokens=None), at(1))
    assert isinstance(reserve(wallet, 1_000_000), Reservation)


def test_the_estimate_equals_the_servers_decimal_arithmetic() -> None:
    rng = random.Random(19)
    for _ in range(20_000):
        places = rng.choice([6, 9, 10, 12, 15])
        scale = 10**places
        input_usd = (
            Decimal(rng.randrange(0, 1000 * scale)) / scale
            if rng.random() < 0.3
            else Decimal(rng.randrange(0, scale // 100 or 1)) / scale
        )
        output_usd = Decimal(rng.randrange(0, 10 * scale)) / Decimal(scale)
        prompt, out = rng.randrange(0, 10_000_001), rng.randrange(0, 10_000_001)
        if rng.random() < 0.2:
            prompt, out = rng.randrange(0, 50), rng.randrange(0, 50)
        expected = Price(input_usd, output_usd).cost_nanos(prompt, out)
        assert cost_nanos(femto(input_usd), femto(output_usd), prompt, out) == expected, (input_usd, output_usd)


def test_half_a_nano_rounds_up_like_the_server() -> None:
    price = Decimal("0.0000000005")  # half a nano-dollar per token
    assert cost_nanos(femto(price), 0, 1, 0) == Price(price, Decimal(0)).cost_nanos(1, 0) == 1
    assert cost_nanos(femto(price), 0, 3, 0) == 2
    assert to_nanos(Decimal("0.0000000015")) == 2


def test_reserve_checks_balance_minus_what_is_in_flight_and_settle_debits_the_actual() -> None:
    wallet = LeaseWallet(default_max_tokens=1000)
    wallet.grant(grant(f"{EPOCH_A}.1", "0.010"), at(0))  # 10_000_000 nanos
    first = wallet.reserve("m", None, 1000, at(0).timestamp(), 0.0, 2.0)  # 1000 + 4 * 1000 = 5000 µ$ = 0.005
    assert isinstance(first, Reservation) and first.usd == 5_000_000
    second = reserve(wallet, 1000, 1000)
    assert isinstance(second, Reservation)
    assert isinstance(reserve(wallet, 1), Shortfall)  # all of it reserved
    wallet.settle(first, "m", (1000, 10), None)  # actual 0.00104
    assert balance(wallet) == Decimal("0.00896")
    state = wallet.snapshot(at(0).timestamp())
    assert state is not None and state.reserved_usd == Decimal("0.005") and state.over_usd == 0


def test_over_accumulates_what_calls_cost_beyond_their_estimate() -> None:
    wallet = LeaseWallet()
    wallet.grant(grant(f"{EPOCH_A}.1", "1"), at(0))
    for actual in ("0.000500", "0.000100", "0.000300"):
        reservation = reserve(wallet, 100, 0)  # estimate 0.0004
        assert isinstance(reservation, Reservation)
        epoch = wallet.settle(reservation, "m", (0, 0), to_nanos(Decimal(actual)))
    assert wallet.use(epoch) == (f"{EPOCH_A}.1", 100_000, 0)  # only the first went over, by 0.0001
    reservation = reserve(wallet, 10, 0)
    assert isinstance(reservation, Reservation)
    wallet.settle(reservation, "m", (5, 20), None)  # 25 tokens ($0.000085) for an estimate of 10 ($0.00004)
    assert wallet.use(epoch)[1:] == (100_000 + 45_000, 15)


def test_an_unpriced_model_is_refused_until_a_lease_prices_it_and_later_prices_win() -> None:
    wallet = LeaseWallet()
    wallet.grant(grant(f"{EPOCH_A}.1", "1", prices={}), at(0))
    short = reserve(wallet, 10, model="new-model")
    assert isinstance(short, Shortfall) and (short.reason, short.unpriced) == ("unknown_model", "new-model")
    wallet.grant(grant(f"{EPOCH_A}.2", "0", prices={"new-model": PRICE}), at(2))
    wallet.grant(grant(f"{EPOCH_A}.3", "0", prices={"new-model": ModelPrice(input_usd=0, output_usd=0)}), at(1))
    got = reserve(wallet, 10, model="new-model")
    assert isinstance(got, Reservation) and got.usd == 40_000  # the price issued at 2 wins over the one issued at 1


def test_half_used_asks_ahead_once() -> None:
    wallet = LeaseWallet()
    wallet.grant(grant(f"{EPOCH_A}.1", "0.001"), at(0))  # 250 calls of 1 output token (4 µ$ each)
    asks = []
    for _ in range(200):
        got = reserve(wallet, 1)
        assert isinstance(got, Reservation)
        wallet.settle(got, "m", (0, 1), None)
        asks.append(got.ask)
    sent = [i for i, ask in enumerate(asks) if ask is not None]
    assert sent == [125]  # the 126th call left less than half; one outstanding request at a time


@pytest.mark.parametrize(("now", "expected"), [(400.0, False), (499.0, False), (501.0, True)])
def test_the_last_fifth_of_the_lifetime_asks_ahead(now: float, expected: bool) -> None:
    wallet = LeaseWallet()
    wallet.grant(grant(f"{EPOCH_A}.1", "1", expires=at(600)), at(100))
    got = reserve(wallet, 1, now=now)
    assert isinstance(got, Reservation) and (got.ask is not None) is expected


def test_waiters_share_one_request_until_it_goes_stale_or_is_answered() -> None:
    wallet = LeaseWallet()
    first, new, _ = wallet.request(0.0, 2.0, None)
    assert new
    assert wallet.request(1.0, 2.0, None)[:2] == (first, False)
    assert wallet.request(1.0, 2.0, "other-model")[1]  # asks for a model the outstanding one does not name
    again, new, _ = wallet.request(5.0, 2.0, None)
    assert new and again != first
    wallet.grant(grant(f"{EPOCH_A}.1", "0", request_id=again), at(0))
    assert wallet.answered(again) and wallet.request(5.5, 2.0, None)[1]
