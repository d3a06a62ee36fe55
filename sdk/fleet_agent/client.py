"""The agent side of Agent Fleet Manager: register once, then heartbeat in the background.

    agent = FleetAgent(Registration(agent_id="chat-7", tenant="acme", ...),
                       key_path="/var/lib/chat-7/fleet.key", enrollment_token=token)  # first start only
    agent.listen()    # commands from the fleet (pause, budget, breaker); before registering
    agent.register()  # enrolls on first start: the key is made, bound, and signs every event
    agent.start()
    if agent.preapprove("re-embed the corpus", estimated_cost_usd=45):  # a human decides above the threshold
        ...
    agent.close()  # stops the loop and waits for every publish: nothing is lost

Messages are built by :func:`fleet_agent.contracts.encode`, the same module the Cloud Functions
decode with, so the SDK and the server cannot disagree about the wire format. Every event is signed by
the agent's key (:mod:`fleet_agent.enrollment` keeps it and its enrollment state); an agent with no key
and no token sends unsigned events, which only a tenant whose identity policy is ``optional`` accepts.

``google.cloud.pubsub_v1`` is imported only when a :class:`FleetAgent` creates its own publisher
or starts listening: importing :mod:`fleet_agent` stays cheap (the Pub/Sub client pulls in gRPC).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from types import TracebackType
from typing import Any, Protocol, Self

from fleet_agent.agent_commands import AgentCommands
from fleet_agent.approval_requests import ApprovalRequests, Usd, approval_threshold
from fleet_agent.approvals import ApprovalBook
from fleet_agent.commands import CommandListener
from fleet_agent.contracts import (
    COMMANDS_V2,
    DEFAULT_TOPICS,
    Event,
    EventType,
    Heartbeat,
    HeartbeatMetrics,
    Registration,
    ReportedStatus,
    encode,
    utcnow,
)
from fleet_agent.costs import CostRecorder
from fleet_agent.enrollment import AgentIdentity
from fleet_agent.identity import AgentKey
from fleet_agent.pending import PendingPublishes
from fleet_agent.remediation import Remediation

log = logging.getLogger("fleet_agent")

#: Seconds :meth:`FleetAgent.register` waits for Pub/Sub to accept the registration.
REGISTER_TIMEOUT_S = 30.0

MetricsSource = Callable[[], Mapping[str, float]]
StatusSource = Callable[[], ReportedStatus]


class Publisher(Protocol):
    """What the SDK needs of a publisher: the two methods of ``pubsub_v1.PublisherClient`` it uses.

    Spelled out so tests (and other transports) can stand in for the Google client.
    """

    def topic_path(self, project: str, topic: str) -> str: ...

    def publish(self, topic: str, data: bytes, **attrs: Any) -> Future[str]: ...


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class FleetAgent(Remediation, AgentCommands, ApprovalRequests):
    """One agent's connection to the fleet: registration, a heartbeat loop, graceful shutdown (and
    commands and approvals: the methods of :class:`~fleet_agent.agent_commands.AgentCommands`,
    :class:`~fleet_agent.remediation.Remediation` and :class:`~fleet_agent.approval_requests.ApprovalRequests`).

    Thread-safe: :meth:`heartbeat` may be called from any thread while the loop runs. Several
    agents may share one ``PublisherClient`` (a simulator runs hundreds that way); an agent only
    stops a publisher it created itself.
    """

    def __init__(
        self,
        registration: Registration,
        *,
        project: str | None = None,
        topics: Mapping[EventType, str] | None = None,
        publisher: Publisher | None = None,
        metrics: MetricsSource | None = None,
        status: StatusSource | None = None,
        approval_threshold_usd: Usd | None = None,
        enrollment_token: str | None = None,
        key_path: str | os.PathLike[str] | None = None,
        key: AgentKey | None = None,
        fleet_public_key: str | None = None,
        leases: bool = True,
        lease_wait_s: float = 2.0,
        lease_fail_open: bool = False,
        exit_process: Callable[[int], None] | None = None,
    ) -> None:
        """Prepare an agent; nothing is published until :meth:`register` or :meth:`heartbeat`.

        ``project`` defaults to ``GOOGLE_CLOUD_PROJECT``; ``topics`` to :data:`DEFAULT_TOPICS`
        (pass the names Terraform printed when a deployment renames them). ``metrics`` and
        ``status`` are called by the background loop on every beat, so the agent reports what
        is true at that moment rather than what was true at start-up.

        ``approval_threshold_usd``: :meth:`preapprove` asks a human for operations estimated above
        it; default ``FLEET_APPROVAL_THRESHOLD_USD`` from the environment, else 10 (USD).

        Identity (defaults ``FLEET_ENROLLMENT_TOKEN``, ``FLEET_KEY_PATH``, ``FLEET_PUBLIC_KEY``): ``key``
        (e.g. ``AgentKey.from_pem(secret)``), else the key in ``key_path``, else one generated now and
        written there (mode 0600). ``enrollment_token`` is sent with the first registration only
        (``<key_path>.json`` remembers it was used). ``fleet_public_key``: the key commands are verified
        with (default: the token's, then the one remembered at enrollment).

        ``leases`` (default on): :attr:`costs` checks every call against the budget lease the fleet grants
        (the registration says ``leases=True``, so the fleet grants the first one when it registers); a call
        that does not fit waits up to ``lease_wait_s`` for more, then raises ``CallRefused`` (or goes ahead
        without a lease when ``lease_fail_open`` and the fleet did not answer). See docs/sdk.md.

        ``exit_process(code)``: how the default ``stop``/``restart`` ends the process (default
        :func:`~fleet_agent.remediation.exit_now`); see :mod:`fleet_agent.remediation`.
        """
        resolved = project or os.environ.get("GOOGLE_CLOUD_PROJECT") or os.environ.get("GCLOUD_PROJECT")
        if not resolved:
            raise ValueError("no project: pass project= or set GOOGLE_CLOUD_PROJECT")
        self._approval_threshold = approval_threshold(approval_threshold_usd)  # before making a client: may raise
        self.identity = AgentIdentity.resolve(
            registration.agent_id,
            registration.tenant,
            key=key,
            key_path=key_path,
            enrollment_token=enrollment_token,
            fleet_public_key=fleet_public_key,
        )
        # As published: the agent spends leases (by default) and takes (and acks) the remediation commands.
        supports, spends = list(dict.fromkeys([*registration.supports, COMMANDS_V2])), registration.leases or leases
        self.registration = registration.model_copy(update={"leases": spends})
        Registration.__pydantic_validator__.validate_assignment(self.registration, "supports", supports)  # its limits
        self._leases, self._lease_wait_s, self._lease_fail_open = leases, lease_wait_s, lease_fail_open
        self.project: str = resolved
        self._owns_publisher = publisher is None
        if publisher is None:
            # lazy: gRPC is heavy, and not every importer publishes
            from google.cloud.pubsub_v1 import PublisherClient

            publisher = PublisherClient()
        self._publisher: Publisher = publisher
        names = {**DEFAULT_TOPICS, **(topics or {})}
        self._topics: dict[EventType, str] = {
            event_type: self._publisher.topic_path(self.project, names[event_type])
            for event_type in (
                EventType.REGISTRATION,
                EventType.HEARTBEAT,
                EventType.COST,
                EventType.COMMAND,
                EventType.APPROVAL,
                EventType.COMMAND_ACK,
            )
        }
        self._approvals = ApprovalBook()
        self._metrics = metrics
        self._status = status

        # The server drops a heartbeat whose seq is not above the last one it accepted, and it
        # remembers that across restarts of the agent. Seeding from the wall clock (ms) puts a
        # restarted process above everything its predecessor sent (it sent far fewer than one
        # beat per millisecond); after that only +1, so a clock stepping back cannot lower it.
        self._seq = _now_ms() - 1
        # _send orders seq and enqueueing; the pending set has its own lock (see PendingPublishes).
        self._send = threading.Lock()
        self._pending = PendingPublishes()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._costs: CostRecorder | None = None
        # Separate from _send: starting a listener waits on the network, heartbeats must not.
        self._listen_lock = threading.Lock()
        self._listener: CommandListener | None = None
        self._registered = False
        self._init_remediation(exit_process)

    # -- properties ---------------------------------------------------------------------------

    @property
    def agent_id(self) -> str:
        return self.registration.agent_id

    @property
    def last_seq(self) -> int:
        """The seq of the last heartbeat handed to the publisher (seed - 1 before any)."""
        with self._send:
            return self._seq

    @property
    def running(self) -> bool:
        """True while the background heartbeat loop is alive."""
        return self._thread is not None and self._thread.is_alive()

    @property
    def pending(self) -> int:
        """Publishes not yet confirmed by Pub/Sub."""
        return len(self._pending)

    # -- publishing ---------------------------------------------------------------------------

    def register(self, timeout: float | None = REGISTER_TIMEOUT_S) -> str:
        """Publish the registration and wait for Pub/Sub to accept it; returns the message id.

        Waits (unlike :meth:`heartbeat`) because a heartbeat for an agent the server does not
        know yet is only retried for a grace period: registering first, synchronously, is what
        makes the first heartbeats count. Call it on every start, and again after an upgrade.

        An enrolling agent's registration carries its public key and the token (once), a rotation's
        the new key (:meth:`rotate_key`); a signed one carries ``sent_at``. Once Pub/Sub accepted an
        enrollment, a listener :meth:`listen` prepared starts (waiting for the fleet's subscription).
        """
        with self._send:
            claim = self.identity.claim()
            registration = self.registration
            if self.identity.signed:
                registration = registration.model_copy(update={"identity": claim, "sent_at": utcnow()})
            future = self._publish_locked(EventType.REGISTRATION, registration)
        message_id = future.result(timeout=timeout)
        with self._send:  # no event is signed while the key changes
            self.identity.registered(claim)
        self._registered = True
        self._start_waiting_listener()
        return message_id

    def rotate_key(self, timeout: float | None = REGISTER_TIMEOUT_S) -> AgentKey:
        """Replace the agent's key; returns the new one (store it yourself when the key was given as ``key=``).

        The new key is written to ``<key_path>.next`` and a registration signed by the current key and
        carrying the new public key is published. The agent goes on signing with the old key (which the
        fleet accepts for an overlap) until the fleet confirms the rotation with a ``key_rotated`` command
        (heard by :meth:`listen`), or ``FLEET_KEY_SWITCH_FALLBACK_S`` (60 s) after Pub/Sub accepted the
        registration; then it signs with the new key and replaces the key file (atomically). So no event
        signed by the new key reaches the fleet before the key is bound (docs/sdk.md, "Rotation").
        """
        new = self.identity.begin_rotation()
        self.register(timeout)
        return new

    def heartbeat(
        self,
        status: ReportedStatus | None = None,
        metrics: Mapping[str, float] | HeartbeatMetrics | None = None,
    ) -> Future[str]:
        """Publish one heartbeat with the next seq; returns the publish future (message id).

        Does not wait: the future is tracked and :meth:`stop`/:meth:`close` wait for it.
        ``status`` and ``metrics`` default to the callables given at construction, then to
        ``ACTIVE`` and no metrics. Invalid metrics raise ``pydantic.ValidationError`` here, before
        anything is sent, so the caller sees the mistake instead of a server-side rejection.
        """
        if status is None:
            status = self._status() if self._status is not None else ReportedStatus.ACTIVE
        if metrics is None:
            metrics = self._metrics() if self._metrics is not None else {}
        snapshot = metrics if isinstance(metrics, HeartbeatMetrics) else HeartbeatMetrics(**dict(metrics))
        with self._send:
            # seq is taken and the message enqueued under one lock, so the publisher's batches
            # carry heartbeats in seq order (the server keeps only the newest seq).
            seq = self._seq + 1
            event = Heartbeat(agent_id=self.agent_id, seq=seq, sent_at=utcnow(), status=status, metrics=snapshot)
            future = self._publish_locked(EventType.HEARTBEAT, event)
            self._seq = seq
        return future

    def _publish(self, event_type: EventType, event: Event) -> Future[str]:
        with self._send:
            return self._publish_locked(event_type, event)

    def _publish_locked(self, event_type: EventType, event: Event) -> Future[str]:
        if self._closed:
            raise RuntimeError(f"agent {self.agent_id} is closed")
        signer = self.identity if self.identity.signed else None
        body, attributes = encode(event, signer=signer, tenant=self.registration.tenant)
        return self._pending.track(self._publisher.publish(self._topics[event_type], body, **attributes))

    # -- the loop -----------------------------------------------------------------------------

    def start(self) -> None:
        """Heartbeat every ``registration.heartbeat_interval_s`` on a daemon thread; first beat now.

        A daemon thread so a forgotten :meth:`close` never keeps the process alive; call
        :meth:`close` (or use ``with``) to flush the last beats on the way out.
        """
        if self._closed:
            raise RuntimeError(f"agent {self.agent_id} is closed")
        if self.running:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"fleet-agent-{self.agent_id}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        interval = float(self.registration.heartbeat_interval_s)
        next_at = time.monotonic()
        while not self._stop.is_set():
            try:
                if not self.heartbeats_paused:  # pause_heartbeats(): a frozen agent, for tests and diagnosis
                    self.heartbeat().add_done_callback(self._log_failure)
            except Exception:
                # A bad metrics callable or a publisher error must not end the agent's liveness.
                log.exception("agent %s: heartbeat failed; retrying next interval", self.agent_id)
            # Scheduled on the monotonic clock: no drift, and a wall-clock jump changes nothing.
            next_at += interval
            now = time.monotonic()
            if next_at < now:  # fell behind (a slow publish): skip the missed beats, keep cadence
                next_at = now + interval - (now - next_at) % interval
            self._stop.wait(next_at - now)

    def _log_failure(self, future: Future[str]) -> None:
        if future.cancelled():
            return
        exc = future.exception()
        if exc is not None:
            log.warning("agent %s: heartbeat publish failed: %s", self.agent_id, exc)

    # -- calls and commands ---------------------------------------------------------------------

    @property
    def costs(self) -> CostRecorder:
        """This agent's call recorder (made on first use; shares the agent's publisher)."""
        with self._send:
            if self._costs is None:
                signer = self.identity if self.identity.signed else None
                self._costs = CostRecorder(
                    self.agent_id,
                    self._publisher,
                    self._topics[EventType.COST],
                    signer=signer,
                    tenant=self.registration.tenant,
                    leases=self._leases,
                    lease_wait_s=self._lease_wait_s,
                    lease_fail_open=self._lease_fail_open,
                )
            return self._costs

    # -- shutdown -----------------------------------------------------------------------------

    def stop(self, timeout: float | None = 10.0) -> bool:
        """Stop the loop and wait for every outstanding publish; True when none is left.

        Graceful shutdown loses nothing: every heartbeat handed to the publisher is confirmed
        (or has definitively failed) before this returns, unless ``timeout`` runs out first.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        _, not_done = self._pending.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))
        if not_done:
            log.warning("agent %s: %d publishes still pending after stop", self.agent_id, len(not_done))
            return False
        return True

    def close(self, timeout: float | None = 10.0) -> bool:
        """:meth:`stop`, close the command listener, then release the publisher if this agent created it.

        Idempotent.
        """
        flushed = self.stop(timeout)
        with self._send:
            if self._closed:
                return flushed
            self._closed = True
        with self._listen_lock:
            listener, self._listener = self._listener, None
        if listener is not None:
            listener.close(10.0 if timeout is None else max(timeout, 0.5))  # before the recorder (no command now)
        if self._costs is not None:
            flushed = self._costs.close(timeout or 10.0) and flushed
        if self._owns_publisher:
            stop = getattr(self._publisher, "stop", None)
            if callable(stop):
                stop()  # flushes the client's batches and ends its commit thread
        return flushed

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"FleetAgent(agent_id={self.agent_id!r}, project={self.project!r}, running={self.running})"
