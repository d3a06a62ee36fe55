"""The local backend: real processes under a temporary directory (no emulator needed)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from shared.domain.run_phase import Phase
from shared.launchers import local
from shared.launchers.base import LaunchError, LaunchSpec, NotOurs


def spec(job_id: str, *command: str, max_runtime_s: int = 60) -> LaunchSpec:
    return LaunchSpec(
        job_id=job_id,
        tenant="acme",
        agent_id="agent-1",
        image="unused",
        command=command,
        env={"FLEET_JOB_ID": job_id},
        cpu=1,
        memory_gb=1,
        max_runtime_s=max_runtime_s,
    )


def until(launcher: local.LocalLauncher, handle: object, *phases: Phase, timeout: float = 20) -> Phase:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        phase = launcher.status(handle).phase  # type: ignore[arg-type]
        if phase in phases:
            return phase
        time.sleep(0.05)
    raise AssertionError(f"still {launcher.status(handle).phase}")  # type: ignore[arg-type]


def test_a_run_succeeds_and_a_second_launch_starts_nothing(tmp_path: Path) -> None:
    launcher = local.LocalLauncher(tmp_path)
    job = spec("j-0000000001", sys.executable, "-c", "import os; print(os.environ['FLEET_JOB_ID'])")
    handle = launcher.launch(job)
    assert launcher.launch(job) == handle  # a retried launch finds the run
    assert local.LocalLauncher(tmp_path).launch(job) == handle  # after a "crash": a new launcher instance
    assert until(launcher, handle, Phase.SUCCEEDED, Phase.FAILED) is Phase.SUCCEEDED
    status = launcher.status(handle)
    assert status.started_at is not None and status.finished_at is not None
    run = Path(handle.name)
    assert (run / "output.log").read_text().count("j-0000000001") == 1  # one process ran


def test_a_failing_run_says_its_exit_code(tmp_path: Path) -> None:
    launcher = local.LocalLauncher(tmp_path)
    handle = launcher.launch(spec("j-0000000002", sys.executable, "-c", "raise SystemExit(3)"))
    assert until(launcher, handle, Phase.SUCCEEDED, Phase.FAILED) is Phase.FAILED
    assert launcher.status(handle).message == "exit code 3"


def test_cancel_stops_the_process_and_is_idempotent(tmp_path: Path) -> None:
    launcher = local.LocalLauncher(tmp_path)
    handle = launcher.launch(spec("j-0000000003", sys.executable, "-c", "import time; time.sleep(60)"))
    until(launcher, handle, Phase.RUNNING)
    launcher.cancel(handle)
    assert until(launcher, handle, Phase.CANCELLED, Phase.FAILED, Phase.SUCCEEDED) is Phase.CANCELLED
    launcher.cancel(handle)  # finished: nothing to do, no error


def test_a_run_longer_than_its_runtime_is_killed(tmp_path: Path) -> None:
    launcher = local.LocalLauncher(tmp_path)
    handle = launcher.launch(spec("j-0000000004", sys.executable, "-c", "import time; time.sleep(60)", max_runtime_s=1))
    assert until(launcher, handle, Phase.FAILED, Phase.SUCCEEDED, Phase.CANCELLED) is Phase.FAILED
    assert launcher.status(handle).message.startswith("DeadlineExceeded")


def test_a_directory_of_another_job_is_never_adopted(tmp_path: Path) -> None:
    launcher = local.LocalLauncher(tmp_path)
    mine = spec("j-0000000005", sys.executable, "-c", "pass")
    run = tmp_path / mine.name
    run.mkdir(parents=True)
    (run / "job_id").write_text("j-someoneelse")
    with pytest.raises(NotOurs):
        launcher.launch(mine)


def test_an_image_without_a_command_cannot_run_locally(tmp_path: Path) -> None:
    with pytest.raises(LaunchError) as refused:
        local.LocalLauncher(tmp_path).launch(spec("j-0000000006"))
    assert not refused.value.transient


def test_stop_all_stops_every_run_still_going(tmp_path: Path) -> None:
    launcher = local.LocalLauncher(tmp_path)
    handles = [
        launcher.launch(spec(f"j-000000001{n}", sys.executable, "-c", "import time; time.sleep(60)")) for n in range(2)
    ]
    for handle in handles:
        until(launcher, handle, Phase.RUNNING)
    assert local.stop_all(tmp_path) == 2
    for handle in handles:
        assert until(launcher, handle, Phase.CANCELLED, Phase.FAILED) is Phase.CANCELLED
    assert launcher.status(type(handles[0])("local", str(tmp_path / "nothing"))).phase is Phase.MISSING
