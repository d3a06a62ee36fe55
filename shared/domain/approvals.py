"""Approvals: one mechanism for every decision that needs a human, decided once, by four eyes.

A request (who asked, what, why, estimated cost, expiry) is stored, posted with Approve and Deny
buttons to the tenant's approvals channel, and decided once: by an approver of its tenant who is not
the requester (nor the owner of the requesting agent). A second click, or a click after the expiry,
changes nothing and says why; an expired request is denied by the minute job. What approval does
depends on the kind (``EFFECTS`` in shared/pipeline/fleet_actions.py): nothing for an operation's pre-approval
(the agent goes ahead), a new budget limit for a budget raise, a release for a frozen or quarantined
agent. Pure: the store and the Slack side live in shared/store/approvals.py and shared/services/approvals.py.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from shared.domain import roles
from shared.domain.api_keys import Role
from shared.domain.notices import escape

#: Decided and expired approvals are kept this long (Firestore TTL on ``expire_at``), then the audit
#: log is their record.
RETENTION = timedelta(days=400)
MAX_EXPIRY = timedelta(days=7)
#: The minute job posts a request still unposted this long after it was made (the request's own post
#: failed), and finishes a decision still unfinished this long after it was made (its work item was
#: lost): never sooner, so it does not race the first attempt.
GRACE = timedelta(minutes=1)
#: After Slack refused a post for good (no such channel, bot not in it), try again this much later.
REFUSED_RETRY = timedelta(minutes=15)
EXPIRED = "Nobody decided in time: denied, nothing was done."


class Kind(StrEnum):
    #: An agent's pre-approval of an expensive operation: approval lets it go ahead, nothing else.
    OPERATION = "operation"
    #: A new hard limit for one period of an agent's budget, applied on approval.
    BUDGET_RAISE = "budget_raise"
    #: Release of a frozen or quarantined agent.
    RELEASE = "release"
    #: A training job whose estimate is above its tenant's threshold (shared/training/submit.py).
    TRAINING = "training"
    #: A remediation policy's ``stop`` of a critical agent (shared/services/remediation.py): sent on approval.
    REMEDIATION = "remediation"
    #: A destructive bulk action (quarantine, decommission) on the agents listed (shared/services/bulk.py).
    BULK = "bulk"


class State(StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    DENIED = "denied"
    EXPIRED = "expired"


class Requester(BaseModel):
    """Who asked: a Slack user (``U…``), an agent (decided for by its owner's colleagues), or an API key."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: str = Field(pattern=r"^(slack|agent|api)$")
    id: str = Field(min_length=1, max_length=200)
    #: The requesting agent's owner (from its registration), who may not approve either.
    owner: str | None = None

    def label(self) -> str:
        if self.kind == "slack":
            return f"<@{self.id}>"
        if self.kind == "agent":
            return f"agent `{self.id}`" + (f" (owner {escape(self.owner)})" if self.owner else "")
        return f"API key {self.id}"


class Approval(BaseModel):
    """One request and, once decided, its decision."""

    model_config = ConfigDict(extra="ignore")

    id: str
    tenant: str
    kind: Kind
    agent_id: str | None = None
    requester: Requester
    #: What is asked for, in a few words; ``reason`` says why.
    summary: str
    reason: str = ""
    estimated_cost_usd: Decimal | None = None
    #: Kind-specific: the budget period and limit of a raise, the agent's request id, a job's id...
    payload: dict[str, Any] = Field(default_factory=dict)
    created_at: datetime
    expires_at: datetime
    state: State = State.PENDING
    decided_by: str | None = None
    decided_at: datetime | None = None
    note: str = ""
    #: The Slack message that carries the buttons (``channel``, ``ts``), once posted.
    message: dict[str, str] | None = None
    #: What applying the decision did (its effect), once done; None while pending or not yet applied.
    applied: str | None = None
    #: When the minute job posts it if it is still unposted; why Slack refused the last post.
    post_due_at: datetime | None = None
    post_error: str | None = None
    #: When carrying out the decision finished (requester answered, message edited).
    done_at: datetime | None = None

    def expired(self, now: datetime) -> bool:
        return self.state is State.PENDING and now >= self.expires_at


def approval_id(*parts: str) -> str:
    """A deterministic id from what makes a request unique (an agent's request id, a Slack trigger),
    so a redelivered or retried request creates the same approval once."""
    return "apr-" + hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:20]


@dataclass(frozen=True)
class Decision:
    """The outcome of a click: ``approval`` is the decided request to write, or ``refusal`` says why
    nothing changes (``code`` is stable for the audit and tests)."""

    approval: Approval | None = None
    refusal: str | None = None
    code: str = "decided"


_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


def owner_is_email(requester: Requester) -> bool:
    """The requesting agent's owner is an e-mail address: the clicker's own address must be looked up
    (Slack ``users.info``) before four eyes can be judged."""
    return bool(requester.owner and _EMAIL.match(requester.owner.strip()))


def _same_person(actor: str, actor_names: tuple[str, ...], requester: Requester) -> bool:
    """The actor is the requester, or the owner of the requesting agent (matched on Slack id or name)."""
    mine = {actor.lower(), *(n.lower().lstrip("@") for n in actor_names if n)}
    theirs = {requester.id.lower()} if requester.kind == "slack" else set()
    if requester.owner:
        theirs.add(requester.owner.lower().lstrip("@"))
    return bool(mine & theirs)


def decide(
    approval: Approval,
    *,
    actor: str,
    actor_names: tuple[str, ...] = (),
    role: Role | None,
    approve: bool,
    now: datetime,
    note: str = "",
) -> Decision:
    """Decide ``approval`` for Slack user ``actor`` (whose role in the approval's tenant is ``role``).

    Refused, with the reason said back to the clicker: already decided (by whom, when), expired, not
    an approver of the tenant, or the requester approving their own request (four eyes). The Slack
    user who asked may always deny it (a withdrawal needs no second pair of eyes, nor the role).
    """
    if approval.state is not State.PENDING:
        by = f" by <@{approval.decided_by}>" if approval.decided_by else ""
        when = f" at {approval.decided_at:%Y-%m-%d %H:%M} UTC" if approval.decided_at else ""
        return Decision(refusal=f"this request was already {approval.state.value}{by}{when}", code="already_decided")
    if approval.expired(now):
        return Decision(refusal=f"this request expired at {approval.expires_at:%Y-%m-%d %H:%M} UTC", code="expired")
    withdrawal = not approve and requester_is(actor, approval.requester)
    if not withdrawal and not roles.allows(role, roles.Action.DECIDE):
        have = f"your role in {approval.tenant} is {role.value}" if role else f"you have no role in {approval.tenant}"
        return Decision(refusal=f"only approvers of {approval.tenant} decide requests; {have}", code="not_approver")
    if approve and _same_person(actor, actor_names, approval.requester):
        return Decision(refusal="you asked for this: someone else must approve it (four eyes)", code="four_eyes")
    decided = approval.model_copy(
        update={
            "state": State.APPROVED if approve else State.DENIED,
            "decided_by": actor,
            "decided_at": now,
            "note": note,
        }
    )
    return Decision(approval=decided)


def requester_is(actor: str, requester: Requester) -> bool:
    """The Slack user who asked: they may always withdraw (deny) their own request."""
    return requester.kind == "slack" and requester.id == actor


def expire(approval: Approval, now: datetime) -> Approval | None:
    """The request denied as expired, or None when it is decided or not yet due."""
    if not approval.expired(now):
        return None
    return approval.model_copy(
        update={"state": State.EXPIRED, "decided_at": now, "note": "expired", "applied": EXPIRED, "post_due_at": None}
    )


def to_doc(approval: Approval) -> dict[str, Any]:
    """The stored form: decimals as text (exact), the sweep's index fields, and the TTL."""
    doc = approval.model_dump(mode="python")
    doc["kind"] = approval.kind.value
    doc["state"] = approval.state.value
    doc["requester"] = approval.requester.model_dump()
    if approval.estimated_cost_usd is not None:
        doc["estimated_cost_usd"] = format(approval.estimated_cost_usd, "f")
    # Queried by the minute job: pending requests past their expiry, pending ones still unposted, and
    # decisions not carried out to the end (a lost work item).
    pending = approval.state is State.PENDING
    doc["pending_until"] = approval.expires_at if pending else None
    doc["post_due_at"] = approval.post_due_at if pending and approval.message is None else None
    unfinished = not pending and approval.done_at is None
    doc["followup_due_at"] = (approval.decided_at or approval.created_at) + GRACE if unfinished else None
    doc["expire_at"] = (approval.decided_at or approval.expires_at) + RETENTION
    return doc


def from_doc(data: dict[str, Any]) -> Approval:
    return Approval.model_validate(data)
