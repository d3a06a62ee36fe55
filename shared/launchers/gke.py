"""The GKE backend: one ``batch/v1`` Job per run, in the tenant's namespace of one cluster.

The cluster is found through the GKE API (``clusters.get``: endpoint and CA certificate) and driven with
the official ``kubernetes`` client, authenticated with the same Google credentials (a bearer token,
refreshed when it expires). Both clients are imported lazily, on first use: importing this module costs
nothing to the functions that never launch on GKE.

What the Job looks like is :func:`~shared.launchers.gke_manifest.job_manifest` (see that module for why
each field); what its conditions and pods mean is :func:`~shared.launchers.gke_status.run_status`.

Idempotency: the Job is named from the job id (:func:`~shared.launchers.base.run_name`), so a second
launch gets 409 AlreadyExists and adopts the Job if its ``fleet-job-id`` label is this job's, else
raises :class:`~shared.launchers.base.NotOurs`. Note that after ``ttlSecondsAfterFinished`` the Job is
gone, and a launch would then start a new run: callers must not launch a job they know finished.
"""

from __future__ import annotations

import base64
import os
import re
import tempfile
import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import TYPE_CHECKING, Any, cast

from shared.domain.run_phase import Backend, Phase, RunStatus
from shared.launchers import gke_secrets
from shared.launchers.base import JOB_LABEL, TENANT_LABEL, Handle, LaunchError, LaunchSpec, NotOurs
from shared.launchers.gke_manifest import job_manifest, namespace_for
from shared.launchers.gke_status import api_message, describe, run_status

if TYPE_CHECKING:
    import google.auth.credentials
    from kubernetes.client import ApiClient, V1Job, V1Pod

#: Labels the Job controller puts on its pods (the prefixed one since Kubernetes 1.27, both today).
JOB_NAME_LABELS = ("job-name", "batch.kubernetes.io/job-name")
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "agent-fleet-manager"
CLOUD_PLATFORM_SCOPE = "https://www.googleapis.com/auth/cloud-platform"
#: (connect, read) seconds for each Kubernetes API call: a hung API server must not hang a function.
_K8S_TIMEOUT = gke_secrets.K8S_TIMEOUT
_GKE_TIMEOUT = 30.0
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


class GkeLauncher:
    """Launches runs as Kubernetes Jobs on one GKE cluster (see the module doc).

    ``container_endpoint``: the GKE API's address (the local fake, ``http://127.0.0.1:port``); then the
    REST transport is used. ``credentials``: Google credentials for both APIs (default: Application
    Default Credentials). ``fail_job_exit_codes``: see :func:`~shared.launchers.gke_manifest.job_manifest`.
    The cluster's address and the Kubernetes client are looked up once per instance and reused; a
    connection failure drops them, so the next call looks the cluster up again.
    """

    backend = Backend.GKE

    def __init__(
        self,
        project: str,
        location: str,
        cluster: str,
        *,
        container_endpoint: str | None = None,
        credentials: google.auth.credentials.Credentials | None = None,
        namespace_prefix: str = "fleet-",
        fail_job_exit_codes: Sequence[int] = (),
    ) -> None:
        self.project = project
        self.location = location
        self.cluster = cluster
        self.container_endpoint = container_endpoint
        self.namespace_prefix = namespace_prefix
        self.fail_job_exit_codes = tuple(fail_job_exit_codes)
        if 0 in self.fail_job_exit_codes:
            raise ValueError("exit code 0 is success, it cannot fail a Job")
        self._credentials = credentials
        self._lock = threading.Lock()
        self._client: ApiClient | None = None
        self._ca_file: str | None = None
        self._ca_cleanup: Callable[[], object] | None = None  # a weakref.finalize
        #: Namespaces known to exist: created or confirmed once per instance, not before every launch.
        self._namespaces: set[str] = set()

    @property
    def cluster_path(self) -> str:
        return f"projects/{self.project}/locations/{self.location}/clusters/{self.cluster}"

    # --- the Launcher protocol -------------------------------------------------------------------
    def launch(self, spec: LaunchSpec) -> Handle:
        """Create the Job, or adopt the one this job created before (409 + our label); never two."""
        # lazy: the kubernetes client loads only when a job runs on GKE
        from kubernetes import client as k8s
        from kubernetes.client.exceptions import ApiException

        namespace = namespace_for(spec.tenant, self.namespace_prefix)
        name = spec.name
        doing = f"creating Job {namespace}/{name} on {self.cluster_path}"
        try:
            manifest = job_manifest(spec, namespace, fail_job_exit_codes=self.fail_job_exit_codes)
        except ValueError as exc:
            raise LaunchError(f"{doing}: invalid spec: {exc}", transient=False) from exc
        with self._errors(doing):
            api = self._api()
            namespace_problem = self._ensure_namespace(api, namespace, spec.tenant)
            batch = k8s.BatchV1Api(api)
            try:
                # The client (pydantic models since kubernetes 35) reads the dict into a V1Job and writes it
                # back: the same JSON, as the tests check against job_manifest().
                created = batch.create_namespaced_job(namespace, cast(Any, manifest), _request_timeout=_K8S_TIMEOUT)
                gke_secrets.ensure(api, spec, namespace, created)
                return self._handle(namespace, name)
            except ApiException as exc:
                if exc.status == 404 and namespace_problem:
                    raise LaunchError(
                        f"{doing}: namespace {namespace} does not exist and could not be created ({namespace_problem})",
                        transient=False,
                    ) from exc
                if exc.status != 409:
                    raise
            try:
                existing = batch.read_namespaced_job(name, namespace, _request_timeout=_K8S_TIMEOUT)
            except ApiException as exc:
                if exc.status == 404:
                    raise LaunchError(
                        f"{doing}: the Job existed (409 AlreadyExists) but was deleted meanwhile", transient=True
                    ) from exc
                raise
            owner = ((existing.metadata.labels if existing.metadata else None) or {}).get(JOB_LABEL)
            if owner != spec.job_id:
                raise NotOurs(
                    f"Job {namespace}/{name} on {self.cluster_path} exists and belongs to "
                    f"{JOB_LABEL}={owner!r}, not to job {spec.job_id!r}"
                )
            gke_secrets.ensure(api, spec, namespace, existing)  # a launch that crashed before making it
            return self._handle(namespace, name)

    def status(self, handle: Handle) -> RunStatus:
        """The Job's phase from its conditions; preemptions from its pods' DisruptionTarget conditions."""
        # lazy: the kubernetes client loads only when a job runs on GKE
        from kubernetes import client as k8s
        from kubernetes.client.exceptions import ApiException

        namespace, name = self._locate(handle)
        with self._errors(f"reading Job {namespace}/{name} on {self.cluster_path}"):
            api = self._api()
            try:
                job = k8s.BatchV1Api(api).read_namespaced_job(name, namespace, _request_timeout=_K8S_TIMEOUT)
            except ApiException as exc:
                if exc.status == 404:
                    return RunStatus(Phase.MISSING, message=f"Job {namespace}/{name} not found on {self.cluster_path}")
                raise
            pods = self._job_pods(k8s.CoreV1Api(api), namespace, name, job)
        return run_status(job, pods)

    def cancel(self, handle: Handle) -> None:
        """Delete the Job and (in the background) its pods; a Job already gone is fine."""
        # lazy: the kubernetes client loads only when a job runs on GKE
        from kubernetes import client as k8s
        from kubernetes.client.exceptions import ApiException

        namespace, name = self._locate(handle)
        with self._errors(f"deleting Job {namespace}/{name} on {self.cluster_path}"):
            api = self._api()
            try:
                k8s.BatchV1Api(api).delete_namespaced_job(
                    name, namespace, propagation_policy="Background", _request_timeout=_K8S_TIMEOUT
                )
            except ApiException as exc:
                if exc.status != 404:
                    raise

    def release(self, handle: Handle) -> None:
        """Finished Jobs are deleted by Kubernetes (``ttlSecondsAfterFinished``): nothing to do."""

    def close(self) -> None:
        """Release the HTTP connections (and the CA file, if one was written)."""
        with self._lock:
            self._forget_locked()
            if self._ca_cleanup is not None:
                self._ca_cleanup()
            self._ca_file = self._ca_cleanup = None

    # --- helpers ----------------------------------------------------------------------------------
    def _handle(self, namespace: str, name: str) -> Handle:
        details = {"cluster": self.cluster_path, "namespace": namespace, "job": name}
        return Handle(Backend.GKE.value, f"{namespace}/{name}", details)

    def _locate(self, handle: Handle) -> tuple[str, str]:
        """(namespace, job) of a handle this launcher made; a handle of another backend or cluster is an
        error, not a lookup in the wrong place."""
        if handle.backend != Backend.GKE.value:
            raise LaunchError(f"not a GKE handle: {handle.backend} {handle.name}", transient=False)
        cluster = handle.details.get("cluster")
        if cluster and cluster != self.cluster_path:
            raise LaunchError(
                f"handle {handle.name} is on cluster {cluster}, this launcher manages {self.cluster_path}",
                transient=False,
            )
        namespace, _, name = handle.name.partition("/")
        namespace = handle.details.get("namespace") or namespace
        name = handle.details.get("job") or name
        if not namespace or not name:
            raise LaunchError(f"malformed GKE handle: {handle.name!r}", transient=False)
        return namespace, name

    def _ensure_namespace(self, api: ApiClient, namespace: str, tenant: str) -> str:
        """Create the tenant's namespace unless known to exist. Returns "" or, when it could not be
        created (403: the service account may not create namespaces), why: the Job creation then tells
        whether it existed anyway."""
        # lazy: the kubernetes client loads only when a job runs on GKE
        from kubernetes import client as k8s
        from kubernetes.client.exceptions import ApiException

        if namespace in self._namespaces:
            return ""
        labels = {MANAGED_BY_LABEL: MANAGED_BY}
        if _LABEL_VALUE.match(tenant) and len(tenant) <= 63:
            labels[TENANT_LABEL] = tenant
        body = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace, "labels": labels}}
        try:
            k8s.CoreV1Api(api).create_namespace(cast(Any, body), _request_timeout=_K8S_TIMEOUT)
        except ApiException as exc:
            if exc.status == 403:
                return api_message(exc)
            if exc.status != 409:
                raise
        self._namespaces.add(namespace)
        return ""

    def _job_pods(self, core: Any, namespace: str, name: str, job: V1Job) -> list[V1Pod]:
        """The Job's pods: by the Job controller's ``job-name`` label (either spelling), keeping only pods
        this Job owns (an earlier Job of the same name may have left orphans)."""
        pods: list[V1Pod] = []
        for label in JOB_NAME_LABELS:
            found = core.list_namespaced_pod(namespace, label_selector=f"{label}={name}", _request_timeout=_K8S_TIMEOUT)
            pods = list(found.items or [])
            if pods:
                break
        uid = job.metadata.uid if job.metadata else None
        if not uid:
            return pods
        return [
            pod for pod in pods if pod.metadata and any(ref.uid == uid for ref in (pod.metadata.owner_references or []))
        ]

    @contextmanager
    def _errors(self, doing: str) -> Iterator[None]:
        """Turn client errors into :class:`LaunchError`: 5xx, 429, timeouts, connection and token-refresh
        failures are transient (retry later); 4xx are not (the reason carries the API's message)."""
        # lazy: loaded with the kubernetes client, on GKE calls only
        import urllib3
        from google.auth import exceptions as auth_errors
        from kubernetes.client.exceptions import ApiException

        try:
            yield
        except LaunchError:
            raise
        except ApiException as exc:
            status = int(exc.status or 0)
            if status in (0, 401):  # TLS failure or rejected token: look the cluster up and re-auth next time
                self._forget()
            transient = status in (0, 401, 408, 429) or status >= 500
            raise LaunchError(f"{doing}: {describe(exc)}", transient=transient) from exc
        except auth_errors.RefreshError as exc:
            raise LaunchError(
                f"{doing}: refreshing the Google credentials failed: {exc}", transient=bool(exc.retryable)
            ) from exc
        except (urllib3.exceptions.HTTPError, auth_errors.TransportError, OSError) as exc:
            self._forget()
            raise LaunchError(f"{doing}: cannot reach the Kubernetes API: {exc}", transient=True) from exc

    # --- the client ---------------------------------------------------------------------------------
    def _api(self) -> ApiClient:
        with self._lock:
            if self._client is None:
                self._client = self._connect()
            return self._client

    def _forget(self) -> None:
        with self._lock:
            self._forget_locked()

    def _forget_locked(self) -> None:
        if self._client is not None:
            with suppress(Exception):  # closing is best effort: the pool may already be broken
                self._client.close()
            self._client = None

    def _google_credentials(self) -> google.auth.credentials.Credentials:
        if self._credentials is None:
            # lazy: the Google clients load only when a job runs on GKE
            import google.auth
            from google.auth import exceptions as auth_errors

            try:
                self._credentials, _ = google.auth.default(scopes=[CLOUD_PLATFORM_SCOPE])
            except auth_errors.DefaultCredentialsError as exc:
                raise LaunchError(f"no Google credentials for GKE: {exc}", transient=False) from exc
        return self._credentials

    def _connect(self) -> ApiClient:
        """Look the cluster up (endpoint, CA) and build an authenticated Kubernetes client for it."""
        # lazy: the Google clients load only when a job runs on GKE
        from google.api_core import exceptions as api_errors
        from google.auth import exceptions as auth_errors
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import container_v1
        from kubernetes import client as k8s

        credentials = self._google_credentials()
        options: dict[str, Any] = {"credentials": credentials}
        if self.container_endpoint:
            options.update(client_options={"api_endpoint": self.container_endpoint}, transport="rest")
        path = self.cluster_path
        try:
            with container_v1.ClusterManagerClient(**options) as gke:
                cluster = gke.get_cluster(name=path, timeout=_GKE_TIMEOUT)
        except api_errors.NotFound as exc:
            raise LaunchError(f"GKE cluster {path} not found: {exc.message}", transient=False) from exc
        except api_errors.RetryError as exc:
            raise LaunchError(f"GKE API unavailable looking up {path}: {exc}", transient=True) from exc
        except api_errors.GoogleAPICallError as exc:
            code = exc.code if isinstance(exc.code, int) else None
            transient = code is None or code in (408, 429) or code >= 500
            raise LaunchError(
                f"looking up GKE cluster {path} failed: {code} {exc.message}", transient=transient
            ) from exc
        except (auth_errors.TransportError, OSError) as exc:  # requests' errors are OSErrors
            raise LaunchError(f"cannot reach the GKE API looking up {path}: {exc}", transient=True) from exc

        if not cluster.endpoint:
            state = container_v1.Cluster.Status(cluster.status).name
            raise LaunchError(f"GKE cluster {path} has no endpoint yet (status {state})", transient=True)
        config = k8s.Configuration()
        config.host = cluster.endpoint if "://" in cluster.endpoint else f"https://{cluster.endpoint}"
        ca_b64 = cluster.master_auth.cluster_ca_certificate if cluster.master_auth else ""
        if ca_b64:
            config.ssl_ca_cert = self._write_ca(base64.b64decode(ca_b64))
        if not isinstance(credentials, AnonymousCredentials):
            _bearer_token_from(credentials, config)
        return k8s.ApiClient(config)

    def _write_ca(self, pem: bytes) -> str:
        """The cluster's CA certificate as a file (what the client's ``ssl_ca_cert`` wants); one per
        instance, rewritten when the cluster is looked up again (a rotated CA)."""
        if self._ca_file is None:
            handle, self._ca_file = tempfile.mkstemp(prefix="gke-ca-", suffix=".pem")
            os.close(handle)
            # removed by close(), or when the launcher is garbage-collected
            self._ca_cleanup = weakref.finalize(self, _remove_file, self._ca_file)
        with open(self._ca_file, "wb") as out:
            out.write(pem)
        return self._ca_file


def _remove_file(path: str) -> None:
    with suppress(OSError):
        os.unlink(path)


def _bearer_token_from(credentials: google.auth.credentials.Credentials, config: Any) -> None:
    """Authenticate every Kubernetes call with the credentials' access token, refreshed when it expires:
    the client calls ``refresh_api_key_hook`` before each request."""
    # lazy: the Google clients load only when a job runs on GKE
    from google.auth.transport.requests import Request

    lock = threading.Lock()

    def refresh(cfg: Any) -> None:
        with lock:
            if not credentials.valid:
                credentials.refresh(Request())
            if credentials.token:
                cfg.api_key["authorization"] = credentials.token

    config.api_key_prefix["authorization"] = "Bearer"
    config.refresh_api_key_hook = refresh
    refresh(config)
