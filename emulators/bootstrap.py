"""Builds the Pub/Sub topology of topology.yaml on the emulator, with the real admin clients.

Each subscription is a push subscription to the function the manifest names, with its retry
policy and dead-letter topic: the same delivery path as in Google Cloud.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Mapping

from shared.platform.topology import Topology


def push_endpoint(base_url: str, project: str, topic: str) -> str:
    """The URL a subscription pushes to. The topic in the path becomes the CloudEvent's source."""
    return f"{base_url}/projects/{project}/topics/{topic}"


def build(
    topology: Topology, project: str, function_urls: Mapping[str, str], overrides: Mapping[str, int] | None = None
) -> None:
    """Create every topic and subscription (idempotent: existing ones are left as they are).

    ``overrides`` replaces retry-policy fields of every subscription (tests use short time scales).
    """
    from google.api_core import exceptions
    from google.cloud.pubsub_v1 import PublisherClient, SubscriberClient
    from google.protobuf import duration_pb2

    publisher = PublisherClient()
    subscriber = SubscriberClient()
    for topic in topology.topics:
        with contextlib.suppress(exceptions.AlreadyExists):
            publisher.create_topic(name=publisher.topic_path(project, topic.name))
    for sub in topology.subscriptions:
        if sub.push_to not in function_urls:
            continue
        sub = dataclasses.replace(sub, **dict(overrides or {}))  # type: ignore[arg-type]
        request: dict[str, object] = {
            "name": subscriber.subscription_path(project, sub.name),
            "topic": publisher.topic_path(project, sub.topic),
            "push_config": {"push_endpoint": push_endpoint(function_urls[sub.push_to], project, sub.topic)},
            "ack_deadline_seconds": sub.ack_deadline_s,
            "retry_policy": {
                "minimum_backoff": duration_pb2.Duration(seconds=sub.min_backoff_s),
                "maximum_backoff": duration_pb2.Duration(seconds=sub.max_backoff_s),
            },
        }
        if sub.dead_letter_topic:
            request["dead_letter_policy"] = {
                "dead_letter_topic": publisher.topic_path(project, sub.dead_letter_topic),
                "max_delivery_attempts": sub.max_delivery_attempts,
            }
        with contextlib.suppress(exceptions.AlreadyExists):
            subscriber.create_subscription(request=request)
    subscriber.close()
