"""Budget leases at work: granting the next lease, judging a counted batch against its lease, and
returning ended epochs' unspent charge to the pool (shared/domain/leases.py decides; shared/store/leases.py
keeps the ledger and the reserve).

- **Grant** (:func:`grant`): a cost batch that asks (``lease.request_id``) after it is counted, or a
  registration from an SDK that spends leases. One read of the ledger, one of the agent's spend, the
  tenant's reserve mostly from this instance's cache; one commit (ledger and reserve together), a second
  only when the reserve cannot hold the whole lease; one publish. A request answered before (a
  redelivery) gets the same lease again, re-checked against the reserve.
- **Judge** (:func:`after_count`): the batch's spend beyond its epoch's grants and the over-estimates the
  agent reports is ``lease_exceeded``: alerted, and the agent paused. A batch naming an older lease than
  the latest gets the latest again (a lost command).
- **Return** (:func:`release_due`, from the minute tick): an epoch whose expiry and grace have passed
  gives its unspent charge back to the tenant's reserve, so a dead agent's lease returns to the pool.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field, replace
from datetime import datetime
from decimal import Decimal

from fleet_agent.contracts import Command, CommandType, CostBatch, LeaseGrant, LeaseUse, ModelPrice, epoch_of

from shared.domain import budgets, holds, spend
from shared.domain import leases as domain
from shared.domain.agent_record import AgentRecord, Plan, combine
from shared.domain.alerts import Alert, Severity
from shared.domain.leases import Amount, Ledger
from shared.domain.periods import Period, window, windows
from shared.domain.pricing import format_usd, to_nanos, to_usd
from shared.domain.usage import Applied, Tally, Totals
from shared.platform import logs, settings
from shared.services import agent_commands
from shared.store import agents as agent_store
from shared.store import config
from shared.store import episodes as episode_store
from shared.store import leases as store
from shared.store import usage as usage_store
from shared.store.increments import Increments

log = logs.get_logger("leases")


def cfg() -> domain.Config:
    s = settings.get()
    return domain.Config(
        ttl_s=s.lease_ttl_s, grace_s=s.lease_grace_s, horizon_s=s.lease_horizon_s,
        min_usd_nanos=s.lease_min_usd_nanos, min_tokens=s.lease_min_tokens, tolerance=s.lease_tolerance,
    )  # fmt: skip


# -- counting a batch -------------------------------------------------------------------------------


@dataclass
class Context:
    """How a batch stands to its agent's lease, judged before it is counted."""

    ledger: Ledger | None = None
    #: The batch was spent under the agent's open epoch.
    under_lease: bool = False
    #: Increments the batch's commit must also make (spend outside a lease).
    extra: list[Increments] = field(default_factory=list)


def before_count(agent: AgentRecord, batch: CostBatch, tally: Tally, *, tenant_budget: bool, now: datetime) -> Context:
    """Whether the batch was spent under the agent's open epoch; if not, the reserve (and the open
    epoch's base) must take its spend in the same commit as the counters. A batch without lease state
    from an agent with no tenant budget needs nothing (no read)."""
    if batch.lease is None and not tenant_budget:
        return Context()
    max_age = settings.get().config_cache_s
    ledger = store.cached(agent.agent_id, max_age)
    epoch = ledger.epoch
    named = batch.lease.lease_id if batch.lease is not None else None
    if (epoch is not None and now >= epoch.release_at(cfg().grace_s)) or (
        named is not None and (epoch is None or epoch_of(named) != epoch.id)
    ):
        # Returned by another instance, or an epoch granted since this instance last looked (or a late
        # batch of an ended one): judged on a fresh read, not on what this instance remembers.
        ledger = store.read(agent.agent_id).ledger
        epoch = ledger.epoch
    if domain.open_epoch(ledger, batch.lease):
        return Context(ledger=ledger, under_lease=True)
    if batch.lease is None and epoch is None and not tenant_budget:
        return Context(ledger=ledger)
    return Context(ledger=ledger, extra=store.outside_lease(agent.tenant, tally, epoch, agent.agent_id))


def after_count(
    agent: AgentRecord, batch: CostBatch, applied: Applied | None, ctx: Context, *, now: datetime
) -> list[Command]:
    """After the batch is counted (``applied``; None for a redelivery or a batch without records): judge
    it against its lease, re-send a lease it seems to have missed, grant the one it asks for. Returns
    the commands sent."""
    lease = batch.lease
    if lease is None:
        return []
    sent: list[Command] = []
    ledger = ctx.ledger
    if ctx.under_lease and ledger is not None and ledger.epoch is not None and applied is not None:
        sent += _judge(agent, ledger, applied, lease, now)
    if ledger is not None and domain.missed(ledger, lease, now, settings.get().resend_after_s) and _may_resend(agent):
        again = resend_last(agent, now)
        if again is not None:
            agent_commands.publish([again])
            sent.append(again)
    if lease.request_id is not None and not any(c.command is CommandType.PAUSE for c in sent):
        used = sorted({r.model for r in batch.records})
        granted = grant(agent, lease, now, models=used)
        if granted is not None:
            agent_commands.publish([granted])
            sent.append(granted)
    return sent


def _judge(agent: AgentRecord, ledger: Ledger, applied: Applied, lease: LeaseUse, now: datetime) -> list[Command]:
    epoch = ledger.epoch
    assert epoch is not None
    hour = next((after for (period, win), (after, _d) in applied.agent.items()
                 if period is Period.HOUR and win.key == epoch.windows[Period.HOUR]), None)  # fmt: skip
    if hour is None:
        return []
    over = Amount(_nanos(lease.over_usd), lease.over_tokens)
    if domain.overspent(epoch, Amount(hour.usd_nanos, hour.tokens), over, cfg().tolerance) is None:
        return []
    fresh = store.read(agent.agent_id).ledger  # a grant this instance has not seen may cover it
    if fresh.epoch is None or fresh.epoch.id != epoch.id:
        return []
    excess = domain.overspent(fresh.epoch, Amount(hour.usd_nanos, hour.tokens), over, cfg().tolerance)
    if excess is None:
        return []
    return exceeded(agent, fresh.epoch, excess, now)


def exceeded(agent: AgentRecord, epoch: domain.Epoch, excess: Amount, now: datetime) -> list[Command]:
    """An agent spent beyond its lease: the fleet never trusts the SDK's arithmetic. Alert and pause."""
    reason = (
        f"lease_exceeded: spent ${format_usd(excess.usd_nanos)}"
        + (f" and {excess.tokens} tokens" if excess.tokens else "")
        + f" beyond lease epoch {epoch.id} (granted ${format_usd(epoch.granted.usd_nanos)})"
    )

    def step(record: AgentRecord) -> Plan:
        if "pause" in record.holds:
            return Plan(skipped="unchanged")
        return holds.place(
            record, "pause", reason=reason, at=now, key=f"lease_exceeded.{epoch.id}", actor="system:lease"
        )

    plan = agent_store.update(agent.agent_id, combine([step]))
    if plan.commands:
        agent_commands.publish(plan.commands)
    episode_store.raise_once(
        Alert(
            id=f"lease_exceeded.{agent.agent_id}.{epoch.id}",
            kind="lease_exceeded",
            severity=Severity.CRITICAL,
            tenant=agent.tenant,
            agent_id=agent.agent_id,
            window=epoch.windows[Period.HOUR],
            message=f"{agent.agent_id} spent beyond its budget lease ({reason}); paused until an operator resumes it",
            at=now,
            details={"epoch": epoch.id, "excess_usd": format_usd(excess.usd_nanos), "excess_tokens": excess.tokens},
        )
    )
    logs.log(log, reason, agent_id=agent.agent_id, alert="lease_exceeded")
    return list(plan.commands)


#: When this instance last re-sent an agent's lease: at most once per FLEET_RESEND_AFTER_S.
_resent: dict[str, float] = {}


def _may_resend(agent: AgentRecord) -> bool:
    last = _resent.get(agent.agent_id, 0.0)
    if time.monotonic() - last < settings.get().resend_after_s:
        return False
    if len(_resent) > 10_000:
        _resent.clear()
    _resent[agent.agent_id] = time.monotonic()
    return True


# -- granting -----------------------------------------------------------------------------------------


def grant(
    agent: AgentRecord, request: LeaseUse | None, now: datetime, *, models: list[str] | None = None
) -> Command | None:
    """The agent's next lease, committed and ready to send; None while a hold stops the agent (every
    hold refuses calls, so it revokes the lease) or when concurrent grants kept winning."""
    if stopped(agent, now):
        return None
    tenant = config.tenant(agent.tenant)
    agent_limits = budgets.limits(budgets.parse(agent.budget))
    tenant_limits = budgets.limits(budgets.parse(tenant.budget))
    c = cfg()
    for _attempt in range(3):
        snap = store.read(agent.agent_id)
        ledger = snap.ledger if snap.ledger.tenant else replace(snap.ledger, tenant=agent.tenant)
        if request is not None and request.request_id in ledger.answered and ledger.last:
            return resend_last(agent, now, ledger=ledger)
        spent, old_hour = _spent(agent.agent_id, ledger, request, now)
        reserve = store.reserve(agent.tenant, now, settings.get().config_cache_s)
        plan = domain.plan_grant(
            ledger, now=now, spent=spent, old_hour_spent=old_hour, agent_limits=agent_limits,
            tenant_limits=tenant_limits, reserve=reserve.totals, open_epochs=reserve.open_epochs,
            request=request, new_epoch_id=secrets.token_hex(6), cfg=c,
        )  # fmt: skip
        wanted = _models(ledger, request, models)
        command = _command(agent, plan, plan.want, request, wanted, now)
        after = store.commit_grant(
            replace(snap, ledger=ledger), plan, command=_json(command),
            request_id=request.request_id if request is not None else None, grace_s=c.grace_s,
        )  # fmt: skip
        if after is None:
            continue
        keep = domain.kept(plan, after)
        if keep != plan.want:
            command = _command(agent, plan, keep, request, wanted, now)
            store.give_back(ledger, plan, plan.want - keep, command=_json(command))
        if request is not None and request.need_usd is not None:
            _say_short(agent, plan, request, after, agent_limits, now)
        logs.log(
            log, f"lease {plan.lease_id} granted to {agent.agent_id}: ${format_usd(keep.usd_nanos)}",
            agent_id=agent.agent_id, lease_id=plan.lease_id, usd_nanos=keep.usd_nanos, tokens=keep.tokens,
            new_epoch=plan.started,
        )  # fmt: skip
        return command
    return None


def _say_short(
    agent: AgentRecord, plan: domain.GrantPlan, request: LeaseUse, after: dict[domain.Slot, Amount],
    agent_limits: list[budgets.Limit], now: datetime,
) -> None:  # fmt: skip
    """A limit leaves less than the waiting call needs: the agent will refuse it. Raise the limit's
    ``budget_exhausted`` alert (the same id as when counting reaches the limit: once per period)."""
    need = Amount(_nanos(request.need_usd or Decimal(0)), request.need_tokens or 0)
    wins = windows(now)
    for scope, limit, committed in domain.short(plan, need, after, agent_limits, now):
        subject = agent.agent_id if scope == "agent" else agent.tenant
        finding = budgets.Finding(
            budgets.Kind.HARD, scope, subject, limit, wins[limit.period], committed, limit.hard or 0
        )
        episode_store.raise_once(
            spend.budget_alert(finding, agent.tenant, agent.agent_id if scope == "agent" else None, now)
        )


def stopped(agent: AgentRecord, now: datetime) -> bool:
    """Whether a hold in force stops the agent's calls (and so its leases). A hold whose ``until`` has
    passed does not: a budget period reset, a breaker's cooldown ended (its trial calls need a lease)."""
    return any(not (h.get("until") and holds.time_of(h["until"]) <= now) for h in agent.holds.values())


def resend_last(agent: AgentRecord, now: datetime, *, ledger: Ledger | None = None) -> Command | None:
    """The latest grant again (same id: the SDK applies it once), if its epoch is still open; first
    re-checked against the reserve, in case a crash came between a grant and its give-back."""
    ledger = ledger or store.read(agent.agent_id).ledger
    epoch, last = ledger.epoch, ledger.last
    if epoch is None or last is None or not epoch.live(now) or stopped(agent, now):
        return None
    command = Command.model_validate(last)
    if command.lease is None or not command.lease.lease_id.startswith(epoch.id + "."):
        return None
    tenant_limits = budgets.limits(budgets.parse(config.tenant(agent.tenant).budget))
    if not tenant_limits:
        return command
    store.reserves.put(store.reserve_id(agent.tenant, epoch.windows[Period.MONTH]), None)
    totals = store.reserve(agent.tenant, now, 0).totals
    over = {"usd": 0, "tokens": 0}
    for (slot, metric), hard in domain.hard_limits(tenant_limits, windows(now)).items():
        over[metric] = max(over[metric], totals.get(slot[0], Amount()).get(metric) - hard)
    excess = Amount(over["usd"], over["tokens"])
    if excess == Amount():
        return command
    amount = Amount(_nanos(command.lease.usd), command.lease.tokens or 0)
    back = Amount(min(excess.usd_nanos, amount.usd_nanos), min(excess.tokens, amount.tokens))
    kept_grant = command.lease.model_copy(
        update={"usd": to_usd(amount.usd_nanos - back.usd_nanos),
                "tokens": None if command.lease.tokens is None else amount.tokens - back.tokens}
    )  # fmt: skip
    command = command.model_copy(update={"lease": kept_grant})
    plan = domain.GrantPlan(epoch=epoch, lease_id=kept_grant.lease_id, want=Amount())
    store.give_back(ledger, plan, back, command=_json(command))
    return command


def _spent(
    agent_id: str, ledger: Ledger, request: LeaseUse | None, now: datetime
) -> tuple[dict[Period, Amount], Amount | None]:
    """The agent's exact spend in the current windows and, when its epoch ends now in an earlier hour,
    in that hour (one read, two across a month boundary)."""
    current = usage_store.agent_periods(agent_id, now)
    spent = {period: Amount(t.usd_nanos, t.tokens) for period, (_w, t) in current.items()}
    epoch = ledger.epoch
    if (
        epoch is None
        or not domain.ended(ledger, request, now)
        or epoch.windows[Period.HOUR] == window(Period.HOUR, now).key
    ):
        return spent, None
    hour_win = store.windows_of(epoch)[Period.HOUR]
    totals: Totals = usage_store.agent_window(agent_id, Period.HOUR, hour_win)
    return spent, Amount(totals.usd_nanos, totals.tokens)


def _models(ledger: Ledger, request: LeaseUse | None, used: list[str] | None) -> list[str]:
    """The models a lease prices: asked for, used in the batch, priced by the previous lease (at most 32)."""
    out: list[str] = list(request.models) if request is not None else []
    out += used or []
    last = (ledger.last or {}).get("lease") or {}
    out += list((last.get("prices") or {}).keys())
    return list(dict.fromkeys(out))[:32]


def _command(
    agent: AgentRecord,
    plan: domain.GrantPlan,
    amount: Amount,
    request: LeaseUse | None,
    models: list[str],
    now: datetime,
) -> Command:
    tenant = config.tenant(agent.tenant)
    table = config.table_for(tenant)
    prices = {}
    for model in models:
        found = table.lookup(model, agent.tenant)
        if found is not None:
            prices[model] = ModelPrice(input_usd=found.input_usd, output_usd=found.output_usd)
    lease = LeaseGrant(
        lease_id=plan.lease_id, usd=to_usd(amount.usd_nanos),
        tokens=amount.tokens if plan.epoch.tokens_limited else None, expires_at=plan.epoch.expires_at,
        request_id=request.request_id if request is not None else None, prices=prices,
    )  # fmt: skip
    return Command(
        agent_id=agent.agent_id, command=CommandType.LEASE, issued_at=now, command_id=f"lease.{plan.lease_id}",
        until=plan.epoch.expires_at, lease=lease,
        reason="" if amount.usd_nanos else "no budget left for a lease: the budget is exhausted or shared out",
    )  # fmt: skip


def _json(command: Command) -> dict[str, object]:
    return command.model_dump(mode="json", exclude_none=True)


def _nanos(usd: Decimal) -> int:
    return to_nanos(usd)


# -- returning ended epochs -------------------------------------------------------------------------------


def release_due(now: datetime, limit: int = 200) -> int:
    """Return the unspent charge of every epoch past its expiry and grace (the minute tick). Returns how
    many epochs were returned."""
    done = 0
    for snap in store.due(now, limit):
        epoch = snap.ledger.epoch
        if epoch is None:
            continue
        hour_win = store.windows_of(epoch)[Period.HOUR]
        totals = usage_store.agent_window(snap.ledger.agent_id, Period.HOUR, hour_win)
        if store.release(snap, domain.release(epoch, Amount(totals.usd_nanos, totals.tokens))):
            done += 1
    return done


def request_of(event_id: str) -> LeaseUse:
    """A registration's implicit request: the agent (re)started and holds no lease."""
    return LeaseUse(request_id=f"reg-{event_id}"[:64])
