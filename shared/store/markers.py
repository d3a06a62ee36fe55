"""Once-markers (``markers/{id}``): a decision carried out once across instances.

Checked per instance first (a set), then in Firestore (one read); marked after the work is done, so
a crash in between means the work is done again (it must be idempotent), never skipped.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

from shared.platform import metering
from shared.store import db

MARKERS = "markers"
RETENTION = timedelta(days=40)
_known: set[str] = set()
_lock = threading.Lock()


def seen(key: str) -> bool:
    with _lock:
        if key in _known:
            return True
    found = bool(db.get(db.client().collection(MARKERS).document(db.doc_id(key))).exists)
    if found:
        with _lock:
            _known.add(key)
    return found


def mark(key: str) -> None:
    now = datetime.now(UTC)
    db.client().collection(MARKERS).document(db.doc_id(key)).set(
        {"key": key, "at": now, "expire_at": now + RETENTION}, **db.call_options()
    )
    metering.count(writes=1)
    with _lock:
        if len(_known) > 100_000:
            _known.clear()
        _known.add(key)
