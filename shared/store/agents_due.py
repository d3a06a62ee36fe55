"""The agents whose deadline has passed, by the field that holds it: ``sweep_at`` (the liveness ladder's next
rung, read by the minute sweep) and ``command_due_at`` (a remediation command awaiting its acknowledgement,
read by the sweep's re-send step, shared/services/command_sweep.py). Only agents with the field set are
read, so the reads grow with the late agents and the pending commands, not with the fleet.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any

from shared.platform import metering
from shared.store import db
from shared.store.agents import AGENTS, Snapshot, cache, from_stored


def due_for_sweep(now: datetime, page_size: int) -> Iterator[Snapshot]:
    """Agents whose ``sweep_at`` has passed: the liveness sweep's work."""
    return due_by("sweep_at", now, page_size)


def due_for_commands(now: datetime, page_size: int) -> Iterator[Snapshot]:
    """Agents whose ``command_due_at`` has passed: a command to re-send or escalate."""
    return due_by("command_due_at", now, page_size)


def due_by(field_name: str, now: datetime, page_size: int) -> Iterator[Snapshot]:
    """Agents whose ``field_name`` has passed, earliest first, a page at a time (one read each, one for an empty
    page). Each is also this instance's cached copy: as fresh as a read, so the sweep's conditional write is
    computed on it and made on its update time, without a second read."""
    # lazy: the Firestore query types are loaded with the client, off the API's cold start
    from google.cloud.firestore_v1.base_query import FieldFilter

    query: Any = db.client().collection(AGENTS).where(filter=FieldFilter(field_name, "<=", now)).order_by(field_name)
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
