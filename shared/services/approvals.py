"""Approval requests end to end: stored, posted to Slack, decided once, carried out, answered.

- :func:`request` stores a request once (its id is deterministic) and posts it to the tenant's
  approvals channel; when Slack is unavailable the minute job posts it later (:func:`sweep`).
- :func:`decide` is what a click on Approve or Deny does within Slack's 3 seconds: the four-eyes and
  role checks (shared/domain/approvals.py), one conditional write with its audit entry, and a work
  item on Pub/Sub. A refusal is audited too.
- :func:`carry_out` (the ``fleet-actions`` function) applies the decision's effect once, edits the
  message, and tells the requester: an agent on ``agent-commands``, a Slack user by direct message.
  What each kind's effect is (raise the budget, release the agent, queue the job) is the worker's
  table (shared/pipeline/fleet_actions.py), so this module needs nothing of the training wing.
- :func:`sweep` (the minute job) denies expired requests and posts those Slack refused before.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from fleet_agent.contracts import ApprovalRequest, Command, CommandType

from shared.domain import approval_messages as messages
from shared.domain import approvals as domain
from shared.domain.agent_record import AgentRecord
from shared.domain.approvals import Approval, Kind, Requester, State
from shared.domain.audit import AuditEntry
from shared.platform import logs
from shared.services import agent_commands, handoff
from shared.slack import web_api
from shared.store import approvals as store
from shared.store import audit as audit_store
from shared.store import config
from shared.store import roles as role_store

log = logs.get_logger("approvals")

#: What a decided request does when carried out; returns a sentence for the message and the audit log.
Effect = Callable[[Approval, datetime], str]


def _entry(approval: Approval, action: str, actor: str, at: datetime, outcome: str, **details: Any) -> AuditEntry:
    return AuditEntry(
        id=f"{approval.id}.{action}.{outcome}",
        at=at,
        actor=actor,
        action=action,
        target=approval.agent_id or f"tenant.{approval.tenant}",
        outcome=outcome,
        tenant=approval.tenant,
        details={"approval_id": approval.id, "kind": approval.kind.value, **details},
    )


# --- requests ---------------------------------------------------------------------------------


def new(
    *,
    approval_id: str,
    tenant: str,
    kind: Kind,
    requester: Requester,
    summary: str,
    now: datetime,
    agent_id: str | None = None,
    reason: str = "",
    estimated_cost_usd: Decimal | None = None,
    expires_in: timedelta | None = None,
    payload: dict[str, Any] | None = None,
) -> Approval:
    """A pending request; its expiry defaults to the tenant's ``approval_expiry_s``."""
    expiry = expires_in or timedelta(seconds=config.alerting(tenant).approval_expiry_s)
    return Approval(
        id=approval_id,
        tenant=tenant,
        kind=kind,
        agent_id=agent_id,
        requester=requester,
        summary=summary,
        reason=reason,
        estimated_cost_usd=estimated_cost_usd,
        payload=payload or {},
        created_at=now,
        expires_at=now + min(expiry, domain.MAX_EXPIRY),
        post_due_at=now + domain.GRACE,
    )


def from_agent(event: ApprovalRequest, agent: AgentRecord, now: datetime) -> Approval:
    """An agent's request (``agent-approvals``): its owner counts as the requester for four eyes."""
    payload: dict[str, Any] = {"request_id": event.request_id, "details": dict(event.details)}
    if event.kind.value == Kind.BUDGET_RAISE:
        payload.update({"period": event.budget_period, "usd": format(event.budget_usd, "f")})
    summary = event.operation
    if event.kind.value == Kind.BUDGET_RAISE:
        summary = f"{event.budget_period} budget to ${event.budget_usd} ({event.operation})"
    return new(
        approval_id=domain.approval_id("agent", agent.agent_id, event.request_id),
        tenant=agent.tenant,
        kind=Kind(event.kind.value),
        requester=Requester(kind="agent", id=agent.agent_id, owner=agent.owner),
        summary=summary,
        now=now,
        agent_id=agent.agent_id,
        reason=event.reason,
        estimated_cost_usd=event.estimated_cost_usd,
        expires_in=timedelta(seconds=event.expires_in_s),
        payload=payload,
    )


def request(approval: Approval, now: datetime, *, post_now: bool = True) -> tuple[Approval, bool]:
    """Store the request (once) and post it; (the stored request, whether it is new). A request that
    exists already is returned as stored; an agent asking again for a decided one is answered again.
    ``post_now=False`` only stores it: the minute job posts it once its ``post_due_at`` has come (a
    function without the Slack token, the heartbeat's, asks this way)."""
    entry = _entry(
        approval, "approval.request", _actor_of(approval.requester), now, "requested", summary=approval.summary
    )
    if not store.create(approval, entry):
        existing = store.get(approval.id)
        if existing is None:  # created and expired away between the two calls: nothing to answer
            return approval, False
        if existing.state is not State.PENDING and existing.applied is not None:
            _answer_agent(existing)
        return existing, False
    return (post(approval) if post_now else approval), True


def _actor_of(requester: Requester) -> str:
    return {"slack": "slack:", "agent": "agent:", "api": "api:"}[requester.kind] + requester.id


def post(approval: Approval, now: datetime | None = None) -> Approval:
    """Post the request with its buttons. Left for the minute job (which tries each minute) when Slack
    is unavailable; tried again in 15 minutes, with the error on the request, when Slack refused."""
    channel = config.alerting(approval.tenant).approvals_channel
    text, blocks = messages.message(approval)
    try:
        posted = web_api.post(channel, text, blocks)
    except web_api.SlackUnavailable as exc:
        logs.log(log, f"approval {approval.id} not posted yet: {exc}", approval_id=approval.id, channel=channel)
        return approval
    except web_api.SlackRefused as exc:
        # Retrying will not help (no such channel, the bot not in it): say so on the request, stop trying.
        logs.log(log, f"approval {approval.id} refused by Slack: {exc.error}", approval_id=approval.id, channel=channel)
        retry_at = (now or datetime.now(approval.created_at.tzinfo)) + domain.REFUSED_RETRY
        store.set_fields(approval.id, {"post_due_at": retry_at, "post_error": f"{exc.error} ({channel})"})
        return approval
    message = {"channel": posted.channel, "ts": posted.ts}
    store.set_fields(approval.id, {"message": message, "post_due_at": None, "post_error": None})
    return approval.model_copy(update={"message": message})


# --- decisions --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """What the clicker is told, and the request as decided (None when nothing changed)."""

    text: str
    approval: Approval | None = None
    code: str = "decided"


def decide(
    approval_id: str,
    *,
    user_id: str,
    user_names: tuple[str, ...] = (),
    approve: bool,
    now: datetime,
    note: str = "",
) -> Outcome:
    """A click on Approve or Deny. Decided once (a conditional write); every refusal is audited."""
    for _attempt in range(3):
        found = store.read(approval_id)
        if found is None:
            audit_store.append(
                AuditEntry(
                    id=f"{approval_id}.click.{user_id}.{now.timestamp():.6f}"[:1400],
                    at=now,
                    actor=f"slack:{user_id}",
                    action="approval.approve" if approve else "approval.deny",
                    target=approval_id[:300],
                    outcome="refused",
                    details={"reason": "no such approval request", "code": "not_found"},
                )
            )
            return Outcome(f"Nothing changed: approval request {approval_id} was not found.", code="not_found")
        approval, update_time = found
        action = "approval.approve" if approve else "approval.deny"
        names = user_names
        if approve and domain.owner_is_email(approval.requester):
            try:
                email = web_api.user_email(user_id)
            except (web_api.SlackUnavailable, web_api.SlackRefused) as exc:
                email, why = None, str(exc)
            else:
                why = "Slack did not say your e-mail address"
            if not email:  # fail closed: the owner must never approve their own agent's request
                refusal = f"could not confirm you are not the agent's owner ({why}); try again"
                _refused(approval, action, user_id, now, refusal, "four_eyes_unverified")
                return Outcome(f"Nothing changed: {refusal}.", code="four_eyes_unverified")
            names = (*names, email)
        role = role_store.role_in(user_id, approval.tenant)
        decision = domain.decide(
            approval, actor=user_id, actor_names=names, role=role, approve=approve, now=now, note=note
        )
        if decision.approval is None:
            refusal = decision.refusal or "refused"
            _refused(approval, action, user_id, now, refusal, decision.code)
            return Outcome(f"Nothing changed: {refusal}.", code=decision.code)
        decided = decision.approval
        entry = _entry(decided, action, f"slack:{user_id}", now, decided.state.value, note=note)
        if store.replace(decided, update_time, (entry,)):
            _hand_over(approval_id)  # if this publish fails, the minute job hands it over (followup_due_at)
            verb = "Approved" if approve else "Denied"
            return Outcome(f"{verb}: {messages.title(decided)}.", decided)
    return Outcome("this request is being decided by someone else right now; look again", code="conflict")


def _refused(approval: Approval, action: str, user_id: str, now: datetime, refusal: str, code: str) -> None:
    entry = _entry(approval, action, f"slack:{user_id}", now, "refused", reason=refusal, code=code)
    audit_store.append(dataclasses.replace(entry, id=f"{entry.id}.{user_id}.{now.timestamp():.6f}"))


# --- carrying decisions out -------------------------------------------------------------------


def carry_out(approval_id: str, now: datetime, effect: Effect) -> Approval | None:
    """Apply a decided request once (``effect``: what it does as decided, chosen by the worker that
    carries it out, shared/pipeline/fleet_actions.py), then edit its message and tell the requester
    (both repeatable).

    Raises on a transient failure (Slack unavailable included) so Pub/Sub redelivers: the effect is
    recorded before anything is sent, so a redelivery only repeats the sending.
    """
    for _attempt in range(3):
        found = store.read(approval_id)
        if found is None or found[0].state is State.PENDING:
            return None
        approval, update_time = found
        if approval.applied is not None:
            break
        outcome = effect(approval, now)
        applied = approval.model_copy(update={"applied": outcome})
        entry = _entry(applied, "approval.apply", "system", now, "applied", result=outcome)
        if store.replace(applied, update_time, (entry,)):
            approval = applied
            break
    else:
        raise RuntimeError(f"approval {approval_id} kept changing while being carried out")
    _answer_agent(approval)
    _answer_slack_user(approval)
    _edit_message(approval)
    store.set_fields(approval_id, {"done_at": now, "followup_due_at": None})
    return approval


def _answer_agent(approval: Approval) -> None:
    if approval.requester.kind != "agent" or not approval.agent_id:
        return
    command = Command(
        agent_id=approval.agent_id,
        command=CommandType.APPROVAL_DECIDED,
        reason=_reason(approval),
        issued_at=approval.decided_at or approval.created_at,
        command_id=f"{approval.id}.{approval.state.value}",
        request_id=approval.payload.get("request_id"),
        approval_id=approval.id,
        approved=approval.state is State.APPROVED,
    )
    agent_commands.publish([command])


def _reason(approval: Approval) -> str:
    """The command's reason: ``expired`` for a lapsed request (the SDK reads it so), else who decided."""
    if approval.state is State.EXPIRED:
        return "expired"
    said = f"{approval.state.value} by slack:{approval.decided_by}"
    return (f"{said}: {approval.note}" if approval.note else said)[:500]


def _answer_slack_user(approval: Approval) -> None:
    """A direct message to a Slack requester, once (``notified`` is set after it went out)."""
    if approval.requester.kind != "slack" or approval.payload.get("notified"):
        return
    try:
        web_api.post(approval.requester.id, messages.to_requester(approval))
    except web_api.SlackRefused as exc:
        logs.log(log, f"requester of {approval.id} not told: {exc.error}", approval_id=approval.id)
        return
    store.set_fields(approval.id, {"payload.notified": True})


def _edit_message(approval: Approval) -> None:
    text, blocks = messages.message(approval)
    try:
        if approval.message and approval.message.get("ts"):
            web_api.update(approval.message["channel"], approval.message["ts"], text, blocks)
        else:  # never posted (Slack was down at the time): the decision is the first message
            post(approval)
    except web_api.SlackRefused as exc:
        logs.log(log, f"message of {approval.id} not edited: {exc.error}", approval_id=approval.id)


# --- the minute job ---------------------------------------------------------------------------


def sweep(now: datetime) -> dict[str, int]:
    """Deny expired requests, post those whose own post failed, and hand back decisions whose
    carrying out never finished (a lost work item): each is then carried out by ``fleet-actions``."""
    due = store.due(now)
    expired = posted = resumed = 0
    for approval, update_time in due.expired:
        lapsed = domain.expire(approval, now)
        if lapsed is None:
            continue
        entry = _entry(lapsed, "approval.expire", "system", now, "expired")
        if store.replace(lapsed, update_time, (entry,)):
            expired += 1
            _hand_over(lapsed.id)
    for approval in due.unposted:
        posted += post(approval, now).message is not None
    for approval in due.unfinished:
        resumed += _hand_over(approval.id)
    return {"approvals_expired": expired, "approvals_posted": posted, "approvals_resumed": resumed}


def withdraw(approval_id: str, now: datetime, why: str) -> bool:
    """Close a pending request whose subject went away (a training job cancelled while it waited):
    recorded as expired with ``why``, its message edited by ``fleet-actions``; nothing is carried out.
    False when it was decided already (or is unknown)."""
    for _attempt in range(3):
        found = store.read(approval_id)
        if found is None or found[0].state is not State.PENDING:
            return False
        approval, update_time = found
        closed = approval.model_copy(
            update={
                "state": State.EXPIRED,
                "decided_at": now,
                "note": why[:300],
                "applied": f"Withdrawn: {why}"[:500],
                "post_due_at": None,
            }
        )
        if store.replace(closed, update_time, (_entry(closed, "approval.withdraw", "system", now, "withdrawn"),)):
            _hand_over(approval_id)
            return True
    return False


def _hand_over(approval_id: str) -> bool:
    """A work item for ``fleet-actions``; a failed publish is left to the next minute (followup_due_at)."""
    return handoff.hand_over(handoff.APPROVAL_DECIDED, approval_id=approval_id)
