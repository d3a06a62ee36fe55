"""The REST API's remediation commands of one agent: the tracked commands with their state, and an operator
sending one (restart, stop, drain, throttle, clear_cache, resume_work) through
shared/services/agent_actions.py. ``stop`` needs the approver role; every refusal is audited."""

from __future__ import annotations

from datetime import datetime

from fleet_agent.contracts import CommandType

from shared.api import core
from shared.api.bodies.agent_commands import CommandList, CommandRequest, RemediationCommand, command_views
from shared.api.core import AGENT, ApiError, Call, Routes
from shared.api.tenancy import visible_record
from shared.domain.api_keys import Role
from shared.domain.audit import AuditEntry
from shared.services import agent_actions, agent_controls
from shared.store import audit as audit_store

routes = Routes("agents")

#: Commands only an approver may send (destructive: the agent does not come back by itself).
APPROVER_ONLY = frozenset({RemediationCommand.STOP})


@routes.get("/v1/agents/<agent_id>/commands", CommandList, params=AGENT, errors=(404,))
def list_agent_commands(call: Call) -> CommandList:
    """The remediation commands sent to an agent (the latest few kept), newest first, each with its state:
    sent, acknowledged, done, failed, or unacknowledged (re-sent once, then escalated as an episode)."""
    record = visible_record(call)
    return CommandList(agent_id=record.agent_id, tenant=record.tenant, commands=command_views(record.commands))


@routes.post(
    "/v1/agents/<agent_id>/commands",
    CommandList,
    CommandRequest,
    Role.OPERATOR,
    params=AGENT,
    errors=(400, 403, 404, 409),
)
def send_agent_command(call: Call) -> CommandList:
    """Send a remediation command to an agent whose SDK supports them (409 otherwise): it is tracked until
    the agent acknowledges it, re-sent once if not acknowledged by its deadline, then escalated. ``stop``
    needs the approver role. A retry of the same request (``X-Request-Id``) re-sends the same command id."""
    body = core.body(call, CommandRequest)
    record = visible_record(call)
    now = core.now()
    actor = core.operator(call)
    if body.command in APPROVER_ONLY and not core.principal(call).role.allows(Role.APPROVER):
        reason = f"{body.command.value} needs the approver role"
        _refused(actor, body, record.agent_id, record.tenant, now, reason)
        raise ApiError(403, reason)
    try:
        written, _command = agent_actions.act(
            record.agent_id,
            CommandType(body.command.value),
            actor,
            body.reason,
            now,
            deadline_s=body.deadline_s,
            calls_per_minute=body.calls_per_minute,
            until=body.until,
        )
    except agent_controls.Refused as refused:
        if refused.status != 404:
            _refused(actor, body, record.agent_id, record.tenant, now, refused.reason)
        raise
    return CommandList(agent_id=written.agent_id, tenant=written.tenant, commands=command_views(written.commands))


def _refused(
    actor: agent_controls.Actor, body: CommandRequest, agent_id: str, tenant: str, at: datetime, reason: str
) -> None:
    action = f"agent.command.{body.command.value}"
    entry = agent_controls.audit_entry(actor, action, agent_id, tenant, {"reason": reason}, at)
    audit_store.append(AuditEntry(**{**entry.__dict__, "outcome": "refused", "id": f"{entry.id}.refused"}))
