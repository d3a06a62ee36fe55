"""Granting budget leases: the next lease of an agent, committed and ready to send, and the latest one again
when it seems lost (shared/domain/leases.py decides; shared/store/leases.py and lease_reserve.py keep the
ledger and the reserve).

A grant reads the agent's ledger, its exact spend in the current windows (its month document) and its
epochs' own spend (one or two hour documents), and the tenant's reserve mostly from this instance's cache.
It commits the ledger and the reserve's increments together, keeps what the reserve's read-back allows,
then makes the grant final (``last``) and gives back the rest: 3-4 reads, 3 writes (4 with a give-back).
A request answered before (a redelivery) gets the same lease again; an agent whose waiting call a budget
cannot cover is told when to ask again (``retry_after_s``), and the limit's ``budget_exhausted`` alert is
raised (the same id as when counting reaches the limit: once per period).
"""

from __future__ import annotations

import secrets
from dataclasses import replace
from datetime import datetime
from decimal import ROUND_CEILING, Decimal

from fleet_agent.contracts import Command, CommandType, ExactPrice, LeaseGrant, LeaseUse, ModelPrice, PriceTier
from pydantic import ValidationError

from shared.domain import budgets, holds, spend
from shared.domain import leases as domain
from shared.domain.agent_record import AgentRecord
from shared.domain.leases import ZERO, Amount, Ledger
from shared.domain.periods import windows
from shared.domain.pricing import Price, format_usd, to_usd
from shared.platform import logs, settings
from shared.services import notifier
from shared.store import config
from shared.store import episodes as episode_store
from shared.store import lease_reserve as reserve_store
from shared.store import leases as store
from shared.store import usage as usage_store

log = logs.get_logger("leases")
#: The places of a price per token on the wire (``TokenPrice``).
_WIRE_PLACES = Decimal("1e-15")


def cfg() -> domain.Config:
    s = settings.get()
    return domain.Config(
        ttl_s=s.lease_ttl_s, grace_s=s.lease_grace_s, horizon_s=s.lease_horizon_s,
        min_usd_nanos=s.lease_min_usd_nanos, min_tokens=s.lease_min_tokens, tolerance=s.lease_tolerance,
    )  # fmt: skip


def stopped(agent: AgentRecord, now: datetime) -> bool:
    """Whether a hold in force stops the agent's calls (and so its leases). A hold whose ``until`` has
    passed does not: a budget period reset, a breaker's cooldown ended (its trial calls need a lease)."""
    return any(not (h.get("until") and holds.time_of(h["until"]) <= now) for h in agent.holds.values())


def grant(
    agent: AgentRecord,
    request: LeaseUse | None,
    now: datetime,
    *,
    models: list[str] | None = None,
    asked_at: datetime | None = None,
) -> Command | None:
    """The agent's next lease, committed and ready to send; None while a hold stops the agent (every
    hold refuses calls, so it revokes the lease) or when concurrent grants kept winning."""
    if stopped(agent, now):
        return None
    tenant = config.tenant(agent.tenant)
    agent_limits = budgets.limits(budgets.parse(agent.budget))
    tenant_limits = budgets.limits(budgets.parse(tenant.budget))
    c = cfg()
    need = ZERO
    if request is not None:
        need = Amount(domain.nanos(request.need_usd), request.need_tokens or 0)
    for _attempt in range(3):
        snap = store.read(agent.agent_id)
        ledger = snap.ledger if snap.ledger.tenant else replace(snap.ledger, tenant=agent.tenant)
        if request is not None and request.request_id in ledger.answered:
            return resend_last(agent, now, ledger=ledger)
        reserve = reserve_store.reserve(agent.tenant, now, settings.get().config_cache_s)
        plan = domain.plan_grant(
            ledger, now=now, spend=spend_of(agent.agent_id, ledger, now), agent_limits=agent_limits,
            tenant_limits=tenant_limits, reserve=reserve.totals, open_epochs=reserve.open_epochs,
            request=request, new_epoch_id=secrets.token_hex(6), cfg=c, asked_at=asked_at,
        )  # fmt: skip
        priced = _models(ledger, request, models, now)
        # Without a tenant budget nothing but the agent's own limits cuts the grant (already applied): it
        # is final in one commit, and the reserve is not written (it is seeded when a budget is set).
        final = None
        if not plan.epoch.reserved:
            final = _command(
                agent, plan, plan.want, request, priced, now, domain.retry_after(plan, plan.want, need, now, c)
            )
        committed = store.commit_grant(
            replace(snap, ledger=ledger), plan, request_id=request.request_id if request is not None else None,
            grace_s=c.grace_s, command=_json(final) if final is not None else None,
        )  # fmt: skip
        if committed is None:
            continue
        after, update_time = committed
        keep = domain.kept(plan, after) if final is None else plan.want
        retry = domain.retry_after(plan, keep, need, now, c)
        if retry is None and request is not None and _unpriced(request, priced, agent):
            retry = c.shared_retry_s  # a model no table prices: refused at once for a while, not asked again each call
        command = final or _command(agent, plan, keep, request, priced, now, retry)
        if final is None:
            store.finish(ledger, plan, plan.want - keep, command=_json(command), update_time=update_time)
        if retry is not None:
            _say_short(agent, plan, after, now)
        logs.log(
            log, f"lease {plan.lease_id} granted to {agent.agent_id}: ${format_usd(keep.usd_nanos)}",
            agent_id=agent.agent_id, lease_id=plan.lease_id, usd_nanos=keep.usd_nanos, tokens=keep.tokens,
            new_epoch=plan.started, retry_after_s=retry,
        )  # fmt: skip
        return command
    return None


def resend_last(agent: AgentRecord, now: datetime, *, ledger: Ledger | None = None) -> Command | None:
    """The latest grant again (same id: the SDK applies it once), if it is final and its epoch still open."""
    ledger = ledger or store.read(agent.agent_id).ledger
    epoch, last = ledger.epoch, ledger.last
    if epoch is None or last is None or not epoch.live(now) or stopped(agent, now):
        return None
    command = Command.model_validate(last)
    if command.lease is None or not command.lease.lease_id.startswith(epoch.id + "."):
        return None
    if not settings.get().lease_price_parts and any(p.parts is not None for p in command.lease.prices.values()):
        # Granted while the parts were on: an SDK before them refuses the whole lease, so they go once off.
        prices = {m: p.model_copy(update={"parts": None}) for m, p in command.lease.prices.items()}
        command = command.model_copy(update={"lease": command.lease.model_copy(update={"prices": prices})})
    # Re-stamped now: the SDK ends an epoch its lifetime (expires_at - issued_at) after a grant arrives, so a
    # re-sent grant must carry only what is left of it.
    return command.model_copy(update={"issued_at": max(now, command.issued_at)})


def spend_of(agent_id: str, ledger: Ledger, now: datetime) -> domain.Spend:
    """The agent's exact spend in the current windows (one read) and its epochs' own (one or two reads).
    The epochs' first: a batch counted between the two reads then makes the commitment higher, not lower."""
    epochs = [(e.id, e.hour) for e in (ledger.epoch, ledger.previous) if e is not None]
    own = usage_store.epoch_spend(agent_id, epochs) if epochs else {}
    current = usage_store.agent_periods(agent_id, now)
    return domain.Spend(
        windows={period: Amount(t.usd_nanos, t.tokens) for period, (_w, t) in current.items()},
        epochs={epoch_id: Amount(*spent) for epoch_id, spent in own.items()},
    )


def _say_short(agent: AgentRecord, plan: domain.GrantPlan, after: dict[domain.Slot, Amount], now: datetime) -> None:
    """A limit leaves less than the waiting call needs: the agent will refuse it. Raise the limit's
    ``budget_exhausted`` alert (the same id as when counting reaches the limit: once per period)."""
    wins = windows(now)
    raised = []
    for scope, limit in plan.short:
        mine = scope == "agent"
        win = wins[limit.period]
        slot_total = after.get((limit.period, win.key), ZERO).get(limit.metric)
        finding = budgets.Finding(
            budgets.Kind.HARD, scope, agent.agent_id if mine else agent.tenant, limit, win, slot_total, limit.hard or 0
        )
        alert = spend.budget_alert(finding, agent.tenant, agent.agent_id if mine else None, now)
        if episode_store.raise_once(alert):
            raised.append(alert)
    notifier.send_now(raised, by="lease_grants")


def _unpriced(request: LeaseUse, models: list[str], agent: AgentRecord) -> bool:
    """Whether the request asks for a model the agent's tenant has no price for."""
    table = config.table_for(config.tenant(agent.tenant))
    return any(table.lookup(model, agent.tenant) is None for model in request.models)


def _models(ledger: Ledger, request: LeaseUse | None, used: list[str] | None, now: datetime) -> list[str]:
    """The models a lease prices: asked for, used in the batch, priced by the previous lease (at most 32);
    for an agent's first lease (a restart, say), the models it used today (one read), so its first call
    need not wait for a price."""
    out: list[str] = list(request.models) if request is not None else []
    out += used or []
    last = (ledger.last or {}).get("lease") or {}
    out += list((last.get("prices") or {}).keys())
    if not out and ledger.epoch is None and ledger.previous is None:
        out += sorted(usage_store.agent_day_models(ledger.agent_id, now.date()))
    return list(dict.fromkeys(out))[:32]


def _command(
    agent: AgentRecord, plan: domain.GrantPlan, amount: Amount, request: LeaseUse | None, models: list[str],
    now: datetime, retry_after_s: int | None,
) -> Command:  # fmt: skip
    tenant = config.tenant(agent.tenant)
    table = config.table_for(tenant)
    prices = {}
    parts = settings.get().lease_price_parts
    for model in models:
        found = table.lookup(model, agent.tenant)
        if found is not None:
            prices[model] = model_price(found, parts=parts)
    lease = LeaseGrant(
        lease_id=plan.lease_id, usd=to_usd(amount.usd_nanos),
        tokens=amount.tokens if plan.epoch.tokens_limited else None, expires_at=plan.epoch.expires_at,
        request_id=request.request_id if request is not None else None, prices=prices, retry_after_s=retry_after_s,
    )  # fmt: skip
    reason = (
        ""
        if retry_after_s is None
        else "a budget leaves less than the call needs: "
        + ", ".join(f"{scope} {limit.name}" for scope, limit in plan.short)
    )
    return Command(
        agent_id=agent.agent_id, command=CommandType.LEASE, issued_at=now, command_id=f"lease.{plan.lease_id}",
        until=plan.epoch.expires_at, lease=lease, reason=reason[:500],
    )  # fmt: skip


def model_price(price: Price, *, parts: bool) -> ModelPrice:
    """A model's price in a lease: its ceiling, at which a call's worst case is reserved (and debited by an SDK
    that knows no more: never less than the fleet counts), and with ``parts`` its parts and tiers, at which
    the SDK debits a call exactly once it knows its usage. A part the wire cannot carry exactly (over 15
    decimal places, more than 8 tiers) leaves the parts out: the ceiling still holds (rounded up to 15 places)."""
    ceiling = price.ceiling()
    input_usd, output_usd = _up(ceiling.input_usd), _up(ceiling.output_usd)
    exact = None
    if parts:
        try:
            tiers = [PriceTier(above_input_tokens=start, **_parts(tier)) for start, tier in price.tiers]
            exact = ExactPrice(**_parts(price), tiers=tiers)
        except ValidationError:
            exact = None
    return ModelPrice(input_usd=input_usd, output_usd=output_usd, parts=exact)


def _up(usd: Decimal) -> Decimal:
    """A ceiling the wire can carry: rounded up to its 15 places (a few catalog prices have more)."""
    exponent = usd.as_tuple().exponent
    return usd.quantize(_WIRE_PLACES, rounding=ROUND_CEILING) if isinstance(exponent, int) and exponent < -15 else usd


def _parts(price: Price) -> dict[str, Decimal | None]:
    return {"input_usd": price.input_usd, "output_usd": price.output_usd, "cache_read_usd": price.cache_read_usd,
            "cache_write_usd": price.cache_write_usd, "reasoning_usd": price.reasoning_usd}  # fmt: skip


def _json(command: Command) -> dict[str, object]:
    return command.model_dump(mode="json", exclude_none=True)
