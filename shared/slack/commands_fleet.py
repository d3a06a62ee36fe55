"""``/fleet`` subcommands that look at the fleet: ``help``, ``status``, ``agents``, ``usage``. Read only."""

from __future__ import annotations

from typing import Any

from shared.domain import budgets, slash
from shared.domain.lifecycle import State
from shared.platform import settings
from shared.services import accounting
from shared.slack.command_context import (
    LISTED,
    Asker,
    Refusal,
    Reply,
    agent_line,
    find_agent,
    pick_tenant,
    pick_tenants,
    valid_id,
    when,
)
from shared.store import agents as agent_store
from shared.store import config
from shared.store import episodes as episode_store
from shared.store import usage as usage_store

_STATES = {s.value for s in State}


def _help(asker: Asker, parsed: slash.Parsed) -> Reply:
    mine = ", ".join(f"{t}: {r}" for t, r in sorted(asker.roles.items())) or "none yet"
    return Reply(f"*/fleet* commands (your roles: {mine})", tuple(slash.help_lines()))


def _status(asker: Asker, parsed: slash.Parsed) -> Reply:
    if parsed.args:
        record = find_agent(asker, parsed.args[0])
        score = record.health.get("score")
        open_rules = ", ".join(sorted(record.episodes)) or "none"
        facts = (
            f"tenant {record.tenant} · owner {record.owner} · {record.agent_type} {record.version}",
            f"last heartbeat {when(record.last_heartbeat_at)} (every {record.heartbeat_interval_s} s)",
            f"security score {score if score is not None else 100} · open alerts: {open_rules}",
        )
        return Reply(agent_line(record), facts, target=record.agent_id, tenant=record.tenant)
    lines = []
    for tenant in pick_tenants(asker, None):
        counts = {state: agent_store.count(tenant, [state]) for state in ("ok", "late", "offline", "frozen")}
        total = agent_store.count(tenant)
        open_alerts = len(episode_store.list_episodes(state="open", tenant=tenant, limit=100))
        summary = " · ".join(f"{n} {state}" for state, n in counts.items() if n)
        lines.append(f"*{tenant}*: {total} agents ({summary or 'none watched'}) · {open_alerts} open alerts")
    return Reply("Fleet status", tuple(lines))


def _agents(asker: Asker, parsed: slash.Parsed) -> Reply:
    args = list(parsed.args)
    status = args.pop() if args and args[-1] in _STATES else None
    if args and args[0] in _STATES:
        raise slash.Usage("write the tenant first: `/fleet agents [tenant] [status]`")
    tenant = pick_tenant(asker, args[0] if args else None)
    records, more = agent_store.list_agents(tenant=tenant, status=status, page_size=LISTED, after=None)
    lines = [agent_line(r) for r in records] or ["no agents"]
    if more:
        lines.append(f"… more: `GET /v1/agents?tenant={tenant}`")
    head = f"Agents of {tenant}" + (f" ({status})" if status else "")
    return Reply(head, tuple(lines), tenant=tenant)


def _usage_lines(periods: dict[str, Any]) -> tuple[str, ...]:
    lines = []
    for name, view in periods.items():
        budget = f" of ${view['budget_usd']}" if view.get("budget_usd") else ""
        lines.append(
            f"*{name}* ({view['period']}): ${view['spend_usd']}{budget} · {view['tokens']:,} tokens · "
            f"{view['calls']:,} calls, {view['failures']:,} failed"
        )
    return tuple(lines)


def _usage_cmd(asker: Asker, parsed: slash.Parsed) -> Reply:
    name = parsed.args[0]
    record = agent_store.get(name) if valid_id(name) else None
    if record is not None and asker.role(record.tenant) is not None:
        periods = usage_store.agent_periods(record.agent_id, asker.now)
        view = accounting.usage_view(periods, budgets.parse(record.budget))
        return Reply(f"Usage of `{record.agent_id}`", _usage_lines(view), target=record.agent_id, tenant=record.tenant)
    if asker.role(name) is None:
        raise Refusal(f"`{name[:64]}` is neither an agent nor a tenant you have a role in")
    periods = usage_store.tenant_periods(name, asker.now, settings.get().tenant_shards)
    view = accounting.usage_view(periods, budgets.parse(config.read_tenant(name).budget))
    return Reply(f"Usage of tenant {name}", _usage_lines(view), target=f"tenant.{name}", tenant=name)


#: The subcommands of this family, by name (shared/slack/commands.py dispatches on them).
COMMANDS = {
    "help": _help,
    "status": _status,
    "agents": _agents,
    "usage": _usage_cmd,
}
