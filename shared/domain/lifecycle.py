"""The agent lifecycle: states, the allowed transitions (as data, in this one place), and stickiness."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from fleet_agent.contracts import ReportedStatus


class State(StrEnum):
    REGISTERED = "registered"
    PROVISIONING = "provisioning"
    ACTIVE = "active"
    IDLE = "idle"
    BUSY = "busy"
    DEGRADED = "degraded"
    MAINTENANCE = "maintenance"
    QUARANTINED = "quarantined"
    COMPROMISED = "compromised"
    OFFLINE = "offline"
    SUSPENDED = "suspended"
    FROZEN = "frozen"
    DECOMMISSIONING = "decommissioning"
    DECOMMISSIONED = "decommissioned"


class Cause(StrEnum):
    """Who asks for a transition. Agents' own events cannot lift a sticky state."""

    REGISTRATION = "registration"
    HEARTBEAT = "heartbeat"
    SYSTEM = "system"  # sweeps, budgets, health rules
    OPERATOR = "operator"  # a person, through the API, CLI or Slack


S = State
_RUNNING = frozenset({S.ACTIVE, S.IDLE, S.BUSY, S.DEGRADED})
#: States an operator or the system can put any live agent into.
_IMPOSED = frozenset({S.MAINTENANCE, S.QUARANTINED, S.COMPROMISED, S.SUSPENDED, S.FROZEN, S.DECOMMISSIONING})

#: Allowed transitions: state -> the states it may move to.
TRANSITIONS: dict[State, frozenset[State]] = {
    S.REGISTERED: frozenset({S.PROVISIONING, S.OFFLINE}) | _RUNNING | _IMPOSED,
    S.PROVISIONING: frozenset({S.REGISTERED, S.OFFLINE}) | _RUNNING | _IMPOSED,
    S.ACTIVE: frozenset({S.REGISTERED, S.PROVISIONING, S.OFFLINE}) | _RUNNING | _IMPOSED,
    S.IDLE: frozenset({S.REGISTERED, S.PROVISIONING, S.OFFLINE}) | _RUNNING | _IMPOSED,
    S.BUSY: frozenset({S.REGISTERED, S.PROVISIONING, S.OFFLINE}) | _RUNNING | _IMPOSED,
    S.DEGRADED: frozenset({S.REGISTERED, S.PROVISIONING, S.OFFLINE}) | _RUNNING | _IMPOSED,
    S.OFFLINE: frozenset({S.REGISTERED, S.PROVISIONING}) | _RUNNING | _IMPOSED,
    # Sticky states: left only by an operator (release/resume) or the system that imposed them.
    S.MAINTENANCE: frozenset({S.ACTIVE, S.QUARANTINED, S.COMPROMISED, S.DECOMMISSIONING}),
    S.QUARANTINED: frozenset({S.ACTIVE, S.COMPROMISED, S.FROZEN, S.DECOMMISSIONING}),
    S.COMPROMISED: frozenset({S.QUARANTINED, S.DECOMMISSIONING}),
    S.SUSPENDED: frozenset({S.ACTIVE, S.MAINTENANCE, S.QUARANTINED, S.COMPROMISED, S.FROZEN, S.DECOMMISSIONING}),
    S.FROZEN: frozenset({S.ACTIVE, S.QUARANTINED, S.COMPROMISED, S.DECOMMISSIONING}),
    S.DECOMMISSIONING: frozenset({S.DECOMMISSIONED}),
    S.DECOMMISSIONED: frozenset(),
}

#: States a heartbeat or a registration never lifts.
STICKY: frozenset[State] = frozenset(
    {S.MAINTENANCE, S.QUARANTINED, S.COMPROMISED, S.SUSPENDED, S.FROZEN, S.DECOMMISSIONING, S.DECOMMISSIONED}
)

#: How the agent's own status maps onto the lifecycle.
REPORTED: dict[ReportedStatus, State] = {
    ReportedStatus.STARTING: S.PROVISIONING,
    ReportedStatus.ACTIVE: S.ACTIVE,
    ReportedStatus.IDLE: S.IDLE,
    ReportedStatus.BUSY: S.BUSY,
    ReportedStatus.DEGRADED: S.DEGRADED,
    ReportedStatus.STOPPING: S.OFFLINE,  # a graceful stop; a registration brings it back
}


class Outcome(StrEnum):
    APPLIED = "applied"  # the state changes
    UNCHANGED = "unchanged"  # already there
    HELD = "held"  # a sticky state holds; the agent's event is recorded, the state kept
    ILLEGAL = "illegal"  # not an allowed transition: refused and audited


@dataclass(frozen=True)
class Decision:
    outcome: Outcome
    current: State
    target: State
    reason: str = ""

    @property
    def state(self) -> State:
        """The state after the decision."""
        return self.target if self.outcome is Outcome.APPLIED else self.current


def decide(current: State, target: State, cause: Cause) -> Decision:
    """Whether ``cause`` may move an agent from ``current`` to ``target``."""
    if current == target:
        return Decision(Outcome.UNCHANGED, current, target)
    if current in STICKY and cause in (Cause.HEARTBEAT, Cause.REGISTRATION):
        return Decision(Outcome.HELD, current, target, f"{current} is sticky: only an operator lifts it")
    if target not in TRANSITIONS[current]:
        return Decision(Outcome.ILLEGAL, current, target, f"{current} -> {target} is not an allowed transition")
    return Decision(Outcome.APPLIED, current, target)
