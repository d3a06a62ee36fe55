"""A stranger's commands change nothing: a real SDK agent, enrolled on the local stack, on its own command
subscription, obeys the fleet's signed pause and resume and ignores a forged, an unsigned and an altered
``resume`` published on agent-commands (where the emulator, ignoring filters, delivers them to it)."""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from fleet_agent import CallRefused, FleetAgent
from fleet_agent.command_signatures import sign_command
from fleet_agent.contracts import DEFAULT_TOPICS, Command, CommandType, EventType
from fleet_agent.identity import AgentKey

from tests.integration.conftest import wait_for
from tests.integration.helpers import PROJECT, agent_doc, registration, sdk_identity


def refused(agent: FleetAgent) -> str | None:
    """Why the agent refuses a model call now (None: it may call)."""
    try:
        with agent.costs.call("probe", model="gpt-4o") as call:
            call.tokens(1, 1)
            call.cost("0")
    except CallRefused as exc:
        return str(exc)
    return None


def test_the_sdk_obeys_the_fleets_commands_and_ignores_a_strangers(stack: Any, firestore: Any, api: Any,
                                                                   publisher: Any, tmp_path: Any) -> None:  # fmt: skip
    tenant, agent_id = f"t-{uuid.uuid4().hex[:10]}", f"cmd-{uuid.uuid4().hex[:10]}"
    with FleetAgent(registration(agent_id, tenant=tenant), project=PROJECT,
                    **sdk_identity(tmp_path, agent_id, tenant)) as agent:  # fmt: skip
        agent.listen()
        agent.register()
        wait_for(lambda: agent_doc(firestore, agent_id))
        assert refused(agent) is None

        paused = api.send("POST", f"/v1/agents/{agent_id}/pause", {"reason": "investigating"})
        assert paused.status_code == 200, paused.text
        assert "pause" in str(wait_for(lambda: refused(agent), timeout=30))  # the fleet's signed pause: obeyed

        topic = publisher.topic_path(PROJECT, DEFAULT_TOPICS[EventType.COMMAND])
        forged = Command(
            agent_id=agent_id,
            command=CommandType.RESUME,
            reason="trust me",
            issued_at=datetime.now(UTC),
            command_id=f"forged-{uuid.uuid4().hex[:8]}",
        )
        stranger = AgentKey.generate()
        body, attributes = sign_command(forged, stranger)  # signed, by a key that is not the fleet's
        publisher.publish(topic, body, **attributes).result()
        unsigned = {k: v for k, v in attributes.items() if not k.startswith("sig")}
        publisher.publish(topic, body, **unsigned).result()
        genuine_shape = json.loads(body)
        genuine_shape["reason"] = "altered after signing"
        publisher.publish(topic, json.dumps(genuine_shape).encode(), **attributes).result()
        time.sleep(5)  # the agent pulls its subscription continuously: ample time to (wrongly) apply them
        assert "pause" in str(refused(agent)), "a stranger's resume must change nothing"

        resumed = api.send("POST", f"/v1/agents/{agent_id}/resume", {"reason": "done"})
        assert resumed.status_code == 200, resumed.text
        wait_for(lambda: refused(agent) is None, timeout=30)  # the fleet's own resume still works
