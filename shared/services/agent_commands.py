"""Publishing commands to agents on ``agent-commands`` (attribute ``agent_id``), signed by the fleet.

Every command is signed with the fleet's key (shared/platform/fleet_key.py) by the one definition the
SDK verifies with (fleet_agent.command_signatures): the body stays the Command JSON, the signature rides
in attributes. Each enrolled agent reads its own subscription, filtered on ``agent_id``
(shared/services/command_channels.py); the SDK checks the id and the signature too.

The publisher client is built on first use (gRPC is heavy). A publish waits for Pub/Sub's ack: if
it fails the caller fails, Pub/Sub redelivers the event, and the same decision re-sends the same
``command_id``, which the SDK applies once. A missing fleet key fails the same way, before anything
is sent: a command is never published unsigned.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any

from fleet_agent.command_signatures import sign_command
from fleet_agent.contracts import Command, EventType

from shared.platform import fleet_key, logs, metering, settings, topology

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
    """The body and attributes of ``command``, signed by the fleet. Raises MissingFleetKey without a key."""
    return sign_command(command, fleet_key.get())


def publish(commands: Iterable[Command]) -> list[str]:
    """Publish and wait for every command; returns the message ids. Raises when one fails.

    Every command is signed before any is sent, so a missing key sends none (MissingFleetKey).
    """
    global _topic
    signed = [(command, *encode(command)) for command in commands]
    if not signed:
        return []
    client = publisher()
    if _topic is None:
        _topic = client.topic_path(settings.get().project, topology.load().topic_for(EventType.COMMAND.value).name)
    topic = _topic
    pending = [(command, client.publish(topic, body, **attributes)) for command, body, attributes in signed]
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
