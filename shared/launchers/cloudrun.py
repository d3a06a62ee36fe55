"""The Cloud Run jobs backend: one Cloud Run job per fleet job, started as it is created.

A fleet job becomes a Cloud Run job named :func:`base.run_name` (one task, ``max_retries`` retries)
created with ``start_execution_token = base.execution_token(job_id)``: creating the job starts its one
execution, and a retried create is refused with 409 (the job exists), so no second execution can ever
start. The existing job is adopted only if its ``fleet-job-id`` label is this job's (else :class:`NotOurs`).

Execution name: Cloud Run uses the token as the execution id's suffix, where ``:run`` uses 5 random
characters, so the execution is ``<job name>/executions/<job>-<token>`` (the job name plus the token
must stay under 63 characters: 40 + 1 + 13 here). We rely on it only as a fallback: the handle, status
and cancel read the job's ``latest_created_execution`` first (it names the execution the token made;
this launcher never runs a job twice, so it is the only one).

Resources: Cloud Run sells whole vCPUs in steps (1, 2, 4, 6, 8) and ties memory and CPU (more than
4/8/16/24 GiB needs 2/4/6/8 vCPU; 4 vCPU needs 2 GiB, 6-8 vCPU 4 GiB), so limits are rounded *up* to the
nearest size Cloud Run accepts, never down. ``memory_gb`` is read as GiB. What rounding can't fix is
refused by :func:`check`: one NVIDIA L4 at most (at least 4 vCPU and 16 GiB with it), no spot, at most
8 vCPU / 32 GiB, 168 h per attempt and 10 retries (https://cloud.google.com/run/quotas,
/run/docs/configuring/jobs/gpu, /run/docs/configuring/task-timeout). GPU jobs and attempts over 24 h
are preview features: such jobs are created with ``launch_stage = BETA`` (harmless once GA).

Status: the execution's task counts and its ``Completed`` condition; ``failed_attempts`` is the task's
``retried`` (the execution's ``retried_count`` only counts tasks that retried at all, so the tasks are
listed when it is non-zero). Cloud Run has no spot capacity: no preemptions are ever reported.

Command: ``spec.command[0]`` is the container's ``command`` (its entrypoint), the rest its ``args``;
an empty command keeps the image's own entrypoint and CMD.

The client library is imported inside functions only, to keep it out of other functions' cold start.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from shared.domain import job_costs
from shared.domain.run_phase import Backend, Phase, RunStatus
from shared.launchers import base
from shared.launchers.base import Handle, LaunchError, LaunchSpec, NotOurs

if TYPE_CHECKING:
    from google.auth.credentials import Credentials
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
#: Seconds one API call may take: the caller retries (Pub/Sub redelivers), so never block for long.
CALL_TIMEOUT_S = 30.0

_REST_PREFIX = re.compile(r"^(GET|POST|PUT|PATCH|DELETE) \S+: ")


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
        env=[run_v2.EnvVar(name=key, value=value) for key, value in spec.env.items()],
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


class CloudRunLauncher:
    """Launches fleet jobs as Cloud Run jobs in one project and region."""

    backend = Backend.CLOUDRUN

    def __init__(
        self,
        project: str,
        region: str,
        *,
        endpoint: str | None = None,
        credentials: Credentials | None = None,
        service_account: str | None = None,
    ) -> None:
        self.project = project
        self.region = region
        self.endpoint = endpoint
        self.service_account = service_account
        self._credentials = credentials
        self._clients: dict[str, Any] = {}

    # --- Launcher ------------------------------------------------------------------------------

    def launch(self, spec: LaunchSpec) -> Handle:
        """Create the job (which starts its one execution), or adopt the one created before."""
        from google.api_core import exceptions as gexc

        job = job_message(spec, project=self.project, region=self.region, service_account=self.service_account)
        parent = f"projects/{self.project}/locations/{self.region}"
        name = job_path(self.project, self.region, spec.name)
        try:
            # The returned operation completes once the execution has started (minutes for a GPU):
            # never waited for; the job is read back instead.
            self._jobs().create_job(parent=parent, job=job, job_id=spec.name, timeout=CALL_TIMEOUT_S)
        except gexc.Conflict as exc:
            if isinstance(exc, gexc.Aborted):
                raise _launch_error(exc, f"creating Cloud Run job {spec.name}") from exc
            # 409: a job of that name exists (over REST AlreadyExists arrives as a plain Conflict).
        except Exception as exc:
            raise _launch_error(exc, f"creating Cloud Run job {spec.name}") from exc
        try:
            current = self._jobs().get_job(name=name, timeout=CALL_TIMEOUT_S)
        except gexc.NotFound as exc:
            # Created (or said to exist) a moment ago: not readable yet; the retry will find it.
            raise LaunchError(f"Cloud Run job {spec.name} is not readable yet", transient=True) from exc
        except Exception as exc:
            raise _launch_error(exc, f"reading Cloud Run job {spec.name}") from exc
        owner = current.labels.get(base.JOB_LABEL, "")
        if owner != spec.job_id:
            raise NotOurs(
                f"Cloud Run job {spec.name} exists and belongs to job {owner or '(no fleet job)'}, not {spec.job_id}"
            )
        execution = self._execution_ref(current) or f"{name}/executions/{execution_id(spec)}"
        return Handle(Backend.CLOUDRUN.value, name, {"region": self.region, "job": spec.name, "execution": execution})

    def status(self, handle: Handle) -> RunStatus:
        """The execution's phase from its task counts and its ``Completed`` condition."""
        from google.api_core import exceptions as gexc

        try:
            job = self._jobs().get_job(name=handle.name, timeout=CALL_TIMEOUT_S)
        except gexc.NotFound:
            return RunStatus(Phase.MISSING, message=f"Cloud Run job {handle.name} not found")
        except Exception as exc:
            raise _launch_error(exc, f"reading Cloud Run job {handle.name}") from exc
        known = self._execution_ref(job)
        name = known or handle.details.get("execution", "")
        execution = self._get_execution(name) if name else None
        if execution is None:
            if known:
                return RunStatus(Phase.MISSING, message=f"Cloud Run execution {known} not found")
            return _job_status(job)
        return _execution_status(execution, self._failed_attempts(execution))

    def cancel(self, handle: Handle) -> None:
        """Cancel the execution; one already finished, or a job already gone, is fine."""
        from google.api_core import exceptions as gexc

        try:
            job = self._jobs().get_job(name=handle.name, timeout=CALL_TIMEOUT_S)
        except gexc.NotFound:
            return
        except Exception as exc:
            raise _launch_error(exc, f"reading Cloud Run job {handle.name}") from exc
        known = self._execution_ref(job)
        name = known or handle.details.get("execution", "")
        execution = self._get_execution(name) if name else None
        if execution is None:
            if known or _job_status(job).phase is Phase.FAILED:
                return  # deleted, or never started: nothing runs
            # The job is still creating its execution: cancel again once it exists.
            raise LaunchError(f"Cloud Run job {handle.name} has not started its execution yet", transient=True)
        if _finished(execution):
            return
        try:
            self._executions().cancel_execution(name=execution.name, timeout=CALL_TIMEOUT_S)
        except gexc.NotFound:
            return
        except (gexc.FailedPrecondition, gexc.BadRequest) as exc:
            # Finished (or being cancelled) between our read and the cancel.
            again = self._get_execution(execution.name)
            if again is None or _finished(again) or _cancelling(again):
                return
            raise _launch_error(exc, f"cancelling Cloud Run execution {execution.name}") from exc
        except Exception as exc:
            raise _launch_error(exc, f"cancelling Cloud Run execution {execution.name}") from exc

    def release(self, handle: Handle) -> None:
        """Delete the Cloud Run job of a run that ended: Cloud Run keeps jobs until deleted, and a
        region holds a limited number of them. Its logs stay in Cloud Logging. Gone already is fine."""
        from google.api_core import exceptions as gexc

        try:
            self._jobs().delete_job(name=handle.name, timeout=CALL_TIMEOUT_S)
        except gexc.NotFound:
            return
        except Exception as exc:
            raise _launch_error(exc, f"deleting Cloud Run job {handle.name}") from exc

    # --- helpers -------------------------------------------------------------------------------

    def _client(self, kind: str) -> Any:
        """A cached client; REST against ``endpoint`` when one is given (a local fake: http:// is kept)."""
        client = self._clients.get(kind)
        if client is None:
            from google.cloud import run_v2

            cls = {"jobs": run_v2.JobsClient, "executions": run_v2.ExecutionsClient, "tasks": run_v2.TasksClient}[kind]
            if self.endpoint:
                client = cls(
                    credentials=self._credentials, transport="rest", client_options={"api_endpoint": self.endpoint}
                )
            else:
                client = cls(credentials=self._credentials)
            self._clients[kind] = client
        return client

    def _jobs(self) -> run_v2.JobsClient:
        client: run_v2.JobsClient = self._client("jobs")
        return client

    def _executions(self) -> run_v2.ExecutionsClient:
        client: run_v2.ExecutionsClient = self._client("executions")
        return client

    def _get_execution(self, name: str) -> run_v2.Execution | None:
        from google.api_core import exceptions as gexc

        try:
            return self._executions().get_execution(name=name, timeout=CALL_TIMEOUT_S)
        except gexc.NotFound:
            return None
        except Exception as exc:
            raise _launch_error(exc, f"reading Cloud Run execution {name}") from exc

    def _failed_attempts(self, execution: run_v2.Execution) -> int:
        """Retries of the task: the execution only counts tasks that retried, the task counts retries."""
        if not execution.retried_count:
            return 0
        try:
            tasks = self._client("tasks").list_tasks(parent=execution.name, timeout=CALL_TIMEOUT_S)
            return max(execution.retried_count, sum(task.retried for task in tasks))
        except Exception:  # best effort: the execution's own count is a lower bound
            return int(execution.retried_count)

    @staticmethod
    def _execution_ref(job: run_v2.Job) -> str:
        """The full name of the job's latest execution ('' if none yet); a bare id is completed."""
        ref = job.latest_created_execution.name
        if ref and "/" not in ref:
            ref = f"{job.name}/executions/{ref}"
        return ref


def _job_status(job: run_v2.Job) -> RunStatus:
    """A job with no execution: failed if Cloud Run could not start one, else still pending."""
    from google.cloud import run_v2

    condition = job.terminal_condition
    if condition.state == run_v2.Condition.State.CONDITION_FAILED:
        return RunStatus(Phase.FAILED, message=condition.message or "Cloud Run could not start the execution")
    return RunStatus(Phase.PENDING)


def _execution_status(execution: run_v2.Execution, failed_attempts: int) -> RunStatus:
    from google.cloud import run_v2

    completed = _completed(execution)
    started_at, finished_at = _time(execution.start_time), _time(execution.completion_time)
    reason = completed.execution_reason if completed is not None else None
    message = completed.message if completed is not None else ""

    def status(phase: Phase, text: str = "") -> RunStatus:
        return RunStatus(phase, started_at, finished_at, text, (), failed_attempts)

    if _finished(execution):
        if execution.succeeded_count >= max(execution.task_count, 1):
            return status(Phase.SUCCEEDED)
        if execution.cancelled_count or reason == run_v2.Condition.ExecutionReason.CANCELLED:
            return status(Phase.CANCELLED, message or "cancelled")
        if completed is not None and completed.state == run_v2.Condition.State.CONDITION_SUCCEEDED:
            return status(Phase.SUCCEEDED)
        prefix = f"{reason.name}: " if reason else ""
        return status(Phase.FAILED, prefix + (message or f"{execution.failed_count} task(s) failed"))
    note = "being cancelled" if _cancelling(execution) else ""
    return status(Phase.RUNNING if execution.running_count else Phase.PENDING, note)


def _completed(execution: run_v2.Execution) -> run_v2.Condition | None:
    return next((c for c in execution.conditions if c.type_ == "Completed"), None)


def _finished(execution: run_v2.Execution) -> bool:
    from google.cloud import run_v2

    completed = _completed(execution)
    terminal = (run_v2.Condition.State.CONDITION_SUCCEEDED, run_v2.Condition.State.CONDITION_FAILED)
    return execution.completion_time is not None or (completed is not None and completed.state in terminal)


def _cancelling(execution: run_v2.Execution) -> bool:
    from google.cloud import run_v2

    completed = _completed(execution)
    return bool(execution.cancelled_count) or (
        completed is not None
        and completed.execution_reason
        in (run_v2.Condition.ExecutionReason.CANCELLING, run_v2.Condition.ExecutionReason.CANCELLED)
    )


def _time(value: datetime | None) -> datetime | None:
    """A plain aware datetime (the client's carries nanoseconds in a subclass)."""
    if value is None:
        return None
    return datetime(
        value.year,
        value.month,
        value.day,
        value.hour,
        value.minute,
        value.second,
        value.microsecond,
        tzinfo=value.tzinfo or UTC,
    )


def _launch_error(exc: Exception, doing: str) -> LaunchError:
    """Transient for what a later try may not meet (5xx, 429, 409 aborted, timeouts, the network);
    permanent for the API refusing the request (400, 403, 404...), with its message."""
    import requests
    from google.api_core import exceptions as gexc
    from google.auth import exceptions as auth_exc

    if isinstance(exc, gexc.GoogleAPICallError):
        text = _REST_PREFIX.sub("", exc.message or str(exc))
        code = f"{exc.code} " if exc.code else ""
        # ServerError: every 5xx (ServiceUnavailable, InternalServerError, DeadlineExceeded over gRPC...).
        transient = isinstance(exc, (gexc.ServerError, gexc.TooManyRequests, gexc.Aborted, gexc.DeadlineExceeded))
        return LaunchError(f"{doing}: {code}{text}", transient=transient)
    transient_types = (
        gexc.RetryError,
        requests.exceptions.ConnectionError,
        requests.exceptions.Timeout,
        auth_exc.TransportError,
        auth_exc.RefreshError,
        ConnectionError,
        TimeoutError,
    )
    if isinstance(exc, transient_types):
        return LaunchError(f"{doing}: {type(exc).__name__}: {exc}", transient=True)
    return LaunchError(f"{doing}: {type(exc).__name__}: {exc}", transient=False)
