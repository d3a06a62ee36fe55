"""Publishing and reading helpers for the integration tests (the real clients, the real path).

The stack requires signed events (its identity policy is the default, ``required``): :func:`publish`
enrolls each agent on its first registration and signs every event of it (tests/integration/keyring.py),
so a test publishes as a real agent would without saying so. ``signed=False`` or ``signer=`` publish
otherwise; :func:`publish_raw` sends bytes as given.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from fleet_agent.contracts import (
    DEFAULT_TOPICS,
    Event,
    EventType,
    Heartbeat,
    Registration,
    encode,
    event_type_of,
)
from fleet_agent.identity import AgentKey

from shared.store import agents as agent_store
from tests.integration.keyring import Keyring, make_token

PROJECT = "fleet-local"


def registration(agent_id: str, **kw: Any) -> Registration:
    data: dict[str, Any] = {
        "agent_id": agent_id,
        "tenant": "acme",
        "name": f"Agent {agent_id}",
        "agent_type": "llm-chat",
        "version": "1.0.0",
        "owner": "ann@example.com",
        "capabilities": ["chat"],
        "heartbeat_interval_s": 30,
        "labels": {"team": "search"},
    }
    data.update(kw)
    return Registration.model_validate(data)


def heartbeat(agent_id: str, seq: int, status: str = "busy", **metrics: float) -> Heartbeat:
    return Heartbeat(
        agent_id=agent_id,
        seq=seq,
        sent_at=datetime.now(UTC),
        status=status,
        metrics=metrics or {"cpu_pct": 10.0 + seq, "error_rate": 0.01, "tokens_per_s": 3.0},
    )


#: The keys of the agents the tests publish for: installed by tests/integration/conftest.py's stack.
KEYRING: Keyring | None = None


def keyring() -> Keyring:
    if KEYRING is None:
        raise RuntimeError("no keyring: the stack fixture installs it (tests/integration/conftest.py)")
    return KEYRING


def publish(
    publisher: Any,
    event: Event,
    *,
    event_id: str | None = None,
    signer: Any = None,
    tenant: str | None = None,
    signed: bool = True,
) -> str:
    """Publish ``event`` as its agent would: enrolled and signed through the keyring (tests/integration/
    keyring.py: the first registration of an agent enrolls it, every event is signed by its key over its
    tenant). ``signer`` (a fleet_agent.identity.AgentKey) signs instead, over ``tenant`` (a registration
    names its own), the event published as given; ``signed=False`` publishes it unsigned."""
    if signer is None and signed:
        event, signer, tenant = keyring().prepare(event, tenant)
    body, attrs = encode(event, event_id=event_id, signer=signer, tenant=tenant)
    topic = publisher.topic_path(PROJECT, DEFAULT_TOPICS[event_type_of(event)])
    return str(publisher.publish(topic, body, **attrs).result())


def signed_encode(event: Event, *, event_id: str | None = None) -> tuple[bytes, dict[str, str]]:
    """Body and attributes of ``event`` signed by its agent's key in the keyring (for publish_raw)."""
    event, signer, tenant = keyring().prepare(event)
    return encode(event, event_id=event_id, signer=signer, tenant=tenant)


def enrollment_token(
    stack: Any, tenant: str, *, max_uses: int = 1, expires_in: timedelta = timedelta(hours=1), **scope: Any
) -> str:
    """A new enrollment token of ``tenant``, written straight to Firestore (as the API would store it);
    returns its text (``afmt1...``), as an admin would hand it out. ``scope``: agent_id, agent_prefix,
    revoked_at, uses..."""
    return make_token(stack.env["FLEET_PUBLIC_KEY"], tenant, max_uses=max_uses, expires_in=expires_in, **scope)


def agent_key(agent_id: str) -> AgentKey:
    """The key the keyring enrolled ``agent_id`` with (``FleetAgent(reg, key=agent_key(...))``: the agent
    restarted with its key; the fleet's public key comes from FLEET_PUBLIC_KEY)."""
    return keyring().key(agent_id)


def sdk_identity(directory: Any, agent_id: str, tenant: str, **scope: Any) -> dict[str, Any]:
    """FleetAgent's identity arguments for a new agent (``FleetAgent(reg, **sdk_identity(tmp_path, ...))``):
    a token scoped to it and a key file under ``directory``; the SDK enrolls on its first registration."""
    return keyring().for_sdk(Path(directory), agent_id, tenant, **scope)


def publish_raw(publisher: Any, topic_of: EventType, body: bytes, attributes: dict[str, str]) -> str:
    """Publish arbitrary bytes and attributes to the topic of ``topic_of`` (for bad-input tests)."""
    topic = publisher.topic_path(PROJECT, DEFAULT_TOPICS[topic_of])
    return str(publisher.publish(topic, body, **attributes).result())


def agent_doc(firestore: Any, agent_id: str) -> dict[str, Any] | None:
    """The agent document, its learned models' state (stored as one JSON string) decoded."""
    doc = firestore.collection("agents").document(agent_id).get()
    if not doc.exists:
        return None
    data = dict(doc.to_dict() or {})
    if "ml" in data:
        data["ml"] = agent_store.ml_state(data["ml"])
    return data


def log_lines(stack_dir: Any, function: str) -> list[dict[str, Any]]:
    """Structured log lines a function wrote (one per event)."""
    lines = []
    for line in (stack_dir / "logs" / f"{function}.log").read_text().splitlines():
        if line.startswith("{"):
            try:
                lines.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return lines


def outcomes(stack: Any, function: str, agent_id: str) -> list[str]:
    """What the function logged for each event of this agent, in order."""
    lines = log_lines(stack.state_dir, function)
    return [x["outcome"] for x in lines if x.get("agent_id") == agent_id and "outcome" in x]


def required_tenant(firestore: Any) -> str:
    """A fresh tenant whose identity policy requires signatures (the stack's default too; said, not assumed)."""
    name = f"t-{uuid.uuid4().hex[:10]}"
    firestore.collection("tenants").document(name).set({"identity": {"policy": "required"}})
    return name


def make_key(stack: Any, name: str, role: str, scope: str) -> str:
    """An API key of ``role`` scoped to tenant ``scope``, made with fleetctl as an operator would."""
    import os
    import subprocess
    import sys

    made = subprocess.run(
        [
            sys.executable,
            "-m",
            "shared.cli.fleetctl",
            "keys",
            "create",
            "--name",
            name,
            "--role",
            role,
            "--tenant",
            scope,
        ],
        env={**os.environ, **stack.env},
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return made.stdout.strip()
