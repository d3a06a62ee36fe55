"""The REST API's cost routes: usage, budgets and protection thresholds of agents and tenants, pausing
and resuming an agent (prices: shared/api/prices.py). The rules are in shared/domain (budgets, protection) and
shared/services (accounting, agent_controls); the counters and settings in shared/store."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fleet_agent.contracts import BudgetSpec

from shared.api import core
from shared.api.bodies import (
    AgentBudgetView,
    AgentHoldsView,
    AgentUsageView,
    BudgetUpdate,
    PauseRequest,
    ProtectionUpdate,
    ProtectionView,
    ResumeRequest,
    TenantBudgetView,
    TenantUsageView,
    hold_views,
)
from shared.api.core import AGENT, TENANT, Call, Routes
from shared.api.tenancy import update_agent, visible_record, visible_tenant, write_tenant
from shared.domain import budget_forecast, budgets, protection
from shared.domain.agent_record import AgentRecord, Plan
from shared.domain.api_keys import Role
from shared.domain.periods import Period, window
from shared.domain.pricing import format_usd
from shared.domain.usage import ModelDay, Totals
from shared.platform import settings
from shared.services import accounting, agent_controls
from shared.store import config
from shared.store import lease_reserve as reserve_store
from shared.store import leases as lease_store
from shared.store import usage as usage_store

routes = Routes("costs")


# --- an agent's usage, budget and protection ----------------------------------------------------


@routes.get("/v1/agents/<agent_id>/usage", AgentUsageView, params=AGENT, errors=(404,))
def get_agent_usage(call: Call) -> AgentUsageView:
    """An agent's spend, tokens and calls in the current UTC hour, day and month, with its budget and holds."""
    record = visible_record(call)
    now = core.now()
    month = usage_store.agent_month(record.agent_id, window(Period.MONTH, now).key)
    fields = budget_forecast.month_fields(month)
    return AgentUsageView.model_validate(
        {
            "agent_id": record.agent_id,
            "tenant": record.tenant,
            "periods": _with_forecast(budgets.parse(record.budget), fields, now, record.holds),
            "holds": hold_views(record.holds),
            "budget": record.budget,
            "budget_source": record.budget_source,
            "lease": _lease_view(record.agent_id),
            "models": _models_view(month),
        }
    )


def _models_view(month: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The month document's per-model day counters summed over the month (no read of its own)."""
    total: dict[str, ModelDay] = {}
    for name, data in month.items():
        if name.startswith("x"):
            for model, counters in usage_store.day_models(data).items():
                total.setdefault(model, ModelDay()).add(counters)
    return {
        model: {**m.as_dict(), "usd": format_usd(m.usd_nanos), "price_sources": m.sources}
        for model, m in sorted(total.items())
    }


def _with_forecast(
    spec: BudgetSpec | None, fields: dict[str, Totals], now: datetime, holds: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Usage per period with its budget (accounting.usage_view) and the forecast: the spend rate and when
    the period's first hard limit is reached at it (shared/domain/budget_forecast.py); none for an agent
    whose ``holds`` stop its spend (the minute job's forecast does not project it either)."""
    periods = accounting.usage_view(budget_forecast.periods_of(fields, now), spec)
    forecast = budget_forecast.usage_view(spec, fields, now, holds)
    return {name: {**view, **forecast[name]} for name, view in periods.items()}


def _lease_view(agent_id: str) -> dict[str, Any] | None:
    """The agent's open lease epoch, from its ledger (one read)."""
    snap = lease_store.read(agent_id)
    epoch, last = snap.ledger.epoch, snap.ledger.last or {}
    if epoch is None:
        return None
    return {
        "epoch": epoch.id,
        "lease_id": str((last.get("lease") or {}).get("lease_id") or f"{epoch.id}.{epoch.seq}"),
        "granted_usd": format_usd(epoch.granted.usd_nanos),
        "charged_usd": format_usd(epoch.charged.usd_nanos),
        "granted_tokens": epoch.granted.tokens if epoch.tokens_limited else None,
        "started_at": epoch.started_at,
        "expires_at": epoch.expires_at,
        "returns_at": epoch.release_at(settings.get().lease_grace_s),
    }


def _agent_fields(record: AgentRecord, *names: str) -> dict[str, Any]:
    """The agent's id, tenant, holds (as the API shows them) and the record's fields ``names``."""
    return {
        "agent_id": record.agent_id,
        "tenant": record.tenant,
        **{name: getattr(record, name) for name in names},
        "holds": hold_views(record.holds),
    }


def _agent_budget_view(record: AgentRecord) -> AgentBudgetView:
    return AgentBudgetView.model_validate(_agent_fields(record, "budget", "budget_source"))


@routes.get("/v1/agents/<agent_id>/budget", AgentBudgetView, params=AGENT, errors=(404,))
def get_agent_budget(call: Call) -> AgentBudgetView:
    """An agent's budget and where it comes from (registration or API)."""
    return _agent_budget_view(visible_record(call))


@routes.put("/v1/agents/<agent_id>/budget", AgentBudgetView, BudgetUpdate, Role.ADMIN, params=AGENT, errors=(400, 404))
def set_agent_budget(call: Call) -> AgentBudgetView:
    """Replace an agent's budget (wins over the registration's); its budget hold is re-evaluated at once.

    The agent's budget wins over the registration's; a raised budget lifts its budget hold, a lowered one
    places it."""
    return _replace_agent_budget(call, budgets.store(core.body(call, BudgetUpdate)), "agent.budget.set")


@routes.delete("/v1/agents/<agent_id>/budget", AgentBudgetView, Role.ADMIN, params=AGENT, errors=(404,))
def delete_agent_budget(call: Call) -> AgentBudgetView:
    """Remove an agent's budget (a registration's budget no longer applies); a budget hold is lifted at once.

    No limits, and a registration's budget no longer applies (the API's choice wins, as for a budget set
    through it)."""
    return _replace_agent_budget(call, None, "agent.budget.delete")


def _replace_agent_budget(call: Call, stored: dict[str, Any] | None, action: str) -> AgentBudgetView:
    """Record the API's budget choice (None: no budget), audited, then bring the budget hold in line."""
    agent_id = visible_record(call).agent_id
    done = agent_controls.set_agent_budget(agent_id, core.operator(call), stored, action, core.now())
    return _agent_budget_view(done)


def _protection_view(tenant: str, tenant_overrides: dict[str, Any], agent: AgentRecord | None) -> ProtectionView:
    own = agent.protection if agent is not None else tenant_overrides
    layers = (tenant_overrides, agent.protection) if agent is not None else (tenant_overrides,)
    return ProtectionView.model_validate(
        {
            "tenant": tenant,
            "agent_id": agent.agent_id if agent is not None else None,
            "overrides": own,
            "effective": protection.resolve(*layers),
        }
    )


@routes.get("/v1/agents/<agent_id>/protection", ProtectionView, params=AGENT, errors=(404,))
def get_agent_protection(call: Call) -> ProtectionView:
    """An agent's protection overrides and the thresholds in effect (defaults, tenant, agent)."""
    record = visible_record(call)
    return _protection_view(record.tenant, config.read_tenant(record.tenant).protection, record)


@routes.put(
    "/v1/agents/<agent_id>/protection", ProtectionView, ProtectionUpdate, Role.ADMIN, errors=(400, 404), params=AGENT
)
def set_agent_protection(call: Call) -> ProtectionView:
    """Replace an agent's protection overrides ({} goes back to the tenant's and the defaults)."""
    stored = core.body(call, ProtectionUpdate).stored()
    now = core.now()

    def step(current: AgentRecord) -> Plan:
        if current.protection == stored:
            return Plan(skipped="unchanged")
        details = {"protection": stored, "previous": current.protection}
        return Plan(
            changes={"protection": stored},
            audit=[core.audit(call, "agent.protection.set", current.agent_id, current.tenant, details, now)],
        )

    _plan, record = update_agent(call, step)
    return _protection_view(record.tenant, config.read_tenant(record.tenant).protection, record)


# --- pause and resume -------------------------------------------------------------------------


def _holds_view(record: AgentRecord) -> AgentHoldsView:
    return AgentHoldsView.model_validate(_agent_fields(record, "status", "status_since"))


@routes.post(
    "/v1/agents/<agent_id>/pause", AgentHoldsView, PauseRequest, Role.OPERATOR, params=AGENT, errors=(400, 404, 409)
)
def pause_agent(call: Call) -> AgentHoldsView:
    """Pause an agent: it is told to stop calling its model and is suspended until resumed.

    Pausing a paused agent changes nothing and sends its pause command again, with the same id (so a
    failed publish is repaired by a retry)."""
    reason = core.body(call, PauseRequest).reason
    record, _changed = agent_controls.pause(visible_record(call).agent_id, core.operator(call), reason, core.now())
    return _holds_view(record)


@routes.post(
    "/v1/agents/<agent_id>/resume", AgentHoldsView, ResumeRequest, Role.OPERATOR, params=AGENT, errors=(400, 404, 409)
)
def resume_agent(call: Call) -> AgentHoldsView:
    """Lift an agent's pause (other holds stay); 409 when it is not paused."""
    reason = core.body(call, ResumeRequest).reason or "resumed through the API"
    return _holds_view(agent_controls.resume(visible_record(call).agent_id, core.operator(call), reason, core.now()))


# --- a tenant's usage, budget and protection ----------------------------------------------------


@routes.get("/v1/tenants/<tenant>/usage", TenantUsageView, params=TENANT, errors=(404,))
def get_tenant_usage(call: Call) -> TenantUsageView:
    """A tenant's spend, tokens and calls in the current UTC hour, day and month, with its budget."""
    tenant = visible_tenant(call)
    cfg, periods = tenant_usage_view(tenant, core.now())
    return TenantUsageView.model_validate(
        {
            "tenant": tenant,
            "periods": periods,
            "budget": cfg.budget,
            "budget_source": cfg.budget_source,
            "reserved": _reserved_view(tenant),
        }
    )


def tenant_usage_view(tenant: str, now: datetime) -> tuple[config.TenantConfig, dict[str, Any]]:
    """The tenant's settings and its usage per period (``hour``, ``day``, ``month``: spend, budget, what
    remains, when it resets, the forecast), as GET /v1/tenants/{t}/usage answers and GET /metrics exports
    it (the one place both read it): the tenant's document (one read) and its month shards (one read each)."""
    cfg = config.read_tenant(tenant)
    fields = usage_store.tenant_month(tenant, window(Period.MONTH, now).key, settings.get().tenant_shards)
    return cfg, _with_forecast(budgets.parse(cfg.budget), fields, now)


def _reserved_view(tenant: str) -> dict[str, Any]:
    """The tenant's lease reserve in the current periods (one read)."""
    reserve = reserve_store.reserve(tenant, core.now(), 0)
    return {
        period.value: {
            "reserved_usd": format_usd(amount.usd_nanos),
            "reserved_tokens": amount.tokens,
            "open_epochs": reserve.open_epochs,
        }
        for period, amount in reserve.totals.items()
    }


@routes.get("/v1/tenants/<tenant>/budget", TenantBudgetView, params=TENANT, errors=(404,))
def get_tenant_budget(call: Call) -> TenantBudgetView:
    """A tenant's budget."""
    tenant = visible_tenant(call)
    cfg = config.read_tenant(tenant)
    return TenantBudgetView.model_validate({"tenant": tenant, "budget": cfg.budget, "budget_source": cfg.budget_source})


@routes.put("/v1/tenants/<tenant>/budget", TenantBudgetView, BudgetUpdate, Role.ADMIN, params=TENANT, errors=(400, 404))
def set_tenant_budget(call: Call) -> TenantBudgetView:
    """Replace a tenant's budget (every agent of the tenant counts against it)."""
    tenant = visible_tenant(call)
    return _replace_tenant_budget(call, tenant, budgets.store(core.body(call, BudgetUpdate)), "tenant.budget.set")


@routes.delete("/v1/tenants/<tenant>/budget", TenantBudgetView, Role.ADMIN, params=TENANT, errors=(404,))
def delete_tenant_budget(call: Call) -> TenantBudgetView:
    """Remove a tenant's budget; its agents' tenant holds are lifted at once."""
    return _replace_tenant_budget(call, visible_tenant(call), None, "tenant.budget.delete")


def _replace_tenant_budget(call: Call, tenant: str, stored: dict[str, Any] | None, action: str) -> TenantBudgetView:
    """Record the tenant's budget (None: none), audited in the same commit, then bring every agent's
    tenant hold in line."""
    previous = config.read_tenant(tenant)
    details = {"budget": stored, "previous": previous.budget, "previous_source": previous.budget_source}
    entry = core.audit(call, action, f"tenant.{tenant}", tenant, details, core.now())
    write_tenant(tenant, {"budget": stored, "budget_source": "api"}, entry)
    accounting.reconcile_tenant(tenant, now=core.now(), actor=core.actor(call))
    return TenantBudgetView.model_validate({"tenant": tenant, "budget": stored, "budget_source": "api"})


@routes.get("/v1/tenants/<tenant>/protection", ProtectionView, params=TENANT, errors=(404,))
def get_tenant_protection(call: Call) -> ProtectionView:
    """A tenant's protection overrides and the thresholds in effect for its agents without their own."""
    tenant = visible_tenant(call)
    return _protection_view(tenant, config.read_tenant(tenant).protection, None)


@routes.put(
    "/v1/tenants/<tenant>/protection", ProtectionView, ProtectionUpdate, Role.ADMIN, errors=(400, 404), params=TENANT
)
def set_tenant_protection(call: Call) -> ProtectionView:
    """Replace a tenant's protection overrides ({} goes back to the defaults)."""
    tenant = visible_tenant(call)
    stored = core.body(call, ProtectionUpdate).stored()
    previous = config.read_tenant(tenant).protection
    details = {"protection": stored, "previous": previous}
    write_tenant(
        tenant,
        {"protection": stored},
        core.audit(call, "tenant.protection.set", f"tenant.{tenant}", tenant, details, core.now()),
    )
    return _protection_view(tenant, stored, None)
