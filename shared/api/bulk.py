"""``POST /v1/agents/bulk``: one operator action on the agents a search selects (shared/services/bulk.py),
at most ``bulk.CAP`` agents a call, each agent's result reported; a dry run lists them and changes nothing;
quarantine and decommission are asked of the tenant's approvers."""

from __future__ import annotations

import dataclasses

from shared.api import agent_search, core
from shared.api.bodies.operator import BulkRequest, BulkResult, BulkView
from shared.api.core import ApiError, Call, Routes
from shared.domain import approvals as approval_domain
from shared.domain.api_keys import Role
from shared.services import agent_controls, approvals, bulk
from shared.store import audit as audit_store

routes = Routes("agents")


@routes.post("/v1/agents/bulk", BulkView, BulkRequest, Role.OPERATOR, errors=(400, 403))
def bulk_agents(call: Call) -> BulkView:
    """Pause, resume, drain, label, quarantine or decommission the agents a filter selects (operators).

    At most 100 agents a call, in id order: when more match, ``next_page_token`` continues (pass it as
    ``page_token`` with the same body). ``dry_run`` lists each agent's result and changes nothing.
    Quarantine and decommission are never applied by the call: they are asked of the tenant's approvers
    (``approval_id``), and applied to the agents listed when approved."""
    request = core.body(call, BulkRequest)
    principal = core.principal(call)
    try:
        search = agent_search.search_of(principal, request.filter.model_dump())
    except ApiError as error:
        if error.status == 403:  # another tenant named in the filter: a refusal, audited
            _refusal(call, request, principal.tenant, error.reason)
        raise
    critical = request.action == "label" and agent_controls.unprotects_critical(request.labels)
    if critical and not principal.role.allows(Role.APPROVER):
        reason = f"changing or removing the label {agent_controls.CRITICAL_LABEL[0]} needs approver"
        _refusal(call, request, principal.tenant, reason)
        raise ApiError(403, reason)
    destructive = request.action in bulk.DESTRUCTIVE
    tenant = search.filters.tenant
    if tenant is None:
        # Never across tenants: a bulk acts on one tenant's agents, audited under that tenant.
        raise ApiError(400, f"a bulk {request.action} names one tenant (filter.tenant)")
    after = core.decode_page_token(request.page_token, core.is_agent_id) if request.page_token else None
    now = core.now()
    records, last, _read = search.page(bulk.CAP, after, now)
    previews = [bulk.preview(r, request.action, request.labels) for r in records]
    approval_id = None
    if request.dry_run:
        results = previews
    elif destructive:
        chosen = [p.agent_id for p in previews if p.result == "would_apply"]
        results = [bulk.Result(p.agent_id, "requested") if p.result == "would_apply" else p for p in previews]
        if chosen and tenant is not None:
            approval_id = _ask(call, request, tenant, chosen)
    else:
        operator = core.operator(call)
        if request.request_id:  # a retry sends the same command ids and hold keys
            operator = dataclasses.replace(operator, request_id=request.request_id)
        results = bulk.apply_all(
            [r.agent_id for r in records], request.action, operator, request.reason, now, request.labels
        )
    if not request.dry_run:
        details = {
            "filter": request.filter.model_dump(mode="json", exclude_none=True),
            "summary": bulk.summary(request.action, results),
            "approval_id": approval_id,
        }
        target = f"bulk.{request.action}"
        audit_store.append(core.audit(call, f"agent.bulk.{request.action}", target, tenant, details, now))
    return BulkView(
        action=request.action,
        dry_run=request.dry_run,
        results=[BulkResult(agent_id=r.agent_id, result=r.result, reason=r.reason) for r in results],  # type: ignore[arg-type]
        approval_id=approval_id,
        next_page_token=core.encode_page_token(last) if last else None,
    )


def _ask(call: Call, request: BulkRequest, tenant: str, agent_ids: list[str]) -> str:
    """The approval of a destructive bulk action: its filter and the agents it will act on."""
    principal = core.principal(call)
    now = core.now()
    shown = ", ".join(agent_ids[:5]) + (f" and {len(agent_ids) - 5} more" if len(agent_ids) > 5 else "")
    approval = approvals.new(
        approval_id=approval_domain.approval_id("api", _unique(call, request), "bulk"),
        tenant=tenant,
        kind=approval_domain.Kind.BULK,
        requester=approval_domain.Requester(kind="api", id=principal.name),
        summary=f"bulk {request.action} of {len(agent_ids)} agents: {shown}",
        now=now,
        reason=request.reason,
        payload={
            "action": request.action,
            "filter": request.filter.model_dump(mode="json", exclude_none=True),
            "agent_ids": agent_ids,
            "reason": request.reason,
        },
    )
    stored, _new = approvals.request(approval, now)
    return stored.id


def _unique(call: Call, request: BulkRequest) -> str:
    """The request's idempotency key: the client's ``request_id`` (and page) when given, else this HTTP request's."""
    if request.request_id:
        return f"{request.request_id}.{request.page_token or ''}"
    return call.request_id or ""


def _refusal(call: Call, request: BulkRequest, tenant: str | None, reason: str) -> None:
    """The audit entry of a refused bulk call."""
    details = {"filter": request.filter.model_dump(mode="json", exclude_none=True), "reason": reason}
    entry = core.audit(call, f"agent.bulk.{request.action}", f"bulk.{request.action}", tenant, details, core.now())
    audit_store.append(dataclasses.replace(entry, outcome="refused"))
