"""Which backend runs a job (documented in docs/jobs.md, configurable per tenant). Pure.

1. A job that names a backend gets it, if the tenant allows it and it can run the job.
2. Otherwise the tenant's ``default_backend`` (the local stack: ``local``), under the same condition.
3. Otherwise the first allowed backend, in this order of preference, that can run it:
   - **Cloud Run jobs** for CPU jobs and single-L4 jobs on demand: nothing to keep running, billed
     per second, no node to scale up (L4 needs at least 4 vCPU and 16 GiB);
   - **GKE** for everything else: several GPUs, other GPU types, spot capacity, large machines; only the
     GPU types the deployment has node pools of (``gpu_types``), and H100 on demand only as 8 GPUs
     (a3-highgpu-1g/2g/4g are sold as spot only: ``job_costs.SPOT_ONLY_MACHINES``).
The local backend runs anything on this machine's CPU (GPUs are accounted, not provided).
"""

from __future__ import annotations

from collections.abc import Collection

from shared.domain import job_costs
from shared.domain.jobs import JobResources, JobsConfig
from shared.domain.run_phase import Backend

#: Cloud Run jobs' limits per task (2025): 8 vCPU and 32 GiB; with an L4, at least 4 vCPU and 16 GiB.
CLOUD_RUN_MAX_CPU = 8.0
CLOUD_RUN_MAX_MEMORY_GB = 32.0
CLOUD_RUN_MAX_RUNTIME_S = 7 * 86400
_PREFERENCE = (Backend.CLOUDRUN, Backend.GKE, Backend.LOCAL)


class NoBackend(ValueError):
    """No allowed backend can run the job: the reason lists why each was ruled out."""


def why_not(
    backend: Backend,
    resources: JobResources,
    max_runtime_s: int,
    *,
    prices: job_costs.MachinePrices,
    gpu_types: Collection[str] | None = None,
) -> str | None:
    """Why ``backend`` cannot run a job with these resources (GKE: on a machine of ``prices`` with a node pool:
    an accelerator of ``gpu_types``, the deployed ones, None: all); None when it can."""
    if backend is Backend.LOCAL:
        return None
    if backend is Backend.CLOUDRUN:
        if resources.spot:
            return "Cloud Run has no spot capacity"
        if resources.gpu > 1:
            return "Cloud Run jobs take one GPU per task"
        if resources.gpu and resources.gpu_type not in (None, "nvidia-l4"):
            return "Cloud Run jobs offer only the NVIDIA L4"
        if resources.gpu and (resources.cpu < 4 or resources.memory_gb < 16):
            return "an L4 on Cloud Run needs at least 4 vCPU and 16 GiB"
        if resources.cpu > CLOUD_RUN_MAX_CPU or resources.memory_gb > CLOUD_RUN_MAX_MEMORY_GB:
            return f"Cloud Run jobs have at most {CLOUD_RUN_MAX_CPU:g} vCPU and {CLOUD_RUN_MAX_MEMORY_GB:g} GiB"
        if max_runtime_s > CLOUD_RUN_MAX_RUNTIME_S:
            return "Cloud Run tasks run at most 168 hours"
        return None
    wanted = (resources.gpu_type or "nvidia-l4") if resources.gpu else None
    if wanted is not None and gpu_types is not None and wanted not in gpu_types:
        return f"this deployment's GKE cluster has no {wanted} nodes (it has: {', '.join(gpu_types) or 'none'})"
    try:
        machine, _family = job_costs.machine_for(
            resources.cpu, resources.memory_gb, resources.gpu, resources.gpu_type, prices=prices
        )
    except job_costs.NoMachine as exc:
        return str(exc)
    if not resources.spot and machine in job_costs.SPOT_ONLY_MACHINES:
        return f"{machine} is sold only as spot capacity: ask for spot, or for 8 GPUs on demand"
    return None


def choose(
    resources: JobResources,
    max_runtime_s: int,
    asked: Backend | None,
    config: JobsConfig,
    *,
    prices: job_costs.MachinePrices,
    gpu_types: Collection[str] | None = None,
) -> tuple[Backend, str]:
    """(backend, why) for a job; :class:`NoBackend` when none of the allowed ones can run it."""
    allowed = list(config.backends)
    if config.default_backend is not None and config.default_backend not in allowed:
        allowed.append(config.default_backend)
    if asked is not None:
        if asked not in allowed:
            raise NoBackend(f"backend {asked.value} is not enabled for this tenant (enabled: {_names(allowed)})")
        reason = why_not(asked, resources, max_runtime_s, prices=prices, gpu_types=gpu_types)
        if reason is not None:
            raise NoBackend(f"{asked.value} cannot run this job: {reason}")
        return asked, "asked for"
    if config.default_backend is not None:
        reason = why_not(config.default_backend, resources, max_runtime_s, prices=prices, gpu_types=gpu_types)
        if reason is None:
            return config.default_backend, "the tenant's default backend"
    ruled_out = []
    for backend in _PREFERENCE:
        if backend not in allowed:
            continue
        reason = why_not(backend, resources, max_runtime_s, prices=prices, gpu_types=gpu_types)
        if reason is None:
            return backend, _why(backend, resources)
        ruled_out.append(f"{backend.value}: {reason}")
    raise NoBackend("no enabled backend can run this job (" + "; ".join(ruled_out) + ")")


def _why(backend: Backend, resources: JobResources) -> str:
    if backend is Backend.CLOUDRUN:
        return "single L4 on demand: Cloud Run job" if resources.gpu else "CPU job: Cloud Run job"
    if backend is Backend.GKE:
        if resources.spot:
            return "spot capacity: GKE node pool"
        return f"{resources.gpu} x {resources.gpu_type or 'GPU'}: GKE GPU node pool" if resources.gpu else "GKE"
    return "local"


def _names(backends: list[Backend]) -> str:
    return ", ".join(b.value for b in backends)
