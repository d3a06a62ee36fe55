"""What a cost batch does: count it exactly once, then apply the budget and protection rules.

1. Price the records and count them (shared/store/usage.py: one atomic write batch, no read).
2. From the exact totals after the increments: budget thresholds (alerts, once each), hard limits
   (the agent is held and told ``budget_exhausted``), the breaker, runaway loops, cost spikes,
   unpriced models.
3. Holds are conditional writes to the agent document (shared/domain/holds.py), so a decision
   happens once however many instances reach it; their commands carry deterministic ids.

A redelivered batch is not counted again; its effects are re-derived from the stored totals and
the agent's holds re-sent, so a crash between counting and telling the agent loses nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from fleet_agent.contracts import Command, CostBatch

from shared.domain import budgets, holds, protection
from shared.domain import usage as usage_domain
from shared.domain.agent_record import AgentRecord, Plan, Step, combine
from shared.domain.alerts import Alert, Severity
from shared.domain.budgets import Finding, Kind, WindowTotals
from shared.domain.lifecycle import State
from shared.domain.periods import Period, Window
from shared.domain.rejections import Code, Rejected
from shared.pipeline.decoding import Decoded
from shared.platform import logs, settings
from shared.services import agent_commands
from shared.store import agents as agent_store
from shared.store import config, markers
from shared.store import episodes as episode_store
from shared.store import usage as usage_store
from shared.store.config import TenantConfig

log = logs.get_logger("accounting")


@dataclass
class Effects:
    """What the rules decided for one batch."""

    alerts: list[Alert] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)
    #: Other agents of the tenant to hold (a tenant's hard limit was reached): (tenant, once-key, step).
    tenant_holds: list[tuple[str, str, Step]] = field(default_factory=list)
    #: Holds the agent seems not to have heard of (it kept calling): their commands, sent again.
    resend: list[Command] = field(default_factory=list)


def process_cost(decoded: Decoded, *, unknown: Callable[[str, datetime], Exception]) -> Plan:
    batch = decoded.event
    assert isinstance(batch, CostBatch)
    cfg = settings.get()
    received_at = decoded.message.published_at
    now = datetime.now(UTC)
    snap = agent_store.current(batch.agent_id, cfg.config_cache_s)
    if snap is None:
        raise unknown(batch.agent_id, received_at)
    agent = snap.record
    if agent.status is State.DECOMMISSIONED:
        raise Rejected(Code.DECOMMISSIONED, f"agent {batch.agent_id} was decommissioned", agent_id=batch.agent_id)
    _check_times(batch, _first_published(decoded.message.attributes, received_at))
    lifted: list[Command] = []
    if holds.expired(agent, now):  # the budget period reset: the SDK resumed at `until`, so does the server
        lifted = lift_expired(agent, now)
        agent = (agent_store.cache.get(batch.agent_id) or snap).record
    tenant = config.tenant(agent.tenant)
    tally = usage_domain.tally(batch, agent.tenant, config.table_for(tenant))
    applied = usage_store.apply(
        tally,
        batch_id=batch.batch_id,
        received_at=received_at,
        shards=cfg.tenant_shards,
        marker_retention=timedelta(days=cfg.retention_days + 1),
    )
    try:
        if applied.duplicate:
            sent = reconcile(batch.agent_id, now=now, actor="system:cost-redelivery", resend=True)
            return Plan(skipped="duplicate", commands=sent)
        effects = decide(agent, tenant, tally, applied, batch_id=batch.batch_id, now=now, received_at=received_at)
        plan = carry_out(agent, effects, now=now)
    except Exception as exc:
        # The batch is counted: whatever fails now must not turn into a rejection (which acknowledges
        # it); failing makes Pub/Sub redeliver, and the redelivery re-derives the effects.
        raise EffectsFailed(f"{type(exc).__name__}: {exc}") from exc
    plan.commands = lifted + plan.commands
    return plan


class EffectsFailed(RuntimeError):
    """A counted batch's effects could not all be carried out; the redelivery will."""


#: How far a call's own time may be from the time Pub/Sub received its batch. Calls count in the
#: period of their own time; a clock far off would put spend where no limit looks.
MAX_AHEAD = timedelta(minutes=5)
MAX_BEHIND = timedelta(hours=24)


def _first_published(attributes: dict[str, str], published_at: datetime) -> datetime:
    """A replayed message (``fleetctl rejections replay``) carries when it was first published."""
    try:
        first = datetime.fromisoformat(attributes["first_published_at"])
    except (KeyError, ValueError):
        return published_at
    return min(first, published_at) if first.tzinfo else published_at


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


def _current(win: Window, now: datetime) -> bool:
    return win.starts_at <= now < win.resets_at


def decide(
    agent: AgentRecord,
    tenant: TenantConfig,
    tally: usage_domain.Tally,
    applied: usage_store.Applied,
    *,
    batch_id: str,
    now: datetime,
    received_at: datetime,
) -> Effects:
    cfg = settings.get()
    out = Effects()
    agent_id = agent.agent_id
    out.resend = _unheeded(agent, received_at, now)

    # Budgets: the agent's (exact totals) and the tenant's (its shard exactly, the others as last read).
    agent_spec = budgets.parse(agent.budget)
    # Level, not crossing: an alert whose raising was lost to a crash is raised by the next batch; ids
    # make each one once, and each instance remembers which it raised or found.
    agent_findings = budgets.reached(agent_spec, "agent", agent_id, applied.agent)
    for finding in agent_findings:
        out.alerts.append(_budget_alert(finding, agent.tenant, agent_id, now))
    exhausted = _exhausted(agent_findings, now)
    if exhausted is not None:
        out.steps.append(_budget_hold("budget", exhausted, now))
    tenant_spec = budgets.parse(tenant.budget)
    if tenant_spec is not None:
        estimate = usage_store.tenant_estimate(
            agent.tenant, applied.tenant_shard, shards=cfg.tenant_shards, max_age_s=cfg.config_cache_s,
            agent_id=agent_id,
        )  # fmt: skip
        tenant_findings = budgets.reached(tenant_spec, "tenant", agent.tenant, estimate)
        for finding in tenant_findings:
            out.alerts.append(_budget_alert(finding, agent.tenant, None, now))
        tenant_exhausted = _exhausted(tenant_findings, now)
        if tenant_exhausted is not None:
            step = _budget_hold("tenant_budget", tenant_exhausted, now)
            out.steps.append(step)
            out.tenant_holds.append((agent.tenant, tenant_exhausted.alert_id, step))

    for model in sorted(tally.unpriced_models):
        day = now.strftime("%Y-%m-%d")
        out.alerts.append(
            Alert(
                id=f"unpriced_model.{agent.tenant}.{model}.{day}",
                kind="unpriced_model",
                severity=Severity.WARNING,
                tenant=agent.tenant,
                agent_id=agent_id,
                window=day,
                message=(
                    f"model {model} has no price and agent {agent_id} reported no cost: its calls are counted "
                    f"as unpriced, not $0. Set one with PUT /v1/prices/{model}"
                ),
                at=now,
                details={"model": model},
            )
        )

    rules = protection.resolve(tenant.protection, agent.protection)
    minutes = {f"{hour[-2:]}:{mm}": counts for hour, per in applied.minutes.items() for mm, counts in per.items()}
    change = protection.breaker(
        rules,
        agent.holds.get("breaker"),
        streak=applied.streak,
        minutes=minutes,
        outcomes=tally.outcomes,
        received_at=received_at,
    )
    if change is not None:
        out.steps.append(_breaker_step(change, agent_id, batch_id, now))
        out.alerts.append(
            Alert(
                id=f"breaker_{change.action}.{agent_id}.{batch_id}",
                kind=f"breaker_{change.action}",
                severity=Severity.WARNING if change.action == "open" else Severity.INFO,
                tenant=agent.tenant,
                agent_id=agent_id,
                message=f"circuit breaker of {agent_id} {'opened' if change.action == 'open' else 'closed'}: "
                f"{change.reason}",
                at=now,
                details={"cooldown_s": change.cooldown_s},
            )
        )

    for hour, per_minute in applied.minutes.items():
        reason = protection.runaway(
            rules,
            minutes=per_minute,
            op_minutes=applied.op_minutes.get(hour, {}),
            op_hour=applied.op_hour.get(hour, {}),
        )
        if reason is None:
            continue
        out.alerts.append(
            Alert(
                id=f"runaway.{agent_id}.{hour}",
                kind="runaway_loop",
                severity=Severity.CRITICAL,
                tenant=agent.tenant,
                agent_id=agent_id,
                window=hour,
                message=f"{agent_id} looks stuck in a loop: {reason}"
                + ("; paused" if rules.runaway_action == "pause" else ""),
                at=now,
                details={"action": rules.runaway_action},
            )
        )
        if rules.runaway_action == "pause" and "pause" not in agent.holds:
            out.steps.append(_pause_step(f"runaway loop: {reason}", f"runaway.{batch_id}", now))
        break

    spike = _spike(agent, rules, applied.agent, now)
    if spike is not None:
        out.alerts.append(spike)
    return out


def _pause_step(reason: str, key: str, now: datetime) -> Step:
    def step(record: AgentRecord) -> Plan:
        if "pause" in record.holds:
            return Plan(skipped="unchanged")
        return holds.place(record, "pause", reason=reason, at=now, key=key, actor="system:runaway")

    return step


def _exhausted(findings: list[Finding], now: datetime) -> Finding | None:
    """The hard limit reached in a current period that resets last (that is how long the hold lasts)."""
    hard = [f for f in findings if f.kind is Kind.HARD and _current(f.window, now)]
    return max(hard, key=lambda f: f.window.resets_at) if hard else None


def _budget_hold(name: str, finding: Finding, now: datetime) -> Step:
    key = f"{finding.limit.name}.{finding.window.key}"

    def step(record: AgentRecord) -> Plan:
        held = record.holds.get(name)
        if held is not None and held.get("key") == key:
            return Plan(skipped="unchanged")
        return holds.place(
            record,
            name,
            reason=finding.message,
            at=now,
            key=key,
            actor=f"system:{name}",
            until=finding.window.resets_at,
            extra={"limit": finding.limit.name, "window": finding.window.key},
        )

    return step


def _breaker_step(change: protection.BreakerChange, agent_id: str, batch_id: str, now: datetime) -> Step:
    def step(record: AgentRecord) -> Plan:
        if change.action == "close":
            return holds.lift(record, "breaker", reason=change.reason, at=now, actor="system:breaker")
        return holds.place(
            record,
            "breaker",
            reason=change.reason,
            at=now,
            key=f"breaker.{batch_id}",
            actor="system:breaker",
            until=now + timedelta(seconds=change.cooldown_s),
            extra={"cooldown_s": change.cooldown_s},
        )

    return step


def _lift_step(name: str, reason: str, now: datetime, actor: str) -> Step:
    def step(record: AgentRecord) -> Plan:
        return holds.lift(record, name, reason=reason, at=now, actor=actor)

    return step


def _budget_alert(finding: Finding, tenant: str, agent_id: str | None, now: datetime) -> Alert:
    severity = {Kind.HARD: Severity.CRITICAL, Kind.SOFT: Severity.WARNING}.get(
        finding.kind, Severity.WARNING if (finding.ratio or 0) >= 0.8 else Severity.INFO
    )
    return Alert(
        id=finding.alert_id,
        kind=finding.kind.value,
        severity=severity,
        tenant=tenant,
        agent_id=agent_id,
        window=finding.window.key,
        message=finding.message,
        at=now,
        details={
            "scope": finding.scope,
            "limit": finding.limit.name,
            "value": finding.value,
            "threshold": finding.threshold,
            "ratio": finding.ratio,
            "resets_at": finding.window.resets_at.isoformat(),
        },
        until=finding.window.resets_at,
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


def _spike(agent: AgentRecord, rules: protection.Protection, totals: WindowTotals, now: datetime) -> Alert | None:
    for (period, win), (after, delta) in totals.items():
        if period is not Period.HOUR or not _current(win, now) or delta.usd_nanos == 0:
            continue
        base = baselines.get(agent.agent_id, now, rules.spike_baseline_hours)
        reason = protection.spike(rules, base, before=after.usd_nanos - delta.usd_nanos, after=after.usd_nanos)
        if reason is not None:
            return Alert(
                id=f"cost_spike.{agent.agent_id}.{win.key}",
                kind="cost_spike",
                severity=Severity.WARNING,
                tenant=agent.tenant,
                agent_id=agent.agent_id,
                window=win.key,
                message=f"cost spike on {agent.agent_id}: {reason}",
                at=now,
                details={"baseline_nanos": base.mean_nanos, "baseline_hours": base.hours},
            )
    return None


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
            sent += _hold_tenant(tenant, step, except_agent=agent.agent_id)
            markers.mark(f"tenant_hold.{once_key}")
    if sent:
        agent_commands.publish(sent)
    raised = [alert for alert in effects.alerts if episode_store.raise_once(alert)]
    for alert in raised:
        logs.log(log, alert.message, alert=alert.kind, severity=alert.severity.value, agent_id=alert.agent_id)
    plan.commands = sent
    plan.skipped = None
    return plan


#: When the server last re-sent an agent's holds (per instance): at most once per FLEET_RESEND_AFTER_S.
_resent: dict[str, float] = {}


def _unheeded(agent: AgentRecord, received_at: datetime, now: datetime) -> list[Command]:
    """Commands of holds in force that the agent is calling through (a lost publish, a listener that
    died): sent again, at most every FLEET_RESEND_AFTER_S per agent and instance (the SDK applies an id
    once, so an agent that did hear it is not disturbed)."""
    import time

    # How long after a hold an agent may still be sending calls (batches in flight) before the server
    # concludes it never heard the command.
    resend_after = timedelta(seconds=settings.get().resend_after_s)

    def unheeded(record: AgentRecord) -> list[Command]:
        out = []
        for hold in record.holds.values():
            until = hold.get("until")
            if until is not None and holds.time_of(until) <= now:
                continue  # lifted by itself: a budget reset, or a breaker's cooldown (half-open calls expected)
            if received_at - holds.time_of(hold["issued_at"]) > resend_after:
                out.append(holds.command_of(record.agent_id, hold))
        return out

    if not unheeded(agent):
        return []
    last = _resent.get(agent.agent_id, 0.0)
    if time.monotonic() - last < resend_after.total_seconds():
        return []
    if len(_resent) > 10_000:
        _resent.clear()
    _resent[agent.agent_id] = time.monotonic()
    fresh = agent_store.read(agent.agent_id)  # never re-send a hold lifted since the cached copy
    return unheeded(fresh.record) if fresh is not None else []


def _hold_tenant(tenant: str, step: Step, *, except_agent: str) -> list[Command]:
    """The tenant's hard limit was reached: hold every other agent of the tenant too."""
    return _apply_to_tenant(tenant, step, lambda agent: agent.agent_id != except_agent)


def _apply_to_tenant(tenant: str, step: Step, wanted: Callable[[AgentRecord], bool]) -> list[Command]:
    """Apply ``step`` to each live agent of the tenant that ``wanted`` picks, page by page; returns the
    commands to send."""
    sent: list[Command] = []
    for agent in agent_store.each(tenant):
        if agent.status is not State.DECOMMISSIONED and wanted(agent):
            sent += agent_store.update(agent.agent_id, combine([step])).commands
    return sent


def reconcile(agent_id: str, *, now: datetime, actor: str, resend: bool = False) -> list[Command]:
    """Bring an agent's budget hold in line with its stored totals and budget: place it if a hard limit
    is reached, lift it if not (after a budget change or a period reset), raise missed alerts, and
    optionally re-send every hold. Reads the agent and its month document (two reads)."""
    snap = agent_store.read(agent_id)
    if snap is None:
        return []
    agent = snap.record
    periods = usage_store.agent_periods(agent_id, now)
    totals: WindowTotals = {(period, win): (t, usage_domain.Totals()) for period, (win, t) in periods.items()}
    spec = budgets.parse(agent.budget)
    findings = budgets.reached(spec, "agent", agent_id, totals)
    for finding in findings:
        episode_store.raise_once(_budget_alert(finding, agent.tenant, agent_id, now))
    exhausted = _exhausted(findings, now)
    steps: list[Step] = []
    if exhausted is not None:
        steps.append(_budget_hold("budget", exhausted, now))
    elif "budget" in agent.holds:
        steps.append(_lift_step("budget", "budget no longer exhausted (raised or reset)", now, actor))
    plan = agent_store.update(agent_id, combine(steps)) if steps else Plan()
    sent = list(plan.commands)
    if resend:
        current = agent_store.get(agent_id)
        ids = {c.command_id for c in sent}
        sent += [holds.command_of(agent_id, h) for h in (current.holds if current else {}).values()
                 if h["command_id"] not in ids]  # fmt: skip
    if sent:
        agent_commands.publish(sent)
    return sent


def reconcile_tenant(tenant: str, *, now: datetime, actor: str) -> list[Command]:
    """After a tenant budget change: hold the tenant's agents if a hard limit is now reached, lift
    their tenant holds if none is. Reads the tenant's shards, then pages through its agents."""
    cfg = settings.get()
    config.forget(tenant)
    spec = budgets.parse(config.read_tenant(tenant).budget)
    periods = usage_store.tenant_periods(tenant, now, cfg.tenant_shards)
    totals: WindowTotals = {(period, win): (t, usage_domain.Totals()) for period, (win, t) in periods.items()}
    findings = budgets.reached(spec, "tenant", tenant, totals)
    for finding in findings:
        episode_store.raise_once(_budget_alert(finding, tenant, None, now))
    exhausted = _exhausted(findings, now)
    step = (
        _budget_hold("tenant_budget", exhausted, now)
        if exhausted is not None
        else _lift_step("tenant_budget", "tenant budget no longer exhausted (raised or reset)", now, actor)
    )
    sent = _apply_to_tenant(tenant, step, lambda agent: exhausted is not None or "tenant_budget" in agent.holds)
    if sent:
        agent_commands.publish(sent)
    return sent


def lift_expired(agent: AgentRecord, now: datetime) -> list[Command]:
    """Budget holds whose period has reset are lifted (on the agent's next heartbeat or batch)."""
    names = holds.expired(agent, now)
    if not names:
        return []

    def lift(name: str) -> Step:
        def step(record: AgentRecord) -> Plan:
            if name not in holds.expired(record, now):
                return Plan(skipped="unchanged")
            return holds.lift(record, name, reason="budget period reset", at=now, actor="system:budget")

        return step

    steps = [lift(name) for name in names]
    plan = agent_store.update(agent.agent_id, combine(steps))
    if plan.commands:
        agent_commands.publish(plan.commands)
    return plan.commands


def usage_view(periods: dict[Period, tuple[Window, usage_domain.Totals]], spec: Any) -> dict[str, Any]:
    """The API's view of usage per period, with budgets and what remains."""
    from shared.domain.pricing import format_usd

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
