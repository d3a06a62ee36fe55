"""Critical alerts at once (issue 21), through the real path: a cost batch that opens a critical
episode reaches the fake Slack with no minute job fired (``fleet-costs`` commits it and hands its id over,
``fleet-actions`` claims and sends it); a warning still waits for the minute job; and the minute job run
right after sends no second message.

The test stack runs no scheduler (tests fire ticks themselves), so nothing but the hand-over can send
before the tick below; each notice also records who sent it (``sent_by``: the raising function, as the
stack names it) and the code path that raised it (``raised_by``).
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import pytest

from tests.integration.conftest import Api, Slack, tick, wait_for
from tests.integration.helpers import agent_doc, heartbeat, publish, registration
from tests.integration.test_costs import batch, record

pytestmark = pytest.mark.integration


@pytest.fixture
def tenant(api: Api) -> str:
    name = f"t-{uuid.uuid4().hex[:10]}"
    # No group wait: the warning below is due at once, so only the missing tick keeps it from Slack.
    reply = api.send("PUT", f"/v1/tenants/{name}/alerting", {"group_wait_s": 0})
    assert reply.status_code == 200, reply.text
    reply = api.send("PUT", f"/v1/tenants/{name}/protection", {"runaway_calls_per_minute": 50})
    assert reply.status_code == 200, reply.text
    return name


def notices(firestore: Any, agent_id: str) -> list[dict[str, Any]]:
    # lazy: the Firestore client's types, loaded with the client (as the other integration tests do)
    from google.cloud.firestore_v1.base_query import FieldFilter

    docs = firestore.collection("notifications").where(filter=FieldFilter("agent_id", "==", agent_id)).stream()
    return [d.to_dict() or {} for d in docs]


def openings(slack: Slack, needle: str) -> list[dict[str, Any]]:
    """Top-level messages (not thread replies) that name ``needle``."""
    return [c for c in slack.about(needle, "chat.postMessage") if not c["params"].get("thread_ts")]


def test_a_runaway_loop_reaches_slack_at_once_and_a_warning_waits_for_the_minute_job(
    publisher: Any, firestore: Any, api: Api, slack: Slack, tenant: str
) -> None:
    looping, spending = f"it-loop-{uuid.uuid4().hex[:8]}", f"it-spend-{uuid.uuid4().hex[:8]}"
    publish(publisher, registration(looping, tenant=tenant))
    publish(publisher, registration(spending, tenant=tenant, budget={"daily_usd": "1"}))
    for agent in (looping, spending):
        wait_for(lambda a=agent: agent_doc(firestore, a))

    # $0.85 of a $1 daily budget: the 50% and 80% thresholds (info, warning), not critical.
    publish(publisher, batch(spending, [record(j, cost="0.05") for j in range(17)]))
    wait_for(lambda: len(api.get("/v1/alerts", agent_id=spending).json()["items"]) >= 2)
    # 60 calls in one minute: a runaway loop (critical), the agent paused.
    publish(publisher, batch(looping, [record(j, cost="0.0001") for j in range(60)]))

    sent = wait_for(lambda: openings(slack, looping), timeout=20)
    assert len(sent) == 1 and "Runaway loop" in json.dumps(sent[0]["params"])
    assert sent[0]["response"]["channel"] == slack_channel(slack, "#fleet-oncall")
    [opening] = [n for n in notices(firestore, looping) if n["event"] == "open"]
    assert opening["severity"] == "critical" and opening["state"] == "sent"
    assert (opening["sent_by"], opening["raised_by"]) == ("at_once:fleet-costs", "cost_rules")
    # Finished in one write with its episode's message (the real batch): where later events reply.
    episode = firestore.collection("episodes").document(opening["episode_id"]).get().to_dict() or {}
    assert (
        episode["slack"]
        == {"channel": opening["channel"], "ts": opening["ts"]}
        == {
            "channel": sent[0]["response"]["channel"],
            "ts": sent[0]["response"]["ts"],
        }
    )

    # The warning waits: its notice is due (no group wait) but nothing has flushed the outbox.
    time.sleep(3)
    assert openings(slack, spending) == []
    assert {n["state"] for n in notices(firestore, spending)} == {"pending"}

    tick(publisher)  # the minute job, as Cloud Scheduler fires it
    wait_for(lambda: openings(slack, spending), timeout=20)

    def all_sent() -> list[dict[str, Any]]:
        # The budget's threshold notices; a budget_forecast the same tick may open (the agent spent $0.85 of
        # its $1 day in a minute) waits for its own group wait and is not this test's subject.
        found = [n for n in notices(firestore, spending) if n["rule"] != "budget_forecast"]
        return found if all(n["state"] == "sent" for n in found) else []

    done = wait_for(all_sent)
    assert {n["sent_by"] for n in done} == {"minute_job"}
    tick(publisher)  # and once more, for good measure
    time.sleep(3)
    assert len(openings(slack, looping)) == 1  # the minute job did not send it again
    assert [n["sent_by"] for n in notices(firestore, looping) if n["event"] == "open"] == ["at_once:fleet-costs"]


def slack_channel(slack: Slack, name: str) -> str:
    """The channel id the fake Slack gives ``name`` (the route of critical notices)."""
    # lazy: the fake's id scheme, only where a test compares channel ids
    from emulators.fake_slack import channel_id

    return channel_id(name)


def test_a_quarantine_by_the_health_rules_reaches_slack_from_the_heartbeat_function(
    publisher: Any, firestore: Any, api: Api, slack: Slack, tenant: str
) -> None:
    agent_id = f"it-quar-{uuid.uuid4().hex[:8]}"
    reply = api.send("PUT", f"/v1/tenants/{tenant}/health", {"quarantine_at": 90})
    assert reply.status_code == 200, reply.text
    publish(publisher, registration(agent_id, tenant=tenant, heartbeat_interval_s=30))
    wait_for(lambda: agent_doc(firestore, agent_id))
    publish(publisher, heartbeat(agent_id, 1, error_rate=0.5, cpu_pct=10.0))  # score 85: quarantined

    sent = wait_for(lambda: [c for c in openings(slack, agent_id) if "quarantined" in json.dumps(c["params"])])
    assert len(sent) == 1
    by_event = {n["episode_id"].split(".")[-2] + "." + n["event"]: n for n in notices(firestore, agent_id)}
    quarantine = by_event["security.open"]
    assert (quarantine["sent_by"], quarantine["raised_by"]) == ("at_once:fleet-heartbeats", "heartbeat_rules")
    assert by_event["error_rate.open"]["state"] == "pending"  # a warning: the minute job's
