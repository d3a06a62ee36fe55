"""The REST API's four-eyes routes: approval requests, a tenant's Slack roles, and the audit log.
Approvals are decided in Slack (shared/slack/buttons.py) and carried out by shared/services/approvals.py."""

from __future__ import annotations

import uuid
from datetime import timedelta
from decimal import Decimal
from typing import Any

from shared.api import core
from shared.api.bodies import ApprovalCreate, ApprovalList, ApprovalView, AuditPage, RolesUpdate, RolesView
from shared.api.core import LIMIT_QUERY, PAGE_PARAMS, TENANT, TENANT_QUERY, ApiError, Call, Param, Routes
from shared.api.tenancy import agent_of_body, query_tenant, visible_tenant
from shared.domain import approvals as approval_ids
from shared.domain import release
from shared.domain.api_keys import Role
from shared.domain.approvals import Approval, Requester
from shared.domain.approvals import Kind as ApprovalKind
from shared.platform import logs
from shared.store import approvals as approval_store
from shared.store import audit as audit_store
from shared.store import roles as role_store

log = logs.get_logger("api")

_APPROVAL_STATES = ("pending", "approved", "denied", "expired")
_APPROVAL_KINDS = tuple(k.value for k in approval_ids.Kind)

routes = Routes("approvals")


def _approval_view(approval: Approval) -> ApprovalView:
    return ApprovalView.model_validate(approval.model_dump(mode="python"))


@routes.post("/v1/approvals", ApprovalView, ApprovalCreate, Role.OPERATOR, errors=(400, 404, 409))
def create_approval(call: Call) -> ApprovalView:
    """Ask a tenant's approvers for a decision (operation, budget_raise, release): posted to Slack with buttons.

    Idempotent with ``request_id``."""
    # lazy: shared.services.approvals (with the Slack client it brings) serves this route alone
    from shared.services import approvals

    body = core.body(call, ApprovalCreate)
    principal = core.principal(call)
    record, tenant = agent_of_body(principal, body.agent_id, body.tenant)
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
        payload.update({"period": body.budget_period, "usd": core.usd(body.budget_usd or Decimal(0))})
    unique = body.request_id or call.request_id or uuid.uuid4().hex
    now = core.now()
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


_LIST_PARAMS = (
    TENANT_QUERY,
    Param(
        "state", "query", "pending, approved, denied or expired.", {"type": "string", "enum": list(_APPROVAL_STATES)}
    ),
    Param("kind", "query", "operation, budget_raise or release.", {"type": "string", "enum": list(_APPROVAL_KINDS)}),
    LIMIT_QUERY,
)


@routes.get("/v1/approvals", ApprovalList, params=_LIST_PARAMS, errors=(400,))
def list_approvals(call: Call) -> ApprovalList:
    """Approval requests, newest first, by tenant, state and kind."""
    tenant = query_tenant(call) or core.principal(call).tenant
    state, kind = core.query(call.request, "state"), core.query(call.request, "kind")
    if state is not None and state not in _APPROVAL_STATES:
        raise ApiError(400, f"state must be one of {', '.join(_APPROVAL_STATES)}")
    if kind is not None and kind not in _APPROVAL_KINDS:
        raise ApiError(400, f"kind must be one of {', '.join(_APPROVAL_KINDS)}")
    found = approval_store.list_approvals(tenant=tenant, state=state, kind=kind, limit=core.limit(call.request))
    return ApprovalList(items=[_approval_view(a) for a in found])


_APPROVAL_PARAM = Param("approval_id", "path", "The approval's id (apr-...).", {"type": "string"}, required=True)


@routes.get("/v1/approvals/<approval_id>", ApprovalView, params=(_APPROVAL_PARAM,), errors=(404,))
def get_approval(call: Call) -> ApprovalView:
    """One approval request: who asked, what, why, the decision (who, when) and what it did."""
    approval_id = call.args["approval_id"]
    found = approval_store.get(approval_id) if core.is_document_id(approval_id) else None
    if found is None or not core.principal(call).can_see(found.tenant):
        raise ApiError(404, f"approval {approval_id} not found")
    return _approval_view(found)


@routes.get("/v1/tenants/<tenant>/roles", RolesView, params=TENANT, errors=(404,))
def get_tenant_roles(call: Call) -> RolesView:
    """The tenant's Slack roles: Slack user id -> viewer, operator, approver or admin."""
    tenant = visible_tenant(call)
    return RolesView.model_validate({"tenant": tenant, "roles": role_store.of_tenant(tenant)})


@routes.put("/v1/tenants/<tenant>/roles", RolesView, RolesUpdate, Role.ADMIN, params=TENANT, errors=(400, 404))
def set_tenant_roles(call: Call) -> RolesView:
    """Replace the tenant's Slack roles (the whole map).

    Each user's mirror follows in the same transaction."""
    tenant = visible_tenant(call)
    roles: dict[str, str] = dict(core.body(call, RolesUpdate).roles)
    entry = core.audit(call, "tenant.roles.set", f"tenant.{tenant}", tenant, {"roles": roles}, core.now())
    previous = role_store.replace(tenant, roles, entry)
    changed = sorted(u for u in set(previous) | set(roles) if previous.get(u) != roles.get(u))
    log.info("roles of %s replaced; changed: %s", tenant, ", ".join(changed) or "none")
    return RolesView.model_validate({"tenant": tenant, "roles": roles})


_AUDIT_PARAMS = (
    TENANT_QUERY,
    Param("actor", "query", "api:<key name>, slack:<user id>, agent:<id>, system.", {"type": "string"}),
    Param("action", "query", "e.g. agent.hold.pause, approval.approve, slack.pause.", {"type": "string"}),
    Param("target", "query", "An agent id, tenant.<tenant>, a silence id...", {"type": "string"}),
    Param("outcome", "query", "applied, refused, requested, usage, unchanged...", {"type": "string"}),
    Param("before", "query", "Only entries before this time (ISO 8601).", {"type": "string", "format": "date-time"}),
    PAGE_PARAMS[1],
    LIMIT_QUERY,
)


@routes.get("/v1/audit", AuditPage, params=_AUDIT_PARAMS, errors=(400,), tags=("audit",))
def list_audit(call: Call) -> AuditPage:
    """The audit log (append-only), newest first: every change, command, decision and refusal.

    By tenant and at most one of actor, action, target, outcome."""
    tenant = query_tenant(call) or core.principal(call).tenant
    filters = {name: value for name in audit_store.FILTERS if (value := core.query(call.request, name)) is not None}
    if len(filters) > 1:
        raise ApiError(400, f"filter by at most one of {', '.join(audit_store.FILTERS)} (besides tenant)")
    before = core.query_time(call.request, "before")
    limit = core.limit(call.request)
    after = core.page_token(call.request, core.is_document_id)
    rows = audit_store.list_entries(tenant=tenant, filters=filters, before=before, limit=limit, after=after)
    next_token = core.encode_page_token(rows[-1]["id"]) if len(rows) == limit else None
    return AuditPage.model_validate({"items": rows, "next_page_token": next_token})
