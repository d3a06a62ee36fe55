"""`make bench`, budget leases section (issue 19): overshoot past hard limits, Firestore writes per call,
the wait for a lease, each beside today's path (no leases, batches flushed after 1 s) in the same run.

    python -m tests.bench.leases      # about 10 minutes: its own stack

The real path throughout: the SDK's ``CostRecorder`` (with ``leases=True``: every call checked against a
lease before it runs) -> Pub/Sub emulator push -> fleet-costs / fleet-registrations under
functions-framework -> Firestore emulator, and signed ``lease`` / hold commands back on ``agent-commands``
to a ``CommandListener``. Every call is priced exactly: gpt-4o, ``prompt_tokens=1000, max_tokens=750``,
then ``call.tokens(1000, 750)``: $0.01, its estimate equal to its cost. This module: the overshoot
scenarios and the report; tests/bench/lease_stack.py the shared parts; tests/bench/lease_writes.py the
writes, the wait and the cost table.
"""

from __future__ import annotations

import os
import statistics
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal

from fleet_agent.contracts import BudgetSpec
from fleet_agent.costs import CallRefused, CostRecorder

from emulators.stack import ROOT, Stack
from tests.bench import lease_writes
from tests.bench.costs import percentile
from tests.bench.lease_stack import AGENTS, BIG_TENANT_USD, CALL_USD, LIMIT, PATHS, RATE, Bench, exact_call
from tests.bench.run import UNSIGNED, fresh_store

PACED_S = int(os.environ.get("BENCH_LEASE_SECONDS", 30))
ISOLATED_CALLS, ISOLATED_GAP_S = int(os.environ.get("BENCH_LEASE_ISOLATED", 8)), 35.0
BURST_CALLS, BURST_RATE = 50, 2.0


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
                stop.reason += f" ({why(refused)})" if refused.reason == "lease_exhausted" else ""
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


def why(refused: CallRefused) -> str:
    """How the fleet answered a refused call's wait: no room until a time, answered too small, or not at all."""
    text = str(refused)
    if refused.until is not None or "has no room" in text:
        return "fleet: no room, retry_after"
    return "fleet answered" if "fleet answered" in text else "no answer in time"


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
        bench.tenant(tenant, LIMIT if tenant_budget else None)
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


# -- the report ----------------------------------------------------------------------------------------


def describe() -> list[str]:
    return [
        f"`python -m tests.bench.leases` (its own stack; part of `make bench`). Every call is priced exactly "
        f"(gpt-4o, `prompt_tokens=1000, max_tokens=750`, then `call.tokens(1000, 750)`: ${CALL_USD}, estimate = "
        "cost). *leases*: agents registered with `leases=True` and `CostRecorder(..., leases=True)` (30 s flush; "
        "a batch also leaves at once when the SDK asks for a lease, with the call's record when it asks ahead); "
        "*today*: no leases, batches flushed after 1 s. Both paths run in the same stack and the same run, one "
        "after the other (overshoot) or side by side (writes). Overshoot: fresh tenants and agents per scenario "
        f"and path; each agent calls at {RATE:.0f} calls/s (staggered starts) until its SDK refuses; overshoot is "
        "the counted hour spend (agent's or tenant's, from the API) minus the limit once every batch was "
        "counted. Writes: the `firestore_writes` of the agent's fleet-costs log lines, plus, for an agent "
        "registered with leases, what its registration wrote beyond a plain one's (the first grant); a line "
        "naming a `lease` command is a batch that got a grant. Each writes run has an agent per path in a "
        f"tenant without a budget (a grant: 1 write) and in one with a ${BIG_TENANT_USD:.0f}/hour budget (a "
        "grant goes through the tenant's reserve: 3 writes). The wait: agents registered without leases and "
        "recorders with, so each first `call()` asks and blocks until the grant arrives (one agent at a time). "
        "The minute tick's returns are measured in process (`release_due` as if 10 minutes had passed) over "
        "every epoch the run left open.",
    ]


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
        reg = lease_writes.reg_grant_writes(bench, [a for a in bench.reg_lines if "-agent-leases-" in a],
                                            [a for a in bench.reg_lines if "-agent-today-" in a])  # fmt: skip
        runs = []
        for budget in lease_writes.BUDGETS:  # one tenant kind at a time: 100 calls/s per agent loads the stack
            runs += lease_writes.writes_run(bench, f"one agent, {RATE:.0f} calls/s for {PACED_S} s", "paced",
                                            int(PACED_S * RATE), 1 / RATE, True, (budget,))  # fmt: skip
        runs += lease_writes.writes_run(bench, f"a burst: {BURST_CALLS} calls at {BURST_RATE:.0f}/s, no lease held",
                                        "burst", BURST_CALLS, 1 / BURST_RATE, False)  # fmt: skip
        print("the wait for a lease ...", file=sys.stderr)
        waits = lease_writes.fetch_waits(bench)
        runs += lease_writes.writes_run(bench, f"isolated: {ISOLATED_CALLS} calls {ISOLATED_GAP_S:.0f} s apart",
                                        "isolated", ISOLATED_CALLS, ISOLATED_GAP_S, True)  # fmt: skip
        regs = {b: next(w.reg_grant_writes for w in runs if w.budget == b and w.path == "leases" and
                        w.label.startswith("isolated")) for b in lease_writes.BUDGETS}  # fmt: skip
        ret = lease_writes.returns()
        bench.listener.close()
    finally:
        stack.down()

    lines = [
        f"**Overshoot past a ${LIMIT}/hour hard limit** (${CALL_USD} calls at {RATE:.0f} calls/s per agent, "
        "until the SDK refuses; negative: spend stopped under the limit)",
        "",
        "| limit | path | overshoot median | overshoot max | stopped under the limit | calls/s achieved "
        "(median) | refusals |",
        "|---|---|---|---|---|---|---|",
        *[o.row() for o in overs],
        "",
        f"Writes of the first grant at registration, {AGENTS} agents each with its own hourly limit (median): {reg}.",
        "",
        *lease_writes.report(bench, runs, regs, ret),
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
    for line in lines:
        report(line)
    return lines


if __name__ == "__main__":
    main()
