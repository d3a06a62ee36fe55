"""What the Cloud Run API's answers mean: an execution (or a job without one) as a run's
:class:`RunStatus`, and a client error as a :class:`LaunchError`, transient or not.

Status: the execution's task counts and its ``Completed`` condition; ``failed_attempts`` is the task's
``retried`` (the execution's ``retried_count`` only counts tasks that retried at all, so the tasks are
listed when it is non-zero). Cloud Run has no spot capacity: no preemptions are ever reported.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from shared.domain.run_phase import Phase, RunStatus
from shared.launchers.base import LaunchError

if TYPE_CHECKING:
    from google.cloud import run_v2

_REST_PREFIX = re.compile(r"^(GET|POST|PUT|PATCH|DELETE) \S+: ")


def job_status(job: run_v2.Job) -> RunStatus:
    """A job with no execution: failed if Cloud Run could not start one, else still pending."""
    # lazy: the Cloud Run client loads only when a job runs on Cloud Run
    from google.cloud import run_v2

    condition = job.terminal_condition
    if condition.state == run_v2.Condition.State.CONDITION_FAILED:
        return RunStatus(Phase.FAILED, message=condition.message or "Cloud Run could not start the execution")
    return RunStatus(Phase.PENDING)


def execution_status(execution: run_v2.Execution, failed_attempts: int) -> RunStatus:
    # lazy: the Cloud Run client loads only when a job runs on Cloud Run
    from google.cloud import run_v2

    completed = _completed(execution)
    started_at, finished_at = _time(execution.start_time), _time(execution.completion_time)
    reason = completed.execution_reason if completed is not None else None
    message = completed.message if completed is not None else ""

    def status(phase: Phase, text: str = "") -> RunStatus:
        return RunStatus(phase, started_at, finished_at, text, (), failed_attempts)

    if finished(execution):
        if execution.succeeded_count >= max(execution.task_count, 1):
            return status(Phase.SUCCEEDED)
        if execution.cancelled_count or reason == run_v2.Condition.ExecutionReason.CANCELLED:
            return status(Phase.CANCELLED, message or "cancelled")
        if completed is not None and completed.state == run_v2.Condition.State.CONDITION_SUCCEEDED:
            return status(Phase.SUCCEEDED)
        prefix = f"{reason.name}: " if reason else ""
        return status(Phase.FAILED, prefix + (message or f"{execution.failed_count} task(s) failed"))
    note = "being cancelled" if cancelling(execution) else ""
    return status(Phase.RUNNING if execution.running_count else Phase.PENDING, note)


def _completed(execution: run_v2.Execution) -> run_v2.Condition | None:
    return next((c for c in execution.conditions if c.type_ == "Completed"), None)


def finished(execution: run_v2.Execution) -> bool:
    # lazy: the Cloud Run client loads only when a job runs on Cloud Run
    from google.cloud import run_v2

    completed = _completed(execution)
    terminal = (run_v2.Condition.State.CONDITION_SUCCEEDED, run_v2.Condition.State.CONDITION_FAILED)
    return execution.completion_time is not None or (completed is not None and completed.state in terminal)


def cancelling(execution: run_v2.Execution) -> bool:
    # lazy: the Cloud Run client loads only when a job runs on Cloud Run
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


def launch_error(exc: Exception, doing: str) -> LaunchError:
    """Transient for what a later try may not meet (5xx, 429, 409 aborted, timeouts, the network);
    permanent for the API refusing the request (400, 403, 404...), with its message."""
    # lazy: loaded with the Cloud Run client, on its errors only
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
