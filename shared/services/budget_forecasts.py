"""The budget forecast in the minute job: project every budgeted tenant's and agent's hard limits from their
spend rate (shared/domain/budget_forecast.py) and open or resolve their ``budget_forecast`` episodes.

Why the minute job and not the cost function: a forecast must also *resolve* when spending slows or stops,
and an agent that stops spending sends no batch to evaluate it on; the tick sees a page of the budgeted
subjects each minute with bounded reads (shared/store/budget_forecasts.py), whatever the batch rate.

The rotation: each tick lists at most :data:`PAGE_TENANTS` tenants and :data:`PAGE_AGENTS` agents after
the cursor the previous tick saved (one small document); a short page ends the round and the next tick
starts at the first again. A full round takes ``ceil(T / PAGE_TENANTS)`` ticks for T budgeted tenants (and
the same for agents), so every subject is forecast at least that often; the subject of an open forecast is
read by id when not on the page (up to :data:`MAX_FOLLOW`), so its forecast resolves at the next tick. A
held agent (any hold: it must not call its model) is not projected; its open forecast resolves.

An episode is opened like any cost alert (``episodes.raise_once``: a create under a deterministic id, so
concurrent ticks open it once) and resolves by itself when its period resets (``resolve_at``); the tick
resolves it sooner, with a conditional write, when the projection leaves the horizon. Its id carries the
occurrence number of its budget and period (shared/domain/budget_forecast.py): read from the key's marker
only for the keys about to open, and raised in the batch of the resolution that wins, so after a forecast
resolves a later run-out in the same period opens the next one, and two ticks at once still agree on one id.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
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
#: Subjects evaluated per tick, one page of each listing (the reads are bounded by these), and the open
#: forecast episodes considered for resolution.
PAGE_TENANTS = 200
PAGE_AGENTS = 1000
MAX_OPEN = 1000
#: Subjects of open forecasts not on the tick's pages read by id per tick, per kind (at most).
MAX_FOLLOW = 100


@dataclass
class Forecast:
    tenants: int = 0
    agents: int = 0
    held: int = 0
    listed: int = 0
    followed: int = 0
    #: Forecasts about to open (their occurrence markers read): opened, or created by another tick first.
    opening: int = 0
    opened: int = 0
    resolved: int = 0
    #: The rounds that ended with this tick (its page was the last of its listing).
    rounds: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "tenants": self.tenants,
            "agents": self.agents,
            "held": self.held,
            "listed": self.listed,
            "followed": self.followed,
            "opening": self.opening,
            "opened": self.opened,
            "resolved": self.resolved,
            "rounds_ended": self.rounds,
        }


def run(now: datetime) -> dict[str, Any]:
    """One tick's forecast, never failing the minute job (its sweep and outbox ran already; a failure here
    waits for the next minute): reads ``1 + t + a + max(1, open) + f + T x shards + A`` documents for a
    page of t tenants and a agents listed (at most ``PAGE + 1`` each, at least 1), f subjects of open
    forecasts read by id (only while their kind spans pages), T tenants evaluated and A agents (not held);
    writes the cursor when it moves; + k occurrence markers for the k forecasts about to open (one
    ``get_all``, none for none); 3 writes per resolution (the episode, its notice, its key's marker), 2 per
    opening (docs/alerting.md, Budget forecast)."""
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


def _pages(start: dict[str, Any]) -> dict[str, domain.Turn[store.Budgeted]]:
    """This tick's page of each listing, from the saved cursors (one more row asked: whether more follow)."""
    tenants = store.tenants_with_budget(PAGE_TENANTS + 1, start["tenant"])
    agents = store.agents_with_budget(PAGE_AGENTS + 1, start["agent"])
    return {
        "tenant": domain.turn(tenants, PAGE_TENANTS, from_first=start["tenant"] is None),
        "agent": domain.turn(agents, PAGE_AGENTS, from_first=start["agent"] is None),
    }


def _run(now: datetime) -> dict[str, Any]:
    cfg = settings.get()
    horizon = domain.horizons(cfg.budget_forecast_horizon_s)
    if not horizon:
        return {"off": True}
    out = Forecast()
    projections: list[domain.Projection] = []
    evaluated: set[tuple[str, str]] = set()
    held: dict[tuple[str, str], list[str]] = {}
    start = store.cursors()
    pages = _pages(start)
    open_ = store.open_episodes(MAX_OPEN)
    # Open forecasts of subjects not on the pages: where a page started at the first and was not cut it saw
    # every budgeted subject of its kind, so they lost their budget and resolve now (decide: "no longer
    # forecast"); otherwise they are read by id and evaluated with the page (every tick, whatever the turn).
    seen = {(kind, row.subject) for kind, page in pages.items() for row in page.rows}
    gone, follow = domain.off_page(
        [_subject(episode) for episode, _ in open_], seen, {k: p.complete for k, p in pages.items()}, MAX_FOLLOW
    )
    evaluated |= gone
    rows: dict[str, list[store.Budgeted]] = {}
    for kind, page in pages.items():
        followed = store.budgeted(kind, follow.get(kind, []))
        found = {row.subject for row in followed}
        evaluated |= {(kind, s) for s in follow.get(kind, []) if s not in found}  # no budget any more
        out.followed += len(follow.get(kind, []))
        rows[kind] = page.rows + followed
    for row in rows["tenant"]:
        budget = _parsed("tenant", row.subject, row.budget)
        if budget is None and row.budget:
            continue  # does not validate (logged)
        out.tenants += 1
        evaluated.add(("tenant", row.subject))
        fields = store.tenant_month(row.subject, now, cfg.tenant_shards)
        projections += domain.project(budget, "tenant", row.subject, row.tenant, fields, now)
    agents: list[tuple[store.Budgeted, budgets.BudgetSpec | None]] = []
    for row in rows["agent"]:
        if stopping := domain.stopping_holds(row.holds):
            held[("agent", row.subject)] = stopping  # spends nothing: not projected, its forecast resolves
            out.held += 1
            continue
        agent_budget = _parsed("agent", row.subject, row.budget)
        if agent_budget is None and row.budget:
            continue  # does not validate (logged)
        agents.append((row, agent_budget))
    months = usage_store.agent_months([row.subject for row, _ in agents], window(Period.MONTH, now).key)
    for row, agent_budget in agents:
        out.agents += 1
        evaluated.add(("agent", row.subject))
        fields = domain.month_fields(months.get(row.subject) or {})
        projections += domain.project(agent_budget, "agent", row.subject, row.tenant, fields, now)
    times = {episode["id"]: update_time for episode, update_time in open_}
    decisions = domain.decide(projections, [episode for episode, _ in open_], evaluated, horizon, now, held)
    # The occurrence is read before this tick's resolutions commit: a key resolving and opening in one tick
    # cannot happen (decide opens only keys with no open forecast).
    numbers = store.occurrences([projection.key for projection in decisions.open])
    out.opening = len(decisions.open)
    for projection in decisions.open:
        if episode_store.raise_once(_alert(projection, numbers[projection.key], now)):
            out.opened += 1
            logs.log(log, f"budget forecast opened: {projection.key}", tenant=projection.tenant)
    for item in decisions.resolve:
        episode = item.episode
        write = episode_rules.resolution(episode, now, item.summary)
        if store.resolve(episode, times.get(episode["id"]), write, item.key, item.following, now):
            out.resolved += 1
    out.listed = sum(page.read for page in pages.values())
    out.rounds = [kind for kind, page in pages.items() if page.last is None]
    following = {kind: page.last.cursor if page.last is not None else None for kind, page in pages.items()}
    if following != start:
        store.save_cursors(following, now)
    return out.as_dict()


def _subject(episode: dict[str, Any]) -> tuple[str, str]:
    details = episode.get("details") or {}
    return str(details.get("scope") or ""), str(details.get("subject") or "")


def _alert(projection: domain.Projection, occurrence: int, now: datetime) -> Alert:
    return Alert(
        id=projection.episode_id(occurrence),
        kind=domain.RULE,
        severity=Severity.WARNING,
        tenant=projection.tenant,
        message=projection.message(now),
        at=now,
        agent_id=projection.subject if projection.scope == "agent" else None,
        window=projection.window.key,
        details={**projection.details(), "occurrence": occurrence},
        until=projection.window.resets_at,
    )
