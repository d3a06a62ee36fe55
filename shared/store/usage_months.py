"""Many agents' per-model day counters for one or more months in one round trip (the web console's Spend
page): each agent's month document (``usage/a.<agent_id>.<YYYY-MM>``, shared/store/usage.py) read
together with ``get_all``, one read per document asked (a missing one counts too, as Firestore bills it).
The batched form of ``usage.agent_month_models``, which reads one document per call."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from shared.domain.usage import ModelDay
from shared.platform import metering
from shared.store import db
from shared.store.usage import GET_ALL_CHUNK, USAGE, agent_month_id, day_models

#: agent id -> month ("YYYY-MM") -> day ("01".."31") -> model -> counters
MonthModels = dict[str, dict[str, dict[str, dict[str, ModelDay]]]]


def month_models(data: Mapping[str, Any]) -> dict[str, dict[str, ModelDay]]:
    """A month document's counters per day ("01".."31", in order) and model (its ``xDD`` maps)."""
    return {
        name[1:]: day_models(data[name])
        for name in sorted(data)
        if len(name) == 3 and name[0] == "x" and name[1:].isdigit() and isinstance(data[name], dict)
    }


def agents_month_models(agent_ids: Sequence[str], months: Sequence[str]) -> MonthModels:
    """Every agent's counters for each of ``months``: one ``get_all`` for up to :data:`GET_ALL_CHUNK`
    documents (one round trip for a page of agents), one read per document. An agent or month without a
    document maps to ``{}``."""
    out: MonthModels = {agent_id: {month: {} for month in months} for agent_id in agent_ids}
    wanted = {agent_month_id(a, m): (a, m) for a in out for m in months}
    if not wanted:
        return out
    collection = db.client().collection(USAGE)
    ids = list(wanted)
    for start in range(0, len(ids), GET_ALL_CHUNK):
        refs = [collection.document(d) for d in ids[start : start + GET_ALL_CHUNK]]
        docs = list(db.client().get_all(refs, **db.call_options()))
        metering.count(reads=len(docs))
        for doc in docs:
            if doc.exists and doc.id in wanted:
                agent_id, month = wanted[doc.id]
                out[agent_id][month] = month_models(doc.to_dict() or {})
    return out
