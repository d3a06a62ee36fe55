"""A GKE Job's own Secret: the run's secrets (its job key), owned by the Job so Kubernetes deletes them together.

The kubernetes client is imported on first use, as in shared/launchers/gke.py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from shared.launchers.base import LaunchSpec
from shared.launchers.gke_manifest import secret_manifest

if TYPE_CHECKING:
    from kubernetes.client import ApiClient, V1Job

#: (connect, read) seconds for each Kubernetes API call (the launcher's too): a hung API server must not
#: hang a function.
K8S_TIMEOUT = (10.0, 30.0)


def ensure(api: ApiClient, spec: LaunchSpec, namespace: str, job: V1Job) -> None:
    """The Job's Secret (its env's secrets), owned by the Job; one this Job already owns is kept."""
    if not spec.secrets:
        return
    # lazy: the kubernetes client loads only when a job runs on GKE
    from kubernetes import client as k8s
    from kubernetes.client.exceptions import ApiException

    uid = str(job.metadata.uid if job.metadata else "")
    core = k8s.CoreV1Api(api)
    body = cast(Any, secret_manifest(spec, namespace, uid))
    try:
        core.create_namespaced_secret(namespace, body, _request_timeout=K8S_TIMEOUT)
    except ApiException as exc:
        if exc.status != 409:
            raise
        # 409: made by the attempt before (kept), or left by an older Job of the same name that the garbage
        # collector has not removed yet: that one goes with its Job, and this Job's pod would wait for its
        # Secret forever, so it is replaced by one this Job owns.
        found = core.read_namespaced_secret(spec.name, namespace, _request_timeout=K8S_TIMEOUT)
        owners = [ref.uid for ref in (found.metadata.owner_references or [])] if found.metadata else []
        if owners != [uid]:
            core.delete_namespaced_secret(spec.name, namespace, _request_timeout=K8S_TIMEOUT)
            core.create_namespaced_secret(namespace, body, _request_timeout=K8S_TIMEOUT)
