"""Decommissioning an agent, whoever asks (the REST API, fleetctl, an approved bulk request): one operation.

The agent goes to ``decommissioned`` (through ``decommissioning``) in one write that also lifts its
holds (no hold command is left to re-send), closes its pending tracked commands, resolves the episodes
only the agent could clear (``CLOSED_EPISODES``) and revokes its key, each audited in the same commit.
After the write its command subscription is deleted. Its history (usage, audit, heartbeat history,
versions) is not touched: it is kept for its retention.

Idempotent: called again on a decommissioned agent, it finishes whatever a failed first call left
(a hold, a key, a pending command, the subscription) and changes nothing else.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from shared.domain import agent_actions, episodes, remediation
from shared.domain import agents as agent_rules
from shared.domain.agent_record import AgentRecord, Plan, merge, then
from shared.domain.episodes import AlertingConfig
from shared.domain.lifecycle import Cause, Outcome, State
from shared.services import agent_controls, command_channels
from shared.services.agent_controls import Actor, Refused
from shared.store import audit as audit_store
from shared.store import config as config_store

#: Tracked command states that are over (the rest are still pending on the agent).
FINISHED = frozenset({"done", "failed"})


@dataclass(frozen=True)
class Decommissioned:
    record: AgentRecord
    #: Whether this call changed the agent (False: it was decommissioned and clean already).
    changed: bool
    #: What this call cleaned up: holds lifted, commands closed, key revoked, subscription deleted.
    cleanup: dict[str, Any]


#: Episodes only the agent could clear (an ack, a registration, a heartbeat): closed with it.
CLOSED_EPISODES = (agent_actions.UNACKNOWLEDGED_RULE, remediation.ESCALATED, episodes.LIVENESS)


def plan(
    current: AgentRecord,
    actor: Actor,
    reason: str,
    at: datetime,
    alerting: Callable[[], AlertingConfig] = AlertingConfig,
) -> Plan:
    """The write decommissioning ``current`` (pure): transitions, holds lifted, pending commands closed,
    key revoked, its unacknowledged-command, escalation and liveness episodes resolved (``alerting``: the
    tenant's settings, asked for only when one is open); a skipped plan when it is decommissioned and clean
    already. Raises Refused (409) when the lifecycle does not allow it."""
    total = Plan()
    record = current
    for target in (State.DECOMMISSIONING, State.DECOMMISSIONED):
        if record.status in (target, State.DECOMMISSIONED):
            continue
        step = agent_rules.apply_transition(
            record,
            target,
            cause=Cause.OPERATOR,
            actor=actor.name,
            reason=reason,
            at=at,
            action_id=f"{actor.request_id}.{target.value}",
        )
        if step.transition is None or step.transition.outcome is not Outcome.APPLIED:
            why = step.transition.reason if step.transition is not None else "refused"
            raise Refused(409, f"agent {current.agent_id} cannot be decommissioned: {why}")
        merge(total, step)
        record = record.model_copy(update=step.changes)
    merge(total, _cleanup(record, actor, reason, at))
    record = current.model_copy(update=total.changes)
    if any(rule in record.episodes for rule in CLOSED_EPISODES):
        eps = episodes.AgentEpisodes.of(record, alerting())
        for rule in CLOSED_EPISODES:
            eps.resolve(rule, at, f"{current.agent_id}: agent decommissioned")
        merge(total, Plan(changes=eps.changes(), episodes=eps.writes))
    if not total.changes:
        total.skipped = "unchanged"
    else:
        details = {"reason": reason, "from": current.status.value}
        total.audit.append(
            agent_controls.audit_entry(actor, "agent.decommission", current.agent_id, current.tenant, details, at)
        )
    return total


def _cleanup(current: AgentRecord, actor: Actor, reason: str, at: datetime) -> Plan:
    """Holds lifted and pending commands closed (audited), then the key revoked."""
    pending = {cid: entry for cid, entry in current.commands.items() if entry.get("state") not in FINISHED}
    if not current.holds and not pending and current.status_hold is None:
        return agent_controls.revoke_key_plan(current, actor, at, "decommissioned")
    closed = {
        cid: {**entry, "state": "failed", "detail": "agent decommissioned", "done_at": at}
        for cid, entry in pending.items()
    }
    details = {"holds": sorted(current.holds), "commands": sorted(pending), "reason": reason}
    lifted = Plan(
        changes={"holds": {}, "status_hold": None, "commands": {**current.commands, **closed}, "command_due_at": None},
        audit=[agent_controls.audit_entry(actor, "agent.decommission.cleanup", current.agent_id, current.tenant,
                                          details, at)],
    )  # fmt: skip
    return then(current, lifted, lambda after: agent_controls.revoke_key_plan(after, actor, at, "decommissioned"))


def decommission(agent_id: str, actor: Actor, reason: str, at: datetime) -> Decommissioned:
    """Decommission the agent (see the module); 404 when the actor cannot see it, 409 when refused."""
    before: list[AgentRecord] = []

    def step(current: AgentRecord) -> Plan:
        before[:] = [current]
        return plan(current, actor, reason, at, lambda: config_store.alerting(current.tenant))

    written, record = agent_controls.update_agent(agent_id, actor, step)
    prior = before[-1] if before else record
    # After the write, also when nothing changed: a retry repairs a delete that failed before.
    deleted = command_channels.delete(agent_id)
    cleanup = {
        "holds": sorted(prior.holds) if written.skipped is None else [],
        "commands": sorted(c for c, e in prior.commands.items() if e.get("state") not in FINISHED)
        if written.skipped is None
        else [],
        "key_revoked": any(a.action == "agent.key.revoke" for a in written.audit),
        "subscription_deleted": deleted,
    }
    if deleted and written.skipped is not None:
        audit_store.append(
            agent_controls.audit_entry(actor, "agent.decommission.cleanup", agent_id, record.tenant,
                                       {"subscription_deleted": True, "reason": reason}, at)
        )  # fmt: skip
    return Decommissioned(record, written.skipped is None or deleted, cleanup)
