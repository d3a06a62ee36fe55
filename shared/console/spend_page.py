"""The Spend page's data (GET /spend): a tenant's spend per agent and model, today against the previous
days, and the projected end-of-period spend against the tenant's budget (view model:
shared/console/spend_view.py).

The tenant's agents, usage and budget come from the REST API's own handlers in-process with the
session's key (shared/console/api_calls.call_api): the same tenant scope and roles. A tenant-scoped key
sees only its tenant; a key that sees every tenant (any role) picks one with ``?tenant=``. Each period's
spend and budget (the projections) are the usage API's ``periods.day``/``periods.month``: the tenant's
own counters, so they hold however many agents the tenant has. The per-agent, per-model day counters (the
table and the chart only) come from ``shared.store.usage_months.agents_month_models`` for the agents the
API listed for this key (at most :data:`MAX_AGENTS`; the page says when it stops there): one batched read
of one document per agent and month (the previous month too while the comparison window reaches into it).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any
from urllib.parse import quote

import flask

from shared.api import core
from shared.console import spend_view
from shared.console.api_calls import call_api
from shared.domain.usage import ModelDay
from shared.store import usage_months
from shared.store.api_keys import Principal

#: At most this many agents (pages of the API's list) on one page.
MAX_AGENTS = 500
PAGE_SIZE = 100


@dataclass
class SpendPage:
    """What the template shows: the chosen tenant (None: a fleet-wide key still to pick one) and its view."""

    tenant: str | None
    view: dict[str, Any] | None
    notes: list[str] = field(default_factory=list)


def _months(today: date, days: int) -> list[str]:
    """The months ("YYYY-MM") the window of ``days`` before ``today`` and today touches."""
    first = today - timedelta(days=days)
    months = [f"{first:%Y-%m}"]
    if f"{today:%Y-%m}" != months[0]:
        months.append(f"{today:%Y-%m}")
    return months


def _agents(request: flask.Request, tenant: str, notes: list[str]) -> list[str]:
    ids: list[str] = []
    token: str | None = None
    while len(ids) < MAX_AGENTS:
        path = f"/v1/agents?tenant={quote(tenant)}&page_size={PAGE_SIZE}"
        if token:
            path += f"&page_token={quote(token)}"
        answer = call_api(request, "GET", path)
        if not answer.ok:
            notes.append(f"Agents could not be read: {answer.reason}")
            break
        ids += [str(item["agent_id"]) for item in answer.body.get("items") or [] if item.get("agent_id")]
        token = answer.body.get("next_page_token")
        if not token:
            break
    else:
        notes.append(
            f"The table and the chart show the first {MAX_AGENTS} agents only; "
            "the projections are the tenant's whole spend."
        )
    return ids[:MAX_AGENTS]


def agent_days(agent_ids: list[str], months: list[str]) -> dict[str, dict[date, Mapping[str, ModelDay]]]:
    """Each agent's day counters by model over ``months``, keyed by date (one batched read)."""
    found = usage_months.agents_month_models(agent_ids, months)
    out: dict[str, dict[date, Mapping[str, ModelDay]]] = {}
    for agent_id, by_month in found.items():
        days: dict[date, Mapping[str, ModelDay]] = {}
        for month, month_models in by_month.items():
            days.update(spend_view.month_days(month, month_models))
        out[agent_id] = days
    return out


def load(request: flask.Request, principal: Principal, now: datetime | None = None) -> SpendPage:
    """The spend page for the key's tenant, or ``?tenant=`` for a key that sees every tenant."""
    now = now or datetime.now(UTC)
    notes: list[str] = []
    asked = (request.args.get("tenant") or "").strip() or None
    tenant = principal.tenant or asked
    if principal.tenant is not None and asked is not None and asked != principal.tenant:
        notes.append(f"this API key only sees tenant {principal.tenant}")
    if tenant is None:
        return SpendPage(None, None, notes)
    if not core.is_agent_id(tenant):
        return SpendPage(None, None, [*notes, "That is not a valid tenant name."])
    usage = call_api(request, "GET", f"/v1/tenants/{quote(tenant)}/usage")
    if not usage.ok:
        return SpendPage(tenant, None, [*notes, f"Usage could not be read: {usage.reason}"])
    periods = usage.body.get("periods")
    months = _months(now.date(), spend_view.DAYS)
    agents = agent_days(_agents(request, tenant, notes), months)
    view = spend_view.spend_view(tenant, agents, now, periods if isinstance(periods, Mapping) else None)
    return SpendPage(tenant, view, notes)
