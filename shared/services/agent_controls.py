"""What an operator does to an agent, whoever asks: the REST API, a Slack command, an approved request.

Each operation reads the agent, decides with shared.domain on the stored document, writes with the
agent store's conditional write (its audit entries in the same commit) and publishes the commands
the decision produced. Callers check who may do it; an operation that cannot be done raises
:class:`Refused` with an HTTP-like status and a reason meant for a person.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from shared.domain import agent_record, holds, identity, liveness, release
from shared.domain.agent_record import AgentRecord, Liveness, Plan
from shared.domain.audit import AuditEntry
from shared.domain.lifecycle import Cause, State
from shared.domain.silences import Silence
from shared.services import accounting, agent_commands, command_channels
from shared.store import agents as agent_store
from shared.store import audit as audit_store
from shared.store import config, db
from shared.store import silences as silence_store


class Refused(Exception):
    """The operation cannot be done: ``status`` 400/403/404/409, ``reason`` says why."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class Actor:
    """Who acts (``api:<key name>``, ``slack:<user id>``), the id of their request (it makes audit and
    command ids unique per request, and equal on a retry of it) and the tenants they may touch."""

    name: str
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    #: None: every tenant.
    tenants: frozenset[str] | None = None

    def can_see(self, tenant: str) -> bool:
        return self.tenants is None or tenant in self.tenants

    @property
    def key(self) -> str:
        """The decision key of a hold this request places (``api.<id>``, ``slack.<id>``)."""
        return f"{self.name.split(':', 1)[0]}.{self.request_id}"


def not_found(agent_id: str) -> Refused:
    return Refused(404, f"agent {agent_id} not found")


def visible_agent(agent_id: str, actor: Actor) -> AgentRecord:
    """The agent, or 404, also when it belongs to a tenant the actor cannot see (existence not leaked)."""
    record = agent_store.get(agent_id)
    if record is None or not actor.can_see(record.tenant):
        raise not_found(agent_id)
    return record


def audit_entry(
    actor: Actor, action: str, target: str, tenant: str | None, details: dict[str, Any], at: datetime
) -> AuditEntry:
    return AuditEntry(
        id=db.doc_id(".".join((target, actor.request_id, action)), limit=1400),
        at=at,
        actor=actor.name,
        action=action,
        target=target,
        outcome="applied",
        tenant=tenant,
        details=details,
    )


def update_agent(agent_id: str, actor: Actor, step: Callable[[AgentRecord], Plan]) -> tuple[Plan, AgentRecord]:
    """Apply ``step`` to the agent with the store's conditional write; ``step`` may raise Refused.
    Returns the plan and the agent as written; 404 when it is missing or in a tenant the actor cannot see."""
    written: list[AgentRecord] = []

    def decide(current: AgentRecord | None) -> Plan:
        if current is None or not actor.can_see(current.tenant):
            return Plan(skipped="unknown")
        plan = step(current)
        written[:] = [current.model_copy(update=plan.changes) if plan.changes else current]
        return plan

    plan = agent_store.update(agent_id, decide)
    if plan.skipped == "unknown" or not written:
        raise not_found(agent_id)
    return plan, written[-1]


def _hold(name: str, agent_id: str, actor: Actor, reason: str, at: datetime) -> tuple[AgentRecord, bool]:
    """Place the ``name`` hold; (agent, whether it changed). Placing it again changes nothing and sends
    its command again with the same id (a lost publish is repaired by the retry)."""

    def step(current: AgentRecord) -> Plan:
        if current.status in (State.DECOMMISSIONING, State.DECOMMISSIONED):
            raise Refused(409, f"agent {current.agent_id} is {current.status.value}")
        if name in current.holds:
            return Plan(skipped="unchanged")
        return holds.place(current, name, reason=reason, at=at, key=actor.key, actor=actor.name, cause=Cause.OPERATOR)

    plan, record = update_agent(agent_id, actor, step)
    agent_commands.publish(plan.commands or [holds.command_of(record.agent_id, record.holds[name])])
    return record, plan.skipped is None


def pause(agent_id: str, actor: Actor, reason: str, at: datetime) -> tuple[AgentRecord, bool]:
    """Hold the agent: it is told ``pause`` and suspended until resumed."""
    return _hold("pause", agent_id, actor, reason, at)


def resume(agent_id: str, actor: Actor, reason: str, at: datetime) -> AgentRecord:
    """Lift the pause (other holds stay); 409 when the agent is not paused."""

    def step(current: AgentRecord) -> Plan:
        if "pause" not in current.holds:
            raise Refused(409, f"agent {current.agent_id} is not paused")
        return holds.lift(current, "pause", reason=reason, at=at, actor=actor.name, cause=Cause.OPERATOR)

    plan, record = update_agent(agent_id, actor, step)
    agent_commands.publish(plan.commands)
    return record


def quarantine(agent_id: str, actor: Actor, reason: str, at: datetime) -> tuple[AgentRecord, bool]:
    """Isolate the agent (told ``quarantine``) until an approver releases it."""
    return _hold("quarantine", agent_id, actor, reason, at)


@dataclass(frozen=True)
class Released:
    record: AgentRecord
    released: list[str]
    resolved: list[str]


def release_agent(agent_id: str, actor: Actor, reason: str, at: datetime) -> Released:
    """Release a frozen or quarantined agent: active again, told ``release``; 409 when neither."""
    released: list[str] = []
    resolved: list[str] = []

    def step(current: AgentRecord) -> Plan:
        plan, what = release.release(
            current,
            reason=reason,
            at=at,
            actor=actor.name,
            action_id=actor.request_id,
            alerting=config.alerting(current.tenant),
        )
        if plan.skipped == "unchanged":
            raise Refused(409, f"agent {current.agent_id} is neither frozen nor quarantined (it is {current.status})")
        released[:] = what
        resolved[:] = [w.episode_id for w in plan.episodes if w.fields.get("state") == "resolved"]
        return plan

    plan, record = update_agent(agent_id, actor, step)
    agent_commands.publish(plan.commands)
    return Released(record, released, resolved)


def revoke_key(agent_id: str, actor: Actor, at: datetime, reason: str = "") -> tuple[AgentRecord, bool]:
    """Revoke the agent's key(s): its events are refused until it enrolls again with a new token.
    Idempotent: an agent with no key is left as it is; (agent, whether it changed)."""

    def step(current: AgentRecord) -> Plan:
        return revoke_key_plan(current, actor, at, reason)

    plan, record = update_agent(agent_id, actor, step)
    # After the write (a failure here leaves the key revoked; the call can be repeated): whoever could read
    # the agent's commands reads nothing more until it enrolls again.
    command_channels.revoke_readers(agent_id)
    return record, plan.skipped is None


def revoke_key_plan(current: AgentRecord, actor: Actor, at: datetime, reason: str = "") -> Plan:
    """The write revoking ``current``'s keys, with its audit entry (pure: a step of any agent write, so
    a decommission revokes in the same write)."""
    before = identity.AgentIdentity.of(current.identity)
    if not before.keys:
        return Plan(skipped="unchanged")
    revoked = identity.revoke(current.identity, at=at, by=actor.name)
    details = {"key_ids": [k.key_id for k in before.keys], "reason": reason}
    return Plan(
        changes={"identity": revoked},
        audit=[audit_entry(actor, "agent.key.revoke", current.agent_id, current.tenant, details, at)],
    )


#: States in which an agent speaks no more: entering one revokes its key in the same write.
RETIRED = frozenset({State.DECOMMISSIONING, State.DECOMMISSIONED})


def retiring(current: AgentRecord, plan: Plan, actor: Actor, at: datetime) -> Plan:
    """``plan`` (a transition made on ``current``) with the agent's key revoked too when it decommissions
    the agent: one write, so no signed event is accepted from a decommissioned agent in between."""
    target = plan.transition.target if plan.transition is not None else None
    if not plan.changes or target not in RETIRED:
        return plan
    return agent_record.then(current, plan, lambda after: revoke_key_plan(after, actor, at, "decommissioned"))


def set_agent_budget(
    agent_id: str, actor: Actor, stored: dict[str, Any] | None, action: str, at: datetime
) -> AgentRecord:
    """Record a budget chosen by a person (None: no budget; it wins over the registration's), audited,
    then bring the budget hold in line at once: a raised budget lifts it, a lowered one places it."""

    def step(current: AgentRecord) -> Plan:
        if current.budget == stored and current.budget_source == "api":
            return Plan(skipped="unchanged")
        details = {"budget": stored, "previous": current.budget, "previous_source": current.budget_source}
        return Plan(
            changes={"budget": stored, "budget_source": "api"},
            audit=[audit_entry(actor, action, current.agent_id, current.tenant, details, at)],
        )

    _plan, record = update_agent(agent_id, actor, step)
    accounting.reconcile(record.agent_id, now=at, actor=actor.name)
    return agent_store.get(record.agent_id) or record


def create_silence(silence: Silence, actor: Actor, at: datetime) -> Silence:
    """Store a silence (or maintenance window) and its audit entry."""
    silence_store.create(silence)
    details: dict[str, Any] = {"agent_id": silence.agent_id, "rule": silence.rule, "maintenance": silence.maintenance}
    details["expires_at"] = silence.expires_at.isoformat()
    audit_store.append(audit_entry(actor, "silence.create", silence.id, silence.tenant, details, at))
    return silence


#: The fields an operator may set on an agent (PATCH /v1/agents/{id}, a bulk label): they then win over
#: the agent's registration (AgentRecord.api_fields).
EDITABLE = ("owner", "labels", "heartbeat_interval_s")
#: The remediation policy's critical label (``critical_label`` of shared/domain/remediation_policy.py,
#: default "critical=true"): a policy stop on such an agent needs an approval, so only an approver may
#: change or remove it. This is the default's key and value; a policy configured with another label is
#: not covered here.
CRITICAL_LABEL = ("critical", "true")


def unprotects_critical(labels: dict[str, str | None] | None) -> bool:
    """Whether a label edit changes or removes the critical label (which needs the approver role)."""
    key, value = CRITICAL_LABEL
    return labels is not None and key in labels and labels[key] != value


#: Labels an agent may have at most (as a registration: sdk/fleet_agent/messages/agents.py).
MAX_LABELS = 64


def edit_plan(current: AgentRecord, actor: Actor, edit: dict[str, Any], at: datetime, action: str) -> Plan:
    """The write of an operator's edit (pure). ``edit`` holds some of :data:`EDITABLE`; its ``labels`` are
    merged into the agent's (a None value removes the label). The heartbeat interval moves the liveness
    deadline with it. Unchanged: a skipped plan."""
    if current.status is State.DECOMMISSIONED:
        raise Refused(409, f"agent {current.agent_id} was decommissioned")
    wanted: dict[str, Any] = {}
    if edit.get("owner") is not None:
        wanted["owner"] = edit["owner"]
    if edit.get("labels") is not None:
        labels = {**current.labels, **edit["labels"]}
        wanted["labels"] = {k: v for k, v in sorted(labels.items()) if v is not None}
        if len(wanted["labels"]) > MAX_LABELS:
            raise Refused(
                409, f"agent {current.agent_id} would have {len(wanted['labels'])} labels; at most {MAX_LABELS}"
            )
    if edit.get("heartbeat_interval_s") is not None:
        wanted["heartbeat_interval_s"] = interval = int(edit["heartbeat_interval_s"])
        # The agent is not told the interval: it is the server's tolerance only, never below the agent's beat.
        beat = current.registered_interval_s or current.heartbeat_interval_s
        if interval < beat:
            raise Refused(
                409,
                f"heartbeat_interval_s {interval} is below the {beat} s agent {current.agent_id} beats at: "
                "the API sets the server's tolerance only, the agent's own interval comes from its registration",
            )
    changed = {k: v for k, v in wanted.items() if getattr(current, k) != v}
    sources = sorted({*current.api_fields, *wanted})
    if not changed and sources == sorted(current.api_fields):
        return Plan(skipped="unchanged")
    changes: dict[str, Any] = {**changed, "api_fields": sources}
    if "heartbeat_interval_s" in changed:
        last_seen = current.last_heartbeat_at or current.last_registered_at
        changes["late_after"] = liveness.deadline(last_seen, changed["heartbeat_interval_s"], Liveness.LATE)
        if current.liveness is Liveness.OK:
            changes["sweep_at"] = changes["late_after"]
    details = {"changed": {k: v for k, v in changed.items()}, "previous": {k: getattr(current, k) for k in changed}}
    return Plan(changes=changes, audit=[audit_entry(actor, action, current.agent_id, current.tenant, details, at)])


def edit_agent(agent_id: str, actor: Actor, edit: dict[str, Any], at: datetime) -> tuple[AgentRecord, bool]:
    """Set the agent's owner, labels or heartbeat interval (audited ``agent.update``); (agent, whether it changed)."""
    plan, record = update_agent(agent_id, actor, lambda current: edit_plan(current, actor, edit, at, "agent.update"))
    return record, plan.skipped is None
