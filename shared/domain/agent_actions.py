"""Remediation commands to one agent (restart, stop, drain, throttle, clear_cache, resume_work): issuing
one, tracking how far the agent got with it (its signed acknowledgements), and re-sending then escalating
one it did not acknowledge by its deadline. Pure: functions of the agent record returning a Plan.

Each command is kept in the agent document's ``commands`` map by command id, as an entry
``{command, state, origin, actor, reason, sent_at, deadline, attempts, calls_per_minute?, until?,
detail?, acked_at?, done_at?}``. Its state only moves forward (sent < acknowledged < done|failed; an
``unacknowledged`` command can still be acknowledged or done), so a redelivered or reordered ack changes
nothing. The map is bounded (:data:`KEEP`), but a command still awaiting its agent is never dropped.
``command_due_at`` (on the agent) is the earliest deadline of a command awaiting acknowledgement: the
minute sweep reads only agents whose ``command_due_at`` has passed.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from fleet_agent.contracts import Command, CommandType
from fleet_agent.messages.commands import ACKED_COMMANDS, COMMANDS_V2, CommandAck

from shared.domain.agent_record import AgentRecord, Liveness, Plan
from shared.domain.alerts import Severity
from shared.domain.audit import AuditEntry
from shared.domain.episodes import AgentEpisodes, AlertingConfig
from shared.domain.holds import command_id, time_of
from shared.domain.lifecycle import State
from shared.domain.rejections import Code, Rejected

#: Tracked commands kept per agent (older finished ones are dropped first).
KEEP = 20
#: Seconds an agent has to carry out a command when the caller names no deadline.
DEFAULT_DEADLINE_S = 300
MIN_DEADLINE_S = 1
MAX_DEADLINE_S = 86_400
#: Times a command is sent before it is escalated (the first send and one re-send).
MAX_ATTEMPTS = 2

SENT = "sent"
ACKNOWLEDGED = "acknowledged"
DONE = "done"
FAILED = "failed"
UNACKNOWLEDGED = "unacknowledged"
STATES = (SENT, ACKNOWLEDGED, DONE, FAILED, UNACKNOWLEDGED)
#: How far each state is: a state is replaced only by a further one.
RANK = {SENT: 0, UNACKNOWLEDGED: 0, ACKNOWLEDGED: 1, DONE: 2, FAILED: 2}
FINAL = frozenset({DONE, FAILED})
#: States still awaiting the agent's acknowledgement (re-sent, then escalated at their deadline).
AWAITING = frozenset({SENT})

#: Liveness rungs on which an unacknowledged command is not escalated (the agent is silent: paged already).
SILENT = frozenset({Liveness.OFFLINE, Liveness.FROZEN})
#: Commands whose result is the agent's next registration (it exits; a supervisor starts it again).
ENDS_PROCESS = frozenset({CommandType.RESTART.value, CommandType.STOP.value})
#: Where a command may not go: the agent is gone or going.
_RETIRED = frozenset({State.DECOMMISSIONING, State.DECOMMISSIONED})


class Unsupported(Exception):
    """The agent's SDK does not understand remediation commands (its ``supports`` lacks commands.v2)."""

    def __init__(self, reason: str = "agent's SDK does not support remediation commands") -> None:
        super().__init__(reason)
        self.reason = reason


class NotAllowed(Exception):
    """The command cannot be sent to this agent now (``reason`` says why)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def issue(
    record: AgentRecord,
    action: CommandType,
    *,
    at: datetime,
    actor: str,
    reason: str,
    key: str,
    origin: str = "operator",
    deadline_s: int | None = None,
    calls_per_minute: int | None = None,
    until: datetime | None = None,
) -> Plan:
    """Send ``action`` to the agent: the plan tracks it in ``commands``, holds the Command to publish
    after the write and audits it. ``key`` names the decision (a request, a policy's firing): the same
    key and action give the same command id, so a retry changes nothing and re-sends the same command.

    Raises :class:`Unsupported` or :class:`NotAllowed` (with a reason for a person)."""
    if action not in ACKED_COMMANDS:
        raise NotAllowed(f"{action.value} is not a remediation command")
    if COMMANDS_V2 not in record.supports:
        raise Unsupported()
    if record.status in _RETIRED:
        raise NotAllowed(f"agent {record.agent_id} is {record.status.value}")
    if action is CommandType.THROTTLE and calls_per_minute is None:
        raise NotAllowed("throttle needs calls_per_minute")
    if action is not CommandType.THROTTLE and calls_per_minute is not None:
        raise NotAllowed("calls_per_minute belongs to throttle")
    if action is not CommandType.THROTTLE and until is not None:
        raise NotAllowed("until belongs to throttle")
    deadline_s = DEFAULT_DEADLINE_S if deadline_s is None else deadline_s
    if not MIN_DEADLINE_S <= deadline_s <= MAX_DEADLINE_S:
        raise NotAllowed(f"deadline_s must be between {MIN_DEADLINE_S} and {MAX_DEADLINE_S}")
    if until is not None and until <= at:
        raise NotAllowed("until is in the past")
    cid = command_id(action.value, record.agent_id, key)
    existing = record.commands.get(cid)
    if existing is not None:
        return Plan(skipped="duplicate", commands=[command_of(record.agent_id, cid, existing)])
    entry: dict[str, Any] = {
        "command": action.value,
        "state": SENT,
        "origin": origin,
        "actor": actor,
        "reason": reason,
        "sent_at": at,
        "deadline": at + timedelta(seconds=deadline_s),
        "deadline_s": deadline_s,
        "attempts": 1,
    }
    if calls_per_minute is not None:
        entry["calls_per_minute"] = calls_per_minute
    if until is not None:
        entry["until"] = until
    commands = bounded({**record.commands, cid: entry}, at)
    details = {"command_id": cid, "origin": origin, "reason": reason, "deadline_s": deadline_s}
    if calls_per_minute is not None:
        details["calls_per_minute"] = calls_per_minute
    if until is not None:
        details["until"] = until.isoformat()
    return Plan(
        changes={"commands": commands, "command_due_at": due_at(commands)},
        commands=[command_of(record.agent_id, cid, entry)],
        audit=[audit(record, cid, f"agent.command.{action.value}", at, actor, "sent", details)],
    )


def command_of(agent_id: str, cid: str, entry: dict[str, Any]) -> Command:
    """The Command a tracked entry stands for (the same id and content every time it is sent)."""
    return Command(
        agent_id=agent_id,
        command=CommandType(entry["command"]),
        reason=(entry.get("reason") or "")[:500],
        issued_at=time_of(entry["sent_at"]),
        command_id=cid,
        deadline=time_of(entry["deadline"]),
        calls_per_minute=entry.get("calls_per_minute"),
        until=time_of(entry["until"]) if entry.get("until") else None,
    )


def pending(entry: dict[str, Any], now: datetime) -> bool:
    """Still awaiting the agent: not finished, and not past its deadline (or still to be escalated)."""
    state = entry.get("state")
    return state in AWAITING or (state == ACKNOWLEDGED and time_of(entry["deadline"]) > now)


def bounded(commands: dict[str, dict[str, Any]], now: datetime) -> dict[str, dict[str, Any]]:
    """At most :data:`KEEP` entries, the newest; a pending one is kept whatever its age, and so is a
    policy's of the last hour (the remediation cap and restart loop count them: operators' commands
    must not push them out)."""
    if len(commands) <= KEEP:
        return commands
    newest = sorted(commands, key=lambda cid: time_of(commands[cid]["sent_at"]), reverse=True)
    recent = now - timedelta(hours=1)
    keep = {
        cid
        for cid in newest
        if pending(commands[cid], now)
        or (
            str(commands[cid].get("origin") or "").startswith("policy:") and time_of(commands[cid]["sent_at"]) >= recent
        )
    }
    for cid in newest:
        if len(keep) >= KEEP:
            break
        keep.add(cid)
    return {cid: entry for cid, entry in commands.items() if cid in keep}


def due_at(commands: dict[str, dict[str, Any]]) -> datetime | None:
    """The earliest deadline of a command awaiting acknowledgement (None: nothing to watch)."""
    deadlines = [time_of(e["deadline"]) for e in commands.values() if e.get("state") in AWAITING]
    return min(deadlines) if deadlines else None


def newest_first(commands: dict[str, dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """The tracked commands, the latest sent first (the API's order)."""
    return sorted(commands.items(), key=lambda item: (time_of(item[1]["sent_at"]), item[0]), reverse=True)


def audit(
    record: AgentRecord, cid: str, action: str, at: datetime, actor: str, outcome: str, details: dict[str, Any]
) -> AuditEntry:
    return AuditEntry(
        id=f"{record.agent_id}.{cid}.{action}.{outcome}"[:1400],
        at=at,
        actor=actor,
        action=action,
        target=record.agent_id,
        outcome=outcome,
        tenant=record.tenant,
        details=details,
    )


# --- acknowledgements ------------------------------------------------------------------------------------

#: The episode opened on an agent that did not acknowledge a command (re-sent once, then escalated).
UNACKNOWLEDGED_RULE = "command_unacknowledged"


def acknowledge(record: AgentRecord, ack: CommandAck, *, at: datetime, config: AlertingConfig) -> Plan:
    """The agent's acknowledgement of a command: its entry moves forward only (sent|unacknowledged <
    acknowledged < done|failed), so a redelivered or reordered ack is skipped ("duplicate") and writes
    nothing. A done or failed command is audited; the ``command_unacknowledged`` episode resolves when no
    command is left unacknowledged. Raises Rejected (``unknown_command``) for a command id the agent was
    not sent (or no longer tracked), or one of another type."""
    entry = record.commands.get(ack.command_id)
    if entry is None:
        raise Rejected(
            Code.UNKNOWN_COMMAND,
            f"command {ack.command_id} was not sent to agent {record.agent_id} (or is no longer tracked)",
            agent_id=record.agent_id,
        )
    if entry["command"] != ack.command.value:
        raise Rejected(
            Code.UNKNOWN_COMMAND,
            f"command {ack.command_id} is a {entry['command']}, not a {ack.command.value}",
            agent_id=record.agent_id,
        )
    state = ack.state.value
    if RANK[state] <= RANK[entry["state"]]:
        return Plan(skipped="duplicate")
    updated = {**entry, "state": state, "acked_at": entry.get("acked_at") or at}
    if ack.detail:
        updated["detail"] = ack.detail
    if state in FINAL:
        updated["done_at"] = at
    commands = {**record.commands, ack.command_id: updated}
    plan = Plan(changes={"commands": commands, "command_due_at": due_at(commands)})
    if state in FINAL:
        details = {"command_id": ack.command_id, "detail": ack.detail, "origin": entry.get("origin")}
        action = f"agent.command.{entry['command']}"
        plan.audit.append(audit(record, ack.command_id, action, at, f"agent:{record.agent_id}", state, details))
    if not any(e.get("state") == UNACKNOWLEDGED for e in commands.values()):
        episodes = AgentEpisodes.of(record, config)
        if episodes.resolve(UNACKNOWLEDGED_RULE, at, f"{entry['command']} {ack.command_id} {state}"):
            plan.changes.update(episodes.changes())
            plan.episodes.extend(episodes.writes)
    return plan


# --- re-send and escalation (the minute sweep) -----------------------------------------------------------


def overdue(record: AgentRecord, now: datetime, config: AlertingConfig) -> Plan:
    """Commands not acknowledged by their deadline: re-sent with the same id (attempts + 1, a new deadline)
    until :data:`MAX_ATTEMPTS`, then marked ``unacknowledged`` and escalated as a ``command_unacknowledged``
    episode (high). A command the agent can no longer take (its SDK lost commands.v2, it is being
    decommissioned) is marked ``failed`` with the reason instead. Skipped "unchanged" when nothing is
    due (a sweep that ran already)."""
    commands = dict(record.commands)
    plan = Plan()
    episodes = AgentEpisodes.of(record, config)
    escalated: list[str] = []
    for cid, entry in sorted(commands.items()):
        if entry.get("state") not in AWAITING or time_of(entry["deadline"]) > now:
            continue
        action = f"agent.command.{entry['command']}"
        attempts = int(entry.get("attempts") or 1)
        gone = _undeliverable(record)
        if gone is not None:  # the agent can no longer take it: failed, not re-sent, not escalated
            commands[cid] = {**entry, "state": FAILED, "detail": gone, "done_at": now}
            details = {"command_id": cid, "attempts": attempts, "detail": gone}
            plan.audit.append(audit(record, cid, action, now, "system:commands", FAILED, details))
        elif attempts < MAX_ATTEMPTS:
            seconds = int(entry.get("deadline_s") or DEFAULT_DEADLINE_S)
            commands[cid] = {**entry, "attempts": attempts + 1, "deadline": now + timedelta(seconds=seconds)}
            plan.commands.append(command_of(record.agent_id, cid, commands[cid]))
            details = {"command_id": cid, "attempts": attempts + 1}
            plan.audit.append(audit(record, cid, action, now, "system:commands", f"resent-{attempts + 1}", details))
        else:
            commands[cid] = {**entry, "state": UNACKNOWLEDGED}
            escalated.append(f"{entry['command']} ({cid})")
            details = {"command_id": cid, "attempts": attempts}
            plan.audit.append(audit(record, cid, action, now, "system:commands", UNACKNOWLEDGED, details))
    if commands == record.commands:
        return Plan(skipped="unchanged")
    if escalated and record.liveness not in SILENT:  # a silent agent: its liveness episode pages already
        summary = (
            f"agent {record.agent_id} did not acknowledge {', '.join(escalated)}, "
            f"sent {MAX_ATTEMPTS} times: it may be hung or its SDK may not be reading its commands"
        )
        if episodes.open_(UNACKNOWLEDGED_RULE, Severity.HIGH, now, summary, {"commands": escalated}, wait=False):
            plan.changes.update(episodes.changes())
            plan.episodes.extend(episodes.writes)
    plan.changes.update(commands=commands, command_due_at=due_at(commands))
    return plan


def _undeliverable(record: AgentRecord) -> str | None:
    """Why a command can no longer reach the agent (its SDK re-registered without commands.v2, or it is
    being decommissioned), or None."""
    if COMMANDS_V2 not in record.supports:
        return "unsupported: the agent's SDK no longer supports remediation commands"
    if record.status in _RETIRED:
        return f"retired: the agent is {record.status.value}"
    return None


def reregistered(record: AgentRecord, at: datetime, config: AlertingConfig, *, rotation: bool = False) -> Plan:
    """The agent registered at ``at``: a ``restart`` or ``stop`` sent before and not finished was carried
    out (the process exited and came back): marked ``done`` ("agent re-registered", audited), and the
    ``command_unacknowledged`` episode resolves when none is left unacknowledged. Empty when none is.
    A key ``rotation`` comes from the running process: it counts only for a command already
    ``acknowledged`` (the agent said it is exiting), not for one still ``sent``."""
    commands = dict(record.commands)
    plan = Plan()
    for cid, entry in sorted(commands.items()):
        if entry.get("command") not in ENDS_PROCESS or entry.get("state") in FINAL:
            continue
        if rotation and entry.get("state") == SENT:
            continue
        if time_of(entry["sent_at"]) > at:
            continue
        commands[cid] = {**entry, "state": DONE, "detail": "agent re-registered", "done_at": at}
        details = {"command_id": cid, "detail": "agent re-registered", "origin": entry.get("origin")}
        plan.audit.append(audit(record, cid, f"agent.command.{entry['command']}", at, "system:commands", DONE, details))
    if not plan.audit:
        return plan
    plan.changes.update(commands=commands, command_due_at=due_at(commands))
    if not any(e.get("state") == UNACKNOWLEDGED for e in commands.values()):
        episodes = AgentEpisodes.of(record, config)
        if episodes.resolve(UNACKNOWLEDGED_RULE, at, f"agent {record.agent_id} re-registered"):
            plan.changes.update(episodes.changes())
            plan.episodes.extend(episodes.writes)
    return plan
