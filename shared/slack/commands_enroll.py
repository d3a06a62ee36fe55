"""``/fleet enroll [agent-id|prefix*] [uses] [expiry] [tenant=<tenant>]``: an approver or admin of a tenant
makes an enrollment token (shared.services.enrollment, as the REST API and fleetctl do).

The token is in the asker's ephemeral answer only: never posted to the channel, never in the audit entry
(which names the token's id), never in the reply kept for Slack's retries of the request (a retry says it
was shown once). Refusals are audited by the dispatcher (shared/slack/commands.py) like every command's.
"""

from __future__ import annotations

import re

from shared.domain import enrollment as domain
from shared.domain import slash
from shared.domain.notices import escape
from shared.domain.roles import Action
from shared.services import enrollment
from shared.slack.command_context import Asker, Refusal, Reply, pick_tenant, require, valid_id, when
from shared.store import agents as agent_store

_DURATION = re.compile(r"^(?:\d{1,3}d)?(?:\d{1,4}h)?(?:\d{1,5}m)?$")
_PREFIX = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_MAX_USES = 1000


def _enroll(asker: Asker, parsed: slash.Parsed) -> Reply:
    words = list(parsed.args)
    named = next((w.split("=", 1)[1] for w in words if w.lower().startswith("tenant=")), None)
    words = [w for w in words if not w.lower().startswith("tenant=")]
    agent_id = prefix = None
    if words and not words[0].isdigit() and not _DURATION.match(words[0].lower()):
        scope = words.pop(0)
        if scope.endswith("*"):
            prefix = scope[:-1]
            if not _PREFIX.match(prefix):
                raise slash.Usage(f"`{escape(scope[:40])}` is no id prefix: a-z, 0-9, - and _ then *", parsed.spec)
        elif valid_id(scope):
            agent_id = scope
        else:
            raise slash.Usage(f"`{escape(scope[:40])}` is neither an agent id nor a prefix ending in *", parsed.spec)
    uses = 1
    if words and words[0].isdigit():
        uses = int(words.pop(0))
        if not 1 <= uses <= _MAX_USES:
            raise slash.Usage(f"a token allows from 1 to {_MAX_USES} uses here", parsed.spec)
    ttl = domain.DEFAULT_TOKEN_TTL
    if words:
        try:
            ttl = slash.duration(words.pop(0))
        except slash.Usage:
            raise slash.Usage("an expiry is a duration from 1m to 30d, e.g. 7d or 12h", parsed.spec) from None
    if words:
        raise slash.Usage(f"unexpected `{escape(words[0][:40])}`: `/fleet {parsed.spec.usage}`", parsed.spec)
    tenant = _tenant(asker, agent_id, named)
    require(asker, tenant, Action.ENROLL)
    made = enrollment.create(
        tenant,
        asker.operator(),
        asker.now,
        label=f"slack {asker.user_name or asker.user_id}"[:200],
        agent_id=agent_id,
        agent_prefix=prefix,
        max_uses=uses,
        ttl=ttl,
    )
    token = made.token
    scope_text = domain.scope_text(token)
    return Reply(
        f"🔑 Enrollment token `{token.token_id}` for {scope_text} in {tenant}: {uses} use(s), expires "
        f"{when(token.expires_at)}. Shown only to you, and only now:",
        (
            "The agent enrolls with it on its first start: `FleetAgent(..., enrollment_token=...)` or "
            "`fleet-agent enroll`.",
            f"Revoke it with `fleetctl enroll revoke --tenant {tenant} {token.token_id}` or the API.",
        ),
        outcome="applied",
        target=f"enrollment_token.{token.token_id}",
        tenant=tenant,
        secret=made.text,
        secret_gone=f"(the token was shown once, in the first answer; if it was lost, revoke `{token.token_id}` "
        "and make another)",
    )


def _tenant(asker: Asker, agent_id: str | None, named: str | None) -> str:
    """The tenant named, else the tenant of the agent named when it exists already, else the asker's one."""
    if named is not None and not valid_id(named):
        raise Refusal(f"you have no role in tenant `{escape(named[:64])}`")
    record = agent_store.get(agent_id) if agent_id is not None else None
    if record is not None and asker.role(record.tenant) is not None:
        if named is not None and named != record.tenant:
            raise Refusal(f"agent `{record.agent_id}` belongs to tenant {record.tenant}, not {named}")
        return record.tenant
    return pick_tenant(asker, named)


#: The subcommands of this family, by name (shared/slack/commands.py dispatches on them).
COMMANDS = {
    "enroll": _enroll,
}
