"""What a cost batch does: read what the rules need, count it exactly once, decide, carry out.

1. Read (mostly this instance's caches): the agent, its tenant's settings and prices, and what some
   rules need besides the counts: the tenant's other shards (a tenant budget), the agent's spend
   baseline (a batch spending in the current hour), a fresh copy of the agent (holds it seems not to
   have heard of).
2. Price the records and count them (shared/store/usage.py: one atomic write batch, no read).
3. Decide, purely (shared/domain/spend.py), from the exact totals after the increments: expired budget
   holds lifted, budget thresholds (alerts, once each), hard limits (the agent is held and told
   ``budget_exhausted``), the breaker, runaway loops, cost spikes, unpriced models.
4. Carry out: the agent's holds in one conditional write (shared/domain/holds.py), so a decision
   happens once however many instances reach it; their commands carry deterministic ids and go out
   in one publish; then the alerts.

A redelivered batch is not counted again; its effects are re-derived from the stored totals and
the agent's holds re-sent, so a crash between counting and telling the agent loses nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from fleet_agent.contracts import Command, CostBatch

from shared.domain import budgets, holds, identity, protection, spend
from shared.domain import usage as usage_domain
from shared.domain.agent_record import AgentRecord, Plan, Step, combine
from shared.domain.leases import Amount
from shared.domain.lifecycle import State
from shared.domain.periods import Period, Window
from shared.domain.pricing import format_usd
from shared.domain.rejections import Code, Rejected
from shared.domain.spend import Effects, Inputs
from shared.domain.usage import WindowTotals
from shared.pipeline import signatures
from shared.pipeline.decoding import Decoded
from shared.platform import logs, settings
from shared.services import agent_commands, leases, notifier
from shared.store import agents as agent_store
from shared.store import config, markers
from shared.store import episodes as episode_store
from shared.store import lease_reserve as reserve_store
from shared.store import leases as lease_store
from shared.store import usage as usage_store
from shared.store.config import TenantConfig
from shared.store.increments import Increments

log = logs.get_logger("accounting")


def process_cost(decoded: Decoded, *, unknown: Callable[[str, datetime], Exception]) -> Plan:
    batch = decoded.event
    assert isinstance(batch, CostBatch)
    cfg = settings.get()
    received_at = decoded.message.published_at
    now = datetime.now(UTC)
    # The signature is checked first, on the agent as this instance saw it at most FLEET_CONFIG_CACHE_S
    # ago (a refusal is confirmed on a fresh read). Nothing conditions the count on the agent document,
    # so a key revoked (or an overlap ended) elsewhere still has its batches counted by an instance for
    # up to FLEET_CONFIG_CACHE_S (10 s by default): the revocation delay of the cost path.
    # A job settlement (batch ``job.<id>``) is proven by the fleet key alone (shared/domain/identity.py).
    load = lambda: agent_store.current(batch.agent_id, cfg.config_cache_s)  # noqa: E731
    if identity.is_settlement(batch.batch_id):
        snap = load()
        if snap is not None:
            signatures.check_settlement(decoded, snap.record)
    else:
        snap, _key = signatures.check_fresh(decoded, load)
    if snap is None:
        raise unknown(batch.agent_id, received_at)
    agent = snap.record
    if agent.status is State.DECOMMISSIONED:
        raise Rejected(Code.DECOMMISSIONED, f"agent {batch.agent_id} was decommissioned", agent_id=batch.agent_id)
    judged_at = _first_published(decoded.message.attributes, received_at, cfg.retention_days)
    return count_batch(agent, batch, received_at=received_at, judged_at=judged_at, now=now)


def count_batch(
    agent: AgentRecord, batch: CostBatch, *, received_at: datetime, judged_at: datetime, now: datetime,
    markers: Sequence[Increments] = (), redelivery: bool = True,
) -> Plan:  # fmt: skip
    """Count a proven agent's batch once, decide, carry out (steps 1-4 above); calls judged by ``judged_at``.
    ``markers``: documents the counting commit creates too (OTLP's per-call markers): one that exists makes
    it a duplicate, ``redelivery`` then re-derives the effects from the stored totals (False: the caller)."""
    cfg = settings.get()
    if not batch.records:  # a lease request with nothing to count (the contract allows it only so)
        return Plan(
            skipped="lease_request", commands=_lease_step(agent, batch, None, leases.Context(), now, received_at)
        )
    _check_times(batch, judged_at)
    tenant = config.tenant(agent.tenant)
    tally = usage_domain.tally(batch, agent.tenant, config.table_for(tenant))
    try:
        inputs = read_inputs(agent, tenant, tally, batch_id=batch.batch_id, now=now, received_at=received_at)
        lease = leases.before_count(
            agent, batch, tally, tenant_budget=budgets.parse(tenant.budget) is not None, now=now
        )  # fmt: skip
    except Exception as exc:
        # Nothing is counted yet: fail so Pub/Sub redelivers (a stored document the rules cannot read must
        # not turn the batch into a rejection, acknowledged and never counted).
        raise InputsUnavailable(f"{type(exc).__name__}: {exc}") from exc
    applied = usage_store.apply(
        tally,
        batch_id=batch.batch_id,
        received_at=received_at,
        shards=cfg.tenant_shards,
        marker_retention=marker_retention(cfg.retention_days),
        extra=[*lease.extra, *markers],
        epoch=lease.tag,
    )
    try:
        if applied.duplicate and not redelivery:
            return Plan(skipped="duplicate")
        if applied.duplicate:
            sent = reconcile(batch.agent_id, now=now, actor="system:cost-redelivery", resend=True, lift_expired=True)
            sent += _lease_step(agent, batch, None, lease, now, received_at)
            return Plan(skipped="duplicate", commands=sent)
        plan = carry_out(agent, spend.decide(inputs, applied), now=now)
        plan.commands += _lease_step(agent, batch, applied, lease, now, received_at)
        return plan
    except Exception as exc:
        # The batch is counted: whatever fails now must not turn into a rejection (which acknowledges
        # it); failing makes Pub/Sub redeliver, and the redelivery re-derives the effects.
        raise EffectsFailed(f"{type(exc).__name__}: {exc}") from exc


def _lease_step(
    agent: AgentRecord, batch: CostBatch, applied: usage_domain.Applied | None, ctx: leases.Context, now: datetime,
    asked_at: datetime,
) -> list[Command]:  # fmt: skip
    """The batch against its lease, after counting (shared/services/leases.py), judged on the agent as it
    stands now (a hold this batch placed stops a grant)."""
    if batch.lease is None:
        return []
    current = agent_store.current(agent.agent_id, settings.get().config_cache_s)
    if ctx.ledger is None:
        ctx = leases.Context(ledger=lease_store.cached(agent.agent_id, settings.get().config_cache_s))
    record = current.record if current is not None else agent
    return leases.after_count(record, batch, applied, ctx, now=now, asked_at=asked_at)


def read_inputs(
    agent: AgentRecord, tenant: TenantConfig, tally: usage_domain.Tally, *, batch_id: str, now: datetime,
    received_at: datetime,
) -> Inputs:  # fmt: skip
    """What the rules need besides the counts, read before counting (each read only when a rule needs
    it, and mostly from this instance's caches)."""
    cfg = settings.get()
    rules = protection.resolve(tenant.protection, agent.protection)
    others: dict[str, dict[str, usage_domain.Totals]] = {}
    if budgets.parse(tenant.budget) is not None:
        others = usage_store.other_shard_totals(
            agent.tenant, tally.months, shards=cfg.tenant_shards, max_age_s=cfg.config_cache_s,
            agent_id=agent.agent_id,
        )  # fmt: skip
    baseline = None
    if spend.needs_baseline(tally, now):
        baseline = baselines.get(agent.agent_id, now, rules.spike_baseline_hours)
    return Inputs(
        agent=agent,
        tenant_budget=tenant.budget,
        rules=rules,
        tally=tally,
        batch_id=batch_id,
        now=now,
        received_at=received_at,
        other_shards=others,
        baseline=baseline,
        resend=_unheeded(agent, received_at, now),
    )


class InputsUnavailable(RuntimeError):
    """What the rules need could not be read; nothing was counted, the redelivery will try again."""


class EffectsFailed(RuntimeError):
    """A counted batch's effects could not all be carried out; the redelivery will."""


#: How far a call's own time may be from the time Pub/Sub received its batch. Calls count in the
#: period of their own time; a clock far off would put spend where no limit looks.
MAX_AHEAD = timedelta(minutes=5)
MAX_BEHIND = timedelta(hours=24)


def replay_window(retention_days: int) -> timedelta:
    """How long after its first publication a message replayed by ``fleetctl rejections replay`` is still
    judged by its first publish time (a rejection is kept ``retention_days``)."""
    return timedelta(days=retention_days)


def marker_retention(retention_days: int) -> timedelta:
    """How long a counted batch's marker lives. Why a replayed cost batch is never counted twice: while
    its marker lives it is a duplicate; after, it is refused as ``implausible_time``, since the time it is
    judged by (its publish time, or a ``first_published_at`` at most :func:`replay_window` before it) is
    then more than MAX_BEHIND after its calls. A batch received at T had no call after T + MAX_AHEAD, so
    the marker must outlive replay window + MAX_BEHIND + MAX_AHEAD (checked by tests/unit)."""
    return replay_window(retention_days) + MAX_BEHIND + MAX_AHEAD + timedelta(hours=1)


def _first_published(attributes: dict[str, str], published_at: datetime, retention_days: int) -> datetime:
    """A replayed message (``fleetctl rejections replay``) carries when it was first published. The
    attribute is not signed: it is believed only within the replay window, so a captured batch cannot
    be made to look recent after its marker expired."""
    try:
        first = datetime.fromisoformat(attributes["first_published_at"])
    except (KeyError, ValueError):
        return published_at
    if first.tzinfo is None or published_at - first > replay_window(retention_days):
        return published_at
    return min(first, published_at)


def _check_times(batch: CostBatch, published_at: datetime) -> None:
    earliest = min(r.at for r in batch.records)
    latest = max(r.at for r in batch.records)
    if latest > published_at + MAX_AHEAD or earliest < published_at - MAX_BEHIND:
        raise Rejected(
            Code.IMPLAUSIBLE_TIME,
            f"call times {earliest.isoformat()} .. {latest.isoformat()} are more than {MAX_AHEAD} ahead of or "
            f"{MAX_BEHIND} behind the batch's publish time {published_at.isoformat()}: check the agent's clock",
            agent_id=batch.agent_id,
        )


class _SpikeBaselines:
    """Per instance: each agent's spend baseline, read once per hour (one read)."""

    def __init__(self) -> None:
        self._items: dict[str, tuple[str, protection.Baseline]] = {}

    def get(self, agent_id: str, now: datetime, span_hours: int) -> protection.Baseline:
        hour = now.strftime("%Y-%m-%dT%H")
        hit = self._items.get(agent_id)
        if hit is not None and hit[0] == hour:
            return hit[1]
        base = protection.baseline(usage_store.agent_hours(agent_id, now), now, span_hours)
        if len(self._items) > 10_000:
            self._items.clear()
        self._items[agent_id] = (hour, base)
        return base


baselines = _SpikeBaselines()


def carry_out(agent: AgentRecord, effects: Effects, *, now: datetime) -> Plan:
    """Write the holds (conditionally) and tell the agents first, then raise the alerts: if anything
    fails on the way, the redelivered batch or the next one redoes what matters most."""
    plan = Plan(skipped="unchanged")
    if effects.steps:
        plan = agent_store.update(agent.agent_id, combine(effects.steps))
    sent: list[Command] = list(plan.commands)
    ids = {c.command_id for c in sent}
    sent += [c for c in effects.resend if c.command_id not in ids]
    for tenant, once_key, step in effects.tenant_holds:
        if not markers.seen(f"tenant_hold.{once_key}"):
            # The tenant's hard limit was reached: hold every other agent of the tenant too.
            sent += _apply_to_tenant(tenant, step, lambda other: other.agent_id != agent.agent_id)
            markers.mark(f"tenant_hold.{once_key}")
    if sent:
        agent_commands.publish(sent)
    raised = [alert for alert in effects.alerts if episode_store.raise_once(alert)]
    for alert in raised:
        logs.log(log, alert.message, alert=alert.kind, severity=alert.severity.value, agent_id=alert.agent_id)
    notifier.send_now(raised, by="cost_rules")  # a runaway loop, a hard limit: Slack hears now
    plan.commands = sent
    plan.skipped = None
    return plan


#: When the server last re-sent an agent's holds (per instance): at most once per FLEET_RESEND_AFTER_S.
_resent: dict[str, float] = {}


def _unheeded(agent: AgentRecord, received_at: datetime, now: datetime) -> list[Command]:
    """Commands of holds in force that the agent is calling through (shared.domain.spend.unheeded):
    sent again, at most every FLEET_RESEND_AFTER_S per agent and instance (the SDK applies an id
    once, so an agent that did hear it is not disturbed)."""
    # How long after a hold an agent may still be sending calls (batches in flight) before the server
    # concludes it never heard the command.
    resend_after = timedelta(seconds=settings.get().resend_after_s)
    if not spend.unheeded(agent, received_at, now, resend_after):
        return []
    last = _resent.get(agent.agent_id, 0.0)
    if time.monotonic() - last < resend_after.total_seconds():
        return []
    if len(_resent) > 10_000:
        _resent.clear()
    _resent[agent.agent_id] = time.monotonic()
    fresh = agent_store.read(agent.agent_id)  # never re-send a hold lifted since the cached copy
    return spend.unheeded(fresh.record, received_at, now, resend_after) if fresh is not None else []


def _apply_to_tenant(tenant: str, step: Step, wanted: Callable[[AgentRecord], bool]) -> list[Command]:
    """Apply ``step`` to each live agent of the tenant that ``wanted`` picks, page by page; returns the
    commands to send."""
    sent: list[Command] = []
    for agent in agent_store.each(tenant):
        if agent.status is not State.DECOMMISSIONED and wanted(agent):
            sent += agent_store.update(agent.agent_id, combine([step])).commands
    return sent


def reconcile(
    agent_id: str, *, now: datetime, actor: str, resend: bool = False, lift_expired: bool = False
) -> list[Command]:
    """Bring an agent's budget hold in line with its stored totals and budget: place it if a hard limit
    is reached, lift it if not (after a budget change or a period reset), raise missed alerts, and
    optionally re-send every hold and lift the budget holds whose period has reset (a redelivered
    batch: in the same write). Reads the agent and its month document (two reads)."""
    snap = agent_store.read(agent_id)
    if snap is None:
        return []
    agent = snap.record
    periods = usage_store.agent_periods(agent_id, now)
    totals: WindowTotals = {(period, win): (t, usage_domain.Totals()) for period, (win, t) in periods.items()}
    spec = budgets.parse(agent.budget)
    findings = budgets.reached(spec, "agent", agent_id, totals)
    alerts = [spend.budget_alert(finding, agent.tenant, agent_id, now) for finding in findings]
    raised = [alert for alert in alerts if episode_store.raise_once(alert)]
    exhausted = spend.exhausted(findings, now)
    steps: list[Step] = []
    if lift_expired and holds.expired(agent, now):
        steps.append(lambda record: holds.lift_expired(record, now))
    if exhausted is not None:
        steps.append(spend.budget_hold("budget", exhausted, now))
    elif "budget" in agent.holds:
        steps.append(spend.lift_step("budget", "budget no longer exhausted (raised or reset)", now, actor))
    plan = agent_store.update(agent_id, combine(steps)) if steps else Plan()
    sent = list(plan.commands)
    if resend:
        current = agent_store.get(agent_id)
        ids = {c.command_id for c in sent}
        sent += [holds.command_of(agent_id, h) for h in (current.holds if current else {}).values()
                 if h["command_id"] not in ids]  # fmt: skip
    if sent:
        agent_commands.publish(sent)
    notifier.send_now(raised, by="budget_change")
    return sent


def reconcile_tenant(tenant: str, *, now: datetime, actor: str) -> list[Command]:
    """After a tenant budget change: hold the tenant's agents if a hard limit is now reached, lift
    their tenant holds if none is. Reads the tenant's shards, then pages through its agents."""
    cfg = settings.get()
    config.forget(tenant)
    spec = budgets.parse(config.read_tenant(tenant).budget)
    periods = usage_store.tenant_periods(tenant, now, cfg.tenant_shards)
    totals: WindowTotals = {(period, win): (t, usage_domain.Totals()) for period, (win, t) in periods.items()}
    if spec is not None:  # leases: the reserve is never below what the tenant spent (spend from before)
        reserve_store.raise_reserve(tenant, now, {p: Amount(t.usd_nanos, t.tokens) for p, (_w, t) in periods.items()})
    findings = budgets.reached(spec, "tenant", tenant, totals)
    raised = [
        alert
        for alert in (spend.budget_alert(f, tenant, None, now) for f in findings)
        if episode_store.raise_once(alert)
    ]
    exhausted = spend.exhausted(findings, now)
    step = (
        spend.budget_hold("tenant_budget", exhausted, now)
        if exhausted is not None
        else spend.lift_step("tenant_budget", "tenant budget no longer exhausted (raised or reset)", now, actor)
    )
    sent = _apply_to_tenant(tenant, step, lambda agent: exhausted is not None or "tenant_budget" in agent.holds)
    if sent:
        agent_commands.publish(sent)
    notifier.send_now(raised, by="budget_change")
    return sent


def usage_view(periods: dict[Period, tuple[Window, usage_domain.Totals]], spec: Any) -> dict[str, Any]:
    """The API's view of usage per period, with budgets and what remains."""
    out: dict[str, Any] = {}
    for period, (win, totals) in periods.items():
        budget_usd, left_usd = budgets.remaining(spec, period, "usd", totals.usd_nanos)
        budget_tokens, left_tokens = budgets.remaining(spec, period, "tokens", totals.tokens)
        out[period.value] = {
            "period": win.key,
            "spend_usd": format_usd(totals.usd_nanos),
            "tokens": totals.tokens,
            "input_tokens": totals.input_tokens,
            "output_tokens": totals.output_tokens,
            "calls": totals.calls,
            "failures": totals.failures,
            "unpriced_calls": totals.unpriced,
            "success_rate": totals.success_rate,
            "budget_usd": None if budget_usd is None else format_usd(budget_usd),
            "remaining_usd": None if left_usd is None else format_usd(left_usd),
            "budget_tokens": budget_tokens,
            "remaining_tokens": left_tokens,
            "starts_at": win.starts_at.isoformat(),
            "resets_at": win.resets_at.isoformat(),
        }
    return out
