"""Which of a listener's agents gets a command message, and how: the delivery half of
:class:`~fleet_agent.commands.CommandListener` (the other half makes subscriptions and pulls).

A message goes to the agent its ``agent_id`` attribute names, if the listener serves it. An enrolled
agent (served from its own subscription) gets only what was pulled from that subscription, and gets
the message's attributes too, so it checks the fleet's signature (``FleetAgent.apply_command``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from fleet_agent.command_pull import CommandTarget, OnCommand, PulledMessage
from fleet_agent.contracts import Command

log = logging.getLogger("fleet_agent")


class CommandDelivery:
    """The agents a listener serves and the dispatch of messages to them. Thread-safe."""

    def __init__(self, on_command: OnCommand | None) -> None:
        self._on_command = on_command
        self._lock = threading.Lock()  # guards the maps below and _filter_agent; never held across I/O
        self._agents: dict[str, tuple[CommandTarget, OnCommand | None]] = {}
        self._with_attributes: set[str] = set()  # agents whose apply_command takes the attributes
        self._own: dict[str, str] = {}  # enrolled agent -> its own subscription (pulled by the poller)
        self._owner: dict[str, str] = {}  # and back

    @property
    def agent_ids(self) -> frozenset[str]:
        with self._lock:
            return frozenset(self._agents)

    @property
    def own_subscriptions(self) -> dict[str, str]:
        """Enrolled agents served from their own subscriptions (agent id -> subscription path)."""
        with self._lock:
            return dict(self._own)

    def _on_message(self, message: Any) -> None:
        """Pub/Sub callback: always acks, since a redelivery could not change the outcome."""
        try:
            self._dispatch(message)
        except Exception:
            log.exception("command message %s: dispatch failed", getattr(message, "message_id", "?"))
        finally:
            message.ack()

    def _on_pulled(self, path: str, message: PulledMessage) -> None:
        """From an enrolled agent's own subscription: for that agent only (the emulator ignores filters)."""
        with self._lock:
            owner = self._owner.get(path)
        if owner is not None and message.attributes.get("agent_id") == owner:
            self._dispatch(message)

    def _dispatch(self, message: Any) -> None:
        attributes: Mapping[str, str] = message.attributes or {}
        agent_id = attributes.get("agent_id")
        if agent_id is not None and self._entry(agent_id) is None:
            return  # another agent's command: checked before decoding, as most are not ours
        if agent_id is not None and agent_id in self._own and not isinstance(message, PulledMessage):
            return  # an enrolled agent's commands come from its own subscription only
        try:
            command = Command.model_validate_json(message.data)
        except ValidationError as exc:  # bad JSON as well as a bad command
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in exc.errors()[:3])
            log.warning("ignoring undecodable command message %s: %s", getattr(message, "message_id", "?"), problems)
            return
        if agent_id is None:
            agent_id = command.agent_id
        elif command.agent_id != agent_id:
            log.warning(
                "ignoring command %s: attribute agent_id %s differs from the body's %s",
                command.command_id,
                agent_id,
                command.agent_id,
            )
            return
        entry = self._entry(agent_id)
        if entry is None:
            return
        target, own_callback = entry
        if agent_id in self._with_attributes:
            applied = target.apply_command(message.data, attributes=attributes)
        else:
            applied = target.apply_command(message.data)
        if applied is None:
            return  # seen already (a redelivery, or the same command through another listener)
        for callback in (self._on_command, own_callback):
            if callback is None:
                continue
            try:
                callback(agent_id, applied)
            except Exception:
                log.exception("agent %s: on_command callback failed for %s", agent_id, applied.command_id)

    def _entry(self, agent_id: str) -> tuple[CommandTarget, OnCommand | None] | None:
        with self._lock:
            return self._agents.get(agent_id)
