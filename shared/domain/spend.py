"""What a counted cost batch means for its agent and tenant: pure rules from what was read and counted
to the effects (holds to place or lift, alerts to raise, commands to send again).

shared/services/accounting.py reads what the rules need (:class:`Inputs`), counts the batch once
(:class:`~shared.domain.usage.Applied`: the exact totals after it), calls :func:`decide`, and carries
out the :class:`Effects`. Nothing here reads or writes.

- Expired budget holds (their period reset) are lifted first, in the same plan as the batch's own holds.
- Budgets: the agent's (exact totals) and the tenant's (its shard exactly, the others as last read):
  alerts at each threshold (by level, not crossing: ids make each one once), a hold at a hard limit.
- Unpriced models, the circuit breaker, runaway loops and cost spikes (shared/domain/protection.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from fleet_agent.contracts import Command

from shared.domain import budgets, holds, protection
from shared.domain.agent_record import AgentRecord, Plan, Step
from shared.domain.alerts import Alert, Severity
from shared.domain.budgets import Finding, Kind
from shared.domain.periods import Period, Window, window
from shared.domain.usage import Applied, Tally, Totals, WindowTotals, month_field


@dataclass(frozen=True)
class Inputs:
    """What the rules read before the batch was counted (the agent as this instance last saw it, the
    tenant's settings, and the few documents some rules need)."""

    agent: AgentRecord
    tenant_budget: dict[str, Any] | None
    rules: protection.Protection
    tally: Tally
    batch_id: str
    now: datetime
    received_at: datetime
    #: The tenant's other shards as last read: month -> field -> totals (empty: one shard, or no budget).
    other_shards: dict[str, dict[str, Totals]] = field(default_factory=dict)
    #: The agent's spend baseline, when an hour of the batch needs one (see :func:`needs_baseline`).
    baseline: protection.Baseline | None = None
    #: Holds the agent seems not to have heard of (it kept calling), from a fresh read: sent again.
    resend: list[Command] = field(default_factory=list)


@dataclass
class Effects:
    """What the rules decided for one batch."""

    alerts: list[Alert] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)
    #: Other agents of the tenant to hold (a tenant's hard limit was reached): (tenant, once-key, step).
    tenant_holds: list[tuple[str, str, Step]] = field(default_factory=list)
    #: Holds the agent seems not to have heard of (it kept calling): their commands, sent again.
    resend: list[Command] = field(default_factory=list)


def current(win: Window, now: datetime) -> bool:
    return win.starts_at <= now < win.resets_at


def decide(inputs: Inputs, applied: Applied) -> Effects:
    agent, now, received_at = inputs.agent, inputs.now, inputs.received_at
    batch_id, tally, rules = inputs.batch_id, inputs.tally, inputs.rules
    out = Effects(resend=list(inputs.resend))
    agent_id = agent.agent_id
    if holds.expired(agent, now):  # the budget period reset: the SDK resumed at `until`, so does the server
        out.steps.append(lambda record: holds.lift_expired(record, now))
        agent = agent.model_copy(update=holds.lift_expired(agent, now).changes)

    # Budgets: the agent's (exact totals) and the tenant's (its shard exactly, the others as last read).
    agent_spec = budgets.parse(agent.budget)
    # Level, not crossing: an alert whose raising was lost to a crash is raised by the next batch; ids
    # make each one once, and each instance remembers which it raised or found.
    agent_findings = budgets.reached(agent_spec, "agent", agent_id, applied.agent)
    for finding in agent_findings:
        out.alerts.append(budget_alert(finding, agent.tenant, agent_id, now))
    agent_exhausted = exhausted(agent_findings, now)
    if agent_exhausted is not None:
        out.steps.append(budget_hold("budget", agent_exhausted, now))
    tenant_spec = budgets.parse(inputs.tenant_budget)
    if tenant_spec is not None:
        estimate = tenant_totals(applied.tenant_shard, inputs.other_shards)
        tenant_findings = budgets.reached(tenant_spec, "tenant", agent.tenant, estimate)
        for finding in tenant_findings:
            out.alerts.append(budget_alert(finding, agent.tenant, None, now))
        tenant_exhausted = exhausted(tenant_findings, now)
        if tenant_exhausted is not None:
            step = budget_hold("tenant_budget", tenant_exhausted, now)
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
                    f"calls of model {model} by agent {agent_id} reported neither tokens nor a cost (OpenTelemetry "
                    "spans without gen_ai.usage attributes): they are counted as unpriced, not $0. Make the "
                    f"instrumentation record usage; calls with tokens are priced once PUT /v1/prices/{model} sets one"
                    if model in tally.tokenless_models
                    else f"model {model} has no price and agent {agent_id} reported no cost: its calls are counted "
                    f"as unpriced, not $0. Set one with PUT /v1/prices/{model}"
                ),
                at=now,
                details={"model": model},
            )
        )

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
        out.steps.append(breaker_step(change, batch_id, now))
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
            out.steps.append(pause_step(f"runaway loop: {reason}", f"runaway.{batch_id}", now))
        break

    if inputs.baseline is not None:
        spike = spike_alert(agent, rules, inputs.baseline, applied.agent, now)
        if spike is not None:
            out.alerts.append(spike)
    return out


def tenant_totals(shard: WindowTotals, others: dict[str, dict[str, Totals]]) -> WindowTotals:
    """The tenant's totals after this batch: its shard exactly, the other shards as last read."""
    if not others:
        return shard
    out: WindowTotals = {}
    for (period, win), (after, delta) in shard.items():
        month = window(Period.MONTH, win.starts_at).key
        total = Totals()
        total.add(after)
        total.add(others.get(month, {}).get(month_field(period, win), Totals()))
        out[(period, win)] = (total, delta)
    return out


def needs_baseline(tally: Tally, now: datetime) -> bool:
    """Whether the batch spent in the current hour: only then is the cost-spike rule asked."""
    for month, by_period in tally.windows.items():
        for win in by_period.get(Period.HOUR, []):
            if current(win, now) and tally.months[month][month_field(Period.HOUR, win)].usd_nanos != 0:
                return True
    return False


def spike_alert(
    agent: AgentRecord, rules: protection.Protection, base: protection.Baseline, totals: WindowTotals, now: datetime
) -> Alert | None:
    for (period, win), (after, delta) in totals.items():
        if period is not Period.HOUR or not current(win, now) or delta.usd_nanos == 0:
            continue
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


def unheeded(record: AgentRecord, received_at: datetime, now: datetime, resend_after: timedelta) -> list[Command]:
    """Commands of holds in force that the agent is calling through (a lost publish, a listener that
    died): a hold issued more than ``resend_after`` before the batch (batches in flight) and not
    lifted by itself."""
    out = []
    for hold in record.holds.values():
        until = hold.get("until")
        if until is not None and holds.time_of(until) <= now:
            continue  # lifted by itself: a budget reset, or a breaker's cooldown (half-open calls expected)
        if received_at - holds.time_of(hold["issued_at"]) > resend_after:
            out.append(holds.command_of(record.agent_id, hold))
    return out


def pause_step(reason: str, key: str, now: datetime, actor: str = "system:runaway") -> Step:
    """Pause the agent (once: an agent already paused is left as it is)."""

    def step(record: AgentRecord) -> Plan:
        if "pause" in record.holds:
            return Plan(skipped="unchanged")
        return holds.place(record, "pause", reason=reason, at=now, key=key, actor=actor)

    return step


def exhausted(findings: list[Finding], now: datetime) -> Finding | None:
    """The hard limit reached in a current period that resets last (that is how long the hold lasts)."""
    hard = [f for f in findings if f.kind is Kind.HARD and current(f.window, now)]
    return max(hard, key=lambda f: f.window.resets_at) if hard else None


def budget_hold(name: str, finding: Finding, now: datetime) -> Step:
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


def breaker_step(change: protection.BreakerChange, batch_id: str, now: datetime) -> Step:
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


def lift_step(name: str, reason: str, now: datetime, actor: str) -> Step:
    def step(record: AgentRecord) -> Plan:
        return holds.lift(record, name, reason=reason, at=now, actor=actor)

    return step


def budget_alert(finding: Finding, tenant: str, agent_id: str | None, now: datetime) -> Alert:
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
