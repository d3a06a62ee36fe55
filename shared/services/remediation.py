"""Remediation on the real path: the tenant's policy (cached with the alerting settings, no read of its
own) applied inside the writes already made for a heartbeat (shared/pipeline/handlers.py) and the
liveness sweep (shared/services/sweep.py), the approval asked for a ``stop`` on a critical agent, and
what approving that request does (the ``remediation`` kind's effect, shared/pipeline/fleet_actions.py).

The rules are shared/domain/remediation.py; this module only reads the policy, asks, and sends.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from fleet_agent.contracts import CommandType

from shared.domain import approvals as approval_rules
from shared.domain import remediation as rules
from shared.domain.agent_record import AgentRecord, Plan
from shared.domain.approvals import Approval, Kind, Requester
from shared.domain.remediation_policy import Mode
from shared.platform import logs
from shared.services import agent_actions
from shared.services.agent_controls import Actor, Refused
from shared.store import agents as agent_store
from shared.store import config as config_store

log = logs.get_logger("remediation")
#: Who asks an approver for a policy's stop on a critical agent.
REQUESTER = Requester(kind="api", id="remediation-policy")


def on_heartbeat(record: AgentRecord, plan: Plan, at: datetime, asks: list[rules.Ask]) -> Plan:
    """The heartbeat's plan followed by the policy (error rate, memory saturation, failure risk)."""
    if not rules.undecided(record, plan, rules.ON_HEARTBEAT):
        asks.clear()
        # The common path: not even the (cached) policy is looked up; a policy drain whose episode
        # resolves is undone.
        return rules.undo(record, plan, at, lambda: config_store.alerting(record.tenant))
    policy, alerting = config_store.remediation(record.tenant), config_store.alerting(record.tenant)
    return rules.after(record, plan, policy, at, rules.ON_HEARTBEAT, asks, alerting)


def on_sweep(record: AgentRecord, plan: Plan, at: datetime, asks: list[rules.Ask]) -> Plan:
    """The sweep's step followed by the policy (frozen)."""
    if not rules.undecided(record, plan, rules.ON_SWEEP):
        asks.clear()
        return rules.undo(record, plan, at, lambda: config_store.alerting(record.tenant))
    policy, alerting = config_store.remediation(record.tenant), config_store.alerting(record.tenant)
    return rules.after(record, plan, policy, at, rules.ON_SWEEP, asks, alerting)


def ask(asks: list[rules.Ask], now: datetime) -> None:
    """Ask an approver for each stop on a critical agent, after the write and after its commands and
    notices were sent: stored once (the approval id is the episode's), not posted here (the heartbeat's
    function has no Slack token): the minute job posts it (``post_due_at`` now). Never raises: a failure
    is logged, and the episode's ``approval`` outcome stays on the agent."""
    if not asks:
        return
    # lazy: approvals pull in the Slack client and hand-off (~200 ms), off the heartbeat's cold start
    from shared.services import approvals

    for wanted in asks:
        try:
            policy = config_store.remediation(wanted.tenant)
            approval = approvals.new(
                approval_id=approval_rules.approval_id("remediation", wanted.agent_id, wanted.episode_id),
                tenant=wanted.tenant,
                kind=Kind.REMEDIATION,
                requester=REQUESTER,
                summary=f"{wanted.action} critical agent {wanted.agent_id} (remediation rule {wanted.rule})",
                now=now,
                agent_id=wanted.agent_id,
                reason=wanted.reason,
                expires_in=timedelta(seconds=policy.approval_expiry_s),
                payload=wanted.payload(),
            )
            approvals.request(approval.model_copy(update={"post_due_at": now}), now, post_now=False)
        except Exception as exc:  # the write and its commands are made: log it, go on
            logs.log(log, f"remediation approval for {wanted.agent_id} not stored: {exc!r}", logging.ERROR,
                     agent_id=wanted.agent_id)  # fmt: skip
            continue
        logs.log(
            log, f"remediation {wanted.action} of {wanted.agent_id} asked of an approver", agent_id=wanted.agent_id
        )


def approved(approval: Approval, now: datetime) -> str:
    """An approved remediation request: the command is sent with shared/services/agent_actions.py (tracked
    and audited like any; the approval's id makes its id, so a redelivery re-sends the same command).

    A policy's request (origin ``policy:<rule>``) is sent only while its condition holds: the agent still
    has the episode it was asked for open and the tenant's policy is ``on``; otherwise nothing is sent
    ("condition cleared"). An operator's request (origin ``operator``, POST /v1/agents/{id}/commands) is
    sent as asked."""
    payload = approval.payload
    action = CommandType(str(payload["action"]))
    origin = str(payload.get("origin") or f"policy:{payload.get('rule')}")
    if origin.startswith("policy:"):
        cleared = _cleared(approval.agent_id or "", str(payload.get("episode_id") or ""))
        if cleared:
            return f"Not sent: condition cleared ({cleared})."
    actor = Actor(f"slack:{approval.decided_by}", request_id=approval.id)
    reason = f"approved request {approval.id}: {approval.reason}"[:500]
    try:
        record, _command = agent_actions.act(
            approval.agent_id or "",
            action,
            actor,
            reason,
            now,
            deadline_s=payload.get("deadline_s"),
            origin=origin,
        )
    except Refused as refused:
        return f"Not sent: {refused.reason}."
    return f"`{action.value}` sent to `{record.agent_id}`."


def _cleared(agent_id: str, episode_id: str) -> str | None:
    """Why a policy's approved command is no longer wanted (None: its episode is still open, policy on)."""
    record = agent_store.get(agent_id)
    if record is None:
        return None  # act() answers 404 with its own reason
    if not any(str(e.get("id")) == episode_id for e in record.episodes.values()):
        return f"episode {episode_id} is no longer open"
    mode = config_store.remediation(record.tenant).mode
    if mode is not Mode.ON:
        return f"the remediation policy is {mode.value}"
    return None
