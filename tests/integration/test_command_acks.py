"""Remediation commands through the real path: an enrolled agent whose registration supports commands.v2,
an operator's drain (POST /v1/agents/{id}/commands) arriving signed on the agent's own command subscription,
the agent's signed acks on agent-command-acks (fleet-command-acks) moving it to done whatever their order,
a forged and an unknown ack refused, and a command never acknowledged re-sent once with the same id by the
minute sweep, then escalated as a ``command_unacknowledged`` episode that a late ack resolves.

The acks are published by the test (fleet_agent.contracts.encode through the keyring), not by an SDK."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from fleet_agent.command_signatures import verify_command
from fleet_agent.contracts import Command, CommandType
from fleet_agent.identity import AgentKey, command_subscription
from fleet_agent.messages.commands import COMMANDS_V2, AckState, CommandAck

from tests.integration.conftest import tick, wait_for
from tests.integration.helpers import PROJECT, agent_doc, outcomes, publish, registration

pytestmark = pytest.mark.integration


def pull(stack: Any, agent_id: str, seen: list[Command]) -> list[Command]:
    """Commands on the agent's own subscription (the emulator ignores filters: ours are picked out),
    verified with the fleet's public key as the SDK does; ``seen`` accumulates them."""
    from google.cloud import pubsub_v1

    subscriber = pubsub_v1.SubscriberClient()
    path = subscriber.subscription_path(PROJECT, command_subscription(agent_id))
    reply = subscriber.pull(request={"subscription": path, "max_messages": 50}, timeout=5)
    if reply.received_messages:
        subscriber.acknowledge(request={"subscription": path, "ack_ids": [m.ack_id for m in reply.received_messages]})
    for received in reply.received_messages:
        message = received.message
        command = verify_command(message.data, dict(message.attributes), stack.env["FLEET_PUBLIC_KEY"])
        if command is not None and command.agent_id == agent_id:
            seen.append(command)
    return seen


def channel_ready(agent_id: str) -> bool:
    """Whether the agent's command subscription exists (made by fleet-registrations after the agent's write)."""
    from google.api_core.exceptions import NotFound
    from google.cloud import pubsub_v1

    subscriber = pubsub_v1.SubscriberClient()
    try:
        subscriber.get_subscription(
            request={"subscription": subscriber.subscription_path(PROJECT, command_subscription(agent_id))}
        )
    except NotFound:
        return False
    return True


def ack(agent_id: str, command: Command, state: AckState, detail: str = "") -> CommandAck:
    sent = datetime.now(UTC)
    return CommandAck(
        agent_id=agent_id,
        command_id=command.command_id,
        command=command.command,
        state=state,
        detail=detail,
        sent_at=sent,
    )


def commands(api: Any, agent_id: str) -> list[dict[str, Any]]:
    reply = api.get(f"/v1/agents/{agent_id}/commands")
    assert reply.status_code == 200, reply.text
    listed: list[dict[str, Any]] = reply.json()["commands"]
    return listed


def test_a_drain_is_acked_to_done_and_an_unacked_restart_is_resent_then_escalated(
    stack: Any, firestore: Any, api: Any, publisher: Any
) -> None:
    tenant, agent_id = f"t-{uuid.uuid4().hex[:10]}", f"ack-{uuid.uuid4().hex[:10]}"
    api.send("PUT", f"/v1/tenants/{tenant}/alerting", {"group_wait_s": 0})
    publish(publisher, registration(agent_id, tenant=tenant, supports=[COMMANDS_V2]))
    wait_for(lambda: (agent_doc(firestore, agent_id) or {}).get("supports") == [COMMANDS_V2])
    wait_for(lambda: channel_ready(agent_id), timeout=20)

    sent = api.send("POST", f"/v1/agents/{agent_id}/commands", {"command": "drain", "reason": "failing tasks"})
    assert sent.status_code == 200, sent.text
    (entry,) = sent.json()["commands"]
    assert entry["state"] == "sent" and entry["command"] == "drain"
    seen: list[Command] = []
    (drain,) = wait_for(lambda: pull(stack, agent_id, seen), timeout=20)
    assert drain.command is CommandType.DRAIN and drain.command_id == entry["command_id"] and drain.deadline

    # Done arrives first, then the acknowledgement (reordered), then done again (redelivered, same event id).
    publish(publisher, ack(agent_id, drain, AckState.DONE), event_id="done-" + agent_id)
    wait_for(lambda: commands(api, agent_id)[0]["state"] == "done")
    publish(publisher, ack(agent_id, drain, AckState.ACKNOWLEDGED))
    publish(publisher, ack(agent_id, drain, AckState.DONE), event_id="done-" + agent_id)
    # A stranger's ack (another key), and one for a command the agent was never sent.
    forged = ack(agent_id, drain, AckState.FAILED, "forged")
    publish(publisher, forged, signer=AgentKey.generate(), tenant=tenant)
    stray = drain.model_copy(update={"command_id": "drain.never-sent-" + agent_id[-6:]})
    publish(publisher, ack(agent_id, stray, AckState.DONE))
    wait_for(lambda: sorted(outcomes(stack, "fleet-command-acks", agent_id)).count("rejected") == 2, timeout=20)
    assert sorted(outcomes(stack, "fleet-command-acks", agent_id)) == [
        "accepted", "duplicate", "duplicate", "rejected", "rejected"
    ]  # fmt: skip
    (listed,) = commands(api, agent_id)
    assert listed["state"] == "done" and listed["acked_at"] and listed["done_at"] and listed["detail"] is None
    codes = {r["code"] for r in api.get("/v1/rejections", agent_id=agent_id).json()["items"]} | {
        r["code"] for r in api.get("/v1/rejections", claimed_agent_id=agent_id).json()["items"]
    }
    assert codes == {"unknown_command", "unknown_key"}  # the stranger signed with a key not the agent's

    # A restart the agent never acknowledges: re-sent once with the same id, then escalated.
    restart = api.send(
        "POST", f"/v1/agents/{agent_id}/commands", {"command": "restart", "reason": "frozen", "deadline_s": 1}
    )
    assert restart.status_code == 200, restart.text
    restart_id = restart.json()["commands"][0]["command_id"]

    def swept(state: str, attempts: int) -> bool:
        tick(publisher)
        time.sleep(0.7)
        found = {c["command_id"]: c for c in commands(api, agent_id)}[restart_id]
        return found["state"] == state and found["attempts"] == attempts

    wait_for(lambda: swept("sent", 2), timeout=30, every=0.3)
    wait_for(lambda: swept("unacknowledged", 2), timeout=30, every=0.3)
    wait_for(lambda: [c.command_id for c in pull(stack, agent_id, seen)].count(restart_id) == 2, timeout=20)
    episodes = (agent_doc(firestore, agent_id) or {}).get("episodes") or {}
    episode_id = episodes["command_unacknowledged"]["id"]
    opened = api.get(f"/v1/alerts/{episode_id}").json()
    assert opened["severity"] == "high" and opened["state"] == "open" and restart_id in opened["message"]

    # The agent comes back and acknowledges after all: the episode resolves.
    restarted = next(c for c in seen if c.command_id == restart_id)
    publish(publisher, ack(agent_id, restarted, AckState.ACKNOWLEDGED))
    wait_for(lambda: api.get(f"/v1/alerts/{episode_id}").json()["state"] == "resolved", timeout=20)
    assert {c["command_id"]: c for c in commands(api, agent_id)}[restart_id]["state"] == "acknowledged"
