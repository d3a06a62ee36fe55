"""A minimal Kubernetes API server for tests (unit, integration, make bench): namespaces, batch/v1 Jobs and their Pods.

    python -m tests.fakes.fake_k8s --port 8443

It speaks enough of the real API for the official ``kubernetes`` Python client (JSON only, no TLS):

    GET    /api/v1/namespaces                       NamespaceList
    POST   /api/v1/namespaces                       create a Namespace (409 AlreadyExists)
    GET    /api/v1/namespaces/{ns}                  a Namespace (404 NotFound)
    GET    /apis/batch/v1/namespaces/{ns}/jobs      JobList
    POST   /apis/batch/v1/namespaces/{ns}/jobs      create a Job (404 if the namespace is missing, 409 if the
                                                    name is taken, 422 Invalid for a malformed Job)
    GET    /apis/batch/v1/namespaces/{ns}/jobs/{n}  a Job
    DELETE /apis/batch/v1/namespaces/{ns}/jobs/{n}  delete it; ``propagationPolicy=Background`` or ``Foreground``
                                                    also deletes its Pods, none (Orphan, the Job API's
                                                    legacy default) leaves them
    GET    /api/v1/namespaces/{ns}/pods             PodList, ``?labelSelector=a=b,c!=d`` (equality selectors)
    POST   /api/v1/namespaces/{ns}/secrets          create a Secret (``stringData`` kept as ``data``, base64;
                                                    409 if the name is taken)
    GET    /api/v1/namespaces/{ns}/secrets/{n}      a Secret (DELETE deletes it); deleting a Job (Background or
                                                    Foreground) deletes the Secrets it owns
                                                    (``ownerReferences``), as the garbage collector does

Objects carry what the client's models expect (apiVersion, kind, metadata.uid, creationTimestamp,
resourceVersion...) and every error is a ``Status`` object (status Failure, reason, code, message), so the
client raises ``ApiException`` with the right status and body.

A tiny Job controller stands in for kube-controller-manager: creating a Job creates one Pending Pod
(labelled ``job-name`` and ``batch.kubernetes.io/job-name``), and a Pod that fails is judged by the Job's
``podFailurePolicy`` the way the real controller does (an ``Ignore`` rule: not counted in ``status.failed``
and replaced; ``FailJob``: the Job fails with reason ``PodFailurePolicy``; otherwise counted, replaced
until ``backoffLimit`` is exceeded). Tests drive it in-process:

    fake = start()                                 # a thread on a free port; fake.url, fake.stop()
    fake.set_running(ns, name)                     # the Pod runs (Ready); Job status.ready = 1
    fake.complete(ns, name)                        # the Pod succeeds; the Job is Complete
    fake.fail(ns, name, "DeadlineExceeded", "...") # the Job fails with that reason
    fake.fail_pod(ns, name, exit_code=1)           # the running attempt exits non-zero (a real failure)
    fake.preempt(ns, name)                         # spot reclaim: the Pod fails with a DisruptionTarget
                                                   # condition (TerminationByKubelet); a new Pod is pending
    fake.fail_next(503, count=1)                   # the next API call(s) answer 503 (or 429, 500, 403...)
    fake.requests(method="POST")                   # every request: method, path, query, body, status

``token`` (optional): the one bearer token accepted; other requests get 401.
"""

from __future__ import annotations

import argparse
import base64
import copy
import hashlib
import json
import re
import sys
import threading
import urllib.parse
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from emulators.serving import Served

JOB_NAME_LABEL = "batch.kubernetes.io/job-name"
LEGACY_JOB_NAME_LABEL = "job-name"
CONTROLLER_UID_LABEL = "batch.kubernetes.io/controller-uid"
LEGACY_CONTROLLER_UID_LABEL = "controller-uid"

#: ``reason`` of a Status for an HTTP status, as the API server names them.
_REASONS = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    409: "AlreadyExists",
    410: "Expired",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
    504: "Timeout",
}
_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_QUANTITY = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([KMGTPE]i|[numkMGTPE]|[eE][+-]?\d+)?$")
_PREEMPTION_MESSAGE = "Pod was terminated in response to imminent node shutdown."


def _rfc3339(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class ApiError(Exception):
    """An API answer other than 2xx, turned into a ``Status`` object by the handler."""

    def __init__(self, code: int, message: str, *, reason: str | None = None, details: dict[str, Any] | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason or _REASONS.get(code, "Unknown")
        self.details = details

    def status(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details:
            body["details"] = self.details
        return body


def _not_found(kind: str, group: str, name: str) -> ApiError:
    qualified = f"{kind}.{group}" if group else kind
    details = {"name": name, "kind": kind, **({"group": group} if group else {})}
    return ApiError(404, f'{qualified} "{name}" not found', details=details)


def _invalid(kind: str, name: str, causes: list[tuple[str, str]]) -> ApiError:
    text = ", ".join(f"{field}: {message}" for field, message in causes)
    return ApiError(
        422,
        f'{kind}.batch "{name}" is invalid: {text}',
        details={
            "name": name,
            "group": "batch",
            "kind": kind,
            "causes": [{"reason": "FieldValueInvalid", "message": m, "field": f} for f, m in causes],
        },
    )


def _match_selector(labels: dict[str, str], selector: str) -> bool:
    """Equality-based selectors (``a=b``, ``a==b``, ``a!=b``), comma-separated, all must hold."""
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key.strip()) == value.strip():
                return False
        elif "=" in term:
            key, value = term.replace("==", "=", 1).split("=", 1)
            if labels.get(key.strip()) != value.strip():
                return False
        elif term.startswith("!"):
            if term[1:] in labels:
                return False
        elif term not in labels:
            return False
    return True


class _State:
    """Everything the fake knows; every access holds ``lock``."""

    def __init__(self, token: str | None, clock: Callable[[], datetime]) -> None:
        self.lock = threading.RLock()
        self.token = token
        self.clock = clock
        self.namespaces: dict[str, dict[str, Any]] = {}
        self.jobs: dict[tuple[str, str], dict[str, Any]] = {}
        self.pods: dict[tuple[str, str], dict[str, Any]] = {}
        self.secrets: dict[tuple[str, str], dict[str, Any]] = {}
        self.log: list[dict[str, Any]] = []
        #: Failures to inject: (status, remaining count, method or None, path substring or None).
        self.failures: list[list[Any]] = []
        self._version = 0

    # --- plumbing -------------------------------------------------------------------------------
    def now(self) -> str:
        return _rfc3339(self.clock())

    def next_version(self) -> str:
        self._version += 1
        return str(self._version)

    def new_meta(self, name: str, namespace: str | None, labels: dict[str, str] | None = None) -> dict[str, Any]:
        meta: dict[str, Any] = {
            "name": name,
            "uid": str(uuid.uuid4()),
            "resourceVersion": self.next_version(),
            "creationTimestamp": self.now(),
        }
        if namespace is not None:
            meta["namespace"] = namespace
        if labels:
            meta["labels"] = dict(labels)
        return meta

    def take_failure(self, method: str, path: str) -> int | None:
        for failure in self.failures:
            status, _, only_method, only_path = failure
            if (only_method is None or only_method == method) and (only_path is None or only_path in path):
                failure[1] -= 1
                if failure[1] <= 0:
                    self.failures.remove(failure)
                return int(status)
        return None

    # --- namespaces -----------------------------------------------------------------------------
    def create_namespace(self, body: dict[str, Any]) -> dict[str, Any]:
        meta = body.get("metadata") or {}
        name = str(meta.get("name") or "")
        if not name or not _DNS1123_LABEL.match(name) or len(name) > 63:
            raise ApiError(
                422,
                f'Namespace "{name}" is invalid: metadata.name: Invalid value: "{name}": a lowercase RFC 1123 '
                "label must consist of lower case alphanumeric characters or '-', and must start and end with an "
                "alphanumeric character",
                details={"name": name, "kind": "Namespace"},
            )
        if name in self.namespaces:
            raise ApiError(409, f'namespaces "{name}" already exists', details={"name": name, "kind": "namespaces"})
        labels = {**(meta.get("labels") or {}), "kubernetes.io/metadata.name": name}
        namespace = {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": self.new_meta(name, None, labels),
            "spec": {"finalizers": ["kubernetes"]},
            "status": {"phase": "Active"},
        }
        self.namespaces[name] = namespace
        return namespace

    def namespace(self, name: str) -> dict[str, Any]:
        if name not in self.namespaces:
            raise _not_found("namespaces", "", name)
        return self.namespaces[name]

    # --- jobs -----------------------------------------------------------------------------------
    def create_job(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        self.namespace(namespace)
        job = copy.deepcopy(body)
        meta = job.get("metadata") or {}
        name = str(meta.get("name") or "")
        if meta.get("namespace") not in (None, namespace):
            raise ApiError(400, "the namespace of the provided object does not match the namespace sent on the request")
        _validate_job(name, job)
        if (namespace, name) in self.jobs:
            raise ApiError(
                409, f'jobs.batch "{name}" already exists', details={"name": name, "group": "batch", "kind": "jobs"}
            )
        labels = dict(meta.get("labels") or {})
        job["apiVersion"] = "batch/v1"
        job["kind"] = "Job"
        job["metadata"] = {**meta, **self.new_meta(name, namespace, labels), "generation": 1}
        uid = job["metadata"]["uid"]
        spec = job["spec"]
        spec.setdefault("backoffLimit", 6)
        spec.setdefault("completions", 1)
        spec.setdefault("parallelism", 1)
        spec.setdefault("completionMode", "NonIndexed")
        spec.setdefault("suspend", False)
        spec["selector"] = {"matchLabels": {CONTROLLER_UID_LABEL: uid}}
        template_meta = spec["template"].setdefault("metadata", {})
        template_meta["labels"] = {
            **(template_meta.get("labels") or {}),
            CONTROLLER_UID_LABEL: uid,
            JOB_NAME_LABEL: name,
            LEGACY_CONTROLLER_UID_LABEL: uid,
            LEGACY_JOB_NAME_LABEL: name,
        }
        job["status"] = {"startTime": self.now(), "active": 0, "ready": 0, "terminating": 0}
        self.jobs[(namespace, name)] = job
        self._new_pod(job)
        return job

    def job(self, namespace: str, name: str) -> dict[str, Any]:
        if (namespace, name) not in self.jobs:
            raise _not_found("jobs", "batch", name)
        return self.jobs[(namespace, name)]

    def delete_job(self, namespace: str, name: str, propagation: str | None) -> dict[str, Any]:
        job = self.job(namespace, name)
        del self.jobs[(namespace, name)]
        if propagation in ("Background", "Foreground"):
            for key in [k for k, pod in self.pods.items() if _owned_by(pod, job)]:
                del self.pods[key]
            for key in [k for k, secret in self.secrets.items() if _owned_by(secret, job)]:
                del self.secrets[key]
        else:  # Orphan: the pods stay, without their owner
            for pod in self.pods.values():
                if _owned_by(pod, job):
                    pod["metadata"].pop("ownerReferences", None)
        return {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Success",
            "details": {"name": name, "group": "batch", "kind": "jobs", "uid": job["metadata"]["uid"]},
        }

    # --- secrets --------------------------------------------------------------------------------
    def create_secret(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        self.namespace(namespace)
        meta = body.get("metadata") or {}
        name = str(meta.get("name") or "")
        if not name:
            raise ApiError(422, "Secret is invalid: metadata.name: Required value")
        if (namespace, name) in self.secrets:
            raise ApiError(409, f'secrets "{name}" already exists', details={"name": name, "kind": "secrets"})
        data = dict(body.get("data") or {})
        for key, value in (body.get("stringData") or {}).items():
            data[key] = base64.b64encode(str(value).encode()).decode()
        secret = {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": body.get("type") or "Opaque",
            "metadata": {**meta, **self.new_meta(name, namespace, meta.get("labels"))},
            "data": data,
        }
        self.secrets[(namespace, name)] = secret
        return secret

    def secret(self, namespace: str, name: str) -> dict[str, Any]:
        if (namespace, name) not in self.secrets:
            raise _not_found("secrets", "", name)
        return self.secrets[(namespace, name)]

    def delete_secret(self, namespace: str, name: str) -> dict[str, Any]:
        secret = self.secret(namespace, name)
        del self.secrets[(namespace, name)]
        return {
            "kind": "Status",
            "apiVersion": "v1",
            "status": "Success",
            "details": {"name": secret["metadata"]["name"]},
        }

    # --- pods and the job controller ------------------------------------------------------------
    def job_pods(self, job: dict[str, Any]) -> list[dict[str, Any]]:
        return [pod for pod in self.pods.values() if _owned_by(pod, job)]

    def active_pods(self, job: dict[str, Any]) -> list[dict[str, Any]]:
        return [pod for pod in self.job_pods(job) if pod["status"]["phase"] in ("Pending", "Running")]

    def _new_pod(self, job: dict[str, Any]) -> dict[str, Any]:
        meta = job["metadata"]
        attempt = len(self.job_pods(job))
        suffix = hashlib.sha256(f"{meta['uid']}/{attempt}".encode()).hexdigest()[:5]
        template = job["spec"]["template"]
        pod_meta = self.new_meta(f"{meta['name']}-{suffix}", meta["namespace"], template["metadata"]["labels"])
        pod_meta["ownerReferences"] = [
            {
                "apiVersion": "batch/v1",
                "kind": "Job",
                "name": meta["name"],
                "uid": meta["uid"],
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": pod_meta,
            "spec": copy.deepcopy(template["spec"]),
            "status": {
                "phase": "Pending",
                "qosClass": "Guaranteed",
                "conditions": [
                    {
                        "type": "PodScheduled",
                        "status": "False",
                        "reason": "Unschedulable",
                        "message": "0/3 nodes are available: waiting for the cluster autoscaler.",
                        "lastTransitionTime": self.now(),
                    }
                ],
            },
        }
        self.pods[(meta["namespace"], pod_meta["name"])] = pod
        self._recount(job)
        return pod

    def _recount(self, job: dict[str, Any]) -> None:
        active = self.active_pods(job)
        job["status"]["active"] = len(active)
        job["status"]["ready"] = sum(1 for pod in active if pod["status"]["phase"] == "Running")
        job["metadata"]["resourceVersion"] = self.next_version()

    def set_running(self, namespace: str, name: str) -> dict[str, Any]:
        job = self.job(namespace, name)
        pod = self._current_pod(job)
        now = self.now()
        container = pod["spec"]["containers"][0]
        pod["spec"]["nodeName"] = "gke-fleet-gpu-pool-0001"
        pod["status"].update(
            {
                "phase": "Running",
                "startTime": now,
                "hostIP": "10.128.0.7",
                "podIP": "10.4.0.12",
                "conditions": [
                    {"type": t, "status": "True", "lastTransitionTime": now}
                    for t in ("PodScheduled", "Initialized", "ContainersReady", "Ready")
                ],
                "containerStatuses": [
                    {
                        "name": container["name"],
                        "image": container.get("image", ""),
                        "imageID": "",
                        "ready": True,
                        "started": True,
                        "restartCount": 0,
                        "state": {"running": {"startedAt": now}},
                    }
                ],
            }
        )
        pod["metadata"]["resourceVersion"] = self.next_version()
        self._recount(job)
        return pod

    def complete(self, namespace: str, name: str) -> None:
        job = self.job(namespace, name)
        for pod in self.active_pods(job):
            self._terminate(pod, "Succeeded", exit_code=0, reason="Completed")
        now = self.now()
        status = job["status"]
        status["succeeded"] = status.get("succeeded", 0) + 1
        status["completionTime"] = now
        status["conditions"] = [
            *status.get("conditions", []),
            _condition("SuccessCriteriaMet", "CompletionsReached", "Reached expected number of succeeded pods", now),
            _condition("Complete", "CompletionsReached", "Reached expected number of succeeded pods", now),
        ]
        self._recount(job)

    def fail(self, namespace: str, name: str, reason: str, message: str) -> None:
        """The Job fails as a whole (deadline, backoff limit...): its running Pods are terminated and counted."""
        job = self.job(namespace, name)
        for pod in self.active_pods(job):
            self._terminate(pod, "Failed", exit_code=143, reason="Error")
            job["status"]["failed"] = job["status"].get("failed", 0) + 1
        self._finish_failed(job, reason, message)

    def fail_pod(self, namespace: str, name: str, exit_code: int = 1) -> str:
        """The current attempt's container exits with ``exit_code``; the controller judges it. Returns the pod."""
        job = self.job(namespace, name)
        pod = self._current_pod(job)
        self._terminate(pod, "Failed", exit_code=exit_code, reason="Error")
        self._pod_failed(job, pod)
        return str(pod["metadata"]["name"])

    def preempt(self, namespace: str, name: str) -> str:
        """Spot reclaim or node drain: the kubelet marks the Pod with a ``DisruptionTarget`` condition and
        kills it (graceful node shutdown). Returns the preempted pod's name."""
        job = self.job(namespace, name)
        pod = self._current_pod(job)
        now = self.now()
        conditions = [c for c in pod["status"].get("conditions", []) if c["type"] not in ("Ready", "ContainersReady")]
        conditions += [
            {
                "type": "DisruptionTarget",
                "status": "True",
                "reason": "TerminationByKubelet",
                "message": _PREEMPTION_MESSAGE,
                "lastTransitionTime": now,
            },
            {"type": "Ready", "status": "False", "reason": "PodFailed", "lastTransitionTime": now},
        ]
        pod["status"]["conditions"] = conditions
        pod["status"]["reason"] = "Terminated"
        pod["status"]["message"] = _PREEMPTION_MESSAGE
        self._terminate(pod, "Failed", exit_code=137, reason="Error")
        self._pod_failed(job, pod)
        return str(pod["metadata"]["name"])

    def _current_pod(self, job: dict[str, Any]) -> dict[str, Any]:
        active = self.active_pods(job)
        if not active:
            raise ValueError(f"job {job['metadata']['name']} has no active pod")
        return active[-1]

    def _terminate(self, pod: dict[str, Any], phase: str, *, exit_code: int, reason: str) -> None:
        now = self.now()
        container = pod["spec"]["containers"][0]
        started = pod["status"].get("startTime", now)
        pod["status"]["phase"] = phase
        pod["status"]["containerStatuses"] = [
            {
                "name": container["name"],
                "image": container.get("image", ""),
                "imageID": "",
                "ready": False,
                "started": False,
                "restartCount": 0,
                "state": {
                    "terminated": {"exitCode": exit_code, "reason": reason, "startedAt": started, "finishedAt": now}
                },
            }
        ]
        pod["metadata"]["resourceVersion"] = self.next_version()

    def _pod_failed(self, job: dict[str, Any], pod: dict[str, Any]) -> None:
        """What the Job controller does with a failed Pod, podFailurePolicy included."""
        status = job["status"]
        action, rule_index = _match_pod_failure_policy(job, pod)
        if action == "Ignore":
            self._new_pod(job)
            return
        status["failed"] = status.get("failed", 0) + 1
        if action == "FailJob":
            code = pod["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"]
            container = pod["spec"]["containers"][0]["name"]
            message = (
                f"Container {container} for pod {pod['metadata']['namespace']}/{pod['metadata']['name']} failed "
                f"with exit code {code} matching FailJob rule at index {rule_index}"
            )
            self._finish_failed(job, "PodFailurePolicy", message)
        elif status["failed"] > job["spec"]["backoffLimit"]:
            self._finish_failed(job, "BackoffLimitExceeded", "Job has reached the specified backoff limit")
        else:
            self._new_pod(job)

    def _finish_failed(self, job: dict[str, Any], reason: str, message: str) -> None:
        now = self.now()
        status = job["status"]
        status["conditions"] = [
            *status.get("conditions", []),
            _condition("FailureTarget", reason, message, now),
            _condition("Failed", reason, message, now),
        ]
        self._recount(job)


def _condition(kind: str, reason: str, message: str, now: str) -> dict[str, Any]:
    return {
        "type": kind,
        "status": "True",
        "reason": reason,
        "message": message,
        "lastProbeTime": now,
        "lastTransitionTime": now,
    }


def _owned_by(pod: dict[str, Any], job: dict[str, Any]) -> bool:
    refs = pod["metadata"].get("ownerReferences") or []
    return any(ref.get("uid") == job["metadata"]["uid"] for ref in refs)


def _match_pod_failure_policy(job: dict[str, Any], pod: dict[str, Any]) -> tuple[str | None, int]:
    """The action of the first rule of the Job's podFailurePolicy that matches the failed Pod."""
    rules = ((job["spec"].get("podFailurePolicy") or {}).get("rules")) or []
    conditions = pod["status"].get("conditions") or []
    for index, rule in enumerate(rules):
        for pattern in rule.get("onPodConditions") or []:
            wanted = pattern.get("status", "True")
            if any(c["type"] == pattern.get("type") and c["status"] == wanted for c in conditions):
                return str(rule["action"]), index
        exit_rule = rule.get("onExitCodes")
        if exit_rule:
            for status in pod["status"].get("containerStatuses") or []:
                if exit_rule.get("containerName") not in (None, status["name"]):
                    continue
                code = (status.get("state") or {}).get("terminated", {}).get("exitCode")
                if code in (None, 0):
                    continue
                inside = code in exit_rule.get("values", [])
                if inside == (exit_rule.get("operator", "In") == "In"):
                    return str(rule["action"]), index
    return None, -1


def _validate_job(name: str, job: dict[str, Any]) -> None:
    """The API server's validation, as far as a launcher could get it wrong."""
    causes: list[tuple[str, str]] = []
    if not name:
        raise _invalid("Job", name, [("metadata.name", "Required value: name or generateName is required")])
    if len(name) > 63 or not _DNS1123_SUBDOMAIN.match(name):
        causes.append(("metadata.name", f'Invalid value: "{name}": must be a lowercase RFC 1123 subdomain'))
    labels = (job.get("metadata") or {}).get("labels") or {}
    for key, value in labels.items():
        if not isinstance(value, str) or len(value) > 63 or not _LABEL_VALUE.match(value):
            causes.append((f"metadata.labels[{key}]", f'Invalid value: "{value}": a valid label must be ...'))
    spec = job.get("spec") or {}
    pod_spec = ((spec.get("template") or {}).get("spec")) or {}
    containers = pod_spec.get("containers") or []
    if not containers:
        causes.append(("spec.template.spec.containers", "Required value"))
    if pod_spec.get("restartPolicy") not in ("Never", "OnFailure"):
        causes.append(("spec.template.spec.restartPolicy", f'Unsupported value: "{pod_spec.get("restartPolicy")}"'))
    for i, container in enumerate(containers):
        if not container.get("name"):
            causes.append((f"spec.template.spec.containers[{i}].name", "Required value"))
        if not container.get("image"):
            causes.append((f"spec.template.spec.containers[{i}].image", "Required value"))
        for section in ("requests", "limits"):
            for resource, quantity in ((container.get("resources") or {}).get(section) or {}).items():
                if not isinstance(quantity, str | int) or not _QUANTITY.match(str(quantity)):
                    causes.append(
                        (
                            f"spec.template.spec.containers[{i}].resources.{section}[{resource}]",
                            f'Invalid value: "{quantity}": must match the regular expression {_QUANTITY.pattern}',
                        )
                    )
    for i, rule in enumerate((spec.get("podFailurePolicy") or {}).get("rules") or []):
        if rule.get("action") not in ("Ignore", "FailJob", "FailIndex", "Count"):
            causes.append((f"spec.podFailurePolicy.rules[{i}].action", f'Unsupported value: "{rule.get("action")}"'))
    if spec.get("podFailurePolicy") and pod_spec.get("restartPolicy") != "Never":
        causes.append(
            ("spec.podFailurePolicy", "Invalid value: only allowed when spec.template.spec.restartPolicy is Never")
        )
    for field in ("backoffLimit", "activeDeadlineSeconds", "ttlSecondsAfterFinished"):
        value = spec.get(field)
        if value is not None and (not isinstance(value, int) or value < (1 if field == "activeDeadlineSeconds" else 0)):
            causes.append((f"spec.{field}", f"Invalid value: {value}: must be greater than or equal to 0"))
    if causes:
        raise _invalid("Job", name, causes)


def _list(kind: str, api_version: str, items: list[dict[str, Any]], version: str) -> dict[str, Any]:
    return {"apiVersion": api_version, "kind": kind, "metadata": {"resourceVersion": version}, "items": items}


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, address: tuple[str, int], state: _State, verbose: bool = False) -> None:
        super().__init__(address, _Handler)
        self.state = state
        self.verbose = verbose


_NAMESPACE = re.compile(r"^/api/v1/namespaces/([^/]+)$")
_JOBS = re.compile(r"^/apis/batch/v1/namespaces/([^/]+)/jobs$")
_JOB = re.compile(r"^/apis/batch/v1/namespaces/([^/]+)/jobs/([^/]+)$")
_PODS = re.compile(r"^/api/v1/namespaces/([^/]+)/pods$")
_SECRETS = re.compile(r"^/api/v1/namespaces/([^/]+)/secrets$")
_SECRET = re.compile(r"^/api/v1/namespaces/([^/]+)/secrets/([^/]+)$")


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    #: Headers and body go out in two writes: without this, Nagle + delayed ACK add ~40 ms per request.
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.verbose:
            sys.stderr.write("fake-k8s: " + (format % args) + "\n")

    def _send(self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def _handle(self, method: str) -> None:
        parsed = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(parsed.query))
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        state = self.server.state
        record: dict[str, Any] = {
            "method": method,
            "path": parsed.path,
            "query": query,
            "body": None,
            "authorization": self.headers.get("Authorization"),
        }
        headers: dict[str, str] = {}
        with state.lock:
            try:
                try:
                    record["body"] = json.loads(raw) if raw else None
                except ValueError as exc:
                    raise ApiError(400, f"the body of the request was in an unknown format: {exc}") from None
                injected = state.take_failure(method, parsed.path)
                if injected is not None:
                    if injected == 429:
                        headers["Retry-After"] = "1"
                    raise ApiError(injected, f"injected failure {injected} ({_REASONS.get(injected, 'Unknown')})")
                if state.token is not None and record["authorization"] != f"Bearer {state.token}":
                    raise ApiError(401, "Unauthorized")
                status, payload = self._route(method, parsed.path, query, record["body"])
            except ApiError as error:
                status, payload = error.code, error.status()
            record["status"] = status
            state.log.append(record)
        self._send(status, payload, headers)

    def _route(self, method: str, path: str, query: dict[str, str], body: Any) -> tuple[int, dict[str, Any]]:
        state = self.server.state
        if path == "/api/v1/namespaces":
            if method == "GET":
                return 200, _list("NamespaceList", "v1", list(state.namespaces.values()), state.next_version())
            if method == "POST":
                return 201, state.create_namespace(body if isinstance(body, dict) else {})
        elif match := _NAMESPACE.match(path):
            if method == "GET":
                return 200, state.namespace(match.group(1))
        elif match := _JOBS.match(path):
            if method == "POST":
                return 201, state.create_job(match.group(1), body if isinstance(body, dict) else {})
            if method == "GET":
                state.namespace(match.group(1))
                jobs = [job for (ns, _), job in state.jobs.items() if ns == match.group(1)]
                jobs = [
                    j
                    for j in jobs
                    if _match_selector(j["metadata"].get("labels") or {}, query.get("labelSelector", ""))
                ]
                return 200, _list("JobList", "batch/v1", jobs, state.next_version())
        elif match := _JOB.match(path):
            if method == "GET":
                return 200, state.job(match.group(1), match.group(2))
            if method == "DELETE":
                propagation = query.get("propagationPolicy") or (body or {}).get("propagationPolicy")
                return 200, state.delete_job(match.group(1), match.group(2), propagation)
        elif match := _SECRETS.match(path):
            if method == "POST":
                return 201, state.create_secret(match.group(1), body if isinstance(body, dict) else {})
        elif match := _SECRET.match(path):
            if method == "GET":
                return 200, state.secret(match.group(1), match.group(2))
            if method == "DELETE":
                return 200, state.delete_secret(match.group(1), match.group(2))
        elif match := _PODS.match(path):
            if method == "GET":
                selector = query.get("labelSelector", "")
                pods = [
                    pod
                    for (ns, _), pod in state.pods.items()
                    if ns == match.group(1) and _match_selector(pod["metadata"].get("labels") or {}, selector)
                ]
                return 200, _list("PodList", "v1", pods, state.next_version())
        else:
            raise ApiError(404, "the server could not find the requested resource")
        raise ApiError(405, f"the server does not allow this method on the requested resource: {method} {path}")

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def do_PATCH(self) -> None:
        self._handle("PATCH")


class FakeKubernetes(Served):
    """The fake API server in this process, on a free port (or ``port``); see the module doc."""

    def __init__(
        self,
        port: int = 0,
        *,
        token: str | None = None,
        clock: Callable[[], datetime] | None = None,
        verbose: bool = False,
    ) -> None:
        self.state = _State(token, clock or (lambda: datetime.now(UTC)))
        self._server = _Server(("127.0.0.1", port), self.state, verbose=verbose)
        self._thread = None
        self.thread_name = "fake-k8s"

    @property
    def url(self) -> str:
        """The API server's address, scheme included (what the fake GKE reports as the cluster endpoint)."""
        return f"http://127.0.0.1:{self.port}"

    # --- what the API saw -----------------------------------------------------------------------
    def requests(self, method: str | None = None, path: str | None = None) -> list[dict[str, Any]]:
        """Recorded requests, oldest first; ``path``: only those whose path starts with it."""
        with self.state.lock:
            return [
                copy.deepcopy(r)
                for r in self.state.log
                if (method is None or r["method"] == method) and (path is None or r["path"].startswith(path))
            ]

    def clear(self) -> None:
        with self.state.lock:
            self.state.log.clear()

    def fail_next(self, status: int, count: int = 1, *, method: str | None = None, path: str | None = None) -> None:
        """The next ``count`` requests (of ``method``, whose path contains ``path``) answer ``status``."""
        with self.state.lock:
            self.state.failures.append([status, count, method, path])

    # --- objects --------------------------------------------------------------------------------
    def namespaces(self) -> list[str]:
        with self.state.lock:
            return sorted(self.state.namespaces)

    def add_namespace(self, name: str, labels: dict[str, str] | None = None) -> None:
        with self.state.lock:
            self.state.create_namespace({"metadata": {"name": name, "labels": labels or {}}})

    def create_job(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        """Create a Job as someone else would (kubectl, another controller); the namespace is created too."""
        with self.state.lock:
            if namespace not in self.state.namespaces:
                self.state.create_namespace({"metadata": {"name": namespace}})
            return copy.deepcopy(self.state.create_job(namespace, body))

    def job(self, namespace: str, name: str) -> dict[str, Any] | None:
        with self.state.lock:
            job = self.state.jobs.get((namespace, name))
            return copy.deepcopy(job) if job else None

    def jobs(self, namespace: str | None = None) -> list[dict[str, Any]]:
        with self.state.lock:
            return [copy.deepcopy(j) for (ns, _), j in self.state.jobs.items() if namespace in (None, ns)]

    def pods(self, namespace: str, job_name: str | None = None) -> list[dict[str, Any]]:
        with self.state.lock:
            return [
                copy.deepcopy(p)
                for (ns, _), p in self.state.pods.items()
                if ns == namespace and job_name in (None, (p["metadata"].get("labels") or {}).get(JOB_NAME_LABEL))
            ]

    # --- the job controller and kubelet, driven by tests ----------------------------------------
    def set_running(self, namespace: str, name: str) -> None:
        with self.state.lock:
            self.state.set_running(namespace, name)

    def complete(self, namespace: str, name: str) -> None:
        with self.state.lock:
            self.state.complete(namespace, name)

    def fail(
        self,
        namespace: str,
        name: str,
        reason: str = "BackoffLimitExceeded",
        message: str = "Job has reached the specified backoff limit",
    ) -> None:
        with self.state.lock:
            self.state.fail(namespace, name, reason, message)

    def fail_pod(self, namespace: str, name: str, exit_code: int = 1) -> str:
        with self.state.lock:
            return self.state.fail_pod(namespace, name, exit_code)

    def preempt(self, namespace: str, name: str) -> str:
        with self.state.lock:
            return self.state.preempt(namespace, name)


def start(port: int = 0, *, token: str | None = None, verbose: bool = False) -> FakeKubernetes:
    """A started fake on ``port`` (0: a free one), serving from a daemon thread until ``.stop()``."""
    return FakeKubernetes(port, token=token, verbose=verbose).start()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tests.fakes.fake_k8s", description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: a free one)")
    parser.add_argument("--token", help="the one bearer token accepted (default: no authentication)")
    parser.add_argument("--namespace", action="append", default=[], help="a namespace that exists from the start")
    parser.add_argument("--verbose", action="store_true", help="log every request")
    args = parser.parse_args(argv)
    fake = FakeKubernetes(args.port, token=args.token, verbose=args.verbose)
    for namespace in args.namespace:
        fake.add_namespace(namespace)
    return fake.serve_in_foreground("fake Kubernetes API", fake.url)


if __name__ == "__main__":
    sys.exit(main())
