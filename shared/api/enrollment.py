"""The REST API's agent identity routes: a tenant's enrollment tokens (create, list, read, revoke) and the
revocation of an agent's key. The work is shared.services.enrollment's and agent_controls' (also behind
``fleetctl`` and ``/fleet enroll``); a token's text is in the creation's answer only, never in a log.

Who may: a viewer of the tenant lists and reads; an approver (or admin) creates and revokes. The router
audits a key whose role is too low; a key scoped to another tenant gets a 404 here, audited too.
"""

from __future__ import annotations

from datetime import timedelta

from shared.api import core
from shared.api.bodies import (
    EnrollmentTokenCreate,
    EnrollmentTokenCreated,
    EnrollmentTokenList,
    EnrollmentTokenView,
    KeyRevokeRequest,
    KeyRevokeView,
    created_view,
    token_view,
)
from shared.api.bodies.enrollment import identity_view
from shared.api.core import AGENT, TENANT_PARAM, ApiError, Call, Param, Routes
from shared.api.tenancy import visible_record
from shared.domain.api_keys import Role
from shared.domain.audit import AuditEntry
from shared.services import agent_controls, enrollment
from shared.store import audit as audit_store

routes = Routes("identity")

_TOKEN_ID = Param(
    "token_id", "path", "The token's id (16 hex digits).", {"type": "string", "pattern": "^[a-f0-9]{16}$"}, True
)
TOKEN = (TENANT_PARAM, _TOKEN_ID)


def _tenant(call: Call) -> str:
    """The tenant of the path, or 404 (audited: a key scoped to another tenant tried it)."""
    tenant = call.args["tenant"]
    caller = core.principal(call)
    if core.is_agent_id(tenant) and caller.can_see(tenant):
        return tenant
    if call.request.method != "GET":
        audit_store.append(
            AuditEntry(
                id=f"api.{call.request_id}.enrollment_token.refused",
                at=core.now(),
                actor=core.actor(call),
                action="enrollment_token.refused",
                target=call.request.path[:300],
                outcome="refused",
                tenant=caller.tenant,
                details={"reason": "the key is scoped to another tenant", "asked_tenant": tenant[:100]},
            )
        )
    raise ApiError(404, f"tenant {tenant[:100]} not found")


@routes.post(
    "/v1/tenants/<tenant>/enrollment-tokens",
    EnrollmentTokenCreated,
    EnrollmentTokenCreate,
    Role.APPROVER,
    params=(TENANT_PARAM,),
    errors=(400, 404),
    status=201,
)
def create_enrollment_token(call: Call) -> EnrollmentTokenCreated:
    """Create an enrollment token (approvers): its text is in this answer only, never shown again.

    The agent's first registration carries it with its new public key; the token's scope (an agent id,
    an id prefix, or any agent of the tenant), uses and expiry (at most 30 days) bound what it enrolls."""
    tenant = _tenant(call)
    body = core.body(call, EnrollmentTokenCreate)
    at = core.now()
    made = enrollment.create(
        tenant,
        core.operator(call),
        at,
        label=body.label,
        agent_id=body.agent_id,
        agent_prefix=body.agent_prefix,
        max_uses=body.max_uses,
        ttl=timedelta(seconds=body.expires_in_s),
        principal=body.principal,
    )
    return created_view(made.token, made.text, made.fleet_public_key, made.subscription, at)


@routes.get("/v1/tenants/<tenant>/enrollment-tokens", EnrollmentTokenList, params=(TENANT_PARAM,), errors=(404,))
def list_enrollment_tokens(call: Call) -> EnrollmentTokenList:
    """A tenant's enrollment tokens, newest first (at most 200), with their uses and state; never their text."""
    tenant = _tenant(call)
    at = core.now()
    return EnrollmentTokenList(items=[token_view(t, at) for t in enrollment.listing(tenant)])


@routes.get("/v1/tenants/<tenant>/enrollment-tokens/<token_id>", EnrollmentTokenView, params=TOKEN, errors=(404,))
def get_enrollment_token(call: Call) -> EnrollmentTokenView:
    """One enrollment token of a tenant."""
    return token_view(enrollment.get(_tenant(call), call.args["token_id"]), core.now())


@routes.post(
    "/v1/tenants/<tenant>/enrollment-tokens/<token_id>/revoke",
    EnrollmentTokenView,
    KeyRevokeRequest,
    Role.APPROVER,
    params=TOKEN,
    errors=(400, 404),
)
def revoke_enrollment_token(call: Call) -> EnrollmentTokenView:
    """Revoke an enrollment token (approvers): it enrolls nothing more; agents it enrolled keep their keys.

    Revoking it again changes nothing."""
    tenant = _tenant(call)
    core.body(call, KeyRevokeRequest)
    at = core.now()
    return token_view(enrollment.revoke(tenant, call.args["token_id"], core.operator(call), at), at)


@routes.post(
    "/v1/agents/<agent_id>/keys/revoke", KeyRevokeView, KeyRevokeRequest, Role.APPROVER, params=AGENT, errors=(400, 404)
)
def revoke_agent_key(call: Call) -> KeyRevokeView:
    """Revoke an agent's key (approvers): its signed events are refused until it enrolls again with a new token.

    Revoking again changes nothing."""
    reason = core.body(call, KeyRevokeRequest).reason or ""
    agent_id = visible_record(call).agent_id
    record, changed = agent_controls.revoke_key(agent_id, core.operator(call), core.now(), reason)
    return KeyRevokeView(
        agent_id=record.agent_id, tenant=record.tenant, revoked_now=changed, identity=identity_view(record.identity)
    )
