"""``/fleet`` subcommands that change an agent, or ask the tenant's approvers to: ``budget``,
``pause``, ``resume``, ``quarantine``, ``release``; and ``approvals``, the requests pending.
The changes go through shared/services/agent_controls.py, as the REST API's do."""

from __future__ import annotations

from typing import Any

from fleet_agent.contracts import BudgetSpec

from shared.domain import approvals as approval_domain
from shared.domain import budgets, release, roles, slash
from shared.domain.agent_record import AgentRecord
from shared.domain.roles import Action
from shared.services import agent_controls, approvals
from shared.slack.command_context import LISTED, Asker, Reply, find_agent, pick_tenants, require, said, when
from shared.store import approvals as approval_store

_PERIODS = {"hourly", "daily", "monthly"}


def _budget(asker: Asker, parsed: slash.Parsed) -> Reply:
    args = parsed.args
    if len(args) == 1:
        record = find_agent(asker, args[0])
        limits = ", ".join(
            f"{k} {v}" for k, v in sorted((record.budget or {}).items()) if k.endswith(("_usd", "_tokens"))
        )
        source = f" (from {record.budget_source})" if record.budget_source else ""
        return said(record, f"Budget of `{record.agent_id}`: {limits or 'none'}{source}", "ok")
    if len(args) != 4 or args[1].lower() != "set" or args[2].lower() not in _PERIODS:
        raise slash.Usage("write `/fleet budget <agent> set <hourly|daily|monthly> <usd>`", parsed.spec)
    period, usd = args[2].lower(), slash.usd(args[3])
    record = find_agent(asker, args[0])
    if roles.allows(asker.role(record.tenant), Action.BUDGET):
        stored = {**(record.budget or {}), f"{period}_usd": format(usd, "f")}
        try:
            spec = budgets.store(BudgetSpec.model_validate(stored))
        except ValueError as exc:
            raise slash.Usage(f"that budget is invalid: {exc}") from None
        agent_controls.set_agent_budget(record.agent_id, asker.operator(), spec, "agent.budget.set", asker.now)
        return said(
            record,
            f"💰 <@{asker.user_id}> set the {period} budget of `{record.agent_id}` to ${usd:,.2f}.",
        )
    require(asker, record.tenant, Action.REQUEST)
    current = (record.budget or {}).get(f"{period}_usd")
    summary = f"{period} budget of {record.agent_id} from ${current or 'none'} to ${usd}"
    asked = _ask(
        asker,
        record,
        approval_domain.Kind.BUDGET_RAISE,
        summary,
        f"asked in Slack by {asker.user_name or asker.user_id}",
        {"period": period, "usd": format(usd, "f")},
    )
    return said(
        record, f"🙋 Only admins set budgets: asked the approvers of {record.tenant} instead ({asked}).", "requested"
    )


def _ask(
    asker: Asker, record: AgentRecord, kind: approval_domain.Kind, summary: str, reason: str, payload: dict[str, Any]
) -> str:
    """What a user without the role does instead: ask the tenant's approvers. The request's id comes
    from the Slack request (a retry finds it); the agent's owner may not approve it either."""
    approval = approvals.new(
        approval_id=approval_domain.approval_id("slack", asker.request_id),
        tenant=record.tenant,
        kind=kind,
        requester=approval_domain.Requester(kind="slack", id=asker.user_id, owner=record.owner),
        summary=summary,
        now=asker.now,
        agent_id=record.agent_id,
        reason=reason,
        payload=payload,
    )
    stored, _new = approvals.request(approval, asker.now)
    return f"`{stored.id}`"


def _hold(asker: Asker, parsed: slash.Parsed, action: Action) -> Reply:
    """``pause`` and ``quarantine``: place the hold, or say it was there already."""
    record = find_agent(asker, parsed.args[0], action)
    if action is Action.PAUSE:
        reason = parsed.rest or f"paused in Slack by {asker.user_name or asker.user_id}"
        held, changed = agent_controls.pause(record.agent_id, asker.operator(), reason, asker.now)
        done, after = "paused", ""
    else:
        reason = parsed.rest
        held, changed = agent_controls.quarantine(record.agent_id, asker.operator(), reason, asker.now)
        done, after = "quarantined", " An approver releases it (`/fleet release`)."
    if not changed:
        return said(held, f"`{held.agent_id}` was already {done}.", "unchanged")
    return said(held, f"<@{asker.user_id}> {done} `{held.agent_id}`: {reason}.{after}")


def _pause(asker: Asker, parsed: slash.Parsed) -> Reply:
    return _hold(asker, parsed, Action.PAUSE)


def _quarantine(asker: Asker, parsed: slash.Parsed) -> Reply:
    return _hold(asker, parsed, Action.QUARANTINE)


def _resume(asker: Asker, parsed: slash.Parsed) -> Reply:
    record = find_agent(asker, parsed.args[0], Action.RESUME)
    reason = parsed.rest or f"resumed in Slack by {asker.user_name or asker.user_id}"
    resumed = agent_controls.resume(record.agent_id, asker.operator(), reason, asker.now)
    still = f" (still held: {', '.join(sorted(resumed.holds))})" if resumed.holds else ""
    return said(resumed, f"<@{asker.user_id}> resumed `{resumed.agent_id}`: it is {resumed.status.value}{still}.")


def _release(asker: Asker, parsed: slash.Parsed) -> Reply:
    record = find_agent(asker, parsed.args[0], Action.REQUEST)
    reason = parsed.rest or f"released in Slack by {asker.user_name or asker.user_id}"
    if roles.allows(asker.role(record.tenant), Action.RELEASE):
        done = agent_controls.release_agent(record.agent_id, asker.operator(), reason, asker.now)
        return said(
            record,
            f"🔓 <@{asker.user_id}> released `{record.agent_id}` ({', '.join(done.released)}): "
            f"it is {done.record.status.value}.",
        )
    if not release.releasable(record):
        raise agent_controls.Refused(409, f"agent {record.agent_id} is neither frozen nor quarantined")
    summary = f"release {record.agent_id} ({record.status.value})"
    asked = _ask(asker, record, approval_domain.Kind.RELEASE, summary, reason, {})
    return said(
        record, f"🙋 Only approvers release agents: asked the approvers of {record.tenant} ({asked}).", "requested"
    )


def _approvals(asker: Asker, parsed: slash.Parsed) -> Reply:
    lines = []
    for tenant in pick_tenants(asker, parsed.args[0] if parsed.args else None):
        for item in approval_store.list_approvals(tenant=tenant, state="pending", limit=LISTED):
            cost = f" · ~${item.estimated_cost_usd:,.2f}" if item.estimated_cost_usd is not None else ""
            lines.append(
                f"`{item.id}` {tenant}: {item.summary} · by {item.requester.label()}{cost} · "
                f"expires {when(item.expires_at)}"
            )
    return Reply(f"Pending approvals: {len(lines)}", tuple(lines[:LISTED]))


#: The subcommands of this family, by name (shared/slack/commands.py dispatches on them).
COMMANDS = {
    "budget": _budget,
    "pause": _pause,
    "resume": _resume,
    "quarantine": _quarantine,
    "release": _release,
    "approvals": _approvals,
}
