"""The REST API (``functions/main.py: api``): agents, their history, rejected events, and their costs
(usage, budgets, protection thresholds, prices, pauses, alerts).

One route table drives both the dispatcher (werkzeug routing) and the OpenAPI document, so the
document cannot drift from what is served. Every outcome is JSON, errors included: callers and
load balancers never see an HTML error page or a stack trace. Views stay thin: the rules live in
shared.domain and shared.services.accounting, the writes in shared.store.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import traceback
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import flask
from fleet_agent.contracts import AGENT_ID_PATTERN, ModelName
from pydantic import BaseModel, RootModel, TypeAdapter, ValidationError
from pydantic.json_schema import models_json_schema
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound
from werkzeug.routing import Map, Rule

from shared.api import jobs, ml_models, tasks
from shared.api.bodies import (
    MODELS,
    REQUEST_MODELS,
    AgentBudgetView,
    AgentHoldsView,
    AgentPage,
    AgentUsageView,
    AgentView,
    AlertList,
    ApprovalCreate,
    ApprovalList,
    ApprovalView,
    AuditPage,
    BudgetUpdate,
    DailyReportView,
    ErrorBody,
    ErrorDetail,
    Health,
    HistoryView,
    HourlyReportView,
    PauseRequest,
    PriceList,
    PriceUpdate,
    PriceView,
    ProtectionUpdate,
    ProtectionView,
    RejectionPage,
    ReleaseRequest,
    ReleaseView,
    ResumeRequest,
    RolesUpdate,
    RolesView,
    SettingsView,
    SilenceList,
    SilenceRequest,
    SilenceView,
    TenantBudgetView,
    TenantUsageView,
    agent_view,
    hold_views,
)
from shared.api.core import (
    _DIGITS,
    _TRACE,
    DEFAULT_ALERTS,
    DEFAULT_PAGE_SIZE,
    ERROR_CODES,
    MAX_ALERTS,
    MAX_PAGE_SIZE,
    ApiError,
    Call,
    Param,
    Route,
    _actor,
    _body,
    _is_agent_id,
    _is_document_id,
    _now,
    _page_size,
    _page_token,
    _principal,
    _query,
    encode_page_token,
    operator,
)
from shared.domain import approvals as approval_ids
from shared.domain import budgets, protection, release
from shared.domain.agent_record import AgentRecord, Plan
from shared.domain.alerts import Severity
from shared.domain.api_keys import Role
from shared.domain.approvals import Approval, Requester
from shared.domain.approvals import Kind as ApprovalKind
from shared.domain.assignment_tasks import AssignmentConfig
from shared.domain.audit import AuditEntry
from shared.domain.episodes import AlertingConfig, merged
from shared.domain.health import HealthConfig
from shared.domain.jobs import JobsConfig
from shared.domain.lifecycle import State
from shared.domain.pricing import Price
from shared.domain.rejections import Code
from shared.domain.silences import Silence
from shared.platform import logs, metering, settings
from shared.services import accounting, agent_controls
from shared.store import agents as agent_store
from shared.store import api_keys, config, db
from shared.store import audit as audit_store
from shared.store import episodes as episode_store
from shared.store import rejections as rejection_store
from shared.store import silences as silence_store
from shared.store import usage as usage_store
from shared.store.api_keys import Principal

log = logs.get_logger("api")

_STATES = tuple(s.value for s in State)
_CODES = tuple(c.value for c in Code)
_REF = "#/components/schemas/{model}"
_MODEL_NAME: TypeAdapter[str] = TypeAdapter(ModelName)


# --- views ------------------------------------------------------------------------------------


def _health(call: Call) -> Health:
    return Health()


def _openapi(call: Call) -> dict[str, Any]:
    return openapi_document()


def _list_agents(call: Call) -> AgentPage:
    principal = _principal(call)
    tenant = _query(call.request, "tenant")
    if tenant is not None and not _is_agent_id(tenant):
        raise ApiError(400, f"tenant must match {AGENT_ID_PATTERN}")
    if principal.tenant is not None:
        if tenant is not None and tenant != principal.tenant:
            raise ApiError(403, f"this API key only sees tenant {principal.tenant}")
        tenant = principal.tenant
    status = _query(call.request, "status")
    if status is not None and status not in _STATES:
        raise ApiError(400, f"status must be one of: {', '.join(_STATES)}")
    page_size = _page_size(call.request)
    after = _page_token(call.request, _is_agent_id)
    records, last = agent_store.list_agents(tenant=tenant, status=status, page_size=page_size, after=after)
    return AgentPage(
        items=[agent_view(r) for r in records],
        next_page_token=encode_page_token(last) if last else None,
    )


def _agent_not_found(agent_id: str) -> ApiError:
    return ApiError(404, f"agent {agent_id} not found")


def _visible_record(call: Call) -> AgentRecord:
    """The agent of the path, or 404, also when it belongs to another tenant (existence is not leaked)."""
    principal = _principal(call)
    agent_id = call.args["agent_id"]
    if not _is_agent_id(agent_id):
        raise _agent_not_found(agent_id)
    record = agent_store.get(agent_id)
    if record is None or not principal.can_see(record.tenant):
        raise _agent_not_found(agent_id)
    return record


def _visible_agent(call: Call) -> AgentView:
    return agent_view(_visible_record(call))


def _get_agent(call: Call) -> AgentView:
    return _visible_agent(call)


def _agent_history(call: Call) -> HistoryView:
    agent = _visible_agent(call)
    samples = agent_store.history(agent.agent_id)
    return HistoryView.model_validate({"agent_id": agent.agent_id, "samples": samples})


def _list_rejections(call: Call) -> RejectionPage:
    principal = _principal(call)
    agent_id = _query(call.request, "agent_id")
    if agent_id is not None and not _is_agent_id(agent_id):
        raise ApiError(400, f"agent_id must match {AGENT_ID_PATTERN}")
    code = _query(call.request, "code")
    if code is not None and code not in _CODES:
        raise ApiError(400, f"code must be one of: {', '.join(_CODES)}")
    page_size = _page_size(call.request)
    after = _page_token(call.request, _is_document_id)
    if principal.tenant is not None:
        # Rejections carry no trustworthy tenant (the event may not even have parsed), so a
        # tenant-scoped key sees them only through an agent it can see.
        if agent_id is None:
            raise ApiError(403, "an API key scoped to a tenant must filter rejections by agent_id")
        record = agent_store.get(agent_id)
        if record is None or not principal.can_see(record.tenant):
            raise ApiError(403, f"agent {agent_id} is not an agent of tenant {principal.tenant}")
    try:
        items, last = rejection_store.list_page(agent_id=agent_id, code=code, page_size=page_size, after=after)
    except rejection_store.PageTokenExpired as exc:
        raise ApiError(400, str(exc)) from None
    return RejectionPage.model_validate({"items": items, "next_page_token": encode_page_token(last) if last else None})


# --- request bodies and shared helpers of the cost routes -------------------------------------


def _audit(
    call: Call, action: str, target: str, tenant: str | None, details: dict[str, Any], at: datetime
) -> AuditEntry:
    return agent_controls.audit_entry(operator(call), action, target, tenant, details, at)


def _agent_of_body(
    principal: Principal, agent_id: str | None, tenant: str | None
) -> tuple[AgentRecord | None, str | None]:
    """A body naming an agent and/or a tenant: the agent (404 if the key cannot see it) and its tenant,
    which must agree with the tenant named (400 otherwise)."""
    if agent_id is None:
        return None, tenant
    record = agent_store.get(agent_id)
    if record is None or not principal.can_see(record.tenant):
        raise _agent_not_found(agent_id)
    if tenant is not None and tenant != record.tenant:
        raise ApiError(400, f"agent {agent_id} belongs to tenant {record.tenant}, not {tenant}")
    return record, record.tenant


def _visible_tenant(call: Call) -> str:
    """The tenant of the path, or 404 when the key is scoped to another one (or the name is impossible)."""
    tenant = call.args["tenant"]
    if not _is_agent_id(tenant) or not _principal(call).can_see(tenant):
        raise ApiError(404, f"tenant {tenant} not found")
    return tenant


def _write_tenant(tenant: str, fields: dict[str, Any], entry: AuditEntry) -> None:
    """Replace ``fields`` of the tenant document (creating it) and write the audit entry, in one commit.

    Each field is replaced whole (``merge=[fields]``): a merge of the whole document would merge the
    budget's or protection's map with the old one, keeping limits the new body left out.
    """
    client = db.client()
    batch = client.batch()
    data = {"tenant": tenant, **fields}
    batch.set(client.collection(config.TENANTS).document(tenant), data, merge=list(data))
    audit_store.add(batch, entry)
    batch.commit(**db.call_options())
    metering.count(writes=2)
    config.forget(tenant)


def _update_agent(call: Call, step: Callable[[AgentRecord], Plan]) -> tuple[Plan, AgentRecord]:
    """Apply ``step`` to the visible agent of the path (404 otherwise) with the store's conditional write."""
    return agent_controls.update_agent(_visible_record(call).agent_id, operator(call), step)


def _usd(value: Decimal) -> str:
    """A decimal string without exponent (``0.0000025``, not ``2.5E-6``)."""
    return format(value, "f")


# --- usage and budgets ------------------------------------------------------------------------


def _agent_usage(call: Call) -> AgentUsageView:
    record = _visible_record(call)
    periods = usage_store.agent_periods(record.agent_id, _now())
    return AgentUsageView.model_validate(
        {
            "agent_id": record.agent_id,
            "tenant": record.tenant,
            "periods": accounting.usage_view(periods, budgets.parse(record.budget)),
            "holds": hold_views(record.holds),
            "budget": record.budget,
            "budget_source": record.budget_source,
        }
    )


def _tenant_usage(call: Call) -> TenantUsageView:
    tenant = _visible_tenant(call)
    cfg = config.read_tenant(tenant)
    periods = usage_store.tenant_periods(tenant, _now(), settings.get().tenant_shards)
    return TenantUsageView.model_validate(
        {
            "tenant": tenant,
            "periods": accounting.usage_view(periods, budgets.parse(cfg.budget)),
            "budget": cfg.budget,
            "budget_source": cfg.budget_source,
        }
    )


def _agent_budget_view(record: AgentRecord) -> AgentBudgetView:
    return AgentBudgetView.model_validate(
        {
            "agent_id": record.agent_id,
            "tenant": record.tenant,
            "budget": record.budget,
            "budget_source": record.budget_source,
            "holds": hold_views(record.holds),
        }
    )


def _get_agent_budget(call: Call) -> AgentBudgetView:
    return _agent_budget_view(_visible_record(call))


def _set_agent_budget(call: Call) -> AgentBudgetView:
    """Replace the agent's budget (it wins over the registration's), then re-evaluate its budget hold at
    once: a raised budget lifts it, a lowered one places it."""
    return _replace_agent_budget(call, budgets.store(_body(call, BudgetUpdate)), "agent.budget.set")


def _delete_agent_budget(call: Call) -> AgentBudgetView:
    """Remove the agent's budget: no limits, and a registration's budget no longer applies (the API's
    choice wins, as for a budget set through it). A budget hold is lifted at once."""
    return _replace_agent_budget(call, None, "agent.budget.delete")


def _replace_agent_budget(call: Call, stored: dict[str, Any] | None, action: str) -> AgentBudgetView:
    """Record the API's budget choice (None: no budget), audited, then bring the budget hold in line."""
    agent_id = _visible_record(call).agent_id
    return _agent_budget_view(agent_controls.set_agent_budget(agent_id, operator(call), stored, action, _now()))


def _get_tenant_budget(call: Call) -> TenantBudgetView:
    tenant = _visible_tenant(call)
    cfg = config.read_tenant(tenant)
    return TenantBudgetView.model_validate({"tenant": tenant, "budget": cfg.budget, "budget_source": cfg.budget_source})


def _set_tenant_budget(call: Call) -> TenantBudgetView:
    tenant = _visible_tenant(call)
    return _replace_tenant_budget(call, tenant, budgets.store(_body(call, BudgetUpdate)), "tenant.budget.set")


def _delete_tenant_budget(call: Call) -> TenantBudgetView:
    """Remove the tenant's budget; its agents' tenant holds are lifted at once."""
    return _replace_tenant_budget(call, _visible_tenant(call), None, "tenant.budget.delete")


def _replace_tenant_budget(call: Call, tenant: str, stored: dict[str, Any] | None, action: str) -> TenantBudgetView:
    """Record the tenant's budget (None: none), audited in the same commit, then bring every agent's
    tenant hold in line."""
    previous = config.read_tenant(tenant)
    details = {"budget": stored, "previous": previous.budget, "previous_source": previous.budget_source}
    entry = _audit(call, action, f"tenant.{tenant}", tenant, details, _now())
    _write_tenant(tenant, {"budget": stored, "budget_source": "api"}, entry)
    accounting.reconcile_tenant(tenant, now=_now(), actor=_actor(call))
    return TenantBudgetView.model_validate({"tenant": tenant, "budget": stored, "budget_source": "api"})


# --- protection -------------------------------------------------------------------------------


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


def _get_agent_protection(call: Call) -> ProtectionView:
    record = _visible_record(call)
    return _protection_view(record.tenant, config.read_tenant(record.tenant).protection, record)


def _set_agent_protection(call: Call) -> ProtectionView:
    stored = _body(call, ProtectionUpdate).stored()
    now = _now()

    def step(current: AgentRecord) -> Plan:
        if current.protection == stored:
            return Plan(skipped="unchanged")
        details = {"protection": stored, "previous": current.protection}
        return Plan(
            changes={"protection": stored},
            audit=[_audit(call, "agent.protection.set", current.agent_id, current.tenant, details, now)],
        )

    _plan, record = _update_agent(call, step)
    return _protection_view(record.tenant, config.read_tenant(record.tenant).protection, record)


def _get_tenant_protection(call: Call) -> ProtectionView:
    tenant = _visible_tenant(call)
    return _protection_view(tenant, config.read_tenant(tenant).protection, None)


def _set_tenant_protection(call: Call) -> ProtectionView:
    tenant = _visible_tenant(call)
    stored = _body(call, ProtectionUpdate).stored()
    previous = config.read_tenant(tenant).protection
    entry = _audit(
        call, "tenant.protection.set", f"tenant.{tenant}", tenant, {"protection": stored, "previous": previous}, _now()
    )
    _write_tenant(tenant, {"protection": stored}, entry)
    return _protection_view(tenant, stored, None)


# --- prices -----------------------------------------------------------------------------------


def _query_tenant(call: Call) -> str | None:
    tenant = _query(call.request, "tenant")
    if tenant is not None and not _is_agent_id(tenant):
        raise ApiError(400, f"tenant must match {AGENT_ID_PATTERN}")
    principal = _principal(call)
    if principal.tenant is not None and tenant is not None and tenant != principal.tenant:
        raise ApiError(403, f"this API key only sees tenant {principal.tenant}")
    return tenant


def _price_view(model: str, price: Price, source: str) -> PriceView:
    return PriceView.model_validate(
        {"model": model, "input_usd": _usd(price.input_usd), "output_usd": _usd(price.output_usd), "source": source}
    )


def _list_prices(call: Call) -> PriceList:
    """Global prices, with the tenant's overrides in their place (a tenant-scoped key always gets its own)."""
    tenant = _query_tenant(call) or _principal(call).tenant
    items = {model: _price_view(model, price, source) for model, (price, source) in config.read_prices().items()}
    if tenant is not None:
        items.update(
            {model: _price_view(model, price, "tenant") for model, price in config.read_tenant(tenant).prices.items()}
        )
    return PriceList(tenant=tenant, items=[items[model] for model in sorted(items)])


def _set_price(call: Call) -> PriceView:
    model = call.args["model"].rstrip("/")  # the path converter takes a trailing slash too
    try:
        _MODEL_NAME.validate_python(model)
    except ValidationError:
        raise ApiError(400, f"model {model!r} is not a model name (letters, digits and _.:/@+-, up to 128)") from None
    tenant = _query_tenant(call)
    principal = _principal(call)
    if principal.tenant is not None and tenant is None:
        raise ApiError(
            403, f"this API key may only set prices of tenant {principal.tenant}: add ?tenant={principal.tenant}"
        )
    body = _body(call, PriceUpdate)
    price = Price(body.input_usd, body.output_usd)
    details = {"model": model, "input_usd": _usd(price.input_usd), "output_usd": _usd(price.output_usd)}
    if tenant is not None:
        config.set_tenant_price(tenant, model, price)
        audit_store.append(_audit(call, "tenant.price.set", f"tenant.{tenant}.{model}", tenant, details, _now()))
    else:
        config.set_price(model, price)
        audit_store.append(_audit(call, "price.set", f"price.{model}", None, details, _now()))
    return _price_view(model, price, "tenant" if tenant is not None else "api")


# --- pause and resume -------------------------------------------------------------------------


def _holds_view(record: AgentRecord) -> AgentHoldsView:
    return AgentHoldsView.model_validate(
        {
            "agent_id": record.agent_id,
            "tenant": record.tenant,
            "status": record.status,
            "status_since": record.status_since,
            "holds": hold_views(record.holds),
        }
    )


def _pause(call: Call) -> AgentHoldsView:
    """Hold the agent (it is told ``pause`` and suspended). Pausing a paused agent changes nothing and
    sends its pause command again, with the same id (so a failed publish is repaired by a retry)."""
    reason = _body(call, PauseRequest).reason
    record, _changed = agent_controls.pause(_visible_record(call).agent_id, operator(call), reason, _now())
    return _holds_view(record)


def _resume(call: Call) -> AgentHoldsView:
    """Lift the pause. Other holds (budget, breaker...) stay; 409 when the agent is not paused."""
    reason = _body(call, ResumeRequest).reason or "resumed through the API"
    return _holds_view(agent_controls.resume(_visible_record(call).agent_id, operator(call), reason, _now()))


# --- alerts -----------------------------------------------------------------------------------


def _alert_limit(request: flask.Request) -> int:
    raw = _query(request, "limit")
    if raw is None:
        return DEFAULT_ALERTS
    limit = int(raw) if _DIGITS.match(raw) else 0
    if not 1 <= limit <= MAX_ALERTS:
        raise ApiError(400, f"limit must be an integer from 1 to {MAX_ALERTS}")
    return limit


class _Overrides(RootModel[dict[str, Any]]):
    """A settings body: any object, validated whole by the settings model."""


_EPISODE_STATES = ("open", "resolved")
_SEVERITIES = tuple(s.value for s in Severity)


def _list_alerts(call: Call) -> AlertList:
    """Open and recent alert episodes, newest first, by tenant, agent, state, rule or severity."""
    tenant = _query_tenant(call) or _principal(call).tenant
    agent_id = _query(call.request, "agent_id")
    if agent_id is not None and not _is_agent_id(agent_id):
        raise ApiError(400, f"agent_id must match {AGENT_ID_PATTERN}")
    state, severity, rule = (_query(call.request, name) for name in ("state", "severity", "rule"))
    if state is not None and state not in _EPISODE_STATES:
        raise ApiError(400, f"state must be one of {', '.join(_EPISODE_STATES)}")
    if severity is not None and severity not in _SEVERITIES:
        raise ApiError(400, f"severity must be one of {', '.join(_SEVERITIES)}")
    rows = episode_store.list_episodes(
        state=state, tenant=tenant, agent_id=agent_id, rule=rule, severity=severity, limit=_alert_limit(call.request)
    )
    items = []
    for row in rows:
        window = (row.get("details") or {}).get("window")
        item = {**row, "kind": row.get("rule"), "message": row.get("summary") or "", "raised_at": row.get("opened_at")}
        items.append({**item, "window": window})
    return AlertList.model_validate({"items": items})


# --- silences and maintenance windows -----------------------------------------------------------


def _silence_view(silence: Silence, now: datetime) -> SilenceView:
    return SilenceView.model_validate({**silence.model_dump(), "active": silence.active(now)})


def _create_silence(call: Call) -> SilenceView:
    """Silence alerts (or start a maintenance window) by agent, tenant or rule, until it expires."""
    body = _body(call, SilenceRequest)
    principal = _principal(call)
    now = _now()
    _record, tenant = _agent_of_body(principal, body.agent_id, body.tenant)
    if principal.tenant is not None:
        if tenant not in (None, principal.tenant):
            raise ApiError(403, f"this key may only silence tenant {principal.tenant}")
        tenant = principal.tenant
    if body.maintenance and body.rule is not None:
        raise ApiError(400, "a maintenance window covers agents (by agent or tenant), not a rule")
    if body.maintenance and body.agent_id is None and tenant is None:
        raise ApiError(400, "a maintenance window names an agent or a tenant")
    if (body.duration_s is None) == (body.expires_at is None):
        raise ApiError(400, "give exactly one of duration_s and expires_at: a silence always expires")
    starts_at = body.starts_at or now
    expires_at = body.expires_at or starts_at + timedelta(seconds=body.duration_s or 0)
    if expires_at <= now:
        raise ApiError(400, "expires_at is in the past")
    try:
        silence = Silence(
            id=f"sil-{uuid.uuid4().hex[:16]}",
            agent_id=body.agent_id,
            tenant=tenant,
            rule=body.rule,
            maintenance=body.maintenance,
            reason=body.reason,
            created_by=_actor(call),
            created_at=now,
            starts_at=starts_at,
            expires_at=expires_at,
        )
    except ValidationError as exc:
        raise ApiError(400, "; ".join(e["msg"] for e in exc.errors(include_url=False))) from None
    return _silence_view(agent_controls.create_silence(silence, operator(call), now), now)


def _list_silences(call: Call) -> SilenceList:
    principal = _principal(call)
    now = _now()
    found = [s for s in silence_store.active(now) if principal.tenant is None or s.tenant == principal.tenant]
    found.sort(key=lambda s: s.expires_at)
    return SilenceList(items=[_silence_view(s, now) for s in found])


def _delete_silence(call: Call) -> SilenceView:
    """End a silence now (it stays on record). The only way, besides its expiry, that one ends."""
    principal = _principal(call)
    silence_id = call.args["silence_id"]
    found = silence_store.get(silence_id) if _is_document_id(silence_id) else None
    if found is None or (principal.tenant is not None and found.tenant != principal.tenant):
        raise ApiError(404, f"silence {silence_id} not found")
    now = _now()
    if found.ended_at is None:
        silence_store.end(silence_id, at=now, by=_actor(call))
        audit_store.append(_audit(call, "silence.end", silence_id, found.tenant, {}, now))
        found = found.model_copy(update={"ended_at": now, "ended_by": _actor(call)})
    return _silence_view(found, now)


# --- release ------------------------------------------------------------------------------------


def _release(call: Call) -> ReleaseView:
    """An approver releases a frozen or quarantined agent: it becomes active, is told ``release``,
    and the ladder counts from now. 409 when there is nothing to release."""
    reason = _body(call, ReleaseRequest).reason
    done = agent_controls.release_agent(_visible_record(call).agent_id, operator(call), reason, _now())
    record = done.record
    return ReleaseView(
        agent_id=record.agent_id,
        tenant=record.tenant,
        status=record.status.value,
        liveness=str(record.liveness),
        released=done.released,
        resolved=done.resolved,
    )


# --- alerting and health settings ---------------------------------------------------------------

_SETTINGS: dict[str, type[BaseModel]] = {
    "alerting": AlertingConfig,
    "health": HealthConfig,
    "jobs": JobsConfig,
    "tasks": AssignmentConfig,
}


def _settings_view(call: Call, kind: str) -> SettingsView:
    tenant = _visible_tenant(call)
    overrides = getattr(config.read_tenant(tenant), kind)
    defaults = {"jobs": config.job_defaults, "alerting": config.alerting_defaults}.get(kind)
    base = {**defaults(), **overrides} if defaults else overrides  # the deployment's defaults
    effective = _SETTINGS[kind].model_validate(merged(_SETTINGS[kind], base)).model_dump(mode="json")
    return SettingsView(tenant=tenant, overrides=overrides, effective=effective)


def _put_settings(call: Call, kind: str) -> SettingsView:
    """Replace the tenant's overrides (an empty object restores every default); validated whole."""
    tenant = _visible_tenant(call)
    raw = _body(call, _Overrides).root
    try:
        checked = _SETTINGS[kind].model_validate(merged(_SETTINGS[kind], raw))
    except ValidationError as exc:
        listed = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors(include_url=False))
        raise ApiError(400, f"invalid {kind} settings: {listed}") from None
    overrides = checked.model_dump(mode="json", include=set(raw))
    _write_tenant(tenant, {kind: overrides}, _audit(call, f"tenant.{kind}.set", tenant, tenant, overrides, _now()))
    return _settings_view(call, kind)


def _get_jobs_settings(call: Call) -> SettingsView:
    return _settings_view(call, "jobs")


def _put_jobs_settings(call: Call) -> SettingsView:
    return _put_settings(call, "jobs")


def _get_tasks_settings(call: Call) -> SettingsView:
    return _settings_view(call, "tasks")


def _put_tasks_settings(call: Call) -> SettingsView:
    return _put_settings(call, "tasks")


def _get_alerting(call: Call) -> SettingsView:
    return _settings_view(call, "alerting")


def _put_alerting(call: Call) -> SettingsView:
    return _put_settings(call, "alerting")


def _get_health(call: Call) -> SettingsView:
    return _settings_view(call, "health")


def _put_health(call: Call) -> SettingsView:
    return _put_settings(call, "health")


# --- approvals, roles and the audit log ------------------------------------------------------------


def _approval_view(approval: Approval) -> ApprovalView:
    return ApprovalView.model_validate(approval.model_dump(mode="python"))


def _create_approval(call: Call) -> ApprovalView:
    """Ask the tenant's approvers (in Slack) for a decision. Idempotent with ``request_id``."""
    from shared.services import approvals

    body = _body(call, ApprovalCreate)
    principal = _principal(call)
    record, tenant = _agent_of_body(principal, body.agent_id, body.tenant)
    assert tenant is not None  # the model requires an agent or a tenant
    if not principal.can_see(tenant):
        raise ApiError(403, f"this API key only sees tenant {principal.tenant}")
    if body.kind == "release" and record is not None and not release.releasable(record):
        raise ApiError(409, f"agent {record.agent_id} is neither frozen nor quarantined (it is {record.status})")
    owner = record.owner if record is not None else None  # the agent's owner may not approve either
    if body.requested_by is not None:
        requester = Requester(kind="slack", id=body.requested_by, owner=owner)
    else:
        requester = Requester(kind="api", id=principal.name, owner=owner)
    payload: dict[str, Any] = {"requested_via": f"api:{principal.name}"}
    if body.kind == "budget_raise":
        payload.update({"period": body.budget_period, "usd": _usd(body.budget_usd or Decimal(0))})
    unique = body.request_id or call.request_id or uuid.uuid4().hex
    now = _now()
    approval = approvals.new(
        approval_id=approval_ids.approval_id("api", principal.key_id, unique),
        tenant=tenant,
        kind=ApprovalKind(body.kind),
        requester=requester,
        summary=body.summary,
        now=now,
        agent_id=body.agent_id,
        reason=body.reason,
        estimated_cost_usd=body.estimated_cost_usd,
        expires_in=timedelta(seconds=body.expires_in_s) if body.expires_in_s else None,
        payload=payload,
    )
    stored, _new = approvals.request(approval, now)
    return _approval_view(stored)


_APPROVAL_STATES = ("pending", "approved", "denied", "expired")
_APPROVAL_KINDS = tuple(k.value for k in approval_ids.Kind)


def _list_approvals(call: Call) -> ApprovalList:
    from shared.store import approvals as approval_store

    tenant = _query_tenant(call) or _principal(call).tenant
    state, kind = _query(call.request, "state"), _query(call.request, "kind")
    if state is not None and state not in _APPROVAL_STATES:
        raise ApiError(400, f"state must be one of {', '.join(_APPROVAL_STATES)}")
    if kind is not None and kind not in _APPROVAL_KINDS:
        raise ApiError(400, f"kind must be one of {', '.join(_APPROVAL_KINDS)}")
    found = approval_store.list_approvals(tenant=tenant, state=state, kind=kind, limit=_alert_limit(call.request))
    return ApprovalList(items=[_approval_view(a) for a in found])


def _get_approval(call: Call) -> ApprovalView:
    from shared.store import approvals as approval_store

    approval_id = call.args["approval_id"]
    found = approval_store.get(approval_id) if _is_document_id(approval_id) else None
    if found is None or not _principal(call).can_see(found.tenant):
        raise ApiError(404, f"approval {approval_id} not found")
    return _approval_view(found)


def _get_roles(call: Call) -> RolesView:
    from shared.store import roles as role_store

    tenant = _visible_tenant(call)
    return RolesView.model_validate({"tenant": tenant, "roles": role_store.of_tenant(tenant)})


def _put_roles(call: Call) -> RolesView:
    """Replace the tenant's Slack roles; each user's mirror follows in the same transaction."""
    from shared.store import roles as role_store

    tenant = _visible_tenant(call)
    roles: dict[str, str] = dict(_body(call, RolesUpdate).roles)
    entry = _audit(call, "tenant.roles.set", f"tenant.{tenant}", tenant, {"roles": roles}, _now())
    previous = role_store.replace(tenant, roles, entry)
    changed = sorted(u for u in set(previous) | set(roles) if previous.get(u) != roles.get(u))
    log.info("roles of %s replaced; changed: %s", tenant, ", ".join(changed) or "none")
    return RolesView.model_validate({"tenant": tenant, "roles": roles})


def _list_audit(call: Call) -> AuditPage:
    """The audit log, newest first; by tenant and at most one of actor, action, target, outcome."""
    tenant = _query_tenant(call) or _principal(call).tenant
    filters = {name: value for name in audit_store.FILTERS if (value := _query(call.request, name)) is not None}
    if len(filters) > 1:
        raise ApiError(400, f"filter by at most one of {', '.join(audit_store.FILTERS)} (besides tenant)")
    before = None
    raw = _query(call.request, "before")
    if raw is not None:
        try:
            before = datetime.fromisoformat(raw.replace(" ", "+"))
        except ValueError:
            raise ApiError(400, "before must be an ISO 8601 time, e.g. 2026-11-21T10:00:00Z") from None
        before = before if before.tzinfo is not None else before.replace(tzinfo=UTC)
    limit = _alert_limit(call.request)
    after = _page_token(call.request, _is_document_id)
    rows = audit_store.list_entries(tenant=tenant, filters=filters, before=before, limit=limit, after=after)
    next_token = encode_page_token(rows[-1]["id"]) if len(rows) == limit else None
    return AuditPage.model_validate({"items": rows, "next_page_token": next_token})


# --- reports ----------------------------------------------------------------------------------


def _report_at(call: Call) -> datetime:
    """``?at=``: the time the report is made as of (default now); it covers the hour (day) before."""
    raw = _query(call.request, "at")
    now = _now()
    if raw is None:
        return now
    try:
        at = datetime.fromisoformat(raw.replace(" ", "+"))  # an unencoded "+01:00" arrives as " 01:00"
    except ValueError:
        raise ApiError(400, "at must be an ISO 8601 time, e.g. 2026-11-21T10:00:00Z") from None
    at = at if at.tzinfo is not None else at.replace(tzinfo=UTC)
    if at > now:
        raise ApiError(400, "at must not be in the future")
    return at


def _hourly_report(call: Call) -> HourlyReportView:
    from shared.services import reports  # imported on first use: only report requests need it

    tenant = _query_tenant(call) or _principal(call).tenant
    return HourlyReportView.model_validate(dict(reports.hourly(_report_at(call), tenant)))


def _daily_report(call: Call) -> DailyReportView:
    from shared.services import reports

    tenant = _query_tenant(call) or _principal(call).tenant
    return DailyReportView.model_validate(dict(reports.daily(_report_at(call), tenant)))


_AT_QUERY = Param(
    "at",
    "query",
    "Make the report as of this time (ISO 8601; default now): it covers the last complete UTC hour (day) before.",
    {"type": "string", "format": "date-time"},
)


# --- the route table --------------------------------------------------------------------------

_PAGE_PARAMS = (
    Param(
        "page_size",
        "query",
        f"Items per page, 1 to {MAX_PAGE_SIZE}.",
        {"type": "integer", "minimum": 1, "maximum": MAX_PAGE_SIZE, "default": DEFAULT_PAGE_SIZE},
    ),
    Param("page_token", "query", "next_page_token of the previous page, unchanged.", {"type": "string"}),
)
_AGENT_ID_PARAM = Param(
    "agent_id", "path", "The agent's id.", {"type": "string", "pattern": AGENT_ID_PATTERN}, required=True
)
_TENANT_PARAM = Param(
    "tenant",
    "path",
    "The tenant (a tenant-scoped key sees only its own; any other is 404).",
    {"type": "string", "pattern": AGENT_ID_PATTERN},
    required=True,
)
_TENANT_QUERY = Param(
    "tenant",
    "query",
    "A tenant (a tenant-scoped key may name only its own).",
    {"type": "string", "pattern": AGENT_ID_PATTERN},
)

_LIMIT_QUERY = Param(
    "limit",
    "query",
    f"At most this many, 1 to {MAX_ALERTS}.",
    {"type": "integer", "minimum": 1, "maximum": MAX_ALERTS, "default": DEFAULT_ALERTS},
)

ROUTES: tuple[Route, ...] = (
    Route(
        "/healthz",
        "health",
        "Liveness probe (no authentication, no Firestore).",
        _health,
        Health,
        auth=False,
        tags=("meta",),
    ),
    Route(
        "/openapi.json",
        "openapi",
        "This OpenAPI 3.1 document (no authentication).",
        _openapi,
        None,
        auth=False,
        tags=("meta",),
    ),
    Route(
        "/v1/agents",
        "list_agents",
        "List agents, ordered by id, one page at a time.",
        _list_agents,
        AgentPage,
        params=(
            Param(
                "tenant",
                "query",
                "Only this tenant (a tenant-scoped key may name only its own).",
                {"type": "string", "pattern": AGENT_ID_PATTERN},
            ),
            Param(
                "status",
                "query",
                "Only agents in this lifecycle state.",
                {"$ref": _REF.format(model="State")},
            ),
            *_PAGE_PARAMS,
        ),
        errors=(400,),
        tags=("agents",),
    ),
    Route(
        "/v1/agents/<agent_id>",
        "get_agent",
        "One agent.",
        _get_agent,
        AgentView,
        params=(_AGENT_ID_PARAM,),
        errors=(404,),
        tags=("agents",),
    ),
    Route(
        "/v1/agents/<agent_id>/history",
        "get_agent_history",
        "An agent's stored heartbeat samples, oldest first.",
        _agent_history,
        HistoryView,
        params=(_AGENT_ID_PARAM,),
        errors=(404,),
        tags=("agents",),
    ),
    Route(
        "/v1/rejections",
        "list_rejections",
        "List rejected events, newest first.",
        _list_rejections,
        RejectionPage,
        params=(
            Param(
                "agent_id",
                "query",
                "Only rejections of this agent (required for tenant-scoped keys).",
                {"type": "string", "pattern": AGENT_ID_PATTERN},
            ),
            Param(
                "code",
                "query",
                "Only rejections with this code.",
                {"type": "string", "enum": list(_CODES)},
            ),
            *_PAGE_PARAMS,
        ),
        errors=(400,),
        tags=("rejections",),
    ),
    # -- costs --
    Route(
        "/v1/agents/<agent_id>/usage",
        "get_agent_usage",
        "An agent's spend, tokens and calls in the current UTC hour, day and month, with its budget and holds.",
        _agent_usage,
        AgentUsageView,
        params=(_AGENT_ID_PARAM,),
        errors=(404,),
        tags=("costs",),
    ),
    Route(
        "/v1/agents/<agent_id>/budget",
        "get_agent_budget",
        "An agent's budget and where it comes from (registration or API).",
        _get_agent_budget,
        AgentBudgetView,
        params=(_AGENT_ID_PARAM,),
        errors=(404,),
        tags=("costs",),
    ),
    Route(
        "/v1/agents/<agent_id>/budget",
        "set_agent_budget",
        "Replace an agent's budget (wins over the registration's); its budget hold is re-evaluated at once.",
        _set_agent_budget,
        AgentBudgetView,
        role=Role.ADMIN,
        params=(_AGENT_ID_PARAM,),
        errors=(400, 404),
        tags=("costs",),
        method="PUT",
        request=BudgetUpdate,
    ),
    Route(
        "/v1/agents/<agent_id>/budget",
        "delete_agent_budget",
        "Remove an agent's budget (a registration's budget no longer applies); a budget hold is lifted at once.",
        _delete_agent_budget,
        AgentBudgetView,
        role=Role.ADMIN,
        params=(_AGENT_ID_PARAM,),
        errors=(404,),
        tags=("costs",),
        method="DELETE",
    ),
    Route(
        "/v1/agents/<agent_id>/protection",
        "get_agent_protection",
        "An agent's protection overrides and the thresholds in effect (defaults, tenant, agent).",
        _get_agent_protection,
        ProtectionView,
        params=(_AGENT_ID_PARAM,),
        errors=(404,),
        tags=("costs",),
    ),
    Route(
        "/v1/agents/<agent_id>/protection",
        "set_agent_protection",
        "Replace an agent's protection overrides ({} goes back to the tenant's and the defaults).",
        _set_agent_protection,
        ProtectionView,
        role=Role.ADMIN,
        params=(_AGENT_ID_PARAM,),
        errors=(400, 404),
        tags=("costs",),
        method="PUT",
        request=ProtectionUpdate,
    ),
    Route(
        "/v1/agents/<agent_id>/pause",
        "pause_agent",
        "Pause an agent: it is told to stop calling its model and is suspended until resumed.",
        _pause,
        AgentHoldsView,
        role=Role.OPERATOR,
        params=(_AGENT_ID_PARAM,),
        errors=(400, 404, 409),
        tags=("costs",),
        method="POST",
        request=PauseRequest,
    ),
    Route(
        "/v1/agents/<agent_id>/resume",
        "resume_agent",
        "Lift an agent's pause (other holds stay); 409 when it is not paused.",
        _resume,
        AgentHoldsView,
        role=Role.OPERATOR,
        params=(_AGENT_ID_PARAM,),
        errors=(400, 404, 409),
        tags=("costs",),
        method="POST",
        request=ResumeRequest,
    ),
    Route(
        "/v1/tenants/<tenant>/usage",
        "get_tenant_usage",
        "A tenant's spend, tokens and calls in the current UTC hour, day and month, with its budget.",
        _tenant_usage,
        TenantUsageView,
        params=(_TENANT_PARAM,),
        errors=(404,),
        tags=("costs",),
    ),
    Route(
        "/v1/tenants/<tenant>/budget",
        "get_tenant_budget",
        "A tenant's budget.",
        _get_tenant_budget,
        TenantBudgetView,
        params=(_TENANT_PARAM,),
        errors=(404,),
        tags=("costs",),
    ),
    Route(
        "/v1/tenants/<tenant>/budget",
        "set_tenant_budget",
        "Replace a tenant's budget (every agent of the tenant counts against it).",
        _set_tenant_budget,
        TenantBudgetView,
        role=Role.ADMIN,
        params=(_TENANT_PARAM,),
        errors=(400, 404),
        tags=("costs",),
        method="PUT",
        request=BudgetUpdate,
    ),
    Route(
        "/v1/tenants/<tenant>/budget",
        "delete_tenant_budget",
        "Remove a tenant's budget; its agents' tenant holds are lifted at once.",
        _delete_tenant_budget,
        TenantBudgetView,
        role=Role.ADMIN,
        params=(_TENANT_PARAM,),
        errors=(404,),
        tags=("costs",),
        method="DELETE",
    ),
    Route(
        "/v1/tenants/<tenant>/protection",
        "get_tenant_protection",
        "A tenant's protection overrides and the thresholds in effect for its agents without their own.",
        _get_tenant_protection,
        ProtectionView,
        params=(_TENANT_PARAM,),
        errors=(404,),
        tags=("costs",),
    ),
    Route(
        "/v1/tenants/<tenant>/protection",
        "set_tenant_protection",
        "Replace a tenant's protection overrides ({} goes back to the defaults).",
        _set_tenant_protection,
        ProtectionView,
        role=Role.ADMIN,
        params=(_TENANT_PARAM,),
        errors=(400, 404),
        tags=("costs",),
        method="PUT",
        request=ProtectionUpdate,
    ),
    Route(
        "/v1/prices",
        "list_prices",
        "Prices per token of every known model, with a tenant's overrides in their place.",
        _list_prices,
        PriceList,
        params=(_TENANT_QUERY,),
        errors=(400,),
        tags=("costs",),
    ),
    Route(
        "/v1/prices/<path:model>",
        "set_price",
        "Set a model's price per token, globally or (with tenant) for one tenant.",
        _set_price,
        PriceView,
        role=Role.ADMIN,
        params=(
            Param(
                "model",
                "path",
                "The model name; may contain / and : (e.g. openai/gpt-4o, claude-3-5:latest).",
                {"type": "string", "pattern": r"^[A-Za-z0-9][A-Za-z0-9_.:/@+-]{0,127}$"},
                required=True,
            ),
            Param(
                "tenant",
                "query",
                "Set this tenant's override instead of the global price (required for tenant-scoped keys).",
                {"type": "string", "pattern": AGENT_ID_PATTERN},
            ),
        ),
        errors=(400,),
        tags=("costs",),
        method="PUT",
        request=PriceUpdate,
    ),
    Route(
        "/v1/alerts",
        "list_alerts",
        "Alert episodes (liveness, health rules, root alerts, budgets, breaker, runaway loops, cost spikes, "
        "unpriced models), open and recent, newest first.",
        _list_alerts,
        AlertList,
        params=(
            _TENANT_QUERY,
            Param("agent_id", "query", "Only this agent's.", {"type": "string", "pattern": AGENT_ID_PATTERN}),
            Param("state", "query", "open or resolved.", {"type": "string", "enum": list(_EPISODE_STATES)}),
            Param("rule", "query", "Only this rule's (liveness, error_rate, ...).", {"type": "string"}),
            Param("severity", "query", "Only this severity.", {"type": "string", "enum": list(_SEVERITIES)}),
            _LIMIT_QUERY,
        ),
        errors=(400,),
        tags=("alerts",),
    ),
    Route(
        "/v1/silences",
        "create_silence",
        "Silence alerts by agent, tenant or rule, or start a maintenance window; always with an expiry. "
        "Resolutions are still sent; a heartbeat never ends a maintenance window.",
        _create_silence,
        SilenceView,
        role=Role.OPERATOR,
        errors=(400, 404),
        tags=("alerts",),
        method="POST",
        request=SilenceRequest,
    ),
    Route(
        "/v1/silences",
        "list_silences",
        "Silences and maintenance windows not yet expired, soonest expiry first.",
        _list_silences,
        SilenceList,
        tags=("alerts",),
    ),
    Route(
        "/v1/silences/<silence_id>",
        "end_silence",
        "End a silence or maintenance window now (it stays on record).",
        _delete_silence,
        SilenceView,
        role=Role.OPERATOR,
        params=(Param("silence_id", "path", "The silence's id.", {"type": "string"}, required=True),),
        errors=(404,),
        tags=("alerts",),
        method="DELETE",
    ),
    Route(
        "/v1/agents/<agent_id>/release",
        "release_agent",
        "Release a frozen or quarantined agent (approvers): it becomes active and is told so; 409 when it is neither.",
        _release,
        ReleaseView,
        role=Role.APPROVER,
        params=(_AGENT_ID_PARAM,),
        errors=(400, 404, 409),
        tags=("alerts",),
        method="POST",
        request=ReleaseRequest,
    ),
    Route(
        "/v1/tenants/<tenant>/alerting",
        "get_tenant_alerting",
        "A tenant's alerting settings: channels per severity, repeat intervals, grouping, root alerts.",
        _get_alerting,
        SettingsView,
        params=(_TENANT_PARAM,),
        errors=(404,),
        tags=("alerts",),
    ),
    Route(
        "/v1/tenants/<tenant>/alerting",
        "set_tenant_alerting",
        "Replace a tenant's alerting overrides ({} restores the defaults).",
        _put_alerting,
        SettingsView,
        role=Role.ADMIN,
        params=(_TENANT_PARAM,),
        errors=(400, 404),
        tags=("alerts",),
        method="PUT",
        request=_Overrides,
    ),
    Route(
        "/v1/tenants/<tenant>/health",
        "get_tenant_health",
        "A tenant's health-rule thresholds (error rate, saturation, flapping, egress, security score).",
        _get_health,
        SettingsView,
        params=(_TENANT_PARAM,),
        errors=(404,),
        tags=("alerts",),
    ),
    Route(
        "/v1/tenants/<tenant>/health",
        "set_tenant_health",
        "Replace a tenant's health-rule overrides ({} restores the defaults).",
        _put_health,
        SettingsView,
        role=Role.ADMIN,
        params=(_TENANT_PARAM,),
        errors=(400, 404),
        tags=("alerts",),
        method="PUT",
        request=_Overrides,
    ),
    # -- approvals, roles, audit --
    Route(
        "/v1/approvals",
        "create_approval",
        "Ask a tenant's approvers for a decision (operation, budget_raise, release): posted to Slack with buttons.",
        _create_approval,
        ApprovalView,
        role=Role.OPERATOR,
        errors=(400, 404, 409),
        tags=("approvals",),
        method="POST",
        request=ApprovalCreate,
    ),
    Route(
        "/v1/approvals",
        "list_approvals",
        "Approval requests, newest first, by tenant, state and kind.",
        _list_approvals,
        ApprovalList,
        params=(
            _TENANT_QUERY,
            Param(
                "state",
                "query",
                "pending, approved, denied or expired.",
                {"type": "string", "enum": list(_APPROVAL_STATES)},
            ),
            Param(
                "kind",
                "query",
                "operation, budget_raise or release.",
                {"type": "string", "enum": list(_APPROVAL_KINDS)},
            ),
            _LIMIT_QUERY,
        ),
        errors=(400,),
        tags=("approvals",),
    ),
    Route(
        "/v1/approvals/<approval_id>",
        "get_approval",
        "One approval request: who asked, what, why, the decision (who, when) and what it did.",
        _get_approval,
        ApprovalView,
        params=(Param("approval_id", "path", "The approval's id (apr-...).", {"type": "string"}, required=True),),
        errors=(404,),
        tags=("approvals",),
    ),
    Route(
        "/v1/tenants/<tenant>/roles",
        "get_tenant_roles",
        "The tenant's Slack roles: Slack user id -> viewer, operator, approver or admin.",
        _get_roles,
        RolesView,
        params=(_TENANT_PARAM,),
        errors=(404,),
        tags=("approvals",),
    ),
    Route(
        "/v1/tenants/<tenant>/roles",
        "set_tenant_roles",
        "Replace the tenant's Slack roles (the whole map).",
        _put_roles,
        RolesView,
        role=Role.ADMIN,
        params=(_TENANT_PARAM,),
        errors=(400, 404),
        tags=("approvals",),
        method="PUT",
        request=RolesUpdate,
    ),
    Route(
        "/v1/audit",
        "list_audit",
        "The audit log (append-only), newest first: every change, command, decision and refusal.",
        _list_audit,
        AuditPage,
        params=(
            _TENANT_QUERY,
            Param("actor", "query", "api:<key name>, slack:<user id>, agent:<id>, system.", {"type": "string"}),
            Param("action", "query", "e.g. agent.hold.pause, approval.approve, slack.pause.", {"type": "string"}),
            Param("target", "query", "An agent id, tenant.<tenant>, a silence id...", {"type": "string"}),
            Param("outcome", "query", "applied, refused, requested, usage, unchanged...", {"type": "string"}),
            Param(
                "before",
                "query",
                "Only entries before this time (ISO 8601).",
                {"type": "string", "format": "date-time"},
            ),
            _PAGE_PARAMS[1],
            _LIMIT_QUERY,
        ),
        errors=(400,),
        tags=("audit",),
    ),
    # -- reports --
    Route(
        "/v1/reports/hourly",
        "get_hourly_report",
        "The hourly summary of the last complete UTC hour: what is unhealthy or changed, spend, top agents.",
        _hourly_report,
        HourlyReportView,
        params=(_TENANT_QUERY, _AT_QUERY),
        errors=(400,),
        tags=("reports",),
    ),
    Route(
        "/v1/reports/daily",
        "get_daily_report",
        "The daily cost report of the last complete UTC day: budgets, trend, optimization suggestions.",
        _daily_report,
        DailyReportView,
        params=(_TENANT_QUERY, _AT_QUERY),
        errors=(400,),
        tags=("reports",),
    ),
)

ROUTES += (
    *jobs.ROUTES,
    *ml_models.ROUTES,
    *tasks.ROUTES,
    Route(
        "/v1/tenants/<tenant>/jobs",
        "get_tenant_jobs_settings",
        "A tenant's training-job settings: quotas per user and tenant, approval threshold, backends, timeouts.",
        _get_jobs_settings,
        SettingsView,
        params=(_TENANT_PARAM,),
        errors=(404,),
        tags=("jobs",),
    ),
    Route(
        "/v1/tenants/<tenant>/jobs",
        "set_tenant_jobs_settings",
        "Replace a tenant's training-job overrides ({} restores the defaults).",
        _put_jobs_settings,
        SettingsView,
        role=Role.ADMIN,
        params=(_TENANT_PARAM,),
        errors=(400, 404),
        tags=("jobs",),
        method="PUT",
        request=_Overrides,
    ),
    Route(
        "/v1/tenants/<tenant>/tasks",
        "get_tenant_tasks_settings",
        "A tenant's task-assignment settings: the weights of success, cost, availability and SLA, and the "
        "outcomes needed before the model is trusted over the heuristic.",
        _get_tasks_settings,
        SettingsView,
        params=(_TENANT_PARAM,),
        errors=(404,),
        tags=("tasks",),
    ),
    Route(
        "/v1/tenants/<tenant>/tasks",
        "set_tenant_tasks_settings",
        "Replace a tenant's task-assignment overrides ({} restores the defaults).",
        _put_tasks_settings,
        SettingsView,
        role=Role.ADMIN,
        params=(_TENANT_PARAM,),
        errors=(400, 404),
        tags=("tasks",),
        method="PUT",
        request=_Overrides,
    ),
)

_BY_ENDPOINT: dict[str, Route] = {r.endpoint: r for r in ROUTES}
URL_MAP = Map(
    [Rule(r.rule, endpoint=r.endpoint, methods=[r.method]) for r in ROUTES],
    strict_slashes=False,
    merge_slashes=False,
)


# --- the entry point --------------------------------------------------------------------------


def handle(request: flask.Request) -> flask.Response:
    """Serve one request; never raises, always answers JSON, logs one line."""
    request_id, trace = _request_ids(request)
    fields: dict[str, Any] = {"method": request.method, "path": request.path, "request_id": request_id}
    with logs.invocation(log, **fields) as entry:
        level = logging.INFO
        try:
            response = _dispatch(request, entry.fields)
        except ApiError as err:
            response = _error(err.status, err.reason, err.headers, err.details)
        except agent_controls.Refused as err:
            response = _error(err.status, err.reason)
        except Exception as exc:
            entry.fields["error"] = f"{type(exc).__name__}: {exc}"
            if isinstance(exc, db.transient_errors()):
                level = logging.WARNING
                response = _error(503, "Firestore is unavailable; retry shortly", {"Retry-After": "1"})
            else:
                level = logging.ERROR
                entry.fields["exception"] = traceback.format_exc()
                response = _error(500, f"internal error; see logs with request id {request_id}")
        response.headers["X-Request-Id"] = request_id
        if trace:
            entry.fields["logging.googleapis.com/trace"] = f"projects/{settings.get().project}/traces/{trace}"
        entry.outcome(f"{request.method} {request.path} {response.status_code}", level, status=response.status_code)
    return response


def _dispatch(request: flask.Request, fields: dict[str, Any]) -> flask.Response:
    adapter = URL_MAP.bind("api", url_scheme="https")
    try:
        endpoint, args = adapter.match(request.path, method=request.method)
    except MethodNotAllowed as exc:
        allowed = ", ".join(sorted(exc.valid_methods or ["GET"]))
        raise ApiError(405, f"{request.method} is not allowed here; use {allowed}", {"Allow": allowed}) from None
    except NotFound:
        raise ApiError(404, f"no route for {request.path}; see /openapi.json") from None
    except HTTPException as exc:  # any other routing outcome, still as JSON
        status = exc.code if exc.code in ERROR_CODES else 400
        raise ApiError(status, exc.description or "bad request") from None
    route = _BY_ENDPOINT[str(endpoint)]
    fields["endpoint"] = route.endpoint
    principal = None
    if route.auth:
        principal = _authenticate(request)
        fields["key_id"] = principal.key_id
        if not principal.role.allows(route.role):
            reason = f"this API key's role ({principal.role}) cannot call {route.endpoint}"
            _audit_refusal(principal, route, request.path, fields["request_id"], reason)
            raise ApiError(403, reason)
    result = route.view(Call(request, {k: str(v) for k, v in args.items()}, principal, fields["request_id"]))
    body = result.model_dump_json() if isinstance(result, BaseModel) else json.dumps(result)
    return _json(200, body)


def _audit_refusal(principal: Principal, route: Route, path: str, request_id: str, reason: str) -> None:
    """A call the key's role does not allow is an audit entry too (who tried what)."""
    entry = AuditEntry(
        id=f"api.{request_id}.{route.endpoint}.refused",
        at=_now(),
        actor=f"api:{principal.name}",
        action=f"api.{route.endpoint}",
        target=path[:300],
        outcome="refused",
        tenant=principal.tenant,
        details={"reason": reason, "role": principal.role.value, "needs": route.role.value},
    )
    audit_store.append(entry)


def _authenticate(request: flask.Request) -> Principal:
    """The principal of the bearer token. The token is never logged nor echoed back."""
    header = request.headers.get("Authorization", "")
    if not header:
        raise ApiError(401, "missing Authorization: Bearer <API key> header", {"WWW-Authenticate": "Bearer"})
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise ApiError(401, "the Authorization header must be 'Bearer <API key>'", {"WWW-Authenticate": "Bearer"})
    principal = api_keys.verify(token)
    if principal is None:
        raise ApiError(401, "invalid or revoked API key", {"WWW-Authenticate": 'Bearer error="invalid_token"'})
    return principal


def _request_ids(request: flask.Request) -> tuple[str, str | None]:
    """(request id, Cloud Trace id): the trace id when Google's front end set one, so logs correlate."""
    trace = request.headers.get("X-Cloud-Trace-Context", "").split("/", 1)[0]
    if _TRACE.match(trace):
        return trace.lower(), trace.lower()
    return uuid.uuid4().hex, None


def _json(status: int, body: str, headers: dict[str, str] | None = None) -> flask.Response:
    response = flask.Response(body, status=status, mimetype="application/json")
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Content-Type-Options"] = "nosniff"
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def _error(
    status: int, reason: str, headers: dict[str, str] | None = None, details: list[dict[str, Any]] | None = None
) -> flask.Response:
    body = ErrorBody(error=ErrorDetail(code=ERROR_CODES.get(status, "error"), reason=reason, details=details))
    return _json(status, body.model_dump_json(exclude_none=True), headers)


# --- OpenAPI ----------------------------------------------------------------------------------

_ERROR_RESPONSES: dict[int, tuple[str, str, dict[str, Any]]] = {
    400: (
        "BadRequest",
        "A query parameter, page token or path name is invalid, or the request body is (error.details lists "
        "every validation error).",
        {},
    ),
    401: (
        "Unauthorized",
        "Missing, malformed, unknown or revoked API key.",
        {"WWW-Authenticate": {"schema": {"type": "string"}, "description": "Bearer"}},
    ),
    403: ("Forbidden", "The API key may not do this (tenant scope or role).", {}),
    404: ("NotFound", "No such route, or no such agent or tenant visible to this API key.", {}),
    405: (
        "MethodNotAllowed",
        "The method is not served on this path.",
        {"Allow": {"schema": {"type": "string"}, "description": "The allowed methods."}},
    ),
    409: ("Conflict", "The agent's state does not allow this (e.g. resuming an agent that is not paused).", {}),
    500: ("Internal", "Unexpected error; the reason names the request id to look up in the logs.", {}),
    503: (
        "Unavailable",
        "Firestore is temporarily unavailable; retry.",
        {"Retry-After": {"schema": {"type": "integer"}, "description": "Seconds to wait before retrying."}},
    ),
}


def _openapi_path(rule: str) -> str:
    """werkzeug's ``<conv:name>`` placeholders as OpenAPI's ``{name}``."""
    return re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("agent-fleet-manager")
    except PackageNotFoundError:
        return "0.0.0"


def _accepts_empty(model: type[BaseModel]) -> bool:
    """Whether the body may be left out (an empty body is read as ``{}``)."""
    try:
        model.model_validate({})
    except ValidationError:
        return False
    return True


@functools.cache
def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 document, built once per instance from the route table and the pydantic models."""
    # Responses as they are serialised, request bodies as they are validated (what is accepted).
    responses_ = dict.fromkeys([*MODELS, *(r.response for r in ROUTES if r.response)])
    requests_ = dict.fromkeys([*REQUEST_MODELS, *(r.request for r in ROUTES if r.request)])
    refs, top = models_json_schema(
        [(model, "serialization") for model in responses_] + [(model, "validation") for model in requests_],
        ref_template=_REF,
    )
    schemas: dict[str, Any] = top.get("$defs", {})
    error_ref = {"$ref": _REF.format(model="ErrorBody")}
    responses = {
        name: {"description": description, "content": {"application/json": {"schema": error_ref}}}
        | ({"headers": headers} if headers else {})
        for name, description, headers in _ERROR_RESPONSES.values()
    }
    paths: dict[str, Any] = {}
    for route in ROUTES:
        statuses = set(route.errors) | {405, 500}
        if route.auth:
            statuses |= {401, 403, 503}
        ok_schema = dict(refs[(route.response, "serialization")]) if route.response else {"type": "object"}
        operation: dict[str, Any] = {
            "operationId": route.endpoint,
            "summary": route.summary,
            "tags": list(route.tags),
            "parameters": [
                {
                    "name": p.name,
                    "in": p.where,
                    "required": p.required,
                    "description": p.description,
                    "schema": p.schema,
                }
                for p in route.params
            ],
            "responses": {
                "200": {"description": "OK", "content": {"application/json": {"schema": ok_schema}}},
                **{
                    str(status): {"$ref": f"#/components/responses/{_ERROR_RESPONSES[status][0]}"}
                    for status in sorted(statuses)
                },
            },
            "security": [{"bearerAuth": []}] if route.auth else [],
        }
        if route.auth:
            operation["description"] = f"Needs an API key with the {route.role.value} role (or above)."
        if route.request is not None:
            operation["requestBody"] = {
                "required": not _accepts_empty(route.request),
                "content": {"application/json": {"schema": dict(refs[(route.request, "validation")])}},
            }
        paths.setdefault(_openapi_path(route.rule), {})[route.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Agent Fleet Manager API",
            "version": _version(),
            "description": "The fleet: agents, their heartbeat history, rejected events, and their costs "
            "(usage, budgets, protection thresholds, prices, pauses, alerts). "
            'Every error is JSON: {"error": {"code", "reason"}}.',
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "responses": responses,
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "afm_<key_id>_<secret>",
                    "description": "An API key created with `fleetctl keys create`.",
                }
            },
        },
        "security": [{"bearerAuth": []}],
    }
