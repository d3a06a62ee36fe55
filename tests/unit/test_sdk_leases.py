"""The SDK's lease wallet (fleet_agent.leases): epochs, revocation, expiry, prices and the estimate, over."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from fleet_agent.call_records import cost_nanos, femto, to_nanos
from fleet_agent.contracts import LeaseGrant, ModelPrice
from fleet_agent.leases import LeaseWallet, Reservation, Shortfall, Waiter

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
    retry_after_s: int | None = None,
) -> LeaseGrant:
    return LeaseGrant(
        lease_id=lease_id,
        usd=Decimal(usd),
        tokens=tokens,
        expires_at=expires,
        prices={"m": PRICE} if prices is None else prices,
        request_id=request_id,
        retry_after_s=retry_after_s,
    )


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


class Mono:
    """The wallet's monotonic clock, settable: seconds since the test's T0 arrived (grants arrive at once)."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def wallet_at(mono: Mono | None = None, default_max_tokens: int = 1024) -> LeaseWallet:
    return LeaseWallet(monotonic=mono or Mono(), default_max_tokens=default_max_tokens)


def reserve(wallet: LeaseWallet, max_tokens: int, prompt: int = 0, model: str = "m") -> Reservation | Shortfall:
    return wallet.reserve(model, max_tokens, prompt)


def no_room_s(wallet: LeaseWallet, max_tokens: int) -> float:
    short = reserve(wallet, max_tokens)
    assert isinstance(short, Shortfall)
    return short.no_room_s


def balance(wallet: LeaseWallet) -> Decimal | None:
    state = wallet.snapshot()
    return None if state is None else state.balance_usd


def test_a_grant_of_the_current_epoch_adds_and_another_epoch_replaces() -> None:
    wallet = wallet_at()
    assert wallet.grant(grant(f"{EPOCH_A}.1", "1.00"), at(0))
    assert wallet.grant(grant(f"{EPOCH_A}.2", "0.50", expires=at(900)), at(1))
    state = wallet.snapshot()
    assert state is not None
    assert (state.epoch, state.lease_id, state.balance_usd, state.expires_at) == (EPOCH_A, f"{EPOCH_A}.2", 1.5, at(900))
    assert wallet.grant(grant(f"{EPOCH_B}.1", "0.25"), at(3))
    assert balance(wallet) == Decimal("0.25")


def test_a_lease_id_applies_once_and_a_late_older_epoch_is_ignored() -> None:
    wallet = wallet_at()
    assert wallet.grant(grant(f"{EPOCH_A}.1", "1"), at(10))
    assert not wallet.grant(grant(f"{EPOCH_A}.1", "1"), at(10))  # a redelivery
    assert not wallet.grant(grant(f"{EPOCH_B}.1", "5"), at(5))  # issued before the current epoch's grant
    assert balance(wallet) == 1


def test_an_older_grant_of_the_epoch_arriving_last_leaves_the_latest_named() -> None:
    """A lost grant re-sent by the fleet may arrive after a newer one: batches must still name the newest
    (the fleet re-sends the latest to a batch naming an older one, and the SDK ignores that re-send)."""
    wallet = wallet_at()
    wallet.grant(grant(f"{EPOCH_A}.1", "1"), at(0))
    wallet.grant(grant(f"{EPOCH_A}.3", "1"), at(5))
    assert wallet.grant(grant(f"{EPOCH_A}.2", "1"), at(3))  # the re-send of .2, late
    state = wallet.snapshot()
    assert state is not None and (state.lease_id, state.balance_usd) == (f"{EPOCH_A}.3", 3)


def test_a_blocking_command_revokes_and_an_older_lease_does_not_revive() -> None:
    wallet = wallet_at()
    wallet.grant(grant(f"{EPOCH_A}.1", "1"), at(0))
    assert wallet.revoke(at(10))
    assert wallet.snapshot() is None
    assert isinstance(reserve(wallet, 10), Shortfall)
    assert not wallet.grant(grant(f"{EPOCH_A}.2", "1"), at(5))  # issued before the pause: reordered
    assert not wallet.grant(grant(f"{EPOCH_B}.1", "1"), at(9))
    assert wallet.grant(grant(f"{EPOCH_B}.2", "2"), at(20))  # after the block: a new epoch
    assert balance(wallet) == 2


def test_the_epoch_ends_its_lifetime_after_the_grant_arrived_on_the_monotonic_clock() -> None:
    mono = Mono()
    wallet = wallet_at(mono)
    mono.now = 1000.0  # arrives whenever: the wall clock plays no part, only expires_at - issued_at (60 s)
    wallet.grant(grant(f"{EPOCH_A}.1", "1", expires=at(60)), at(0))
    mono.now = 1059.0
    assert isinstance(reserve(wallet, 10), Reservation)
    mono.now = 1060.0
    short = reserve(wallet, 10)
    assert isinstance(short, Shortfall) and short.reason == "lease_exhausted"
    assert wallet.snapshot() is None


def test_the_highest_grant_sets_the_expiry_and_names_the_epoch() -> None:
    mono = Mono()
    wallet = wallet_at(mono)
    wallet.grant(grant(f"{EPOCH_A}.2", "1", expires=at(100)), at(10))  # lives 90 s from 0
    mono.now = 30.0
    wallet.grant(grant(f"{EPOCH_A}.1", "1", expires=at(60)), at(0))  # reordered: adds, sets nothing else
    state = wallet.snapshot()
    assert state is not None and (state.lease_id, state.expires_at, state.balance_usd) == (f"{EPOCH_A}.2", at(100), 2)
    epoch = wallet.current()
    assert wallet.use(epoch)[0] == f"{EPOCH_A}.2"
    mono.now = 89.9
    assert wallet.current() is not None
    mono.now = 90.0
    assert wallet.current() is None


def test_tokens_none_means_no_token_limit() -> None:
    wallet = wallet_at()
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
    wallet = wallet_at(default_max_tokens=1000)
    wallet.grant(grant(f"{EPOCH_A}.1", "0.010"), at(0))  # 10_000_000 nanos
    first = wallet.reserve("m", None, 1000)  # 1000 + 4 * 1000 = 5000 µ$ = 0.005
    assert isinstance(first, Reservation) and first.usd == 5_000_000
    second = reserve(wallet, 1000, 1000)
    assert isinstance(second, Reservation)
    assert isinstance(reserve(wallet, 1), Shortfall)  # all of it reserved
    wallet.settle(first, "m", (1000, 10), None)  # actual 0.00104
    assert balance(wallet) == Decimal("0.00896")
    state = wallet.snapshot()
    assert state is not None and state.reserved_usd == Decimal("0.005") and state.over_usd == 0


def test_over_accumulates_what_calls_cost_beyond_their_estimate() -> None:
    wallet = wallet_at()
    wallet.grant(grant(f"{EPOCH_A}.1", "1"), at(0))
    for actual in ("0.000500", "0.000100", "0.000300"):
        reservation = reserve(wallet, 100, 0)  # estimate 0.0004
        assert isinstance(reservation, Reservation)
        epoch = wallet.settle(reservation, "m", (0, 0), Decimal(actual))
    assert wallet.use(epoch) == (f"{EPOCH_A}.1", 100_000, 0)  # only the first went over, by 0.0001
    reservation = reserve(wallet, 10, 0)
    assert isinstance(reservation, Reservation)
    wallet.settle(reservation, "m", (5, 20), None)  # 25 tokens ($0.000085) for an estimate of 10 ($0.00004)
    assert wallet.use(epoch)[1:] == (100_000 + 45_000, 15)


def test_an_unpriced_model_is_refused_until_a_lease_prices_it_and_later_prices_win() -> None:
    wallet = wallet_at()
    wallet.grant(grant(f"{EPOCH_A}.1", "1", prices={}), at(0))
    short = reserve(wallet, 10, model="new-model")
    assert isinstance(short, Shortfall) and (short.reason, short.unpriced) == ("unknown_model", "new-model")
    wallet.grant(grant(f"{EPOCH_A}.2", "0", prices={"new-model": PRICE}), at(2))
    wallet.grant(grant(f"{EPOCH_A}.3", "0", prices={"new-model": ModelPrice(input_usd=0, output_usd=0)}), at(1))
    got = reserve(wallet, 10, model="new-model")
    assert isinstance(got, Reservation) and got.usd == 40_000  # the price issued at 2 wins over the one issued at 1


def test_half_used_asks_ahead_once() -> None:
    wallet = wallet_at()
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
    mono = Mono()
    wallet = wallet_at(mono)
    mono.now = 100.0
    wallet.grant(grant(f"{EPOCH_A}.1", "1", expires=at(600)), at(100))
    mono.now = now
    got = reserve(wallet, 1)
    assert isinstance(got, Reservation) and (got.ask is not None) is expected


def waiting(wallet: LeaseWallet, max_tokens: int, model: str = "m") -> Waiter:
    short = reserve(wallet, max_tokens, model=model)
    assert isinstance(short, Shortfall)
    return wallet.enlist(short)


def test_waiters_share_one_request_until_it_goes_stale_or_is_answered() -> None:
    mono = Mono()
    wallet = wallet_at(mono)
    waiter = waiting(wallet, 100)
    first, ask, stale_in = wallet.request(waiter)
    assert ask is not None and ask.request_id == first and stale_in == 2.0
    mono.now = 1.0
    assert wallet.request(waiter) == (first, None, 1.0)
    other = waiting(wallet, 100, model="other-model")
    assert wallet.request(other)[1] is not None  # it asks for a model the first did not
    mono.now = 5.0
    again, ask, _ = wallet.request(waiter)
    assert ask is not None and again != first
    wallet.grant(grant(f"{EPOCH_A}.1", "0", request_id=again), at(0))
    assert wallet.answered(again) and wallet.request(waiter)[1] is not None


def test_a_request_asks_for_what_every_waiting_call_needs() -> None:
    wallet = wallet_at()
    wallet.grant(grant(f"{EPOCH_A}.1", "0"), at(0))
    small, big, unpriced = waiting(wallet, 100), waiting(wallet, 1000), waiting(wallet, 50, model="new")
    _, ask, _ = wallet.request(small)
    assert ask is not None and (ask.usd, ask.tokens, ask.models) == (4_400_000, 1150, ("new",))
    wallet.dismiss(big)
    wallet.dismiss(unpriced)
    wallet.grant(grant(f"{EPOCH_A}.2", "0", request_id=ask.request_id), at(1))
    _, ask, _ = wallet.request(small)
    assert ask is not None and (ask.usd, ask.tokens, ask.models) == (400_000, 100, ())
    wallet.grant(grant(f"{EPOCH_A}.3", "1", request_id=ask.request_id), at(2))
    assert isinstance(wallet.reserve("m", 100, 0, small), Reservation)
    _, ask, _ = wallet.request(waiting(wallet, 10**9))
    assert ask is not None and ask.usd == 4 * 10**12  # the waiter that fitted stopped counting


def test_retry_after_means_no_room_until_it_passes_or_a_grant_comes() -> None:
    mono = Mono()
    wallet = wallet_at(mono)
    wallet.grant(grant(f"{EPOCH_A}.1", "0.001", retry_after_s=60), at(0))  # answers no request: no effect
    assert no_room_s(wallet, 10**6) == 0
    _, ask, _ = wallet.request(waiting(wallet, 10**6))
    assert ask is not None
    wallet.grant(grant(f"{EPOCH_A}.2", "0", request_id=ask.request_id, retry_after_s=60), at(1))
    mono.now = 59.5
    short = reserve(wallet, 10**6)
    assert isinstance(short, Shortfall) and short.no_room_s == 0.5
    got = reserve(wallet, 200)  # fits, and leaves under half: no asking ahead while there is no room
    assert isinstance(got, Reservation) and got.ask is None and wallet.ask_ahead() is None
    mono.now = 60.0
    assert no_room_s(wallet, 10**6) == 0
    ahead = wallet.ask_ahead()
    assert ahead is not None
    wallet.grant(grant(f"{EPOCH_A}.3", "0", request_id=ahead.request_id, retry_after_s=60), at(2))
    assert no_room_s(wallet, 10**6) == 60
    wallet.grant(grant(f"{EPOCH_A}.4", "0"), at(3))  # any grant applied clears it
    assert no_room_s(wallet, 10**6) == 0
