"""The agent page's "Pending commands" panel: the tracked commands (restart, drain, throttle...) sent to
the agent and not yet done or failed, from ``pending_commands`` of ``GET /v1/agents/{id}``. Registered
with the panels of shared/console/agent_view.py (after them)."""

from __future__ import annotations

from typing import Any

from shared.console.agent_view import AgentData, panel
from shared.console.formats import ago, when


@panel("pending")
def pending_panel(data: AgentData) -> dict[str, Any] | None:
    """None when the agent's view says nothing of its commands (an API without them)."""
    if "pending_commands" not in data.agent:
        return None
    items = []
    for item in data.agent.get("pending_commands") or []:
        sent = when(item.get("sent_at"))
        items.append(
            {
                "command": item.get("command"),
                "state": item.get("state"),
                "origin": item.get("origin") or "",
                "actor": item.get("actor") or "",
                "reason": item.get("reason") or "",
                "sent_at": sent,
                "ago": ago(sent, data.now),
                "deadline": when(item.get("deadline")),
            }
        )
    return {"title": "Pending commands", "commands": items}
