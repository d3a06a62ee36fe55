"""The launcher of each backend, configured from the environment (Terraform sets these on the
functions; the local stack points GKE and Cloud Run at nothing and runs jobs locally):

- ``FLEET_GKE_CLUSTER``: ``projects/<p>/locations/<l>/clusters/<c>`` (the GPU cluster);
  ``FLEET_GKE_API_ENDPOINT``: another GKE API endpoint (tests: a local fake).
- ``FLEET_CLOUDRUN_REGION`` (default ``us-central1``); ``FLEET_CLOUDRUN_API_ENDPOINT`` (tests);
  ``FLEET_TRAINING_SERVICE_ACCOUNT``: the identity Cloud Run training jobs run as.
- ``FLEET_LOCAL_JOBS_DIR``: where local runs keep their state.

One launcher per backend and instance (their clients are reused across calls).
"""

from __future__ import annotations

import os
import threading
from typing import Any

from shared.domain.run_phase import Backend
from shared.launchers.base import Launcher, LaunchError
from shared.launchers.cloudrun import CloudRunLauncher
from shared.launchers.gke import GkeLauncher
from shared.launchers.local import LocalLauncher
from shared.platform import settings

_lock = threading.Lock()
_launchers: dict[Backend, Launcher] = {}


def _credentials(endpoint: str | None) -> Any:
    """Anonymous for a plain-http endpoint (a local fake); otherwise the runtime's own identity."""
    if endpoint and endpoint.startswith("http://"):
        # lazy: google.auth loads only for a launcher pointed at a local fake
        from google.auth.credentials import AnonymousCredentials

        return AnonymousCredentials()
    return None


def _build(backend: Backend) -> Launcher:
    project = settings.get().project
    if backend is Backend.GKE:
        cluster = os.environ.get("FLEET_GKE_CLUSTER", "")
        parts = cluster.split("/")
        if len(parts) != 6 or parts[0] != "projects" or parts[2] != "locations" or parts[4] != "clusters":
            raise LaunchError(
                "the GKE backend is not configured: set FLEET_GKE_CLUSTER to projects/<p>/locations/<l>/clusters/<c>",
                transient=False,
            )
        endpoint = os.environ.get("FLEET_GKE_API_ENDPOINT") or None
        return GkeLauncher(
            parts[1], parts[3], parts[5], container_endpoint=endpoint, credentials=_credentials(endpoint)
        )
    if backend is Backend.CLOUDRUN:
        endpoint = os.environ.get("FLEET_CLOUDRUN_API_ENDPOINT") or None
        return CloudRunLauncher(
            project,
            os.environ.get("FLEET_CLOUDRUN_REGION", "us-central1"),
            endpoint=endpoint,
            credentials=_credentials(endpoint),
            service_account=os.environ.get("FLEET_TRAINING_SERVICE_ACCOUNT") or None,
        )
    return LocalLauncher()


def get(backend: Backend | str) -> Launcher:
    backend = Backend(backend)
    with _lock:
        found = _launchers.get(backend)
        if found is None:
            found = _launchers[backend] = _build(backend)
        return found


def reset() -> None:
    """Forget the launchers (tests change the environment)."""
    with _lock:
        _launchers.clear()
