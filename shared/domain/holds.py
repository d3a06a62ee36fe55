"""Holds: the reasons an agent must not call its model, each mirrored by a command to the agent.

An agent can be held for several reasons at once (its budget, its tenant's budget, an open breaker,
a pause, a quarantine). Each hold is kept in the agent document with the command that announced
it, so a redelivered decision re-sends the same ``command_id`` (the SDK applies it once) and a
restarted agent is told again after it registers. Budget holds and pauses also suspend the agent
in the lifecycle; lifting the last of them makes it active again.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from fleet_agent.contracts import Command, CommandType

from shared.domain import lifecycle
from shared.domain.agent_record import AgentRecord, Plan, Step, combine, status_change, then
from shared.domain.audit import AuditEntry
from shared.domain.lifecycle import Cause, Outcome, State


@dataclass(frozen=True)
class Kind:
    name: str
    places: CommandType
    lifts: CommandType
    #: The lifecycle state the hold puts the agent in (None: the state is left alone).
    state: State | None


KINDS: dict[str, Kind] = {
    kind.name: kind
    for kind in (
        Kind("budget", CommandType.BUDGET_EXHAUSTED, CommandType.BUDGET_RESTORED, State.SUSPENDED),
        Kind("tenant_budget", CommandType.BUDGET_EXHAUSTED, CommandType.BUDGET_RESTORED, State.SUSPENDED),
        Kind("breaker", CommandType.BREAKER_OPEN, CommandType.BREAKER_CLOSED, None),
        Kind("pause", CommandType.PAUSE, CommandType.RESUME, State.SUSPENDED),
        Kind("quarantine", CommandType.QUARANTINE, CommandType.RELEASE, State.QUARANTINED),
    )
}


def command_of(agent_id: str, hold: dict[str, Any]) -> Command:
    """The command that announced a hold (same id every time it is sent)."""
    return Command(
        agent_id=agent_id,
        command=CommandType(hold["command"]),
        reason=hold.get("reason") or "",
        issued_at=time_of(hold["issued_at"]),
        command_id=hold["command_id"],
        until=time_of(hold["until"]) if hold.get("until") else None,
    )


def _latest(until: datetime | None, others: list[Any]) -> datetime | None:
    """The SDK keeps one block per command: when two holds share one (an agent's and its tenant's
    budget), the block must last as long as the longer of them (None: until lifted)."""
    if until is None or any(other is None for other in others):
        return None
    return max([until, *(time_of(other) for other in others)])


def time_of(value: Any) -> datetime:
    """A stored time (a datetime from Firestore, or ISO text) as a datetime."""
    return value if isinstance(value, datetime) else datetime.fromisoformat(str(value))


def place(
    current: AgentRecord,
    name: str,
    *,
    reason: str,
    at: datetime,
    key: str,
    actor: str,
    cause: Cause = Cause.SYSTEM,
    until: datetime | None = None,
    extra: dict[str, Any] | None = None,
) -> Plan:
    """Hold the agent for ``name``; ``key`` names the decision (a limit and period, a batch, a request).

    Idempotent: the same key changes nothing the second time. Each placement gets a command id never
    used for this agent before (the placement count is part of it): the SDK ignores ids it has seen,
    so a hold placed again after a lift must not reuse the first one's id.
    """
    kind = KINDS[name]
    existing = current.holds.get(name)
    if existing is not None and existing.get("key") == key:
        return Plan(skipped="duplicate")
    shared = [h for n, h in current.holds.items() if n != name and KINDS[n].places is kind.places]
    hold = {
        "command": kind.places.value,
        "command_id": command_id(name, current.agent_id, key, str(current.holds_placed)),
        "key": key,
        "reason": reason,
        "issued_at": at,
        "until": _latest(until, [h.get("until") for h in shared]) if shared else until,
        "actor": actor,
        **(extra or {}),
    }
    changes: dict[str, Any] = {"holds": {**current.holds, name: hold}, "holds_placed": current.holds_placed + 1}
    plan = Plan(changes=changes)
    if kind.state is not None:
        decision = lifecycle.decide(current.status, kind.state, cause)
        plan.transition = decision
        if decision.outcome is Outcome.APPLIED:
            changes.update(status_change(current, kind.state, at, cause, reason))
            changes["status_hold"] = name
    plan.commands.append(command_of(current.agent_id, hold))
    plan.audit.append(_audit(current, f"agent.hold.{name}", hold["command_id"], at, actor, "placed", reason, until))
    return plan


def lift(
    current: AgentRecord,
    name: str,
    *,
    reason: str,
    at: datetime,
    actor: str,
    cause: Cause = Cause.SYSTEM,
) -> Plan:
    """Lift the ``name`` hold. The agent becomes active again when no hold that suspends it is left;
    the lifting command is sent unless another hold still needs the same block."""
    hold = current.holds.get(name)
    if hold is None:
        return Plan(skipped="unchanged")
    kind = KINDS[name]
    rest = {k: v for k, v in current.holds.items() if k != name}
    changes: dict[str, Any] = {"holds": rest}
    plan = Plan(changes=changes)
    still_suspending = [k for k in rest if KINDS[k].state is kind.state]
    if kind.state is not None and current.status is kind.state and current.status_hold == name:
        if still_suspending:
            changes["status_hold"] = still_suspending[0]
        else:
            decision = lifecycle.decide(current.status, State.ACTIVE, cause)
            plan.transition = decision
            if decision.outcome is Outcome.APPLIED:
                changes.update(status_change(current, State.ACTIVE, at, cause, reason))
                changes["status_hold"] = None
    if not any(KINDS[k].places is kind.places for k in rest):
        plan.commands.append(
            Command(
                agent_id=current.agent_id,
                command=kind.lifts,
                reason=reason,
                issued_at=at,
                command_id=f"lift.{hold['command_id']}"[:64],
            )
        )
    plan.audit.append(_audit(current, f"agent.hold.{name}", f"lift.{hold['command_id']}", at, actor, "lifted", reason))
    return plan


def expired(current: AgentRecord, now: datetime) -> list[str]:
    """Budget holds whose period has reset (their ``until`` has passed)."""
    return [
        name
        for name, hold in current.holds.items()
        if name in ("budget", "tenant_budget") and hold.get("until") is not None and time_of(hold["until"]) <= now
    ]


def lift_expired(current: AgentRecord, now: datetime) -> Plan:
    """Lift the budget holds whose period has reset (the SDK resumed at their ``until``, so does the
    server); skipped "unchanged" when there is none."""

    def lift_one(name: str) -> Step:
        def step(record: AgentRecord) -> Plan:
            if name not in expired(record, now):
                return Plan(skipped="unchanged")
            return lift(record, name, reason="budget period reset", at=now, actor="system:budget")

        return step

    return combine([lift_one(name) for name in expired(current, now)])(current)


def with_expired_lifted(current: AgentRecord, plan: Plan, now: datetime) -> Plan:
    """An event's own ``plan`` (made on ``current``: a heartbeat's) followed by lifting the budget holds
    whose period has reset, on the agent's next heartbeat or cost batch: one plan, so one agent write
    and one publish for the event."""
    if not expired(current, now):
        return plan
    return then(current, plan, lambda record: lift_expired(record, now))


def _audit(
    current: AgentRecord,
    action: str,
    action_id: str,
    at: datetime,
    actor: str,
    outcome: str,
    reason: str,
    until: datetime | None = None,
) -> AuditEntry:
    return AuditEntry(
        id=f"{current.agent_id}.{action_id}.{action}"[:1400],
        at=at,
        actor=actor,
        action=action,
        target=current.agent_id,
        outcome=outcome,
        tenant=current.tenant,
        details={"reason": reason, **({"until": until.isoformat()} if until else {})},
    )


def command_id(kind: str, *parts: str) -> str:
    """A deterministic command id that fits the contract (64 chars): the same decision, the same id."""
    digest = hashlib.sha256("|".join(parts).encode()).hexdigest()[:32]
    return f"{kind[:24]}.{digest}"
