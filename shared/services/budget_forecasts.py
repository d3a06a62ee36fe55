"""The budget forecast in the minute job: project every budgeted tenant's and agent's hard limits from their
spend rate (shared/domain/budget_forecast.py) and open or resolve their ``budget_forecast`` episodes.

Why the minute job and not the cost function: a forecast must also *resolve* when spending slows or stops,
and an agent that stops spending sends no batch to evaluate it on; the tick sees every budgeted subject
once a minute with bounded reads (shared/store/budget_forecasts.py), whatever the batch rate.

An episode is opened like any cost alert (``episodes.raise_once``: a create under a deterministic id, so
concurrent ticks open it once) and resolves by itself when its period resets (``resolve_at``); the tick
resolves it sooner, with a conditional write, when the projection leaves the horizon.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from shared.domain import budget_forecast as domain
from shared.domain import budgets
from shared.domain import episodes as episode_rules
from shared.domain.alerts import Alert, Severity
from shared.domain.periods import Period, window
from shared.platform import logs, settings
from shared.store import budget_forecasts as store
from shared.store import episodes as episode_store
from shared.store import usage as usage_store

log = logs.get_logger("budget_forecast")
#: Subjects evaluated per tick (the reads are bounded by these): tenants with a budget, agents with one,
#: and the open forecast episodes considered for resolution.
MAX_TENANTS = 200
MAX_AGENTS = 1000
MAX_OPEN = 1000


@dataclass
class Forecast:
    tenants: int = 0
    agents: int = 0
    opened: int = 0
    resolved: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "tenants": self.tenants,
            "agents": self.agents,
            "opened": self.opened,
            "resolved": self.resolved,
        }


def run(now: datetime) -> dict[str, Any]:
    """One tick's forecast, never failing the minute job (its sweep and outbox ran already; a failure here
    waits for the next minute): reads ``T + T x shards + 2 A + max(1, open)`` documents for T budgeted
    tenants and A budgeted agents (docs/alerting.md, Budget forecast)."""
    try:
        return _run(now)
    except Exception as exc:
        logs.log(log, "budget forecast failed", logging.ERROR, outcome="failed", error=f"{type(exc).__name__}: {exc}")
        return {"failed": type(exc).__name__}


def _parsed(kind: str, subject: str, stored: Any) -> budgets.BudgetSpec | None:
    """A stored budget, or None (logged) when it no longer validates: one bad document skips its subject."""
    try:
        return budgets.parse(stored)
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        logs.log(log, f"budget forecast skipped {kind} {subject}: its budget does not validate", logging.WARNING,
                 outcome="skipped", error=str(exc)[:300])  # fmt: skip
        return None


def _run(now: datetime) -> dict[str, Any]:
    cfg = settings.get()
    horizon = domain.horizons(cfg.budget_forecast_horizon_s)
    if not horizon:
        return {"off": True}
    out = Forecast()
    projections: list[domain.Projection] = []
    evaluated: set[tuple[str, str]] = set()
    tenants = store.tenants_with_budget(MAX_TENANTS)
    for tenant, stored in tenants:
        budget = _parsed("tenant", tenant, stored)
        if budget is None and stored:
            continue  # does not validate (logged)
        out.tenants += 1
        evaluated.add(("tenant", tenant))
        fields = store.tenant_month(tenant, now, cfg.tenant_shards)
        projections += domain.project(budget, "tenant", tenant, tenant, fields, now)
    agents = store.agents_with_budget(MAX_AGENTS)
    month = window(Period.MONTH, now).key
    months = usage_store.agent_months([agent_id for agent_id, _, _ in agents], month)
    for agent_id, tenant, stored in agents:
        agent_budget = _parsed("agent", agent_id, stored)
        if agent_budget is None and stored:
            continue  # does not validate (logged)
        out.agents += 1
        evaluated.add(("agent", agent_id))
        fields = domain.month_fields(months.get(agent_id) or {})
        projections += domain.project(agent_budget, "agent", agent_id, tenant, fields, now)
    open_ = store.open_episodes(MAX_OPEN)
    # A listing that was not cut saw every budgeted subject: an open forecast of a subject it did not see
    # lost its budget, and resolves now (decide: "no longer forecast") rather than at the period's reset.
    seen = {("tenant", t) for t, _ in tenants} | {("agent", a) for a, _, _ in agents}
    complete = {"tenant": len(tenants) < MAX_TENANTS, "agent": len(agents) < MAX_AGENTS}
    for episode, _ in open_:
        details = episode.get("details") or {}
        subject = (str(details.get("scope") or ""), str(details.get("subject") or ""))
        if complete.get(subject[0]) and subject not in seen:
            evaluated.add(subject)
    times = {episode["id"]: update_time for episode, update_time in open_}
    decisions = domain.decide(projections, [episode for episode, _ in open_], evaluated, horizon, now)
    for projection in decisions.open:
        if episode_store.raise_once(_alert(projection, now)):
            out.opened += 1
            logs.log(log, f"budget forecast opened: {projection.key}", tenant=projection.tenant)
    for item in decisions.resolve:
        episode = item.episode
        write = episode_rules.resolution(episode, now, item.summary)
        if episode_store.conditional(episode, times.get(episode["id"]), write):
            out.resolved += 1
    return out.as_dict()


def _alert(projection: domain.Projection, now: datetime) -> Alert:
    return Alert(
        id=projection.episode_id(now),
        kind=domain.RULE,
        severity=Severity.WARNING,
        tenant=projection.tenant,
        message=projection.message(now),
        at=now,
        agent_id=projection.subject if projection.scope == "agent" else None,
        window=projection.window.key,
        details=projection.details(),
        until=projection.window.resets_at,
    )
