"""What a registration or a heartbeat does to an agent: pure functions from (record, event) to a plan.

The record and plan types are in shared/domain/agent_record.py. The store applies a plan atomically,
with a precondition on the record it was computed from, so concurrent or redelivered events can
never interleave.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from fleet_agent.contracts import Heartbeat, Registration, Resources

from shared.domain import agent_actions, episodes, health, holds, lifecycle, registration_keys, remediation_frozen
from shared.domain import liveness as liveness_rules
from shared.domain.agent_record import AgentRecord, Liveness, Plan, remember, status_change, then
from shared.domain.alerts import Severity
from shared.domain.audit import AuditEntry
from shared.domain.episodes import AlertingConfig
from shared.domain.health import HealthConfig
from shared.domain.learned import Learned
from shared.domain.lifecycle import Cause, Outcome, State
from shared.domain.registration_keys import KeyDecision
from shared.domain.rejections import Code, Rejected

#: Registration event ids remembered per agent, to drop redelivered registrations.
REMEMBERED_EVENTS = 16
#: Versions remembered in the record (all versions live in the versions collection).
REMEMBERED_VERSIONS = 20


def apply_registration(
    current: AgentRecord | None,
    reg: Registration,
    *,
    event_id: str,
    received_at: datetime,
    keys: KeyDecision | None = None,
) -> Plan:
    """Create or update an agent from its registration. Raises :class:`Rejected` when refused.

    ``keys`` is the registration's key decision (shared/domain/registration_keys.py), made first: an
    unproven registration is refused before anything else is looked at. Its identity and token use are
    written with the registration; a signed registration's ``sent_at`` is checked for replay first.
    """
    keys = keys or KeyDecision()
    fields = _registration_fields(reg)
    version_doc = {"version": reg.version, "first_seen_at": received_at, "event_id": event_id, **fields}
    if current is None:
        identity_doc = keys.identity or {}
        if keys.signed:
            registration_keys.replayed(reg, None, received_at)
            identity_doc = registration_keys.with_sent_at(identity_doc, reg)
        record = AgentRecord(
            **fields,
            identity=identity_doc,
            **_registration_budget(None, reg),
            status=State.REGISTERED,
            status_since=received_at,
            status_cause=Cause.REGISTRATION.value,
            late_after=_late_after(received_at, reg.heartbeat_interval_s),
            sweep_at=_late_after(received_at, reg.heartbeat_interval_s),
            registered_at=received_at,
            last_registered_at=received_at,
            registered_interval_s=reg.heartbeat_interval_s,
            registration_event_ids=[event_id],
            versions=[reg.version],
        )
        audit = AuditEntry(
            id=_audit_id(reg.agent_id, event_id, "agent.register"),
            at=received_at,
            actor=f"agent:{reg.agent_id}",
            action="agent.register",
            target=reg.agent_id,
            outcome="registered",
            tenant=reg.tenant,
            details={"version": reg.version},
        )
        return Plan(create=record, version_doc=version_doc, audit=[audit, *keys.audit], token_use=keys.token_use)

    if current.tenant != reg.tenant:
        raise Rejected(
            Code.TENANT_CONFLICT,
            f"agent {reg.agent_id} belongs to tenant {current.tenant}; a registration for tenant "
            f"{reg.tenant} was refused",
            agent_id=reg.agent_id,
            details={"registered_tenant": current.tenant, "claimed_tenant": reg.tenant},
        )
    if current.status is State.DECOMMISSIONED:
        raise Rejected(
            Code.DECOMMISSIONED,
            f"agent {reg.agent_id} was decommissioned; register under a new id",
            agent_id=reg.agent_id,
        )
    if event_id in current.registration_event_ids:
        # Redelivered: maybe because publishing its commands failed the first time. Send them again.
        return Plan(
            skipped="duplicate", commands=[holds.command_of(current.agent_id, h) for h in current.holds.values()]
        )
    if keys.signed and registration_keys.replayed(reg, current.identity, received_at):
        # Not sent after the newest signed registration accepted: a replay, or overtaken. No change.
        return Plan(skipped="superseded")

    plan = Plan(token_use=keys.token_use, audit=list(keys.audit))
    changes: dict[str, Any] = {
        "registration_event_ids": remember(current.registration_event_ids, event_id, REMEMBERED_EVENTS)
    }
    if keys.signed:
        changes["identity"] = registration_keys.with_sent_at(keys.identity or current.identity, reg)
    new_version = reg.version not in current.versions
    if new_version:
        plan.version_doc = version_doc
        changes["versions"] = remember(current.versions, reg.version, REMEMBERED_VERSIONS)
    if received_at < current.last_registered_at:
        # An older registration delivered late: keep its version in the history, change nothing else.
        if received_at < current.registered_at:
            changes["registered_at"] = received_at
        plan.changes = changes
        plan.skipped = "superseded" if not new_version else None
        return plan

    # What a person set through the API wins over what the agent registers (PATCH /v1/agents/{id}).
    changes.update({k: v for k, v in fields.items() if v != getattr(current, k) and k not in current.api_fields})
    changes.update(_registration_budget(current, reg))
    changes["last_registered_at"] = received_at
    # A restarted agent has forgotten what it was told: send its holds again (same command ids).
    plan.commands.extend(holds.command_of(current.agent_id, hold) for hold in current.holds.values())
    last_seen = max(received_at, current.last_heartbeat_at or received_at)
    changes["registered_interval_s"] = reg.heartbeat_interval_s
    interval_s = reg.heartbeat_interval_s
    if "heartbeat_interval_s" in current.api_fields:
        # The API's interval is a tolerance only (the agent is never told it): never below the agent's beat.
        interval_s = max(current.heartbeat_interval_s, reg.heartbeat_interval_s)
        if interval_s != current.heartbeat_interval_s:
            changes["heartbeat_interval_s"] = interval_s
    changes["late_after"] = _late_after(last_seen, interval_s)
    eps = _back_alive(current, plan, changes, last_seen, received_at, interval_s=interval_s)
    changes.update(eps.changes())
    plan.episodes = eps.writes
    decision = lifecycle.decide(current.status, State.REGISTERED, Cause.REGISTRATION)
    if decision.outcome is Outcome.APPLIED and current.last_heartbeat_at and current.last_heartbeat_at > received_at:
        # A heartbeat sent after this registration was processed first: it already says what the
        # agent is doing, so the registration must not send it back to "registered".
        decision = lifecycle.Decision(Outcome.UNCHANGED, current.status, current.status, "newer heartbeat")
    plan.transition = decision
    if decision.outcome is Outcome.APPLIED:
        changes.update(status_change(current, State.REGISTERED, received_at, Cause.REGISTRATION))
    action = "agent.upgrade" if reg.version != current.version else "agent.reregister"
    plan.audit.append(
        AuditEntry(
            id=_audit_id(reg.agent_id, event_id, action),
            at=received_at,
            actor=f"agent:{reg.agent_id}",
            action=action,
            target=reg.agent_id,
            outcome=decision.outcome.value,
            tenant=reg.tenant,
            details={
                "from_version": current.version,
                "to_version": reg.version,
                "status": decision.state.value,
            },
        )
    )
    plan.changes = changes
    # A restart or stop sent before this registration was carried out (issue 23); a key rotation (no
    # token) comes from the running process: only a restart it acknowledged counts (not one still sent).
    rotation = reg.identity is not None and reg.identity.enrollment_token is None
    plan = then(current, plan, lambda after: agent_actions.reregistered(after, received_at, AlertingConfig(),
                                                                        rotation=rotation))  # fmt: skip
    if current.status is State.FROZEN:  # sticky, but an agent the policy restarted is back: lifted to active
        return then(current, plan, lambda after: remediation_frozen.lift_frozen(after, received_at, event_id,
                                                                                rotation=rotation))  # fmt: skip
    return plan


def _registration_fields(reg: Registration) -> dict[str, Any]:
    data = reg.model_dump(mode="python", exclude={"budget", "identity", "sent_at", "leases"})
    data["resources"] = (reg.resources or Resources()).model_dump()
    return data


def _registration_budget(current: AgentRecord | None, reg: Registration) -> dict[str, Any]:
    """The registration's budget applies unless one was set through the API (that one wins)."""
    if reg.budget is None or (current is not None and current.budget_source == "api"):
        return {}
    budget = reg.budget.model_dump(mode="json", exclude_none=True)
    if current is not None and current.budget == budget:
        return {}
    return {"budget": budget, "budget_source": "registration"}


def _back_alive(
    current: AgentRecord,
    plan: Plan,
    changes: dict[str, Any],
    last_seen: datetime,
    at: datetime,
    alerting: AlertingConfig | None = None,
    *,
    interval_s: int | None = None,
) -> episodes.AgentEpisodes:
    """A sign of life: the next liveness deadline, and the end of a silence episode (the recovery
    notice). A frozen agent stays frozen until released."""
    changes.update(liveness_rules.after_heartbeat(current, last_seen, interval_s))
    eps = episodes.AgentEpisodes.of(current, alerting or AlertingConfig())
    if current.liveness in (Liveness.LATE, Liveness.OFFLINE):
        silent = liveness_rules.silent_since(current)
        eps.resolve(
            episodes.LIVENESS,
            at,
            f"{current.agent_id} is back after {liveness_rules.describe(at - silent)} of silence",
        )
    return eps


def _late_after(last_seen: datetime, interval_s: int) -> datetime:
    return liveness_rules.deadline(last_seen, interval_s, Liveness.LATE)


def _audit_id(agent_id: str, event_id: str, action: str) -> str:
    """Deterministic per (agent, event, action): a redelivery rewrites the same entry, and one
    agent's event ids can never overwrite another agent's entries."""
    return f"{agent_id}.{event_id}.{action}"


def apply_heartbeat(
    current: AgentRecord,
    hb: Heartbeat,
    *,
    received_at: datetime,
    event_id: str,
    chunk_size: int,
    slots: int,
    retention: timedelta,
    health_config: HealthConfig | None = None,
    alerting: AlertingConfig | None = None,
    learned: Callable[[AgentRecord, dict[str, Any], datetime], Learned] | None = None,
) -> Plan:
    """Record liveness (by server receive time), status and metrics; flush history every ``chunk_size``;
    apply the health rules (shared/domain/health.py) and, when given, the learned models (``learned``
    returns the agent's new model state and the anomaly / failure-risk episodes to open or resolve)."""
    if current.status is State.DECOMMISSIONED:
        raise Rejected(Code.DECOMMISSIONED, f"agent {hb.agent_id} was decommissioned", agent_id=hb.agent_id)
    if hb.seq <= current.last_seq:
        return Plan(skipped="stale")

    last_seen = max(received_at, current.last_heartbeat_at) if current.last_heartbeat_at else received_at
    metrics = hb.metrics.as_dict()
    # JSON-ready: samples are stored whole and read whole (history, baselines, models).
    sample = {
        "seq": hb.seq,
        "at": received_at.isoformat(),
        "sent_at": hb.sent_at.isoformat(),
        "status": hb.status.value,
        "metrics": metrics,
    }
    changes: dict[str, Any] = {
        "last_seq": hb.seq,
        "last_heartbeat_at": last_seen,
        "heartbeats": current.heartbeats + 1,
        "late_after": _late_after(last_seen, current.heartbeat_interval_s),
    }
    position = current.heartbeats % chunk_size
    slot = f"s{position:02d}"
    plan = Plan(changes=changes, sample=(slot, sample))

    overwritten = current.recent.get(slot)
    if position == chunk_size - 1 or (overwritten is not None and overwritten["seq"] > current.flushed_seq):
        # The ring is full (or, after a change of chunk size, a slot about to be reused holds a sample
        # not yet copied): every sample not yet in a chunk becomes one history chunk.
        unflushed = [s for s in (*current.recent.values(), sample) if s["seq"] > current.flushed_seq]
        ring = sorted(unflushed, key=lambda s: s["seq"])
        chunk_no = current.history_chunks
        plan.history_chunk = (
            chunk_no % slots,
            {
                "agent_id": hb.agent_id,
                "chunk_no": chunk_no,
                "samples": ring,
                "first_at": datetime.fromisoformat(ring[0]["at"]),
                "last_at": received_at,
                "expire_at": received_at + retention,
            },
        )
        changes["history_chunks"] = chunk_no + 1
        changes["flushed_seq"] = hb.seq

    eps = _back_alive(current, plan, changes, last_seen, received_at, alerting)
    config = health_config or HealthConfig()
    verdict = health.evaluate(current.health, metrics, hb.status.value, received_at, config, eps, current.agent_id)
    if verdict.state != current.health:
        changes["health"] = verdict.state

    decision = lifecycle.decide(current.status, lifecycle.REPORTED[hb.status], Cause.HEARTBEAT)
    if decision.outcome is Outcome.APPLIED and current.status is State.OFFLINE and received_at < current.status_since:
        # Sent before the agent was declared offline: old news, not a recovery.
        decision = lifecycle.Decision(Outcome.HELD, current.status, decision.target, "heartbeat predates offline")
    flapping_cause: Cause | None = None
    if verdict.state.get("flapping") and current.status not in lifecycle.STICKY:
        # Flapping: held in degraded; the reported status is recorded in the sample, not applied.
        decision = lifecycle.decide(current.status, State.DEGRADED, Cause.SYSTEM)
        flapping_cause = Cause.SYSTEM
    plan.transition = decision
    if decision.outcome is Outcome.APPLIED:
        reason = "flapping" if flapping_cause else ""
        changes.update(status_change(current, decision.target, received_at, flapping_cause or Cause.HEARTBEAT, reason))
        if State.OFFLINE in (current.status, decision.target):
            plan.audit.append(_transition_audit(current, decision, event_id, received_at))
    elif decision.outcome is Outcome.ILLEGAL:
        plan.audit.append(_transition_audit(current, decision, event_id, received_at))

    if verdict.quarantine and "quarantine" not in current.holds:
        eps.open_(
            episodes.SECURITY,
            episodes.Severity.CRITICAL,
            received_at,
            f"{current.agent_id} quarantined: {verdict.quarantine}",
            {"score": verdict.state.get("score")},
            wait=False,
        )
        held = holds.place(
            current,
            "quarantine",
            reason=verdict.quarantine,
            at=received_at,
            key=f"security.{eps.seq}",
            actor="system:health-rules",
        )
        changes.update(held.changes)
        plan.transition = held.transition or plan.transition
        plan.commands.extend(held.commands)
        plan.audit.extend(held.audit)
    if learned is not None:
        verdict_ml = learned(current, metrics, received_at)
        changes["ml"] = verdict_ml.state
        for gone in verdict_ml.resolves:
            eps.resolve(gone.rule, received_at, gone.summary)
        for new in verdict_ml.opens:
            eps.open_(new.rule, Severity(new.severity), received_at, new.summary, new.details)
    changes.update(eps.changes())
    plan.episodes = eps.writes
    return plan


def _transition_audit(current: AgentRecord, decision: lifecycle.Decision, event_id: str, at: datetime) -> AuditEntry:
    return AuditEntry(
        id=_audit_id(current.agent_id, event_id, "agent.transition"),
        at=at,
        actor=f"agent:{current.agent_id}",
        action="agent.transition",
        target=current.agent_id,
        outcome=decision.outcome.value,
        tenant=current.tenant,
        details={"from": decision.current.value, "to": decision.target.value, "reason": decision.reason},
    )


def apply_transition(
    current: AgentRecord,
    target: State,
    *,
    cause: Cause,
    actor: str,
    reason: str,
    at: datetime,
    action_id: str,
) -> Plan:
    """An operator or the system moves an agent. Illegal moves are refused and audited."""
    decision = lifecycle.decide(current.status, target, cause)
    plan = Plan(transition=decision)
    if decision.outcome is Outcome.APPLIED:
        plan.changes = status_change(current, target, at, cause, reason)
    elif decision.outcome is Outcome.UNCHANGED:
        plan.skipped = "unchanged"
        return plan
    plan.audit.append(
        AuditEntry(
            id=_audit_id(current.agent_id, action_id, "agent.transition"),
            at=at,
            actor=actor,
            action="agent.transition",
            target=current.agent_id,
            outcome=decision.outcome.value,
            tenant=current.tenant,
            details={
                "from": current.status.value,
                "to": target.value,
                "reason": reason,
                "refusal": decision.reason,
            },
        )
    )
    return plan
