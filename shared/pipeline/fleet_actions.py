"""The ``fleet-actions`` function: work the Slack app handed to Pub/Sub (shared/services/handoff.py).

Acknowledged when done or when the message can never be done (unknown kind, malformed: logged, not
retried forever); raises on a transient failure (Firestore, Slack unavailable) so Pub/Sub redelivers.
Each kind re-reads its state, so a redelivery finds finished work finished.

It also holds what a decided approval request does (:data:`EFFECTS`: raise the budget, release the
agent, queue the training job), the table shared/services/approvals.py's ``carry_out`` is given: the
worker that carries the effects out is the one module that needs both approvals and training.
"""

from __future__ import annotations

import json
import logging
import re
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from fleet_agent.contracts import JOB_ID_PATTERN, BudgetSpec, Command, CommandType
from pydantic import ValidationError

from shared.domain import budgets
from shared.domain.approvals import Approval, Kind, State
from shared.domain.rejections import Code, Rejected
from shared.pipeline import handlers
from shared.pipeline.decoding import PushedMessage
from shared.platform import logs
from shared.services import agent_commands, agent_controls, approvals, bulk, handoff, notifier, remediation
from shared.store import agents as agent_store
from shared.training import launch, submit

log = logs.get_logger("actions")

#: Outcomes that are the message's fault, and the reason recorded for them.
REJECTED = {
    "malformed": "a fleet-actions message must be a JSON object with its kind and ids",
    "unknown_kind": (
        f"unknown kind; this version handles {handoff.APPROVAL_DECIDED}, {handoff.JOB_LAUNCH} and {handoff.ALERTS_NOW}"
    ),
}


def handle(message: PushedMessage) -> str:
    with logs.invocation(log, "action failed; Pub/Sub will redeliver", message_id=message.message_id) as entry:
        outcome = _run(message, entry.fields)
        level = logging.INFO if outcome in ("done", "nothing_to_do") else logging.WARNING
        if outcome in REJECTED:
            # Never retried (it cannot succeed), but recorded with its payload, like agents' bad events.
            handlers.record_rejection(Rejected(Code.BAD_ENVELOPE, REJECTED[outcome]), message, "action")
            entry.fields["code"] = Code.BAD_ENVELOPE.value
        entry.outcome(f"action {entry.fields.get('kind', '?')} {outcome}", level, outcome=outcome)
    return outcome


def _run(message: PushedMessage, fields: dict[str, Any]) -> str:
    try:
        body = json.loads(message.raw)
    except ValueError:
        return "malformed"
    if not isinstance(body, dict):
        return "malformed"
    kind = fields["kind"] = str(body.get("kind") or "")
    if kind == handoff.APPROVAL_DECIDED:
        approval_id = fields["approval_id"] = str(body.get("approval_id") or "")
        if not approval_id:
            return "malformed"
        done = approvals.carry_out(approval_id, datetime.now(UTC), effect)
        return "done" if done is not None else "nothing_to_do"
    if kind == handoff.JOB_LAUNCH:
        job_id = fields["job_id"] = str(body.get("job_id") or "")
        if not re.match(JOB_ID_PATTERN, job_id):
            return "malformed"
        outcome = launch.launch(job_id, datetime.now(UTC))
        return "done" if outcome in ("launched", "failed", "cancelled") else "nothing_to_do"
    if kind == handoff.ALERTS_NOW:
        ids, by = body.get("ids"), str(body.get("by") or "")[:100]
        if not isinstance(ids, list) or not ids or not all(isinstance(i, str) and i for i in ids) or not by:
            return "malformed"
        fields["notices"] = len(ids)
        raised_by = str(body.get("raised_by") or "")[:100] or None  # absent from messages of earlier versions
        # Claimed through the outbox: a redelivery sends nothing twice.
        sent = notifier.deliver(ids, by=by, raised_by=raised_by)
        return "done" if sent.sent else "nothing_to_do"
    return "unknown_kind"


# --- what a decided approval request does ----------------------------------------------------


def _go_ahead(approval: Approval, now: datetime) -> str:
    return "The agent was told it may go ahead." if approval.agent_id else "Nothing else to do."


def _raise_budget(approval: Approval, now: datetime) -> str:
    agent = agent_store.get(approval.agent_id or "")
    if agent is None:
        return f"Not applied: agent {approval.agent_id} no longer exists."
    period, usd = str(approval.payload["period"]), str(approval.payload["usd"])
    budget = {**(agent.budget or {}), f"{period}_usd": usd}
    try:
        stored = budgets.store(BudgetSpec.model_validate(budget))
    except ValidationError as exc:
        return f"Not applied: the new budget is invalid ({exc.errors(include_url=False)[0]['msg']})."
    actor = agent_controls.Actor(f"slack:{approval.decided_by}", request_id=approval.id)
    agent_controls.set_agent_budget(agent.agent_id, actor, stored, "agent.budget.raise", now)
    return f"The {period} budget of `{agent.agent_id}` is now ${Decimal(usd):,.2f}."


def _release(approval: Approval, now: datetime) -> str:
    actor = agent_controls.Actor(f"slack:{approval.decided_by}", request_id=approval.id)
    try:
        done = agent_controls.release_agent(approval.agent_id or "", actor, f"approved request {approval.id}", now)
    except agent_controls.Refused as refused:
        # Released already: by someone else, or by this very decision on a delivery that failed after
        # the write but before the command went out. Tell the agent again (its own id: the SDK applies
        # it once), so a lost ``release`` never leaves it blocked.
        if refused.status == 409 and approval.agent_id:
            again = Command(
                agent_id=approval.agent_id,
                command=CommandType.RELEASE,
                reason=f"approved request {approval.id}",
                issued_at=approval.decided_at or now,
                command_id=f"{approval.id}.release",
            )
            agent_commands.publish([again])
        return f"Nothing to release: {refused.reason}."
    return f"`{done.record.agent_id}` released ({', '.join(done.released)}): it is {done.record.status.value} again."


def _train(approval: Approval, now: datetime) -> str:
    """An approved training job joins its queue (shared/training/submit.py)."""
    return submit.decided(str(approval.payload.get("job_id")), True, f"slack:{approval.decided_by}", now)


def _not_train(approval: Approval, now: datetime) -> str:
    """A denied or expired training job is cancelled with that reason."""
    by = "expired" if approval.state is State.EXPIRED else f"denied by slack:{approval.decided_by}"
    return submit.decided(str(approval.payload.get("job_id")), False, by, now)


#: What approving each kind does (shared/services/approvals.py carries it out once, then answers).
EFFECTS: dict[Kind, approvals.Effect] = {
    Kind.OPERATION: _go_ahead,
    Kind.BUDGET_RAISE: _raise_budget,
    Kind.RELEASE: _release,
    Kind.TRAINING: _train,
    Kind.REMEDIATION: remediation.approved,
    Kind.BULK: bulk.carry_out,
}
#: What a denial or an expiry does, for kinds where something waits on the decision.
REFUSAL_EFFECTS: dict[Kind, approvals.Effect] = {Kind.TRAINING: _not_train}


def effect(approval: Approval, now: datetime) -> str:
    """What carrying out ``approval`` as decided does: its kind's effect when approved, the refusal
    effect of a kind that waits on the decision, else nothing. A sentence for the message and audit."""
    if approval.state is State.APPROVED:
        return EFFECTS[approval.kind](approval, now)
    if approval.kind in REFUSAL_EFFECTS:
        return REFUSAL_EFFECTS[approval.kind](approval, now)
    return "Nothing was done."
