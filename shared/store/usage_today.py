"""Many agents' spend today in one round trip (the web console's fleet page): each agent's month counters
(``usage/a.<agent_id>.<YYYY-MM>``) read together by ``usage.agent_months``, one read each."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from shared.domain.periods import Period, window
from shared.domain.usage import Totals, month_field
from shared.store import usage


def agents_today(agent_ids: Sequence[str], now: datetime) -> dict[str, Totals]:
    """agent id -> its counters of the current UTC day (zero for an agent that spent nothing)."""
    if not agent_ids:
        return {}
    day = month_field(Period.DAY, window(Period.DAY, now))
    months = usage.agent_months(agent_ids, window(Period.MONTH, now).key)
    return {agent_id: Totals.from_dict((months.get(agent_id) or {}).get(day)) for agent_id in agent_ids}
