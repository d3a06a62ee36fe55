"""What every ``/fleet`` subcommand works with: who asked (:class:`Asker`), what is answered
(:class:`Reply`), a :class:`Refusal`, the audit entry of each command, and resolving the names a
command gives (an agent, a tenant) against the asker's roles. Used by shared/slack/commands.py and
its families (commands_fleet, commands_agents, commands_alerts, commands_roles, commands_jobs)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from fleet_agent.contracts import AGENT_ID_PATTERN

from shared.domain import roles, slash
from shared.domain.agent_record import AgentRecord
from shared.domain.api_keys import Role
from shared.domain.audit import AuditEntry
from shared.domain.roles import Action
from shared.services import agent_controls
from shared.store import agents as agent_store
from shared.store import audit as audit_store

#: At most this many lines in a listing.
LISTED = 20


class Refusal(Exception):
    """The user may not do this, or it cannot be done: said back, and audited as refused (under the
    tenant and target it was about, when known)."""

    def __init__(self, message: str, *, tenant: str | None = None, target: str = "") -> None:
        super().__init__(message)
        self.tenant = tenant
        self.target = target


@dataclass
class Asker:
    """Who typed the command and what Slack said about the request."""

    user_id: str
    user_name: str
    now: datetime
    #: The request's id for audit and idempotency (the trigger id; a retry carries the same one).
    request_id: str
    roles: dict[str, str] = field(default_factory=dict)
    channel_id: str = ""
    #: The agent (or tenant) the command turned out to be about, and its tenant: for the audit entry
    #: of a refusal raised after it was found.
    subject: tuple[str, str | None] = ("", None)

    @property
    def actor(self) -> str:
        return f"slack:{self.user_id}"

    def operator(self) -> agent_controls.Actor:
        return agent_controls.Actor(self.actor, self.request_id, frozenset(self.roles))

    def role(self, tenant: str) -> Role | None:
        return roles.role_of(self.roles, tenant)


@dataclass(frozen=True)
class Reply:
    """A Block Kit reply; ``public`` ones are shown to the channel (changes), the rest only to the user."""

    text: str
    lines: tuple[str, ...] = ()
    public: bool = False
    outcome: str = "ok"
    target: str = ""
    tenant: str | None = None
    #: Shown once to the asker (an enrollment token): never audited, never kept for Slack's retries.
    secret: str = ""
    #: What a retry of the request shows instead of the secret.
    secret_gone: str = ""

    def payload(self) -> dict[str, Any]:
        return self._payload(self.secret)

    def kept(self) -> dict[str, Any]:
        """The payload as kept for Slack's retries of the request: without the secret."""
        return self._payload("") if not self.secret else self._payload("", self.secret_gone)

    def _payload(self, secret: str, instead: str = "") -> dict[str, Any]:
        blocks: list[dict[str, Any]] = [{"type": "section", "text": {"type": "mrkdwn", "text": self.text[:2900]}}]
        if secret or instead:
            shown = f"```{secret}```" if secret else instead
            blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": shown[:2900]}})
        body = "\n".join(self.lines)
        while body:
            blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": body[:2900]}})
            body = body[2900:]
        return {
            "response_type": "in_channel" if self.public else "ephemeral",
            "text": self.text[:3000],
            "blocks": blocks[:10],
        }


def audit(asker: Asker, action: str, target: str, tenant: str | None, outcome: str, **details: Any) -> None:
    """The audit entry of one command (or refusal), under the Slack request's id."""
    entry = AuditEntry(
        id=f"slack.{asker.request_id}.{action}"[:1400],
        at=asker.now,
        actor=asker.actor,
        action=action,
        target=target,
        outcome=outcome,
        tenant=tenant,
        details={"user_name": asker.user_name, **details},
    )
    audit_store.append(entry)


def require(asker: Asker, tenant: str, action: Action, target: str = "") -> None:
    """Refuse unless the asker's role in ``tenant`` allows ``action``."""
    role = asker.role(tenant)
    if not roles.allows(role, action):
        raise Refusal(roles.refusal(role, action, tenant), tenant=tenant, target=target or f"tenant.{tenant}")


def find_agent(asker: Asker, agent_id: str, action: Action = Action.READ) -> AgentRecord:
    """The agent if the user has a role in its tenant (else "not found": existence is not leaked),
    after checking the role ``action`` needs."""
    record = agent_store.get(agent_id) if valid_id(agent_id) else None
    if record is None or asker.role(record.tenant) is None:
        raise Refusal(f"agent `{agent_id[:64]}` not found among the tenants you have a role in")
    asker.subject = (record.agent_id, record.tenant)
    require(asker, record.tenant, action, record.agent_id)
    return record


def valid_id(value: str) -> bool:
    """Whether ``value`` can be an agent id (so that it is worth looking up)."""
    return re.match(AGENT_ID_PATTERN, value) is not None


def pick_tenant(asker: Asker, given: str | None) -> str:
    """The tenant named, or the user's only tenant."""
    if given is not None:
        if asker.role(given) is None:
            raise Refusal(f"you have no role in tenant `{given[:64]}`")
        return given
    mine = sorted(asker.roles)
    if len(mine) == 1:
        return mine[0]
    if not mine:
        raise Refusal("you have no role in any tenant yet: ask an admin to add you (`/fleet roles`)")
    raise slash.Usage(f"you have roles in several tenants ({', '.join(mine)}): name one")


def pick_tenants(asker: Asker, given: str | None) -> list[str]:
    """The tenant named, or every tenant the user has a role in."""
    if given is not None:
        return [pick_tenant(asker, given)]
    if not asker.roles:
        raise Refusal("you have no role in any tenant yet: ask an admin to add you (`/fleet roles`)")
    return sorted(asker.roles)


def when(at: Any) -> str:
    """A moment as replies write it (``never`` for none)."""
    return f"{at:%Y-%m-%d %H:%M} UTC" if isinstance(at, datetime) else "never"


def said(record: AgentRecord, text: str, outcome: str = "applied") -> Reply:
    """A reply about one agent; a change is shown to the channel, anything else only to the user."""
    return Reply(text, public=outcome == "applied", outcome=outcome, target=record.agent_id, tenant=record.tenant)


def agent_line(record: AgentRecord) -> str:
    """One agent in a listing: id, status, liveness, holds."""
    held = f" · held: {', '.join(sorted(record.holds))}" if record.holds else ""
    return f"`{record.agent_id}` {record.status.value} · liveness {record.liveness}{held}"
