"""`make bench`, learned-models section: what scoring heartbeats, loading models and retraining cost.

    python -m tests.bench.ml      # this section alone (a few minutes)

1. In process: ``shared.ml.live.step`` per heartbeat (what ``fleet-heartbeats`` adds to each event) with
   no model (the baseline: the agent's baseline features only), with the anomaly model, and with both
   models; the models' size and load time from their bytes.
2. In process: retraining on about 1,000,000 heartbeat rows (700 agents x 1,430, failures included):
   the anomaly and failure models fitted and evaluated, first with nothing in service, then compared
   with the models in service.
3. On the local stack: heartbeats through the real push path, with no model in service and then with
   both promoted (the instance picks them up from the registry and Cloud Storage stand-in): delivery
   rate, the function's own duration per event, reads and writes per event, and the function's memory.
4. On the same stack: reading heartbeat history back from Firestore, as the retraining job does (rows
   per second, and what a million rows would take at that rate).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from emulators.stack import ROOT, Stack
from shared.platform import metering
from tests.bench import models as bench_models
from tests.bench.run import UNSIGNED, LogCounter, publish_then_push, publisher, wait_count
from tests.bench.slack import machine, percentile

AGENTS = int(os.environ.get("BENCH_ML_AGENTS", 50))
BEATS = int(os.environ.get("BENCH_ML_BEATS", 40))
HISTORY_AGENTS = int(os.environ.get("BENCH_ML_HISTORY_AGENTS", 50))
HISTORY_ROWS = int(os.environ.get("BENCH_ML_HISTORY_ROWS", 1000))
RETRAIN_AGENTS, RETRAIN_ROWS = 700, 1430
METRIC_NAMES = ("latency_ms_p95", "error_rate", "cpu_pct", "memory_pct", "tokens_per_s", "cost_per_min")


def per_heartbeat(anomaly_bytes: bytes, failure_bytes: bytes) -> list[str]:
    from shared.ml import live, serving
    from shared.ml.simulate import simulate

    started = time.perf_counter()
    det = serving.loader("anomaly")(anomaly_bytes)
    det.min_history_s = 0.0  # scored from the first ready heartbeat: this times scoring, not a day of waiting
    anomaly_load = (time.perf_counter() - started) * 1000
    started = time.perf_counter()
    pred = serving.loader("failure")(failure_bytes)
    failure_load = (time.perf_counter() - started) * 1000
    stream = next(iter(simulate(agents=1, rows=2000, train_rows=1000, seed=9).streams.values()))
    t0 = datetime(2026, 11, 1, tzinfo=UTC)
    configs = {
        "no model (baseline: the agent's features only)": live.Models(),
        "anomaly model": live.Models(det, "a"),
        "anomaly and failure models": live.Models(det, "a", pred, "f"),
    }
    rows = []
    for label, models in configs.items():
        state: dict[str, Any] = {}
        times = []
        for i in range(len(stream)):
            metrics = {n: float(v) for n, v in zip(METRIC_NAMES, stream.X[i], strict=True)}
            at = t0 + timedelta(seconds=float(stream.t[i]))
            start = time.perf_counter()
            state = live.step(models, "bench", state, metrics, at, stream.interval_s).state
            times.append((time.perf_counter() - start) * 1e6)
        times = times[100:]  # past warm-up
        # With a model in service the step must have scored (not stopped at insufficient_data).
        assert models.anomaly is None or state.get("status") in ("normal", "anomalous"), (label, state.get("status"))
        size = len(json.dumps(state))
        rows.append(f"| {label} | {statistics.median(times):.0f} | {percentile(times, 0.99):.0f} | {size:,} |")
    rows.append(_regime_row(METRIC_NAMES, t0))
    return [
        f"Models: anomaly {len(anomaly_bytes) / 1024:.0f} KiB (loaded without its scikit-learn object in "
        f"{anomaly_load:.0f} ms), failure {len(failure_bytes) / 1024:.0f} KiB ({failure_load:.0f} ms).",
        "",
        "| `live.step` per heartbeat, 1,900 heartbeats of one agent | p50 µs | p99 µs "
        "| state in the agent document (bytes of JSON) |",
        "|---|---:|---:|---:|",
        *rows,
    ]


def _regime_row(names: tuple[str, ...], t0: datetime) -> str:
    """The anomaly model's step for an agent judged in its two activity regimes (a batch worker of the mixed
    fleet, with a model fitted on that fleet's history): the absolute features and the regime envelope."""
    from shared.ml import live
    from shared.ml.anomaly import AnomalyDetector
    from shared.ml.simulate_mixed import simulate_mixed

    fleet = simulate_mixed(3, agents=24)
    det = AnomalyDetector(min_history_s=0.0)
    det.fit({a: s.head(fleet.train_rows) for a, s in fleet.streams.items()})
    agent = next(a for a in sorted(det.regimes.agents) if fleet.streams[a].kind == "batch")
    stream = fleet.streams[agent]
    models, times = live.Models(det, "a"), []
    state: dict[str, Any] = {}
    for i in range(len(stream)):
        metrics = {n: float(v) for n, v in zip(names, stream.X[i], strict=True)}
        at = t0 + timedelta(seconds=float(stream.t[i]))
        start = time.perf_counter()
        state = live.step(models, agent, state, metrics, at, stream.interval_s, kind="batch").state
        times.append((time.perf_counter() - start) * 1e6)
    times = times[100:]
    assert state.get("status") in ("normal", "anomalous"), state.get("status")
    label = f"anomaly model, an agent judged in its two regimes ({len(times):,} heartbeats of a batch worker)"
    return f"| {label} | {statistics.median(times):.0f} | {percentile(times, 0.99):.0f} | {len(json.dumps(state)):,} |"


def retraining(report: Callable[[str], None]) -> list[str]:
    from shared.ml import retrain
    from shared.ml.simulate import simulate_failures

    streams, _events = simulate_failures(agents=RETRAIN_AGENTS, rows=RETRAIN_ROWS, seed=21)
    # A heartbeat every 90 s instead of 30 (the same rows): the agents have the day of history retraining needs.
    streams = {a: replace(s, interval_s=3 * s.interval_s, t=3 * s.t) for a, s in streams.items()}
    data = retrain.split(streams)
    assert data is not None
    out = []
    current: dict[str, Any] = {}
    for round_name in ("nothing in service", "compared with the models in service"):
        for kind, run in (("anomaly", retrain.retrain_anomaly), ("failure", retrain.retrain_failure)):
            report(f"  retraining {kind} ({round_name}) ...")
            started = time.perf_counter()
            cand = run(data, current.get(kind), "current" if kind in current else None)
            total = time.perf_counter() - started
            current.setdefault(kind, cand.model)
            out.append(
                f"| {kind} | {round_name} | {data.rows:,} | {cand.train_seconds:.1f} | {total:.1f} | "
                f"{cand.metrics.get('f1')} | {cand.reason} |"
            )
    return [
        "| model | round | rows | fit s | fit + evaluation s | F1 on held-out data | decision |",
        "|---|---|---:|---:|---:|---:|---|",
        *out,
    ]


def _rss_mb(stack: Stack, function: str) -> float:
    """Resident memory of the function's process and its children (functions-framework serves from a
    gunicorn worker), in MB."""
    todo = [int(json.loads(stack.pids_file.read_text())[function])]
    total_kb = 0
    while todo:
        pid = todo.pop()
        proc = Path(f"/proc/{pid}")
        try:
            for line in (proc / "status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total_kb += int(line.split()[1])
            for task in (proc / "task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total_kb / 1024


def _heartbeats(start_seq: int, rng: np.random.Generator) -> list[tuple[bytes, dict[str, str]]]:
    from fleet_agent.contracts import Heartbeat, encode

    now = datetime.now(UTC)
    out = []
    for seq in range(start_seq, start_seq + BEATS):
        for i in range(AGENTS):
            noise = rng.normal(0.0, 0.05, 6)
            metrics = {
                "latency_ms_p95": 800.0 * float(np.exp(noise[0])),
                "error_rate": 0.01 * float(np.exp(noise[1])),
                "cpu_pct": 40.0 + 40.0 * float(noise[2]),
                "memory_pct": 50.0 + 20.0 * float(noise[3]),
                "tokens_per_s": 120.0 * float(np.exp(noise[4])),
                "cost_per_min": 0.2 * float(np.exp(noise[5])),
            }
            hb = Heartbeat(agent_id=f"bench-ml-{i:04d}", seq=seq, sent_at=now, status="busy", metrics=metrics)
            out.append(encode(hb))
    return out


def on_the_stack(anomaly_bytes: bytes, failure_bytes: bytes, report: Callable[[str], None]) -> list[str]:
    from fleet_agent.contracts import Registration, encode
    from google.cloud import firestore

    from shared.store import agents as agent_store

    stack = Stack(
        ROOT / ".stack-bench-ml", function_env={"FLEET_MODEL_REFRESH_S": "1", **UNSIGNED}, create_admin_key=False
    )
    rows: list[str] = []
    try:
        stack.up()
        os.environ.update(stack.env)
        client = publisher()
        regs = [
            encode(
                Registration(
                    agent_id=f"bench-ml-{i:04d}", tenant="bench-ml", name="b", agent_type="llm", version="1",
                    owner="bench@example.com", heartbeat_interval_s=30,
                )
            )
            for i in range(AGENTS)
        ]  # fmt: skip
        reg_log = LogCounter(stack.logs / "fleet-registrations.log")
        publish_then_push(stack, client, "agent-registrations-push", regs)
        wait_count(reg_log, AGENTS, lambda x: x.get("outcome") == "accepted", 120)
        log = LogCounter(stack.logs / "fleet-heartbeats.log")
        rng = np.random.default_rng(5)
        seq = 1
        for phase in ("warm-up (the baselines fill)", "no model in service", "anomaly and failure models in service"):
            if phase.startswith("anomaly"):
                bench_models.promote("anomaly", anomaly_bytes)
                bench_models.promote("failure", failure_bytes)
                time.sleep(2.0)  # past FLEET_MODEL_REFRESH_S
            report(f"  heartbeats: {phase} ...")
            before = len(log.poll())
            messages = _heartbeats(seq, rng)
            seq += BEATS
            start = publish_then_push(stack, client, "agent-heartbeats-push", messages)
            end = wait_count(log, before + len(messages), lambda x: "outcome" in x and "duration_ms" in x, 300)
            lines = [x for x in log.poll()[before:] if x.get("outcome") == "accepted"]
            durations = [float(x["duration_ms"]) for x in lines]
            n = max(len(lines), 1)
            registry = sum(x.get("model_registry_reads", 0) for x in lines)
            reads = (sum(x.get("firestore_reads", 0) for x in lines) - registry) / n
            writes = sum(x.get("firestore_writes", 0) for x in lines) / n
            rows.append(
                f"| {phase} | {len(messages) / (end - start):.0f} | {statistics.median(durations):.1f} | "
                f"{percentile(durations, 0.95):.1f} | {reads:.3f} | {writes:.3f} | "
                f"{registry} | {_rss_mb(stack, 'fleet-heartbeats'):.0f} | {len(lines)}/{len(messages)} |"
            )
        store = firestore.Client(project=stack.env["GOOGLE_CLOUD_PROJECT"])
        statuses = [agent_store.from_stored(d.to_dict()).ml.get("status") for d in store.collection("agents").stream()]
        judged = sum(1 for s in statuses if s in ("normal", "anomalous"))
        history = _history_read(store, report)
    finally:
        stack.down()
    return [
        f"{AGENTS} agents x {BEATS} heartbeats per phase, pushed to `fleet-heartbeats` (one instance) after "
        "publishing with push paused; duration is the function's own, from its log line. Reads per event leave "
        "out the instance's checks of the model registry, counted apart (every second here, every 300 s by "
        "default).",
        "",
        "| phase | delivered msg/s | p50 ms | p95 ms | reads/event | writes/event | registry checks (reads) "
        "| fleet-heartbeats RSS MB | accepted |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        *rows,
        "",
        f"After the last phase {judged} of {len(statuses)} agents had been judged by the promoted anomaly model.",
        "",
        *history,
    ]


def _history_read(store: Any, report: Callable[[str], None]) -> list[str]:
    """Seed ``HISTORY_AGENTS`` agents' history as the heartbeat function writes it (chunks of 10), then read
    it back the way the retraining job does."""
    from shared.store import agents as agent_store

    report("  history: seeding ...")
    start = datetime.now(UTC) - timedelta(hours=12)
    batch, pending = store.batch(), 0
    for a in range(HISTORY_AGENTS):
        agent_id = f"bench-hist-{a:04d}"
        store.collection("agents").document(agent_id).set({"agent_id": agent_id, "heartbeat_interval_s": 30})
        for chunk_no in range(HISTORY_ROWS // 10):
            samples = [
                json.dumps(
                    {
                        "seq": chunk_no * 10 + k,
                        "at": (start + timedelta(seconds=30 * (chunk_no * 10 + k))).isoformat(),
                        "status": "busy",
                        "metrics": {n: 1.0 + k for n in METRIC_NAMES},
                    }
                )
                for k in range(10)
            ]
            ref = store.collection("agents").document(agent_id).collection("history").document(f"s{chunk_no:03d}")
            batch.set(ref, {"agent_id": agent_id, "chunk_no": chunk_no, "samples": samples})
            pending += 1
            if pending == 400:
                batch.commit()
                batch, pending = store.batch(), 0
    batch.commit()
    report("  history: reading ...")
    with metering.metered() as meter:
        started = time.perf_counter()
        history = agent_store.fleet_history()
        seconds = time.perf_counter() - started
    rows = sum(len(entry[1]) for entry in history.values())
    rate = rows / seconds
    return [
        f"Reading history back (`shared.store.agents.fleet_history`, the retraining job's first step): "
        f"{rows:,} heartbeat rows in {seconds:.1f} s ({rate:,.0f} rows/s, {meter.reads:,} reads) from the "
        f"Firestore emulator; at that rate 1,000,000 rows take about {1_000_000 / rate:.0f} s "
        f"({1_000_000 // 10:,} reads of chunks of 10).",
    ]


def describe() -> list[str]:
    return [
        "`python -m tests.bench.ml` (part of `make bench`). Per-heartbeat cost of the learned models in process "
        "(baseline: the same step with no model), retraining on about a million rows in process, and on the local "
        "stack the heartbeat push path before and after the models are promoted (baseline: the same function "
        "with no model in service), plus reading history back as the retraining job does.",
    ]


def main(report: Callable[[str], None] = print) -> list[str]:
    report("  training the models to serve ...")
    anomaly_bytes, failure_bytes = bench_models.model_bytes()
    lines = ["#### Per heartbeat", "", *per_heartbeat(anomaly_bytes, failure_bytes), ""]
    lines += ["#### Retraining on a million rows", "", *retraining(report), ""]
    lines += ["#### Heartbeats through the push path", "", *on_the_stack(anomaly_bytes, failure_bytes, report)]
    for line in lines:
        report(line)
    return lines


if __name__ == "__main__":
    print(machine())
    print("\n".join(describe()))
    main(report=lambda line: print(line, file=sys.stderr) if line.startswith("  ") else print(line))
    sys.exit(0)
