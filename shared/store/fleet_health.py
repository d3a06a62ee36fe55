"""The bounded reads behind the minute job's ``fleet_health`` judgement (shared/services/fleet_health.py),
each counted: the last hour's rejections per code (shared/store/metrics_reads.py, one count aggregation per
code), the Slack errors of the notices that failed in the last hour (at most ``cap + 1`` documents, only
their ``error``), two count aggregations of the outbox's pending notices, and the model registry's
pointers (one read per model kind). About thirty reads a tick, whatever the fleet's size."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from shared.domain import fleet_health as rules
from shared.domain.rejections import Code
from shared.platform import metering
from shared.store import db, metrics_reads
from shared.store.episodes import NOTIFICATIONS
from shared.store.models import pointer_ref

HOUR = timedelta(hours=1)
#: Failed notices read per tick at most (the judgement needs to know "more than the threshold").
FAILED_CAP = 50


def readings(now: datetime, limits: rules.Thresholds, model_kinds: list[str]) -> rules.Readings:
    since = now - HOUR
    errors, capped = failed_notices(since, max(FAILED_CAP, limits.slack_failures_per_hour + 1))
    return rules.Readings(
        rejections=metrics_reads.rejections_since([c.value for c in Code], since),
        failed_errors=errors,
        failed_capped=capped,
        late=_count(_pending().where(filter=_field("due_at", "<=", now - timedelta(seconds=limits.outbox_late_s))))
        if limits.outbox_late_s
        else 0,
        pending=_count(_pending()) if limits.outbox_pending else 0,
        model_failures=model_failures(model_kinds, since),
    )


def _field(name: str, op: str, value: Any) -> Any:
    # lazy: the Google API client library, loaded by the minute job rather than at import (cold start)
    from google.cloud.firestore_v1.base_query import FieldFilter

    return FieldFilter(name, op, value)


def _pending() -> Any:
    return db.client().collection(NOTIFICATIONS).where(filter=_field("state", "==", "pending"))


def _count(query: Any) -> int:
    result = query.count().get(**db.call_options())
    metering.count(reads=1)  # billed per 1,000 index entries read; at least one
    return int(result[0][0].value)


def failed_notices(since: datetime, cap: int) -> tuple[list[str], bool]:
    """The Slack errors of the notices marked ``failed`` since ``since`` (at most ``cap``), and whether
    there were more (index: notifications state + done_at)."""
    query = (
        db.client()
        .collection(NOTIFICATIONS)
        .where(filter=_field("state", "==", "failed"))
        .where(filter=_field("done_at", ">=", since))
        .select(["error"])
        .limit(cap + 1)
    )
    docs = list(query.stream(**db.call_options()))
    metering.count(reads=max(1, len(docs)))
    return [str((d.to_dict() or {}).get("error") or "unknown") for d in docs[:cap]], len(docs) > cap


def model_failures(kinds: list[str], since: datetime) -> dict[str, tuple[str, str]]:
    """Per model kind, the version in service and why it failed to load, when an instance recorded that
    since ``since`` (``load_failure`` on the registry pointer, shared/ml/serving.py)."""
    if not kinds:
        return {}
    docs = list(db.client().get_all([pointer_ref(kind) for kind in kinds], **db.call_options()))
    metering.count(reads=max(1, len(docs)))
    out: dict[str, tuple[str, str]] = {}
    for doc in docs:
        data = (doc.to_dict() or {}) if doc.exists else {}
        failure = data.get("load_failure") or {}
        current, at = data.get("current"), failure.get("at")
        if current and failure.get("version") == current and at is not None and at >= since:
            out[doc.id] = (str(current), str(failure.get("reason") or "unknown"))
    return out
