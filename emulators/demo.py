"""`make demo`: a simulated fleet on a private local stack, watched through the REST API.

    python -m emulators.demo [--agents 54] [--duration 35]

Starts its own stack in ``.stack-demo`` (never the one `make up` runs in ``.stack``), under the
``required`` identity policy, enrolls a fleet of agents across tenants and agent types with the SDK
(one enrollment token per tenant made through the REST API; each agent's key under
``.stack-demo/keys``; one shared PublisherClient, as a real multi-agent host would), heartbeats for
``--duration`` seconds while a few agents degrade and a few go silent, publishes two deliberately bad
messages, then prints the fleet and the recorded rejections as the API reports them. An outsider then
publishes forged cost batches for another tenant's agent (emulators/demo_identity.py): they are
refused and listed, and the victim's spend does not move. Meanwhile the LLM agents record their model calls
with the SDK (emulators/demo_costs.py): a runaway loop gets paused, a failing provider's breaker
opens, an agent at its hourly budget is stopped, an unpriced model raises an alert; the spend per
agent and per tenant and the alerts are printed at the end. One more agent of ``acme`` is instrumented only
with OpenTelemetry (emulators/demo_otlp.py): its spans go to fleet-otlp and its spend shows beside its tenant's.
A worker whose main loop hangs is frozen, restarted by its tenant's remediation policy and back active without a
person (emulators/demo_remediation.py).
The stack is always stopped, Ctrl-C included.

Exit status: 0 when the API showed every agent, the three misbehaving agents were stopped by their
SDK, every forged batch was refused and the hung worker came back by policy, 1 otherwise, 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

import requests
from fleet_agent import CommandListener, FleetAgent, Registration, ReportedStatus, Resources
from fleet_agent.contracts import DEFAULT_TOPICS, SCHEMA_VERSION, EventType
from fleet_agent.identity import AgentKey
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from emulators import demo_approvals, demo_costs, demo_identity, demo_jobs, demo_otlp, demo_remediation, fake_slack
from emulators.stack import ROOT, Stack

STATE_DIR = ROOT / ".stack-demo"
TENANTS = ("acme", "globex", "initech")
HEARTBEAT_INTERVAL_S = 2
#: Heartbeats for unknown agents are retried this long (short, so a demo never waits a minute).
#: Every demo agent enrolls and signs: the stack refuses unsigned events (the deployment default).
FUNCTION_ENV = {"FLEET_UNKNOWN_AGENT_GRACE_S": "10", "FLEET_IDENTITY_POLICY": "required"}

STATUS_STYLE = {
    "registered": "cyan",
    "provisioning": "cyan",
    "active": "green",
    "idle": "blue",
    "busy": "magenta",
    "degraded": "yellow",
    "offline": "red",
}


@dataclass(frozen=True)
class AgentType:
    name: str
    capabilities: tuple[str, ...]
    versions: tuple[str, ...]
    #: The extra, type-specific metric and its typical value.
    extra_metric: str
    extra_base: float
    cpu: float
    memory_gb: float
    gpu: int = 0
    latency_ms: float = 200.0


AGENT_TYPES = (
    AgentType("llm-chat", ("chat", "tools"), ("2.3.0", "2.4.1"), "tokens_per_s", 45.0, 2, 4, latency_ms=900),
    AgentType("llm-router", ("routing",), ("1.0.4",), "routes_per_s", 120.0, 1, 1, latency_ms=40),
    AgentType("retriever", ("search", "embeddings"), ("0.9.2", "0.10.0"), "queries_per_s", 30.0, 2, 8),
    AgentType("ml-trainer", ("training",), ("3.1.0",), "samples_per_s", 850.0, 8, 32, gpu=1, latency_ms=5000),
    AgentType("evaluator", ("eval", "scoring"), ("1.2.0",), "evals_per_min", 12.0, 1, 2, latency_ms=1500),
)


@dataclass
class SimAgent:
    """One simulated agent: its SDK client plus the random walk its metrics follow."""

    registration: Registration
    kind: AgentType
    rng: random.Random
    cpu: float = 30.0
    memory: float = 40.0
    error_rate: float = 0.01
    completed: int = 0
    failed: int = 0
    degraded: bool = False
    silent: bool = False
    beats: int = 0
    start_at: float = 0.0
    agent: FleetAgent | None = None
    last: dict[str, float] = field(default_factory=dict)

    @property
    def agent_id(self) -> str:
        return self.registration.agent_id

    def metrics(self) -> dict[str, float]:
        """Called by the SDK loop on every beat: a plausible, slowly moving snapshot."""
        rng = self.rng
        self.beats += 1
        target_cpu = 85.0 if self.degraded else 35.0
        self.cpu = _clamp(self.cpu + (target_cpu - self.cpu) * 0.3 + rng.gauss(0, 6), 1, 100)
        self.memory = _clamp(self.memory + rng.gauss(0.3 if self.degraded else 0, 2), 5, 98)
        base_error = 0.35 if self.degraded else 0.01
        self.error_rate = _clamp(base_error + rng.gauss(0, 0.05 if self.degraded else 0.005), 0, 1)
        active = max(0, round(rng.gauss(4, 2)))
        done = rng.randint(5, 40)
        failed = round(done * self.error_rate)
        self.completed += done - failed
        self.failed += failed
        slowdown = 4.0 if self.degraded else 1.0
        self.last = {
            "cpu_pct": round(self.cpu, 1),
            "memory_pct": round(self.memory, 1),
            "error_rate": round(self.error_rate, 3),
            "latency_ms_p95": round(self.kind.latency_ms * slowdown * rng.uniform(0.8, 1.3), 1),
            "active_tasks": active,
            "completed_tasks": self.completed,
            "failed_tasks": self.failed,
            self.kind.extra_metric: round(self.kind.extra_base / slowdown * rng.uniform(0.7, 1.2), 2),
        }
        return self.last

    def status(self) -> ReportedStatus:
        if self.degraded:
            return ReportedStatus.DEGRADED
        active = int(self.last.get("active_tasks", 1))
        if active == 0:
            return ReportedStatus.IDLE
        return ReportedStatus.BUSY if active >= 7 else ReportedStatus.ACTIVE


def _clamp(value: float, low: float, high: float) -> float:
    return max(low, min(high, value))


def build_fleet(count: int, rng: random.Random) -> list[SimAgent]:
    """``count`` agents spread round-robin over tenants and types, so every pair is present."""
    fleet: list[SimAgent] = []
    numbers: Counter[tuple[str, str]] = Counter()
    for i in range(count):
        tenant = TENANTS[i % len(TENANTS)]
        kind = AGENT_TYPES[(i // len(TENANTS)) % len(AGENT_TYPES)]
        numbers[tenant, kind.name] += 1
        n = numbers[tenant, kind.name]
        reg = Registration(
            agent_id=f"{tenant}-{kind.name}-{n:02d}",
            tenant=tenant,
            name=f"{tenant.title()} {kind.name} #{n}",
            agent_type=kind.name,
            version=rng.choice(kind.versions),
            owner=f"{tenant}-platform-team",
            capabilities=list(kind.capabilities),
            resources=Resources(cpu=kind.cpu, memory_gb=kind.memory_gb, gpu=kind.gpu),
            heartbeat_interval_s=HEARTBEAT_INTERVAL_S,
            labels={"env": "demo", "region": rng.choice(["europe-west1", "us-central1"])},
        )
        fleet.append(
            SimAgent(
                reg,
                kind,
                random.Random(rng.random()),
                cpu=rng.uniform(15, 50),
                memory=rng.uniform(20, 60),
                start_at=rng.uniform(0, HEARTBEAT_INTERVAL_S),  # spread the beats over an interval
            )
        )
    return fleet


# --- the API ------------------------------------------------------------------------------------


class Api:
    """The few REST calls the demo makes, with the stack's admin key."""

    def __init__(self, url: str, key: str) -> None:
        self.url = url.rstrip("/")
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {key}"

    def pages(self, path: str, page_size: int = 200) -> Iterator[dict[str, Any]]:
        token: str | None = None
        while True:
            params: dict[str, Any] = {"page_size": page_size}
            if token:
                params["page_token"] = token
            resp = self.session.get(f"{self.url}{path}", params=params, timeout=5)
            resp.raise_for_status()
            body = resp.json()
            yield from body["items"]
            token = body.get("next_page_token")
            if not token:
                return

    def agents(self) -> list[dict[str, Any]]:
        return list(self.pages("/v1/agents"))

    def get(self, path: str, **params: Any) -> Any:
        resp = self.session.get(f"{self.url}{path}", params=params, timeout=10)
        resp.raise_for_status()
        return resp.json()

    def post(self, path: str, body: Any) -> Any:
        resp = self.session.post(f"{self.url}{path}", json=body, timeout=10)
        resp.raise_for_status()
        return resp.json()

    def put(self, path: str, body: Any) -> Any:
        resp = self.session.put(f"{self.url}{path}", json=body, timeout=10)
        resp.raise_for_status()
        return resp.json()

    def rejections(self) -> list[dict[str, Any]]:
        return list(self.pages("/v1/rejections"))

    def close(self) -> None:
        self.session.close()


# --- the run ------------------------------------------------------------------------------------


@dataclass
class Progress:
    started: float
    expected: set[str]
    seen: dict[str, dict[str, Any]] = field(default_factory=dict)
    api_error: str | None = None
    max_visible: int = 0
    events: list[str] = field(default_factory=list)
    console: Console | None = None
    calls: list[demo_costs.CallSim] = field(default_factory=list)
    stopped: set[str] = field(default_factory=set)

    def refresh(self, api: Api) -> None:
        try:
            agents = api.agents()
        except (requests.RequestException, ValueError, KeyError) as exc:
            self.api_error = f"{type(exc).__name__}: {exc}"[:120]
            return
        self.api_error = None
        self.seen = {a["agent_id"]: a for a in agents if a["agent_id"] in self.expected}
        self.max_visible = max(self.max_visible, len(self.seen))

    def event(self, text: str) -> None:
        """Something the simulation did: shown under the live table, or printed at once when piped."""
        self.events.append(text)
        if self.console is not None and not self.console.is_terminal:
            self.console.print(text, markup=False)

    def statuses(self) -> Counter[str]:
        return Counter(a["status"] for a in self.seen.values())

    def late(self) -> int:
        """Agents past their ``late_after``: no heartbeat for three intervals."""
        now = datetime.now(UTC)
        return sum(1 for a in self.seen.values() if (_age(a.get("late_after"), now) or 0) > 0)


def progress_view(progress: Progress, fleet: list[SimAgent], duration: float) -> Group:
    elapsed = time.monotonic() - progress.started
    table = Table(title="Agent Fleet Manager demo (live, from the REST API)", title_justify="left")
    table.add_column("elapsed", justify="right")
    table.add_column("heartbeats sent", justify="right")
    table.add_column("agents in API", justify="right")
    for status in ("registered", "active", "idle", "busy", "degraded"):
        table.add_column(status, justify="right", style=STATUS_STYLE.get(status))
    table.add_column("late (silent)", justify="right", style="red")
    counts = progress.statuses()
    table.add_row(
        f"{elapsed:4.0f}s / {duration:.0f}s",
        str(sum(a.beats for a in fleet)),
        f"{len(progress.seen)}/{len(progress.expected)}",
        *(str(counts.get(s, 0)) for s in ("registered", "active", "idle", "busy", "degraded")),
        str(progress.late()),
    )
    lines: list[Any] = [table]
    if progress.api_error:
        lines.append(Text(f"API not answering yet: {progress.api_error}", style="yellow"))
    lines.extend(Text(f"  {e}", style="dim") for e in progress.events[-6:])
    return Group(*lines)


def publish_bad_messages(publisher: Any, project: str, agent_id: str) -> list[str]:
    """Two messages the fleet must refuse (and record, with the reason and the payload)."""
    topic = publisher.topic_path(project, DEFAULT_TOPICS[EventType.HEARTBEAT])
    attrs = {"agent_id": agent_id, "event_type": EventType.HEARTBEAT.value, "schema_version": SCHEMA_VERSION}
    not_json = b"cpu=93%; status=on fire"  # a hand-rolled agent that never read the contract
    violation = json.dumps(
        {
            "event_id": uuid.uuid4().hex,
            "data": {
                "agent_id": agent_id,
                "seq": -1,
                "sent_at": "yesterday",
                "status": "on-fire",
                "metrics": {"cpu_pct": 250},
            },
        }
    ).encode()
    futures = [publisher.publish(topic, body, **attrs) for body in (not_json, violation)]
    return [f.result(timeout=30) for f in futures]


def run_fleet(
    fleet: list[SimAgent],
    env: dict[str, str],
    api: Api,
    console: Console,
    duration: float,
    rng: random.Random,
    keys_dir: Path,
) -> Progress:
    from google.cloud.pubsub_v1 import PublisherClient

    project = env["GOOGLE_CLOUD_PROJECT"]
    publisher = PublisherClient()  # one client for the whole fleet
    # One subscription on agent-commands for the whole simulated host, dispatching by agent id.
    listener = CommandListener(project, label="demo")
    calls: list[demo_costs.CallSim] = []
    agents: list[FleetAgent] = []
    try:
        template = next(s.registration for s in fleet if s.registration.agent_type == "llm-chat")
        regs = [s.registration for s in fleet] + demo_costs.shared_registrations(template)
        tokens = demo_identity.enrollment_tokens(api, regs)
        console.print(
            f"enrollment tokens made through the API: one per tenant ({', '.join(sorted(tokens))}), scoped to "
            "its id prefix, one use per agent"
        )
        for sim in fleet:
            sim.agent = FleetAgent(
                sim.registration, project=project, publisher=publisher, metrics=sim.metrics, status=sim.status,
                enrollment_token=tokens[sim.registration.tenant],
                key_path=demo_identity.key_path(keys_dir, sim.agent_id),
                leases=demo_costs.uses_leases(sim.agent_id, regs),
            )  # fmt: skip
        shared = [
            FleetAgent(r, project=project, publisher=publisher, enrollment_token=tokens[r.tenant],
                       key_path=demo_identity.key_path(keys_dir, r.agent_id))
            for r in regs[len(fleet) :]
        ]  # fmt: skip
        agents = [*(s.agent for s in fleet if s.agent is not None), *shared]
        for agent in agents:
            listener.add(agent)
        calls = demo_costs.behaviours(agents, rng)
        for call_sim in calls:
            budget = demo_costs.budget_for(call_sim.agent.registration.agent_type, call_sim.behaviour)
            call_sim.agent.registration = call_sim.agent.registration.model_copy(update={"budget": budget})
        # The demo tenant catches loops within seconds (the default threshold is 1,200 calls a minute).
        api.put("/v1/tenants/acme/protection", {"runaway_calls_per_minute": demo_costs.RUNAWAY_CALLS_PER_MINUTE})
        demo_costs.shared_budget(api)
        listener.start()  # before registering: a registration re-sends the agent's holds
        t0 = time.monotonic()
        with ThreadPoolExecutor(max_workers=16) as pool:
            list(pool.map(lambda a: a.register(), agents))
        for agent in shared:
            agent.start()  # heartbeats: the fleet's own start on their schedule, in _loop
        console.print(
            f"enrolled and registered {len(agents)} agents in {time.monotonic() - t0:.1f}s "
            f"({len(TENANTS)} tenants, {len(AGENT_TYPES)} agent types, one shared PublisherClient); "
            "each generated its Ed25519 key and signs every event"
        )
        progress = Progress(started=time.monotonic(), expected={s.agent_id for s in fleet}, console=console)
        progress.calls = calls
        console.print(
            f"{len(calls)} LLM agents record their calls with the SDK; misbehaving: "
            + ", ".join(f"{c.agent_id} ({c.behaviour})" for c in calls if c.behaviour != "normal")
        )
        demo_costs.start(calls)
        _loop(fleet, publisher, project, api, console, duration, rng, progress)
        demo_costs.stop(calls)
        console.print("stopping the fleet: every agent flushes its outstanding heartbeats and call records")
        for sim in fleet:
            if sim.agent is not None and not sim.agent.close(timeout=10):
                console.print(f"[yellow]{sim.agent_id}: some heartbeats were not confirmed[/]")
        return progress
    finally:
        demo_costs.stop(calls)
        for agent in agents:
            agent.close(timeout=2)  # the fleet's and the shared tenant's
        listener.close()
        publisher.stop()


def _loop(
    fleet: list[SimAgent],
    publisher: Any,
    project: str,
    api: Api,
    console: Console,
    duration: float,
    rng: random.Random,
    progress: Progress,
) -> None:
    shuffled = rng.sample(fleet, len(fleet))
    degrade, silence = shuffled[:3], shuffled[3:7]
    degrade_at, silence_at, bad_at = duration * 0.35, duration * 0.5, duration * 0.25
    bad_sent = False
    started: set[str] = set()
    last_print = -10.0
    next_poll = 0.0
    # A live-updating table on a terminal; a line every 5 s otherwise (CI logs, pipes).
    display: AbstractContextManager[Live | None] = (
        Live(progress_view(progress, fleet, duration), console=console, refresh_per_second=4)
        if console.is_terminal
        else nullcontext()
    )
    with display as live:
        while (elapsed := time.monotonic() - progress.started) < duration:
            for sim in fleet:
                if sim.agent is not None and sim.agent_id not in started and elapsed >= sim.start_at:
                    started.add(sim.agent_id)
                    sim.agent.start()
            if elapsed >= degrade_at and not degrade[0].degraded:
                for sim in degrade:
                    sim.degraded = True
                progress.event(
                    f"{elapsed:4.0f}s  degrading (high error rate): {', '.join(s.agent_id for s in degrade)}"
                )
            if elapsed >= silence_at and not silence[0].silent:
                for sim in silence:
                    sim.silent = True
                    if sim.agent is not None:
                        sim.agent.stop()
                progress.event(
                    f"{elapsed:4.0f}s  going silent (loop stopped): {', '.join(s.agent_id for s in silence)}"
                )
            if elapsed >= bad_at and not bad_sent:
                bad_sent = True
                ids = publish_bad_messages(publisher, project, fleet[0].agent_id)
                progress.event(f"{elapsed:4.0f}s  sent 2 bad messages (not JSON; schema violation): {', '.join(ids)}")
            for line in demo_costs.events(progress.calls, progress.stopped):
                progress.event(line)
            if elapsed >= next_poll:
                next_poll = elapsed + 1.0
                progress.refresh(api)
                if live is not None:
                    live.update(progress_view(progress, fleet, duration))
                elif elapsed - last_print >= 5:
                    last_print = elapsed
                    counts = ", ".join(f"{k} {v}" for k, v in sorted(progress.statuses().items())) or "-"
                    console.print(
                        f"{elapsed:4.0f}s  heartbeats sent {sum(a.beats for a in fleet):4d}  "
                        f"agents in API {len(progress.seen)}/{len(fleet)}  by status: {counts}  "
                        f"late: {progress.late()}"
                        + (f"  API error: {progress.api_error}" if progress.api_error else ""),
                        markup=False,
                    )
            time.sleep(0.1)


# --- the report ---------------------------------------------------------------------------------


def _age(value: str | None, now: datetime) -> float | None:
    if not value:
        return None
    return (now - datetime.fromisoformat(value.replace("Z", "+00:00"))).total_seconds()


def fleet_table(agents: Iterable[dict[str, Any]], silent: set[str]) -> Table:
    now = datetime.now(UTC)
    table = Table(title="The fleet, as GET /v1/agents reports it", title_justify="left")
    for name in ("agent", "tenant", "type", "version", "status", "identity"):
        table.add_column(name)
    for name in ("last hb (s ago)", "last seq", "cpu %", "error rate"):
        table.add_column(name, justify="right")
    for a in sorted(agents, key=lambda a: (a["tenant"], a["agent_type"], a["agent_id"])):
        age = _age(a.get("last_heartbeat_at"), now)
        late = a.get("late_after") is not None and (_age(a["late_after"], now) or 0) > 0
        metrics = a.get("metrics") or {}
        error_rate = metrics.get("error_rate")
        status = Text(a["status"], style=STATUS_STYLE.get(a["status"], ""))
        if a["agent_id"] in silent:
            status.append(" (silent)", style="red")
        table.add_row(
            Text(a["agent_id"]),
            Text(a["tenant"]),
            Text(a["agent_type"]),
            Text(a["version"]),
            status,
            _identity(a.get("identity") or {}),
            Text("-" if age is None else f"{age:.1f}", style="red" if late else ""),
            str(a["last_seq"]),
            "-" if metrics.get("cpu_pct") is None else f"{metrics['cpu_pct']:.1f}",
            Text(
                "-" if error_rate is None else f"{error_rate:.3f}",
                style="yellow" if error_rate is not None and error_rate > 0.1 else "",
            ),
        )
    return table


def _identity(identity: dict[str, Any]) -> Text:
    status = identity.get("status") or "unsigned"
    text = Text(status, style="green" if status == "signed" else "red")
    if identity.get("key_id"):
        text.append(f" {identity['key_id'][:8]}", style="dim")
    return text


def rejections_table(rejections: list[dict[str, Any]]) -> Table:
    table = Table(title=f"Rejections recorded: {len(rejections)} (GET /v1/rejections)", title_justify="left")
    table.add_column("message")
    table.add_column("code")
    table.add_column("agent")
    table.add_column("reason", overflow="fold")
    for r in rejections:
        table.add_row(Text(r["id"]), Text(r["code"]), Text(r.get("agent_id") or "-"), Text(r["reason"][:400]))
    return table


def report(api: Api, fleet: list[SimAgent], console: Console, progress: Progress | None = None) -> bool:
    """Print the fleet, the spend and the rejections; True when the API shows every simulated agent
    and the fleet stopped each misbehaving agent."""
    expected = {s.agent_id for s in fleet}
    agents = [a for a in api.agents() if a["agent_id"] in expected]
    silent = {s.agent_id for s in fleet if s.silent}
    console.print(fleet_table(agents, silent))
    counts = Counter(a["status"] for a in agents)
    summary = Text("by status: ")
    for i, (status, n) in enumerate(sorted(counts.items())):
        summary.append(", " if i else "").append(status, style=STATUS_STYLE.get(status, "")).append(f" {n}")
    summary.append(
        f"  |  silent: {len(silent)} (the liveness sweep marked them late at 3 missed intervals and "
        "offline at 5; their alerts are in Slack below)"
    )
    console.print(summary)
    rejections = api.rejections()
    console.print(rejections_table(rejections))
    stopped_ok = True
    if progress is not None and progress.calls:
        console.print(demo_costs.spend_table(api, progress.calls))
        console.print(demo_costs.tenants_table(api, TENANTS))
        console.print(demo_costs.alerts_table(api.get("/v1/alerts", limit=200)["items"]))
        console.print(demo_costs.shared_table(api, progress.calls))
        for call_sim in progress.calls:
            if call_sim.behaviour in ("runaway", "failing", "budget", "shared"):
                if call_sim.refusal is None:
                    stopped_ok = False
                    console.print(f"[red]{call_sim.agent_id} ({call_sim.behaviour}) was never stopped[/]")
                else:
                    console.print(
                        f"{call_sim.agent_id} ({call_sim.behaviour}): {call_sim.calls} calls, then refused "
                        f"{call_sim.refused} times by its SDK after {call_sim.refused_after_s:.1f}s"
                    )
    missing = expected - {a["agent_id"] for a in agents}
    if missing:
        console.print(f"[red]the API does not show {len(missing)} agents: {', '.join(sorted(missing)[:10])}[/]")
    return not missing and stopped_ok


def sweep_and_slack(env: dict[str, str], fleet: list[SimAgent], timeout: float = 20.0) -> list[dict[str, Any]]:
    """Fire the minute job as Cloud Scheduler would (a tick on its topic) until every silent agent's
    alert reached the fake Slack server; returns the calls it recorded."""
    from google.cloud.pubsub_v1 import PublisherClient

    from emulators import fake_slack

    silent = [s.agent_id for s in fleet if s.silent]
    publisher = PublisherClient()
    topic = publisher.topic_path(env["GOOGLE_CLOUD_PROJECT"], "tick-liveness-sweep")
    deadline = time.monotonic() + timeout
    while True:
        publisher.publish(topic, json.dumps({"job": "liveness-sweep"}).encode(), job="liveness-sweep").result()
        time.sleep(2)
        calls = fake_slack.get_calls(env["SLACK_API_URL"])
        text = json.dumps(calls)
        if all(agent_id in text for agent_id in silent) or time.monotonic() > deadline:
            return calls


def show_slack(calls: list[dict[str, Any]], fleet: list[SimAgent], console: Console) -> bool:
    """Print what Slack received; True when every silent agent was announced (alone or in a group)."""
    from emulators import fake_slack

    console.print(Text("Slack (the fake Web API server's record)", style="bold"))
    for line in fake_slack.render(calls):
        console.print(Text(line))
    text = json.dumps(calls)
    missing = [s.agent_id for s in fleet if s.silent and s.agent_id not in text]
    if missing:
        console.print(f"[red]no Slack notice for silent agents: {', '.join(missing)}[/]")
    return not missing


def forgery(
    env: dict[str, str], api: Api, fleet: list[SimAgent], progress: Progress, keys_dir: Path, console: Console
) -> bool:
    """The outsider: an enrolled agent of the last tenant forges cost batches for an LLM agent of the first
    (one that records calls, so it has spend to protect)."""
    from google.cloud.pubsub_v1 import PublisherClient

    spenders = [c.agent.registration for c in progress.calls if c.behaviour == "normal"]
    victim = next((r for r in spenders if r.tenant == TENANTS[0]), fleet[0].registration)
    outsider = next(s.registration for s in fleet if s.registration.tenant != victim.tenant)
    outsider_key = AgentKey.load(demo_identity.key_path(keys_dir, outsider.agent_id))
    publisher = PublisherClient()
    try:
        return demo_identity.run(api, publisher, env["GOOGLE_CLOUD_PROJECT"], victim, outsider, outsider_key, console)
    finally:
        publisher.stop()


def _wait_for_rejections(api: Api, count: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if len(api.rejections()) >= count:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="emulators.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=54, help="simulated agents (at least 50 by default)")
    # 35 s: the first heartbeat round can take 8 s on a busy 2-core machine (4 s on a quiet one), and the runaway
    # and budget agents must still be stopped, and seen stopped, within the run.
    parser.add_argument("--duration", type=float, default=35.0, help="seconds the fleet heartbeats")
    parser.add_argument("--seed", type=int, default=None, help="random seed, for a repeatable run")
    parser.add_argument("--state-dir", type=Path, default=STATE_DIR)
    parser.add_argument(
        "--keep-up",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="after the demo, keep the stack (and its web console) up until Enter or Ctrl-C; "
        "the default when run from a terminal",
    )
    args = parser.parse_args(argv)
    console = Console()
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(width=150)  # rich assumes 80 columns when piped: too narrow for the fleet table
    rng = random.Random(args.seed)
    signal.signal(signal.SIGTERM, _raise_interrupt)  # `kill` stops the stack too, like Ctrl-C

    stack = Stack(args.state_dir, function_env=FUNCTION_ENV)
    if stack.running():
        console.print(f"[yellow]a demo stack from an earlier run is still up in {args.state_dir}; stopping it[/]")
        stack.down()
    started = time.monotonic()
    api: Api | None = None
    try:
        with console.status("starting the local stack (Pub/Sub and Firestore emulators, functions)..."):
            env = stack.up()
        console.print(f"stack up in {time.monotonic() - started:.1f}s; API at {env['FLEET_API_URL']}")
        console.print(f"web console at {env['FLEET_CONSOLE_URL']} (sign in with FLEET_API_KEY from {stack.env_file})")
        api = Api(env["FLEET_API_URL"], env["FLEET_API_KEY"])
        fleet = build_fleet(args.agents, rng)
        keys_dir = args.state_dir / "keys"
        shutil.rmtree(keys_dir, ignore_errors=True)  # a fresh stack knows none of an earlier run's keys
        progress = run_fleet(fleet, env, api, console, args.duration, rng, keys_dir)
        with console.status("letting the functions process the last heartbeats..."):
            time.sleep(1.5)
            _wait_for_rejections(api, 2, timeout=10)
        with console.status("running the liveness sweep (the minute job) and sending its Slack notices..."):
            slack_calls = sweep_and_slack(env, fleet)
        ok = report(api, fleet, console, progress) and progress.max_visible > 0
        console.print(Text("An agent instrumented only with OpenTelemetry (no SDK in its calls)", style="bold"))
        with console.status("an OpenTelemetry-instrumented agent calls a model; its spans go to fleet-otlp..."):
            otel = demo_otlp.run(env, api, console, keys_dir)
        console.print(Text("Remediation: a hung worker restarted by policy (no person involved)", style="bold"))
        with console.status("a worker's main loop hangs; the liveness ladder freezes it; its policy restarts it..."):
            healed = demo_remediation.run(env, api, console, keys_dir)
        console.print(Text("A forged cost batch from an outsider (signed telemetry)", style="bold"))
        with console.status("an outsider publishes cost batches for another tenant's agent..."):
            refused = forgery(env, api, fleet, progress, keys_dir, console)
        console.print(Text("Approval in Slack (four eyes)", style="bold"))
        with console.status("an agent asks before an expensive operation; two people click in Slack..."):
            approved = demo_approvals.run(
                env, fleet[0].registration, console, key_path=demo_identity.key_path(keys_dir, fleet[0].agent_id)
            )
        console.print(Text("Training jobs (queue, quotas, the local backend)", style="bold"))
        trained = demo_jobs.run(env, fleet[1].registration.agent_id, console)
        slack_calls = fake_slack.get_calls(env["SLACK_API_URL"])
        ok = show_slack(slack_calls, fleet, console) and ok and refused and approved and trained and otel and healed
        console.print(f"demo finished in {time.monotonic() - started:.0f}s")
        if args.keep_up if args.keep_up is not None else sys.stdin.isatty():
            console.print(
                f"the web console stays up at {env['FLEET_CONSOLE_URL']} (sign in with FLEET_API_KEY from "
                f"{stack.env_file}); press Enter or Ctrl-C to stop the stack"
            )
            with contextlib.suppress(EOFError):  # stdin closed: stop now
                input()
        return 0 if ok else 1
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]")
        return 130
    finally:
        if api is not None:
            api.close()
        stopping = time.monotonic()
        with console.status("stopping the stack..."):
            stack.down()
        console.print(f"stack stopped in {time.monotonic() - stopping:.1f}s; total {time.monotonic() - started:.0f}s")


if __name__ == "__main__":
    sys.exit(main())
