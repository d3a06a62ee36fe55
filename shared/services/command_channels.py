"""Each enrolled agent's own command subscription: created by the fleet at enrollment, filtered on its id.

The name is derived from the agent id (:func:`subscription_name`), so the agent's SDK knows it without
being told; the registration function creates it (idempotently) when it binds the agent's first key, and
in Google Cloud grants the agent's principal (named on its enrollment token) subscriber on it alone
(terraform/README.md, "Agent identity"). The emulator ignores filters, so the SDK checks ``agent_id`` too.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any

from fleet_agent.contracts import EventType
from fleet_agent.identity import command_subscription

from shared.platform import logs, settings, topology

log = logs.get_logger("command_channels")
_subscriber: Any = None
_lock = threading.Lock()
ADMIN_TIMEOUT_S = 30.0


def subscriber() -> Any:
    global _subscriber
    if _subscriber is None:
        with _lock:
            if _subscriber is None:
                # lazy: gRPC is heavy; only the registration function creates subscriptions
                from google.cloud.pubsub_v1 import SubscriberClient

                _subscriber = SubscriberClient()
    return _subscriber


def subscription_path(agent_id: str) -> str:
    return subscriber().subscription_path(settings.get().project, command_subscription(agent_id))


def ensure(agent_id: str, principal: str | None = None) -> str:
    """Create the agent's filtered command subscription unless it exists; returns its path."""
    from google.api_core.exceptions import AlreadyExists

    client = subscriber()
    path = subscription_path(agent_id)
    topic = client.topic_path(settings.get().project, topology.load().topic_for(EventType.COMMAND.value).name)
    request = {
        "name": path,
        "topic": topic,
        "filter": f'attributes.agent_id = "{agent_id}"',
        "ack_deadline_seconds": 10,
        "message_retention_duration": {"seconds": 600},
    }
    with contextlib.suppress(AlreadyExists):  # made before: by a redelivery, or an earlier enrollment
        client.create_subscription(request=request, timeout=ADMIN_TIMEOUT_S)
    logs.log(log, f"command subscription of {agent_id} ready", agent_id=agent_id, subscription=path)
    return path
