from __future__ import annotations

import base64

import pytest

from shared.platform.topology import load
from shared.services import replay


def rejection(source: str, **payload: object) -> dict[str, object]:
    return {"id": "r1", "source": source, "payload": {"attributes": {"agent_id": "a-1"}, **payload}}


@pytest.mark.parametrize(
    ("source", "topic"),
    [
        ("projects/p/subscriptions/agent-heartbeats-push", "agent-heartbeats"),
        ("agent-registrations-push", "agent-registrations"),
        ("//pubsub.googleapis.com/projects/p/topics/agent-heartbeats", "agent-heartbeats"),
        ("//pubsub.googleapis.com/projects/p/topics/agent-heartbeats-dlq", None),
        ("", None),
    ],
)
def test_topic_of_a_rejection(source: str, topic: str | None) -> None:
    assert replay.topic_of(rejection(source), load()) == topic


def test_plan_restores_text_or_binary_payloads() -> None:
    text = replay.plan(rejection("agent-heartbeats-push", text='{"a": 1}'), load())
    assert (text.topic, text.data, text.attributes) == ("agent-heartbeats", b'{"a": 1}', {"agent_id": "a-1"})
    binary = replay.plan(rejection("agent-heartbeats-push", base64=base64.b64encode(b"\xff").decode()), load())
    assert binary.data == b"\xff"


def test_truncated_or_unknown_sources_are_not_replayed() -> None:
    with pytest.raises(ValueError, match="oversized"):
        replay.plan(rejection("agent-heartbeats-push", text="x", truncated=True), load())
    with pytest.raises(ValueError, match="which topic"):
        replay.plan(rejection("somewhere-else", text="x"), load())
