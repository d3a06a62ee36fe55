"""Start and stop the local stack: Pub/Sub and Firestore emulators, the fake Slack Web API, a Cloud
Storage stand-in (gcp-storage-emulator, for the models' bytes), one functions-framework per function,
and (for `make up`) the local Cloud Scheduler.

    python -m emulators.stack up --state-dir .stack     # background; writes .stack/env
    python -m emulators.stack down --state-dir .stack   # stops every process it started

The functions post to the fake Slack server (emulators/fake_slack.py, process ``fake-slack``)
through ``SLACK_API_URL`` with a fake bot token, never to a real workspace. With ``scheduler``
(the CLI's ``up`` sets it; tests and the demo fire ticks themselves) ``python -m
emulators.scheduler run`` fires the manifest's schedules, once the env file is written.

Every process runs in its own process group and is recorded in ``<state-dir>/pids.json``, so
``down`` stops the emulators' Java children too (the scheduler and the functions first, the fake
Slack server and the emulators last). Ports are free ports picked at start, so two stacks (or a
busy port) never collide. Logs go to ``<state-dir>/logs/<name>.log``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from fleet_agent.identity import AgentKey

from shared.platform import topology as topology_mod

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PROJECT = "fleet-local"
START_TIMEOUT_S = 90.0
#: The bot token the functions use against the fake Slack server (it accepts any xoxb- token).
FAKE_SLACK_TOKEN = "xoxb-local-fake-token"
#: The models' bucket on the local Cloud Storage stand-in.
MODELS_BUCKET = "fleet-local-models"
#: Training runs' checkpoints (shared/training/checkpoints.py), the models bucket's sibling.
CHECKPOINTS_BUCKET = "fleet-local-checkpoints"
#: Stopped last by `down`, in this order (everything else, the functions, goes before them).
_STOP_LAST = ("fake-slack", "fake-gcs", "firestore-proxy", "pubsub", "firestore")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_http(url: str, timeout: float, proc: subprocess.Popen[bytes] | None = None, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text()[-2000:] if log and log.exists() else ""
            raise RuntimeError(f"{url}: process exited with {proc.returncode}\n{tail}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:
            return  # it answered: it is up
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not come up within {timeout:.0f}s")


def _wait_log(log: Path, needle: str, timeout: float, proc: subprocess.Popen[bytes], offset: int = 0) -> None:
    """Wait until a process has written ``needle`` to its log after ``offset`` (logs are appended to
    across runs), or fail with the log's tail."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log.read_bytes()[offset:].decode(errors="replace") if log.exists() else ""
        if needle in text:
            return
        if proc.poll() is not None:
            raise RuntimeError(f"{log.stem}: process exited with {proc.returncode}\n{text[-2000:]}")
        time.sleep(0.2)
    raise RuntimeError(f"{log.stem} did not start within {timeout:.0f}s")


def _kill_group(pid: int, timeout: float = 10.0) -> None:
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _reap(pid)
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


def _reap(pid: int) -> None:
    """Collect our own exited child, or it lingers as a zombie and still looks alive."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def _alive(pid: int) -> bool:
    try:
        os.killpg(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


@dataclass
class Stack:
    """One local stack, owned by its state directory."""

    state_dir: Path
    project: str = DEFAULT_PROJECT
    #: Extra environment for the functions (settings such as FLEET_UNKNOWN_AGENT_GRACE_S).
    function_env: Mapping[str, str] = field(default_factory=dict)
    #: Retry-policy fields applied to every subscription (tests shorten the time scales).
    subscription_overrides: Mapping[str, int] = field(default_factory=dict)
    #: Serve local-only functions too (the benchmark baseline).
    local_only: bool = False
    create_admin_key: bool = True
    #: Put a fault-injecting proxy between the functions and Firestore (tests cut it).
    firestore_proxy: bool = False
    #: Run the local Cloud Scheduler (`make up`); tests and the demo publish ticks themselves.
    scheduler: bool = False
    env: dict[str, str] = field(default_factory=dict)
    _pids: dict[str, int] = field(default_factory=dict)

    @property
    def pids_file(self) -> Path:
        return self.state_dir / "pids.json"

    @property
    def env_file(self) -> Path:
        return self.state_dir / "env"

    @property
    def jobs_dir(self) -> Path:
        """Where local training runs keep their state (FLEET_LOCAL_JOBS_DIR)."""
        return (self.state_dir / "jobs").resolve()

    @property
    def firestore_down_flag(self) -> Path:
        """While this file exists the functions cannot reach Firestore (with ``firestore_proxy``)."""
        return self.state_dir / "firestore.down"

    @property
    def logs(self) -> Path:
        return self.state_dir / "logs"

    def running(self) -> bool:
        if not self.pids_file.exists():
            return False
        pids = json.loads(self.pids_file.read_text())
        return bool(pids) and all(_alive(pid) for pid in pids.values())

    def _spawn(self, name: str, argv: list[str], env: Mapping[str, str]) -> subprocess.Popen[bytes]:
        self.logs.mkdir(parents=True, exist_ok=True)
        log = (self.logs / f"{name}.log").open("ab")
        proc = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=dict(env),
            cwd=ROOT,
            start_new_session=True,
        )
        self._pids[name] = proc.pid
        self.pids_file.write_text(json.dumps(self._pids, indent=2))
        return proc

    def up(self) -> dict[str, str]:
        """Start everything, build the topology, create the admin key; returns the stack's env."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        if self.running():
            raise RuntimeError(f"a stack is already running in {self.state_dir}; run `make down` first")
        self.down()  # what is left of a stack that half died: stop it before its pids are forgotten
        self._pids = {}
        try:
            return self._up()
        except BaseException:
            self.down()
            raise

    def _up(self) -> dict[str, str]:
        topo = topology_mod.load()
        if not self.local_only:
            topo = topo.deployed()
        pubsub_port, firestore_port = free_port(), free_port()
        base = {k: v for k, v in os.environ.items() if not k.startswith(("PUBSUB_", "FIRESTORE_", "STORAGE_EMULATOR"))}
        emulators = {
            "pubsub": (
                [
                    "gcloud",
                    "beta",
                    "emulators",
                    "pubsub",
                    "start",
                    f"--host-port=127.0.0.1:{pubsub_port}",
                    f"--project={self.project}",
                    "--quiet",
                ],
                pubsub_port,
            ),
            "firestore": (
                ["gcloud", "emulators", "firestore", "start", f"--host-port=127.0.0.1:{firestore_port}", "--quiet"],
                firestore_port,
            ),
        }
        slack_port = free_port()
        emulators["fake-slack"] = (
            [sys.executable, "-m", "emulators.fake_slack", "--port", str(slack_port), "--verbose"],
            slack_port,
        )
        # Cloud Storage (the models' bytes): a stand-in the real client reaches through STORAGE_EMULATOR_HOST.
        gcs_port = free_port()
        emulators["fake-gcs"] = (
            [
                sys.executable,
                "-m",
                "gcp_storage_emulator",
                "start",
                "--host",
                "127.0.0.1",
                "--port",
                str(gcs_port),
                "--in-memory",
                "--default-bucket",
                MODELS_BUCKET,
            ],
            gcs_port,
        )
        procs = {name: self._spawn(name, argv, base) for name, (argv, _) in emulators.items()}
        for name, (_, port) in emulators.items():
            _wait_http(f"http://127.0.0.1:{port}/", START_TIMEOUT_S, procs[name], self.logs / f"{name}.log")

        self.env = {
            "GOOGLE_CLOUD_PROJECT": self.project,
            "PUBSUB_EMULATOR_HOST": f"127.0.0.1:{pubsub_port}",
            "FIRESTORE_EMULATOR_HOST": f"127.0.0.1:{firestore_port}",
            "SLACK_API_URL": f"http://127.0.0.1:{slack_port}/api/",
            "STORAGE_EMULATOR_HOST": f"http://127.0.0.1:{gcs_port}",
            "FLEET_MODELS_BUCKET": MODELS_BUCKET,
            "FLEET_CHECKPOINTS_BUCKET": CHECKPOINTS_BUCKET,
        }
        # Its sibling for training checkpoints: the stand-in (fresh, in memory) creates only its default bucket.
        body = json.dumps({"name": CHECKPOINTS_BUCKET}).encode()
        url = f"http://127.0.0.1:{gcs_port}/storage/v1/b?project={self.project}"
        create = urllib.request.Request(url, body, {"Content-Type": "application/json"})
        urllib.request.urlopen(create, timeout=10).close()
        # Never a real token or signing secret from the caller's shell: the stack's own, fresh each run.
        self.env["SLACK_SIGNING_SECRET"] = secrets.token_hex(16)
        # The fleet's command key (secret fleet-command-key), fresh each run; agents get its public half in
        # their enrollment tokens (FLEET_PUBLIC_KEY is there for tools and tests that check commands).
        fleet_key = AgentKey.generate()
        self.env["FLEET_COMMAND_KEY"] = fleet_key.to_pem().decode().replace("\n", "\\n")  # one line in .stack/env
        self.env["FLEET_PUBLIC_KEY"] = fleet_key.public_key
        slack_env = {"SLACK_BOT_TOKEN": FAKE_SLACK_TOKEN}
        # Training jobs run as local processes (shared/launchers/local.py), their state under the stack's dir.
        jobs_env = {
            "FLEET_JOB_DEFAULT_BACKEND": "local",
            "FLEET_RETRAIN_BACKEND": "local",
            "FLEET_LOCAL_JOBS_DIR": str(self.jobs_dir),
        }
        fn_env = {**base, **self.env, **slack_env, **jobs_env, "PYTHONUNBUFFERED": "1", **self.function_env}
        if self.firestore_proxy:
            proxy_port = free_port()
            argv = [
                sys.executable,
                "-m",
                "emulators.faultproxy",
                "--listen",
                f"127.0.0.1:{proxy_port}",
                "--target",
                f"127.0.0.1:{firestore_port}",
                "--down-flag",
                str(self.firestore_down_flag),
            ]
            self.firestore_down_flag.unlink(missing_ok=True)
            self._spawn("firestore-proxy", argv, base)
            fn_env["FIRESTORE_EMULATOR_HOST"] = f"127.0.0.1:{proxy_port}"
        urls: dict[str, str] = {}
        started: list[tuple[str, subprocess.Popen[bytes], int]] = []
        bin_dir = Path(sys.executable).parent
        for fn in topo.functions:
            port = free_port()
            argv = [
                str(bin_dir / "functions-framework"),
                "--source",
                str(ROOT / "functions" / "main.py"),
                "--target",
                fn.entry_point,
                "--signature-type",
                fn.signature,
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ]
            # Its name (notifier ``sent_by``): Cloud Run's K_SERVICE would make the console's cookies Secure here.
            started.append((fn.name, self._spawn(fn.name, argv, {**fn_env, "FLEET_FUNCTION": fn.name}), port))
            urls[fn.name] = f"http://127.0.0.1:{port}"
        for name, proc, port in started:
            _wait_http(f"http://127.0.0.1:{port}/healthz", START_TIMEOUT_S, proc, self.logs / f"{name}.log")

        os.environ.update(self.env)
        from emulators import bootstrap

        bootstrap.build(topo, self.project, urls, overrides=self.subscription_overrides)
        self.env["FLEET_API_URL"] = urls["fleet-api"]
        self.env["FLEET_CONSOLE_URL"] = urls["fleet-console"]
        # OTLP/HTTP traces: OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is "$FLEET_OTLP_URL/v1/traces" (docs/otlp.md).
        self.env["FLEET_OTLP_URL"] = urls["fleet-otlp"]
        # The request URL Slack would call, for slash commands and interactivity alike.
        self.env["SLACK_APP_URL"] = urls["fleet-slack"] + "/slack/events"
        self.env["FLEET_STACK_DIR"] = str(self.state_dir.resolve())
        for name, url in urls.items():
            self.env[f"FLEET_FUNCTION_URL_{name.upper().replace('-', '_')}"] = url
        if self.create_admin_key:
            # The operator's own tool makes the key, exactly as a person would with fleetctl.
            created = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "shared.cli.fleetctl",
                    "keys",
                    "create",
                    "--name",
                    "local-admin",
                    "--role",
                    "admin",
                ],
                env={**base, **self.env},
                cwd=ROOT,
                capture_output=True,
                text=True,
                check=True,
                timeout=60,
            )
            self.env["FLEET_API_KEY"] = created.stdout.strip()
        self.env_file.touch(mode=0o600)  # it holds the admin key
        self.env_file.write_text("".join(f"{k}={shlex.quote(v)}\n" for k, v in self.env.items()))
        if self.scheduler:
            # After the env file: the scheduler reads the stack's environment from it.
            argv = [sys.executable, "-m", "emulators.scheduler", "run", "--state-dir", str(self.state_dir.resolve())]
            log = self.logs / "scheduler.log"
            offset = log.stat().st_size if log.exists() else 0
            proc = self._spawn("scheduler", argv, {**base, "PYTHONUNBUFFERED": "1"})
            _wait_log(log, "scheduler running", START_TIMEOUT_S, proc, offset)
        return self.env

    def down(self) -> None:
        pids = dict(self._pids)
        if self.pids_file.exists():
            pids.update(json.loads(self.pids_file.read_text()))
        # The scheduler first (no new ticks), then the functions (they hold connections to the
        # emulators and may be mid-call to Slack), then the fake Slack server and the emulators.
        order = sorted(pids, key=lambda n: (n != "scheduler", _STOP_LAST.index(n) if n in _STOP_LAST else -1))
        for name in order:
            _kill_group(pids[name])
        self._pids = {}
        self.pids_file.unlink(missing_ok=True)
        self.env_file.unlink(missing_ok=True)
        # Training runs the functions started locally outlive them (their own sessions): stop those too.
        from shared.launchers import local

        local.stop_all(self.jobs_dir)


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="emulators.stack", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["up", "down", "status"])
    parser.add_argument("--state-dir", type=Path, default=ROOT / ".stack")
    parser.add_argument("--project", default=DEFAULT_PROJECT)
    args = parser.parse_args(list(argv) if argv is not None else None)
    stack = Stack(args.state_dir, project=args.project)
    if args.command == "up":
        if stack.running():
            print(f"stack already running; its environment is in {stack.env_file}")
            return 0
        stack.scheduler = True
        env = stack.up()
        print(f"local stack up. Environment written to {stack.env_file} (source it: `set -a; . {stack.env_file}`)")
        for key in (
            "FLEET_API_URL",
            "FLEET_CONSOLE_URL",
            "SLACK_APP_URL",
            "PUBSUB_EMULATOR_HOST",
            "FIRESTORE_EMULATOR_HOST",
            "SLACK_API_URL",
        ):
            print(f"  {key}={env[key]}")
        print("the scheduler fires topology.yaml's schedules; `make tick JOB=<job>` fires one now")
        print(f"Slack messages the functions sent: curl -s {env['SLACK_API_URL'].removesuffix('api/')}_calls")
        print("stop it with `make down`")
    elif args.command == "down":
        stack.down()
        print("local stack stopped")
    else:
        print("running" if stack.running() else "stopped")
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
