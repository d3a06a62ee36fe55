"""The command methods of :class:`~fleet_agent.FleetAgent`: ``listen`` and ``apply_command``.

An unenrolled agent listens as it always did: a subscription of its process's own on ``agent-commands``,
and it takes any well-formed command for it. An enrolled agent (it has a key and knows the fleet's public
key) pulls from its own subscription, ``agent-commands.<agent_id>``, which the fleet created when it
accepted the agent's enrollment; it never creates one. It obeys only commands whose fleet signature
verifies (:func:`fleet_agent.command_signatures.verify_command`); any other is acknowledged and dropped
with a warning that does not repeat its content.

An agent that signs its events but does not know the fleet's public key (a key from a secret, restarted
without its token, its state file or ``FLEET_PUBLIC_KEY``) fails closed: :meth:`AgentCommands.listen`
raises, and :meth:`AgentCommands.apply_command` obeys no command (one ERROR says why). Only an agent with
no key at all (unsigned, accepted by a tenant whose identity policy is ``optional``) takes unsigned
commands.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping

from fleet_agent.approvals import ApprovalBook
from fleet_agent.command_signatures import verify_command
from fleet_agent.commands import CommandListener, OnCommand, Subscriber
from fleet_agent.contracts import ACKED_COMMANDS, Command, CommandType, EventType, Registration
from fleet_agent.costs import CostRecorder
from fleet_agent.enrollment import AgentIdentity, no_fleet_key

log = logging.getLogger("fleet_agent")

#: Seconds :meth:`AgentCommands.listen` (or, for an enrolling agent, ``register``) waits for the fleet to
#: have created the agent's command subscription.
SUBSCRIPTION_WAIT_S = 60.0


class AgentCommands:
    """The command half of :class:`~fleet_agent.FleetAgent`, which provides the state declared here."""

    project: str
    registration: Registration
    identity: AgentIdentity
    _topics: dict[EventType, str]
    _approvals: ApprovalBook
    _listen_lock: threading.Lock
    _listener: CommandListener | None
    _closed: bool
    _registered: bool
    #: An agent lacking the fleet key said so once (apply_command logs one ERROR, not one per command).
    _said_no_fleet_key: bool = False

    @property
    def costs(self) -> CostRecorder:
        raise NotImplementedError  # FleetAgent's

    def _remediate(self, command: Command) -> None:
        raise NotImplementedError  # Remediation's

    def _reack(self, command: Command) -> None:
        raise NotImplementedError  # Remediation's

    @property
    def commands_topic(self) -> str:
        """Path of the topic the fleet's commands arrive on (``agent-commands`` unless renamed)."""
        return self._topics[EventType.COMMAND]

    @property
    def command_subscription(self) -> str | None:
        """An enrolled agent's own command subscription (path; the fleet creates it); None unenrolled."""
        if not self.identity.enrolled:
            return None
        return f"projects/{self.project}/subscriptions/{self.identity.subscription}"

    @property
    def listener(self) -> CommandListener | None:
        """The listener :meth:`listen` started (or, for an agent still enrolling, will start), if any."""
        return self._listener

    def listen(
        self,
        on_command: OnCommand | None = None,
        *,
        subscriber: Subscriber | None = None,
        subscription: str | None = None,
    ) -> CommandListener:
        """Receive this agent's commands from now on; returns the listener. Idempotent.

        Unenrolled: call it before :meth:`register`, since the server re-sends the agent's holds (a
        pause, an exhausted budget) when it registers and only a subscription that already exists gets
        them. It creates a subscription of this process's own (filtered on this agent, deleted by
        :meth:`close`), or pulls from ``subscription`` when given.

        Enrolled: it pulls from the agent's own subscription (:attr:`command_subscription`), waiting up to
        a minute for it to exist. An agent enrolling now (its registration carries the token) cannot
        listen before registering, since the fleet creates the subscription when it accepts the
        enrollment: the listener is returned not yet started, and :meth:`register` starts it. Nothing is
        missed: the fleet re-sends the holds on every registration, and a new agent has none.

        ``on_command(agent_id, command)`` runs after each command new to the agent was applied. A later
        call returns the same listener and ignores its arguments. Many agents in one process share one
        :class:`CommandListener` instead (see its docstring).

        Raises RuntimeError for an agent that signs its events but does not know the fleet's public key
        (:attr:`AgentIdentity.lacks_fleet_key <fleet_agent.enrollment.AgentIdentity.lacks_fleet_key>`):
        it could not tell the fleet's commands from a stranger's.
        """
        with self._listen_lock:
            if self._closed:
                raise RuntimeError(f"agent {self.registration.agent_id} is closed")
            if self.identity.lacks_fleet_key:
                raise RuntimeError(no_fleet_key(self.registration.agent_id))
            if self._listener is not None:
                return self._listener
            own = self.command_subscription if subscription is None else None
            if self._registered and subscription is None and own is None:
                log.warning(
                    "agent %s: listen() after register(): holds re-sent on registration may be missed",
                    self.registration.agent_id,
                )
            listener = CommandListener(
                self.project,
                topic=self.commands_topic,
                subscription=subscription or own,
                subscriber=subscriber,
                on_command=on_command,
                await_subscription_s=SUBSCRIPTION_WAIT_S if own else None,
            )
            listener.add(self)
            if own is not None and self.identity.enrolling:
                self._listener = listener  # register() starts it once the fleet has the enrollment
                return listener
            self._start(listener)
            self._listener = listener
            return listener

    def _start(self, listener: CommandListener) -> None:
        try:
            listener.start()
        except Exception:
            listener.close()
            raise

    def _start_waiting_listener(self) -> None:
        """After the enrollment registration was accepted: start the listener :meth:`listen` prepared."""
        with self._listen_lock:
            listener = self._listener
            if listener is None or listener.running or self._closed:
                return
            try:
                self._start(listener)
            except Exception:
                self._listener = None  # a later listen() can try again
                raise

    def apply_command(self, data: bytes, attributes: Mapping[str, str] | None = None) -> Command | None:
        """Take one ``agent-commands`` message into account; None when it is not for this agent.

        An enrolled agent obeys only a command the fleet signed (its signature is in ``attributes``); one
        that signs but lacks the fleet's public key obeys none. The Pub/Sub emulator does not filter
        subscriptions, so every agent may see every command: the command's ``agent_id`` is checked too.
        """
        if self.identity.lacks_fleet_key:
            if not self._said_no_fleet_key:
                self._said_no_fleet_key = True
                log.error("%s", no_fleet_key(self.registration.agent_id))
            return None
        if self.identity.enrolled:
            assert self.identity.fleet_public_key is not None
            command = verify_command(data, attributes or {}, self.identity.fleet_public_key)
            if command is None:
                log.warning(
                    "agent %s: ignoring a command message whose fleet signature does not verify",
                    self.registration.agent_id,
                )
                return None
        else:
            command = Command.model_validate_json(data)
        if not self.costs.apply(command):  # another agent's, or seen already (deduplicated by command_id)
            if command.agent_id == self.registration.agent_id and command.command in ACKED_COMMANDS:
                self._reack(command)  # re-sent: not run again, acknowledged again (its ack may have been lost)
            return None
        if command.command is CommandType.APPROVAL_DECIDED:
            self._approvals.decide(command)  # unknown or already decided requests: ignored
        elif command.command is CommandType.KEY_ROTATED and command.key_id and self.identity.enrolled:
            self.identity.confirmed(command.key_id)  # a verified confirmation only: switch to the new key
        elif command.command in ACKED_COMMANDS:
            self._remediate(command)  # acknowledged, then carried out (fleet_agent.remediation)
        return command
