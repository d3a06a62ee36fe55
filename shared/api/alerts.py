"""The REST API's alert routes: alert episodes, silences and maintenance windows, releasing a frozen or
quarantined agent. Episodes are kept by shared/services/notifier.py and shared/store/episodes.py; the
changes go through shared/services/agent_controls.py."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

from fleet_agent.contracts import AGENT_ID_PATTERN
from pydantic import ValidationError

from shared.api import core
from shared.api.bodies import (
    AcknowledgeRequest,
    AlertList,
    AlertView,
    ReleaseRequest,
    ReleaseView,
    SilenceList,
    SilenceRequest,
    SilenceView,
)
from shared.api.core import AGENT, LIMIT_QUERY, TENANT_QUERY, ApiError, Call, Param, Routes
from shared.api.tenancy import agent_of_body, query_tenant, visible_record
from shared.domain import episodes as episode_rules
from shared.domain import learned
from shared.domain.alerts import Severity
from shared.domain.api_keys import Role
from shared.domain.silences import Silence
from shared.services import agent_controls
from shared.store import audit as audit_store
from shared.store import db
from shared.store import episodes as episode_store
from shared.store import silences as silence_store

_EPISODE_STATES = ("open", "resolved")
_SEVERITIES = tuple(s.value for s in Severity)

routes = Routes("alerts")

_ALERT_PARAMS = (
    TENANT_QUERY,
    Param("agent_id", "query", "Only this agent's.", {"type": "string", "pattern": AGENT_ID_PATTERN}),
    Param("state", "query", "open or resolved.", {"type": "string", "enum": list(_EPISODE_STATES)}),
    Param("rule", "query", "Only this rule's (liveness, error_rate, ...).", {"type": "string"}),
    Param("severity", "query", "Only this severity.", {"type": "string", "enum": list(_SEVERITIES)}),
    LIMIT_QUERY,
)


@routes.get("/v1/alerts", AlertList, params=_ALERT_PARAMS, errors=(400,))
def list_alerts(call: Call) -> AlertList:
    """Alert episodes (liveness, health rules, root alerts, budgets, breaker, runaway loops, cost spikes,
    unpriced models), open and recent, newest first.

    By tenant, agent, state, rule or severity."""
    tenant = query_tenant(call) or core.principal(call).tenant
    agent_id = core.query(call.request, "agent_id")
    if agent_id is not None and not core.is_agent_id(agent_id):
        raise ApiError(400, f"agent_id must match {AGENT_ID_PATTERN}")
    state, severity, rule = (core.query(call.request, name) for name in ("state", "severity", "rule"))
    if state is not None and state not in _EPISODE_STATES:
        raise ApiError(400, f"state must be one of {', '.join(_EPISODE_STATES)}")
    if severity is not None and severity not in _SEVERITIES:
        raise ApiError(400, f"severity must be one of {', '.join(_SEVERITIES)}")
    rows = episode_store.list_episodes(
        state=state, tenant=tenant, agent_id=agent_id, rule=rule, severity=severity, limit=core.limit(call.request)
    )
    return AlertList(items=[_alert_view(row) for row in rows])


def _alert_view(row: dict[str, Any]) -> AlertView:
    window = (row.get("details") or {}).get("window")
    item = {**row, "kind": row.get("rule"), "message": row.get("summary") or "", "raised_at": row.get("opened_at")}
    return AlertView.model_validate({**item, "window": window})


_EPISODE_PARAM = Param("episode_id", "path", "The alert episode's id.", {"type": "string"}, required=True)


def _visible_episode(call: Call) -> dict[str, Any]:
    """The path's episode, if the key may see its tenant; 404 otherwise (another tenant's is not found)."""
    episode_id = call.args["episode_id"]
    valid = episode_rules.EPISODE_ID.match(episode_id) and core.is_document_id(episode_id)  # "..", "__x__": no document
    found = episode_store.get(episode_id) if valid else None
    if found is None or not core.principal(call).can_see(str(found.get("tenant") or "")):
        raise ApiError(404, f"alert episode {episode_id} not found")
    return found


@routes.get("/v1/alerts/<episode_id>", AlertView, params=(_EPISODE_PARAM,), errors=(404,))
def get_alert(call: Call) -> AlertView:
    """One alert episode by id, open or resolved; 404 when it does not exist or is another tenant's."""
    return _alert_view(_visible_episode(call))


@routes.post(
    "/v1/alerts/<episode_id>/acknowledge",
    AlertView,
    AcknowledgeRequest,
    Role.OPERATOR,
    params=(_EPISODE_PARAM,),
    errors=(400, 404, 409),
)
def acknowledge_alert(call: Call) -> AlertView:
    """Acknowledge an open alert episode (as Slack's Acknowledge button does): reminders stop until it
    escalates. 409 when it is resolved (checked in the acknowledging transaction); acknowledging it again
    changes nothing (acknowledged_by stays the first)."""
    core.body(call, AcknowledgeRequest)
    found = _visible_episode(call)
    episode_id = call.args["episode_id"]
    now = core.now()
    try:
        earlier = episode_store.acknowledge(episode_id, core.actor(call), now, require_open=True)
    except episode_store.NotOpen as exc:
        raise ApiError(409, str(exc)) from None
    if earlier is None:
        details = learned.ack_details(found)
        audit_store.append(core.audit(call, "alert.acknowledge", episode_id, found.get("tenant"), details, now))
        found = {**found, "state": "open", "acknowledged_by": core.actor(call), "acknowledged_at": now}
    else:
        found = {**found, "state": "open", "acknowledged_by": earlier}
    return _alert_view(found)


# --- silences and maintenance windows -----------------------------------------------------------


def _silence_view(silence: Silence, now: datetime) -> SilenceView:
    return SilenceView.model_validate({**silence.model_dump(), "active": silence.active(now)})


def _repeated(call: Call, silence: Silence, tenant: str | None, now: datetime) -> SilenceView:
    """A repeat of a create with a client-chosen id: the silence made the first time, if it is the same one
    (the same scope, visible to the key); 409 otherwise."""
    body = core.body(call, SilenceRequest)
    principal = core.principal(call)
    visible = principal.tenant is None or silence.tenant == principal.tenant
    same = (silence.agent_id, silence.tenant, silence.rule, silence.maintenance) == (
        body.agent_id,
        tenant,
        body.rule,
        body.maintenance,
    )
    if not (visible and same):
        raise ApiError(409, f"silence id {silence.id} is taken by another silence")
    if not silence.active(now) and silence.starts_at <= now:
        raise ApiError(409, f"silence {silence.id} has ended; create a new one (reload the page to snooze again)")
    return _silence_view(silence, now)


@routes.post("/v1/silences", SilenceView, SilenceRequest, Role.OPERATOR, errors=(400, 404, 409))
def create_silence(call: Call) -> SilenceView:
    """Silence alerts by agent, tenant or rule, or start a maintenance window; always with an expiry.
    Resolutions are still sent; a heartbeat never ends a maintenance window. With a client-chosen ``id``
    a repeat returns the silence already created (the console's Snooze: a double submit is one silence)."""
    body = core.body(call, SilenceRequest)
    principal = core.principal(call)
    now = core.now()
    _record, tenant = agent_of_body(principal, body.agent_id, body.tenant)
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
    earlier = silence_store.get(body.id) if body.id else None
    if earlier is not None:
        return _repeated(call, earlier, tenant, now)
    try:
        silence = Silence(
            id=body.id or f"sil-{uuid.uuid4().hex[:16]}",
            agent_id=body.agent_id,
            tenant=tenant,
            rule=body.rule,
            maintenance=body.maintenance,
            reason=body.reason,
            created_by=core.actor(call),
            created_at=now,
            starts_at=starts_at,
            expires_at=expires_at,
        )
    except ValidationError as exc:
        raise ApiError(400, "; ".join(e["msg"] for e in exc.errors(include_url=False))) from None
    # writes=0: the silence store counts its own write
    created = db.unless_changed(lambda: agent_controls.create_silence(silence, core.operator(call), now), writes=0)
    if created is None:  # a concurrent repeat with the same id created it first
        raced = silence_store.get(silence.id)
        if raced is None:
            raise ApiError(409, f"silence {silence.id} could not be created; retry")
        return _repeated(call, raced, tenant, now)
    return _silence_view(created, now)


@routes.get("/v1/silences", SilenceList)
def list_silences(call: Call) -> SilenceList:
    """Silences and maintenance windows not yet expired, soonest expiry first."""
    principal = core.principal(call)
    now = core.now()
    found = [s for s in silence_store.active(now) if principal.tenant is None or s.tenant == principal.tenant]
    found.sort(key=lambda s: s.expires_at)
    return SilenceList(items=[_silence_view(s, now) for s in found])


_SILENCE_PARAM = Param("silence_id", "path", "The silence's id.", {"type": "string"}, required=True)


@routes.delete("/v1/silences/<silence_id>", SilenceView, Role.OPERATOR, params=(_SILENCE_PARAM,), errors=(404,))
def end_silence(call: Call) -> SilenceView:
    """End a silence or maintenance window now (it stays on record).

    The only way, besides its expiry, that one ends."""
    principal = core.principal(call)
    silence_id = call.args["silence_id"]
    found = silence_store.get(silence_id) if core.is_document_id(silence_id) else None
    if found is None or (principal.tenant is not None and found.tenant != principal.tenant):
        raise ApiError(404, f"silence {silence_id} not found")
    now = core.now()
    if found.ended_at is None:
        silence_store.end(silence_id, at=now, by=core.actor(call))
        audit_store.append(core.audit(call, "silence.end", silence_id, found.tenant, {}, now))
        found = found.model_copy(update={"ended_at": now, "ended_by": core.actor(call)})
    return _silence_view(found, now)


# --- release ------------------------------------------------------------------------------------


@routes.post(
    "/v1/agents/<agent_id>/release", ReleaseView, ReleaseRequest, Role.APPROVER, params=AGENT, errors=(400, 404, 409)
)
def release_agent(call: Call) -> ReleaseView:
    """Release a frozen or quarantined agent (approvers): it becomes active and is told so; 409 when it is neither.

    The ladder counts from now."""
    reason = core.body(call, ReleaseRequest).reason
    done = agent_controls.release_agent(visible_record(call).agent_id, core.operator(call), reason, core.now())
    record = done.record
    return ReleaseView(
        agent_id=record.agent_id,
        tenant=record.tenant,
        status=record.status.value,
        liveness=str(record.liveness),
        released=done.released,
        resolved=done.resolved,
    )
