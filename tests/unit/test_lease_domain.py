"""The pure budget-lease rules (shared/domain/leases.py): sizing a grant, agent limits, the tenant's fair
share, the reserve's keep, judging a batch (test_lease_epochs.py: epochs, rates, when to ask again)."""

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
    Spend,
    ended,
    kept,
    missed,
    overspent,
    plan_grant,
)
from shared.domain.periods import Period

USD = 1_000_000_000  # nano-dollars
T0 = datetime(2026, 12, 6, 11, 20, tzinfo=UTC)
# ttl 300 s, grace 60 s, horizon 60 s (the default is 300), min $0.01 and 4096 tokens, tolerance 1 %, retry 30 s
CFG = Config(horizon_s=60)
EPOCH_A, EPOCH_B, EPOCH_C = "aaaaaaaaaaaa", "bbbbbbbbbbbb", "cccccccccccc"
HOUR, DAY, MONTH = (Period.HOUR, "2026-12-06T11"), (Period.DAY, "2026-12-06"), (Period.MONTH, "2026-12")
WINDOWS = {Period.HOUR: HOUR[1], Period.DAY: DAY[1], Period.MONTH: MONTH[1]}
TO_NOON = 40 * 60  # T0 to the end of its hour
TO_MIDNIGHT = 12 * 3600 + TO_NOON


def spend(
    hour: Amount = ZERO, day: Amount | None = None, month: Amount | None = None, **epochs: Amount
) -> Spend:  # fmt: skip
    """The agent's window spend (day defaults to the hour's, month to the day's) and its epochs' own
    (by epoch id: ``a=...`` for EPOCH_A and so on)."""
    day = hour if day is None else day
    own = {{"a": EPOCH_A, "b": EPOCH_B, "c": EPOCH_C}[k]: v for k, v in epochs.items()}
    return Spend({Period.HOUR: hour, Period.DAY: day, Period.MONTH: month if month is not None else day}, own)


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
        "granted": usd(1), "charged": usd(1), "tokens_limited": False,
    }  # fmt: skip
    fields.update(kw)
    return Epoch(**fields)  # type: ignore[arg-type]


def ledger(ep: Epoch | None = None, last: dict[str, str] | None = None, previous: Epoch | None = None) -> Ledger:
    return Ledger("agent-1", "acme", epoch=ep, previous=previous, last=last)


def grant(led: Ledger | None = None, **kw: object) -> GrantPlan:
    args: dict[str, object] = {
        "now": T0, "spend": spend(), "agent_limits": [], "tenant_limits": [], "reserve": {}, "open_epochs": 0,
        "request": None, "new_epoch_id": EPOCH_B, "cfg": CFG,
    }  # fmt: skip
    args.update(kw)
    return plan_grant(led or ledger(), **args)  # type: ignore[arg-type]


# -- a new epoch -------------------------------------------------------------------------------------


def test_a_first_grant_starts_an_epoch() -> None:
    so_far = spend(usd(0.3, 500), usd(2, 900), usd(7, 5000))
    plan = grant(spend=so_far, request=use(need="0.5"))
    assert plan.started and plan.released is None and plan.previous is None and plan.adjust == {}
    assert plan.lease_id == f"{EPOCH_B}.1" and plan.epoch.id == EPOCH_B and plan.epoch.seq == 1
    assert plan.epoch.started_at == T0 and plan.epoch.expires_at == T0 + timedelta(seconds=300)
    assert plan.epoch.windows == WINDOWS and plan.short == ()
    assert plan.want == usd(0.5) and plan.epoch.granted == plan.epoch.charged == plan.want
    assert plan.epoch.rate == Amount(250_000, 0)  # $0.30 in the hour's first 1200 s (500 tokens: 0 a second)
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
        (None, 1.2, 300_000_000),  # $1.20 in 1200 s of the hour: with no limit, 300 s (the ttl) of it is $0.30
        ("0.2", 1.2, 300_000_000),  # the rate beats a smaller need
        (None, 0, CFG.min_usd_nanos),  # nothing spent, nothing needed: the smallest lease
    ],
)
def test_without_any_limit_the_lease_is_the_most_of_need_rate_and_minimum(
    need: str | None, hour_spent: float, expected: int
) -> None:
    plan = grant(spend=spend(usd(hour_spent, 1_000_000)), request=use(need=need))
    assert plan.want == Amount(expected, 0)  # no token limit anywhere: no tokens in the lease
    assert not plan.epoch.tokens_limited


# -- agent limits ------------------------------------------------------------------------------------


def test_an_agent_hourly_limit_cuts_the_lease_to_what_it_leaves() -> None:
    hourly = lim(Period.HOUR, "usd", USD)
    plan = grant(spend=spend(usd(0.7)), agent_limits=[hourly], request=use(need="5"))
    assert plan.want.usd_nanos == 300_000_000
    assert plan.short == (("agent", hourly),)


@pytest.mark.parametrize("spent_in_epoch", [0, 0.1, 0.5])
def test_the_next_grant_counts_what_the_epoch_may_still_spend_against_the_agent_limit(spent_in_epoch: float) -> None:
    first = grant(spend=spend(usd(0.2)), agent_limits=[lim(Period.HOUR, "usd", USD)], request=use(need="0.5"))
    assert first.want == usd(0.5)
    second = grant(
        ledger(first.epoch), now=T0 + timedelta(seconds=30),
        spend=spend(usd(0.2 + spent_in_epoch), b=usd(spent_in_epoch)),
        agent_limits=[lim(Period.HOUR, "usd", USD)], request=use(first.lease_id, need="5"),
    )  # fmt: skip
    # $1 - ($0.20 before the epoch + its $0.50 charge), however much of that charge it has spent yet
    assert not second.started and second.want == usd(0.3)


def test_a_daily_token_limit_cuts_the_tokens_and_marks_the_epoch_token_limited() -> None:
    plan = grant(spend=spend(usd(0, 100), usd(0, 9_000)), agent_limits=[lim(Period.DAY, "tokens", 10_000)])
    assert plan.epoch.tokens_limited
    assert plan.want.tokens == 1_000  # not the 4096-token minimum: the limit leaves 1000


@pytest.mark.parametrize("period", [Period.HOUR, Period.DAY, Period.MONTH])
def test_a_lease_is_never_negative_when_the_agent_is_over_its_limit(period: Period) -> None:
    plan = grant(spend=spend(usd(1.5, 50_000)), agent_limits=[lim(period, "usd", USD), lim(period, "tokens", 10)])
    assert plan.want == ZERO


def test_an_agent_limit_counts_what_the_previous_epoch_may_still_spend() -> None:
    # Epoch A ended (a restart) having spent $0.20 of the $1 it charged; B has spent $0.10 of $0.30 so far.
    previous = epoch(expires=T0, granted=usd(1), charged=usd(1))
    live = epoch(id=EPOCH_B, granted=usd(0.3), charged=usd(0.3))
    hourly = lim(Period.HOUR, "usd", 2 * USD)
    plan = grant(
        ledger(live, previous=previous), now=T0 + timedelta(seconds=2), spend=spend(usd(0.3), a=usd(0.2), b=usd(0.1)),
        agent_limits=[hourly], request=use(f"{EPOCH_B}.1", need="5"),
    )  # fmt: skip
    assert not plan.started and plan.previous == previous
    assert plan.want == usd(0.7)  # $2 - ($0.30 spent + $0.20 B may still spend + $0.80 A may still spend)
    assert plan.short == (("agent", hourly),)


# -- the tenant's fair share -------------------------------------------------------------------------

FAST = spend(usd(60))  # $60 in the hour's first 1200 s: 60 s of that rate is $3


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
        spend=FAST, tenant_limits=[lim(Period.HOUR, "usd", 10 * USD)], reserve={Period.HOUR: usd(4)},
        open_epochs=open_epochs, request=use(need=need),
    )  # fmt: skip
    assert plan.want == usd(expected)
    assert plan.tenant_limits == {(HOUR, "usd"): 10 * USD}
    assert plan.short == ((("tenant", lim(Period.HOUR, "usd", 10 * USD)),) if need == "9" else ())


def test_a_live_epoch_shares_the_room_with_the_open_epochs_only() -> None:
    live = epoch(granted=ZERO, charged=ZERO, started_at=T0 - timedelta(seconds=2))
    plan = grant(
        ledger(live), spend=FAST, tenant_limits=[lim(Period.HOUR, "usd", 10 * USD)],
        reserve={Period.HOUR: usd(4)}, open_epochs=3, request=use(f"{EPOCH_A}.1"),
    )  # fmt: skip
    assert not plan.started and plan.want == usd(2)  # $6 among the 3 open epochs, its own among them


def test_an_epoch_replacing_one_still_open_does_not_count_itself_twice() -> None:
    live = epoch(granted=ZERO, charged=ZERO, started_at=T0 - timedelta(seconds=2))
    plan = grant(
        ledger(live), spend=FAST, tenant_limits=[lim(Period.HOUR, "usd", 10 * USD)],
        reserve={Period.HOUR: usd(4)}, open_epochs=2, request=use(None),
    )  # fmt: skip
    assert plan.started and plan.want == usd(3)  # the epoch it replaces is one of the 2 open: $6 / 2


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


# -- the ledger, judging a batch ---------------------------------------------------------------------


def test_the_ledger_finds_its_open_and_previous_epochs_by_id_and_by_lease() -> None:
    live, previous = epoch(id=EPOCH_B), epoch(expires=T0)
    led = ledger(live, previous=previous)
    assert led.find(EPOCH_B) is live and led.find(EPOCH_A) is previous and led.find(EPOCH_C) is None
    assert led.named(use(f"{EPOCH_B}.3")) is live and led.named(use(f"{EPOCH_A}.1")) is previous
    assert led.named(use(f"{EPOCH_C}.1")) is None and led.named(use(None)) is None and led.named(None) is None
    assert ledger().find(EPOCH_A) is None and ledger(None, previous=previous).named(use(f"{EPOCH_A}.2")) is previous


@pytest.mark.parametrize(
    ("spent", "over", "expected"),
    [
        (usd(1), ZERO, None),  # spent exactly the $1 granted
        (usd(1.01), ZERO, None),  # within the 1 % tolerance
        (Amount(1_010_000_001), ZERO, Amount(1)),  # one nano-dollar beyond it
        (usd(1.5), usd(0.5), None),  # the over-estimates the agent reports
        (usd(2), usd(0.5), usd(0.49)),
        (usd(0.5, 10**9), ZERO, None),  # tokens are not judged in an epoch without a token limit
    ],
)
def test_overspent_is_the_epoch_spend_beyond_grants_over_estimates_and_tolerance(
    spent: Amount, over: Amount, expected: Amount | None
) -> None:
    assert overspent(epoch(granted=usd(1), charged=usd(1.2)), spent, over, 0.01) == expected


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
        (f"{EPOCH_A}.2", None, T0 + timedelta(seconds=61), False),  # no grant on record (or not final)
        (f"{EPOCH_C}.2", ISSUED, T0 + timedelta(seconds=61), False),  # another epoch
        (None, ISSUED, T0 + timedelta(seconds=61), False),
    ],
)
def test_missed_only_an_older_lease_of_the_live_epoch_granted_a_while_ago(
    lease_id: str | None, last: dict[str, str] | None, now: datetime, expected: bool
) -> None:
    led = ledger(epoch(seq=3), last=last)
    assert missed(led, use(lease_id), now, 60) is expected
    assert missed(led, None, now, 60) is False


def test_missed_never_names_the_previous_epoch() -> None:
    led = ledger(epoch(id=EPOCH_B, seq=3), last=ISSUED, previous=epoch(expires=T0, seq=5))
    assert missed(led, use(f"{EPOCH_A}.2"), T0 + timedelta(seconds=61), 60) is False


@pytest.mark.parametrize(
    ("has_epoch", "lease", "names_it", "ends_live", "ends_expired"),
    [
        (False, use(f"{EPOCH_A}.1"), False, False, False),
        (True, None, False, False, True),
        (True, use(None), False, True, True),
        (True, use(f"{EPOCH_A}.1"), True, False, True),
        (True, use(f"{EPOCH_B}.1"), False, True, True),
    ],
)
def test_named_and_ended_truth_tables(
    has_epoch: bool, lease: LeaseUse | None, names_it: bool, ends_live: bool, ends_expired: bool
) -> None:
    ep = epoch() if has_epoch else None
    assert (ledger(ep).named(lease) is not None) is names_it
    assert ended(ledger(ep), lease, T0 + timedelta(seconds=299)) is ends_live
    assert ended(ledger(ep), lease, T0 + timedelta(seconds=300)) is ends_expired


def test_tokens_spent_before_a_token_limit_appeared_are_not_judged_as_overspend() -> None:
    # The epoch began with no token limit (a lease without tokens); the agent spent 50,000 tokens under it.
    live = epoch(granted=usd(1), charged=usd(1), started_at=T0 - timedelta(seconds=60))
    before = usd(0.5, 50_000)
    plan = grant(ledger(live), spend=spend(before, a=before), request=use(f"{EPOCH_A}.1"),
                 tenant_limits=[lim(Period.DAY, "tokens", 10_000_000)])  # fmt: skip
    assert plan.epoch.tokens_limited and plan.want.tokens > 0
    assert plan.adjust[DAY] == Amount(0, 50_000)  # the tokens it spent beyond its (token-less) charge
    # It then spends exactly the tokens (and less than the USD) of its first token grant.
    assert overspent(plan.epoch, before + Amount(0, plan.want.tokens), ZERO, CFG.tolerance) is None
