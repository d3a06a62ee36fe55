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
from shared.console import agent_pending, agent_view
from shared.console.api_calls import Answer, call_api
from shared.store import agents as agent_store
from shared.store.api_keys import Principal

PREFIX = "/agents/"
#: Panel modules beside agent_view's own (importing one registers its panel).
EXTRA_PANELS = (agent_pending,)
#: Heartbeat samples the charts and the timeline show: the newest (the API reads only the chunks holding them).
HISTORY_SAMPLES = 120
#: Open alert episodes read at most (an agent has at most one open episode per rule).
OPEN_EPISODES = 20
#: The agent's audit entries are read a page of this many at a time for its recent commands (the other
#: entries, such as liveness transitions, are skipped) ...
AUDIT_ENTRIES = 30
#: ... for at most this many pages: a flapping agent's entries cannot make a view read without bound.
AUDIT_PAGES = 3


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
    audit, audit_note = _commands(request, agent_id)
    if audit_note:
        missing["commands"] = audit_note
    data = agent_view.AgentData.of(
        agent,
        core.now(),
        history.body if history.ok else None,
        usage.body if usage.ok else None,
        [*open_items, *((recent.body.get("items") or []) if recent.ok else [])],
        audit=audit,
        notes=missing,
    )
    return AgentPage(agent=agent, panels=agent_view.panels(data), notes=notes)


def _commands(request: flask.Request, agent_id: str) -> tuple[list[Any] | None, str | None]:
    """The agent's newest audit entries, page by page until they hold :data:`agent_view.RECENT_COMMANDS`
    commands or :data:`AUDIT_PAGES` pages were read; and a note when the list may be incomplete."""
    entries: list[Any] = []
    token: str | None = None
    for _ in range(AUDIT_PAGES):
        query: dict[str, str | int] = {"target": agent_id, "limit": AUDIT_ENTRIES}
        if token:
            query["page_token"] = token
        answer = _get(request, "/v1/audit", **query)
        if answer.status == 403:  # a safety net: /v1/audit is a viewer route today
            return None, "Not available to your role: the audit log is where commands are recorded."
        if not answer.ok:
            return (entries or None), f"Commands could not be read: {answer.reason}"
        entries += answer.body.get("items") or []
        token = answer.body.get("next_page_token")
        if not token or sum(1 for e in entries if agent_view.command_of(e)) >= agent_view.RECENT_COMMANDS:
            return entries, None
    read = AUDIT_PAGES * AUDIT_ENTRIES
    return entries, f"Commands among the agent's newest {read} audit entries; older ones: GET /v1/audit?target=."
