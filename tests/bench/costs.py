"""`make bench`, cost section: records per second, writes per record, enforcement latency, overshoot.

Everything goes through the real path: the SDK (``CostRecorder`` batching, ``CommandListener``) ->
Pub/Sub emulator push -> fleet-costs under functions-framework -> Firestore emulator, and commands
back on ``agent-commands`` to the SDK. Figures are live (the SDK publishes while the function
consumes, on the same two cores), each beside its baseline measured in the same run.
"""

from __future__ import annotations

import os
import statistics
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import requests
from fleet_agent.commands import CommandListener
from fleet_agent.contracts import DEFAULT_TOPICS, BudgetSpec, Command, CommandType, EventType, Registration, encode
from fleet_agent.costs import CallRefused, CostRecorder

from emulators.stack import ROOT, Stack
from tests.bench.run import UNSIGNED, LogCounter, publish_all, publish_then_push, publisher, wait_count

AGENTS = int(os.environ.get("BENCH_COST_AGENTS", 20))
RECORDS_PER_AGENT = int(os.environ.get("BENCH_COST_RECORDS", 3000))
BASELINE_RECORDS = int(os.environ.get("BENCH_COST_BASELINE_RECORDS", 3000))
PACED_SECONDS = int(os.environ.get("BENCH_COST_SECONDS", 30))
LIMIT_AGENTS = int(os.environ.get("BENCH_LIMIT_AGENTS", 10))
LIMIT_ROUNDS = int(os.environ.get("BENCH_LIMIT_ROUNDS", 2))
CALL_USD = Decimal("0.01")
#: A bench agent calls far faster than an LLM agent should: its tenant lifts the runaway rule.
NO_RUNAWAY = {"runaway_calls_per_minute": 10_000_000, "runaway_operation_min_calls": 10_000_000}
HOURLY_LIMIT_USD = Decimal("3")  # 300 calls: three seconds at 100 calls per second


class CountingPublisher:
    """The SDK's publisher, counting messages and remembering when each batch left (for latency)."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self.count = 0
        self.sent: list[tuple[float, str, bytes]] = []
        self._lock = threading.Lock()

    def topic_path(self, project: str, topic: str) -> str:
        return str(self._client.topic_path(project, topic))

    def publish(self, topic: str, data: bytes, **attrs: Any) -> Future[str]:
        with self._lock:
            self.count += 1
            self.sent.append((time.monotonic(), attrs.get("agent_id", ""), data))
        future: Future[str] = self._client.publish(topic, data, **attrs)
        return future


class Api:
    def __init__(self, stack: Stack) -> None:
        self.url, self.key = stack.env["FLEET_API_URL"], stack.env["FLEET_API_KEY"]

    def call(self, method: str, path: str, body: Any = None) -> Any:
        response = requests.request(
            method, self.url + path, json=body, headers={"Authorization": f"Bearer {self.key}"}, timeout=30
        )
        response.raise_for_status()
        return response.json()


def register(stack: Stack, client: Any, agent_ids: list[str], tenant: str, budget: BudgetSpec | None = None) -> None:
    counter = LogCounter(stack.logs / "fleet-registrations.log")
    regs = [
        encode(Registration(agent_id=a, tenant=tenant, name=a, agent_type="llm", version="1", owner="bench",
                            heartbeat_interval_s=30, budget=budget))
        for a in agent_ids
    ]  # fmt: skip
    publish_all(client, "agent-registrations", regs)
    wait_count(counter, len(agent_ids), lambda line: line.get("outcome") == "accepted", 120)


@dataclass
class Throughput:
    label: str
    records: int
    messages: int
    seconds: float
    writes: int = 0
    reads: int = 0

    @property
    def rate(self) -> float:
        return self.records / self.seconds


def drive(recorders: list[CostRecorder], per_recorder: int) -> None:
    """Record calls as fast as the SDK takes them, round-robin over the agents."""
    for _ in range(per_recorder):
        for recorder in recorders:
            with recorder.call("bench", model="gpt-4o") as call:
                call.tokens(120, 40)
                call.cost(CALL_USD)


def throughput(
    stack: Stack, client: Any, label: str, agents: list[str], per_agent: int, max_records: int
) -> Throughput:
    counter = LogCounter(stack.logs / "fleet-costs.log")
    counting = CountingPublisher(client)
    topic = client.topic_path(os.environ["GOOGLE_CLOUD_PROJECT"], DEFAULT_TOPICS[EventType.COST])
    recorders = [CostRecorder(a, counting, topic, max_records=max_records, max_delay_s=1.0) for a in agents]
    start = time.monotonic()
    drive(recorders, per_agent)
    for recorder in recorders:
        recorder.close()
    end = wait_count(counter, counting.count, lambda line: line.get("outcome") == "accepted", 900)
    lines = [line for line in counter.poll() if line.get("outcome") == "accepted"]
    return Throughput(
        label, len(agents) * per_agent, counting.count, end - start,
        writes=sum(x["firestore_writes"] for x in lines), reads=sum(x["firestore_reads"] for x in lines),
    )  # fmt: skip


def drained(stack: Stack, client: Any, label: str, agents: list[str], per_agent: int) -> Throughput:
    """The same batches built by the SDK, published with push paused, then delivered: the pipeline's
    own rate, without the SDK's CPU (which runs on the agents' machines) in the window."""
    from fleet_agent.contracts import Envelope

    counter = LogCounter(stack.logs / "fleet-costs.log")
    captured: list[tuple[bytes, dict[str, str]]] = []

    class Capture:
        def publish(self, topic: str, data: bytes, **attrs: str) -> Future[str]:
            captured.append((data, attrs))
            done: Future[str] = Future()
            done.set_result("captured")
            return done

    recorders = [CostRecorder(a, Capture(), "captured", max_records=200, max_delay_s=60) for a in agents]
    drive(recorders, per_agent)
    for recorder in recorders:
        recorder.close()
    records = sum(len(Envelope.model_validate_json(body).data["records"]) for body, _ in captured)
    start = publish_then_push(stack, client, "agent-costs-push", captured)
    end = wait_count(counter, len(captured), lambda line: line.get("outcome") == "accepted", 900)
    lines = [line for line in counter.poll() if line.get("outcome") == "accepted"]
    return Throughput(
        label, records, len(captured), end - start,
        writes=sum(x["firestore_writes"] for x in lines), reads=sum(x["firestore_reads"] for x in lines),
    )  # fmt: skip


def paced(stack: Stack, client: Any, agent_id: str, seconds: int, rate: float) -> Throughput:
    """One agent making ``rate`` calls a second: Firestore writes and reads per record."""
    counter = LogCounter(stack.logs / "fleet-costs.log")
    counting = CountingPublisher(client)
    topic = client.topic_path(os.environ["GOOGLE_CLOUD_PROJECT"], DEFAULT_TOPICS[EventType.COST])
    recorder = CostRecorder(agent_id, counting, topic)
    start = time.monotonic()
    calls = int(seconds * rate)
    for i in range(calls):
        target = start + i / rate
        delay = target - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        with recorder.call("bench", model="gpt-4o") as call:
            call.tokens(120, 40)
            call.cost(CALL_USD)
    recorder.close()
    end = wait_count(counter, counting.count, lambda line: line.get("outcome") == "accepted", 300)
    lines = [x for x in counter.poll() if x.get("outcome") == "accepted" and x.get("agent_id") == agent_id]
    return Throughput(
        f"one agent, {rate:.0f} calls/s for {seconds} s", calls, counting.count, end - start,
        writes=sum(x["firestore_writes"] for x in lines), reads=sum(x["firestore_reads"] for x in lines),
    )  # fmt: skip


@dataclass
class Stopped:
    agent_id: str
    latency_s: float | None = None
    calls_before_refusal: int = 0
    crossing_batch_records: int = 0
    overshoot_usd: Decimal = Decimal(0)
    batch_usd: Decimal = Decimal(0)
    errors: list[str] = field(default_factory=list)


def enforcement(stack: Stack, client: Any, api: Api, round_no: int) -> list[Stopped]:
    """Agents with an hourly limit each make 100 calls a second until the SDK refuses; measures the
    time from publishing the batch that crossed the limit to ``budget_exhausted`` at the agent, and
    how far past the limit the counted spend went."""
    tenant = f"bench-limit-{round_no}"
    agents = [f"bench-limit-{round_no}-{i:03d}" for i in range(LIMIT_AGENTS)]
    api.call("PUT", f"/v1/tenants/{tenant}/protection", NO_RUNAWAY)
    register(stack, client, agents, tenant, BudgetSpec(hourly_usd=HOURLY_LIMIT_USD))
    counting = CountingPublisher(client)
    topic = client.topic_path(os.environ["GOOGLE_CLOUD_PROJECT"], DEFAULT_TOPICS[EventType.COST])
    arrived: dict[str, float] = {}

    def on_command(agent_id: str, command: Any) -> None:
        if command.command is CommandType.BUDGET_EXHAUSTED:
            arrived.setdefault(agent_id, time.monotonic())

    listener = CommandListener(os.environ["GOOGLE_CLOUD_PROJECT"], label=f"bench-{round_no}", on_command=on_command)
    recorders = {a: CostRecorder(a, counting, topic) for a in agents}

    for recorder in recorders.values():
        listener.add(Target(recorder))
    listener.start()
    results = {a: Stopped(a) for a in agents}

    def run(agent_id: str, offset: float) -> None:
        recorder = recorders[agent_id]
        time.sleep(offset)
        start = time.monotonic()
        for i in range(100 * 30):
            delay = start + i / 100 - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            try:
                with recorder.call("bench", model="gpt-4o") as call:
                    call.tokens(120, 40)
                    call.cost(CALL_USD)
            except CallRefused:
                results[agent_id].calls_before_refusal = i
                return
        results[agent_id].errors.append("never refused")

    threads = [threading.Thread(target=run, args=(a, i * 0.137)) for i, a in enumerate(agents)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for recorder in recorders.values():
        recorder.close()
    counter = LogCounter(stack.logs / "fleet-costs.log")
    counter.offset = 0
    wait_count(
        counter, counting.count, lambda line: line.get("outcome") == "accepted" and line.get("agent_id") in results, 300
    )
    listener.close()
    limit_calls = int(HOURLY_LIMIT_USD / CALL_USD)
    for agent_id, result in results.items():
        sent = [(at, data) for at, a, data in counting.sent if a == agent_id]
        total = 0
        for at, data in sent:
            records = data.count(b'"call_id"')
            total += records
            if total >= limit_calls:
                result.crossing_batch_records = records
                result.batch_usd = CALL_USD * records
                if agent_id in arrived:
                    result.latency_s = arrived[agent_id] - at
                break
        usage = api.call("GET", f"/v1/agents/{agent_id}/usage")["periods"]["hour"]
        result.overshoot_usd = Decimal(usage["spend_usd"]) - HOURLY_LIMIT_USD
    return list(results.values())


class Target:
    """A recorder as a command listener's target: it takes the commands (blocks, lease grants) to the recorder."""

    def __init__(self, recorder: CostRecorder) -> None:
        self.recorder = recorder

    @property
    def agent_id(self) -> str:
        return self.recorder.agent_id

    def apply_command(self, data: bytes) -> Any:
        command = Command.model_validate_json(data)
        return command if self.recorder.apply(command) else None


def describe() -> list[str]:
    return [
        f"{AGENTS} agents record {RECORDS_PER_AGENT} calls each with the SDK's `CostRecorder` (batches of up to 200 "
        f"records, flushed after 1 s); the baseline sends {BASELINE_RECORDS} calls one record per message "
        "(`max_records=1`). *End to end* times from the first recorded call to the function logging the last batch, "
        "with the SDK, the emulators and the function sharing the machine; *pipeline only* publishes the same SDK "
        "batches with push paused, then resumes push and times the delivery (the SDK's CPU runs on the agents' "
        f"machines in real life). One agent then calls at 100 calls/s for {PACED_SECONDS} s. Finally "
        f"{LIMIT_AGENTS * LIMIT_ROUNDS} agents with an hourly limit of ${HOURLY_LIMIT_USD} call at 100 calls/s "
        f"(${CALL_USD} a call) until their SDK refuses; latency is from publishing the batch whose records cross the "
        "limit to `budget_exhausted` arriving at the agent's `CommandListener`; overshoot is the hour's counted "
        "spend minus the limit once every batch was processed.",
    ]


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(pct / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]


def main(report: Callable[[str], None] = print) -> list[str]:
    stack = Stack(ROOT / ".stack-bench", function_env=UNSIGNED, create_admin_key=True)
    try:
        stack.up()
        client = publisher()
        api = Api(stack)
        tenant = "bench-costs"
        api.call("PUT", f"/v1/tenants/{tenant}/protection", NO_RUNAWAY)
        agents = [f"bench-cost-{i:03d}" for i in range(AGENTS)]
        register(stack, client, [*agents, "bench-paced"], tenant)
        print("warm-up ...", file=sys.stderr)
        throughput(stack, client, "warm-up", agents, 200, 200)
        print("cost records, SDK batching ...", file=sys.stderr)
        batched = throughput(
            stack, client, "SDK batching (up to 200 records a message)", agents, RECORDS_PER_AGENT, 200
        )
        print(f"  {batched.rate:.0f} records/s", file=sys.stderr)
        print("cost records, SDK batches delivered with push paused then resumed ...", file=sys.stderr)
        pipeline = drained(stack, client, "pipeline only: SDK batches published first, then pushed", agents,
                           RECORDS_PER_AGENT)  # fmt: skip
        print(f"  {pipeline.rate:.0f} records/s", file=sys.stderr)
        print("cost records, one per message (baseline) ...", file=sys.stderr)
        single = throughput(stack, client, "one record per message (baseline)", agents, BASELINE_RECORDS // AGENTS, 1)
        print(f"  {single.rate:.0f} records/s", file=sys.stderr)
        print("one agent at 100 calls/s ...", file=sys.stderr)
        steady = paced(stack, client, "bench-paced", PACED_SECONDS, 100.0)
        print("enforcement latency and overshoot ...", file=sys.stderr)
        stopped: list[Stopped] = []
        for round_no in range(LIMIT_ROUNDS):
            stopped += enforcement(stack, client, api, round_no)
    finally:
        stack.down()

    latencies = [s.latency_s for s in stopped if s.latency_s is not None]
    overshoots = [s.overshoot_usd for s in stopped]
    within = sum(1 for s in stopped if s.overshoot_usd <= s.batch_usd)
    crossing = [s.crossing_batch_records for s in stopped]
    lines = [
        "| cost records, end to end (SDK -> Pub/Sub -> fleet-costs -> Firestore) | records | messages | seconds "
        "| records/s | writes/record |",
        "|---|---|---|---|---|---|",
    ]
    for run in (batched, pipeline, single):
        lines.append(
            f"| {run.label} | {run.records} | {run.messages} | {run.seconds:.1f} | {run.rate:.0f} | "
            f"{run.writes / run.records:.3f} |"
        )
    lines += [
        f"| **SDK batching / one per message** | | | | **{batched.rate / single.rate:.1f}x** | |",
        "",
        "| one agent at 100 calls/s | figure |",
        "|---|---|",
        f"| calls recorded | {steady.records} in {steady.messages} batches |",
        f"| Firestore writes per record | {steady.writes / steady.records:.4f} ({steady.writes} writes) |",
        f"| Firestore reads per record | {steady.reads / steady.records:.4f} ({steady.reads} reads) |",
        "",
        f"| hard limit (${HOURLY_LIMIT_USD}/hour, ${CALL_USD} a call, 100 calls/s), {len(stopped)} agents | figure |",
        "|---|---|",
        f"| agents stopped by the SDK (CallRefused) | {sum(1 for s in stopped if not s.errors)}/{len(stopped)} |",
        f"| enforcement latency p50 / p95 / max (crossing batch published -> budget_exhausted at the agent) | "
        f"{statistics.median(latencies):.2f} / {percentile(latencies, 95):.2f} / {max(latencies):.2f} s |",
        f"| overshoot past the limit, median / max | ${statistics.median(overshoots):.2f} "
        f"({statistics.median(overshoots) / HOURLY_LIMIT_USD:.0%}) / ${max(overshoots):.2f} "
        f"({max(overshoots) / HOURLY_LIMIT_USD:.0%}) |",
        f"| records in the crossing SDK batch, median | {statistics.median(crossing):.0f} "
        f"(${statistics.median(s.batch_usd for s in stopped):.2f}) |",
        f"| agents whose overshoot stayed within one SDK batch | {within}/{len(stopped)} |",
    ]
    for line in lines:
        report(line)
    return lines


if __name__ == "__main__":
    main()
