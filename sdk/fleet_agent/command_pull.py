"""Pulling commands from many subscriptions at once (each enrolled agent reads its own,
``agent-commands.<id>``), and the interfaces of :mod:`fleet_agent.commands`' listener.

One streaming pull per subscription does not scale to a process serving hundreds of agents: every stream
keeps its own threads, and one gRPC channel carries at most 100 concurrent streams (python-pubsub #287:
subscribing to ~100 subscriptions with one client hangs). A :class:`SubscriptionPoller` makes short unary
pulls instead, from a small pool of threads: at most one pull in flight per subscription (an agent's
commands are handled in the order pulled), the next pull at once after one that returned messages, and
after a pause growing to ``idle_max_s`` while a subscription is quiet, or to ``error_max_s`` while it
fails (an enrolling agent's subscription does not exist until the fleet processed its registration).

Pulls ask ``return_immediately`` (deprecated by Pub/Sub, which then may answer empty while messages
wait: the next pull gets them) so that a quiet subscription never holds a worker.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

from fleet_agent.contracts import Command

log = logging.getLogger("fleet_agent")

#: Seconds one pull, acknowledge or get_subscription call may take.
CALL_TIMEOUT_S = 10.0


OnCommand = Callable[[str, Command], None]


class CommandTarget(Protocol):
    """What a listener dispatches to: :class:`~fleet_agent.FleetAgent` is one. A target whose
    ``apply_command`` takes ``attributes`` gets the message's (its signature); one with a
    ``command_subscription`` path is pulled from that subscription."""

    @property
    def agent_id(self) -> str: ...

    def apply_command(self, data: bytes) -> Command | None: ...


class StreamingPull(Protocol):
    """The future ``subscribe`` returns (``StreamingPullFuture``): cancel ends the stream."""

    def cancel(self) -> Any: ...

    def result(self, timeout: float | None = None) -> Any: ...

    def add_done_callback(self, fn: Callable[[Any], Any]) -> None: ...

    def done(self) -> bool: ...


class PullSubscriber(Protocol):
    """The unary methods of ``pubsub_v1.SubscriberClient`` the poller uses; tests pass a fake."""

    def pull(self, request: Mapping[str, Any], *, timeout: float) -> Any: ...

    def acknowledge(self, request: Mapping[str, Any], *, timeout: float) -> Any: ...

    def get_subscription(self, request: Mapping[str, Any], *, timeout: float) -> Any: ...


class Subscriber(PullSubscriber, Protocol):
    """The methods of ``pubsub_v1.SubscriberClient`` the listener uses; tests pass a fake (which needs
    the unary ones only when the listener serves an enrolled agent)."""

    def create_subscription(self, request: Mapping[str, Any], *, timeout: float) -> Any: ...

    def delete_subscription(self, request: Mapping[str, Any], *, timeout: float) -> Any: ...

    def subscribe(
        self, subscription: str, callback: Callable[[Any], Any], flow_control: Any = ...
    ) -> StreamingPull: ...


@dataclass
class PulledMessage:
    """A pulled message, shaped like the streaming pull's (``data``, ``attributes``, ``message_id``,
    ``ack``); the poller acknowledges a pull's messages together, after handling them."""

    data: bytes
    attributes: Mapping[str, str]
    message_id: str

    def ack(self) -> None:
        """Nothing: acknowledged in bulk by the poller."""


#: ``handler(subscription path, message)``; an exception is logged and the message acknowledged anyway.
Handler = Callable[[str, PulledMessage], None]


def wait_for_subscription(
    subscriber: PullSubscriber,
    path: str,
    timeout: float,
    *,
    first_wait_s: float = 0.25,
    max_wait_s: float = 5.0,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Return once ``path`` exists, asking with a doubling pause; ``TimeoutError`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    wait = first_wait_s
    while True:
        try:
            subscriber.get_subscription(request={"subscription": path}, timeout=CALL_TIMEOUT_S)
            return
        except Exception as exc:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(
                    f"command subscription {path} not found after {timeout:.0f}s (the fleet creates it when it "
                    f"accepts the agent's enrollment): {exc}"
                ) from exc
            sleep(min(wait, remaining))
            wait = min(wait * 2, max_wait_s)


@dataclass(eq=False)
class _Source:
    wait_s: float = 0.0
    failing: bool = False
    received: int = field(default=0)


class SubscriptionPoller:
    """Pulls from a changing set of subscriptions with ``workers`` threads. Thread-safe."""

    def __init__(
        self,
        subscriber: PullSubscriber,
        handler: Handler,
        *,
        workers: int = 8,
        max_messages: int = 100,
        idle_min_s: float = 0.25,
        idle_max_s: float = 2.0,
        error_max_s: float = 10.0,
    ) -> None:
        self._subscriber = subscriber
        self._handler = handler
        self._workers = max(1, workers)
        self._max_messages = max_messages
        self._idle = (idle_min_s, idle_max_s)
        self._error_max_s = error_max_s
        self._cond = threading.Condition()
        self._sources: dict[str, _Source] = {}
        self._due: list[tuple[float, int, str, _Source]] = []  # a heap: (when, tie-breaker, path, source)
        self._order = itertools.count()
        self._thread: threading.Thread | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._closed = False

    @property
    def subscriptions(self) -> frozenset[str]:
        with self._cond:
            return frozenset(self._sources)

    def add(self, path: str) -> None:
        """Pull from ``path`` from now on (at once, then as the module docstring says). Idempotent."""
        with self._cond:
            if path in self._sources:
                return
            source = self._sources[path] = _Source()
            self._schedule(path, source, 0.0)

    def remove(self, path: str) -> None:
        with self._cond:
            self._sources.pop(path, None)

    def _schedule(self, path: str, source: _Source, delay: float) -> None:
        heapq.heappush(self._due, (time.monotonic() + delay, next(self._order), path, source))
        self._cond.notify()

    def start(self) -> None:
        with self._cond:
            if self._thread is not None or self._closed:
                return
            self._pool = ThreadPoolExecutor(self._workers, thread_name_prefix="fleet-commands-pull")
            self._thread = threading.Thread(target=self._run, name="fleet-commands-poller", daemon=True)
            self._thread.start()

    def close(self, timeout: float | None = None) -> None:
        """Stop pulling; waits for the pulls in flight (their messages are handled and acknowledged)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            thread, pool = self._thread, self._pool
        if thread is not None:
            thread.join(timeout)
        if pool is not None:
            pool.shutdown(wait=True)

    def _run(self) -> None:
        while True:
            with self._cond:
                while True:
                    if self._closed:
                        return
                    if self._due and self._due[0][0] <= time.monotonic():
                        _, _, path, source = heapq.heappop(self._due)
                        if self._sources.get(path) is source:  # else removed (or removed and added again)
                            break
                        continue
                    self._cond.wait(self._due[0][0] - time.monotonic() if self._due else None)
                pool = self._pool
            assert pool is not None
            pool.submit(self._pull_and_reschedule, path, source)

    def _pull_and_reschedule(self, path: str, source: _Source) -> None:
        delay = self.poll(path, source)
        with self._cond:
            if not self._closed and self._sources.get(path) is source:
                self._schedule(path, source, delay)

    def poll(self, path: str, source: _Source | None = None) -> float:
        """One pull from ``path``: handle and acknowledge what came; returns the pause before the next."""
        source = source or self._sources.get(path) or _Source()
        request = {"subscription": path, "max_messages": self._max_messages, "return_immediately": True}
        try:
            response = self._subscriber.pull(request=request, timeout=CALL_TIMEOUT_S)
        except Exception as exc:
            if not source.failing:  # once per streak: a subscription not created yet fails for a while
                log.info("cannot pull commands from %s yet (retrying): %s", path, exc)
            source.failing = True
            source.wait_s = min(max(source.wait_s * 2, self._idle[0]), self._error_max_s)
            return source.wait_s
        if source.failing:
            log.info("pulling commands from %s", path)
            source.failing, source.wait_s = False, 0.0
        received = list(getattr(response, "received_messages", None) or [])
        if not received:
            source.wait_s = min(max(source.wait_s * 2, self._idle[0]), self._idle[1])
            return source.wait_s
        for item in received:
            message = item.message
            pulled = PulledMessage(bytes(message.data), dict(message.attributes), str(message.message_id))
            try:
                self._handler(path, pulled)
            except Exception:
                log.exception("command message %s from %s: handling failed", pulled.message_id, path)
        source.received += len(received)
        try:
            request = {"subscription": path, "ack_ids": [item.ack_id for item in received]}
            self._subscriber.acknowledge(request=request, timeout=CALL_TIMEOUT_S)
        except Exception as exc:  # redelivered later: applying a command twice changes nothing
            log.warning("could not acknowledge %d commands on %s: %s", len(received), path, exc)
        source.wait_s = 0.0
        return 0.0
