"""Commands signed by the fleet: one definition of how a command is signed (server) and checked (SDK).

    body, attributes = sign_command(command, fleet_key)          # the fleet, before it publishes
    command = verify_command(body, attributes, fleet_public_key)  # the agent: None means ignore it

The body stays the :class:`~fleet_agent.contracts.Command` JSON, so an SDK that predates signatures
still reads it; the signature travels in three attributes (``sig_key_id``, ``sig_alg``, ``sig``) and
covers :func:`fleet_agent.identity.command_signing_bytes` of the body's ``agent_id`` and the body's
JSON value exactly as sent (docs/events.md). The ``agent_id`` attribute (which subscriptions filter
on) must name the agent the signed body names, so a signed command cannot be re-addressed.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from fleet_agent.contracts import Command, EventType, Signature
from fleet_agent.identity import AgentKey, command_signing_bytes, verify

#: The attributes a signed command carries besides ``agent_id``, ``event_type`` and ``command``.
SIG_KEY_ID = "sig_key_id"
SIG_ALG = "sig_alg"
SIG = "sig"


def sign_command(command: Command, key: AgentKey) -> tuple[bytes, dict[str, str]]:
    """The message body and attributes of ``command`` signed by ``key`` (the fleet's)."""
    body = command.model_dump_json(exclude_none=True).encode()
    # Sign the value the body carries, parsed back: what a verifier sees, never a second rendering.
    signature = key.sign(command_signing_bytes(command.agent_id, json.loads(body)))
    return body, {
        "agent_id": command.agent_id,
        "event_type": EventType.COMMAND.value,
        "command": command.command.value,
        SIG_KEY_ID: signature.key_id,
        SIG_ALG: signature.alg,
        SIG: signature.value,
    }


def verify_command(body: bytes, attributes: Mapping[str, str], fleet_public_key: str) -> Command | None:
    """The command in ``body`` if the fleet's key signed it for the agent its attributes name, else None.

    None for anything wrong: unsigned, malformed body or signature, another key, a body changed after
    signing, or an ``agent_id`` attribute that differs from the body's. Never raises for bad input.
    """
    key_id, alg, sig = attributes.get(SIG_KEY_ID), attributes.get(SIG_ALG), attributes.get(SIG)
    if not (key_id and alg and sig):
        return None
    try:
        value: Any = json.loads(body)
        if not isinstance(value, dict):
            return None
        agent_id = value.get("agent_id")
        if not isinstance(agent_id, str) or attributes.get("agent_id") != agent_id:
            return None
        signature = Signature(key_id=key_id, alg=alg, value=sig)
        if not verify(fleet_public_key, signature, command_signing_bytes(agent_id, value)):
            return None
        # The value that was verified is the one validated (no second parse that could read otherwise).
        return Command.model_validate(value)
    except (ValueError, ValidationError):  # bad JSON or UTF-8, JCS limits, a malformed key, a bad command
        return None
