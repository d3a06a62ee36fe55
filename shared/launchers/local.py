"""The local backend: a training run as a process on this machine (``make demo``, the local stack).

Each run has a directory named from its job id under ``FLEET_LOCAL_JOBS_DIR``; creating it is the
launch's claim (``mkdir`` is atomic), so a retried launch finds it and starts nothing. The process
is started through :mod:`shared.launchers.local_runner` in a session of its own (it outlives the
function that launched it) and writes what became of it into the directory: ``pid``, ``started``,
``exit.json``; ``cancel`` asks it to stop. ``make down`` stops every run still going.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from shared.domain.run_phase import Backend, Phase, RunStatus
from shared.launchers.base import Handle, LaunchError, LaunchSpec, NotOurs
from shared.platform import topology

ROOT = Path(__file__).resolve().parents[2]


def default_root() -> Path:
    return Path(os.environ.get("FLEET_LOCAL_JOBS_DIR") or Path(tempfile.gettempdir()) / "fleet-jobs")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _time(path: Path) -> datetime | None:
    try:
        return datetime.fromisoformat(path.read_text().strip())
    except (OSError, ValueError):
        return None


class LocalLauncher:
    backend = Backend.LOCAL

    def __init__(self, root: Path | None = None) -> None:
        self.root = root or default_root()

    def launch(self, spec: LaunchSpec) -> Handle:
        if not spec.command:
            raise LaunchError("the local backend runs a command; this job names only an image", transient=False)
        self.root.mkdir(parents=True, exist_ok=True)
        run = self.root / spec.name
        handle = Handle(self.backend.value, str(run), {"dir": str(run)})
        try:
            run.mkdir()
        except FileExistsError:
            owner = (run / "job_id").read_text().strip() if (run / "job_id").exists() else spec.job_id
            if owner != spec.job_id:
                raise NotOurs(f"{run} belongs to job {owner}") from None
            return handle  # launched before: never a second process
        (run / "job_id").write_text(spec.job_id)
        (run / "spec.json").write_text(json.dumps({"command": list(spec.command), "labels": spec.all_labels()}))
        # The run's own secrets in its process's environment only; none of the function's (the fleet key,
        # Slack's): a run holding the fleet key could sign commands and settlements, and derive any job's key.
        secrets = {secret.name.upper().replace("-", "_") for secret in topology.load().secrets}
        inherited = {k: v for k, v in os.environ.items() if k not in secrets}
        env = {**inherited, **spec.env, **spec.secrets}
        argv = [
            sys.executable,
            "-m",
            "shared.launchers.local_runner",
            "--dir",
            str(run),
            "--max-runtime-s",
            str(spec.max_runtime_s),
            "--",
            *spec.command,
        ]
        with open(run / "output.log", "ab") as out:
            subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=ROOT,  # the built-in workload is ``python -m jobs.train`` from the repository
                start_new_session=True,
            )
        return handle

    def status(self, handle: Handle) -> RunStatus:
        run = Path(handle.name)
        if not run.is_dir():
            return RunStatus(Phase.MISSING, message=f"{run} does not exist")
        started = _time(run / "started")
        exit_file = run / "exit.json"
        if exit_file.exists():
            try:
                done = json.loads(exit_file.read_text())
            except ValueError:
                done = {"phase": "failed", "message": "exit.json unreadable"}
            finished = datetime.fromisoformat(done["finished_at"]) if done.get("finished_at") else None
            return RunStatus(Phase(done.get("phase", "failed")), started, finished, str(done.get("message", "")))
        pid_file = run / "pid"
        if not pid_file.exists():
            return RunStatus(Phase.PENDING)
        pid = int(pid_file.read_text().strip() or 0)
        if pid and _alive(pid):
            return RunStatus(Phase.RUNNING, started)
        # The runner died without writing its exit (killed with the machine): a failure.
        return RunStatus(Phase.FAILED, started, datetime.now(UTC), "the local runner stopped without a result")

    def cancel(self, handle: Handle) -> None:
        run = Path(handle.name)
        if not run.is_dir() or (run / "exit.json").exists():
            return
        (run / "cancel").write_text(datetime.now(UTC).isoformat())
        pid_file = run / "pid"
        if pid_file.exists():
            with contextlib.suppress(ProcessLookupError, ValueError, PermissionError):
                os.killpg(int(pid_file.read_text().strip()), signal.SIGTERM)

    def release(self, handle: Handle) -> None:
        """A run keeps its directory (its output and exit record) for reading: nothing to do."""


def stop_all(root: Path | None = None) -> int:
    """Stop every run still going under ``root`` (``make down``); returns how many were stopped."""
    stopped = 0
    base = root or default_root()
    if not base.is_dir():
        return 0
    launcher = LocalLauncher(base)
    for run in base.iterdir():
        if run.is_dir() and (run / "pid").exists() and not (run / "exit.json").exists():
            launcher.cancel(Handle(Backend.LOCAL.value, str(run)))
            stopped += 1
    return stopped
