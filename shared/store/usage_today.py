"""Many agents' spend today in one round trip (the web console's fleet page): each agent's month counters
(``usage/a.<agent_id>.<YYYY-MM>``, shared/store/usage.py) read together with ``get_all``, one read each."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from shared.domain.periods import Period, window
from shared.domain.usage import Totals, month_field
from shared.platform import metering
from shared.store import db
from shared.store.usage import USAGE, agent_month_id


def agents_today(agent_ids: Sequence[str], now: datetime) -> dict[str, Totals]:
    """agent id -> its counters of the current UTC day (zero for an agent that spent nothing)."""
    if not agent_ids:
        return {}
    month = window(Period.MONTH, now).key
    day = month_field(Period.DAY, window(Period.DAY, now))
    collection = db.client().collection(USAGE)
    by_doc = {agent_month_id(agent_id, month): agent_id for agent_id in agent_ids}
    docs = list(db.client().get_all([collection.document(d) for d in by_doc], **db.call_options()))
    metering.count(reads=len(docs))
    out = {agent_id: Totals() for agent_id in agent_ids}
    for doc in docs:
        if doc.exists and doc.id in by_doc:
            out[by_doc[doc.id]] = Totals.from_dict((doc.to_dict() or {}).get(day))
    return out
