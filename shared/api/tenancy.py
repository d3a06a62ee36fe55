"""Which agents and tenants a caller of the REST API may see, as the resource modules of shared/api/
ask it: the agent or tenant a path names (404 when the key may not see it, so existence is not leaked),
the tenant a query names, the agent a body names; and the audited write of a tenant's settings."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fleet_agent.contracts import AGENT_ID_PATTERN

from shared.api import core
from shared.api.core import ApiError, Call
from shared.domain.agent_record import AgentRecord, Plan
from shared.domain.audit import AuditEntry
from shared.platform import metering
from shared.services import agent_controls
from shared.store import agents as agent_store
from shared.store import audit as audit_store
from shared.store import config, db
from shared.store.api_keys import Principal


def agent_not_found(agent_id: str) -> ApiError:
    return ApiError(404, f"agent {agent_id} not found")


def visible_record(call: Call) -> AgentRecord:
    """The agent of the path, or 404, also when it belongs to another tenant (existence is not leaked)."""
    principal = core.principal(call)
    agent_id = call.args["agent_id"]
    if not core.is_agent_id(agent_id):
        raise agent_not_found(agent_id)
    record = agent_store.get(agent_id)
    if record is None or not principal.can_see(record.tenant):
        raise agent_not_found(agent_id)
    return record


def agent_of_body(
    principal: Principal, agent_id: str | None, tenant: str | None
) -> tuple[AgentRecord | None, str | None]:
    """A body naming an agent and/or a tenant: the agent (404 if the key cannot see it) and its tenant,
    which must agree with the tenant named (400 otherwise)."""
    if agent_id is None:
        return None, tenant
    record = agent_store.get(agent_id)
    if record is None or not principal.can_see(record.tenant):
        raise agent_not_found(agent_id)
    if tenant is not None and tenant != record.tenant:
        raise ApiError(400, f"agent {agent_id} belongs to tenant {record.tenant}, not {tenant}")
    return record, record.tenant


def visible_tenant(call: Call) -> str:
    """The tenant of the path, or 404 when the key is scoped to another one (or the name is impossible)."""
    tenant = call.args["tenant"]
    if not core.is_agent_id(tenant) or not core.principal(call).can_see(tenant):
        raise ApiError(404, f"tenant {tenant} not found")
    return tenant


def query_tenant(call: Call) -> str | None:
    """``?tenant=``: a tenant id the key may see (400 when impossible, 403 when another tenant's key)."""
    tenant = core.query(call.request, "tenant")
    if tenant is not None and not core.is_agent_id(tenant):
        raise ApiError(400, f"tenant must match {AGENT_ID_PATTERN}")
    principal = core.principal(call)
    if principal.tenant is not None and tenant is not None and tenant != principal.tenant:
        raise ApiError(403, f"this API key only sees tenant {principal.tenant}")
    return tenant


def write_tenant(tenant: str, fields: dict[str, Any], entry: AuditEntry) -> None:
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


def update_agent(call: Call, step: Callable[[AgentRecord], Plan]) -> tuple[Plan, AgentRecord]:
    """Apply ``step`` to the visible agent of the path (404 otherwise) with the store's conditional write."""
    return agent_controls.update_agent(visible_record(call).agent_id, core.operator(call), step)
