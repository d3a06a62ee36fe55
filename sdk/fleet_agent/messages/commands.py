"""What passes between the fleet and an agent about control: the commands the fleet sends (pause,
budget, breaker, quarantine, an approval's decision, and the remediation commands restart, stop, drain,
throttle, clear_cache, resume_work), the agent's acknowledgements of those, and the approval requests an
agent sends."""

from __future__ import annotations

from decimal import Decimal
from enum import StrEnum
from typing import Annotated

from pydantic import AwareDatetime, Field, StringConstraints, model_validator

from fleet_agent.messages.fields import AgentId, CallId, Label, LimitUsd, ShortText, Strict
from fleet_agent.messages.leases import LeaseGrant


class CommandType(StrEnum):
    """What the fleet tells an agent on ``agent-commands``."""

    PAUSE = "pause"
    RESUME = "resume"
    BUDGET_EXHAUSTED = "budget_exhausted"
    BUDGET_RESTORED = "budget_restored"
    BREAKER_OPEN = "breaker_open"
    BREAKER_CLOSED = "breaker_closed"
    QUARANTINE = "quarantine"
    RELEASE = "release"
    #: The answer to an agent's :class:`ApprovalRequest` (``request_id``, ``approval_id``, ``approved``).
    APPROVAL_DECIDED = "approval_decided"
    #: The fleet has made ``key_id`` (a rotation's new key) the agent's current key: the agent switches to it.
    KEY_ROTATED = "key_rotated"
    #: A budget lease (``lease``): spend the agent may use without asking, until ``until``.
    LEASE = "lease"
    # Remediation commands (issue 23). Sent only to agents whose registration lists
    # ``COMMANDS_V2`` in ``supports``: an older SDK refuses a command type it does not know.
    #: Restart the agent's process: its handler, else stop heartbeating and exit cleanly by ``deadline``.
    RESTART = "restart"
    #: Stop gracefully: finish or abandon work, then exit by ``deadline``; the agent does not come back.
    STOP = "stop"
    #: Finish current work and take no new tasks (until ``resume_work``).
    DRAIN = "drain"
    #: At most ``calls_per_minute`` model calls a minute, enforced by the SDK itself, until ``until``.
    THROTTLE = "throttle"
    #: Drop the agent's caches (its handler; an agent without one answers ``failed``).
    CLEAR_CACHE = "clear_cache"
    #: Take tasks again after ``drain``, and lift a ``throttle``.
    RESUME_WORK = "resume_work"


#: Commands after which the agent must not call its model, and the ones that lift each of them.
BLOCKING_COMMANDS: dict[CommandType, CommandType] = {
    CommandType.PAUSE: CommandType.RESUME,
    CommandType.BUDGET_EXHAUSTED: CommandType.BUDGET_RESTORED,
    CommandType.BREAKER_OPEN: CommandType.BREAKER_CLOSED,
    CommandType.QUARANTINE: CommandType.RELEASE,
}


#: Commands the agent acknowledges (:class:`CommandAck`): the fleet tracks each as sent, acknowledged,
#: done or failed, re-sends one not acknowledged by its deadline, then opens an episode.
ACKED_COMMANDS: frozenset[CommandType] = frozenset(
    {
        CommandType.RESTART,
        CommandType.STOP,
        CommandType.DRAIN,
        CommandType.THROTTLE,
        CommandType.CLEAR_CACHE,
        CommandType.RESUME_WORK,
    }
)

#: What a registration's ``supports`` lists when the SDK understands the remediation commands and acks.
COMMANDS_V2 = "commands.v2"


class Command(Strict):
    """A command to one agent (attribute ``agent_id``; the emulator does not filter, the SDK does)."""

    agent_id: AgentId
    command: CommandType
    reason: Annotated[str, StringConstraints(max_length=500)] = ""
    issued_at: AwareDatetime
    command_id: CallId
    #: When the block lifts by itself: the budget period's reset for ``budget_exhausted``, the end of
    #: the cooldown for ``breaker_open`` (the SDK then lets trial calls through: half-open).
    until: AwareDatetime | None = None
    #: ``approval_decided`` only: which request, the approval's id, and the decision (an expired
    #: request is answered ``approved=False`` with the reason ``expired``).
    request_id: CallId | None = None
    approval_id: Annotated[str, StringConstraints(max_length=128)] | None = None
    approved: bool | None = None
    #: ``key_rotated`` only: the id of the key the fleet now holds current for the agent.
    key_id: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{16}$")] | None = None
    #: ``lease`` only: the grant (its ``expires_at`` is also the command's ``until``).
    lease: LeaseGrant | None = None
    #: Remediation commands (:data:`ACKED_COMMANDS`): when the agent must have carried it out. ``stop`` and
    #: ``restart`` without a handler exit the process then at the latest; the fleet re-sends a command not
    #: acknowledged by then.
    deadline: AwareDatetime | None = None
    #: ``throttle`` only: the cap on model calls per minute (0 refuses every call) until ``until``.
    calls_per_minute: int | None = Field(default=None, ge=0, le=1_000_000)


class AckState(StrEnum):
    """How far an agent got with a command (:class:`CommandAck`)."""

    #: Received and accepted: the agent is on it (``stop``/``restart``: it will exit by the deadline).
    ACKNOWLEDGED = "acknowledged"
    #: Carried out (for ``restart``: sent just before the process exits; the next registration shows it back).
    DONE = "done"
    #: Could not be carried out (``detail`` says why: no handler, the handler raised).
    FAILED = "failed"


class CommandAck(Strict):
    """An agent's acknowledgement of a command (topic ``agent-command-acks``), signed like its other events.

    One command may be acknowledged more than once (``acknowledged`` then ``done``); the fleet keeps the
    furthest state, so redelivery and reordering change nothing."""

    agent_id: AgentId
    command_id: CallId
    command: CommandType
    state: AckState
    detail: Annotated[str, StringConstraints(max_length=500)] = ""
    sent_at: AwareDatetime


class ApprovalKind(StrEnum):
    """What an agent may ask a human for (the server has more kinds: release, training)."""

    #: Pre-approval of an expensive operation: nothing changes on approval, the agent goes ahead.
    OPERATION = "operation"
    #: A higher hard limit for one budget period of the agent (applied on approval).
    BUDGET_RAISE = "budget_raise"


class BudgetPeriod(StrEnum):
    HOURLY = "hourly"
    DAILY = "daily"
    MONTHLY = "monthly"


#: Shortest and longest time a request waits for a decision before it is denied as expired.
MIN_APPROVAL_EXPIRY_S = 60
MAX_APPROVAL_EXPIRY_S = 7 * 86_400


class ApprovalRequest(Strict):
    """An agent asks a human (an approver of its tenant, in Slack) before doing something.

    ``request_id`` is chosen by the agent and makes the request idempotent: publishing it twice
    creates one approval. The decision comes back on ``agent-commands`` as ``approval_decided``.
    """

    agent_id: AgentId
    request_id: CallId
    kind: ApprovalKind = ApprovalKind.OPERATION
    #: What the agent wants to do, in a few words ("re-embed the 40k-document corpus").
    operation: ShortText
    #: Why, for the approver.
    reason: Annotated[str, StringConstraints(max_length=1000, strip_whitespace=True)] = ""
    estimated_cost_usd: Annotated[Decimal, Field(ge=0, le=Decimal("1000000000"), decimal_places=9)] | None = None
    expires_in_s: int = Field(default=3600, ge=MIN_APPROVAL_EXPIRY_S, le=MAX_APPROVAL_EXPIRY_S)
    requested_at: AwareDatetime
    #: ``budget_raise`` only: the period and its new hard limit in USD.
    budget_period: BudgetPeriod | None = None
    budget_usd: LimitUsd | None = None
    details: dict[Label, Annotated[str, StringConstraints(max_length=200)]] = Field(default_factory=dict, max_length=16)

    @model_validator(mode="after")
    def _budget_fields(self) -> ApprovalRequest:
        raise_fields = (self.budget_period, self.budget_usd)
        if self.kind is ApprovalKind.BUDGET_RAISE and None in raise_fields:
            raise ValueError("a budget_raise names budget_period and budget_usd")
        if self.kind is not ApprovalKind.BUDGET_RAISE and raise_fields != (None, None):
            raise ValueError("budget_period and budget_usd belong to a budget_raise")
        return self
