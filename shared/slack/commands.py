"""``/fleet`` in Slack: each subcommand checks the user's role in the tenant it touches, does its work
through the same code as the REST API (shared.services.agent_controls, shared.services.approvals,
the stores), and answers in a few lines of Block Kit. Every command, and every refusal, is audited.

The reply is the slash command's immediate answer (``ack``), so it is shown within Slack's 3
seconds; nothing here waits on more than a handful of Firestore reads and one conditional write.
A command that changes something claims its Slack request first (shared/store/slack_requests.py):
Slack's retry of it gets the first reply back and changes nothing.

This module is the dispatcher; the subcommands live by family beside it: commands_fleet.py (help,
status, agents, usage), commands_agents.py (budget, pause, resume, quarantine, release, approvals),
commands_alerts.py (alerts, silence), commands_roles.py (roles), commands_jobs.py (train, jobs, job,
cancel), commands_enroll.py (enroll); what they share (the asker, the reply, resolving names) is
command_context.py.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from typing import Any

from shared.domain import slash
from shared.platform import logs
from shared.services import agent_controls
from shared.slack import (
    commands_agents,
    commands_alerts,
    commands_enroll,
    commands_fleet,
    commands_jobs,
    commands_roles,
)
from shared.slack.command_context import Asker, Refusal, Reply, audit
from shared.store import roles as role_store
from shared.store import slack_requests

log = logs.get_logger("slack.commands")


def run(payload: dict[str, Any], now: datetime) -> dict[str, Any]:
    """Answer one ``/fleet`` request (Slack's form fields as a dict); never raises for user errors.
    Usage lines name the command as the workspace registered it (``FLEET_SLASH_COMMAND``)."""
    return _named(_run(payload, now), str(payload.get("command") or slash.COMMAND))


def _named(reply: dict[str, Any], command: str) -> dict[str, Any]:
    if command == slash.COMMAND:
        return reply
    return dict(json.loads(json.dumps(reply).replace(f"{slash.COMMAND} ", f"{command} ")))


def _run(payload: dict[str, Any], now: datetime) -> dict[str, Any]:
    text = str(payload.get("text") or "")
    user_id = str(payload.get("user_id") or "")
    request_id = str(payload.get("trigger_id") or "") or _fallback_id(payload)
    asker = Asker(
        user_id, str(payload.get("user_name") or ""), now, request_id, channel_id=str(payload.get("channel_id") or "")
    )
    try:
        parsed = slash.parse(text)
    except slash.Usage as usage:
        reply = _usage(usage)
        audit(asker, "slack.command", "", None, "usage", text=text[:200], reason=str(usage))
        return reply.payload()
    key = f"cmd.{request_id}"
    if parsed.spec.mutates:
        claim = slack_requests.begin(key, now)
        if claim.state == "done" and claim.reply is not None:
            return claim.reply
        if claim.state != "new":
            return Reply("⏳ Still working on this command; its result will show here shortly.").payload()
    asker.roles = role_store.of_user(user_id)
    try:
        reply = COMMANDS[parsed.name](asker, parsed)
    except slash.Usage as usage:
        reply = _usage(usage, parsed.spec)
    except Refusal as refusal:
        reply = Reply(f"🚫 {refusal}", outcome="refused", target=refusal.target, tenant=refusal.tenant)
    except agent_controls.Refused as refused:
        target, tenant = asker.subject
        outcome = "refused" if refused.status == 403 else "failed"
        reply = Reply(f"Nothing changed: {refused.reason}.", outcome=outcome, target=target, tenant=tenant)
    except Exception:
        if parsed.spec.mutates:
            slack_requests.abandon(key)  # Slack's retry acts again instead of waiting out the claim
        raise
    audit(
        asker,
        f"slack.{parsed.name}",
        reply.target,
        reply.tenant,
        reply.outcome,
        text=text[:200],
        reply=reply.text[:300],
    )
    if parsed.spec.mutates:
        slack_requests.finish(key, reply.kept())  # never a secret: a retry says it was shown once
    return reply.payload()


def _fallback_id(payload: dict[str, Any]) -> str:
    """Without a trigger id (never from Slack itself): a hash of who said what, so retries still match."""
    raw = "|".join(str(payload.get(k) or "") for k in ("team_id", "user_id", "channel_id", "text", "response_url"))
    return hashlib.sha256(raw.encode()).hexdigest()[:32]


def _usage(usage: slash.Usage, spec: slash.Spec | None = None) -> Reply:
    spec = spec or usage.spec
    lines = (f"`/fleet {spec.usage}`",) if spec else tuple(slash.help_lines())
    return Reply(f"🤔 {usage}", lines, outcome="usage")


#: Every subcommand by name (the grammar is shared/domain/slash.py).
COMMANDS = {
    **commands_fleet.COMMANDS,
    **commands_agents.COMMANDS,
    **commands_alerts.COMMANDS,
    **commands_roles.COMMANDS,
    **commands_jobs.COMMANDS,
    **commands_enroll.COMMANDS,
}

__all__ = ["COMMANDS", "Asker", "Reply", "run"]
