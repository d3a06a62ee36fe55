"""Receiving the fleet's commands: one Pub/Sub subscription per process, dispatched to its agents.

    listener = agent.listen()          # one agent: FleetAgent.listen() builds and starts this
    agent.register()                   # after listen(): holds re-sent on registration are not missed

    listener = CommandListener(project, label="sim-7")   # many agents in one process
    for agent in agents:
        listener.add(agent)
    listener.start()
    ...
    listener.close()                   # ends the streaming pull, deletes the subscription it created

Why one subscription per *process*, created by the process: several processes may run the same
agent id, and each must see every command, which a shared subscription would not do (Pub/Sub
load-balances a subscription among its pullers). Why not one per agent: a simulator with hundreds
of agents would hold hundreds of streams. A listener serving one agent filters on its ``agent_id``
attribute so Pub/Sub drops the rest of the fleet's commands; a listener for many agents takes them
all and drops the others itself (so does everyone under the emulator, which ignores filters).

Subscriptions it creates expire after a day without a puller, so a crashed process leaves nothing
behind for long. ``google.cloud.pubsub_v1`` is imported only when a listener starts.

An enrolled agent (``agent.command_subscription`` is a path) reads only its own subscription, which the
fleet created at its enrollment: a listener serving it pulls from that one
(:class:`~fleet_agent.command_pull.SubscriptionPoller`, however many such agents it serves), makes no
subscription of its own unless it also serves an unenrolled agent, and hands each message to the
agent with its attributes, so the agent checks the fleet's signature before obeying. An agent that signs
but does not know the fleet's public key cannot be added (it would obey no command anyway).
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import re
import secrets
import threading
from types import TracebackType
from typing import Any, Self

from fleet_agent.command_delivery import CommandDelivery
from fleet_agent.command_pull import (
    CommandTarget,
    OnCommand,
    StreamingPull,
    Subscriber,
    SubscriptionPoller,
    wait_for_subscription,
)
from fleet_agent.contracts import DEFAULT_TOPICS, EventType
from fleet_agent.enrollment import no_fleet_key

log = logging.getLogger("fleet_agent")

#: Subscriptions a listener creates are named ``fleet-commands.{label}.{8 random hex}``.
SUBSCRIPTION_PREFIX = "fleet-commands"
#: Commands are small and applied at once: a short deadline redelivers quickly after a crash.
ACK_DEADLINE_S = 10
#: Pub/Sub's minimum; a command older than this is superseded by the server's re-sends anyway.
MESSAGE_RETENTION_S = 600
#: Pub/Sub's minimum: an abandoned subscription (a killed process) is deleted a day after its last pull.
EXPIRATION_TTL_S = 86_400
#: Seconds to wait for creating or deleting the subscription.
ADMIN_TIMEOUT_S = 30.0

_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._~+-]{0,199}$")


class CommandListener(CommandDelivery):
    """Delivers ``agent-commands`` messages to the registered agents' ``apply_command``. Thread-safe.

    Without ``label`` the listener serves exactly one agent: its subscription is named after the
    agent and filtered on it. With ``label`` it serves any number of agents, added before or after
    :meth:`start`. With ``subscription`` it pulls from that existing subscription and neither
    creates nor deletes it (for deployments that pre-create subscriptions and grant only
    ``roles/pubsub.subscriber``).

    ``on_command(agent_id, command)`` is called after each command new to the agent was applied
    (not for redeliveries), on a Pub/Sub callback thread, so it should return quickly. It sees what
    the server sent; what is in force is ``agent.costs.blocked`` (a lift older than its block, say,
    changes nothing).
    """

    def __init__(
        self,
        project: str | None = None,
        *,
        topic: str | None = None,
        label: str | None = None,
        subscription: str | None = None,
        subscriber: Subscriber | None = None,
        on_command: OnCommand | None = None,
        max_messages: int = 500,
        await_subscription_s: float | None = None,
    ) -> None:
        """``topic`` is a name or a full path (default ``agent-commands``, as in :data:`DEFAULT_TOPICS`).

        ``project`` is where the subscription is created: by default the topic's project when
        ``topic`` is a path, else ``GOOGLE_CLOUD_PROJECT``. ``await_subscription_s``: :meth:`start`
        waits up to that long for ``subscription`` to exist (the fleet makes an agent's at enrollment).
        """
        if label is not None and not _LABEL.fullmatch(label):
            raise ValueError(f"label {label!r} must match {_LABEL.pattern}")
        topic = topic or DEFAULT_TOPICS[EventType.COMMAND]
        if topic.startswith("projects/"):
            project = project or topic.split("/")[1]
        project = project or os.environ.get("GOOGLE_CLOUD_PROJECT") or os.environ.get("GCLOUD_PROJECT")
        if not project and not (subscription or "").startswith("projects/"):
            raise ValueError("no project: pass project= or set GOOGLE_CLOUD_PROJECT")
        self.project = project or ""
        self.topic = topic if topic.startswith("projects/") else f"projects/{project}/topics/{topic}"
        self.label = label
        self._subscription: str | None = None
        if subscription is not None:
            self._subscription = (
                subscription
                if subscription.startswith("projects/")
                else f"projects/{project}/subscriptions/{subscription}"
            )
        self._subscriber = subscriber
        self._owns_subscriber = subscriber is None
        super().__init__(on_command)
        self._max_messages = max_messages
        self._poller: SubscriptionPoller | None = None
        self._await_s = await_subscription_s
        self._filter_agent: str | None = None
        self._life = threading.RLock()  # serialises start() and close() (start() starts the stream under it)
        self._future: StreamingPull | None = None
        self._created = False
        self._closed = False

    # -- agents -------------------------------------------------------------------------------

    def add(self, agent: CommandTarget, on_command: OnCommand | None = None) -> None:
        """Deliver this agent's commands to it (and to ``on_command``, after the listener's own)."""
        agent_id = agent.agent_id
        if getattr(getattr(agent, "identity", None), "lacks_fleet_key", False):
            raise RuntimeError(no_fleet_key(agent_id))  # it could not tell the fleet's commands from a stranger's
        own = getattr(agent, "command_subscription", None)
        if own is not None and own == self._subscription:
            own = None  # this listener's own stream is that subscription
        with self._lock:
            if own is None and self._filter_agent is not None and agent_id != self._filter_agent:
                raise ValueError(
                    f"this listener's subscription is filtered to {self._filter_agent}; "
                    "create the listener with label= to serve several agents"
                )
            current = self._agents.get(agent_id)
            if current is not None and current[0] is not agent:
                raise ValueError(f"another object is already listening as agent {agent_id}")
            self._agents[agent_id] = (agent, on_command)
            if "attributes" in inspect.signature(agent.apply_command).parameters:
                self._with_attributes.add(agent_id)
            if own is not None:
                self._own[agent_id] = own
                self._owner[own] = agent_id
            poller, streaming = self._poller, self._future is not None
        if own is not None and poller is not None:
            poller.add(own)
        elif own is None and not streaming and self._poller is not None:
            self._start_stream(ADMIN_TIMEOUT_S)  # the first unenrolled agent of a started listener

    def remove(self, agent_id: str) -> None:
        """Stop delivering to ``agent_id``; its later commands are acked and ignored."""
        with self._lock:
            self._agents.pop(agent_id, None)
            self._with_attributes.discard(agent_id)
            own = self._own.pop(agent_id, None)
            self._owner.pop(own or "", None)
            poller = self._poller
        if own is not None and poller is not None:
            poller.remove(own)

    # -- lifecycle ----------------------------------------------------------------------------

    @property
    def subscription(self) -> str | None:
        """The subscription path pulled from (None before :meth:`start` when the listener makes its own)."""
        return self._subscription

    @property
    def owns_subscription(self) -> bool:
        """True when this listener created its subscription, and so deletes it on :meth:`close`."""
        return self._created

    @property
    def running(self) -> bool:
        future = self._future
        return (future is not None and not future.done()) or self._poller is not None

    def start(self, timeout: float = ADMIN_TIMEOUT_S) -> Self:
        """Create the subscription (waits for it), then start the streaming pull. Idempotent.

        Once this returns, every command published afterwards reaches the listener: the
        subscription exists and retains messages even before the stream has connected. That is
        why it must run before the agent registers — the server re-sends an agent's holds (a
        pause, an exhausted budget) when it registers.
        """
        with self._life:
            if self._closed:
                raise RuntimeError("command listener is closed")
            if self._future is not None or self._poller is not None:
                return self
            with self._lock:
                own = dict(self._own)
                stream = self._subscription is not None or len(own) < len(self._agents) or not self._agents
            if stream:
                self._start_stream(timeout)
            if own or self.label is not None:  # a shared listener may get enrolled agents later
                poller = SubscriptionPoller(self._client(), self._on_pulled)
                for path in own.values():
                    poller.add(path)
                poller.start()
                with self._lock:
                    self._poller = poller
                    late = set(self._own.values()) - set(own.values())
                for path in late:  # added while starting
                    poller.add(path)
            return self

    def _start_stream(self, timeout: float) -> None:
        """Create (or wait for) the subscription, then start the streaming pull."""
        with self._life:
            if self._future is not None:
                return
            subscriber = self._client()
            if self._subscription is not None and self._await_s is not None:
                wait_for_subscription(subscriber, self._subscription, self._await_s)
            if self._subscription is None:
                self._subscription = self._create(subscriber, timeout)
                self._created = True
            # lazy: gRPC is heavy, and importing fleet_agent must stay cheap
            from google.cloud.pubsub_v1.types import FlowControl

            # The client's stream would hold each message for 60 s unless told otherwise: a command lost in
            # flight must come back within the subscription's own 10 s deadline, not a minute later.
            flow = FlowControl(max_messages=self._max_messages, max_duration_per_lease_extension=ACK_DEADLINE_S)
            try:
                future = subscriber.subscribe(self._subscription, self._on_message, flow_control=flow)
            except Exception:
                if self._created:  # leave the listener as it was before start()
                    self._delete(subscriber, timeout)
                    self._subscription = None
                    with self._lock:
                        self._filter_agent = None
                raise
            future.add_done_callback(self._on_stream_end)
            self._future = future
            log.info("listening for commands on %s", self._subscription)

    def _client(self) -> Subscriber:
        if self._subscriber is None:
            # lazy: gRPC is heavy, and importing fleet_agent must stay cheap
            from google.cloud.pubsub_v1 import SubscriberClient

            self._subscriber = SubscriberClient()
        return self._subscriber

    def _create(self, subscriber: Subscriber, timeout: float) -> str:
        with self._lock:
            if self.label is not None:
                label, agent_filter = self.label, None
            elif len(self._agents) - len(self._own) == 1:
                (label,) = set(self._agents) - set(self._own)
                agent_filter = label
            else:
                raise ValueError(
                    f"a listener without label= serves exactly one agent; it has {len(self._agents)}: "
                    "add() one agent, or give label= to serve several"
                )
            # Set before the subscription exists, so add() cannot slip in an agent the filter drops.
            self._filter_agent = agent_filter
        path = f"projects/{self.project}/subscriptions/{SUBSCRIPTION_PREFIX}.{label}.{secrets.token_hex(4)}"
        request: dict[str, Any] = {
            "name": path,
            "topic": self.topic,
            "ack_deadline_seconds": ACK_DEADLINE_S,
            "message_retention_duration": {"seconds": MESSAGE_RETENTION_S},
            "expiration_policy": {"ttl": {"seconds": EXPIRATION_TTL_S}},
        }
        if agent_filter is not None:
            request["filter"] = f'attributes.agent_id = "{agent_filter}"'
        try:
            subscriber.create_subscription(request=request, timeout=timeout)
        except Exception:
            with self._lock:
                self._filter_agent = None
            raise
        return path

    def close(self, timeout: float = ADMIN_TIMEOUT_S) -> None:
        """End the streaming pull and delete the subscription if this listener created it. Idempotent.

        Deleting is best effort (a failure is logged): a subscription left behind expires by
        itself a day later.
        """
        with self._life:
            if self._closed:
                return
            self._closed = True
            future, self._future = self._future, None
            with self._lock:
                poller, self._poller = self._poller, None
            if poller is not None:
                poller.close(timeout)
            subscriber = self._subscriber
            if future is not None:
                future.cancel()
                # Blocks until the stream has shut down; a stream that failed was logged when it ended.
                with contextlib.suppress(Exception):
                    future.result(timeout=timeout)
            if subscriber is not None:
                self._delete(subscriber, timeout)
                if self._owns_subscriber:
                    close = getattr(subscriber, "close", None)
                    if callable(close):
                        close()

    def _delete(self, subscriber: Subscriber, timeout: float) -> None:
        if not self._created or self._subscription is None:
            return
        try:
            subscriber.delete_subscription(request={"subscription": self._subscription}, timeout=timeout)
        except Exception as exc:
            log.warning("could not delete command subscription %s (it expires by itself): %s", self._subscription, exc)
        self._created = False

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        agents = len(self.agent_ids)
        return f"CommandListener(subscription={self._subscription!r}, agents={agents}, running={self.running})"

    # -- delivery (the rest is CommandDelivery's) ----------------------------------------------

    def _on_stream_end(self, future: Any) -> None:
        if future.cancelled():
            return
        try:
            exc = future.exception()
        except Exception as err:  # a cancelled plain Future raises instead of returning
            exc = err
        if exc is not None:
            log.error("command stream on %s ended: %s; commands are no longer received", self._subscription, exc)
