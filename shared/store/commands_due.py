"""Agents with a remediation command past its deadline (``command_due_at`` has passed): the minute sweep's
query for re-sends and escalations (shared/services/command_sweep.py). Only agents awaiting an
acknowledgement have ``command_due_at`` set, so its reads are proportional to them, not to the fleet.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any

from shared.platform import metering
from shared.store import db
from shared.store.agents import AGENTS, Snapshot, cache, from_stored


def due(now: datetime, page_size: int) -> Iterator[Snapshot]:
    """Agents whose ``command_due_at`` has passed, earliest first, a page at a time (one read each, one
    for an empty page). Each becomes this instance's cached copy, so the sweep's write needs no second read."""
    # lazy: the Firestore query types are loaded with the client, off the API's cold start
    from google.cloud.firestore_v1.base_query import FieldFilter

    collection = db.client().collection(AGENTS)
    query: Any = collection.where(filter=FieldFilter("command_due_at", "<=", now)).order_by("command_due_at")
    last = None
    while True:
        page = query.start_after(last) if last is not None else query
        docs = list(page.limit(page_size).stream(**db.call_options()))
        metering.count(reads=max(1, len(docs)))
        for doc in docs:
            snap = Snapshot(from_stored(doc.to_dict()), doc.update_time)
            cache.put(doc.id, snap)
            yield snap
        if len(docs) < page_size:
            return
        last = docs[-1]
