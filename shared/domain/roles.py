"""Who may do what in Slack: Slack users mapped to a role per tenant.

The same four roles as API keys (shared/domain/api_keys.py), each including the ones below it:
viewer (reads), operator (pause, resume, quarantine, silence, acknowledge), approver (decide
approvals, release), admin (roles, budgets). The map of a tenant is one field of its document
(``tenants/{tenant}.roles``: Slack user id -> role), managed with ``PUT /v1/tenants/{t}/roles`` or
``/fleet roles`` by the tenant's admins; each user's roles across tenants are mirrored in
``slack_users/{user}`` so a command costs one read to authorise.
"""

from __future__ import annotations

import re
from enum import StrEnum

from shared.domain.api_keys import Role

__all__ = ["NEEDS", "Action", "Role", "parse_user", "role_of"]

#: Slack user ids: U… or W… (Enterprise Grid), upper-case letters and digits.
USER_ID = re.compile(r"^[UW][A-Z0-9]{2,20}$")
#: A mention as Slack escapes it in a slash command's text: ``<@U123ABC>`` or ``<@U123ABC|name>``.
_MENTION = re.compile(r"^<@([UW][A-Z0-9]{2,20})(?:\|[^>]*)?>$")
#: Largest role map of one tenant (one Firestore field; well under the 1 MiB document limit).
MAX_USERS = 2000


class Action(StrEnum):
    READ = "read"
    PAUSE = "pause"
    RESUME = "resume"
    QUARANTINE = "quarantine"
    SILENCE = "silence"
    ACKNOWLEDGE = "acknowledge"
    REQUEST = "request"
    DECIDE = "decide"
    RELEASE = "release"
    BUDGET = "budget"
    ROLES = "roles"
    #: Submit or cancel a training job (above the threshold an approver still decides).
    TRAIN = "train"
    #: Create an enrollment token (what lets an agent bind its first key).
    ENROLL = "enroll"


#: The least role each action needs.
NEEDS: dict[Action, Role] = {
    Action.READ: Role.VIEWER,
    Action.PAUSE: Role.OPERATOR,
    Action.RESUME: Role.OPERATOR,
    Action.QUARANTINE: Role.OPERATOR,
    Action.SILENCE: Role.OPERATOR,
    Action.ACKNOWLEDGE: Role.OPERATOR,
    Action.REQUEST: Role.OPERATOR,
    Action.DECIDE: Role.APPROVER,
    Action.RELEASE: Role.APPROVER,
    Action.BUDGET: Role.ADMIN,
    Action.ROLES: Role.ADMIN,
    Action.TRAIN: Role.OPERATOR,
    Action.ENROLL: Role.APPROVER,
}


def parse_user(text: str) -> str | None:
    """A Slack user id from ``<@U123|name>``, ``<@U123>`` or ``U123``; None otherwise."""
    text = text.strip()
    match = _MENTION.match(text)
    if match:
        return match.group(1)
    return text if USER_ID.match(text) else None


def role_of(roles: dict[str, str], tenant: str) -> Role | None:
    """The role a user's map (tenant -> role) gives in ``tenant``; None: no role there."""
    value = roles.get(tenant)
    try:
        role = Role(value) if value else None
    except ValueError:
        return None
    return None if role is Role.SCRAPE else role  # an API key's role (GET /metrics), never a person's


def allows(role: Role | None, action: Action) -> bool:
    return role is not None and role.allows(NEEDS[action])


def refusal(role: Role | None, action: Action, tenant: str) -> str:
    """What a user without the role is told."""
    need = NEEDS[action].value
    have = f"your role there is {role.value}" if role else "you have no role there"
    return f"you need the {need} role in {tenant} to {action.value}; {have} (ask an admin of {tenant})"
