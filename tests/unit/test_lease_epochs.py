"""Budget-lease epochs (shared/domain/leases.py): grants within an epoch, its end and the previous one,
returns and catch-up, the spend rate a grant is sized by, and when to ask again."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from fleet_agent.contracts import LeaseUse

from shared.domain.budgets import Limit
from shared.domain.leases import ZERO, Amount, ended, kept, release, retry_after
from shared.domain.periods import Period
from tests.unit.test_lease_domain import (
    CFG,
    DAY,
    EPOCH_A,
    EPOCH_B,
    EPOCH_C,
    HOUR,
    MONTH,
    T0,
    TO_MIDNIGHT,
    TO_NOON,
    USD,
    WINDOWS,
    epoch,
    grant,
    ledger,
    lim,
    spend,
    usd,
    use,
)

#: A hard limit too large to cut anything: with it a lease is ``horizon`` seconds of the rate (with no hard
#: limit at all, the epoch's lifetime).
ROOMY = [lim(Period.MONTH, "usd", 10_000 * USD)]

# -- grants within an epoch, its end, the previous epoch ------------------------------------------------


def test_a_grant_in_the_live_epoch_adds_to_it() -> None:
    first = grant(request=use(need="1"))
    later = T0 + timedelta(seconds=60)
    second = grant(ledger(first.epoch), now=later, spend=spend(usd(0.5), b=usd(0.5)), agent_limits=ROOMY,
                   request=use(first.lease_id, "2"))  # fmt: skip
    assert not second.started and second.released is None and second.previous is None and second.adjust == {}
    assert second.epoch.id == EPOCH_B and second.lease_id == f"{EPOCH_B}.2" and second.epoch.seq == 2
    assert second.want == usd(2)
    assert second.epoch.granted == usd(3) and second.epoch.charged == usd(3)
    assert second.epoch.started_at == T0 and second.epoch.expires_at == later + timedelta(seconds=300)


@pytest.mark.parametrize(
    "request_",
    [None, use(None), use(f"{EPOCH_C}.9")],
    ids=["expired", "no-lease-held", "another-epoch"],
)
def test_an_ended_epoch_becomes_the_previous_one_and_is_not_returned_at_the_grant(request_: LeaseUse | None) -> None:
    live = epoch(charged=usd(1.5), granted=usd(1.5))
    now = live.expires_at + timedelta(seconds=5) if request_ is None else T0 + timedelta(seconds=10)
    plan = grant(ledger(live), now=now, spend=spend(usd(0.5), a=usd(0.5)), request=request_)
    assert plan.started and plan.epoch.id == EPOCH_B and plan.epoch.seq == 1 and plan.lease_id == f"{EPOCH_B}.1"
    # It ended now at the latest (an expired one keeps its expiry): its return is due a grace after that.
    assert plan.previous == replace(live, expires_at=min(live.expires_at, now))
    assert plan.released is None and plan.adjust == {}  # returned later, by the tick
    assert plan.deltas() == {HOUR: plan.want, DAY: plan.want, MONTH: plan.want}


def test_a_new_epoch_while_an_older_previous_is_pending_returns_that_one_at_once() -> None:
    old_hour = (Period.HOUR, "2026-12-06T10")
    older = epoch(
        started_at=T0 - timedelta(minutes=21), expires=datetime(2026, 12, 6, 11, 0, tzinfo=UTC), seq=4,
        windows={Period.HOUR: old_hour[1], Period.DAY: DAY[1], Period.MONTH: MONTH[1]},
        granted=usd(3), charged=usd(3),
    )  # fmt: skip
    live = epoch(id=EPOCH_B, started_at=T0 - timedelta(seconds=30), charged=usd(0.5), granted=usd(0.5))
    plan = grant(
        ledger(live, previous=older), spend=spend(usd(0.3), usd(2), a=usd(1), b=usd(0.3)),
        request=use(None, "1"), new_epoch_id=EPOCH_C,
    )  # fmt: skip
    assert plan.started and plan.epoch.id == EPOCH_C and plan.lease_id == f"{EPOCH_C}.1"
    assert plan.previous == replace(live, expires_at=T0)
    assert plan.released is not None and plan.released.epoch == older
    assert plan.released.back == usd(2)  # it charged $3 and spent $1 of it (its own counter)
    assert plan.adjust == {old_hour: usd(-2), DAY: usd(-2), MONTH: usd(-2)}
    assert plan.want == usd(1)
    assert plan.deltas() == {old_hour: usd(-2), HOUR: usd(1), DAY: usd(-1), MONTH: usd(-1)}


def test_spend_beyond_an_older_previous_charge_is_added_to_the_reserve_at_once() -> None:
    older = epoch(expires=T0 - timedelta(seconds=20), started_at=T0 - timedelta(minutes=3), charged=usd(1))
    live = epoch(id=EPOCH_B, started_at=T0 - timedelta(seconds=20))
    plan = grant(ledger(live, previous=older), spend=spend(usd(1.5), a=usd(1.25)), request=use(None))
    assert plan.released is not None and plan.released.back == usd(-0.25)
    assert plan.adjust[HOUR] == usd(0.25)


def test_release_gives_back_the_charge_less_the_epoch_own_spend() -> None:
    ep = epoch(granted=usd(2), charged=usd(3, 1_000))
    rel = release(ep, usd(1, 400))
    assert rel.epoch == ep and rel.back == usd(2, 600)
    assert rel.deltas() == {HOUR: usd(-2, -600), DAY: usd(-2, -600), MONTH: usd(-2, -600)}
    assert release(ep, usd(3.5, 1_000)).deltas()[DAY] == usd(0.5)  # spent beyond it: added


def test_catch_up_adds_the_epoch_spend_beyond_its_charge_to_the_reserve_and_the_charge() -> None:
    live = epoch(granted=usd(1), charged=usd(1))
    now = T0 + timedelta(seconds=60)
    plan = grant(ledger(live), now=now, spend=spend(usd(5), a=usd(1.4)), agent_limits=ROOMY,
                 request=use(f"{EPOCH_A}.1", "2"))  # fmt: skip
    assert not plan.started and plan.want == usd(2)
    assert plan.adjust == {HOUR: usd(0.4), DAY: usd(0.4), MONTH: usd(0.4)}
    assert plan.epoch.charged == usd(3.4) and plan.epoch.granted == usd(3)
    assert plan.deltas() == {HOUR: usd(2.4), DAY: usd(2.4), MONTH: usd(2.4)}


def test_spend_outside_the_epoch_is_no_catch_up() -> None:
    # $5 this hour, but only $0.50 of it under the epoch: the rest went to the reserve when counted.
    plan = grant(ledger(epoch()), now=T0 + timedelta(seconds=60), spend=spend(usd(5), a=usd(0.5)),
                 agent_limits=ROOMY, request=use(f"{EPOCH_A}.1", "2"))  # fmt: skip
    assert plan.adjust == {} and plan.epoch.charged == usd(3)


def test_a_new_epoch_at_the_top_of_the_hour_is_sized_by_the_rate_of_the_one_it_replaces_first() -> None:
    # Epoch A spent $10 in its 240 s (a rate of $150 an hour) when it was granted at 11:59.
    noon = datetime(2026, 12, 6, 12, tzinfo=UTC)
    a = epoch(started_at=noon - timedelta(minutes=5), expires=noon, granted=usd(10), charged=usd(10))
    last = grant(ledger(a), now=datetime(2026, 12, 6, 11, 59, tzinfo=UTC), spend=spend(usd(10), a=usd(10)),
                 agent_limits=ROOMY, request=use(f"{EPOCH_A}.1"))  # fmt: skip
    assert not last.started and last.epoch.rate == Amount(41_666_666, 0) and last.epoch.expires_at == noon
    # At 12:00:00.2 the new hour has no spend yet and the new epoch none either.
    top = datetime(2026, 12, 6, 12, 0, 0, 200_000, tzinfo=UTC)
    plan = grant(ledger(last.epoch), now=top, spend=spend(ZERO, usd(10), a=usd(10)), agent_limits=ROOMY,
                 request=use(last.lease_id))  # fmt: skip
    assert plan.started and plan.previous is not None and plan.previous.id == EPOCH_A
    assert plan.epoch.windows[Period.HOUR] == "2026-12-06T12"
    assert plan.want == Amount(CFG.horizon_s * 41_666_666, 0)  # about $2.50, not the $0.01 minimum
    assert plan.epoch.rate == ZERO  # ... but only the rate it measured itself is kept
    # 30 s later it has spent $0.01: its next grant is sized by its own rate, not by A's.
    later = grant(ledger(plan.epoch, previous=plan.previous), now=top + timedelta(seconds=30),
                  spend=spend(usd(0.01), usd(10.01), a=usd(10), b=usd(0.01)), agent_limits=ROOMY,
                  request=use(plan.lease_id))  # fmt: skip
    assert not later.started and later.epoch.rate == Amount(333_333, 0)  # $0.01 in 30 s (the hour's: 60 s)
    assert later.want == Amount(CFG.horizon_s * 333_333, 0)


@pytest.mark.parametrize(("age_s", "expected"), [(0.2, USD), (1, USD), (4, USD // 4), (40, USD // 40)])
def test_an_epoch_own_spend_rate_counts_from_its_first_second(age_s: float, expected: int) -> None:
    live = epoch(started_at=T0 - timedelta(seconds=age_s), granted=usd(2), charged=usd(2))
    # $1 this hour ($0.05 a minute over its 1200 s), all of it in the epoch: the epoch's rate, over >= 1 s
    plan = grant(ledger(live), spend=spend(usd(1), a=usd(1)), agent_limits=ROOMY, request=use(f"{EPOCH_A}.1"))
    assert not plan.started and plan.epoch.rate == Amount(expected, 0)
    assert plan.want == Amount(CFG.horizon_s * expected, 0)


def test_a_first_epoch_inherits_no_rate() -> None:
    previous = epoch(expires=T0 - timedelta(seconds=10), rate=Amount(41_666_666, 0))
    plan = grant(ledger(None, previous=previous), spend=spend(a=usd(1)))
    assert plan.started and plan.epoch.rate == ZERO and plan.want == Amount(CFG.min_usd_nanos, 0)
    assert plan.previous == previous and plan.released is None


def test_an_inherited_rate_does_not_outlive_a_slowdown() -> None:
    top = datetime(2026, 12, 6, 12, 0, 0, 200_000, tzinfo=UTC)
    fast = epoch(started_at=top - timedelta(minutes=5), expires=top, windows={**WINDOWS, Period.HOUR: "2026-12-06T11"},
                 rate=Amount(41_666_666, 0))  # fmt: skip
    led, lease_id, spent_so_far = ledger(fast), f"{EPOCH_A}.1", ZERO
    plan = None
    for minute in range(31):  # a grant a minute; the agent spends $0.005 a minute ($0.30 an hour)
        now = top + timedelta(minutes=minute)
        plan = grant(led, now=now, spend=spend(spent_so_far, b=spent_so_far), request=use(lease_id))
        led, lease_id = ledger(plan.epoch, previous=plan.previous), plan.lease_id
        spent_so_far += usd(0.005)
    assert plan is not None and plan.epoch.id == EPOCH_B and plan.epoch.seq == 31
    assert plan.want.usd_nanos <= 5 * CFG.min_usd_nanos  # 60 s of the agent's recent rate, or the minimum


# -- when to ask again -------------------------------------------------------------------------------


#: The open epoch (granted at T0, 300 s) returns what the agent did not spend 60 s after it ends; the agent
#: asks again 30 s after that: its own unspent lease no longer counts against its limit.
OPEN_EPOCH_RETURN = 300 + 60 + 30


def test_retry_after_an_agent_limit_short_is_that_window_reset() -> None:
    for period in (Period.HOUR, Period.DAY):
        plan = grant(spend=spend(usd(0.7)), agent_limits=[lim(period, "usd", USD)], request=use(need="5"))
        assert plan.short == (("agent", lim(period, "usd", USD)),)
        assert retry_after(plan, kept(plan, {}), usd(5), T0, CFG) == min(OPEN_EPOCH_RETURN, TO_NOON)
    near_reset = T0.replace(minute=59, second=50)  # the hour resets before the open epoch returns
    plan = grant(
        now=near_reset, spend=spend(usd(0.7)), agent_limits=[lim(Period.HOUR, "usd", USD)], request=use(need="5")
    )
    assert retry_after(plan, kept(plan, {}), usd(5), near_reset, CFG) == 10


def test_retry_after_a_tenant_limit_short_is_the_shared_wait() -> None:
    plan = grant(tenant_limits=[lim(Period.HOUR, "usd", USD)], reserve={Period.HOUR: usd(0.8)}, request=use(need="1"))
    assert plan.short == (("tenant", lim(Period.HOUR, "usd", USD)),) and plan.want == usd(0.2)
    assert retry_after(plan, usd(0.2), usd(1), T0, CFG) == CFG.shared_retry_s
    # Concurrent grants took the room the plan saw: no limit was short when sized, the wait is the same.
    roomy = grant(tenant_limits=[lim(Period.HOUR, "usd", 10 * USD)], request=use(need="1"))
    assert roomy.short == () and retry_after(roomy, usd(0.4), usd(1), T0, CFG) == CFG.shared_retry_s


def test_retry_after_an_agent_and_a_tenant_limit_short_is_the_agent_reset() -> None:
    plan = grant(
        spend=spend(usd(0.7)), agent_limits=[lim(Period.HOUR, "usd", USD)],
        tenant_limits=[lim(Period.DAY, "usd", USD)], reserve={Period.DAY: usd(0.9)}, request=use(need="5"),
    )  # fmt: skip
    assert {scope for scope, _ in plan.short} == {"agent", "tenant"}
    assert retry_after(plan, kept(plan, {}), usd(5), T0, CFG) == min(TO_NOON, OPEN_EPOCH_RETURN)


@pytest.mark.parametrize(
    ("kept_amount", "need"),
    [(usd(5), usd(5)), (usd(6, 10), usd(5, 10)), (ZERO, ZERO), (usd(0.3), ZERO)],
    ids=["exactly", "more", "nothing-needed", "no-need"],
)
def test_no_retry_after_when_what_is_kept_covers_the_need(kept_amount: Amount, need: Amount) -> None:
    plan = grant(spend=spend(usd(0.7)), agent_limits=[lim(Period.HOUR, "usd", USD)], request=use(need="5"))
    assert retry_after(plan, kept_amount, need, T0, CFG) is None


def test_retry_after_tokens_short() -> None:
    plan = grant(agent_limits=[lim(Period.HOUR, "tokens", 1_000)], request=use(need="0.01", need_tokens=2_000))
    assert plan.want == usd(0.01, 1_000) and plan.short == (("agent", lim(Period.HOUR, "tokens", 1_000)),)
    assert retry_after(plan, plan.want, usd(0.01, 2_000), T0, CFG) == min(TO_NOON, OPEN_EPOCH_RETURN)


def test_no_retry_after_for_tokens_without_a_token_limit() -> None:
    # The SDK always names its calls' tokens; without a token limit a grant carries none, and covers them.
    for limits in ([], [lim(Period.HOUR, "usd", USD)]):
        plan = grant(agent_limits=limits, request=use(need="0.01", need_tokens=1_750))
        assert plan.want.tokens == 0 and plan.short == ()
        assert retry_after(plan, plan.want, usd(0.01, 1_750), T0, CFG) is None


def test_retry_after_several_short_agent_limits_is_the_latest_reset() -> None:
    limits = [lim(Period.HOUR, "usd", USD), lim(Period.DAY, "usd", 5 * USD)]
    plan = grant(spend=spend(usd(0.7), usd(4.9)), agent_limits=limits, request=use(need="0.5"))
    assert len(plan.short) == 2 and plan.want == usd(0.1)
    # The latest reset (midnight), bounded by the open epoch's return.
    assert retry_after(plan, plan.want, usd(0.5), T0, CFG) == min(TO_MIDNIGHT, OPEN_EPOCH_RETURN)


def test_retry_after_a_short_caused_by_the_previous_epoch_is_its_return() -> None:
    live = epoch(charged=usd(1), granted=usd(1))  # the agent restarts having spent $0.20 of it
    plan = grant(ledger(live), spend=spend(usd(0.2), a=usd(0.2)), agent_limits=[lim(Period.HOUR, "usd", USD)],
                 request=use(None, "0.5"))  # fmt: skip
    assert plan.started and plan.want == ZERO and plan.previous is not None  # $0.20 + $0.80 A may still spend
    assert plan.previous.release_at(CFG.grace_s) == T0 + timedelta(seconds=CFG.grace_s)
    # A is returned a grace after it ended (then $0.80 is free again), by the next tick: ask after both.
    assert retry_after(plan, ZERO, usd(0.5), T0, CFG) == CFG.grace_s + CFG.shared_retry_s < TO_NOON


def test_retry_after_is_the_reset_when_it_comes_before_the_previous_epoch_return() -> None:
    now = datetime(2026, 12, 6, 11, 59, 30, tzinfo=UTC)
    live = epoch(started_at=now - timedelta(seconds=30), expires=now + timedelta(seconds=30))
    plan = grant(ledger(live), now=now, spend=spend(usd(0.2), a=usd(0.2)), agent_limits=[lim(Period.HOUR, "usd", USD)],
                 request=use(None, "0.5"))  # fmt: skip
    assert plan.started and plan.want == ZERO and plan.previous is not None
    assert retry_after(plan, ZERO, usd(0.5), now, CFG) == 30  # the hour resets at noon, before A's return
    # A tenant limit short only: the shared wait, whatever the previous epoch.
    shared = grant(ledger(live), now=now, spend=spend(usd(0.2), a=usd(0.2)), request=use(None, "0.5"),
                   tenant_limits=[lim(Period.DAY, "usd", USD)], reserve={Period.DAY: usd(0.9)})  # fmt: skip
    assert shared.short and {scope for scope, _ in shared.short} == {"tenant"} and shared.previous is not None
    assert retry_after(shared, shared.want, usd(0.5), now, CFG) == CFG.shared_retry_s


# -- with no hard limit; a request in an epoch's first seconds ------------------------------------------


@pytest.mark.parametrize(
    ("agent", "tenant", "horizon"),
    [
        ([], [], CFG.ttl_s),
        ([Limit(Period.DAY, "usd", None, USD)], [Limit(Period.DAY, "usd", None, USD)], CFG.ttl_s),  # soft only
        (ROOMY, [], CFG.horizon_s),
        ([], ROOMY, CFG.horizon_s),
        ([lim(Period.DAY, "tokens", 10**9)], [], CFG.horizon_s),  # a token limit is a limit
    ],
    ids=["none", "soft-only", "agent", "tenant", "tokens"],
)
def test_without_any_hard_limit_a_lease_covers_the_epoch_lifetime(
    agent: list[Limit], tenant: list[Limit], horizon: int
) -> None:
    plan = grant(spend=spend(usd(1.2)), agent_limits=agent, tenant_limits=tenant)  # $0.001 a second
    assert plan.want.usd_nanos == horizon * 1_000_000


@pytest.mark.parametrize(
    ("asked_s", "ends"),
    [(None, True), (-3, False), (0, False), (10, False), (10.5, True), (200, True)],
)
def test_a_request_naming_no_lease_ends_the_epoch_only_if_asked_once_it_settled(
    asked_s: float | None, ends: bool
) -> None:
    led, now = ledger(epoch()), T0 + timedelta(seconds=20)  # the epoch started at T0
    asked_at = None if asked_s is None else T0 + timedelta(seconds=asked_s)
    for lease in (use(None), use(f"{EPOCH_C}.1")):  # no lease, or one of another epoch
        assert ended(led, lease, now, asked_at=asked_at) is ends
    assert ended(led, use(f"{EPOCH_A}.1"), now, asked_at=asked_at) is False
    assert ended(led, None, now, asked_at=asked_at) is False
    assert ended(led, use(None), T0 + timedelta(seconds=300), asked_at=asked_at) is True  # expiry always ends it


def test_settle_s_is_how_long_a_request_naming_no_lease_is_forgiven() -> None:
    led = ledger(epoch())
    assert ended(led, use(None), T0 + timedelta(seconds=20), asked_at=T0 + timedelta(seconds=4)) is False
    assert ended(led, use(None), T0 + timedelta(seconds=20), asked_at=T0 + timedelta(seconds=4), settle_s=3) is True


def test_a_request_naming_no_lease_in_the_epoch_first_seconds_tops_it_up() -> None:
    live = epoch(granted=usd(0.5), charged=usd(0.5))
    now = T0 + timedelta(seconds=12)
    early = grant(ledger(live), now=now, request=use(None, "1"), asked_at=T0 + timedelta(seconds=4))
    assert not early.started and early.previous is None and early.lease_id == f"{EPOCH_A}.2"
    assert early.want == usd(1) and early.epoch.granted == usd(1.5)
    late = grant(ledger(live), now=now, request=use(None, "1"), asked_at=T0 + timedelta(seconds=11))
    assert late.started and late.epoch.id == EPOCH_B and late.previous == replace(live, expires_at=now)
    quick = replace(CFG, settle_s=3)  # plan_grant judges by its config's settle_s
    eager = grant(ledger(live), now=now, request=use(None, "1"), asked_at=T0 + timedelta(seconds=4), cfg=quick)
    assert eager.started


# -- epochs begun without a tenant budget (not in the reserve) ---------------------------------------------

BUDGET = [lim(Period.DAY, "usd", 100 * USD)]


@pytest.mark.parametrize(
    ("agent", "tenant", "reserved"),
    [([], [], False), (ROOMY, [], False), ([], [Limit(Period.DAY, "usd", None, USD)], False), ([], BUDGET, True)],
    ids=["no-limits", "agent-only", "tenant-soft", "tenant-hard"],
)
def test_an_epoch_goes_into_the_reserve_only_if_the_tenant_has_a_budget(
    agent: list[Limit], tenant: list[Limit], reserved: bool
) -> None:
    plan = grant(agent_limits=agent, tenant_limits=tenant)
    assert plan.started and plan.epoch.reserved is reserved


def test_a_tenant_budget_ends_an_epoch_begun_without_one() -> None:
    live = epoch(reserved=False, started_at=T0 - timedelta(seconds=30))
    asking: dict[str, object] = {"spend": spend(usd(0.4), a=usd(0.4)), "request": use(f"{EPOCH_A}.1")}
    assert not grant(ledger(live), **asking).started  # still no budget: it goes on
    plan = grant(ledger(live), tenant_limits=BUDGET, **asking)
    assert plan.started and plan.epoch.id == EPOCH_B and plan.epoch.reserved
    assert plan.previous == replace(live, expires_at=T0) and plan.released is None and plan.adjust == {}
    assert not grant(ledger(replace(live, reserved=True)), tenant_limits=BUDGET, **asking).started


@pytest.mark.parametrize("reserved", [True, False])
def test_a_previous_epoch_begun_without_a_budget_returns_nothing_to_the_reserve(reserved: bool) -> None:
    older = epoch(expires=T0 - timedelta(seconds=20), started_at=T0 - timedelta(minutes=3), reserved=reserved)
    live = epoch(id=EPOCH_B, started_at=T0 - timedelta(seconds=20))
    plan = grant(ledger(live, previous=older), spend=spend(usd(0.5), a=usd(0.25)), tenant_limits=BUDGET,
                 request=use(None), new_epoch_id=EPOCH_C)  # fmt: skip
    assert plan.started and plan.released is not None and plan.released.back == usd(0.75)
    assert plan.adjust == ({HOUR: usd(-0.75), DAY: usd(-0.75), MONTH: usd(-0.75)} if reserved else {})


@pytest.mark.parametrize("reserved", [True, False])
def test_catch_up_changes_the_reserve_only_for_a_reserved_epoch(reserved: bool) -> None:
    live = epoch(granted=usd(1), charged=usd(1), reserved=reserved)
    plan = grant(ledger(live), now=T0 + timedelta(seconds=60), spend=spend(usd(5), a=usd(1.4)), agent_limits=ROOMY,
                 request=use(f"{EPOCH_A}.1", "2"))  # fmt: skip
    assert not plan.started and plan.epoch.reserved is reserved
    assert plan.adjust == ({HOUR: usd(0.4), DAY: usd(0.4), MONTH: usd(0.4)} if reserved else {})
    assert plan.epoch.charged == usd(3.4)  # the charge counts the spend all the same (the agent's own limits)
