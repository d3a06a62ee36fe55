"""A fake Cloud Run Admin API v2 (jobs, executions, tasks, operations) for tests (unit, integration, make bench).

    python -m tests.fakes.fake_cloudrun --port 8766

Point the real client at it: ``run_v2.JobsClient(transport="rest", credentials=AnonymousCredentials(),
client_options={"api_endpoint": "http://127.0.0.1:8766"})`` (the REST transport keeps an ``http://``
scheme it is given). JSON in, JSON out, camelCase field names as Google's REST mapping has them:

    POST   /v2/projects/{p}/locations/{r}/jobs?jobId=J        create (409 ALREADY_EXISTS if J exists)
    GET    /v2/projects/{p}/locations/{r}/jobs/{j}
    DELETE /v2/projects/{p}/locations/{r}/jobs/{j}             (and its executions)
    POST   /v2/projects/{p}/locations/{r}/jobs/{j}:run         a new execution ``{j}-{5 random}``
    GET    /v2/projects/{p}/locations/{r}/jobs/{j}/executions[/{e}]
    POST   /v2/projects/{p}/locations/{r}/jobs/{j}/executions/{e}:cancel
    GET    /v2/projects/{p}/locations/{r}/jobs/{j}/executions/{e}/tasks
    GET    /v2/projects/{p}/locations/{r}/operations/{op}

Mutations answer with a long-running Operation that is already done (``response`` carries the Job or
Execution with its ``@type``). A job created with ``startExecutionToken`` T starts one execution named
``{job}-{T}`` (the token is the execution id's suffix, where ``:run`` uses 5 random characters) and
``latestCreatedExecution`` names it in full. Errors are Google's JSON errors
(``{"error": {"code": 409, "message": ..., "status": "ALREADY_EXISTS"}}``). The create is checked a
little as Cloud Run does (job id, token length, one container with an image, GPU limit and
accelerator together, lowercase labels): a malformed spec is a 400, so tests prove ours is not.

Executions stay pending until a test moves them: :meth:`FakeCloudRun.start`, ``succeed``, ``fail``,
``retry`` (an attempt failed and the task runs again), and :meth:`FakeCloudRun.fail_next` injects
errors (503, 500, 403, ...). Every request is recorded (method, path, query, parsed body, status).
Over HTTP, for the local stack: ``GET/DELETE /_calls``, ``POST /_fail {"status": 503, "count": 1}``,
``POST /_executions {"execution": name, "action": "start|succeed|fail|retry", "message": ...}``.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import secrets
import string
import threading
import urllib.parse
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

_TYPE = "type.googleapis.com/google.cloud.run.v2."
_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ALREADY_EXISTS",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
#: google.cloud.run.v2.Condition enums, by name and number (the client asks ``enum-encoding=int``).
_CONDITION_STATE = {"CONDITION_PENDING": 1, "CONDITION_RECONCILING": 2, "CONDITION_FAILED": 3, "CONDITION_SUCCEEDED": 4}
_EXECUTION_REASON = {"NON_ZERO_EXIT_CODE": 2, "CANCELLED": 3, "CANCELLING": 4}
_COMPLETION_STATUS = {
    "EXECUTION_SUCCEEDED": 1,
    "EXECUTION_FAILED": 2,
    "EXECUTION_RUNNING": 3,
    "EXECUTION_PENDING": 4,
    "EXECUTION_CANCELLED": 5,
}
_ENUMS = {**_CONDITION_STATE, **_EXECUTION_REASON, **_COMPLETION_STATUS}
_JOB_ID = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
_LABEL_KEY = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
_LABEL_VALUE = re.compile(r"^[a-z0-9_-]{0,63}$")
_LOCATION = r"projects/(?P<project>[^/]+)/locations/(?P<region>[^/]+)"
_ROUTES: list[tuple[str, re.Pattern[str], str]] = [
    ("POST", re.compile(rf"^/v2/{_LOCATION}/jobs$"), "create_job"),
    ("GET", re.compile(rf"^/v2/{_LOCATION}/jobs/(?P<job>[^/:]+)$"), "get_job"),
    ("DELETE", re.compile(rf"^/v2/{_LOCATION}/jobs/(?P<job>[^/:]+)$"), "delete_job"),
    ("POST", re.compile(rf"^/v2/{_LOCATION}/jobs/(?P<job>[^/:]+):run$"), "run_job"),
    ("GET", re.compile(rf"^/v2/{_LOCATION}/jobs/(?P<job>[^/:]+)/executions$"), "list_executions"),
    ("GET", re.compile(rf"^/v2/{_LOCATION}/jobs/(?P<job>[^/:]+)/executions/(?P<execution>[^/:]+)$"), "get_execution"),
    (
        "POST",
        re.compile(rf"^/v2/{_LOCATION}/jobs/(?P<job>[^/:]+)/executions/(?P<execution>[^/:]+):cancel$"),
        "cancel_execution",
    ),
    (
        "GET",
        re.compile(rf"^/v2/{_LOCATION}/jobs/(?P<job>[^/:]+)/executions/(?P<execution>[^/:]+)/tasks$"),
        "list_tasks",
    ),
    ("GET", re.compile(rf"^/v2/{_LOCATION}/operations/(?P<operation>[^/:]+)$"), "get_operation"),
]


class ApiError(Exception):
    """An answer in Google's JSON error format."""

    def __init__(self, code: int, message: str, status: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status or _STATUS.get(code, "UNKNOWN")

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, "status": self.status}}


@dataclass(frozen=True)
class Call:
    """One request as the fake saw it; ``query`` keeps each parameter's last value."""

    method: str
    path: str
    query: dict[str, str]
    body: Any
    status: int


@dataclass
class _Failure:
    status: int
    count: int
    message: str
    match: str | None


@dataclass
class _Execution:
    name: str
    job: str
    uid: str
    created: datetime
    template: dict[str, Any]
    labels: dict[str, str]
    task_count: int
    parallelism: int
    #: pending | running | succeeded | failed | cancelled
    state: str = "pending"
    started: datetime | None = None
    completed: datetime | None = None
    message: str = ""
    retried: int = 0
    generation: int = 1
    conditions_override: list[dict[str, Any]] | None = field(default=None)


class FakeCloudRun:
    """The fake's state and its test controls; :func:`start_server` serves it over HTTP."""

    def __init__(self, clock: Callable[[], datetime] | None = None) -> None:
        self._clock = clock or (lambda: datetime.now(UTC))
        self._lock = threading.RLock()
        self._jobs: dict[str, dict[str, Any]] = {}
        self._executions: dict[str, _Execution] = {}
        self._operations: dict[str, dict[str, Any]] = {}
        self._calls: list[Call] = []
        self._failures: list[_Failure] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.url = ""

    # --- test controls -------------------------------------------------------------------------

    def calls(self, method: str | None = None, path_contains: str | None = None) -> list[Call]:
        """Recorded requests, oldest first, optionally filtered."""
        with self._lock:
            return [
                c
                for c in self._calls
                if (method is None or c.method == method) and (path_contains is None or path_contains in c.path)
            ]

    def clear_calls(self) -> None:
        with self._lock:
            self._calls.clear()

    def fail_next(self, status: int, count: int = 1, *, message: str | None = None, match: str | None = None) -> None:
        """The next ``count`` API requests (whose path contains ``match``, if given) answer ``status``."""
        with self._lock:
            self._failures.append(_Failure(status, count, message or f"injected {status}", match))

    def jobs(self) -> dict[str, dict[str, Any]]:
        """Every job by full name, as GET would answer."""
        with self._lock:
            return {name: self._render_job(name) for name in self._jobs}

    def job(self, name: str) -> dict[str, Any] | None:
        """A job by full or short name, as GET would answer; None if there is none."""
        with self._lock:
            full = self._find(self._jobs, name)
            return None if full is None else self._render_job(full)

    def executions(self, job: str | None = None) -> dict[str, dict[str, Any]]:
        """Executions by full name (of one job, by full or short name), as GET would answer."""
        with self._lock:
            return {
                name: self._render_execution(ex)
                for name, ex in self._executions.items()
                if job is None or ex.job == job or ex.job.rsplit("/", 1)[-1] == job
            }

    def start(self, execution: str) -> None:
        """The execution's task is running."""
        with self._lock:
            ex = self._execution(execution)
            ex.state, ex.started, ex.conditions_override = "running", ex.started or self._clock(), None

    def succeed(self, execution: str) -> None:
        with self._lock:
            ex = self._execution(execution)
            now = self._clock()
            ex.state, ex.started, ex.completed = "succeeded", ex.started or now, now
            ex.message, ex.conditions_override = "Execution completed successfully.", None

    def fail(self, execution: str, message: str = "Task failed: the container exited with status 1.") -> None:
        """The task failed and has no retries left."""
        with self._lock:
            ex = self._execution(execution)
            now = self._clock()
            ex.state, ex.started, ex.completed, ex.message = "failed", ex.started or now, now, message
            ex.conditions_override = None

    def retry(self, execution: str) -> None:
        """An attempt of the task failed and Cloud Run runs it again (counts in ``retriedCount``)."""
        with self._lock:
            ex = self._execution(execution)
            ex.retried += 1
            ex.started = ex.started or self._clock()
            ex.state = "running"

    def set_conditions(self, execution: str, conditions: list[dict[str, Any]]) -> None:
        """Answer these raw conditions for the execution (for shapes the controls don't make)."""
        with self._lock:
            self._execution(execution).conditions_override = conditions

    def delete_job(self, name: str) -> None:
        """The job (and its executions) deleted out of band."""
        with self._lock:
            full = self._find(self._jobs, name)
            if full is not None:
                self._delete(full)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> FakeCloudRun:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # --- HTTP ----------------------------------------------------------------------------------

    def handle(self, method: str, raw_path: str, body: bytes) -> tuple[int, dict[str, Any]]:
        """One request: (status, JSON answer). Control paths (``/_...``) are not recorded."""
        split = urllib.parse.urlsplit(raw_path)
        path = urllib.parse.unquote(split.path)
        query = {k: v[-1] for k, v in urllib.parse.parse_qs(split.query, keep_blank_values=True).items()}
        try:
            parsed = json.loads(body) if body.strip() else None
        except ValueError:
            return 400, ApiError(400, "Invalid JSON payload received.").body()
        if path.startswith("/_"):
            return self._control(method, path, query, parsed)
        ints = "enum-encoding=int" in query.get("$alt", "")
        with self._lock:
            try:
                status, answer = self._api(method, path, query, parsed, ints)
            except ApiError as exc:
                status, answer = exc.code, exc.body()
            self._calls.append(Call(method, path, query, parsed, status))
        return status, answer

    def _api(self, method: str, path: str, query: dict[str, str], body: Any, ints: bool) -> tuple[int, dict[str, Any]]:
        for failure in self._failures:
            if failure.count > 0 and (failure.match is None or failure.match in path):
                failure.count -= 1
                self._failures = [f for f in self._failures if f.count > 0]
                raise ApiError(failure.status, failure.message)
        for verb, pattern, action in _ROUTES:
            match = pattern.match(path)
            if match and verb == method:
                params = match.groupdict()
                answer: dict[str, Any] = getattr(self, "_" + action)(params, query, body)
                return 200, _encode_enums(answer, ints)
        raise ApiError(404, f"Method not found: {method} {path}")

    # --- API methods ---------------------------------------------------------------------------

    def _create_job(self, p: dict[str, str], query: dict[str, str], body: Any) -> dict[str, Any]:
        parent = f"projects/{p['project']}/locations/{p['region']}"
        job_id = query.get("jobId", "")
        if not _JOB_ID.match(job_id):
            raise ApiError(400, f"Invalid jobId '{job_id}': must be a DNS label of at most 63 characters.")
        if not isinstance(body, dict):
            raise ApiError(400, "Job is required.")
        _validate_job(job_id, body)
        full = f"{parent}/jobs/{job_id}"
        if full in self._jobs:
            raise ApiError(409, f"Resource '{job_id}' already exists.")
        now = _stamp(self._clock())
        job = copy.deepcopy(body)
        job.update(
            name=full,
            uid=str(uuid.uuid4()),
            generation="1",
            observedGeneration="1",
            createTime=now,
            updateTime=now,
            creator="fleet@fake.iam.gserviceaccount.com",
            lastModifier="fleet@fake.iam.gserviceaccount.com",
            launchStage=job.get("launchStage") or "GA",
            executionCount=0,
            reconciling=False,
            etag=f'"{secrets.token_hex(8)}"',
        )
        self._jobs[full] = job
        token = body.get("startExecutionToken") or body.get("runExecutionToken")
        if token:
            self._new_execution(full, f"{job_id}-{token}")
        return self._operation(parent, self._render_job(full), "Job")

    def _get_job(self, p: dict[str, str], query: dict[str, str], body: Any) -> dict[str, Any]:
        return self._render_job(self._job_or_404(p))

    def _delete_job(self, p: dict[str, str], query: dict[str, str], body: Any) -> dict[str, Any]:
        full = self._job_or_404(p)
        answer = self._render_job(full)
        self._delete(full)
        return self._operation(full.split("/jobs/")[0], answer, "Job")

    def _run_job(self, p: dict[str, str], query: dict[str, str], body: Any) -> dict[str, Any]:
        full = self._job_or_404(p)
        alphabet = string.ascii_lowercase + string.digits
        suffix = "".join(secrets.choice(alphabet) for _ in range(5))
        ex = self._new_execution(full, f"{p['job']}-{suffix}")
        return self._operation(full.split("/jobs/")[0], self._render_execution(ex), "Execution")

    def _list_executions(self, p: dict[str, str], query: dict[str, str], body: Any) -> dict[str, Any]:
        full = self._job_or_404(p)
        found = [self._render_execution(ex) for ex in self._executions.values() if ex.job == full]
        return {"executions": sorted(found, key=lambda e: e["createTime"], reverse=True)}

    def _get_execution(self, p: dict[str, str], query: dict[str, str], body: Any) -> dict[str, Any]:
        return self._render_execution(self._execution_or_404(p))

    def _cancel_execution(self, p: dict[str, str], query: dict[str, str], body: Any) -> dict[str, Any]:
        ex = self._execution_or_404(p)
        if ex.state in ("succeeded", "failed", "cancelled"):
            raise ApiError(400, f"Execution {p['execution']} has already completed.", "FAILED_PRECONDITION")
        ex.state, ex.completed, ex.message = "cancelled", self._clock(), "The execution was cancelled."
        ex.conditions_override = None
        return self._operation(ex.job.split("/jobs/")[0], self._render_execution(ex), "Execution")

    def _list_tasks(self, p: dict[str, str], query: dict[str, str], body: Any) -> dict[str, Any]:
        ex = self._execution_or_404(p)
        short = ex.name.rsplit("/", 1)[-1]
        return {
            "tasks": [
                {
                    "name": f"{ex.name}/tasks/{short}-task{i}",
                    "job": ex.job.rsplit("/", 1)[-1],
                    "execution": short,
                    "index": i,
                    "retried": ex.retried if i == 0 else 0,
                    "maxRetries": ex.template.get("maxRetries", 3),
                }
                for i in range(ex.task_count)
            ]
        }

    def _get_operation(self, p: dict[str, str], query: dict[str, str], body: Any) -> dict[str, Any]:
        name = f"projects/{p['project']}/locations/{p['region']}/operations/{p['operation']}"
        if name not in self._operations:
            raise ApiError(404, f"Operation {name} not found.")
        return self._operations[name]

    # --- helpers -------------------------------------------------------------------------------

    def _control(self, method: str, path: str, query: dict[str, str], body: Any) -> tuple[int, dict[str, Any]]:
        try:
            if path == "/_calls" and method == "GET":
                return 200, {"calls": [c.__dict__ for c in self.calls()]}
            if path == "/_calls" and method == "DELETE":
                self.clear_calls()
                return 200, {}
            if path == "/_fail" and method == "POST" and isinstance(body, dict):
                self.fail_next(int(body["status"]), int(body.get("count", 1)), match=body.get("match"))
                return 200, {}
            if path == "/_executions" and method == "POST" and isinstance(body, dict):
                action, name = body["action"], body["execution"]
                if action == "fail":
                    self.fail(name, body.get("message") or "Task failed.")
                elif action in ("start", "succeed", "retry"):
                    getattr(self, action)(name)
                else:
                    return 400, ApiError(400, f"unknown action {action}").body()
                return 200, {}
        except (KeyError, ValueError) as exc:
            return 400, ApiError(400, f"bad control request: {exc}").body()
        return 404, ApiError(404, f"no control {method} {path}").body()

    def _operation(self, parent: str, resource: dict[str, Any], kind: str) -> dict[str, Any]:
        name = f"{parent}/operations/{uuid.uuid4()}"
        typed = {"@type": _TYPE + kind, **resource}
        op = {"name": name, "metadata": typed, "done": True, "response": typed}
        self._operations[name] = op
        return op

    def _new_execution(self, job_full: str, execution_id: str) -> _Execution:
        job = self._jobs[job_full]
        template = job.get("template", {})
        name = f"{job_full}/executions/{execution_id}"
        if name in self._executions:
            raise ApiError(409, f"Resource '{execution_id}' already exists.")
        ex = _Execution(
            name=name,
            job=job_full,
            uid=str(uuid.uuid4()),
            created=self._clock(),
            template=copy.deepcopy(template.get("template", {})),
            labels={**job.get("labels", {}), **template.get("labels", {})},
            task_count=int(template.get("taskCount") or 1),
            parallelism=int(template.get("parallelism") or 0),
        )
        self._executions[name] = ex
        job["executionCount"] = int(job.get("executionCount", 0)) + 1
        job["latestCreatedExecution"] = name
        return ex

    def _render_job(self, full: str) -> dict[str, Any]:
        job = copy.deepcopy(self._jobs[full])
        latest = job.pop("latestCreatedExecution", None)
        job["terminalCondition"] = {
            "type": "Ready",
            "state": "CONDITION_SUCCEEDED",
            "lastTransitionTime": job["updateTime"],
        }
        if latest is not None and latest in self._executions:
            ex = self._executions[latest]
            ref: dict[str, Any] = {
                "name": ex.name,
                "createTime": _stamp(ex.created),
                "completionStatus": {
                    "pending": "EXECUTION_PENDING",
                    "running": "EXECUTION_RUNNING",
                    "succeeded": "EXECUTION_SUCCEEDED",
                    "failed": "EXECUTION_FAILED",
                    "cancelled": "EXECUTION_CANCELLED",
                }[ex.state],
            }
            if ex.completed is not None:
                ref["completionTime"] = _stamp(ex.completed)
            job["latestCreatedExecution"] = ref
        return job

    def _render_execution(self, ex: _Execution) -> dict[str, Any]:
        answer: dict[str, Any] = {
            "name": ex.name,
            "uid": ex.uid,
            "job": ex.job.rsplit("/", 1)[-1],
            "generation": str(ex.generation),
            "observedGeneration": str(ex.generation),
            "labels": dict(ex.labels),
            "createTime": _stamp(ex.created),
            "updateTime": _stamp(ex.completed or ex.started or ex.created),
            "launchStage": "GA",
            "parallelism": ex.parallelism,
            "taskCount": ex.task_count,
            "template": copy.deepcopy(ex.template),
            "reconciling": ex.state in ("pending", "running"),
            "runningCount": ex.task_count if ex.state == "running" else 0,
            "succeededCount": ex.task_count if ex.state == "succeeded" else 0,
            "failedCount": 1 if ex.state == "failed" else 0,
            "cancelledCount": ex.task_count if ex.state == "cancelled" else 0,
            "retriedCount": 1 if ex.retried else 0,
            "logUri": f"https://console.cloud.google.com/logs/viewer?execution={ex.name.rsplit('/', 1)[-1]}",
            "etag": f'"{ex.uid[:8]}"',
            "conditions": ex.conditions_override or _conditions(ex),
        }
        if ex.started is not None:
            answer["startTime"] = _stamp(ex.started)
        if ex.completed is not None:
            answer["completionTime"] = _stamp(ex.completed)
        return answer

    def _execution(self, name: str) -> _Execution:
        full = self._find(self._executions, name)
        if full is None:
            raise KeyError(f"no execution {name}")
        return self._executions[full]

    def _job_or_404(self, p: dict[str, str]) -> str:
        full = f"projects/{p['project']}/locations/{p['region']}/jobs/{p['job']}"
        if full not in self._jobs:
            raise ApiError(404, f"Resource '{p['job']}' of kind 'JOB' in region '{p['region']}' does not exist.")
        return full

    def _execution_or_404(self, p: dict[str, str]) -> _Execution:
        full = f"projects/{p['project']}/locations/{p['region']}/jobs/{p['job']}/executions/{p['execution']}"
        if full not in self._executions:
            raise ApiError(404, f"Resource '{p['execution']}' of kind 'EXECUTION' does not exist.")
        return self._executions[full]

    def _delete(self, full: str) -> None:
        del self._jobs[full]
        for name in [n for n, ex in self._executions.items() if ex.job == full]:
            del self._executions[name]

    @staticmethod
    def _find(table: dict[str, Any], name: str) -> str | None:
        if name in table:
            return name
        found = [full for full in table if full.rsplit("/", 1)[-1] == name]
        return found[0] if len(found) == 1 else None


def _conditions(ex: _Execution) -> list[dict[str, Any]]:
    """Execution conditions as Cloud Run reports them: ResourcesAvailable, Started, Completed."""
    at = _stamp(ex.completed or ex.started or ex.created)
    if ex.state == "pending":
        return [
            {"type": "ResourcesAvailable", "state": "CONDITION_RECONCILING", "lastTransitionTime": at},
            {"type": "Started", "state": "CONDITION_PENDING", "lastTransitionTime": at},
            {"type": "Completed", "state": "CONDITION_PENDING", "lastTransitionTime": at},
        ]
    started = [
        {"type": "ResourcesAvailable", "state": "CONDITION_SUCCEEDED", "lastTransitionTime": at},
        {"type": "Started", "state": "CONDITION_SUCCEEDED", "lastTransitionTime": at},
    ]
    completed: dict[str, Any] = {"type": "Completed", "lastTransitionTime": at}
    if ex.state == "running":
        completed.update(state="CONDITION_RECONCILING", message=f"{ex.task_count} task(s) running.")
    elif ex.state == "succeeded":
        completed.update(state="CONDITION_SUCCEEDED", message=ex.message)
    elif ex.state == "failed":
        completed.update(state="CONDITION_FAILED", message=ex.message, executionReason="NON_ZERO_EXIT_CODE")
    else:
        completed.update(state="CONDITION_FAILED", message=ex.message, executionReason="CANCELLED")
    return [*started, completed]


def _validate_job(job_id: str, job: dict[str, Any]) -> None:
    """The checks Cloud Run makes that a launcher's spec could get wrong (each a 400)."""
    token = job.get("startExecutionToken") or job.get("runExecutionToken") or ""
    if token and len(job_id) + len(token) >= 63:
        raise ApiError(400, "The sum of job name and execution token length must be fewer than 63 characters.")
    for key, value in (job.get("labels") or {}).items():
        if not _LABEL_KEY.match(key) or not _LABEL_VALUE.match(str(value)):
            raise ApiError(400, f"Invalid label {key}={value}: lowercase letters, digits, '_' and '-' only.")
    task = (job.get("template") or {}).get("template") or {}
    containers = task.get("containers") or []
    if not containers or not all(c.get("image") for c in containers):
        raise ApiError(400, "template.template.containers: a container with an image is required.")
    limits = (containers[0].get("resources") or {}).get("limits") or {}
    for key, pattern in (("cpu", r"^\d+(\.\d+)?m?$"), ("memory", r"^\d+(Mi|Gi)$")):
        if key in limits and not re.match(pattern, str(limits[key])):
            raise ApiError(400, f"Invalid {key} limit '{limits[key]}'.")
    has_gpu = "nvidia.com/gpu" in limits
    accelerator = (task.get("nodeSelector") or {}).get("accelerator")
    if has_gpu != bool(accelerator):
        raise ApiError(400, "A GPU limit and nodeSelector.accelerator must be set together.")
    if len(containers) > 1 and has_gpu:
        raise ApiError(400, "Only one container may request a GPU.")


def _encode_enums(value: Any, ints: bool) -> Any:
    """Enum names to numbers when the client asked ``enum-encoding=int`` (as Google's REST does)."""
    if not ints:
        return value
    if isinstance(value, dict):
        return {
            k: (
                _ENUMS[v]
                if k in ("state", "executionReason", "completionStatus") and isinstance(v, str) and v in _ENUMS
                else _encode_enums(v, ints)
            )
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_encode_enums(v, ints) for v in value]
    return value


def _stamp(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class _Handler(BaseHTTPRequestHandler):
    fake: FakeCloudRun

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        status, answer = self.fake.handle(self.command, self.path, body)
        data = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=UTF-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_DELETE = do_PATCH = _serve

    def log_message(self, format: str, *args: Any) -> None:  # quiet: tests record calls instead
        pass


def start_server(
    port: int = 0, *, host: str = "127.0.0.1", clock: Callable[[], datetime] | None = None
) -> FakeCloudRun:
    """Serve a new fake on a background thread; ``.url`` is its endpoint, ``.stop()`` ends it."""
    fake = FakeCloudRun(clock)
    handler = type("Handler", (_Handler,), {"fake": fake})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    fake._server = server
    # A short poll: ``stop()`` waits for it (the default 0.5 s would dominate a test's run time).
    fake._thread = threading.Thread(target=server.serve_forever, args=(0.02,), name="fake-cloudrun", daemon=True)
    fake._thread.start()
    fake.url = f"http://{host}:{server.server_address[1]}"
    return fake


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8766)
    args = parser.parse_args(argv)
    fake = start_server(args.port, host=args.host)
    print(f"fake Cloud Run API at {fake.url}", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        fake.stop()


if __name__ == "__main__":
    main()
