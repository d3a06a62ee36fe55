"""Publishes handed to the publisher and not yet settled: what a flushing shutdown waits for."""

from __future__ import annotations

import threading
from concurrent.futures import Future, wait


class PendingPublishes:
    """Thread-safe set of publish futures; each leaves the set when it settles.

    Settling runs on the publisher's threads, so it takes only this set's own lock and never
    waits behind a publish call.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._futures: set[Future[str]] = set()

    def track(self, future: Future[str]) -> Future[str]:
        with self._lock:
            self._futures.add(future)
        future.add_done_callback(self._settle)
        return future

    def _settle(self, future: Future[str]) -> None:
        with self._lock:
            self._futures.discard(future)

    def __len__(self) -> int:
        with self._lock:
            return len(self._futures)

    def wait(self, timeout: float | None) -> tuple[set[Future[str]], set[Future[str]]]:
        """(done, not done) of the publishes outstanding now, after waiting up to ``timeout``."""
        with self._lock:
            outstanding = list(self._futures)
        if not outstanding:
            return set(), set()
        done, not_done = wait(outstanding, timeout=timeout)
        return set(done), set(not_done)
