"""``/fleet`` subcommands about alerts: ``alerts`` (the open ones) and ``silence``."""

from __future__ import annotations

import hashlib

from shared.domain import episodes, slash
from shared.domain.roles import Action
from shared.domain.silences import Silence
from shared.services import agent_controls
from shared.slack.buttons import person
from shared.slack.command_context import (
    LISTED,
    Asker,
    Refusal,
    Reply,
    pick_tenant,
    pick_tenants,
    require,
    valid_id,
    when,
)
from shared.store import agents as agent_store
from shared.store import episodes as episode_store


def _alerts(asker: Asker, parsed: slash.Parsed) -> Reply:
    lines = []
    for tenant in pick_tenants(asker, parsed.args[0] if parsed.args else None):
        for row in episode_store.list_episodes(state="open", tenant=tenant, limit=LISTED):
            subject = f"`{row['agent_id']}`" if row.get("agent_id") else f"tenant {tenant}"
            ack = f" · acknowledged by {person(row['acknowledged_by'])}" if row.get("acknowledged_by") else ""
            lines.append(
                f"{row.get('severity')} · {episodes.title(str(row.get('rule')))} · {subject} · "
                f"since {when(row.get('opened_at'))}{ack}"
            )
    return Reply(f"Open alerts: {len(lines)}", tuple(lines[:LISTED]))


def _silence(asker: Asker, parsed: slash.Parsed) -> Reply:
    target, length = parsed.args
    lasts = slash.duration(length)
    reason = parsed.rest or f"silenced in Slack by {asker.user_name or asker.user_id}"
    agent_id = rule = None
    record = agent_store.get(target) if valid_id(target) else None
    if record is not None and asker.role(record.tenant) is not None:
        tenant, agent_id, what = record.tenant, record.agent_id, f"`{record.agent_id}`"
    elif asker.role(target) is not None:
        tenant, what = target, f"tenant {target}"
    elif target.partition(":")[2] in episodes.TITLES or target in episodes.TITLES:
        named, _, rule = target.rpartition(":")
        tenant = pick_tenant(asker, named or None)
        what = f"rule {rule} in {tenant}"
    else:
        raise Refusal(f"`{target[:64]}` is not an agent, a tenant you have a role in, or a rule")
    require(asker, tenant, Action.SILENCE)
    silence = Silence(
        id=f"sil-{hashlib.sha256(asker.request_id.encode()).hexdigest()[:16]}",
        agent_id=agent_id,
        tenant=tenant,
        rule=rule,
        reason=reason,
        created_by=asker.actor,
        created_at=asker.now,
        starts_at=asker.now,
        expires_at=asker.now + lasts,
    )
    agent_controls.create_silence(silence, asker.operator(), asker.now)
    return Reply(
        f"🔕 <@{asker.user_id}> silenced {what} until {when(silence.expires_at)} (`{silence.id}`): {reason}",
        public=True,
        outcome="applied",
        target=agent_id or f"tenant.{tenant}",
        tenant=tenant,
    )


#: The subcommands of this family, by name (shared/slack/commands.py dispatches on them).
COMMANDS = {
    "alerts": _alerts,
    "silence": _silence,
}
