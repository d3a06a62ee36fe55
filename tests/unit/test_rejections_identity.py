"""Refused identities are recorded apart from the agent they claim, listed by claim, and replayable."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from shared.domain.rejections import Code, Payload, Rejected
from shared.platform.topology import load
from shared.services import replay
from shared.store import db
from shared.store import rejections as rejection_store
from tests.unit.test_http_api import ACME_TOKEN, Calls, assert_error, call, calls  # noqa: F401

AT = datetime(2026, 12, 6, 9, 41, tzinfo=UTC)
SOURCE = "//pubsub.googleapis.com/projects/p/topics/agent-heartbeats"


class Written:
    def __init__(self) -> None:
        self.docs: dict[str, dict[str, Any]] = {}

    def collection(self, name: str) -> Any:
        written = self

        class Ref:
            def __init__(self, doc_id: str) -> None:
                self.doc_id = doc_id

            def set(self, doc: dict[str, Any], **_: Any) -> None:
                written.docs[self.doc_id] = doc

        class Collection:
            def document(self, doc_id: str) -> Ref:
                return Ref(doc_id)

        return Collection()


def recorded(monkeypatch: pytest.MonkeyPatch, rejected: Rejected) -> dict[str, Any]:
    client = Written()
    monkeypatch.setattr(db, "client", lambda: client)
    payload = Payload.of(b'{"event_id": "e1"}', {"agent_id": "web-7", "event_type": "heartbeat"})
    rejection_store.record(
        rejected, message_id="101", source=SOURCE, event_type="heartbeat", payload=payload, received_at=AT
    )
    return client.docs["101"]


@pytest.mark.parametrize(
    "code", [Code.BAD_SIGNATURE, Code.UNSIGNED, Code.UNKNOWN_KEY, Code.REVOKED_KEY, Code.TOKEN_USED_UP]
)
def test_a_refused_identity_is_kept_apart_from_the_claimed_agent(monkeypatch: pytest.MonkeyPatch, code: Code) -> None:
    doc = recorded(monkeypatch, Rejected(code, "nope", agent_id="web-7", tenant="acme"))
    assert "agent_id" not in doc
    assert (doc["claimed_agent_id"], doc["claimed_tenant"], doc["identity_refusal"]) == ("web-7", "acme", True)


def test_other_rejections_stay_the_agents_own(monkeypatch: pytest.MonkeyPatch) -> None:
    doc = recorded(monkeypatch, Rejected(Code.SCHEMA_VIOLATION, "seq < 0", agent_id="web-7", tenant="acme"))
    assert doc["agent_id"] == "web-7"
    assert "claimed_agent_id" not in doc and "identity_refusal" not in doc


def test_a_refused_identity_can_be_replayed(monkeypatch: pytest.MonkeyPatch) -> None:
    doc = recorded(monkeypatch, Rejected(Code.BAD_SIGNATURE, "forged", agent_id="web-7", tenant="acme"))
    planned = replay.plan(doc, load())
    assert planned.topic == "agent-heartbeats"
    assert planned.data == b'{"event_id": "e1"}'
    assert planned.attributes["agent_id"] == "web-7"


# --- the API ------------------------------------------------------------------------------------

FORGED = {"claimed_agent_id": "agent-a1", "claimed_tenant": "acme", "identity_refusal": True}
ROWS = [
    {"id": "3", "code": "bad_signature", "reason": "forged", **FORGED, "source": SOURCE, "received_at": AT},
    {
        "id": "2",
        "code": "schema_violation",
        "reason": "bad",
        "agent_id": "agent-a1",
        "source": SOURCE,
        "received_at": AT,
    },
]


@pytest.fixture
def listed(calls: Calls, monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:  # noqa: F811
    seen: list[dict[str, Any]] = []

    def list_page(
        *,
        agent_id: str | None,
        code: str | None,
        page_size: int,
        after: str | None,
        claimed_agent_id: str | None = None,
    ) -> tuple[list[dict[str, Any]], str | None]:
        seen.append({"agent_id": agent_id, "claimed_agent_id": claimed_agent_id, "code": code})
        rows = [
            r
            for r in ROWS
            if (agent_id is None or r.get("agent_id") == agent_id)
            and (claimed_agent_id is None or r.get("claimed_agent_id") == claimed_agent_id)
            and (code is None or r["code"] == code)
        ]
        return rows[:page_size], None

    monkeypatch.setattr(rejection_store, "list_page", list_page)
    return seen


def test_an_agents_rejections_do_not_show_forgeries_in_its_name(listed: list[dict[str, Any]]) -> None:
    reply = call("/v1/rejections", agent_id="agent-a1")
    assert [r["id"] for r in reply.json["items"]] == ["2"]
    assert reply.json["items"][0]["identity_refusal"] is False


def test_refused_identities_are_listed_by_the_agent_they_claimed(listed: list[dict[str, Any]]) -> None:
    reply = call("/v1/rejections", claimed_agent_id="agent-a1", code="bad_signature")
    item = reply.json["items"][0]
    assert (item["id"], item["agent_id"], item["claimed_agent_id"], item["claimed_tenant"]) == (
        "3",
        None,
        "agent-a1",
        "acme",
    )
    assert item["identity_refusal"] is True
    assert listed[-1] == {"agent_id": None, "claimed_agent_id": "agent-a1", "code": "bad_signature"}


def test_a_tenant_key_sees_refused_identities_only_of_its_own_agents(listed: list[dict[str, Any]]) -> None:
    assert_error(call("/v1/rejections", token=ACME_TOKEN, claimed_agent_id="agent-g1"), 403, "forbidden")
    assert_error(call("/v1/rejections", token=ACME_TOKEN, claimed_agent_id="agent-zz"), 403, "forbidden")
    assert listed == []
    reply = call("/v1/rejections", token=ACME_TOKEN, claimed_agent_id="agent-a1")
    assert [r["id"] for r in reply.json["items"]] == ["3"]


def test_claimed_agent_filter_is_validated(listed: list[dict[str, Any]]) -> None:
    assert_error(call("/v1/rejections", claimed_agent_id="Bad Id"), 400, "bad_request")
    assert_error(call("/v1/rejections", claimed_agent_id="agent-a1", agent_id="agent-a1"), 400, "bad_request")
    assert listed == []
