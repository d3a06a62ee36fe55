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

The job sent is :func:`~shared.launchers.cloudrun_job.job_message` (resources, GPUs, the command: see
that module); what an execution's state means is :mod:`shared.launchers.cloudrun_status`.

The client library is imported inside functions only, to keep it out of other functions' cold start.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from shared.domain.run_phase import Backend, Phase, RunStatus
from shared.launchers import base
from shared.launchers.base import Handle, LaunchError, LaunchSpec, NotOurs
from shared.launchers.cloudrun_job import execution_id, job_message, job_path
from shared.launchers.cloudrun_status import cancelling, execution_status, finished, job_status, launch_error

if TYPE_CHECKING:
    from google.auth.credentials import Credentials
    from google.cloud import run_v2

#: Seconds one API call may take: the caller retries (Pub/Sub redelivers), so never block for long.
CALL_TIMEOUT_S = 30.0


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
        # lazy: the Cloud Run client loads only when a job runs on Cloud Run
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
                raise launch_error(exc, f"creating Cloud Run job {spec.name}") from exc
            # 409: a job of that name exists (over REST AlreadyExists arrives as a plain Conflict).
        except Exception as exc:
            raise launch_error(exc, f"creating Cloud Run job {spec.name}") from exc
        try:
            current = self._jobs().get_job(name=name, timeout=CALL_TIMEOUT_S)
        except gexc.NotFound as exc:
            # Created (or said to exist) a moment ago: not readable yet; the retry will find it.
            raise LaunchError(f"Cloud Run job {spec.name} is not readable yet", transient=True) from exc
        except Exception as exc:
            raise launch_error(exc, f"reading Cloud Run job {spec.name}") from exc
        owner = current.labels.get(base.JOB_LABEL, "")
        if owner != spec.job_id:
            raise NotOurs(
                f"Cloud Run job {spec.name} exists and belongs to job {owner or '(no fleet job)'}, not {spec.job_id}"
            )
        execution = self._execution_ref(current) or f"{name}/executions/{execution_id(spec)}"
        return Handle(Backend.CLOUDRUN.value, name, {"region": self.region, "job": spec.name, "execution": execution})

    def status(self, handle: Handle) -> RunStatus:
        """The execution's phase from its task counts and its ``Completed`` condition."""
        # lazy: the Cloud Run client loads only when a job runs on Cloud Run
        from google.api_core import exceptions as gexc

        try:
            job = self._jobs().get_job(name=handle.name, timeout=CALL_TIMEOUT_S)
        except gexc.NotFound:
            return RunStatus(Phase.MISSING, message=f"Cloud Run job {handle.name} not found")
        except Exception as exc:
            raise launch_error(exc, f"reading Cloud Run job {handle.name}") from exc
        known = self._execution_ref(job)
        name = known or handle.details.get("execution", "")
        execution = self._get_execution(name) if name else None
        if execution is None:
            if known:
                return RunStatus(Phase.MISSING, message=f"Cloud Run execution {known} not found")
            return job_status(job)
        return execution_status(execution, self._failed_attempts(execution))

    def cancel(self, handle: Handle) -> None:
        """Cancel the execution; one already finished, or a job already gone, is fine."""
        # lazy: the Cloud Run client loads only when a job runs on Cloud Run
        from google.api_core import exceptions as gexc

        try:
            job = self._jobs().get_job(name=handle.name, timeout=CALL_TIMEOUT_S)
        except gexc.NotFound:
            return
        except Exception as exc:
            raise launch_error(exc, f"reading Cloud Run job {handle.name}") from exc
        known = self._execution_ref(job)
        name = known or handle.details.get("execution", "")
        execution = self._get_execution(name) if name else None
        if execution is None:
            if known or job_status(job).phase is Phase.FAILED:
                return  # deleted, or never started: nothing runs
            # The job is still creating its execution: cancel again once it exists.
            raise LaunchError(f"Cloud Run job {handle.name} has not started its execution yet", transient=True)
        if finished(execution):
            return
        try:
            self._executions().cancel_execution(name=execution.name, timeout=CALL_TIMEOUT_S)
        except gexc.NotFound:
            return
        except (gexc.FailedPrecondition, gexc.BadRequest) as exc:
            # Finished (or being cancelled) between our read and the cancel.
            again = self._get_execution(execution.name)
            if again is None or finished(again) or cancelling(again):
                return
            raise launch_error(exc, f"cancelling Cloud Run execution {execution.name}") from exc
        except Exception as exc:
            raise launch_error(exc, f"cancelling Cloud Run execution {execution.name}") from exc

    def release(self, handle: Handle) -> None:
        """Delete the Cloud Run job of a run that ended: Cloud Run keeps jobs until deleted, and a
        region holds a limited number of them. Its logs stay in Cloud Logging. Gone already is fine."""
        # lazy: the Cloud Run client loads only when a job runs on Cloud Run
        from google.api_core import exceptions as gexc

        try:
            self._jobs().delete_job(name=handle.name, timeout=CALL_TIMEOUT_S)
        except gexc.NotFound:
            return
        except Exception as exc:
            raise launch_error(exc, f"deleting Cloud Run job {handle.name}") from exc

    # --- helpers -------------------------------------------------------------------------------

    def _client(self, kind: str) -> Any:
        """A cached client; REST against ``endpoint`` when one is given (a local fake: http:// is kept)."""
        client = self._clients.get(kind)
        if client is None:
            # lazy: the Cloud Run client loads only when a job runs on Cloud Run
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
        # lazy: the Cloud Run client loads only when a job runs on Cloud Run
        from google.api_core import exceptions as gexc

        try:
            return self._executions().get_execution(name=name, timeout=CALL_TIMEOUT_S)
        except gexc.NotFound:
            return None
        except Exception as exc:
            raise launch_error(exc, f"reading Cloud Run execution {name}") from exc

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
