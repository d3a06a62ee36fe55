"""Slack requests already handled (``slack_requests/{key}``): Slack retries a request it thinks failed
(``X-Slack-Retry-Num``), and a retry must never repeat the action. The first attempt claims the key
before acting and stores its reply after; a retry gets that reply back instead of acting again."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from shared.platform import metering
from shared.store import db

SLACK_REQUESTS = "slack_requests"
RETENTION = timedelta(days=2)
#: A claim older than this was abandoned (its instance died): a retry may take it over.
STALE = timedelta(seconds=60)


@dataclass(frozen=True)
class Claim:
    #: "new": act now; "done": answer ``reply``; "running": the first attempt is still at it.
    state: str
    reply: dict[str, Any] | None = None


def _ref(key: str) -> Any:
    return db.client().collection(SLACK_REQUESTS).document(db.doc_id(key))


def begin(key: str, now: datetime) -> Claim:
    doc = {"state": "running", "started_at": now, "expire_at": now + RETENTION}
    if db.unless_changed(lambda: _ref(key).create(doc, **db.call_options())) is not None:
        return Claim("new")
    snap = db.get(_ref(key))
    data = snap.to_dict() or {}
    if data.get("state") == "done":
        return Claim("done", data.get("reply"))
    started = data.get("started_at")
    if isinstance(started, datetime) and now - started > STALE:
        option = db.client().write_option(last_update_time=snap.update_time)
        if db.unless_changed(lambda: _ref(key).update({"started_at": now}, option=option)) is not None:
            return Claim("new")
    return Claim("running")


def finish(key: str, reply: dict[str, Any]) -> None:
    _ref(key).update({"state": "done", "reply": reply}, **db.call_options())
    metering.count(writes=1)


def abandon(key: str) -> None:
    """Drop a claim whose work failed (an exception): Slack's retry then acts, instead of waiting out
    the claim. Nothing was changed, or only idempotent parts that the retry repeats harmlessly."""
    _ref(key).delete(**db.call_options())
    metering.count(writes=1)
