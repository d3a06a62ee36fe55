"""The pure budget-lease rules (shared/domain/leases.py): sizing a grant, epochs, the reserve's keep."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from fleet_agent.contracts import LeaseUse

from shared.domain.budgets import Limit
from shared.domain.leases import (
    ZERO,
    Amount,
    Config,
    Epoch,
    GrantPlan,
    Ledger,
    ended,
    kept,
    missed,
    open_epoch,
    overspent,
    plan_grant,
)
from shared.domain.periods import Period

USD = 1_000_000_000  # nano-dollars
T0 = datetime(2026, 12, 6, 11, 20, tzinfo=UTC)
CFG = Config()  # ttl 300 s, horizon 60 s, min $0.01 and 4096 tokens, tolerance 1 %
EPOCH_A, EPOCH_B = "aaaaaaaaaaaa", "bbbbbbbbbbbb"
HOUR, DAY, MONTH = (Period.HOUR, "2026-12-06T11"), (Period.DAY, "2026-12-06"), (Period.MONTH, "2026-12")
WINDOWS = {Period.HOUR: HOUR[1], Period.DAY: DAY[1], Period.MONTH: MONTH[1]}


def spent(hour: Amount = ZERO, day: Amount | None = None, month: Amount | None = None) -> dict[Period, Amount]:
    day = hour if day is None else day
    return {Period.HOUR: hour, Period.DAY: day, Period.MONTH: month if month is not None else day}


def usd(dollars: float, tokens: int = 0) -> Amount:
    return Amount(round(dollars * USD), tokens)


def lim(period: Period, metric: str, hard: int) -> Limit:
    return Limit(period, metric, hard, None)


def use(lease_id: str | None = None, need: str | None = None, need_tokens: int | None = None) -> LeaseUse:
    return LeaseUse(
        lease_id=lease_id, request_id="request-0001", need_usd=Decimal(need) if need else None, need_tokens=need_tokens
    )


def epoch(*, expires: datetime = T0 + timedelta(minutes=5), seq: int = 1, **kw: object) -> Epoch:
    fields: dict[str, object] = {
        "id": EPOCH_A, "started_at": T0, "expires_at": expires, "seq": seq, "windows": dict(WINDOWS),
        "base": spent(), "granted": usd(1), "charged": usd(1), "tokens_limited": False,
    }  # fmt: skip
    fields.update(kw)
    return Epoch(**fields)  # type: ignore[arg-type]


def ledger(ep: Epoch | None = None, last: dict[str, str] | None = None) -> Ledger:
    return Ledger("agent-1", "acme", epoch=ep, last=last)


def grant(led: Ledger | None = None, **kw: object) -> GrantPlan:
    args: dict[str, object] = {
        "now": T0, "spent": spent(), "old_hour_spent": None, "agent_limits": [], "tenant_limits": [],
        "reserve": {}, "open_epochs": 0, "request": None, "new_epoch_id": EPOCH_B, "cfg": CFG,
    }  # fmt: skip
    args.update(kw)
    return plan_grant(led or ledger(), **args)  # type: ignore[arg-type]


# -- a new epoch -------------------------------------------------------------------------------------


def test_a_first_grant_starts_an_epoch_based_on_the_spend_so_far() -> None:
    so_far = spent(usd(0.3, 500), usd(2, 900), usd(7, 5000))
    plan = grant(spent=so_far, request=use(need="0.5"))
    assert plan.started and plan.released is None and plan.adjust == {}
    assert plan.lease_id == f"{EPOCH_B}.1" and plan.epoch.id == EPOCH_B and plan.epoch.seq == 1
    assert plan.epoch.started_at == T0 and plan.epoch.expires_at == T0 + timedelta(seconds=300)
    assert plan.epoch.base == so_far and plan.epoch.windows == WINDOWS
    assert plan.want == usd(0.5) and plan.epoch.granted == plan.epoch.charged == plan.want
    assert plan.deltas() == {HOUR: usd(0.5), DAY: usd(0.5), MONTH: usd(0.5)}


def test_an_epoch_never_runs_past_the_end_of_its_hour() -> None:
    now = datetime(2026, 12, 6, 11, 58, 30, tzinfo=UTC)
    plan = grant(now=now)
    assert plan.epoch.expires_at == datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
    assert plan.epoch.windows[Period.HOUR] == "2026-12-06T11"


@pytest.mark.parametrize(
    ("need", "hour_spent", "expected"),
    [
        ("5", 0, 5 * USD),  # the waiting call's need
        (None, 1.2, 60_000_000),  # $1.20 in 1200 s of the hour: 60 s of it is $0.06
        ("0.02", 1.2, 60_000_000),  # the rate beats a smaller need
        (None, 0, CFG.min_usd_nanos),  # nothing spent, nothing needed: the smallest lease
    ],
)
def test_without_a_budget_the_lease_is_the_most_of_need_rate_and_minimum(
    need: str | None, hour_spent: float, expected: int
) -> None:
    plan = grant(spent=spent(usd(hour_spent, 1_000_000)), request=use(need=need))
    assert plan.want == Amount(expected, 0)  # no token limit anywhere: no tokens in the lease
    assert not plan.epoch.tokens_limited


# -- agent limits ------------------------------------------------------------------------------------


def test_an_agent_hourly_limit_cuts_the_lease_to_what_it_leaves() -> None:
    plan = grant(spent=spent(usd(0.7)), agent_limits=[lim(Period.HOUR, "usd", USD)], request=use(need="5"))
    assert plan.want.usd_nanos == 300_000_000


def test_the_next_grant_counts_what_the_epoch_already_charged_against_the_agent_limit() -> None:
    first = grant(spent=spent(usd(0.2)), agent_limits=[lim(Period.HOUR, "usd", USD)], request=use(need="0.5"))
    assert first.want == usd(0.5)
    second = grant(
        ledger(first.epoch), now=T0 + timedelta(seconds=30), spent=spent(usd(0.2)),
        agent_limits=[lim(Period.HOUR, "usd", USD)], request=use(first.lease_id, need="5"),
    )  # fmt: skip
    assert not second.started and second.want == usd(0.3)  # $1 - ($0.20 base + $0.50 charged)


def test_a_daily_token_limit_cuts_the_tokens_and_marks_the_epoch_token_limited() -> None:
    plan = grant(spent=spent(usd(0, 100), usd(0, 9_000)), agent_limits=[lim(Period.DAY, "tokens", 10_000)])
    assert plan.epoch.tokens_limited
    assert plan.want.tokens == 1_000  # not the 4096-token minimum: the limit leaves 1000


@pytest.mark.parametrize("period", [Period.HOUR, Period.DAY, Period.MONTH])
def test_a_lease_is_never_negative_when_the_agent_is_over_its_limit(period: Period) -> None:
    plan = grant(spent=spent(usd(1.5, 50_000)), agent_limits=[lim(period, "usd", USD), lim(period, "tokens", 10)])
    assert plan.want == ZERO


# -- the tenant's fair share -------------------------------------------------------------------------

FAST = spent(usd(60))  # $60 in the hour's first 1200 s: 60 s of that rate is $3


@pytest.mark.parametrize(
    ("need", "open_epochs", "expected"),
    [
        (None, 2, 2),  # room $6 shared by 2 open epochs and the new one: $2 of the $3 wanted
        (None, 0, 3),  # alone: the $3 wanted fits the $6 room
        ("5", 2, 5),  # a waiting call's need beats the share, as far as the room goes
        ("9", 2, 6),  # ... but never beyond the room
    ],
)
def test_a_new_epoch_gets_a_fair_share_of_the_tenant_room(need: str | None, open_epochs: int, expected: int) -> None:
    plan = grant(
        spent=FAST, tenant_limits=[lim(Period.HOUR, "usd", 10 * USD)], reserve={Period.HOUR: usd(4)},
        open_epochs=open_epochs, request=use(need=need),
    )  # fmt: skip
    assert plan.want == usd(expected)
    assert plan.tenant_limits == {(HOUR, "usd"): 10 * USD}


def test_a_live_epoch_shares_the_room_with_the_open_epochs_only() -> None:
    live = epoch(base=FAST, granted=ZERO, charged=ZERO, started_at=T0 - timedelta(seconds=2))
    plan = grant(
        ledger(live), spent=FAST, tenant_limits=[lim(Period.HOUR, "usd", 10 * USD)],
        reserve={Period.HOUR: usd(4)}, open_epochs=3, request=use(f"{EPOCH_A}.1"),
    )  # fmt: skip
    assert not plan.started and plan.want == usd(2)  # $6 among the 3 open epochs, its own among them


def test_a_tenant_limit_already_exceeded_leaves_nothing() -> None:
    plan = grant(tenant_limits=[lim(Period.DAY, "usd", USD)], reserve={Period.DAY: usd(1.5)}, request=use(need="1"))
    assert plan.want == ZERO


# -- what the reserve keeps --------------------------------------------------------------------------


def keep_plan(want: Amount, limits: dict[tuple[tuple[Period, str], str], int]) -> GrantPlan:
    return GrantPlan(epoch=epoch(), lease_id=f"{EPOCH_A}.1", want=want, tenant_limits=limits)


@pytest.mark.parametrize(
    ("others", "expected"),
    [(4, 2), (8, 2), (9, 1), (10, 0), (12, 0)],  # others: the reserve without this grant's $2
)
def test_kept_never_keeps_more_than_the_limit_leaves_after_the_others(others: int, expected: int) -> None:
    plan = keep_plan(usd(2), {(HOUR, "usd"): 10 * USD})
    assert kept(plan, {HOUR: usd(others + 2)}) == usd(expected)


def test_kept_judges_every_limited_slot_and_metric_on_its_own() -> None:
    plan = keep_plan(usd(2, 5_000), {(HOUR, "usd"): 10 * USD, (DAY, "usd"): 20 * USD, (MONTH, "tokens"): 100_000})
    after = {HOUR: usd(3, 0), DAY: usd(21.5, 0), MONTH: usd(0, 102_000)}
    assert kept(plan, after) == usd(0.5, 3_000)  # the others leave $0.50 of the day, 3000 tokens of the month


def test_kept_keeps_the_whole_want_in_slots_without_a_limit_or_a_read_back() -> None:
    plan = keep_plan(usd(2), {(HOUR, "usd"): 10 * USD})
    assert kept(plan, {DAY: usd(100)}) == usd(2)
    assert kept(keep_plan(usd(2), {}), {HOUR: usd(100)}) == usd(2)


def simulate(seed: int) -> tuple[int, int, int, bool]:
    """Concurrent grants: each increments the shared reserve by its want and reads the total back (one
    total order); with give-backs, each later returns what it did not keep, at a random point. Returns
    (kept in all, room, wanted in all, whether there were give-backs)."""
    rng = random.Random(seed)
    limit, start = rng.randint(0, 100), rng.randint(0, 120)
    wants = [rng.randint(0, 40) for _ in range(rng.randint(1, 8))]
    give_backs = rng.random() < 0.5
    counter, total_kept = start, 0
    pending: list[int] = []
    order = list(range(len(wants)))
    rng.shuffle(order)
    while order or pending:
        if pending and (not order or rng.random() < 0.5):
            counter -= pending.pop(rng.randrange(len(pending)))
            continue
        want = wants[order.pop()]
        counter += want
        keep = kept(keep_plan(Amount(want, 0), {(HOUR, "usd"): limit}), {HOUR: Amount(counter, 0)}).usd_nanos
        assert 0 <= keep <= want, seed
        total_kept += keep
        if give_backs:
            pending.append(want - keep)
    return total_kept, max(0, limit - start), sum(wants), give_backs


def test_concurrent_grants_in_any_order_never_keep_more_than_the_room() -> None:
    for seed in range(500):
        total_kept, room, wanted, give_backs = simulate(seed)
        assert total_kept <= room, seed
        if not give_backs:  # and nothing is refused that the room could hold
            assert total_kept == min(room, wanted), seed


# -- grants within an epoch, and its end ---------------------------------------------------------------


def test_a_grant_in_the_live_epoch_adds_to_it() -> None:
    first = grant(request=use(need="1"))
    later = T0 + timedelta(seconds=60)
    second = grant(ledger(first.epoch), now=later, spent=spent(usd(0.5)), request=use(first.lease_id, need="2"))
    assert not second.started and second.released is None and second.adjust == {}
    assert second.epoch.id == EPOCH_B and second.lease_id == f"{EPOCH_B}.2" and second.epoch.seq == 2
    assert second.want == usd(2)
    assert second.epoch.granted == usd(3) and second.epoch.charged == usd(3)
    assert second.epoch.started_at == T0 and second.epoch.expires_at == later + timedelta(seconds=300)
    assert second.epoch.base == spent()


OLD_HOUR = (Period.HOUR, "2026-12-06T10")
OLD = epoch(
    started_at=T0 - timedelta(hours=1), expires=datetime(2026, 12, 6, 10, 25, tzinfo=UTC), seq=4,
    windows={Period.HOUR: OLD_HOUR[1], Period.DAY: DAY[1], Period.MONTH: MONTH[1]},
    base=spent(usd(1)), granted=usd(3), charged=usd(3),
)  # fmt: skip


def test_an_expired_epoch_returns_its_unspent_charge_and_a_new_one_starts() -> None:
    plan = grant(ledger(OLD), spent=spent(usd(0), usd(2)), old_hour_spent=usd(2), request=use(f"{EPOCH_A}.4", "1"))
    assert plan.started and plan.epoch.id == EPOCH_B and plan.lease_id == f"{EPOCH_B}.1"
    assert plan.released is not None and plan.released.back == usd(2)  # charged $3, spent $1 of it
    assert plan.adjust == {OLD_HOUR: usd(-2), DAY: usd(-2), MONTH: usd(-2)}
    assert plan.deltas() == {OLD_HOUR: usd(-2), HOUR: usd(1), DAY: usd(-1), MONTH: usd(-1)}
    assert plan.epoch.base == spent(usd(0), usd(2)) and plan.epoch.charged == usd(1)


@pytest.mark.parametrize(
    "request_",
    [None, use(None), use("cccccccccccc.9")],
    ids=["expired", "no-lease-held", "another-epoch"],
)
def test_an_epoch_ends_when_expired_or_when_the_agent_holds_no_lease_of_it(request_: LeaseUse | None) -> None:
    live = epoch(charged=usd(1.5), granted=usd(1.5))
    now = live.expires_at if request_ is None else T0 + timedelta(seconds=10)
    plan = grant(ledger(live), now=now, spent=spent(usd(0.5)), request=request_)
    assert plan.started and plan.epoch.id == EPOCH_B and plan.epoch.seq == 1
    assert plan.released is not None and plan.released.back == usd(1) and plan.released.epoch == live
    assert plan.adjust == {HOUR: usd(-1), DAY: usd(-1), MONTH: usd(-1)}


def test_spend_beyond_a_released_epoch_charge_is_added_to_the_reserve() -> None:
    plan = grant(ledger(epoch(charged=usd(1))), spent=spent(usd(1.25)), request=use(None))
    assert plan.released is not None and plan.released.back == usd(-0.25)
    assert plan.adjust[HOUR] == usd(0.25)


def test_catch_up_adds_spend_beyond_the_charge_to_the_reserve_and_the_charge() -> None:
    live = epoch(granted=usd(1), charged=usd(1))
    plan = grant(ledger(live), now=T0 + timedelta(seconds=60), spent=spent(usd(1.4)), request=use(f"{EPOCH_A}.1", "2"))
    assert not plan.started and plan.want == usd(2)
    assert plan.adjust == {HOUR: usd(0.4), DAY: usd(0.4), MONTH: usd(0.4)}
    assert plan.epoch.charged == usd(3.4) and plan.epoch.granted == usd(3)
    assert plan.deltas() == {HOUR: usd(2.4), DAY: usd(2.4), MONTH: usd(2.4)}


# -- judging a batch ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("hour_after", "over", "expected"),
    [
        (usd(6), ZERO, None),  # spent exactly the $1 granted (base $5)
        (usd(6.01), ZERO, None),  # within the 1 % tolerance
        (Amount(6_010_000_001), ZERO, Amount(1)),  # one nano-dollar beyond it
        (usd(6.5), usd(0.5), None),  # the over-estimates the agent reports
        (usd(7), usd(0.5), usd(0.49)),
        (usd(5.5, 10**9), ZERO, None),  # tokens are not judged in an epoch without a token limit
    ],
)
def test_overspent_is_spend_beyond_grants_over_estimates_and_tolerance(
    hour_after: Amount, over: Amount, expected: Amount | None
) -> None:
    assert overspent(epoch(base=spent(usd(5)), granted=usd(1)), hour_after, over, 0.01) == expected


@pytest.mark.parametrize(("tokens", "expected"), [(1_010, None), (1_011, Amount(0, 1)), (1_511, Amount(0, 1))])
def test_overspent_judges_tokens_in_a_token_limited_epoch(tokens: int, expected: Amount | None) -> None:
    ep = epoch(granted=usd(1, 1_000), tokens_limited=True)
    over = Amount(0, 500) if tokens == 1_511 else ZERO
    assert overspent(ep, usd(0.5, tokens), over, 0.01) == expected


ISSUED = {"issued_at": "2026-12-06T11:20:00Z"}


@pytest.mark.parametrize(
    ("lease_id", "last", "now", "expected"),
    [
        (f"{EPOCH_A}.2", ISSUED, T0 + timedelta(seconds=61), True),
        (f"{EPOCH_A}.3", ISSUED, T0 + timedelta(seconds=61), False),  # the latest: nothing missed
        (f"{EPOCH_A}.2", ISSUED, T0 + timedelta(seconds=60), False),  # granted too lately to tell
        (f"{EPOCH_A}.2", ISSUED, T0 + timedelta(minutes=5), False),  # the epoch expired
        (f"{EPOCH_A}.2", None, T0 + timedelta(seconds=61), False),  # no grant on record
        ("cccccccccccc.2", ISSUED, T0 + timedelta(seconds=61), False),  # another epoch
        (None, ISSUED, T0 + timedelta(seconds=61), False),
    ],
)
def test_missed_only_an_older_lease_of_the_live_epoch_granted_a_while_ago(
    lease_id: str | None, last: dict[str, str] | None, now: datetime, expected: bool
) -> None:
    led = ledger(epoch(seq=3), last=last)
    assert missed(led, use(lease_id), now, 60) is expected
    assert missed(led, None, now, 60) is False


@pytest.mark.parametrize(
    ("has_epoch", "lease", "is_open", "ends_live", "ends_expired"),
    [
        (False, use(f"{EPOCH_A}.1"), False, False, False),
        (True, None, False, False, True),
        (True, use(None), False, True, True),
        (True, use(f"{EPOCH_A}.1"), True, False, True),
        (True, use(f"{EPOCH_B}.1"), False, True, True),
    ],
)
def test_open_epoch_and_ended_truth_tables(
    has_epoch: bool, lease: LeaseUse | None, is_open: bool, ends_live: bool, ends_expired: bool
) -> None:
    ep = epoch() if has_epoch else None
    assert open_epoch(ledger(ep), lease) is is_open
    assert ended(ledger(ep), lease, T0 + timedelta(seconds=299)) is ends_live
    assert ended(ledger(ep), lease, T0 + timedelta(seconds=300)) is ends_expired


def test_tokens_spent_before_a_token_limit_appeared_are_not_judged_as_overspend() -> None:
    # The epoch began with no token limit (a lease without tokens); the agent spent 50,000 tokens.
    live = epoch(granted=usd(1), charged=usd(1), started_at=T0 - timedelta(seconds=60))
    now, before = T0, spent(usd(0.5, 50_000))
    plan = grant(ledger(live), now=now, spent=before, request=use(f"{EPOCH_A}.1"),
                 tenant_limits=[lim(Period.DAY, "tokens", 10_000_000)])  # fmt: skip
    assert plan.epoch.tokens_limited and plan.want.tokens > 0
    # It then spends exactly the tokens (and less than the USD) of its first token grant.
    after = before[Period.HOUR] + Amount(0, plan.want.tokens)
    assert overspent(plan.epoch, after, ZERO, CFG.tolerance) is None
