"""Publishing commands to agents on ``agent-commands`` (attribute ``agent_id``; the SDK filters).

The publisher client is built on first use (gRPC is heavy). A publish waits for Pub/Sub's ack: if
it fails the caller fails, Pub/Sub redelivers the event, and the same decision re-sends the same
``command_id``, which the SDK applies once.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any

from fleet_agent.contracts import Command, EventType

from shared.platform import logs, metering, settings, topology

log = logs.get_logger("commands")
_publisher: Any = None
_topic: str | None = None
_lock = threading.Lock()
PUBLISH_TIMEOUT_S = 10.0


def publisher() -> Any:
    """This process's Pub/Sub publisher (built on first use), tuned to send each message at once."""
    global _publisher
    if _publisher is None:
        with _lock:
            if _publisher is None:
                from google.cloud.pubsub_v1 import PublisherClient, types

                # Commands are few and urgent: send each at once instead of waiting to batch.
                _publisher = PublisherClient(batch_settings=types.BatchSettings(max_latency=0.001, max_messages=100))
    return _publisher


def encode(command: Command) -> tuple[bytes, dict[str, str]]:
    return command.model_dump_json(exclude_none=True).encode(), {
        "agent_id": command.agent_id,
        "event_type": EventType.COMMAND.value,
        "command": command.command.value,
    }


def publish(commands: Iterable[Command]) -> list[str]:
    """Publish and wait for every command; returns the message ids. Raises when one fails."""
    global _topic
    pending = []
    client = publisher()
    if _topic is None:
        _topic = client.topic_path(settings.get().project, topology.load().topic_for(EventType.COMMAND.value).name)
    topic = _topic
    for command in commands:
        body, attributes = encode(command)
        pending.append((command, client.publish(topic, body, **attributes)))
    ids = []
    for command, future in pending:
        ids.append(future.result(timeout=PUBLISH_TIMEOUT_S))
        metering.count_publish()
        logs.log(
            log,
            f"command {command.command.value} sent to {command.agent_id}",
            agent_id=command.agent_id,
            command=command.command.value,
            command_id=command.command_id,
            reason=command.reason,
        )
    return ids
