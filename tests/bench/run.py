"""`make bench`: end-to-end figures on the local stack, each beside a baseline measured in the same run.

- Heartbeats per second through the real push path (emulator -> functions-framework -> Firestore),
  against the bare baseline: the same push path with a handler doing one Firestore write. Each
  round publishes its messages with push paused, then resumes push and times the delivery, so the
  publisher's CPU is not in the window; baseline and heartbeats alternate, round by round.
- Firestore reads and writes per accepted heartbeat (from the functions' structured logs).
- Import time of the function module (cold start), and the first event's latency after it.
- Cost events (tests/bench/costs.py), budget leases beside today's path (tests/bench/leases.py),
  the liveness sweep with its Slack notices (tests/bench/sweep.py), critical alerts sent at once
  beside the minute job (tests/bench/alert_latency.py),
  the Slack app's answers to signed requests (tests/bench/slack.py), training jobs: submit,
  admission, launch, the reconcile tick (tests/bench/jobs.py), and the learned models: scoring per
  heartbeat, retraining on a million rows, the push path with models in service (tests/bench/ml.py),
  the web console's pages in Chromium beside the API's JSON (tests/bench/console.py), the SDK's drop-in
  integrations beside the bare clients (tests/bench/integrations.py), and OTLP GenAI ingest beside cost
  batches (tests/bench/otlp.py).

Two stacks are measured: the default (one instance, whose agent cache saves the read), and the
cache switched off, which is what many instances without affinity look like in Google Cloud.

Signed telemetry: on each stack, two fleets of the same size send the same heartbeats in every round:
unsigned agents in an ``optional`` tenant (``bench``) and agents enrolled with a token, whose every
heartbeat is signed, in a ``required`` tenant (``bench-signed``); the ratio of the two is what
signatures cost the push path. The other sections' agents are unsigned, in ``optional`` tenants
(:data:`UNSIGNED`): they measure their own paths, and tests/bench/signing.py measures what signing and
verifying add per event in process.
"""

from __future__ import annotations

import functools
import importlib
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
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from fleet_agent.contracts import Heartbeat, KeyClaim, Registration, encode
from fleet_agent.identity import AgentKey

from emulators.stack import ROOT, Stack
from shared.platform import topology
from tests.bench import models

AGENTS = int(os.environ.get("BENCH_AGENTS", 200))
#: A multiple of the history chunk (10), so each round flushes whole chunks.
BEATS_PER_AGENT = int(os.environ.get("BENCH_BEATS", 20))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", 5))
IMPORT_SAMPLES = 7
#: The stacks of the sections that are not about signatures: unsigned agents, accepted as in an
#: ``optional`` tenant (the identity policy is the deployment default, ``required``, otherwise).
UNSIGNED = {"FLEET_IDENTITY_POLICY": "optional"}
#: The tenant of the unsigned heartbeat fleet (``optional``) and of the signed one (``required``).
TENANT, SIGNED_TENANT = "bench", "bench-signed"


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


@dataclass(frozen=True)
class Fleet:
    """The bench's agents of one kind: ``<prefix>-00000``..., in ``tenant``, signing with ``keys`` when given."""

    prefix: str
    tenant: str
    keys: list[AgentKey] | None = None

    def agent_id(self, i: int) -> str:
        return f"{self.prefix}-{i:05d}"


def heartbeats(fleet: Fleet, start_seq: int) -> list[tuple[bytes, dict[str, str]]]:
    """Round-robin over agents, seq growing per agent: how a fleet's heartbeats interleave."""
    now = datetime.now(UTC)
    out = []
    for seq in range(start_seq, start_seq + BEATS_PER_AGENT):
        for i in range(AGENTS):
            hb = Heartbeat(
                agent_id=fleet.agent_id(i), seq=seq, sent_at=now, status="busy",
                metrics={"cpu_pct": 40.0, "memory_pct": 50.0, "error_rate": 0.01, "latency_ms_p95": 800.0,
                         "active_tasks": 2, "completed_tasks": seq, "failed_tasks": 0, "tokens_per_s": 12.5},
            )  # fmt: skip
            signer = fleet.keys[i] if fleet.keys else None
            out.append(encode(hb, signer=signer, tenant=fleet.tenant))
    return out


def run_baseline(stack: Stack, client: Any, messages: list[tuple[bytes, dict[str, str]]]) -> Run:
    counter = LogCounter(stack.logs / "bench-baseline.log")
    start = publish_then_push(stack, client, "bench-baseline-push", messages)
    end = wait_count(counter, len(messages), lambda line: line.get("outcome") == "accepted", 300)
    return Run("baseline (push + 1 Firestore write)", len(messages), end - start, accepted=len(messages),
               writes=len(messages))  # fmt: skip


def run_heartbeats(
    stack: Stack, client: Any, messages: list[tuple[bytes, dict[str, str]]], name: str = "heartbeat function"
) -> Run:
    counter = LogCounter(stack.logs / "fleet-heartbeats.log")
    start = publish_then_push(stack, client, "agent-heartbeats-push", messages)
    end = wait_count(counter, len(messages), lambda line: line.get("outcome") in ("accepted", "stale"), 300)
    lines = [line for line in counter.poll() if line.get("outcome") == "accepted"]
    return Run(
        name, len(messages), end - start, accepted=len(lines),
        reads=sum(x["firestore_reads"] for x in lines), writes=sum(x["firestore_writes"] for x in lines),
        conflicts=sum(x.get("firestore_conflicts", 0) for x in lines),
    )  # fmt: skip


def fresh_store() -> None:
    """This process's Firestore client and settings built again, for the stack now running (each
    configuration starts a stack of its own, on new ports)."""
    from shared.platform import settings
    from shared.store import db

    db._client = None
    settings.get.cache_clear()


def set_policy(tenant: str, policy: str) -> None:
    """The tenant's identity policy, in its settings document (as ``PUT /v1/tenants/{t}/identity`` writes it)."""
    from shared.store import db

    db.client().collection("tenants").document(tenant).set({"identity": {"policy": policy}}, merge=True)


def enrollment_token(stack: Stack, fleet: Fleet) -> str:
    """A token for the whole fleet (its prefix, one use per agent), stored as the API would store it."""
    from fleet_agent.identity import EnrollmentToken as TokenText

    from shared.domain.enrollment import EnrollmentToken
    from shared.store import enrollment_tokens

    text = TokenText.new(stack.env["FLEET_PUBLIC_KEY"])
    now = datetime.now(UTC)
    enrollment_tokens.create(
        EnrollmentToken(
            token_id=text.token_id, tenant=fleet.tenant, secret_sha256=text.secret_sha256, label="make bench",
            agent_prefix=f"{fleet.prefix}-", max_uses=AGENTS, expires_at=now + timedelta(hours=1), created_at=now,
            created_by="api:bench",
        )
    )  # fmt: skip
    return str(text)


def register(stack: Stack, client: Any, fleet: Fleet) -> None:
    """Register the fleet; a signing fleet enrolls (its token and each agent's new public key, signed)."""
    counter = LogCounter(stack.logs / "fleet-registrations.log")
    token = enrollment_token(stack, fleet) if fleet.keys else None
    regs = []
    for i in range(AGENTS):
        reg = Registration(
            agent_id=fleet.agent_id(i), tenant=fleet.tenant, name=f"bench {i}", agent_type="llm", version="1",
            owner="bench", heartbeat_interval_s=30,
        )  # fmt: skip
        if fleet.keys:
            claim = KeyClaim(public_key=fleet.keys[i].public_key, enrollment_token=token)
            reg = reg.model_copy(update={"identity": claim, "sent_at": datetime.now(UTC)})
        regs.append(encode(reg, signer=fleet.keys[i] if fleet.keys else None))
    publish_all(client, "agent-registrations", regs)
    wait_count(counter, AGENTS, lambda line: line.get("outcome") == "accepted", 120)


@dataclass
class Round:
    """One round: the bare baseline, the unsigned fleet's heartbeats, the signed fleet's (same counts)."""

    base: Run
    beat: Run
    signed: Run


def throughput(
    label: str, function_env: dict[str, str], measure: Callable[[Stack], AbstractContextManager[Any]] | None = None
) -> list[Round]:
    """Baseline, unsigned and signed heartbeat rounds on a fresh stack, with the learned models in service
    (``measure`` wraps the measured rounds, after the warm-up: a profiler, say)."""
    stack = Stack(ROOT / ".stack-bench", function_env=function_env, local_only=True, create_admin_key=False)
    rounds = []
    try:
        stack.up()
        fresh_store()
        models.in_service(stack)
        client = publisher()
        plain = Fleet(f"bench-{label}", TENANT)
        signed = Fleet(f"bench-{label}-signed", SIGNED_TENANT, [AgentKey.generate() for _ in range(AGENTS)])
        set_policy(TENANT, "optional")
        set_policy(SIGNED_TENANT, "required")
        register(stack, client, plain)
        register(stack, client, signed)
        # A warm-up round, not reported: the emulators are JVMs, and their first few thousand
        # requests run slower while the JIT compiles (production Firestore has no such phase).
        warm = heartbeats(plain, 1)
        run_baseline(stack, client, warm)
        run_heartbeats(stack, client, warm)
        run_heartbeats(stack, client, heartbeats(signed, 1))
        with measure(stack) if measure else nullcontext():
            for round_no in range(ROUNDS):
                seq = 1 + (round_no + 1) * BEATS_PER_AGENT
                messages, signed_messages = heartbeats(plain, seq), heartbeats(signed, seq)
                base = run_baseline(stack, client, messages)
                # Alternate which fleet goes first, so a drift of the machine favours neither.
                if round_no % 2:
                    sig = run_heartbeats(stack, client, signed_messages, "signed heartbeats")
                    beat = run_heartbeats(stack, client, messages)
                else:
                    beat = run_heartbeats(stack, client, messages)
                    sig = run_heartbeats(stack, client, signed_messages, "signed heartbeats")
                print(f"  [{label}] round {round_no + 1}: baseline {base.rate:.0f}/s, heartbeats {beat.rate:.0f}/s, "
                      f"signed {sig.rate:.0f}/s", file=sys.stderr)  # fmt: skip
                rounds.append(Round(base, beat, sig))
    finally:
        stack.down()
    return rounds


def total(runs: list[Run]) -> Run:
    return Run(
        runs[0].name, sum(r.messages for r in runs), sum(r.seconds for r in runs),
        accepted=sum(r.accepted for r in runs), reads=sum(r.reads for r in runs),
        writes=sum(r.writes for r in runs), conflicts=sum(r.conflicts for r in runs),
    )  # fmt: skip


def signed_row(label: str, round_name: str, beat: Run, signed: Run) -> str:
    """Unsigned against signed heartbeats: rates, their ratio, and reads and writes per accepted heartbeat."""
    a, b = max(beat.accepted, 1), max(signed.accepted, 1)
    return (
        f"| {label} | {round_name} | {beat.rate:.0f} | {signed.rate:.0f} | {signed.rate / beat.rate:.1%} | "
        f"{signed.accepted}/{signed.messages} | {beat.reads / a:.3f} / {signed.reads / b:.3f} | "
        f"{beat.writes / a:.3f} / {signed.writes / b:.3f} | {beat.conflicts} / {signed.conflicts} |"
    )


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
    runs: dict[str, list[Round]] = {}
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
    configurations = (
        ("one instance, agent cache on", runs["cache"]),
        ("agent cache off (many instances)", runs["nocache"]),
    )
    for label, rounds in configurations:
        for i, r in enumerate(rounds, 1):
            lines.append(row(label, str(i), r.base, r.beat))
        lines.append(row(f"**{label}**", "**all**", total([r.base for r in rounds]), total([r.beat for r in rounds])))
    lines += [
        "",
        f"Signed telemetry, same stacks and rounds: {AGENTS} unsigned agents (tenant `{TENANT}`, policy `optional`) "
        f"and {AGENTS} enrolled agents signing every heartbeat (tenant `{SIGNED_TENANT}`, policy `required`), "
        "the same heartbeats, one after the other in each round (alternating which goes first).",
        "",
        "| configuration | round | unsigned msg/s | signed msg/s | signed / unsigned | signed accepted "
        "| reads/accepted unsigned / signed | writes/accepted unsigned / signed | conflicts unsigned / signed |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for label, rounds in configurations:
        for i, r in enumerate(rounds, 1):
            lines.append(signed_row(label, str(i), r.beat, r.signed))
        lines.append(
            signed_row(f"**{label}**", "**all**", total([r.beat for r in rounds]), total([r.signed for r in rounds]))
        )
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


#: The sections after the heartbeats, in order: (name, title, module). ``BENCH_SECTIONS=integrations,otlp``
#: runs only those named (``heartbeats`` names the first), in one run; unset, all of them.
SECTIONS = (
    ("signing", "Signed telemetry, per event", "signing"),
    ("costs", "Cost events", "costs"),
    ("leases", "Budget leases (issue 19)", "leases"),
    ("sweep", "Liveness sweep and notifications", "sweep"),
    ("alerts", "Critical alerts at once (issue 21)", "alert_latency"),
    ("slack", "Slack app", "slack"),
    ("jobs", "Training jobs", "jobs"),
    ("ml", "Learned models", "ml"),
    ("console", "Web console", "console"),
    ("integrations", "Drop-in integrations (issue 22)", "integrations"),
    ("otlp", "OpenTelemetry GenAI ingest (issue 22)", "otlp"),
)


def section(name: str, title: str, module: str) -> list[str]:
    """One section's heading, description and figures."""
    print(f"measuring: {title} ...", file=sys.stderr)
    loaded = importlib.import_module(f"tests.bench.{module}")  # a section loads when it runs
    if name == "otlp":
        return ["", f"### {title}", "", " ".join((loaded.__doc__ or "").split()), "", *loaded.main()]
    lines = loaded.main(report=lambda line: None)
    if name == "signing":
        signing = importlib.import_module("tests.bench.command_signing")
        commands = signing.measure()
        lines += [
            "",
            f"Commands (`python -m tests.bench.command_signing`, median of {signing.ROUNDS} rounds of "
            f"{signing.PER_ROUND}): the fleet's signing adds "
            f"{commands['signing_cost_us']} µs per command (encode {commands['encode_unsigned_us']} -> "
            f"{commands['encode_signed_us']} µs), the agent's check adds {commands['verification_cost_us']} µs "
            f"(decode {commands['decode_unsigned_us']} -> {commands['decode_verified_us']} µs).",
        ]
    return ["", f"### {title}", "", *loaded.describe(), "", *lines]


def main() -> int:
    chosen = {n.strip() for n in os.environ.get("BENCH_SECTIONS", "").split(",") if n.strip()}
    unknown = chosen - {"heartbeats"} - {name for name, _, _ in SECTIONS}
    if unknown:
        print(f"BENCH_SECTIONS: no section {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    lines = heartbeat_section() if not chosen or "heartbeats" in chosen else []
    if chosen:
        lines[:0] = [f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC with `BENCH_SECTIONS={','.join(sorted(chosen))}"
                     f" make bench` (these sections only, in one run) on {os.cpu_count()} cores.", ""]  # fmt: skip
    for name, title, module in SECTIONS:
        if not chosen or name in chosen:
            lines += section(name, title, module)
    text = "\n".join(lines)
    print(text)
    out = ROOT / ".stack-bench-results.md"
    out.write_text(text + "\n")
    print(f"\n(written to {out.relative_to(ROOT)}; copy into docs/benchmarks.md)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
