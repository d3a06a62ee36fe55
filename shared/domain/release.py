"""Releasing a frozen or quarantined agent: the one way out of those sticky states, for approvers.

The agent becomes active, is told ``release`` if it was quarantined, its liveness ladder counts
from the release, its security score is restored to at least ``RELEASED_SCORE``, and the episodes
that held it (silence, quarantine) resolve.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from shared.domain import episodes, holds, lifecycle, liveness
from shared.domain.agent_record import AgentRecord, Liveness, Plan, status_change
from shared.domain.audit import AuditEntry
from shared.domain.episodes import AlertingConfig
from shared.domain.lifecycle import Cause, Outcome, State

#: The security score a released agent gets back (at least): an approver vouched for it.
RELEASED_SCORE = 60.0


def releasable(current: AgentRecord) -> bool:
    """There is something to release: a quarantine hold, or a frozen or quarantined agent."""
    frozen = current.status in (State.FROZEN, State.QUARANTINED) or current.liveness is Liveness.FROZEN
    return "quarantine" in current.holds or frozen


def release(
    current: AgentRecord,
    *,
    reason: str,
    at: datetime,
    actor: str,
    action_id: str,
    alerting: AlertingConfig | None = None,
) -> tuple[Plan, list[str]]:
    """The plan, and what was released (``frozen``, ``quarantine``); skipped "unchanged" when neither."""
    released: list[str] = []
    plan = Plan()
    changes: dict[str, Any] = {}
    if "quarantine" in current.holds:
        lifted = holds.lift(current, "quarantine", reason=reason, at=at, actor=actor, cause=Cause.OPERATOR)
        changes.update(lifted.changes)
        plan.commands.extend(lifted.commands)
        plan.audit.extend(lifted.audit)
        plan.transition = lifted.transition
        released.append("quarantine")
    if current.status in (State.FROZEN, State.QUARANTINED) and changes.get("status") is not State.ACTIVE:
        decision = lifecycle.decide(current.status, State.ACTIVE, Cause.OPERATOR)
        plan.transition = decision
        if decision.outcome is Outcome.APPLIED:
            changes.update(status_change(current, State.ACTIVE, at, Cause.OPERATOR, reason))
            released.append(current.status.value)
            plan.audit.append(
                AuditEntry(
                    id=f"{current.agent_id}.{action_id or at.isoformat()}.agent.release",
                    at=at,
                    actor=actor,
                    action="agent.release",
                    target=current.agent_id,
                    outcome="applied",
                    tenant=current.tenant,
                    details={"from": current.status.value, "reason": reason},
                )
            )
    if not released and current.liveness is not Liveness.FROZEN:
        return Plan(skipped="unchanged"), []
    changes.update(
        {
            "liveness": Liveness.OK,
            "liveness_from": at,
            "sweep_at": liveness.deadline(at, current.heartbeat_interval_s, Liveness.LATE),
        }
    )
    score = float(current.health.get("score", 100.0))
    if score < RELEASED_SCORE:
        changes["health"] = {**current.health, "score": RELEASED_SCORE, "score_at": at.isoformat()}
    eps = episodes.AgentEpisodes.of(current, alerting or AlertingConfig())
    for rule in (episodes.LIVENESS, episodes.SECURITY, "remediation_escalated"):
        eps.resolve(rule, at, f"{current.agent_id} released by {actor}: {reason}")
    changes.update(eps.changes())
    plan.changes = changes
    plan.episodes = eps.writes
    return plan, released or ["frozen"]
