"""`make bench`: end-to-end figures on the local stack, each beside a baseline measured in the same run.

- Heartbeats per second through the real push path (emulator -> functions-framework -> Firestore),
  against the bare baseline: the same push path with a handler doing one Firestore write. Each
  round publishes its messages with push paused, then resumes push and times the delivery, so the
  publisher's CPU is not in the window; baseline and heartbeats alternate, round by round.
- Firestore reads and writes per accepted heartbeat (from the functions' structured logs).
- Import time of the function module (cold start), and the first event's latency after it.
- Cost events (tests/bench/costs.py), the liveness sweep with its Slack notices (tests/bench/sweep.py)
  the Slack app's answers to signed requests (tests/bench/slack.py), training jobs: submit,
  admission, launch, the reconcile tick (tests/bench/jobs.py), and the learned models: scoring per
  heartbeat, retraining on a million rows, the push path with models in service (tests/bench/ml.py).

Two stacks are measured: the default (one instance, whose agent cache saves the read), and the
cache switched off, which is what many instances without affinity look like in Google Cloud.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fleet_agent.contracts import Heartbeat, Registration, encode

from emulators.stack import ROOT, Stack
from shared.platform import topology
from tests.bench import models

AGENTS = int(os.environ.get("BENCH_AGENTS", 200))
#: A multiple of the history chunk (10), so each round flushes whole chunks.
BEATS_PER_AGENT = int(os.environ.get("BENCH_BEATS", 20))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", 5))
IMPORT_SAMPLES = 7


class LogCounter:
    """Counts a function's structured log lines as they are appended (one line per event)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = path.stat().st_size if path.exists() else 0
        self.lines: list[dict[str, Any]] = []

    def poll(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return self.lines
        with self.path.open("rb") as handle:
            handle.seek(self.offset)
            chunk = handle.read()
        end = chunk.rfind(b"\n") + 1
        self.offset += end
        for raw in chunk[:end].splitlines():
            if raw.startswith(b"{"):
                try:
                    self.lines.append(json.loads(raw))
                except json.JSONDecodeError:
                    continue
        return self.lines


def wait_count(counter: LogCounter, want: int, done: Callable[[dict[str, Any]], bool], timeout: float) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sum(1 for line in counter.poll() if done(line)) >= want:
            return time.monotonic()
        time.sleep(0.05)
    got = sum(1 for line in counter.poll() if done(line))
    raise RuntimeError(f"{counter.path.name}: only {got} of {want} events processed in {timeout}s")


def publisher() -> Any:
    from google.cloud import pubsub_v1

    settings = pubsub_v1.types.BatchSettings(max_messages=500, max_bytes=1_000_000, max_latency=0.01)
    return pubsub_v1.PublisherClient(batch_settings=settings)


def publish_all(client: Any, topic: str, messages: list[tuple[bytes, dict[str, str]]]) -> None:
    path = client.topic_path(os.environ["GOOGLE_CLOUD_PROJECT"], topic)
    futures = [client.publish(path, body, **attrs) for body, attrs in messages]
    for future in futures:
        future.result()


def publish_then_push(
    stack: Stack, client: Any, subscription: str, messages: list[tuple[bytes, dict[str, str]]]
) -> float:
    """Publish with push delivery paused, then resume it; returns when delivery resumed.

    The publisher's own CPU then stays out of the measured window: it times the push path alone.
    """
    from google.cloud import pubsub_v1

    from emulators.bootstrap import push_endpoint

    topo = topology.load()
    sub = next(s for s in topo.subscriptions if s.name == subscription)
    project = os.environ["GOOGLE_CLOUD_PROJECT"]
    subscriber = pubsub_v1.SubscriberClient()
    path = subscriber.subscription_path(project, subscription)
    url = stack.env[f"FLEET_FUNCTION_URL_{sub.push_to.upper().replace('-', '_')}"]
    subscriber.modify_push_config(request={"subscription": path, "push_config": {}})
    try:
        publish_all(client, sub.topic, messages)
    finally:
        endpoint = push_endpoint(url, project, sub.topic)
        subscriber.modify_push_config(request={"subscription": path, "push_config": {"push_endpoint": endpoint}})
    subscriber.close()
    return time.monotonic()


@dataclass
class Run:
    name: str
    messages: int
    seconds: float
    accepted: int = 0
    reads: int = 0
    writes: int = 0
    conflicts: int = 0

    @property
    def rate(self) -> float:
        return self.messages / self.seconds


def heartbeats(prefix: str, start_seq: int) -> list[tuple[bytes, dict[str, str]]]:
    """Round-robin over agents, seq growing per agent: how a fleet's heartbeats interleave."""
    now = datetime.now(UTC)
    out = []
    for seq in range(start_seq, start_seq + BEATS_PER_AGENT):
        for i in range(AGENTS):
            hb = Heartbeat(
                agent_id=f"{prefix}-{i:05d}", seq=seq, sent_at=now, status="busy",
                metrics={"cpu_pct": 40.0, "memory_pct": 50.0, "error_rate": 0.01, "latency_ms_p95": 800.0,
                         "active_tasks": 2, "completed_tasks": seq, "failed_tasks": 0, "tokens_per_s": 12.5},
            )  # fmt: skip
            out.append(encode(hb))
    return out


def run_baseline(stack: Stack, client: Any, messages: list[tuple[bytes, dict[str, str]]]) -> Run:
    counter = LogCounter(stack.logs / "bench-baseline.log")
    start = publish_then_push(stack, client, "bench-baseline-push", messages)
    end = wait_count(counter, len(messages), lambda line: line.get("outcome") == "accepted", 300)
    return Run("baseline (push + 1 Firestore write)", len(messages), end - start, accepted=len(messages),
               writes=len(messages))  # fmt: skip


def run_heartbeats(stack: Stack, client: Any, messages: list[tuple[bytes, dict[str, str]]]) -> Run:
    counter = LogCounter(stack.logs / "fleet-heartbeats.log")
    start = publish_then_push(stack, client, "agent-heartbeats-push", messages)
    end = wait_count(counter, len(messages), lambda line: line.get("outcome") in ("accepted", "stale"), 300)
    lines = [line for line in counter.poll() if line.get("outcome") == "accepted"]
    return Run(
        "heartbeat function", len(messages), end - start, accepted=len(lines),
        reads=sum(x["firestore_reads"] for x in lines), writes=sum(x["firestore_writes"] for x in lines),
        conflicts=sum(x.get("firestore_conflicts", 0) for x in lines),
    )  # fmt: skip


def register(stack: Stack, client: Any, prefix: str) -> None:
    counter = LogCounter(stack.logs / "fleet-registrations.log")
    regs = [
        encode(Registration(agent_id=f"{prefix}-{i:05d}", tenant="bench", name=f"bench {i}", agent_type="llm",
                            version="1", owner="bench", heartbeat_interval_s=30))
        for i in range(AGENTS)
    ]  # fmt: skip
    publish_all(client, "agent-registrations", regs)
    wait_count(counter, AGENTS, lambda line: line.get("outcome") == "accepted", 120)


def throughput(
    label: str, function_env: dict[str, str], measure: Callable[[Stack], AbstractContextManager[Any]] | None = None
) -> list[tuple[Run, Run]]:
    """Baseline and heartbeat rounds on a fresh stack, with the learned models in service (``measure``
    wraps the measured rounds, after the warm-up: a profiler, say)."""
    stack = Stack(ROOT / ".stack-bench", function_env=function_env, local_only=True, create_admin_key=False)
    pairs = []
    try:
        stack.up()
        models.in_service(stack)
        client = publisher()
        prefix = f"bench-{label}"
        register(stack, client, prefix)
        # A warm-up round, not reported: the emulators are JVMs, and their first few thousand
        # requests run slower while the JIT compiles (production Firestore has no such phase).
        warm = heartbeats(prefix, 1)
        run_baseline(stack, client, warm)
        run_heartbeats(stack, client, warm)
        with measure(stack) if measure else nullcontext():
            for round_no in range(ROUNDS):
                messages = heartbeats(prefix, 1 + (round_no + 1) * BEATS_PER_AGENT)
                base = run_baseline(stack, client, messages)
                beat = run_heartbeats(stack, client, messages)
                print(f"  [{label}] round {round_no + 1}: baseline {base.rate:.0f}/s, heartbeats {beat.rate:.0f}/s",
                      file=sys.stderr)  # fmt: skip
                pairs.append((base, beat))
    finally:
        stack.down()
    return pairs


def row(label: str, round_name: str, base: Run, beat: Run) -> str:
    accepted = max(beat.accepted, 1)
    return (
        f"| {label} | {round_name} | {base.rate:.0f} | {beat.rate:.0f} | {beat.rate / base.rate:.0%} | "
        f"{beat.accepted}/{beat.messages} | {beat.reads / accepted:.3f} | {beat.writes / accepted:.3f} | "
        f"{beat.conflicts} |"
    )


IMPORT_SNIPPET = """
import sys, time, json
sys.path.insert(0, {functions!r})
import functions_framework  # loaded by the runtime before the function's module
t0 = time.perf_counter()
import main
t1 = time.perf_counter()
heavy = sorted(m for m in ("google.cloud.firestore", "sklearn", "kubernetes", "matplotlib") if m in sys.modules)
print(json.dumps({{"import_ms": (t1 - t0) * 1000, "heavy": heavy}}))
"""


def import_times() -> dict[str, Any]:
    samples, total, heavy = [], [], []
    for _ in range(IMPORT_SAMPLES):
        start = time.perf_counter()
        out = subprocess.run(
            [sys.executable, "-c", IMPORT_SNIPPET.format(functions=str(ROOT / "functions"))],
            capture_output=True, text=True, check=True, cwd=ROOT,
        )  # fmt: skip
        total.append((time.perf_counter() - start) * 1000)
        result = json.loads(out.stdout.strip().splitlines()[-1])
        samples.append(result["import_ms"])
        heavy = result["heavy"]
    return {"module_ms": statistics.median(samples), "process_ms": statistics.median(total), "heavy": heavy}


FIRST_EVENT_SNIPPET = """
import sys, time, json, base64
sys.path.insert(0, {functions!r})
import functions_framework
from cloudevents.http import CloudEvent
t0 = time.perf_counter()
import main
t1 = time.perf_counter()
data = {{"message": {{"data": base64.b64encode(b"{{}}").decode(), "attributes": {{}}, "messageId": "cold-1"}}}}
event = CloudEvent({{"type": "google.cloud.pubsub.topic.v1.messagePublished", "source": "//pubsub/bench",
                    "id": "cold-1"}}, data)
main.on_heartbeat(event)  # a rejected event: decode, then one Firestore write (the rejection)
t2 = time.perf_counter()
print(json.dumps({{"import_ms": (t1 - t0) * 1000, "first_event_ms": (t2 - t1) * 1000}}))
"""


def first_event() -> dict[str, float]:
    """Cold start as Cloud Functions sees it: module import, then the first event (Firestore client built)."""
    stack = Stack(ROOT / ".stack-bench", create_admin_key=False)
    firsts = []
    try:
        env = stack.up()
        for _ in range(3):
            out = subprocess.run(
                [sys.executable, "-c", FIRST_EVENT_SNIPPET.format(functions=str(ROOT / "functions"))],
                capture_output=True, text=True, check=True, cwd=ROOT, env={**os.environ, **env},
            )  # fmt: skip
            firsts.append(json.loads(out.stdout.strip().splitlines()[-1])["first_event_ms"])
    finally:
        stack.down()
    return {"first_event_ms": statistics.median(firsts)}


def heartbeat_section(
    command: str = "make bench", measure: Callable[[str, Stack], AbstractContextManager[Any]] | None = None
) -> list[str]:
    """Import time, the first event, and heartbeat throughput in both configurations: the section's lines."""
    started = datetime.now(UTC)
    print("measuring import time ...", file=sys.stderr)
    imports = import_times()
    print("measuring the first event after a cold start ...", file=sys.stderr)
    cold = first_event()
    runs: dict[str, list[tuple[Run, Run]]] = {}
    for label, env in (("cache", {}), ("nocache", {"FLEET_AGENT_CACHE_SIZE": "0"})):
        print(f"measuring throughput ({label}) ...", file=sys.stderr)
        runs[label] = throughput(label, env, measure=functools.partial(measure, label) if measure else None)
    lines = [
        f"Measured {started:%Y-%m-%d %H:%M} UTC with `{command}` on {platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}; {AGENTS} agents x {BEATS_PER_AGENT} heartbeats a round, "
        f"{ROUNDS} rounds per configuration after one warm-up round, each round's baseline measured just "
        "before its heartbeats; the anomaly and failure models in service.",
        "",
        "| configuration | round | baseline msg/s | heartbeat msg/s | ratio | accepted | reads/accepted "
        "| writes/accepted | conflicts |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for label, pairs in (
        ("one instance, agent cache on", runs["cache"]),
        ("agent cache off (many instances)", runs["nocache"]),
    ):
        for i, (base, beat) in enumerate(pairs, 1):
            lines.append(row(label, str(i), base, beat))
        total_base = Run("", sum(b.messages for b, _ in pairs), sum(b.seconds for b, _ in pairs))
        total = Run(
            "", sum(h.messages for _, h in pairs), sum(h.seconds for _, h in pairs),
            accepted=sum(h.accepted for _, h in pairs), reads=sum(h.reads for _, h in pairs),
            writes=sum(h.writes for _, h in pairs), conflicts=sum(h.conflicts for _, h in pairs),
        )  # fmt: skip
        lines.append(row(f"**{label}**", "**all**", total_base, total))
    return [
        *lines,
        "",
        "| cold start | figure |",
        "|---|---|",
        f"| `import main` (functions/main.py, all entry points), median of {IMPORT_SAMPLES} fresh processes "
        f"| {imports['module_ms']:.0f} ms |",
        f"| whole process: interpreter + functions_framework + main | {imports['process_ms']:.0f} ms |",
        f"| heavy modules loaded at import | {', '.join(imports['heavy']) or 'none'} |",
        f"| first event after import (builds the Firestore client, one write), median of 3 | "
        f"{cold['first_event_ms']:.0f} ms |",
    ]


def main() -> int:
    lines = heartbeat_section()
    print("measuring cost events ...", file=sys.stderr)
    from tests.bench import costs

    cost_lines = costs.main(report=lambda line: None)
    print("measuring the liveness sweep and its notifications ...", file=sys.stderr)
    from tests.bench import sweep

    sweep_lines = sweep.main(report=lambda line: None)
    print("measuring the Slack app ...", file=sys.stderr)
    from tests.bench import slack

    slack_lines = slack.main(report=lambda line: None)
    print("measuring training jobs ...", file=sys.stderr)
    from tests.bench import jobs

    job_lines = jobs.main(report=lambda line: None)
    print("measuring the learned models ...", file=sys.stderr)
    from tests.bench import ml

    ml_lines = ml.main(report=lambda line: None)

    lines += ["", "### Cost events", "", *costs.describe(), "", *cost_lines]
    lines += ["", "### Liveness sweep and notifications", "", *sweep.describe(), "", *sweep_lines]
    lines += ["", "### Slack app", "", *slack.describe(), "", *slack_lines]
    lines += ["", "### Training jobs", "", *jobs.describe(), "", *job_lines]
    lines += ["", "### Learned models", "", *ml.describe(), "", *ml_lines]
    text = "\n".join(lines)
    print(text)
    out = ROOT / ".stack-bench-results.md"
    out.write_text(text + "\n")
    print(f"\n(written to {out.relative_to(ROOT)}; copy into docs/benchmarks.md)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
