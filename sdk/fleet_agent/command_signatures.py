"""Checking that a command on ``agent-commands`` was signed by the fleet, before an agent obeys it.

The fleet signs each command with its own key over ``identity.command_signing_bytes(agent_id, body)``
(``body``: the message body's JSON value) and puts the signature in the message attributes
``sig_key_id``, ``sig_alg`` and ``sig``. The fleet's public key reaches the agent with its enrollment
token, out of band, so a stranger who may publish on the topic cannot make a command that verifies.
Pure: no I/O, no logging (the caller says what it ignores).
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from pydantic import ValidationError

from fleet_agent.contracts import Command, Signature
from fleet_agent.identity import command_signing_bytes, verify


def verify_command(body: bytes, attributes: Mapping[str, str], fleet_public_key: str) -> Command | None:
    """The command in ``body`` when its signature verifies against ``fleet_public_key``; else None.

    None too for a body that is not a command, a missing or malformed signature, or an ``agent_id``
    attribute naming another agent than the body (the signature covers the body's ``agent_id``).
    """
    key_id, alg, value = (attributes.get(name) for name in ("sig_key_id", "sig_alg", "sig"))
    if not key_id or not alg or not value:
        return None
    try:
        signed = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    agent_id = signed.get("agent_id") if isinstance(signed, dict) else None
    if not isinstance(agent_id, str) or attributes.get("agent_id", agent_id) != agent_id:
        return None
    try:
        signature = Signature(key_id=key_id, alg=alg, value=value)
        message = command_signing_bytes(agent_id, signed)
    except (ValidationError, ValueError):
        return None
    if not verify(fleet_public_key, signature, message):
        return None
    try:
        return Command.model_validate_json(body)
    except ValidationError:
        return None
