"""Cloud Functions (gen2) entry points. Each is a few lines: decode, call shared/, reply.

Pub/Sub-triggered functions are CloudEvent functions: functions-framework turns a push
subscription's body into a CloudEvent whose id is the message id, exactly as Eventarc does.
Returning acknowledges the message; raising makes Pub/Sub redeliver it.
Heavy clients (Firestore) are imported on first use, not here, to keep cold starts short.
"""

from __future__ import annotations

from typing import Any

import functions_framework
from cloudevents.http import CloudEvent
from fleet_agent.contracts import EventType

from shared import handlers
from shared.events import PushedMessage, message_from_cloudevent

#: The event type each Pub/Sub entry point expects (tests check it against topology.yaml).
EXPECTS: dict[str, EventType] = {
    "on_registration": EventType.REGISTRATION,
    "on_heartbeat": EventType.HEARTBEAT,
}


def _message(event: CloudEvent) -> PushedMessage:
    return message_from_cloudevent(event.data, event_id=event["id"], time=event.get("time"), source=event["source"])


@functions_framework.cloud_event
def on_registration(event: CloudEvent) -> None:
    handlers.handle_push(_message(event), EventType.REGISTRATION, handlers.process_registration)


@functions_framework.cloud_event
def on_heartbeat(event: CloudEvent) -> None:
    handlers.handle_push(_message(event), EventType.HEARTBEAT, handlers.process_heartbeat)


@functions_framework.cloud_event
def on_dead_letter(event: CloudEvent) -> None:
    handlers.handle_dead_letter(_message(event))


@functions_framework.http
def api(request: Any) -> Any:
    from shared import http_api

    return http_api.handle(request)


@functions_framework.cloud_event
def bench_baseline(event: CloudEvent) -> None:
    """The bare baseline of `make bench`: the same push path, one Firestore write, nothing else."""
    from shared import bench_baseline as baseline

    baseline.write_one(_message(event))
