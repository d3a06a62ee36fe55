"""The REST API's remediation commands of one agent: the tracked commands with their state, and an operator
sending one (restart, stop, drain, throttle, clear_cache, resume_work) through
shared/services/agent_actions.py. ``stop`` needs the approver role, and a ``stop`` of an agent carrying
the tenant's critical label (its remediation policy's ``critical_label``) is asked of a second approver
(202 with the approval's id); every refusal is audited."""

from __future__ import annotations

from datetime import datetime, timedelta

import flask
from fleet_agent.contracts import CommandType

from shared.api import core
from shared.api.bodies.agent_commands import CommandList, CommandRequest, RemediationCommand, command_views
from shared.api.core import AGENT, ApiError, Call, Routes
from shared.api.tenancy import visible_record
from shared.domain import approvals as approval_rules
from shared.domain.api_keys import Role
from shared.domain.approvals import Kind, Requester
from shared.domain.audit import AuditEntry
from shared.services import agent_actions, agent_controls
from shared.store import audit as audit_store
from shared.store import config as config_store

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
def send_agent_command(call: Call) -> CommandList | flask.Response:
    """Send a remediation command to an agent whose SDK supports them (409 otherwise): it is tracked until
    the agent acknowledges it, re-sent once if not acknowledged by its deadline, then escalated. ``stop``
    needs the approver role; a ``stop`` of a critical agent is asked of another approver instead (202, the
    request's ``approval_id``; sent when approved). A retry of the same request (the same trace id,
    ``X-Cloud-Trace-Context``) re-sends the same command id."""
    body = core.body(call, CommandRequest)
    record = visible_record(call)
    now = core.now()
    actor = core.operator(call)
    if body.command in APPROVER_ONLY and not core.principal(call).role.allows(Role.APPROVER):
        reason = f"{body.command.value} needs the approver role"
        _refused(actor, body, record.agent_id, record.tenant, now, reason)
        raise ApiError(403, reason)
    if body.command is RemediationCommand.STOP and config_store.remediation(record.tenant).critical(record.labels):
        return _ask_approval(call, body, record.agent_id, record.tenant, record.owner, now)
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


def _ask_approval(
    call: Call, body: CommandRequest, agent_id: str, tenant: str, owner: str | None, now: datetime
) -> flask.Response:
    """A stop of a critical agent: stored as a ``remediation`` approval request (once per request id),
    posted to the approvers; approving it sends the stop (shared/services/remediation.py ``approved``)."""
    # lazy: shared.services.approvals (with the Slack client it brings) serves only this case
    from shared.services import approvals

    principal = core.principal(call)
    actor = core.operator(call)
    policy = config_store.remediation(tenant)
    approval = approvals.new(
        approval_id=approval_rules.approval_id("remediation", agent_id, actor.request_id),
        tenant=tenant,
        kind=Kind.REMEDIATION,
        requester=Requester(kind="api", id=principal.name, owner=owner),
        summary=f"stop critical agent {agent_id} (asked by api:{principal.name})",
        now=now,
        agent_id=agent_id,
        reason=body.reason,
        expires_in=timedelta(seconds=policy.approval_expiry_s),
        payload={"action": body.command.value, "deadline_s": body.deadline_s, "origin": "operator"},
    )
    stored, _new = approvals.request(approval, now)
    reply = CommandList(agent_id=agent_id, tenant=tenant, commands=[], approval_id=stored.id)
    return flask.Response(reply.model_dump_json(), status=202, mimetype="application/json")


def _refused(
    actor: agent_controls.Actor, body: CommandRequest, agent_id: str, tenant: str, at: datetime, reason: str
) -> None:
    action = f"agent.command.{body.command.value}"
    entry = agent_controls.audit_entry(actor, action, agent_id, tenant, {"reason": reason}, at)
    audit_store.append(AuditEntry(**{**entry.__dict__, "outcome": "refused", "id": f"{entry.id}.refused"}))
