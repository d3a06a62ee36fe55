"""The Cloud Run job for a run (pure: the request message, no call): :func:`job_message`, the checks of
what Cloud Run jobs can run (:func:`check`) and the sizes they sell.

Resources: Cloud Run sells whole vCPUs in steps (1, 2, 4, 6, 8) and ties memory and CPU (more than
4/8/16/24 GiB needs 2/4/6/8 vCPU; 4 vCPU needs 2 GiB, 6-8 vCPU 4 GiB), so limits are rounded *up* to the
nearest size Cloud Run accepts, never down. ``memory_gb`` is read as GiB. What rounding can't fix is
refused by :func:`check`: one NVIDIA L4 at most (at least 4 vCPU and 16 GiB with it), no spot, at most
8 vCPU / 32 GiB, 168 h per attempt and 10 retries (https://cloud.google.com/run/quotas,
/run/docs/configuring/jobs/gpu, /run/docs/configuring/task-timeout). GPU jobs and attempts over 24 h
are preview features: such jobs are created with ``launch_stage = BETA`` (harmless once GA).

Command: ``spec.command[0]`` is the container's ``command`` (its entrypoint), the rest its ``args``;
an empty command keeps the image's own entrypoint and CMD.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING

from shared.domain import job_costs
from shared.launchers import base
from shared.launchers.base import LaunchError, LaunchSpec

if TYPE_CHECKING:
    from google.cloud import run_v2

#: The only GPU Cloud Run jobs offer (one per task) and what it needs beside it.
L4 = "nvidia-l4"
L4_MIN_CPU = 4.0
L4_MIN_MEMORY_GIB = 16.0
#: Cloud Run jobs' limits per task (2025).
MAX_CPU = 8.0
MAX_MEMORY_GIB = 32.0
MAX_RUNTIME_S = 168 * 3600
MAX_RETRIES = 10
#: Attempts longer than this are a preview feature (launch stage BETA).
GA_MAX_RUNTIME_S = 24 * 3600
#: vCPU sizes Cloud Run accepts above 1.
CPU_STEPS = job_costs.CLOUD_RUN_CPU_STEPS


def check(spec: LaunchSpec) -> str | None:
    """Why Cloud Run jobs cannot run ``spec``; None when they can. Pure."""
    if spec.spot:
        return "Cloud Run has no spot capacity"
    if spec.gpu > 1:
        return f"Cloud Run jobs take one GPU per task (asked for {spec.gpu})"
    if spec.gpu and spec.gpu_type not in (None, L4):
        return f"Cloud Run jobs offer only the NVIDIA L4 ({L4}), not {spec.gpu_type}"
    if spec.gpu and (spec.cpu < L4_MIN_CPU or spec.memory_gb < L4_MIN_MEMORY_GIB):
        return (
            f"an NVIDIA L4 on Cloud Run needs at least {L4_MIN_CPU:g} vCPU and {L4_MIN_MEMORY_GIB:g} GiB "
            f"(asked for {spec.cpu:g} vCPU and {spec.memory_gb:g} GiB)"
        )
    if spec.cpu > MAX_CPU or spec.memory_gb > MAX_MEMORY_GIB:
        return (
            f"Cloud Run jobs have at most {MAX_CPU:g} vCPU and {MAX_MEMORY_GIB:g} GiB per task "
            f"(asked for {spec.cpu:g} vCPU and {spec.memory_gb:g} GiB)"
        )
    if spec.max_runtime_s > MAX_RUNTIME_S:
        return f"Cloud Run tasks run at most 168 hours (asked for {spec.max_runtime_s / 3600:g} h)"
    if spec.max_retries > MAX_RETRIES:
        return f"Cloud Run retries a task at most {MAX_RETRIES} times (asked for {spec.max_retries})"
    if not spec.image:
        return "a Cloud Run job needs a container image"
    return None


def resource_limits(spec: LaunchSpec) -> dict[str, str]:
    """The container's limits: the spec's CPU and memory rounded up to sizes Cloud Run accepts (the
    rule is the estimate's too: shared/domain/job_costs.py). Pure."""
    cpu, memory_mib = job_costs.cloud_run_size(spec.cpu, spec.memory_gb)
    memory = f"{memory_mib // 1024}Gi" if memory_mib % 1024 == 0 else f"{memory_mib}Mi"
    limits = {"cpu": str(cpu), "memory": memory}
    if spec.gpu:
        limits["nvidia.com/gpu"] = "1"
    return limits


def execution_id(spec_or_job_id: LaunchSpec | str) -> str:
    """The id of the execution the job's creation starts: ``<job>-<token>``."""
    job_id = spec_or_job_id.job_id if isinstance(spec_or_job_id, LaunchSpec) else spec_or_job_id
    return f"{base.run_name(job_id)}-{base.execution_token(job_id)}"


def job_path(project: str, region: str, name: str) -> str:
    return f"projects/{project}/locations/{region}/jobs/{name}"


def job_message(spec: LaunchSpec, *, project: str, region: str, service_account: str | None = None) -> run_v2.Job:
    """The Cloud Run job for ``spec`` (created under ``projects/{project}/locations/{region}`` with
    ``job_id = spec.name``; ``name`` is left empty as the API composes it from those). Raises a
    permanent :class:`LaunchError` when :func:`check` refuses the spec. Pure."""
    # lazy: the Cloud Run client loads only when a job runs on Cloud Run
    from google.api import launch_stage_pb2
    from google.cloud import run_v2

    reason = check(spec)
    if reason is not None:
        raise LaunchError(f"Cloud Run cannot run job {spec.job_id}: {reason}", transient=False)
    command = list(spec.command)
    container = run_v2.Container(
        name=base.CONTAINER,
        image=spec.image,
        command=command[:1],
        args=command[1:],
        # The secrets (the job's key) too: readable by whoever may read this Cloud Run job (docs/jobs.md).
        env=[run_v2.EnvVar(name=key, value=value) for key, value in {**spec.env, **spec.secrets}.items()],
        resources=run_v2.ResourceRequirements(limits=resource_limits(spec)),
    )
    task = run_v2.TaskTemplate(
        containers=[container],
        # Set even when 0: unset, Cloud Run retries 3 times.
        max_retries=spec.max_retries,
        timeout=timedelta(seconds=spec.max_runtime_s),
    )
    identity = spec.service_account or service_account  # a system run's own identity over the default
    if identity:
        task.service_account = identity
    if spec.gpu:
        task.node_selector = run_v2.NodeSelector(accelerator=L4)
        task.gpu_zonal_redundancy_disabled = True
    labels = spec.all_labels()
    job = run_v2.Job(
        labels=labels,
        start_execution_token=base.execution_token(spec.job_id),
        template=run_v2.ExecutionTemplate(labels=labels, task_count=1, parallelism=1, template=task),
    )
    if spec.gpu or spec.max_runtime_s > GA_MAX_RUNTIME_S:
        job.launch_stage = launch_stage_pb2.LaunchStage.BETA
    return job
