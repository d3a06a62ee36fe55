from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from fleet_agent.contracts import (
    DEFAULT_TOPICS,
    MAX_EVENT_BYTES,
    EventType,
    Heartbeat,
    HeartbeatMetrics,
    Registration,
    encode,
)
from pydantic import ValidationError

from shared.domain.rejections import Code, Rejected
from shared.pipeline.decoding import PushedMessage, decode, message_from_cloudevent
from shared.platform import schemas

ROOT = Path(__file__).resolve().parents[2]
NOW = datetime(2026, 11, 21, tzinfo=UTC)


def registration(**kw: object) -> Registration:
    data: dict[str, object] = dict(
        agent_id="agent-1", tenant="acme", name="A", agent_type="llm", version="1", owner="o"
    )
    data.update(kw)
    return Registration.model_validate(data)


def pushed(body: bytes, **attributes: str) -> PushedMessage:
    return PushedMessage(message_id="m1", published_at=NOW, raw=body, attributes=attributes)


def test_published_json_schemas_are_current() -> None:
    for name, text in schemas.render().items():
        assert (ROOT / "docs" / "schemas" / name).read_text() == text, f"run `make schemas` ({name} is stale)"


@pytest.mark.parametrize("agent_id", ["ab", "Agent-1", "a" * 64, "a b c", "agent.1"])
def test_agent_id_rules(agent_id: str) -> None:
    with pytest.raises(ValidationError):
        registration(agent_id=agent_id)


def test_registration_defaults() -> None:
    reg = registration()
    assert reg.heartbeat_interval_s == 30 and reg.capabilities == [] and reg.resources.gpu == 0


def test_extra_metrics_must_be_numbers() -> None:
    assert HeartbeatMetrics.model_validate({"tokens_per_s": 3.5}).as_dict() == {"tokens_per_s": 3.5}
    for bad in (
        {"x": "1"},
        {"x": True},
        {"cpu_pct": 101},
        {"error_rate": 2},
        {f"m{i}": 1 for i in range(40)},
    ):
        with pytest.raises(ValidationError):
            HeartbeatMetrics.model_validate(bad)


def test_encode_decode_round_trip() -> None:
    hb = Heartbeat(agent_id="agent-1", seq=3, sent_at=NOW, status="idle", metrics={"cpu_pct": 1, "q": 2})
    body, attrs = encode(hb, event_id="event-0001")
    assert attrs == {"agent_id": "agent-1", "event_type": "heartbeat", "schema_version": "1"}
    decoded = decode(pushed(body, **attrs), EventType.HEARTBEAT)
    assert decoded.heartbeat == hb and decoded.event_id == "event-0001"


def _reject(message: PushedMessage, expected: EventType = EventType.HEARTBEAT) -> Rejected:
    with pytest.raises(Rejected) as info:
        decode(message, expected)
    return info.value


GOOD_ATTRS = {"agent_id": "agent-1", "event_type": "heartbeat", "schema_version": "1"}


def test_bad_input_is_classified() -> None:
    body, _ = encode(Heartbeat(agent_id="agent-1", seq=1, sent_at=NOW, status="idle"))
    assert _reject(pushed(b"{nope", **GOOD_ATTRS)).code is Code.NOT_JSON
    assert _reject(pushed(b"\xff\xfe", **GOOD_ATTRS)).code is Code.NOT_JSON
    assert _reject(pushed(b"x" * (MAX_EVENT_BYTES + 1), **GOOD_ATTRS)).code is Code.OVERSIZED
    assert _reject(pushed(body, agent_id="agent-1")).code is Code.WRONG_ATTRIBUTES
    assert _reject(pushed(body, **{**GOOD_ATTRS, "event_type": "registration"})).code is Code.WRONG_ATTRIBUTES
    assert _reject(pushed(body, **{**GOOD_ATTRS, "agent_id": "agent-2"})).code is Code.WRONG_ATTRIBUTES
    assert _reject(pushed(body, **{**GOOD_ATTRS, "schema_version": "9"})).code is Code.UNSUPPORTED_SCHEMA_VERSION
    assert _reject(pushed(b'{"data": {}}', **GOOD_ATTRS)).code is Code.BAD_ENVELOPE
    bad = json.dumps({"event_id": "event-0001", "data": {"agent_id": "agent-1", "seq": -1}}).encode()
    rejected = _reject(pushed(bad, **GOOD_ATTRS))
    assert rejected.code is Code.SCHEMA_VIOLATION and "seq" in rejected.reason and rejected.agent_id == "agent-1"


def test_message_from_cloudevent_unwraps_push_body() -> None:
    data = {
        "message": {
            "data": base64.b64encode(b"hi").decode(),
            "attributes": {"a": "b"},
            "messageId": "42",
            "publishTime": "2026-11-21T10:00:00.5Z",
        }
    }
    msg = message_from_cloudevent(data, event_id="42", time=None, source="//pubsub/x")
    assert (msg.raw, msg.attributes, msg.message_id) == (b"hi", {"a": "b"}, "42")
    assert msg.published_at == datetime(2026, 11, 21, 10, 0, 0, 500000, tzinfo=UTC)


def test_default_topics_match_the_manifest() -> None:
    from shared.platform.topology import load

    topology = load()
    for event_type, topic in DEFAULT_TOPICS.items():
        assert topology.topic_for(event_type.value).name == topic


@pytest.mark.parametrize(
    "bad",
    [
        {"agent_id": "__ab__"},
        {"agent_id": "-ab"},
        {"version": "release/1.2"},
        {"version": ".."},
        {"labels": {"__x__": "y"}},
        {"capabilities": ["bad name"]},
    ],
)
def test_registration_refuses_what_firestore_cannot_store(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        registration(**bad)


def test_registration_accepts_real_versions_and_labels() -> None:
    reg = registration(version="2.0.0-rc.1+build.7", labels={"app.kubernetes.io/name": "x"})
    assert reg.version == "2.0.0-rc.1+build.7"


@pytest.mark.parametrize(
    "bad",
    [
        {"metrics": {"active_tasks": 2**63}},
        {"metrics": {"huge": 2**64}},
        {"metrics": {"__x__": 1}},
        {"metrics": {"nan": float("nan")}},
        {"sent_at": "0001-01-01T00:00:00+01:00"},
        {"sent_at": "9999-12-31T23:59:59-05:00"},
    ],
)
def test_heartbeat_refuses_unstorable_values(bad: dict[str, object]) -> None:
    data: dict[str, object] = {"agent_id": "agent-1", "seq": 1, "sent_at": NOW, "status": "idle"}
    data.update(bad)
    with pytest.raises(ValidationError):
        Heartbeat.model_validate(data)


def test_pathological_json_is_rejected_not_raised() -> None:
    nested = b'{"a":' * 5000 + b"1" + b"}" * 5000
    assert _reject(pushed(nested, **GOOD_ATTRS)).code is Code.NOT_JSON
    huge_int = b'{"event_id": "event-0001", "data": {"seq": ' + b"9" * 5000 + b"}}"
    assert _reject(pushed(huge_int, **GOOD_ATTRS)).code is Code.NOT_JSON
