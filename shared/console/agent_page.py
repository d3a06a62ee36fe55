"""The agent page's data (GET /agents/<agent_id>): the agent, its heartbeat history, its usage (holds,
lease) and its alert episodes, read by calling the REST API's own handlers in-process (shared/api), so the
page sees exactly what the API would answer the same key: the same role checks, the same tenant scope (an
agent of another tenant is a 404, its existence not leaked). The panels come from shared/console/agent_view.py.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import flask
from pydantic import BaseModel
from werkzeug.test import EnvironBuilder

from shared.api import agents as agents_api
from shared.api import alerts as alerts_api
from shared.api import core
from shared.api import costs as costs_api
from shared.api.core import ApiError, Call, Route
from shared.console import agent_view
from shared.store import agents as agent_store
from shared.store.api_keys import Principal

PREFIX = "/agents/"
#: Alert episodes read for the page (open first, then the recent resolved ones are picked from these).
ALERTS_LIMIT = 100

_ROUTES: tuple[Route, ...] = (*agents_api.routes, *costs_api.routes, *alerts_api.routes)


@dataclass(frozen=True)
class AgentPage:
    agent: dict[str, Any]
    panels: list[dict[str, Any]]


def agent_id_of(path: str) -> str:
    """The agent id of ``/agents/<agent_id>`` (anything after the prefix; the handlers validate it)."""
    return path.removeprefix(PREFIX)


def _call(
    view: Callable[[Call], BaseModel],
    principal: Principal,
    args: dict[str, str],
    query: dict[str, str] | None = None,
) -> Any:
    """One API handler, in-process, as ``principal``: the route's role is checked as the API checks it."""
    route = next(r for r in _ROUTES if r.view is view)
    if not principal.role.allows(route.role):
        raise ApiError(403, f"this API key's role ({principal.role}) cannot call {route.endpoint}")
    request = flask.Request(EnvironBuilder(query_string=query or {}).get_environ())
    return view(Call(request, args, principal)).model_dump(mode="json")


def load(principal: Principal, agent_id: str) -> AgentPage:
    """What the page shows; raises ApiError(404) when ``principal`` may not see the agent."""
    args = {"agent_id": agent_id}
    with agent_store.reads_once():  # the four handlers below read the agent once between them
        return _load(principal, args)


def _load(principal: Principal, args: dict[str, str]) -> AgentPage:
    agent = _call(agents_api.get_agent, principal, args)
    history = _call(agents_api.get_agent_history, principal, args)
    usage = _call(costs_api.get_agent_usage, principal, args)
    query = {"agent_id": agent["agent_id"], "limit": str(ALERTS_LIMIT)}
    alerts: Iterable[Any] = _call(alerts_api.list_alerts, principal, {}, query)["items"]
    data = agent_view.AgentData.of(agent, core.now(), history, usage, alerts)
    return AgentPage(agent=agent, panels=agent_view.panels(data))
