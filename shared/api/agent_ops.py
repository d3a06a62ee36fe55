"""The REST API's operator controls on one agent: quarantine, decommission and edit (owner, labels,
heartbeat interval). They go through the same operations as Slack and fleetctl
(shared/services/agent_controls.py, shared/services/decommission.py); every refusal is audited."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, TypeVar

from shared.api import core
from shared.api.agents import agent_response
from shared.api.bodies import AgentView, hold_views
from shared.api.bodies.operator import (
    AgentUpdate,
    DecommissionRequest,
    DecommissionView,
    QuarantineRequest,
    QuarantineView,
)
from shared.api.core import AGENT, Call, Routes
from shared.api.tenancy import visible_record
from shared.domain.agent_record import AgentRecord
from shared.domain.api_keys import Role
from shared.services import agent_controls, decommission
from shared.store import audit as audit_store

routes = Routes("agents")

T = TypeVar("T")


def audited(call: Call, action: str, agent_id: str, tenant: str, operation: Callable[[], T]) -> T:
    """Run ``operation``; a refusal (409, ...) is an audit entry too (``<action>``, outcome refused)."""
    try:
        return operation()
    except agent_controls.Refused as refused:
        entry = core.audit(call, action, agent_id, tenant, {"refusal": refused.reason}, core.now())
        audit_store.append(dataclasses.replace(entry, outcome="refused"))
        raise


@routes.post(
    "/v1/agents/<agent_id>/quarantine",
    QuarantineView,
    QuarantineRequest,
    Role.APPROVER,
    params=AGENT,
    errors=(400, 404, 409),
)
def quarantine_agent(call: Call) -> QuarantineView:
    """Quarantine an agent (approvers): it is told ``quarantine`` and isolated until an approver releases it.

    Quarantining a quarantined agent changes nothing and sends its command again, with the same id."""
    reason = core.body(call, QuarantineRequest).reason
    record = visible_record(call)
    held, changed = audited(
        call,
        "agent.hold.quarantine",
        record.agent_id,
        record.tenant,
        lambda: agent_controls.quarantine(record.agent_id, core.operator(call), reason, core.now()),
    )
    return QuarantineView(
        agent_id=held.agent_id,
        tenant=held.tenant,
        status=held.status,
        status_since=held.status_since,
        holds=hold_views(held.holds),
        changed=changed,
    )


@routes.post(
    "/v1/agents/<agent_id>/decommission",
    DecommissionView,
    DecommissionRequest,
    Role.APPROVER,
    params=AGENT,
    errors=(400, 404, 409),
)
def decommission_agent(call: Call) -> DecommissionView:
    """Decommission an agent (approvers): holds lifted, pending commands closed, key revoked, command
    subscription deleted; its history is kept for its retention.

    Idempotent: a retry finishes a cleanup a failed call left half done."""
    reason = core.body(call, DecommissionRequest).reason
    record = visible_record(call)
    done = audited(
        call,
        "agent.decommission",
        record.agent_id,
        record.tenant,
        lambda: decommission.decommission(record.agent_id, core.operator(call), reason, core.now()),
    )
    return DecommissionView(
        agent_id=done.record.agent_id,
        tenant=done.record.tenant,
        status=done.record.status,
        changed=done.changed,
        cleanup=done.cleanup,
    )


@routes.route(
    "PATCH", "/v1/agents/<agent_id>", AgentView, AgentUpdate, Role.OPERATOR, params=AGENT, errors=(400, 403, 404, 409)
)
def update_agent(call: Call) -> AgentView:
    """Set an agent's owner, labels (merged; null removes one) or heartbeat interval (operators).

    What is set here wins over the agent's later registrations (``api_fields`` lists them)."""
    edit = core.body(call, AgentUpdate).edit()
    record = visible_record(call)
    updated, _changed = audited(
        call,
        "agent.update",
        record.agent_id,
        record.tenant,
        lambda: _edit(call, record.agent_id, edit),
    )
    return agent_response(updated)


def _edit(call: Call, agent_id: str, edit: dict[str, Any]) -> tuple[AgentRecord, bool]:
    if agent_controls.unprotects_critical(edit.get("labels")) and not core.principal(call).role.allows(Role.APPROVER):
        raise agent_controls.Refused(
            403, f"changing or removing the label {agent_controls.CRITICAL_LABEL[0]} needs approver"
        )
    return agent_controls.edit_agent(agent_id, core.operator(call), edit, core.now())
