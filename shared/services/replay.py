"""Publishing recorded rejections again, once their cause is fixed (a Firestore outage that outlasted
the retry policy, a registration that came too late...).

Replays are safe: every handler is idempotent (heartbeats by seq, registrations by event id), so
replaying an event that was in fact applied changes nothing.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from shared.platform.topology import Topology


@dataclass(frozen=True)
class Replay:
    rejection_id: str
    topic: str
    data: bytes
    attributes: dict[str, str]


def topic_of(rejection: dict[str, Any], topology: Topology) -> str | None:
    """The topic a rejected message was first published to.

    ``source`` is the push path's topic (``//pubsub.googleapis.com/projects/p/topics/<topic>``) for
    events refused by a function, and the source subscription (``projects/p/subscriptions/<sub>``)
    for dead letters.
    """
    source = str(rejection.get("source") or "")
    name = source.rstrip("/").rsplit("/", 1)[-1]
    for sub in topology.subscriptions:
        if sub.name == name:
            return sub.topic
    for topic in topology.topics:
        if topic.name == name and not topic.dead_letter:
            return topic.name
    return None


def plan(rejection: dict[str, Any], topology: Topology) -> Replay:
    """What to publish for one rejection; raises ValueError when it cannot be replayed."""
    payload = rejection.get("payload") or {}
    if payload.get("truncated"):
        raise ValueError("only the first part of the payload was kept (the message was oversized)")
    topic = topic_of(rejection, topology)
    if topic is None:
        raise ValueError(f"cannot tell which topic {rejection.get('source')!r} was")
    if payload.get("text") is not None:
        data = str(payload["text"]).encode()
    elif payload.get("base64") is not None:
        data = base64.b64decode(payload["base64"])
    else:
        data = b""
    attributes = {str(k): str(v) for k, v in (payload.get("attributes") or {}).items()}
    received_at = rejection.get("received_at")
    if received_at is not None and "first_published_at" not in attributes:
        # When the message was first published: a replayed cost batch is judged by it, not by today.
        first = received_at if isinstance(received_at, datetime) else datetime.fromisoformat(str(received_at))
        attributes["first_published_at"] = first.isoformat()
    return Replay(str(rejection["id"]), topic, data, attributes)
