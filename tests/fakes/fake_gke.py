"""A minimal GKE API (container.googleapis.com v1) for tests (unit, integration, make bench): cluster look-ups.

    python -m tests.fakes.fake_gke --port 8444 \\
        --cluster projects/demo/locations/us-central1/clusters/fleet=http://127.0.0.1:8443

Point ``container_v1.ClusterManagerClient(client_options={"api_endpoint": url}, transport="rest",
credentials=AnonymousCredentials())`` at it. It serves

    GET /v1/projects/{p}/locations/{l}/clusters/{c}   a Cluster (JSON, camelCase as the real API): name,
                                                      location, status RUNNING, endpoint (the fake Kubernetes
                                                      API's URL, ``http://`` scheme included, so clients use
                                                      it as is), masterAuth.clusterCaCertificate (base64 PEM),
                                                      a CPU node pool and a spot GPU node pool

and answers anything else, and unknown clusters, with Google's JSON error format
(``{"error": {"code": 404, "message": ..., "status": "NOT_FOUND"}}``), which google-api-core's REST
transport turns into ``google.api_core.exceptions.NotFound`` and friends. Every request is recorded.

In-process: ``fake = start(clusters={"projects/p/locations/l/clusters/c": k8s.url})``; ``fake.url``,
``fake.add_cluster(...)``, ``fake.fail_next(503)``, ``fake.requests()``, ``fake.stop()``.
"""

from __future__ import annotations

import argparse
import base64
import copy
import json
import re
import sys
import threading
import urllib.parse
from collections.abc import Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from emulators.serving import Served

#: A PEM-shaped placeholder: never parsed, as the fake endpoint is plain http (clients skip TLS settings).
FAKE_CA_PEM = (
    "-----BEGIN CERTIFICATE-----\n"
    "MIIBszCCAVmgAwIBAgIUZmFrZS1na2UtY2x1c3Rlci1jYTAKBggqhkjOPQQDAjAX\n"
    "MRUwEwYDVQQDDAxmYWtlLWdrZS1jYTAeFw0yNDAxMDEwMDAwMDBaFw0zNDAxMDEw\n"
    "-----END CERTIFICATE-----\n"
)
_CLUSTER_PATH = re.compile(r"^/v1/projects/([^/]+)/(?:locations|zones)/([^/]+)/clusters/([^/:]+)$")
#: google.rpc.Code names for the HTTP statuses the fake may answer.
_STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ALREADY_EXISTS",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


def cluster_path(project: str, location: str, name: str) -> str:
    return f"projects/{project}/locations/{location}/clusters/{name}"


def google_error(code: int, message: str) -> dict[str, Any]:
    """Google's JSON error body, as google-api-core's ``format_http_response_error`` reads it."""
    return {"error": {"code": code, "message": message, "status": _STATUS_NAMES.get(code, "UNKNOWN")}}


def cluster_json(
    project: str, location: str, name: str, endpoint: str, *, ca_pem: str = FAKE_CA_PEM, status: str = "RUNNING"
) -> dict[str, Any]:
    """The Cluster resource a real ``clusters.get`` returns, trimmed to what matters here."""
    path = cluster_path(project, location, name)
    gpu_config = {
        "machineType": "g2-standard-8",
        "diskSizeGb": 100,
        "spot": True,
        "accelerators": [{"acceleratorCount": "1", "acceleratorType": "nvidia-l4"}],
        "taints": [{"key": "nvidia.com/gpu", "value": "present", "effect": "NO_SCHEDULE"}],
        "labels": {"cloud.google.com/gke-accelerator": "nvidia-l4"},
    }
    return {
        "name": name,
        "location": location,
        "zone": location,
        "selfLink": f"https://container.googleapis.com/v1/{path}",
        "status": status,
        "endpoint": endpoint,
        "initialClusterVersion": "1.31.5-gke.1023000",
        "currentMasterVersion": "1.31.5-gke.1023000",
        "currentNodeVersion": "1.31.5-gke.1023000",
        "masterAuth": {"clusterCaCertificate": base64.b64encode(ca_pem.encode()).decode()},
        "nodePools": [
            {
                "name": "default-pool",
                "status": "RUNNING",
                "initialNodeCount": 1,
                "config": {"machineType": "e2-standard-4", "diskSizeGb": 100},
                "autoscaling": {"enabled": True, "minNodeCount": 1, "maxNodeCount": 3},
            },
            {
                "name": "gpu-l4-spot",
                "status": "RUNNING",
                "initialNodeCount": 0,
                "config": gpu_config,
                "autoscaling": {"enabled": True, "minNodeCount": 0, "maxNodeCount": 4},
            },
        ],
    }


class _State:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.clusters: dict[str, dict[str, Any]] = {}
        self.log: list[dict[str, Any]] = []
        self.failures: list[list[int]] = []

    def take_failure(self) -> int | None:
        if not self.failures:
            return None
        failure = self.failures[0]
        failure[1] -= 1
        if failure[1] <= 0:
            self.failures.pop(0)
        return failure[0]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, address: tuple[str, int], state: _State, verbose: bool = False) -> None:
        super().__init__(address, _Handler)
        self.state = state
        self.verbose = verbose


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    #: Headers and body go out in two writes: without this, Nagle + delayed ACK add ~40 ms per request.
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.verbose:
            sys.stderr.write("fake-gke: " + (format % args) + "\n")

    def _handle(self, method: str) -> None:
        parsed = urllib.parse.urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        state = self.server.state
        with state.lock:
            record: dict[str, Any] = {
                "method": method,
                "path": parsed.path,
                "query": dict(urllib.parse.parse_qsl(parsed.query)),
                "body": raw.decode(errors="replace") or None,
                "authorization": self.headers.get("Authorization"),
            }
            injected = state.take_failure()
            match = _CLUSTER_PATH.match(parsed.path)
            if injected is not None:
                status, payload = injected, google_error(injected, f"Injected failure {injected}.")
            elif method != "GET" or not match:
                status, payload = 404, google_error(404, f"Method not found: {method} {parsed.path}.")
            else:
                path = cluster_path(*match.groups())
                if path in state.clusters:
                    status, payload = 200, copy.deepcopy(state.clusters[path])
                else:
                    status, payload = 404, google_error(404, f"Not found: {path}.")
            record["status"] = status
            state.log.append(record)
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=UTF-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_DELETE(self) -> None:
        self._handle("DELETE")


class FakeGke(Served):
    """The fake GKE API in this process, on a free port (or ``port``); see the module doc."""

    def __init__(self, port: int = 0, *, clusters: Mapping[str, str] | None = None, verbose: bool = False) -> None:
        self.state = _State()
        self._server = _Server(("127.0.0.1", port), self.state, verbose=verbose)
        self._thread = None
        self.thread_name = "fake-gke"
        for path, endpoint in (clusters or {}).items():
            parts = path.split("/")
            if len(parts) != 6 or parts[0] != "projects" or parts[2] != "locations" or parts[4] != "clusters":
                raise ValueError(f"not a cluster path: {path!r} (projects/P/locations/L/clusters/C)")
            self.add_cluster(parts[1], parts[3], parts[5], endpoint)

    @property
    def url(self) -> str:
        """The ``api_endpoint`` for the client (scheme included: google-api-core then uses plain http)."""
        return f"http://127.0.0.1:{self.port}"

    def add_cluster(
        self,
        project: str,
        location: str,
        name: str,
        endpoint: str,
        *,
        ca_pem: str = FAKE_CA_PEM,
        status: str = "RUNNING",
    ) -> dict[str, Any]:
        """Register (or replace) a cluster whose API server is at ``endpoint``."""
        cluster = cluster_json(project, location, name, endpoint, ca_pem=ca_pem, status=status)
        with self.state.lock:
            self.state.clusters[cluster_path(project, location, name)] = cluster
        return copy.deepcopy(cluster)

    def remove_cluster(self, project: str, location: str, name: str) -> None:
        with self.state.lock:
            self.state.clusters.pop(cluster_path(project, location, name), None)

    def fail_next(self, status: int = 503, count: int = 1) -> None:
        """The next ``count`` requests answer ``status`` with Google's error body."""
        with self.state.lock:
            self.state.failures.append([status, count])

    def requests(self) -> list[dict[str, Any]]:
        with self.state.lock:
            return copy.deepcopy(self.state.log)

    def clear(self) -> None:
        with self.state.lock:
            self.state.log.clear()


def start(port: int = 0, *, clusters: Mapping[str, str] | None = None, verbose: bool = False) -> FakeGke:
    """A started fake on ``port`` (0: a free one); ``clusters``: cluster path → Kubernetes API URL."""
    return FakeGke(port, clusters=clusters, verbose=verbose).start()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tests.fakes.fake_gke", description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: a free one)")
    parser.add_argument(
        "--cluster",
        action="append",
        default=[],
        metavar="PATH=URL",
        help="a cluster (projects/P/locations/L/clusters/C) and its Kubernetes API URL, e.g. http://127.0.0.1:8443",
    )
    parser.add_argument("--verbose", action="store_true", help="log every request")
    args = parser.parse_args(argv)
    clusters = dict(item.split("=", 1) for item in args.cluster)
    fake = FakeGke(args.port, clusters=clusters, verbose=args.verbose)
    return fake.serve_in_foreground("fake GKE API", fake.url)


if __name__ == "__main__":
    sys.exit(main())
