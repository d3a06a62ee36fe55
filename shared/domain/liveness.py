"""The liveness ladder: late, offline, frozen, by missed heartbeat intervals of each agent's own interval.

Every accepted heartbeat (and registration) sets the agent's ``sweep_at``: when it will be late.
The sweep queries ``sweep_at <= now`` only, so its reads grow with the late agents, not the fleet;
each step moves ``sweep_at`` to the next rung (or clears it), so an agent is read once per rung.

    3 missed intervals   late      a warning episode opens ("liveness")
    5 missed             offline   the episode escalates (high); a heartbeat brings the agent back
    10 missed            frozen    critical; sticky until an approver releases it

Steps are computed on the agent document and written with a precondition (shared/store/agents.py):
two sweeps running at once make one transition and one notice.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from shared.domain import episodes, lifecycle
from shared.domain.agent_record import AgentRecord, Liveness, Plan, status_change
from shared.domain.alerts import Severity
from shared.domain.audit import AuditEntry
from shared.domain.lifecycle import Cause, Outcome, State

#: Missed intervals at which each rung is reached.
RUNGS: dict[Liveness, int] = {Liveness.LATE: 3, Liveness.OFFLINE: 5, Liveness.FROZEN: 10}
ORDER = [Liveness.OK, Liveness.LATE, Liveness.OFFLINE, Liveness.FROZEN]
SEVERITY = {Liveness.LATE: Severity.WARNING, Liveness.OFFLINE: Severity.HIGH, Liveness.FROZEN: Severity.CRITICAL}
#: States in which silence is expected or irrelevant: no sweep.
_NOT_WATCHED = frozenset({State.DECOMMISSIONING, State.DECOMMISSIONED})


def rung_for(missed: int) -> Liveness:
    reached = Liveness.OK
    for rung, at in RUNGS.items():
        if missed >= at:
            reached = rung
    return reached


def next_rung(current: Liveness) -> Liveness | None:
    position = ORDER.index(current)
    return ORDER[position + 1] if position + 1 < len(ORDER) else None


def silent_since(record: AgentRecord) -> datetime:
    """What the ladder counts from: the last heartbeat (or registration), or the end of a
    maintenance window or a release, whichever is later."""
    signs = [record.last_registered_at, record.last_heartbeat_at, record.liveness_from]
    return max(t for t in signs if t is not None)


def deadline(since: datetime, interval_s: int, rung: Liveness) -> datetime:
    return since + timedelta(seconds=RUNGS[rung] * interval_s)


def watched(record: AgentRecord) -> bool:
    # Lifecycle maintenance is an operator's statement that silence is expected (like a window).
    if record.status in _NOT_WATCHED or record.status is State.MAINTENANCE:
        return False
    # An agent that said it was stopping is expected to be silent (a registration watches it again).
    return not (record.status is State.OFFLINE and record.status_cause == Cause.HEARTBEAT.value)


def after_heartbeat(record: AgentRecord, last_seen: datetime, interval_s: int | None = None) -> dict[str, Any]:
    """Fields a heartbeat (or registration, with its new ``interval_s``) sets: the next deadline and,
    after a silence, ``ok``."""
    interval = interval_s or record.heartbeat_interval_s
    changes: dict[str, Any] = {"sweep_at": deadline(last_seen, interval, Liveness.LATE)}
    if record.liveness is Liveness.FROZEN:
        changes["sweep_at"] = None  # frozen is sticky: the ladder resumes after a release
    elif record.liveness is not Liveness.OK:
        changes["liveness"] = Liveness.OK
    if record.liveness_from is not None and record.liveness is not Liveness.FROZEN:
        changes["liveness_from"] = None
    return changes


def step(
    record: AgentRecord,
    now: datetime,
    *,
    config: episodes.AlertingConfig,
    maintenance_until: datetime | None = None,
) -> Plan:
    """What one sweep does to one agent whose ``sweep_at`` has passed."""
    if record.sweep_at is None or record.sweep_at > now:
        return Plan(skipped="not_due")  # a heartbeat (or another sweep) got there first
    if not watched(record):
        return Plan(changes={"sweep_at": None})
    if maintenance_until is not None and maintenance_until > now:
        # Maintenance: no rung is climbed; counting starts again when the window ends.
        return Plan(
            changes={
                "liveness_from": maintenance_until,
                "sweep_at": deadline(maintenance_until, record.heartbeat_interval_s, Liveness.LATE),
            }
        )
    since = silent_since(record)
    interval = record.heartbeat_interval_s
    missed = int((now - since).total_seconds() // interval)
    reached = rung_for(missed)
    current = record.liveness
    changes: dict[str, Any] = {}
    plan = Plan(changes=changes)
    following = next_rung(max(current, reached, key=ORDER.index))
    changes["sweep_at"] = deadline(since, interval, following) if following else None
    if ORDER.index(reached) <= ORDER.index(current):
        return plan
    changes["liveness"] = reached
    eps = episodes.AgentEpisodes.of(record, config)
    silent_for = describe(now - since)
    summary = (
        f"{record.agent_id} ({record.tenant}) silent for {silent_for} "
        f"({missed} intervals of {interval}s): {reached.value}"
    )
    details = {"missed_intervals": missed, "last_seen": since.isoformat(), "liveness": reached.value}
    # The sweep is already one window: its notices need no group wait.
    if not eps.open_(episodes.LIVENESS, SEVERITY[reached], now, summary, details, wait=False):
        eps.escalate(episodes.LIVENESS, SEVERITY[reached], now, summary)
    changes.update(eps.changes())
    plan.episodes = eps.writes
    target = {Liveness.OFFLINE: State.OFFLINE, Liveness.FROZEN: State.FROZEN}.get(reached)
    # A sticky state (suspended, quarantined...) stays: the ladder is recorded in ``liveness`` only.
    if target is not None and record.status not in lifecycle.STICKY:
        decision = lifecycle.decide(record.status, target, Cause.SYSTEM)
        plan.transition = decision
        if decision.outcome is Outcome.APPLIED:
            changes.update(status_change(record, target, now, Cause.SYSTEM, f"no heartbeat for {silent_for}"))
        if decision.outcome is not Outcome.UNCHANGED:
            plan.audit.append(
                AuditEntry(
                    id=f"{record.agent_id}.liveness.{since:%Y%m%dT%H%M%S}.{reached.value}",
                    at=now,
                    actor="system:liveness-sweep",
                    action="agent.liveness",
                    target=record.agent_id,
                    outcome=decision.outcome.value,
                    tenant=record.tenant,
                    details={"from": record.status.value, "to": target.value, "missed_intervals": missed},
                )
            )
    return plan


def describe(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}m"
