"""Frozen lifted by remediation: a frozen agent that the ``frozen`` rule (shared/domain/remediation.py)
restarted, and that registered after the restart was sent, is back; frozen is otherwise sticky (only an
approver's release lifts it). Called on the agent's registration (shared/domain/agents.py) and on the
restart's ``done`` ack (shared/pipeline/command_acks.py)."""

from __future__ import annotations

from datetime import datetime

from fleet_agent.contracts import CommandType

from shared.domain import agent_actions, episodes, lifecycle, liveness
from shared.domain.agent_record import AgentRecord, Liveness, Plan, status_change
from shared.domain.audit import AuditEntry
from shared.domain.episodes import AlertingConfig
from shared.domain.holds import time_of
from shared.domain.lifecycle import Cause, State
from shared.domain.remediation import ACTOR


def restarted_since_frozen(record: AgentRecord, registered_at: datetime) -> str | None:
    """The id of the ``restart`` the ``frozen`` rule sent for the agent's current liveness episode, if the
    agent registered (``registered_at``) after it was sent: that registration is the restart's result.

    Another rule's restart (memory), an operator's, one sent for an earlier episode, or a registration
    from before the restart was sent (an old message delivered late) count for nothing."""
    if record.status is not State.FROZEN:
        return None
    episode = (record.episodes.get(episodes.LIVENESS) or {}).get("id")
    if episode is None:
        return None
    found: list[tuple[int, str]] = []
    for command_id, entry in record.commands.items():
        sent = time_of(entry["sent_at"]) if entry.get("sent_at") else None
        if entry.get("command") != CommandType.RESTART.value or entry.get("episode") != episode:
            continue
        if not str(entry.get("origin") or "").startswith("policy:") or entry.get("state") == "failed":
            continue
        if sent is None or sent < record.status_since or registered_at < sent:
            continue
        found.append((0 if entry.get("state") in ("acknowledged", "done") else 1, command_id))
    return min(found)[1] if found else None


def lift_frozen(
    record: AgentRecord,
    at: datetime,
    event_id: str,
    registered_at: datetime | None = None,
    config: AlertingConfig | None = None,
    *,
    rotation: bool = False,
) -> Plan:
    """A frozen agent the ``frozen`` rule restarted is back (it registered, at ``registered_at``, default
    ``at``, after the restart was sent; called on the registration and on the restart's ack): frozen is
    lifted to active (audited, cause system), the liveness ladder counts from now and the silence episode
    resolves. Otherwise frozen stays sticky (only an approver's release lifts it): an empty plan. A key
    ``rotation`` is no restart: it counts only when the restart was acknowledged (not while still sent)."""
    command_id = restarted_since_frozen(record, registered_at or at)
    if command_id is None or (rotation and record.commands[command_id].get("state") == "sent"):
        return Plan()
    reason = "restarted by remediation policy"
    decision = lifecycle.decide(record.status, State.ACTIVE, Cause.SYSTEM)
    plan = Plan(transition=decision)
    if decision.outcome is not lifecycle.Outcome.APPLIED:
        return plan
    entry = record.commands[command_id]
    if entry.get("state") not in ("done", "failed"):  # the registration is the restart's result
        done = {**entry, "state": "done", "detail": "agent re-registered", "done_at": at}
        commands = {**record.commands, command_id: done}
        plan.changes.update(commands=commands, command_due_at=agent_actions.due_at(commands))
    plan.changes.update(status_change(record, State.ACTIVE, at, Cause.SYSTEM, reason))
    plan.changes.update(
        {
            "liveness": Liveness.OK,
            "liveness_from": at,
            "sweep_at": liveness.deadline(at, record.heartbeat_interval_s, Liveness.LATE),
        }
    )
    eps = episodes.AgentEpisodes.of(record, config or AlertingConfig())
    eps.resolve(episodes.LIVENESS, at, f"{record.agent_id} is back: {reason}")
    plan.changes.update(eps.changes())
    plan.episodes = eps.writes
    plan.audit.append(
        AuditEntry(
            id=f"{record.agent_id}.{event_id}.agent.unfreeze",
            at=at,
            actor=ACTOR,
            action="agent.transition",
            target=record.agent_id,
            outcome="applied",
            tenant=record.tenant,
            details={"from": State.FROZEN.value, "to": State.ACTIVE.value, "reason": reason, "command_id": command_id},
        )
    )
    return plan
