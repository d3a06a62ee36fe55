"""`make bench`, critical alerts section (issue 21): from the publish of the event that raises a critical
episode to the fake Slack's receipt of its message, handed over at once to fleet-actions, against
today's path (the minute job) measured in the same run.

    python -m tests.bench.alert_latency      # this section alone (about five minutes)

The event is a cost batch of 60 calls in one minute from an agent of a tenant whose runaway rule is
50 calls a minute: ``fleet-costs`` pauses the agent and opens a critical ``runaway_loop`` episode.
Each of ``EVENTS`` agents sends one such batch, ``SPACING_S`` apart (so the events fall at every
phase of the minute). The latency of an event is the fake Slack's own clock when it recorded the
``chat.postMessage`` naming the agent, minus the bench's clock just before the publish (one machine,
one clock).

Two stacks, one after the other, the same code:

- at once (the default): the raising function hands the notice over to ``fleet-actions`` right after
  its commit, which claims it through the outbox and sends it;
- today's path: ``FLEET_ALERTS_AT_ONCE=off``, so the notice waits in the outbox for its group wait
  (30 s, the default) and the minute job; the bench fires ``tick-liveness-sweep`` every 60 s, from a
  random phase, as Cloud Scheduler would.

Afterwards every notice of the bench's agents is read back: who sent it (``sent_by``) and how many
Slack messages name each agent (exactly one is expected).
"""

from __future__ import annotations

import json
import os
import random
import statistics
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import requests
from fleet_agent.contracts import CostBatch, CostRecord, encode

from emulators.stack import ROOT, Stack
from tests.bench.costs import Api, percentile, register
from tests.bench.run import UNSIGNED, fresh_store, publish_all, publisher

EVENTS = int(os.environ.get("BENCH_ALERT_EVENTS", 20))
SPACING_S = float(os.environ.get("BENCH_ALERT_SPACING_S", 3.0))
TICK_EVERY_S = 60.0
TENANT = "bench-alerts"
RUNAWAY = {"runaway_calls_per_minute": 50}
CALLS = 60
STATE_DIR = ROOT / ".stack-bench-alerts"


def runaway_batch(agent_id: str) -> tuple[bytes, dict[str, str]]:
    """60 calls in the current minute: over the tenant's runaway rule."""
    now = datetime.now(UTC)
    records = [
        CostRecord(call_id=f"call-{j:03d}-{uuid.uuid4().hex[:8]}", at=now, model="gpt-4o", input_tokens=100,
                   output_tokens=50, cost_usd=Decimal("0.0001"), success=True, latency_ms=100.0,
                   operation="summarize")
        for j in range(CALLS)
    ]  # fmt: skip
    return encode(CostBatch(agent_id=agent_id, batch_id=f"b-{uuid.uuid4().hex}", records=records))


class Ticker:
    """The minute job as Cloud Scheduler fires it: a tick on ``tick-liveness-sweep`` every 60 s."""

    def __init__(self, client: Any) -> None:
        self.client, self.fired = client, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        wait = random.uniform(0, TICK_EVERY_S)  # the scheduler's phase is not the bench's
        while not self._stop.wait(wait):
            publish_all(self.client, "tick-liveness-sweep", [(json.dumps({"job": "liveness-sweep"}).encode(),
                                                               {"job": "liveness-sweep"})])  # fmt: skip
            self.fired += 1
            wait = TICK_EVERY_S

    def __enter__(self) -> Ticker:
        self._thread.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self._stop.set()
        self._thread.join()


@dataclass
class Path:
    label: str
    latencies: list[float] = field(default_factory=list)
    missing: int = 0
    messages_per_agent: Counter[int] = field(default_factory=Counter)
    sent_by: Counter[str] = field(default_factory=Counter)
    ticks: int = 0


def slack_posts(stack: Stack) -> list[dict[str, Any]]:
    """Top-level messages about runaway loops (the bench's agents never beat, so the minute job also
    posts their ``Agent silent`` warnings after 90 s: not counted)."""
    base = stack.env["SLACK_API_URL"].removesuffix("/").removesuffix("/api")
    calls = requests.get(f"{base}/_calls", params={"method": "chat.postMessage"}, timeout=10).json()
    return [
        c for c in calls
        if not c.get("failed") and not (c.get("params") or {}).get("thread_ts")
        and "Runaway loop" in str((c.get("params") or {}).get("text"))
    ]  # fmt: skip


def first_post(posts: list[dict[str, Any]], agent_id: str) -> float | None:
    times = [c["time"] for c in posts if agent_id in json.dumps(c.get("params"))]
    return min(times) if times else None


def measure(label: str, function_env: dict[str, str], minute_job: bool) -> Path:
    """One stack: register the agents, send one runaway batch each, wait for Slack."""
    out = Path(label)
    stack = Stack(STATE_DIR, function_env={**UNSIGNED, **function_env}, create_admin_key=True)
    try:
        stack.up()
        fresh_store()
        client = publisher()
        Api(stack).call("PUT", f"/v1/tenants/{TENANT}/protection", RUNAWAY)
        prefix = f"bench-alert-{'tick' if minute_job else 'now'}"
        warm, agents = f"{prefix}-warm", [f"{prefix}-{i:03d}" for i in range(EVENTS)]
        register(stack, client, [warm, *agents], TENANT)
        if not minute_job:  # a warm-up event, not reported: the function's first Slack client, cold imports
            publish_all(client, "agent-costs", [runaway_batch(warm)])
            _wait_for(stack, [warm], 60)
        published: dict[str, float] = {}
        ticker = Ticker(client) if minute_job else None
        if ticker is not None:
            ticker.__enter__()
        try:
            for agent in agents:
                message = runaway_batch(agent)
                published[agent] = time.time()
                publish_all(client, "agent-costs", [message])
                time.sleep(SPACING_S)
            posts = _wait_for(stack, agents, 3 * TICK_EVERY_S)
        finally:
            if ticker is not None:
                ticker.__exit__()
                out.ticks = ticker.fired
        time.sleep(2)  # a late duplicate would show here
        posts = slack_posts(stack)
        for agent in agents:
            at = first_post(posts, agent)
            if at is None:
                out.missing += 1
            else:
                out.latencies.append(at - published[agent])
            out.messages_per_agent[sum(1 for c in posts if agent in json.dumps(c.get("params")))] += 1
        out.sent_by = _sent_by(agents)
    finally:
        stack.down()
    return out


def _wait_for(stack: Stack, agents: list[str], timeout: float) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    posts: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        posts = slack_posts(stack)
        if all(first_post(posts, agent) is not None for agent in agents):
            break
        time.sleep(0.2)
    return posts


def _sent_by(agents: list[str]) -> Counter[str]:
    # lazy: the store's client, built for the stack now running (fresh_store)
    from google.cloud.firestore_v1.base_query import FieldFilter

    from shared.store import db
    from shared.store import episodes as episode_store

    wanted = set(agents)
    query = db.client().collection(episode_store.NOTIFICATIONS).where(filter=FieldFilter("rule", "==", "runaway_loop"))
    docs = query.stream()
    return Counter(
        str(n.get("sent_by")) for d in docs if (n := d.to_dict() or {}).get("agent_id") in wanted
        and n.get("event") == "open"
    )  # fmt: skip


def describe() -> list[str]:
    return [
        f"On a local stack, {EVENTS} agents of one tenant (runaway rule: 50 calls a minute) each publish one cost "
        f"batch of {CALLS} calls in one minute, {SPACING_S:.0f} s apart: `fleet-costs` pauses the agent and opens a "
        "critical `runaway_loop` episode. Latency: from just before the publish (the bench's clock) to the fake "
        "Slack's record of the `chat.postMessage` naming the agent (its clock; same machine). Two stacks, one after "
        "the other: the notice handed over by `fleet-costs` right after its commit and sent by `fleet-actions` "
        "(one warm-up event first, not "
        "reported), and today's path with `FLEET_ALERTS_AT_ONCE=off`: the notice waits for its 30 s group wait and "
        f"the minute job, fired every {TICK_EVERY_S:.0f} s from a random phase as Cloud Scheduler would. Then every "
        "notice is read back (`sent_by`) and Slack messages are counted per agent.",
    ]


def main(report: Callable[[str], None] = print) -> list[str]:
    print("critical alerts sent at once ...", file=sys.stderr)
    now_path = measure("at once: handed over to `fleet-actions` (issue 21)", {}, minute_job=False)
    print("critical alerts through the minute job (today's path) ...", file=sys.stderr)
    tick_path = measure("minute job (`FLEET_ALERTS_AT_ONCE=off`, ticks every 60 s)", {"FLEET_ALERTS_AT_ONCE": "off"},
                        minute_job=True)  # fmt: skip

    def row(p: Path) -> str:
        lat = p.latencies or [float("nan")]
        per_agent = ", ".join(f"{k}: {v}" for k, v in sorted(p.messages_per_agent.items()))
        sent_by = ", ".join(f"{k} {v}" for k, v in sorted(p.sent_by.items()))
        return (
            f"| {p.label} | {len(p.latencies)}/{EVENTS} | {statistics.median(lat):.2f} | "
            f"{percentile(lat, 95):.2f} | {max(lat):.2f} | {per_agent} | {sent_by} | {p.ticks} |"
        )

    lines = [
        "| path | delivered | p50 s | p95 s | max s | messages per agent (count: agents) | sent_by | ticks fired |",
        "|---|---|---|---|---|---|---|---|",
        row(now_path),
        row(tick_path),
    ]
    if now_path.latencies and tick_path.latencies:
        lines += [
            "",
            f"p95 at once {percentile(now_path.latencies, 95):.2f} s against "
            f"{percentile(tick_path.latencies, 95):.1f} s through the minute job (target: p95 under 5 s).",
        ]
    for line in lines:
        report(line)
    return lines


if __name__ == "__main__":
    started = datetime.now(UTC)
    body = main(report=lambda line: None)
    print("\n".join([f"Measured {started:%Y-%m-%d %H:%M} UTC with `python -m tests.bench.alert_latency`.", "",
                     *describe(), "", *body]))  # fmt: skip
