"""What is left of an agent's and a tenant's hard USD budgets (the admission pass's budget check)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from shared.domain import budgets, job_queue
from shared.domain.periods import Period, Window
from shared.domain.usage import Totals
from shared.platform import settings
from shared.store import agents as agent_store
from shared.store import config
from shared.store import usage as usage_store


def _tightest(spec_data: dict[str, object] | None, periods: dict[Period, tuple[Window, Totals]]) -> int | None:
    spec = budgets.parse(spec_data)
    left: int | None = None
    for period, (_win, totals) in periods.items():
        _limit, remaining = budgets.remaining(spec, period, "usd", totals.usd_nanos)
        if remaining is not None:
            left = remaining if left is None else min(left, remaining)
    return left


def hard_limits(spec_data: dict[str, object] | None) -> list[int]:
    """The scope's hard USD limits in nano-dollars (a job estimated above one can never run)."""
    return [lim.hard for lim in budgets.limits(budgets.parse(spec_data)) if lim.metric == "usd" and lim.hard]


def left_of(tenant: str, now: datetime) -> Callable[[str], int | None]:
    """``budget_left(scope)`` for job_queue.plan, reading each scope at most once (only when asked)."""
    seen: dict[str, int | None] = {}

    def left(scope: str) -> int | None:
        if scope not in seen:
            if scope == job_queue.TENANT:
                spec = config.read_tenant(tenant).budget
                seen[scope] = (
                    None
                    if not hard_limits(spec)
                    else _tightest(spec, usage_store.tenant_periods(tenant, now, settings.get().tenant_shards))
                )
            else:
                agent = agent_store.get(scope.split(":", 1)[1])
                spec = agent.budget if agent is not None else None
                seen[scope] = (
                    None
                    if not hard_limits(spec)
                    else _tightest(spec, usage_store.agent_periods(scope.split(":", 1)[1], now))
                )
        return seen[scope]

    return left
