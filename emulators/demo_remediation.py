"""`make demo`, remediation: a worker whose main loop hangs is frozen by the liveness ladder, restarted by its
tenant's remediation policy (the default rule ``frozen -> restart``), and comes back active on its own.

The worker is a real SDK agent (enrolled, signed, listening on its own command channel) whose heartbeats
stop while its command listener lives on: what a process stuck in its work looks like. The minute job
(ticks published as Cloud Scheduler would) walks it down the ladder to frozen; the policy sends ``restart``;
the SDK acknowledges it, flushes, and calls its ``exit_process`` with 75 (a supervisor's cue to start it
again). The scene plays the supervisor: a new process of the same agent, same key, registers and heartbeats,
and the fleet lifts the freeze because its own policy restarted it. No person touched it.
"""

from __future__ import annotations

import json
import queue
import time
from pathlib import Path
from typing import Any

import requests
from fleet_agent import FleetAgent, Registration
from rich.console import Console
from rich.table import Table

from emulators import demo_identity

AGENT = Registration(
    agent_id="acme-worker-hang",
    tenant="acme",
    name="Invoice worker (its main loop hangs)",
    agent_type="worker",
    version="2.3.0",
    owner="ops@acme.com",
    heartbeat_interval_s=1,
)
#: How long the scene waits for the fleet at each step (the ladder needs 10 missed 1 s intervals).
STEP_TIMEOUT_S = 40.0


def _agent(api: Any) -> dict[str, Any]:
    try:
        return dict(api.get(f"/v1/agents/{AGENT.agent_id}"))
    except requests.HTTPError:  # 404 until the registration is processed
        return {}


def _wait(condition: Any, timeout: float = STEP_TIMEOUT_S, tick: Any = None) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if tick is not None:
            tick()
        time.sleep(0.5)
    return None


def _ticker(env: dict[str, str]) -> Any:
    """Publish a liveness-sweep tick at most every 2 s, as Cloud Scheduler would every minute."""
    # lazy: the Pub/Sub client only in this scene (the others share theirs)
    from google.cloud.pubsub_v1 import PublisherClient

    publisher = PublisherClient()
    topic = publisher.topic_path(env["GOOGLE_CLOUD_PROJECT"], "tick-liveness-sweep")
    last = [0.0]

    def tick() -> None:
        if time.monotonic() - last[0] >= 2.0:
            publisher.publish(topic, json.dumps({"job": "liveness-sweep"}).encode(), job="liveness-sweep").result()
            last[0] = time.monotonic()

    return tick


def run(env: dict[str, str], api: Any, console: Console, keys_dir: Path) -> bool:
    """Freeze the worker, let the policy restart it, restart it as a supervisor would; True when it is back."""
    project = env["GOOGLE_CLOUD_PROJECT"]
    path = demo_identity.key_path(keys_dir, AGENT.agent_id)
    token = demo_identity.enrollment_tokens(api, [AGENT])[AGENT.tenant]
    exits: queue.Queue[int] = queue.Queue()
    started = time.monotonic()
    timeline: list[tuple[str, str]] = []

    def mark(what: str) -> None:
        timeline.append((f"{time.monotonic() - started:5.1f}s", what))

    tick = _ticker(env)
    hung = FleetAgent(AGENT, project=project, enrollment_token=token, key_path=path, exit_process=exits.put)
    try:
        hung.register()
        hung.listen()
        hung.start()
        if not _wait(lambda: _agent(api).get("status") == "active"):
            console.print("[red]the worker never became active[/]")
            return False
        mark("registered, heartbeating every 1 s")
        hung.pause_heartbeats()  # the main loop hangs; the command listener lives on
        mark("main loop hangs: no more heartbeats")
        frozen = _wait(lambda: _agent(api).get("status") == "frozen", tick=tick)
        mark("frozen by the liveness ladder (10 missed intervals)" if frozen else "never frozen")
        code = _wait(lambda: _exit_code(exits), tick=tick)
        if code is None:
            console.print("[red]the policy's restart never reached the worker[/]")
            return False
        mark(f"'restart' from the remediation policy: acknowledged, then exit_process({code})")
    finally:
        hung.close()
    back = FleetAgent(AGENT, project=project, key_path=path)  # the supervisor starts the process again
    try:
        back.register()
        back.listen()
        back.start()
        active = _wait(lambda: _agent(api).get("status") == "active")
        mark("registered again; the freeze lifted: active" if active else "still not active")
        commands = _wait(lambda: _restart_done(api), timeout=10.0)
    finally:
        back.close()
    table = Table(title=f"Remediation: {AGENT.agent_id} (policy: frozen -> restart)")
    table.add_column("when", justify="right")
    table.add_column("what")
    for when, what in timeline:
        table.add_row(when, what)
    if commands:
        table.add_row("", f"GET /v1/agents/{AGENT.agent_id}/commands: restart {commands}")
    console.print(table)
    return bool(frozen and code == 75 and active)


def _exit_code(exits: queue.Queue[int]) -> int | None:
    try:
        return exits.get_nowait()
    except queue.Empty:
        return None


def _restart_done(api: Any) -> str | None:
    """The restart's state as the fleet tracked it (sent, acknowledged, done), once the SDK's acks arrived."""
    try:
        listed = api.get(f"/v1/agents/{AGENT.agent_id}/commands")
    except requests.HTTPError:
        return None
    for entry in listed.get("commands", []):
        if entry.get("command") == "restart" and entry.get("state") == "done":
            return f"done (origin {entry.get('origin')}, sent {entry.get('attempts')}x)"
    return None
