"""The cost path and the heartbeat path on fakes, metered: what one event reads, writes and publishes.

The stores are monkeypatched with fakes that count on the invocation's meter (shared/platform/
metering.py) as the real ones do. A budget hold whose period has reset is lifted in the same agent
write and the same publish as the event's own step, on both paths.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from fleet_agent.contracts import Command, CommandType, CostBatch, CostRecord, EventType, Heartbeat, ReportedStatus

from shared.domain import holds, protection, spend
from shared.domain.agent_record import AgentRecord, Plan
from shared.domain.identity import IdentityConfig, Policy
from shared.domain.lifecycle import State
from shared.domain.periods import Period
from shared.domain.pricing import Price, PriceTable
from shared.domain.usage import Applied, Tally, Totals, month_field
from shared.domain.usage import tally as tally_of
from shared.ml import live
from shared.pipeline import handlers
from shared.pipeline.decoding import Decoded, PushedMessage
from shared.platform import metering
from shared.services import accounting, agent_commands
from shared.store import agents as agent_store
from shared.store import config, db, markers
from shared.store import episodes as episode_store
from shared.store import usage as usage_store
from shared.store.config import TenantConfig
from tests.unit.test_http_api import record

NOW = datetime.now(UTC).replace(microsecond=0)
TABLE = PriceTable(prices={"gpt-4o": Price(Decimal("0.0000025"), Decimal("0.00001"))})


@dataclass
class World:
    agent: AgentRecord
    updates: list[Plan] = field(default_factory=list)
    publishes: list[list[Command]] = field(default_factory=list)
    counted: list[Tally] = field(default_factory=list)
    duplicate: bool = False


@pytest.fixture
def world(monkeypatch: pytest.MonkeyPatch) -> World:
    w = World(agent=held_for_an_expired_budget(record("agent-a1", "acme")))

    def read(agent_id: str) -> agent_store.Snapshot | None:
        metering.count(reads=1)
        return agent_store.Snapshot(w.agent, None)

    def update(agent_id: str, decide: Any) -> Plan:
        plan: Plan = decide(w.agent)
        if plan.writes:
            metering.count(writes=plan.writes)
            w.agent = w.agent.model_copy(update=plan.changes)
        w.updates.append(plan)
        return plan

    def apply(tally: Tally, **kw: Any) -> Applied:
        if w.duplicate:
            metering.count(conflicts=1)
            return Applied(duplicate=True)
        w.counted.append(tally)
        writes = 1 + 2 * len(tally.months) + len(tally.minutes)
        metering.count(writes=writes)
        return applied_as_first(tally, writes)

    def agent_periods(agent_id: str, now: datetime) -> Any:
        metering.count(reads=1)
        return {}

    monkeypatch.setattr(agent_store, "current", lambda agent_id, max_age_s: agent_store.Snapshot(w.agent, None))
    monkeypatch.setattr(agent_store, "read", read)
    monkeypatch.setattr(agent_store, "get", lambda agent_id: read(agent_id).record)  # type: ignore[union-attr]
    monkeypatch.setattr(agent_store, "update", update)
    monkeypatch.setattr(usage_store, "apply", apply)
    monkeypatch.setattr(usage_store, "agent_periods", agent_periods)
    monkeypatch.setattr(accounting.baselines, "get", lambda *a: pytest.fail("no spend this hour: no baseline"))
    monkeypatch.setattr(config, "tenant", lambda name: TenantConfig(name, None, None, {}, {}))
    monkeypatch.setattr(config, "table_for", lambda tenant: TABLE)
    monkeypatch.setattr(config, "rules", lambda name: (None, None))
    # Unsigned events of agents without a key, as before issue 18 (the signed paths: test_identity_*.py).
    monkeypatch.setattr(config, "identity", lambda name: IdentityConfig(policy=Policy.OPTIONAL))
    monkeypatch.setattr(markers, "seen", lambda key: False)
    monkeypatch.setattr(markers, "mark", lambda key: None)
    monkeypatch.setattr(episode_store, "raise_once", lambda alert: True)
    monkeypatch.setattr(agent_commands, "publish", lambda sent: w.publishes.append(list(sent)) or [])
    monkeypatch.setattr(live, "for_heartbeats", lambda: None)
    return w


def held_for_an_expired_budget(agent: AgentRecord) -> AgentRecord:
    """Suspended by a daily budget hold that ended an hour ago (the period reset)."""
    yesterday = NOW - timedelta(days=1)
    plan = holds.place(
        agent, "budget", reason="daily budget reached", at=yesterday, key="daily_usd.x", actor="system:budget",
        until=NOW - timedelta(hours=1),
    )  # fmt: skip
    held = agent.model_copy(update=plan.changes)
    assert held.status is State.SUSPENDED and holds.expired(held, NOW) == ["budget"]
    return held


def applied_as_first(tally: Tally, writes: int) -> Applied:
    """The counters after the agent's first batch: the totals are the batch's own deltas."""
    out = Applied(writes=writes, streak=tally.trailing_failures, minutes=tally.minutes, op_hour=tally.ops)
    out.op_minutes = tally.op_minutes
    for month, by_period in tally.windows.items():
        for period, wins in by_period.items():
            for win in wins:
                delta = tally.months[month][month_field(period, win)]
                after = Totals()
                after.add(delta)
                out.agent[(period, win)] = (after, delta)
                out.tenant_shard[(period, win)] = (after, delta)
    return out


def message(at: datetime) -> PushedMessage:
    return PushedMessage(message_id="m-1", published_at=at, raw=b"{}", attributes={}, source="test")


def cost_batch(failures: int) -> Decoded:
    records = [
        CostRecord(
            call_id=f"call-{n:06d}",
            at=NOW - timedelta(hours=2),
            model="gpt-4o",
            input_tokens=10,
            output_tokens=5,
            cost_usd=None,
            success=False,
            latency_ms=1.0,
            operation="ask",
        )
        for n in range(failures)
    ]
    batch = CostBatch(agent_id="agent-a1", batch_id="batch-0001", records=records)
    return Decoded(batch, EventType.COST, "ev-1", message(NOW), None)


def test_a_batch_that_lifts_an_expired_hold_and_opens_the_breaker_writes_the_agent_once(world: World) -> None:
    with metering.metered() as meter:
        plan = handlers.process_cost(cost_batch(failures=5))

    assert len(world.counted) == 1  # counted once
    assert [p.writes for p in world.updates] == [3]  # one agent write: the lift and the breaker, two audits
    assert [[c.command for c in sent] for sent in world.publishes] == [
        [CommandType.BUDGET_RESTORED, CommandType.BREAKER_OPEN]
    ]
    assert [c.command for c in plan.commands] == [CommandType.BUDGET_RESTORED, CommandType.BREAKER_OPEN]
    assert set(world.agent.holds) == {"breaker"} and world.agent.status is State.ACTIVE
    # The agent from this instance's cache, the counters without a read: no read at all.
    assert (meter.reads, meter.writes) == (0, 1 + 2 + 1 + 3)


def test_a_batch_with_no_rule_to_apply_writes_only_its_counters(world: World) -> None:
    world.agent = record("agent-a1", "acme")
    with metering.metered() as meter:
        plan = handlers.process_cost(cost_batch(failures=1))

    assert world.updates == [] and world.publishes == [] and plan.commands == []
    assert (meter.reads, meter.writes) == (0, 1 + 2 + 1)


def test_a_redelivered_batch_lifts_the_expired_hold_in_the_reconciling_write(world: World) -> None:
    world.duplicate = True
    with metering.metered() as meter:
        plan = handlers.process_cost(cost_batch(failures=5))

    assert plan.skipped == "duplicate" and world.counted == []
    assert [p.writes for p in world.updates] == [2]  # the lift and its audit, in one write
    assert [[c.command for c in sent] for sent in world.publishes] == [[CommandType.BUDGET_RESTORED]]
    assert world.agent.holds == {} and world.agent.status is State.ACTIVE
    # The agent and its month (reconcile), the agent again (the holds re-sent as they now are).
    assert (meter.reads, meter.writes, meter.conflicts) == (3, 2, 1)


def test_a_heartbeat_lifts_an_expired_hold_in_its_own_write_and_publish(world: World) -> None:
    hb = Heartbeat(agent_id="agent-a1", seq=5, sent_at=NOW, status=ReportedStatus.BUSY, metrics={"cpu_pct": 5})
    with metering.metered() as meter:
        plan = handlers.process_heartbeat(Decoded(hb, EventType.HEARTBEAT, "ev-2", message(NOW), None))

    assert len(world.updates) == 1 and plan.sample is not None
    assert [[c.command for c in sent] for sent in world.publishes] == [[CommandType.BUDGET_RESTORED]]
    assert world.agent.holds == {} and world.agent.status is State.ACTIVE and world.agent.last_seq == 5
    assert (meter.reads, meter.writes) == (0, 2)  # the agent (with its sample) and the lift's audit


def test_a_stale_heartbeat_still_lifts_an_expired_hold_and_stays_stale(world: World) -> None:
    world.agent = world.agent.model_copy(update={"last_seq": 7})
    hb = Heartbeat(agent_id="agent-a1", seq=3, sent_at=NOW, status=ReportedStatus.BUSY, metrics={"cpu_pct": 5})
    plan = handlers.process_heartbeat(Decoded(hb, EventType.HEARTBEAT, "ev-3", message(NOW), None))

    assert plan.skipped == "stale" and world.agent.holds == {}
    assert [[c.command for c in sent] for sent in world.publishes] == [[CommandType.BUDGET_RESTORED]]


def test_a_heartbeat_without_an_expired_hold_makes_the_heartbeats_plan_alone(world: World) -> None:
    world.agent = record("agent-a1", "acme")
    hb = Heartbeat(agent_id="agent-a1", seq=5, sent_at=NOW, status=ReportedStatus.BUSY, metrics={"cpu_pct": 5})
    with metering.metered() as meter:
        handlers.process_heartbeat(Decoded(hb, EventType.HEARTBEAT, "ev-4", message(NOW), None))

    assert world.publishes == [] and (meter.reads, meter.writes) == (0, 1)


def test_spend_decides_on_the_agent_as_the_lift_leaves_it() -> None:
    agent = held_for_an_expired_budget(record("agent-a1", "acme"))
    batch = cost_batch(failures=1).event
    assert isinstance(batch, CostBatch)
    counted = tally_of(batch, "acme", TABLE)
    inputs = spend.Inputs(
        agent=agent, tenant_budget=None, rules=protection.Protection(), tally=counted, batch_id="b",
        now=NOW, received_at=NOW,
    )  # fmt: skip
    effects = spend.decide(inputs, applied_as_first(counted, 4))
    assert len(effects.steps) == 1 and effects.alerts == []  # the lift alone
    assert not spend.needs_baseline(counted, NOW)  # the calls were two hours ago
    assert Period.HOUR in {p for p, _ in applied_as_first(counted, 4).agent}


def test_a_read_the_rules_need_failing_before_counting_is_retried_not_rejected(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing is counted yet: the batch must come back (a retryable error), never become a rejection."""
    world.agent = record("agent-a1", "acme")

    def unreadable(*args: Any, **kwargs: Any) -> Any:
        raise ValueError("a stored document the rules cannot read")

    monkeypatch.setattr(accounting, "_unheeded", unreadable)
    with pytest.raises(accounting.InputsUnavailable):
        handlers.process_cost(cost_batch(failures=1))
    assert world.counted == [] and world.updates == []
    assert not isinstance(accounting.InputsUnavailable("x"), db.permanent_errors())
