"""What every local fake server shares: its HTTP server on a daemon thread, started and stopped the
same way (emulators/fake_slack.py; the test fakes tests/fakes/fake_k8s.py and fake_gke.py)."""

from __future__ import annotations

import threading
from http.server import ThreadingHTTPServer
from types import TracebackType
from typing import Self


class Served:
    """A fake whose ``_server`` answers on 127.0.0.1; ``start()`` serves it, ``stop()`` ends it."""

    _server: ThreadingHTTPServer
    _thread: threading.Thread | None = None
    #: The serving thread's name (in thread dumps).
    thread_name = "fake"

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> Self:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name=self.thread_name, daemon=True
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._server.server_close()

    def serve_in_foreground(self, what: str, url: str) -> int:
        """A fake's ``python -m`` entry point: say where it listens, serve until Ctrl-C, then close."""
        print(f"{what} on {url}", flush=True)
        try:
            self._server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            self._server.server_close()
        return 0

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
