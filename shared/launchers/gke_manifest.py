"""The GKE backend's Kubernetes Job for a run (pure: plain dicts, no client): :func:`job_manifest`, the
tenant's namespace name and the resource quantities.

What the Job looks like is :func:`job_manifest` (a pure function, a plain dict):

* retries are Kubernetes' own (``backoffLimit = spec.max_retries``, ``restartPolicy: Never``), and a
  ``podFailurePolicy`` rule *Ignores* pods with a ``DisruptionTarget`` condition: a spot reclaim or node
  drain starts a new pod without using up a retry. Optionally (``fail_job_exit_codes``) a second rule
  fails the Job at once when the container exits with one of those codes (a trainer's way to say "retrying
  will not help": bad config, missing data), instead of burning the retries;
* the run's limits are Kubernetes' too: ``activeDeadlineSeconds = spec.max_runtime_s`` and
  ``ttlSecondsAfterFinished = spec.keep_finished_s`` (the finished Job and its pods are then deleted);
* GPUs: ``nvidia.com/gpu`` limit, the GKE accelerator node selector and the GPU taint's toleration; spot:
  ``cloud.google.com/gke-spot: "true"``; on demand: a required node affinity ``cloud.google.com/gke-spot``
  DoesNotExist (GKE does not taint spot nodes, so without it an on-demand job could land on one). The
  machine the job was priced on (``spec.machine_type``) is selected by ``node.kubernetes.io/instance-type``,
  so a 1-GPU job priced on g2-standard-4 never scales up a g2-standard-96 (terraform/gke.tf has one pool
  per machine and spot or on demand; tests/unit/test_terraform_pools.py checks each lands on exactly one).
  ``terminationGracePeriodSeconds`` is 30 s, spot's notice (on a
  spot node shutdown the kubelet gives regular pods the first 15 s of it: checkpoint promptly on SIGTERM).
* secrets (the job's key, ``FLEET_JOB_KEY``) are never in the Job: its env names them in a Secret of the
  Job's name (:func:`secret_manifest`), created right after the Job and owned by it, so Kubernetes deletes
  it with the Job. The pod waits (``CreateContainerConfigError``, retried by the kubelet) until it exists.
"""

from __future__ import annotations

import copy
import hashlib
import math
import re
from collections.abc import Sequence
from typing import Any

from shared.launchers.base import CONTAINER, LaunchSpec

GPU_RESOURCE = "nvidia.com/gpu"
ACCELERATOR_SELECTOR = "cloud.google.com/gke-accelerator"
SPOT_SELECTOR = "cloud.google.com/gke-spot"
MACHINE_SELECTOR = "node.kubernetes.io/instance-type"
#: On demand: never a spot node (GKE labels spot nodes but does not taint them).
NOT_SPOT_AFFINITY = {
    "nodeAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchExpressions": [{"key": SPOT_SELECTOR, "operator": "DoesNotExist"}]}]
        }
    }
}
#: GKE taints GPU nodes with this; the pods that asked for a GPU must tolerate it.
GPU_TOLERATION = {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}
#: Spot VMs get a 30 s preemption notice; the trainer gets SIGTERM and this long to save a checkpoint.
TERMINATION_GRACE_S = 30
_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def namespace_for(tenant: str, prefix: str = "fleet-") -> str:
    """The tenant's namespace: ``prefix + tenant`` when that is a valid namespace name (DNS-1123 label, at
    most 63 characters); otherwise a cleaned-up, shortened form plus a hash of the tenant, so that tenants
    such as ``a_b`` and ``a-b`` never share a namespace."""
    name = prefix + tenant
    if len(name) <= 63 and _DNS1123_LABEL.match(name):
        return name
    cleaned = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")
    digest = hashlib.sha256(tenant.encode()).hexdigest()[:8]
    return f"{cleaned[:54].rstrip('-')}-{digest}".lstrip("-")


def cpu_quantity(cpu: float) -> str:
    """Kubernetes CPU quantity: whole cores as ``"4"``, fractions in millicores (``"500m"``)."""
    if cpu <= 0:
        raise ValueError(f"cpu must be positive, got {cpu}")
    if float(cpu).is_integer():
        return str(int(cpu))
    return f"{math.ceil(round(cpu * 1000, 6))}m"  # round first: 0.3 * 1000 is 300.00000000000006


def memory_quantity(memory_gb: float) -> str:
    """Kubernetes memory quantity: whole GiB as ``"16Gi"``, fractions in whole MiB (``"1536Mi"``)."""
    if memory_gb <= 0:
        raise ValueError(f"memory_gb must be positive, got {memory_gb}")
    if float(memory_gb).is_integer():
        return f"{int(memory_gb)}Gi"
    return f"{math.ceil(round(memory_gb * 1024, 6))}Mi"


def job_manifest(spec: LaunchSpec, namespace: str, *, fail_job_exit_codes: Sequence[int] = ()) -> dict[str, Any]:
    """The ``batch/v1`` Job for ``spec``, as sent to the API (see the module doc for why each field).

    ``fail_job_exit_codes``: container exit codes that fail the Job at once (no retry); none by default.
    A GPU job without ``gpu_type`` gets no accelerator selector: any GPU node pool will do.
    Raises ValueError for a spec Kubernetes would refuse (non-positive cpu or memory, exit code 0).
    """
    labels = spec.all_labels()
    resources = {"cpu": cpu_quantity(spec.cpu), "memory": memory_quantity(spec.memory_gb)}
    container: dict[str, Any] = {"name": CONTAINER, "image": spec.image}
    if spec.command:
        container["command"] = list(spec.command)
    env: list[dict[str, Any]] = [{"name": key, "value": value} for key, value in spec.env.items()]
    env += [
        {"name": key, "valueFrom": {"secretKeyRef": {"name": spec.name, "key": key}}} for key in sorted(spec.secrets)
    ]
    if env:
        container["env"] = env
    limits: dict[str, str] = dict(resources)
    if spec.gpu > 0:
        limits[GPU_RESOURCE] = str(spec.gpu)
    container["resources"] = {"requests": dict(resources), "limits": limits}

    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "terminationGracePeriodSeconds": TERMINATION_GRACE_S,
        "containers": [container],
    }
    node_selector: dict[str, str] = {}
    if spec.gpu > 0 and spec.gpu_type:
        node_selector[ACCELERATOR_SELECTOR] = spec.gpu_type
    if spec.machine_type:
        node_selector[MACHINE_SELECTOR] = spec.machine_type
    if spec.spot:
        node_selector[SPOT_SELECTOR] = "true"
    else:
        pod_spec["affinity"] = copy.deepcopy(NOT_SPOT_AFFINITY)
    if node_selector:
        pod_spec["nodeSelector"] = node_selector
    if spec.gpu > 0:
        pod_spec["tolerations"] = [dict(GPU_TOLERATION)]

    rules: list[dict[str, Any]] = [{"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]}]
    if fail_job_exit_codes:
        if 0 in fail_job_exit_codes:
            raise ValueError("exit code 0 is success, it cannot fail a Job")
        # Kubernetes wants the values sorted and without duplicates.
        values = sorted(set(fail_job_exit_codes))
        rules.append(
            {"action": "FailJob", "onExitCodes": {"containerName": CONTAINER, "operator": "In", "values": values}}
        )
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": spec.name, "namespace": namespace, "labels": dict(labels)},
        "spec": {
            "backoffLimit": spec.max_retries,
            "activeDeadlineSeconds": spec.max_runtime_s,
            "ttlSecondsAfterFinished": spec.keep_finished_s,
            "podFailurePolicy": {"rules": rules},
            "template": {"metadata": {"labels": dict(labels)}, "spec": pod_spec},
        },
    }


def secret_manifest(spec: LaunchSpec, namespace: str, job_uid: str) -> dict[str, Any]:
    """The ``v1`` Secret holding ``spec.secrets``, named as the Job and owned by it (uid ``job_uid``):
    Kubernetes' garbage collector deletes it with the Job (``ttlSecondsAfterFinished``, a cancel)."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            "name": spec.name,
            "namespace": namespace,
            "labels": spec.all_labels(),
            "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": spec.name, "uid": job_uid}],
        },
        "stringData": dict(spec.secrets),
    }
