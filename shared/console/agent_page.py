"""The agent page's data (GET /agents/<agent_id>): the agent, its recent heartbeat history, its usage (holds,
lease), its alert episodes and its recent commands (from the audit log), read through the REST API in-process
with the session's key (shared/console/api_calls.call_api, the router's own dispatch): the same role checks
and audit of refusals, the same tenant scope (an agent of another tenant is a 404, its existence not leaked).
The calls run inside ``agents.reads_once()``, so the agent document is read once for all of them. The
panels come from shared/console/agent_view.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import flask

from shared.api import core
from shared.api.core import ApiError
from shared.console import agent_view
from shared.console.api_calls import Answer, call_api
from shared.store import agents as agent_store
from shared.store.api_keys import Principal

PREFIX = "/agents/"
#: Heartbeat samples the charts and the timeline show: the newest (the API reads only the chunks holding them).
HISTORY_SAMPLES = 120
#: Open alert episodes read at most (an agent has at most one open episode per rule).
OPEN_EPISODES = 20
#: The agent's newest audit entries read for its recent commands (other entries are skipped).
AUDIT_ENTRIES = 30


@dataclass(frozen=True)
class AgentPage:
    agent: dict[str, Any]
    panels: list[dict[str, Any]]
    #: What could not be read (besides the agent itself), one sentence each.
    notes: list[str] = field(default_factory=list)


def agent_id_of(path: str) -> str:
    """The agent id of ``/agents/<agent_id>`` (anything after the prefix; :func:`load` validates it)."""
    return path.removeprefix(PREFIX)


def load(principal: Principal, agent_id: str, request: flask.Request) -> AgentPage:
    """What the page shows, read with the key of ``request``'s session;
    raises ApiError(404) when that key may not see the agent (or another status the API answered for it).
    ``principal`` is the session's key as the console verified it: the API checks it again on every call."""
    if not core.is_agent_id(agent_id):  # never a path or query of its own in the API calls below
        raise ApiError(404, f"agent {agent_id} not found")
    with agent_store.reads_once():  # the API calls below read the agent document once between them
        return _load(request, agent_id)


def _get(request: flask.Request, path: str, **query: str | int) -> Answer:
    return call_api(request, "GET", f"{path}?{urlencode(query)}" if query else path)


def _load(request: flask.Request, agent_id: str) -> AgentPage:
    base = f"/v1/agents/{agent_id}"
    found = _get(request, base)
    if not found.ok:
        raise ApiError(found.status, found.reason)
    agent, notes, missing = found.body, [], {}
    history = _get(request, f"{base}/history", limit=HISTORY_SAMPLES)
    if not history.ok:
        notes.append(f"The heartbeat history could not be read: {history.reason}")
    usage = _get(request, f"{base}/usage")
    if not usage.ok:
        notes.append(f"Spend and holds could not be read: {usage.reason}")
    # Open episodes on their own (a newer resolved one never pushes an open one out), then the newest of
    # any state: as many as the open ones plus the recent ones shown, so enough resolved ones are among them.
    opened = _get(request, "/v1/alerts", agent_id=agent_id, state="open", limit=OPEN_EPISODES)
    open_items = (opened.body.get("items") or []) if opened.ok else []
    limit = min(agent_view.RECENT_EPISODES + len(open_items), core.MAX_ALERTS)
    recent = _get(request, "/v1/alerts", agent_id=agent_id, limit=limit)
    if not (opened.ok and recent.ok):
        missing["episodes"] = f"Alert episodes could not be read: {(recent if opened.ok else opened).reason}"
    elif len(open_items) >= OPEN_EPISODES:
        missing["episodes"] = f"Showing the newest {OPEN_EPISODES} open episodes; the agent may have more."
    audit = _get(request, "/v1/audit", target=agent_id, limit=AUDIT_ENTRIES)
    if audit.status == 403:
        missing["commands"] = "Not available to your role: the audit log is where commands are recorded."
    elif not audit.ok:
        missing["commands"] = f"Commands could not be read: {audit.reason}"
    data = agent_view.AgentData.of(
        agent,
        core.now(),
        history.body if history.ok else None,
        usage.body if usage.ok else None,
        [*open_items, *((recent.body.get("items") or []) if recent.ok else [])],
        audit=(audit.body.get("items") or []) if audit.ok else None,
        notes=missing,
    )
    return AgentPage(agent=agent, panels=agent_view.panels(data), notes=notes)
