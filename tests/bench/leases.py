"""`make bench`, budget leases section (issue 19): overshoot past hard limits, Firestore writes per call,
the wait for a lease, each beside today's path (no leases, batches flushed after 1 s) in the same run.

    python -m tests.bench.leases      # about 10 minutes: its own stack

The real path throughout: the SDK's ``CostRecorder`` (with ``leases=True``: every call checked against a
lease before it runs) -> Pub/Sub emulator push -> fleet-costs / fleet-registrations under
functions-framework -> Firestore emulator, and signed ``lease`` / hold commands back on ``agent-commands``
to a ``CommandListener``. Every call is priced exactly: gpt-4o, ``prompt_tokens=1000, max_tokens=750``,
then ``call.tokens(1000, 750)``: $0.01, its estimate equal to its cost. Writes are the functions' own
structured log lines (``firestore_writes``), per agent.
"""

from __future__ import annotations

import os
import statistics
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from fleet_agent.commands import CommandListener
from fleet_agent.contracts import DEFAULT_TOPICS, BudgetSpec, Command, EventType, Registration, encode
from fleet_agent.costs import CallRefused, CostRecorder

from emulators.stack import ROOT, Stack
from tests.bench.costs import NO_RUNAWAY, Api, CountingPublisher, percentile
from tests.bench.run import UNSIGNED, LogCounter, fresh_store, publish_all, publisher, wait_count

AGENTS = int(os.environ.get("BENCH_LEASE_AGENTS", 20))
RATE = 100.0  # calls per second per agent
PACED_S = int(os.environ.get("BENCH_LEASE_SECONDS", 30))
ISOLATED_CALLS, ISOLATED_GAP_S = int(os.environ.get("BENCH_LEASE_ISOLATED", 8)), 35.0
BURST_CALLS, BURST_RATE = 50, 2.0
FETCHES = 20
LIMIT = Decimal("3")
CALL_USD = Decimal("0.01")
PATHS = ("leases", "today")
READ_USD, WRITE_USD = Decimal("0.06") / 100_000, Decimal("0.18") / 100_000


def exact_call(recorder: CostRecorder) -> None:
    with recorder.call("bench", model="gpt-4o", prompt_tokens=1000, max_tokens=750) as call:
        call.tokens(1000, 750)


@dataclass
class Lines:
    """The functions' log lines of some agents: writes and reads, and which lines granted a lease."""

    costs: list[dict[str, Any]] = field(default_factory=list)
    registrations: list[dict[str, Any]] = field(default_factory=list)

    @staticmethod
    def granted(line: dict[str, Any]) -> bool:
        return any(c.startswith("lease:") for c in line.get("commands", []))

    def writes(self) -> int:
        return sum(x["firestore_writes"] for x in self.costs)

    def reads(self) -> int:
        return sum(x["firestore_reads"] for x in self.costs)

    def grants(self) -> int:
        return sum(1 for x in self.costs if self.granted(x))


class Bench:
    """One stack, one publisher, one command listener for every agent of the run."""

    def __init__(self, stack: Stack) -> None:
        self.stack, self.client, self.api = stack, publisher(), Api(stack)
        self.counting = CountingPublisher(self.client)
        self.topic = self.client.topic_path(os.environ["GOOGLE_CLOUD_PROJECT"], DEFAULT_TOPICS[EventType.COST])
        self.listener = CommandListener(os.environ["GOOGLE_CLOUD_PROJECT"], label="bench-leases")
        self.listener.start()
        self.reg_lines: dict[str, dict[str, Any]] = {}

    def recorders(self, agents: list[str], leases: bool) -> list[CostRecorder]:
        """One recorder per agent, listening: leases (30 s flush) or today's (1 s flush)."""
        out = []
        for agent_id in agents:
            rec = CostRecorder(agent_id, self.counting, self.topic, leases=leases, max_delay_s=None if leases else 1.0)
            self.listener.add(Target(rec))
            out.append(rec)
        return out

    def register(self, agents: list[str], tenant: str, budget: BudgetSpec | None = None, leases: bool = False) -> None:
        counter = LogCounter(self.stack.logs / "fleet-registrations.log")
        regs = [
            encode(Registration(agent_id=a, tenant=tenant, name=a, agent_type="llm", version="1", owner="bench",
                                heartbeat_interval_s=30, budget=budget, leases=leases))
            for a in agents
        ]  # fmt: skip
        publish_all(self.client, "agent-registrations", regs)
        mine = set(agents)
        wait_count(counter, len(agents), lambda x: x.get("outcome") == "accepted" and x.get("agent_id") in mine, 120)
        for line in counter.poll():
            if line.get("agent_id") in mine and line.get("outcome") == "accepted":
                self.reg_lines[line["agent_id"]] = line

    def counted(self, agents: list[str], offset: int = 0) -> Lines:
        """Wait until every batch the agents sent was counted; their log lines since ``offset``."""
        mine = set(agents)
        sent = sum(1 for _, a, _ in list(self.counting.sent) if a in mine)
        counter = LogCounter(self.stack.logs / "fleet-costs.log")
        counter.offset = offset
        wait_count(counter, sent, lambda x: x.get("agent_id") in mine and final(x), 300)
        # Every invocation's line (a retried one wrote too), not the alerts' and commands' own lines.
        costs = [x for x in counter.poll() if x.get("agent_id") in mine and "firestore_writes" in x]
        return Lines(costs, [self.reg_lines[a] for a in agents if a in self.reg_lines])

    def costs_offset(self) -> int:
        path = self.stack.logs / "fleet-costs.log"
        return path.stat().st_size if path.exists() else 0


def final(line: dict[str, Any]) -> bool:
    """An invocation that dealt with its batch: counted, a request alone (``lease_request``), a duplicate..."""
    return "firestore_writes" in line and line.get("outcome") not in (None, "retry", "failed")


class Target:
    def __init__(self, recorder: CostRecorder) -> None:
        self.recorder = recorder

    @property
    def agent_id(self) -> str:
        return self.recorder.agent_id

    def apply_command(self, data: bytes) -> Any:
        command = Command.model_validate_json(data)
        return command if self.recorder.apply(command) else None


# -- 1. overshoot --------------------------------------------------------------------------------------


@dataclass
class Stop:
    calls: int = 0
    seconds: float = 0.0
    reason: str = "never refused"


def until_refused(recorders: list[CostRecorder]) -> dict[str, Stop]:
    """Each agent calls at RATE (staggered starts) until its SDK refuses, for at most 30 s."""
    stops = {r.agent_id: Stop() for r in recorders}

    def run(rec: CostRecorder, offset: float) -> None:
        time.sleep(offset)
        start, stop = time.monotonic(), stops[rec.agent_id]
        for i in range(int(RATE * 30)):
            delay = start + i / RATE - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            try:
                exact_call(rec)
            except CallRefused as refused:
                stop.reason = refused.reason or "refused"
                if refused.reason == "lease_exhausted":
                    stop.reason += " (fleet answered)" if "fleet answered" in str(refused) else " (no answer in 2 s)"
                break
            stop.calls = i + 1
        stop.seconds = time.monotonic() - start

    threads = [threading.Thread(target=run, args=(r, i * 0.137)) for i, r in enumerate(recorders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for rec in recorders:
        rec.close()
    return stops


@dataclass
class Overshoot:
    path: str
    scope: str
    overshoots: list[Decimal]
    stops: dict[str, Stop]

    def row(self) -> str:
        o = self.overshoots
        under = [-x for x in o if x < 0]
        rates = [s.calls / s.seconds for s in self.stops.values() if s.seconds > 0]
        reasons: dict[str, int] = {}
        for s in self.stops.values():
            reasons[s.reason] = reasons.get(s.reason, 0) + 1
        return (
            f"| {self.scope} | {self.path} | ${statistics.median(o):.2f} ({statistics.median(o) / LIMIT:.0%}) "
            f"| ${max(o):.2f} ({max(o) / LIMIT:.0%}) | {len(under)}/{len(o)}"
            f"{f', median ${statistics.median(under):.2f}, max ${max(under):.2f}' if under else ''} "
            f"| {statistics.median(rates):.0f} | {', '.join(f'{k} {v}' for k, v in sorted(reasons.items()))} |"
        )


def overshoot(bench: Bench, tag: str, tenant_budget: bool) -> list[Overshoot]:
    out = []
    for path in PATHS:
        tenant = f"bench-lease-{tag}-{path}"
        agents = [f"{tenant}-{i:03d}" for i in range(AGENTS)]
        bench.api.call("PUT", f"/v1/tenants/{tenant}/protection", NO_RUNAWAY)
        if tenant_budget:
            bench.api.call("PUT", f"/v1/tenants/{tenant}/budget", {"hourly_usd": str(LIMIT)})
        recorders = bench.recorders(agents, path == "leases")
        budget = None if tenant_budget else BudgetSpec(hourly_usd=LIMIT)
        bench.register(agents, tenant, budget, leases=path == "leases")
        print(f"  {tag}, {path}: {AGENTS} agents at {RATE:.0f} calls/s until refused ...", file=sys.stderr)
        stops = until_refused(recorders)
        bench.counted(agents)
        if tenant_budget:
            spend = Decimal(bench.api.call("GET", f"/v1/tenants/{tenant}/usage")["periods"]["hour"]["spend_usd"])
            overs = [spend - LIMIT]
        else:
            overs = [
                Decimal(bench.api.call("GET", f"/v1/agents/{a}/usage")["periods"]["hour"]["spend_usd"]) - LIMIT
                for a in agents
            ]
        scope = f"{AGENTS} agents, each its own ${LIMIT}/hour" if not tenant_budget else (
            f"{AGENTS} agents sharing one tenant's ${LIMIT}/hour")  # fmt: skip
        out.append(Overshoot(path, scope, overs, stops))
    return out


# -- 2. writes per call --------------------------------------------------------------------------------


@dataclass
class Writes:
    label: str
    path: str
    calls: int
    lines: Lines
    reg_grant_writes: int = 0  # the first lease's writes at registration, attributed to the agent
    agent_id: str = ""

    @property
    def writes(self) -> int:
        return self.lines.writes() + self.reg_grant_writes

    def per_call(self) -> float:
        return self.writes / self.calls

    def reads_per_call(self) -> float:
        return self.lines.reads() / self.calls

    def row(self) -> str:
        c = self.lines
        return (
            f"| {self.label} | {self.path} | {self.calls} | {len(c.costs)} | {c.grants()} | {c.writes()} "
            f"| {self.reg_grant_writes} | **{self.per_call():.4f}** | {self.reads_per_call():.4f} |"
        )


def steady(bench: Bench, run: Writes, agent_id: str, after_s: float = 10.0) -> str:
    """Writes per call once the first ``after_s`` seconds are over: batches sent after that, their lines."""
    sent = [(at, data) for at, a, data in list(bench.counting.sent) if a == agent_id]
    if not sent:
        return "-"
    cut = sent[0][0] + after_s
    calls = sum(data.count(b'"call_id"') for at, data in sent if at >= cut)
    batches = sum(1 for at, _ in sent if at >= cut)
    lines = run.lines.costs[-batches:] if batches else []
    writes = sum(x["firestore_writes"] for x in lines)
    return f"{writes / calls:.4f} ({writes} writes, {calls} calls, {batches} batches)" if calls else "-"


def paced(bench: Bench, rec: CostRecorder, calls: int, gap_s: float, first_at: float) -> None:
    for i in range(calls):
        delay = first_at + i * gap_s - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        exact_call(rec)
    rec.close()


def writes_run(bench: Bench, label: str, tag: str, calls: int, gap_s: float, first_lease: bool) -> list[Writes]:
    """One agent per path, side by side in two threads, ``calls`` calls ``gap_s`` apart; the lease agent is
    registered with ``leases=first_lease`` (False: it holds no lease when it starts)."""
    tenant = "bench-lease-writes"
    bench.api.call("PUT", f"/v1/tenants/{tenant}/protection", NO_RUNAWAY)
    agents = {p: f"bench-lease-{tag}-{p}" for p in PATHS}
    recs = {p: bench.recorders([agents[p]], p == "leases")[0] for p in PATHS}
    for p in PATHS:
        bench.register([agents[p]], tenant, leases=first_lease and p == "leases")
    print(f"  {label} ...", file=sys.stderr)
    offset = bench.costs_offset()
    first_at = time.monotonic() + 0.5
    threads = [threading.Thread(target=paced, args=(bench, recs[p], calls, gap_s, first_at)) for p in PATHS]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    lines = {p: bench.counted([agents[p]], offset) for p in PATHS}
    # The first lease's writes: what the lease agent's registration wrote beyond the plain one's.
    extra = reg_grant_writes(bench, [agents["leases"]], [agents["today"]]) if first_lease else 0
    return [Writes(label, p, calls, lines[p], extra if p == "leases" else 0, agents[p]) for p in PATHS]


def reg_grant_writes(bench: Bench, leased: list[str], plain: list[str]) -> int:
    """Registration writes with ``leases=True`` minus without (medians): what granting the first lease wrote."""
    with_lease = statistics.median(bench.reg_lines[a]["firestore_writes"] for a in leased)
    without = statistics.median(bench.reg_lines[a]["firestore_writes"] for a in plain)
    return max(0, round(with_lease - without))


# -- 3. the wait for a lease ---------------------------------------------------------------------------


def fetch_waits(bench: Bench) -> list[float]:
    """Agents registered without leases, recorders with: each first call must ask and wait (one at a time)."""
    tenant = "bench-lease-fetch"
    bench.api.call("PUT", f"/v1/tenants/{tenant}/protection", NO_RUNAWAY)
    agents = [f"bench-lease-fetch-{i:03d}" for i in range(FETCHES)]
    recs = bench.recorders(agents, True)
    bench.register(agents, tenant, leases=False)
    waits = []
    for rec in recs:
        start = time.perf_counter()
        with rec.call("bench", model="gpt-4o", prompt_tokens=1000, max_tokens=750) as call:
            waits.append(time.perf_counter() - start)
            call.tokens(1000, 750)
        rec.close()
        time.sleep(0.2)
    return waits


def returns() -> tuple[int, int, int]:
    """The minute tick's lease returns, run in process as if 10 minutes had passed: (epochs, reads, writes)."""
    from shared.platform import metering  # lazy: the bench process needs the stack's environment first
    from shared.services import leases as lease_service  # lazy: as above

    fresh_store()
    with metering.metered() as meter:
        n = lease_service.release_due(datetime.now(UTC) + timedelta(minutes=10), limit=1000)
    return n, meter.reads, meter.writes


# -- the report ----------------------------------------------------------------------------------------


def describe() -> list[str]:
    return [
        f"`python -m tests.bench.leases` (its own stack; part of `make bench`). Every call is priced exactly "
        f"(gpt-4o, `prompt_tokens=1000, max_tokens=750`, then `call.tokens(1000, 750)`: ${CALL_USD}, estimate = "
        "cost). *leases*: agents registered with `leases=True` and `CostRecorder(..., leases=True)` (30 s flush; "
        "a batch also leaves when the SDK asks for a lease); *today*: no leases, batches flushed after 1 s. Both "
        "paths run in the same stack and the same run, one after the other (overshoot) or side by side "
        "(writes). Overshoot: fresh tenants and agents per scenario and path; each agent calls at 100 calls/s "
        "(staggered starts) until its SDK refuses; overshoot is the counted hour spend (agent's or tenant's, "
        "from the API) minus the limit once every batch was counted. Writes: the `firestore_writes` of the "
        "agent's fleet-costs log lines, plus, for an agent registered with leases, what its registration wrote "
        "beyond a plain one's (the first grant); a line naming a `lease` command is a batch that got a grant. "
        "The wait: agents registered without leases and recorders with, so each first `call()` asks and "
        "blocks until the grant arrives (one agent at a time). The minute tick's returns are measured in "
        "process (`release_due` as if 10 minutes had passed) over every epoch the run left open.",
    ]


def derived_isolated(iso: dict[str, Writes], per_return: float) -> tuple[float, float, dict[str, float]]:
    """Writes per call at 1,000 calls/day evenly spread (86.4 s apart), from the measured parts."""
    today = iso["today"].lines
    batch = today.writes() / max(len(today.costs), 1)
    leased = iso["leases"].lines
    # A grant answers a request alone (``lease_request``: no records) or rides on a counted batch.
    granting = [x["firestore_writes"] - (0 if x.get("outcome") == "lease_request" else batch)
                for x in leased.costs if Lines.granted(x)]  # fmt: skip
    per_grant = statistics.mean(granting) if granting else 0.0
    rate = 1000 * CALL_USD / 86400  # USD per second
    lease = max(CALL_USD, rate * 60, Decimal("0.01"))  # need, 60 s of the recent rate, the smallest lease
    grants_per_call = 1 / int(lease / CALL_USD)
    returns_per_call = 24 / 1000  # an epoch never outlives its UTC hour: at most one return an hour
    lease_writes = batch + grants_per_call * per_grant + returns_per_call * per_return
    parts = {"batch": batch, "grant": per_grant, "grants_per_call": grants_per_call, "lease": float(lease),
             "returns_per_call": returns_per_call, "return": per_return}  # fmt: skip
    return lease_writes, batch, parts


def monthly(writes: float, reads: float, calls_per_month: float) -> str:
    usd = Decimal(calls_per_month) * (Decimal(str(writes)) * WRITE_USD + Decimal(str(reads)) * READ_USD)
    return f"${usd:,.2f}"


def main(report: Callable[[str], None] = print) -> list[str]:
    from tests.bench import lease_check  # lazy: a few seconds of its own, only for the report

    print("the lease check in the SDK (micro-bench) ...", file=sys.stderr)
    check_lines = lease_check.main(report=lambda line: None)
    stack = Stack(ROOT / ".stack-bench", function_env=UNSIGNED, create_admin_key=True)
    try:
        stack.up()
        fresh_store()
        bench = Bench(stack)
        print("overshoot ...", file=sys.stderr)
        overs = overshoot(bench, "agent", tenant_budget=False) + overshoot(bench, "tenant", tenant_budget=True)
        reg = reg_grant_writes(bench, [a for a in bench.reg_lines if "-agent-leases-" in a],
                               [a for a in bench.reg_lines if "-agent-today-" in a])  # fmt: skip
        steady_runs = writes_run(bench, f"one agent, 100 calls/s for {PACED_S} s", "paced", int(PACED_S * RATE),
                            1 / RATE, True)  # fmt: skip
        burst = writes_run(bench, f"a burst: {BURST_CALLS} calls at {BURST_RATE:.0f}/s, no lease held", "burst",
                           BURST_CALLS, 1 / BURST_RATE, False)  # fmt: skip
        print("the wait for a lease ...", file=sys.stderr)
        waits = fetch_waits(bench)
        iso = writes_run(bench, f"isolated: {ISOLATED_CALLS} calls {ISOLATED_GAP_S:.0f} s apart", "isolated",
                         ISOLATED_CALLS, ISOLATED_GAP_S, True)  # fmt: skip
        returned, return_reads, return_writes = returns()
        bench.listener.close()
    finally:
        stack.down()

    per_return = return_writes / returned if returned else 0.0
    after = {w.path: steady(bench, w, w.agent_id) for w in steady_runs}
    derived, today_batch, parts = derived_isolated({w.path: w for w in iso}, per_return)
    lines = [
        f"**Overshoot past a ${LIMIT}/hour hard limit** (${CALL_USD} calls at {RATE:.0f} calls/s per agent, "
        "until the SDK refuses; negative: spend stopped under the limit)",
        "",
        "| limit | path | overshoot median | overshoot max | stopped under the limit | calls/s achieved "
        "(median) | refusals |",
        "|---|---|---|---|---|---|---|",
        *[o.row() for o in overs],
        "",
        "**Firestore writes per call** (fleet-costs lines of the agent, plus the first grant at registration)",
        "",
        "| run | path | calls | batches | batches with a grant | batch writes | first-grant writes "
        "| writes/call | reads/call |",
        "|---|---|---|---|---|---|---|---|---|",
        *[w.row() for w in (*steady_runs, *burst, *iso)],
        "",
        "| parts | figure |",
        "|---|---|",
        f"| 100 calls/s once the first 10 s are over (batches sent after, their writes): leases | {after['leases']} |",
        f"| 100 calls/s once the first 10 s are over: today | {after['today']} |",
        f"| writes per isolated batch (today's path, measured) | {today_batch:.2f} |",
        f"| writes per grant (a batch with a grant minus a plain batch, isolated run) | {parts['grant']:.2f} |",
        f"| writes of the first grant at registration ({AGENTS} agents, median) | {reg} |",
        f"| the tick's returns: epochs returned / reads / writes | {returned} / {return_reads} / {return_writes} "
        f"({per_return:.2f} writes each) |",
        f"| lease at 1,000 calls/day: max(need ${CALL_USD}, 60 s x ${1000 * CALL_USD / 86400:.6f}/s, smallest "
        f"$0.01) | ${parts['lease']:.2f}: {parts['grants_per_call']:.0f} grant per call |",
        f"| **1,000 calls/day, 86.4 s apart, leases (derived)**: {today_batch:.2f} + "
        f"{parts['grants_per_call']:.0f} x {parts['grant']:.2f} + {parts['returns_per_call']} x {per_return:.2f} "
        f"| **{derived:.2f} writes/call** |",
        f"| **1,000 calls/day, 86.4 s apart, today** (one batch per call) | **{today_batch:.2f} writes/call** |",
        "",
        f"**The wait for a lease** ({len(waits)} first calls of agents holding none, one at a time): "
        f"p50 {statistics.median(waits) * 1000:.0f} ms, p95 {percentile(waits, 95) * 1000:.0f} ms, "
        f"max {max(waits) * 1000:.0f} ms.",
        "",
        "**The lease check in the SDK** (`python -m tests.bench.lease_check`, no stack; median of "
        f"{lease_check.ROUNDS} rounds of {lease_check.N:,} calls):",
        "",
        *check_lines,
    ]
    lines += cost_table(steady_runs, burst, iso, derived, today_batch)
    for line in lines:
        report(line)
    return lines


def cost_table(steady: list[Writes], burst: list[Writes], iso: list[Writes], derived: float, batch: float) -> list[str]:
    """Firestore cost per agent-month: calls a month x (writes/call x $0.18 + reads/call x $0.06) / 100,000."""
    day, fast = 1000 * 30, 100 * 86400 * 30
    rows = []
    for name, runs, calls in (("1,000 calls/day in bursts (as the burst run)", burst, day),
                              ("100 calls/s", steady, fast)):  # fmt: skip
        for w in runs:
            rows.append(f"| {name} | {w.path} | {w.per_call():.4f} | {w.reads_per_call():.4f} | {calls:,} "
                        f"| {monthly(w.per_call(), w.reads_per_call(), calls)} |")  # fmt: skip
    by = {w.path: w for w in iso}
    for path, writes in (("leases", derived), ("today", batch)):
        reads = by[path].reads_per_call()
        rows.insert(0, f"| 1,000 calls/day evenly spread (86.4 s apart) | {path} | {writes:.2f} | {reads:.4f} "
                       f"| {day:,} | {monthly(writes, reads, day)} |")  # fmt: skip
    return [
        "",
        "**Firestore cost per agent-month** (list prices: $0.18 per 100,000 writes, $0.06 per 100,000 reads): "
        "calls a month x (writes/call x $0.18 + reads/call x $0.06) / 100,000; 30 days.",
        "",
        "| agent | path | writes/call | reads/call | calls/month | $/agent-month |",
        "|---|---|---|---|---|---|",
        *rows,
    ]


if __name__ == "__main__":
    main()
