"""The ``forged_events`` episode through the real stores and the real alert path, to the fake Slack.

- ``note()`` against the emulator: counters, one episode per scope and hour, its message in Slack
  (escaped), and refused identities listed apart from the claimed agent's own rejections.
- End to end through Pub/Sub: heartbeats signed by a stranger's key for an enrolled agent are refused by
  the pipeline's signature check, counted (``forged_events.note``) and open the episode.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from fleet_agent.identity import AgentKey

from shared.domain.rejections import Code, Payload, Rejected
from shared.services import forged_events
from shared.store import rejections as rejection_store
from tests.integration.conftest import Api, Slack, tick, wait_for
from tests.integration.helpers import PROJECT, agent_doc, heartbeat, publish, registration

pytestmark = pytest.mark.integration

THRESHOLD = 3
SOURCE = f"//pubsub.googleapis.com/projects/{PROJECT}/topics/agent-heartbeats"


@pytest.fixture
def tenant(api: Api, firestore: Any) -> str:
    name = f"t{uuid.uuid4().hex[:10]}"
    reply = api.send("PUT", f"/v1/tenants/{name}/alerting", {"group_wait_s": 0})
    assert reply.status_code == 200, reply.text
    reply = api.send("PUT", f"/v1/tenants/{name}/identity", {"forged_events_per_hour": THRESHOLD})
    assert reply.status_code == 200, reply.text
    return name


def registered(publisher: Any, firestore: Any, tenant: str, agent_id: str) -> None:
    publish(publisher, registration(agent_id, tenant=tenant))
    wait_for(lambda: agent_doc(firestore, agent_id))


def sweep_until(publisher: Any, condition: Any, timeout: float = 30.0) -> Any:
    def fired() -> Any:
        tick(publisher)
        return condition()

    return wait_for(fired, timeout=timeout, every=1.0)


def refuse(agent_id: str, tenant: str, n: int, reason: str = "signature does not verify") -> None:
    """What the pipeline does with a refused identity: record it, then count it."""
    for _ in range(n):
        rejected = Rejected(Code.BAD_SIGNATURE, reason, agent_id=agent_id, tenant=tenant)
        rejection_store.record(
            rejected,
            message_id=f"it-{uuid.uuid4().hex}",
            source=SOURCE,
            event_type="heartbeat",
            payload=Payload.of(b"{}", {"agent_id": agent_id, "event_type": "heartbeat"}),
            received_at=datetime.now(UTC),
        )
        forged_events.note(rejected, datetime.now(UTC))


def test_forgeries_in_an_agents_name_warn_its_owners_in_slack_once(
    publisher: Any, firestore: Any, api: Api, slack: Slack, tenant: str, agent_id: str
) -> None:
    registered(publisher, firestore, tenant, agent_id)
    refuse(agent_id, tenant, THRESHOLD)
    assert api.get("/v1/alerts", agent_id=agent_id).json()["items"] == []

    refuse(agent_id, tenant, 5, reason="<!channel> key <http://evil.example|rotate here>")
    hour = datetime.now(UTC).strftime("%Y%m%d%H")
    counter = firestore.collection("markers").document(f"forged_events.a.{agent_id}.{hour}").get().to_dict()
    assert counter["count"] == THRESHOLD + 5
    episodes = [e for e in api.get("/v1/alerts", agent_id=agent_id).json()["items"] if e["rule"] == "forged_events"]
    assert len(episodes) == 1
    assert (episodes[0]["severity"], episodes[0]["tenant"]) == ("warning", tenant)

    posted = sweep_until(publisher, lambda: slack.about(agent_id, "chat.postMessage"))
    assert len(posted) == 1
    text = json.dumps(posted[0]["params"])
    assert "Forged events" in text and "<!channel>" not in text and "<http://evil" not in text
    assert "&lt;!channel&gt;" in text

    # A forgery is listed by the agent it claimed, never among the agent's own rejections.
    own = api.get("/v1/rejections", agent_id=agent_id).json()["items"]
    assert [r for r in own if r["code"] == "bad_signature"] == []
    claimed = api.get("/v1/rejections", claimed_agent_id=agent_id).json()["items"]
    assert len(claimed) == THRESHOLD + 5
    assert all(r["identity_refusal"] and r["agent_id"] is None and r["claimed_tenant"] == tenant for r in claimed)


def test_forgeries_spread_over_a_tenants_agents_are_critical(
    publisher: Any, firestore: Any, api: Api, slack: Slack, tenant: str
) -> None:
    agents = [f"it-{uuid.uuid4().hex[:12]}" for _ in range(2)]
    for agent_id in agents:
        registered(publisher, firestore, tenant, agent_id)
    for agent_id in agents:
        refuse(agent_id, tenant, 2)  # each under the threshold, the tenant over it
    episodes = [e for e in api.get("/v1/alerts", tenant=tenant).json()["items"] if e["rule"] == "forged_events"]
    assert [(e["severity"], e["agent_id"]) for e in episodes] == [("critical", None)]
    sweep_until(publisher, lambda: slack.about(f"tenant *{tenant}*", "chat.postMessage"))


def test_heartbeats_signed_by_a_strangers_key_open_the_episode_end_to_end(
    publisher: Any, firestore: Any, api: Api, slack: Slack, tenant: str, agent_id: str
) -> None:
    registered(publisher, firestore, tenant, agent_id)  # enrolled: its key is bound (helpers' keyring)
    assert (agent_doc(firestore, agent_id) or {})["identity"]["keys"]
    stranger = AgentKey.generate()
    for seq in range(1, THRESHOLD + 3):
        publish(publisher, heartbeat(agent_id, seq), signer=stranger, tenant=tenant)

    def refused() -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = api.get("/v1/rejections", claimed_agent_id=agent_id).json()["items"]
        return items if len(items) >= THRESHOLD + 2 else []

    assert {r["code"] for r in wait_for(refused, timeout=60)} <= {"bad_signature", "unknown_key"}
    assert (agent_doc(firestore, agent_id) or {}).get("heartbeats", 0) == 0  # nothing touched its liveness
    posted = sweep_until(publisher, lambda: slack.about(agent_id, "chat.postMessage"))
    assert "Forged events" in json.dumps(posted[0]["params"])
