"""The Cloud Run launcher through the real google-cloud-run client (REST) against tests/fakes/fake_cloudrun."""

from __future__ import annotations

import socket
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from google.auth.credentials import AnonymousCredentials

from shared.domain.run_phase import Phase
from shared.launchers import base
from shared.launchers.base import Handle, LaunchError, LaunchSpec, NotOurs
from shared.launchers.cloudrun import CloudRunLauncher
from shared.launchers.cloudrun_job import check, execution_id, job_message, resource_limits
from tests.fakes.fake_cloudrun import FakeCloudRun, start_server

PROJECT = "proj"
REGION = "us-central1"
SA = "trainer@proj.iam.gserviceaccount.com"
ROOT = Path(__file__).resolve().parents[2]
T0 = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: int) -> None:
        self.now += timedelta(seconds=seconds)


def make_spec(job_id: str = "j-0123456789abcdef0123", **overrides: object) -> LaunchSpec:
    fields: dict[str, object] = {
        "job_id": job_id,
        "tenant": "acme",
        "agent_id": "agent-7",
        "image": "us-docker.pkg.dev/proj/train/trainer:1.2",
        "command": ("python", "-m", "train", "--epochs", "3"),
        "env": {"FLEET_JOB_ID": job_id, "WANDB_MODE": "offline"},
        "cpu": 2.0,
        "memory_gb": 8.0,
        "max_runtime_s": 7200,
        "max_retries": 2,
        "labels": {"team": "research"},
    }
    fields.update(overrides)
    return LaunchSpec(**fields)  # type: ignore[arg-type]


def l4_spec(**overrides: Any) -> LaunchSpec:
    fields: dict[str, Any] = {"gpu": 1, "gpu_type": "nvidia-l4", "cpu": 4.0, "memory_gb": 16.0, **overrides}
    return make_spec(**fields)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def fake(clock: Clock):
    server = start_server(clock=clock)
    yield server
    server.stop()


def new_launcher(fake: FakeCloudRun) -> CloudRunLauncher:
    return CloudRunLauncher(PROJECT, REGION, endpoint=fake.url, credentials=AnonymousCredentials(), service_account=SA)


@pytest.fixture
def launcher(fake: FakeCloudRun) -> CloudRunLauncher:
    return new_launcher(fake)


def created_body(fake: FakeCloudRun) -> dict:
    creates = fake.calls("POST", f"/v2/projects/{PROJECT}/locations/{REGION}/jobs")
    creates = [c for c in creates if c.path.endswith("/jobs")]
    assert len(creates) >= 1
    return creates[0].body


# --- the job sent -------------------------------------------------------------------------------


def test_cpu_job_spec_sent_exactly(fake: FakeCloudRun, launcher: CloudRunLauncher) -> None:
    spec = make_spec()
    launcher.launch(spec)

    create = fake.calls("POST")[0]
    assert create.path == f"/v2/projects/{PROJECT}/locations/{REGION}/jobs"
    assert create.query["jobId"] == spec.name == "fleet-j-0123456789abcdef0123"
    labels = {
        "team": "research",
        "fleet-job-id": spec.job_id,
        "fleet-tenant": "acme",
        "fleet-agent-id": "agent-7",
    }
    assert create.body == {
        "labels": labels,
        "startExecutionToken": base.execution_token(spec.job_id),
        "template": {
            "labels": labels,
            "taskCount": 1,
            "parallelism": 1,
            "template": {
                "containers": [
                    {
                        "name": "train",
                        "image": "us-docker.pkg.dev/proj/train/trainer:1.2",
                        "command": ["python"],
                        "args": ["-m", "train", "--epochs", "3"],
                        "env": [
                            {"name": "FLEET_JOB_ID", "value": spec.job_id},
                            {"name": "WANDB_MODE", "value": "offline"},
                        ],
                        "resources": {"limits": {"cpu": "2", "memory": "8Gi"}},
                    }
                ],
                "maxRetries": 2,
                "timeout": "7200s",
                "serviceAccount": SA,
            },
        },
    }


def test_l4_job_spec_sent(fake: FakeCloudRun, launcher: CloudRunLauncher) -> None:
    launcher.launch(l4_spec(memory_gb=24.0, cpu=6.0))
    body = created_body(fake)
    task = body["template"]["template"]
    assert task["containers"][0]["resources"]["limits"] == {"cpu": "6", "memory": "24Gi", "nvidia.com/gpu": "1"}
    assert task["nodeSelector"] == {"accelerator": "nvidia-l4"}
    assert task["gpuZonalRedundancyDisabled"] is True
    assert body["launchStage"] == 3  # BETA (the client sends enums as numbers)


def test_cpu_job_has_no_gpu_fields(fake: FakeCloudRun, launcher: CloudRunLauncher) -> None:
    launcher.launch(make_spec())
    body = created_body(fake)
    task = body["template"]["template"]
    assert "nodeSelector" not in task and "gpuZonalRedundancyDisabled" not in task
    assert "nvidia.com/gpu" not in task["containers"][0]["resources"]["limits"]
    assert "launchStage" not in body and "name" not in body


def test_zero_retries_and_no_command_are_sent_as_such(fake: FakeCloudRun, launcher: CloudRunLauncher) -> None:
    launcher.launch(make_spec(max_retries=0, command=(), env={}))
    task = created_body(fake)["template"]["template"]
    assert task["maxRetries"] == 0  # unset, Cloud Run would retry 3 times
    container = task["containers"][0]
    assert "command" not in container and "args" not in container and "env" not in container


def test_job_message_is_pure_and_complete() -> None:
    spec = l4_spec()
    job = job_message(spec, project=PROJECT, region=REGION, service_account=None)
    assert dict(job.labels) == spec.all_labels()
    assert job.start_execution_token == base.execution_token(spec.job_id)
    assert job.template.task_count == 1 and job.template.parallelism == 1
    task = job.template.template
    assert task.max_retries == 2 and task.timeout == timedelta(seconds=7200)
    assert task.service_account == ""
    assert task.node_selector.accelerator == "nvidia-l4" and task.gpu_zonal_redundancy_disabled
    (container,) = task.containers
    assert container.name == base.CONTAINER and dict(container.resources.limits)["nvidia.com/gpu"] == "1"


@pytest.mark.parametrize(
    ("cpu", "memory_gb", "limits"),
    [
        (2, 8, {"cpu": "2", "memory": "8Gi"}),
        (0.5, 0.25, {"cpu": "1", "memory": "512Mi"}),
        (3, 6, {"cpu": "4", "memory": "6Gi"}),
        (2, 1.5, {"cpu": "2", "memory": "1536Mi"}),
        (1, 8, {"cpu": "2", "memory": "8Gi"}),  # more than 4 GiB needs 2 vCPU
        (1, 8.5, {"cpu": "4", "memory": "8704Mi"}),  # more than 8 GiB needs 4
        (2, 20, {"cpu": "6", "memory": "20Gi"}),
        (8, 2, {"cpu": "8", "memory": "4Gi"}),  # 8 vCPU need 4 GiB
        (4, 1, {"cpu": "4", "memory": "2Gi"}),
    ],
)
def test_resources_round_up_to_what_cloud_run_accepts(cpu: float, memory_gb: float, limits: dict) -> None:
    assert resource_limits(make_spec(cpu=cpu, memory_gb=memory_gb)) == limits


# --- what Cloud Run can't run -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"gpu": 2, "gpu_type": "nvidia-l4", "cpu": 8.0, "memory_gb": 32.0}, "one GPU per task"),
        ({"gpu": 1, "gpu_type": "nvidia-tesla-t4", "cpu": 4.0, "memory_gb": 16.0}, "only the NVIDIA L4"),
        ({"spot": True}, "no spot"),
        ({"gpu": 1, "gpu_type": "nvidia-l4", "cpu": 2.0, "memory_gb": 16.0}, "at least 4 vCPU and 16 GiB"),
        ({"gpu": 1, "cpu": 4.0, "memory_gb": 8.0}, "at least 4 vCPU and 16 GiB"),
        ({"cpu": 12.0}, "at most 8 vCPU and 32 GiB"),
        ({"memory_gb": 64.0, "cpu": 8.0}, "at most 8 vCPU and 32 GiB"),
        ({"max_runtime_s": 169 * 3600}, "168 hours"),
        ({"max_retries": 11}, "at most 10 times"),
        ({"image": ""}, "container image"),
    ],
)
def test_check_refuses(overrides: dict, reason: str) -> None:
    found = check(make_spec(**overrides))
    assert found is not None and reason in found


@pytest.mark.parametrize(
    "spec",
    [
        make_spec(),
        l4_spec(),
        l4_spec(gpu_type=None),
        make_spec(cpu=8.0, memory_gb=32.0, max_runtime_s=168 * 3600, max_retries=10),
    ],
)
def test_check_accepts(spec: LaunchSpec) -> None:
    assert check(spec) is None


def test_l4_below_minimums_is_a_permanent_error_and_nothing_is_sent(
    fake: FakeCloudRun, launcher: CloudRunLauncher
) -> None:
    with pytest.raises(LaunchError) as caught:
        launcher.launch(l4_spec(cpu=2.0, memory_gb=8.0))
    assert caught.value.transient is False
    assert "at least 4 vCPU and 16 GiB" in caught.value.reason and "asked for 2 vCPU and 8 GiB" in caught.value.reason
    assert fake.calls() == []


# --- idempotency --------------------------------------------------------------------------------


def test_handle_names_the_job_and_the_execution_the_token_started(launcher: CloudRunLauncher) -> None:
    spec = make_spec()
    handle = launcher.launch(spec)
    job = f"projects/{PROJECT}/locations/{REGION}/jobs/{spec.name}"
    token = base.execution_token(spec.job_id)
    assert handle == Handle(
        "cloudrun",
        job,
        {"region": REGION, "job": spec.name, "execution": f"{job}/executions/{spec.name}-{token}"},
    )
    assert execution_id(spec) == f"{spec.name}-{token}"


def test_launch_twice_and_after_a_crash_starts_one_execution(fake: FakeCloudRun, launcher: CloudRunLauncher) -> None:
    spec = make_spec()
    first = launcher.launch(spec)
    again = launcher.launch(spec)
    after_crash = new_launcher(fake).launch(spec)

    assert first == again == after_crash
    assert list(fake.jobs()) == [first.name]
    assert list(fake.executions()) == [first.details["execution"]]
    assert [c.status for c in fake.calls("POST")] == [200, 409, 409]
    assert not fake.calls(path_contains=":run")


def test_crash_between_create_and_read_back_is_transient_then_adopted(
    fake: FakeCloudRun, launcher: CloudRunLauncher
) -> None:
    spec = make_spec()
    fake.fail_next(503, match=f"/jobs/{spec.name}")  # the read-back, after the create succeeded
    with pytest.raises(LaunchError) as caught:
        launcher.launch(spec)
    assert caught.value.transient is True

    handle = new_launcher(fake).launch(spec)
    assert len(fake.jobs()) == 1 and list(fake.executions()) == [handle.details["execution"]]


def test_a_job_of_that_name_owned_by_another_fleet_job_is_not_ours(
    fake: FakeCloudRun, launcher: CloudRunLauncher
) -> None:
    mine = make_spec("j-" + "a" * 40 + "1")
    other = make_spec("j-" + "a" * 40 + "2")
    assert mine.name == other.name  # run_name keeps 40 characters
    launcher.launch(other)

    with pytest.raises(NotOurs) as caught:
        launcher.launch(mine)
    assert caught.value.transient is False
    assert other.job_id in caught.value.reason
    assert len(fake.executions()) == 1


# --- errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("code", "transient"), [(503, True), (500, True), (429, True), (403, False), (400, False)])
def test_api_errors_on_create(fake: FakeCloudRun, launcher: CloudRunLauncher, code: int, transient: bool) -> None:
    fake.fail_next(code, message=f"Cloud Run says {code}")
    with pytest.raises(LaunchError) as caught:
        launcher.launch(make_spec())
    assert caught.value.transient is transient
    assert f"{code} Cloud Run says {code}" in caught.value.reason
    assert "http://" not in caught.value.reason
    assert fake.jobs() == {}


def test_permission_denied_carries_the_api_message(fake: FakeCloudRun, launcher: CloudRunLauncher) -> None:
    fake.fail_next(403, message="Permission 'run.jobs.create' denied on resource")
    with pytest.raises(LaunchError) as caught:
        launcher.launch(make_spec())
    assert not caught.value.transient
    assert "Permission 'run.jobs.create' denied on resource" in caught.value.reason


def test_unreachable_api_is_transient() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    endpoint = f"http://127.0.0.1:{port}"
    launcher = CloudRunLauncher(PROJECT, REGION, endpoint=endpoint, credentials=AnonymousCredentials())
    with pytest.raises(LaunchError) as caught:
        launcher.launch(make_spec())
    assert caught.value.transient is True


def test_status_error_is_transient(fake: FakeCloudRun, launcher: CloudRunLauncher) -> None:
    handle = launcher.launch(make_spec())
    fake.fail_next(503, match="/executions/")
    with pytest.raises(LaunchError) as caught:
        launcher.status(handle)
    assert caught.value.transient is True


# --- status -------------------------------------------------------------------------------------


def test_status_pending_running_succeeded(fake: FakeCloudRun, launcher: CloudRunLauncher, clock: Clock) -> None:
    handle = launcher.launch(make_spec())
    execution = handle.details["execution"]

    pending = launcher.status(handle)
    assert pending.phase is Phase.PENDING and pending.started_at is None and pending.finished_at is None

    clock.advance(30)
    fake.start(execution)
    running = launcher.status(handle)
    assert running.phase is Phase.RUNNING and running.started_at == T0 + timedelta(seconds=30)
    assert type(running.started_at) is datetime

    clock.advance(600)
    fake.succeed(execution)
    done = launcher.status(handle)
    assert done.phase is Phase.SUCCEEDED
    assert done.started_at == T0 + timedelta(seconds=30) and done.finished_at == T0 + timedelta(seconds=630)
    assert done.failed_attempts == 0 and done.preemptions == () and done.message == ""


def test_status_failed_with_message_and_retries(fake: FakeCloudRun, launcher: CloudRunLauncher) -> None:
    handle = launcher.launch(make_spec())
    execution = handle.details["execution"]
    fake.start(execution)
    fake.retry(execution)
    fake.retry(execution)
    retrying = launcher.status(handle)
    assert retrying.phase is Phase.RUNNING and retrying.failed_attempts == 2

    fake.fail(execution, "Task fleet-j-0-0 failed: the container exited with status 137 (out of memory).")
    failed = launcher.status(handle)
    assert failed.phase is Phase.FAILED
    assert "exited with status 137 (out of memory)" in failed.message
    assert failed.message.startswith("NON_ZERO_EXIT_CODE: ")
    assert failed.failed_attempts == 2 and failed.finished_at is not None


def test_status_while_being_cancelled(fake: FakeCloudRun, launcher: CloudRunLauncher) -> None:
    handle = launcher.launch(make_spec())
    execution = handle.details["execution"]
    fake.start(execution)
    fake.set_conditions(
        execution,
        [{"type": "Completed", "state": "CONDITION_RECONCILING", "executionReason": "CANCELLING"}],
    )
    status = launcher.status(handle)
    assert status.phase is Phase.RUNNING and status.message == "being cancelled"


def test_status_from_a_stored_handle(fake: FakeCloudRun, launcher: CloudRunLauncher) -> None:
    handle = launcher.launch(make_spec())
    fake.start(handle.details["execution"])
    stored = Handle.from_doc(handle.to_doc())
    assert new_launcher(fake).status(stored).phase is Phase.RUNNING


def test_missing_job(fake: FakeCloudRun, launcher: CloudRunLauncher) -> None:
    handle = launcher.launch(make_spec())
    fake.delete_job(handle.name)
    gone = launcher.status(handle)
    assert gone.phase is Phase.MISSING and handle.name in gone.message
    launcher.cancel(handle)  # nothing to stop: not an error

    never = Handle("cloudrun", f"projects/{PROJECT}/locations/{REGION}/jobs/fleet-never", {})
    assert launcher.status(never).phase is Phase.MISSING


def test_job_whose_execution_does_not_exist_yet(fake: FakeCloudRun, launcher: CloudRunLauncher) -> None:
    """A job read before Cloud Run created its execution: pending, and cancel asks to be retried."""
    spec = make_spec()
    job = job_message(spec, project=PROJECT, region=REGION)
    job.start_execution_token = ""  # as if the execution were not there yet
    launcher._jobs().create_job(parent=f"projects/{PROJECT}/locations/{REGION}", job=job, job_id=spec.name)
    handle = launcher.launch(spec)
    assert handle.details["execution"].endswith(f"/executions/{execution_id(spec)}")  # the expected name

    assert launcher.status(handle).phase is Phase.PENDING
    with pytest.raises(LaunchError) as caught:
        launcher.cancel(handle)
    assert caught.value.transient is True


# --- cancel -------------------------------------------------------------------------------------


def test_cancel_twice(fake: FakeCloudRun, launcher: CloudRunLauncher) -> None:
    handle = launcher.launch(make_spec())
    fake.start(handle.details["execution"])

    launcher.cancel(handle)
    launcher.cancel(handle)

    status = launcher.status(handle)
    assert status.phase is Phase.CANCELLED and "cancelled" in status.message
    cancels = fake.calls("POST", ":cancel")
    assert [c.path.rsplit("/", 1)[-1] for c in cancels] == [f"{execution_id(make_spec())}:cancel"]


def test_release_deletes_the_ended_job_once_and_twice_is_fine(fake: FakeCloudRun, launcher: CloudRunLauncher) -> None:
    handle = launcher.launch(make_spec())
    fake.succeed(handle.details["execution"])
    launcher.release(handle)
    launcher.release(handle)  # gone already: fine
    assert fake.job(handle.name) is None
    assert len(fake.calls("DELETE")) == 2
    assert launcher.status(handle).phase is Phase.MISSING


def test_cancel_a_pending_execution(fake: FakeCloudRun, launcher: CloudRunLauncher) -> None:
    handle = launcher.launch(make_spec())
    launcher.cancel(handle)
    assert launcher.status(handle).phase is Phase.CANCELLED


def test_cancel_a_finished_execution_is_fine(fake: FakeCloudRun, launcher: CloudRunLauncher) -> None:
    handle = launcher.launch(make_spec())
    fake.succeed(handle.details["execution"])
    launcher.cancel(handle)
    assert launcher.status(handle).phase is Phase.SUCCEEDED
    assert fake.calls("POST", ":cancel") == []


def test_cancel_ignores_an_execution_gone_meanwhile(fake: FakeCloudRun, launcher: CloudRunLauncher) -> None:
    handle = launcher.launch(make_spec())
    fake.fail_next(404, match=":cancel")
    launcher.cancel(handle)


def test_cancel_refused_for_a_running_execution_is_an_error(fake: FakeCloudRun, launcher: CloudRunLauncher) -> None:
    handle = launcher.launch(make_spec())
    fake.start(handle.details["execution"])
    fake.fail_next(403, match=":cancel", message="Permission 'run.executions.cancel' denied")
    with pytest.raises(LaunchError) as caught:
        launcher.cancel(handle)
    assert not caught.value.transient and "run.executions.cancel" in caught.value.reason


# --- import cost --------------------------------------------------------------------------------


def test_importing_the_module_does_not_import_the_client() -> None:
    code = (
        "import sys, shared.launchers.cloudrun\n"
        "loaded = [m for m in ('google.cloud.run_v2', 'google.api_core', 'grpc') if m in sys.modules]\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=30)


def test_cancel_refused_while_being_cancelled_is_fine(fake: FakeCloudRun, launcher: CloudRunLauncher) -> None:
    handle = launcher.launch(make_spec())
    fake.start(handle.details["execution"])
    fake.set_conditions(
        handle.details["execution"],
        [{"type": "Completed", "state": "CONDITION_RECONCILING", "executionReason": "CANCELLING"}],
    )
    fake.fail_next(400, match=":cancel", message="Execution is already being cancelled.")
    launcher.cancel(handle)


def test_cancel_refused_with_400_for_a_running_execution_is_not_swallowed(
    fake: FakeCloudRun, launcher: CloudRunLauncher
) -> None:
    handle = launcher.launch(make_spec())
    fake.start(handle.details["execution"])
    fake.fail_next(400, match=":cancel", message="Invalid request.")
    with pytest.raises(LaunchError) as caught:
        launcher.cancel(handle)
    assert not caught.value.transient and "Invalid request." in caught.value.reason
