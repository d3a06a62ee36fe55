"""The budget lease benchmark's writes, wait and cost parts (run by tests/bench/leases.py): Firestore writes
per call at 100 calls/s, in a burst and for isolated calls, each for an agent of a tenant *without* a
budget (a grant is 1 write, final at once) and one whose tenant has a large hourly budget (a grant goes
through the tenant's reserve: 3 writes), beside today's path in the same tenant; the wait for a first
lease; the minute tick's returns; writes per call at 1,000 calls/day derived from the measured parts;
and the Firestore cost per agent-month.
"""

from __future__ import annotations

import statistics
import sys
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from fleet_agent.contracts import LeaseGrant, ModelPrice
from fleet_agent.costs import CostRecorder
from fleet_agent.leases import LeaseWallet, Reservation

from tests.bench.lease_stack import BIG_TENANT_USD, CALL_USD, PATHS, READ_USD, WRITE_USD, Bench, Lines, exact_call
from tests.bench.run import fresh_store

FETCHES = 20
HORIZON_S, TTL_S, SMALLEST_USD = 300, 300, Decimal("0.01")  # FLEET_LEASE_HORIZON_S, _TTL_S, _MIN_USD_NANOS
BUDGETS = (False, True)  # the writes runs' tenants: without a budget, with a large hourly one


def budget_name(budget: bool) -> str:
    return f"${BIG_TENANT_USD:.0f}/hour" if budget else "none"


@dataclass
class Writes:
    label: str
    path: str
    calls: int
    lines: Lines
    reg_grant_writes: int = 0  # the first lease's writes at registration, attributed to the agent
    agent_id: str = ""
    budget: bool = False  # the agent's tenant has an hourly budget (grants go through its reserve)

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
            f"| {self.label} | {budget_name(self.budget)} | {self.path} | {self.calls} | {len(c.costs)} "
            f"| {c.grants()} | {c.writes()} | {self.reg_grant_writes} | **{self.per_call():.4f}** "
            f"| {self.reads_per_call():.4f} |"
        )


def steady(bench: Bench, run: Writes, after_s: float = 10.0) -> str:
    """Writes per call once the first ``after_s`` seconds are over: batches sent after that, their lines."""
    sent = [(at, data) for at, a, data in list(bench.counting.sent) if a == run.agent_id]
    if not sent:
        return "-"
    cut = sent[0][0] + after_s
    calls = sum(data.count(b'"call_id"') for at, data in sent if at >= cut)
    batches = sum(1 for at, _ in sent if at >= cut)
    lines = run.lines.costs[-batches:] if batches else []
    writes = sum(x["firestore_writes"] for x in lines)
    return f"{writes / calls:.4f} ({writes} writes, {calls} calls, {batches} batches)" if calls else "-"


def paced(rec: CostRecorder, calls: int, gap_s: float, first_at: float) -> None:
    for i in range(calls):
        delay = first_at + i * gap_s - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        exact_call(rec)
    rec.close()


def writes_run(
    bench: Bench, label: str, tag: str, calls: int, gap_s: float, first_lease: bool, budgets: tuple[bool, ...] = BUDGETS
) -> list[Writes]:
    """Per tenant kind in ``budgets``, one agent per path, all side by side, ``calls`` calls ``gap_s``
    apart; the lease agent is registered with ``leases=first_lease`` (False: it holds no lease at first)."""
    agents = {(b, p): f"bench-lease-{tag}-{'budget' if b else 'nobudget'}-{p}" for b in budgets for p in PATHS}
    recs = {key: bench.recorders([agent], key[1] == "leases")[0] for key, agent in agents.items()}
    for b in budgets:
        tenant = "bench-lease-writes-budget" if b else "bench-lease-writes"
        bench.tenant(tenant, BIG_TENANT_USD if b else None)
        for p in PATHS:
            bench.register([agents[b, p]], tenant, leases=first_lease and p == "leases")
    print(f"  {label}, tenant budget {', '.join(budget_name(b) for b in budgets)} ...", file=sys.stderr)
    offset = bench.costs_offset()
    first_at = time.monotonic() + 0.5
    threads = [threading.Thread(target=paced, args=(rec, calls, gap_s, first_at)) for rec in recs.values()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    out = []
    for (b, p), agent in agents.items():
        # The first lease's writes: what the lease agent's registration wrote beyond the plain one's.
        extra = reg_grant_writes(bench, [agents[b, "leases"]], [agents[b, "today"]]) if first_lease else 0
        out.append(Writes(label, p, calls, bench.counted([agent], offset), extra if p == "leases" else 0, agent, b))
    return out


def reg_grant_writes(bench: Bench, leased: list[str], plain: list[str]) -> int:
    """Registration writes with ``leases=True`` minus without (medians): what granting the first lease wrote."""
    with_lease = statistics.median(bench.reg_lines[a]["firestore_writes"] for a in leased)
    without = statistics.median(bench.reg_lines[a]["firestore_writes"] for a in plain)
    return max(0, round(with_lease - without))


def fetch_waits(bench: Bench) -> list[float]:
    """Agents registered without leases, recorders with: each first call must ask and wait (one at a time)."""
    tenant = "bench-lease-fetch"
    bench.tenant(tenant)
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


# -- derived: 1,000 calls a day, evenly spread ---------------------------------------------------------


def simulate(gap_s: float, calls: int = 1000) -> tuple[int, int, int]:
    """The SDK's real wallet (``LeaseWallet``, on a simulated clock) spending ``calls`` calls ``gap_s`` apart,
    granted leases sized as the fleet does when the agent's rate is known: max(need, 300 s of the rate,
    $0.01), an epoch's expiry 300 s after its latest grant and never past the UTC hour. Returns (grants
    asked ahead, riding on a call's record; grants waited for, asked alone; epochs)."""
    clock = [1.0]
    wallet = LeaseWallet(monotonic=lambda: clock[0])
    base = datetime(2026, 1, 1, tzinfo=UTC)
    lease = max(CALL_USD, CALL_USD / Decimal(str(gap_s)) * HORIZON_S, SMALLEST_USD).quantize(Decimal("1e-9"))
    price = ModelPrice(input_usd=Decimal("0.0000025"), output_usd=Decimal("0.00001"))
    state = {"epochs": 0, "seq": 0}

    def give(request_id: str | None) -> None:
        now = base + timedelta(seconds=clock[0])
        if wallet.snapshot() is None:
            state["epochs"], state["seq"] = state["epochs"] + 1, 0
        state["seq"] += 1
        hour_end = now.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
        wallet.grant(LeaseGrant(lease_id=f"{state['epochs']:012x}.{state['seq']}", usd=lease, request_id=request_id,
                                expires_at=min(now + timedelta(seconds=TTL_S), hour_end),
                                prices={"gpt-4o": price}), now)  # fmt: skip

    riding = alone = 0
    for i in range(calls):
        clock[0] = 1.0 + i * gap_s
        got: Any = wallet.reserve("gpt-4o", 750, 1000)
        if not isinstance(got, Reservation):
            alone += 1
            give(None)
            got = wallet.reserve("gpt-4o", 750, 1000)
        wallet.settle(got, "gpt-4o", (1000, 750), None)
        if got.ask is not None:
            riding += 1
            clock[0] += 0.2  # the grant comes back with the record's batch
            give(got.ask.request_id)
    return riding, alone, state["epochs"]


@dataclass
class Derived:
    """Writes per call at 1,000 calls/day, 86.4 s apart, from the measured parts and the simulated grants."""

    budget: bool
    batch: float  # writes per isolated batch, today's path (measured)
    lease_batch: float  # writes per isolated batch under a lease, without a grant (measured)
    grant: float  # writes a grant adds to a counted batch (measured, isolated run)
    alone: float  # writes of a request alone (``lease_request``), measured where one happened
    ret: float  # writes per returned epoch (the tick, measured)
    riding: float  # grants per call, asked ahead with a record (simulated)
    waited: float  # grants per call, waited for (simulated: an epoch's first)
    epochs: float  # epochs per call (simulated): at most one return each

    @property
    def leases(self) -> float:
        return self.lease_batch + self.riding * self.grant + self.waited * self.alone + self.epochs * self.ret

    def row(self) -> str:
        return (
            f"| **1,000 calls/day, 86.4 s apart, leases, tenant budget {budget_name(self.budget)} (derived)**: "
            f"{self.lease_batch:.2f} + {self.riding:.3f} x {self.grant:.2f} + {self.waited:.3f} x {self.alone:.2f} "
            f"+ {self.epochs:.3f} x {self.ret:.2f} | **{self.leases:.2f} writes/call** |"
        )


def derive(runs: list[Writes], budget: bool, per_return: float) -> Derived:
    iso = {w.path: w for w in runs if w.budget == budget and w.label.startswith("isolated")}
    today = iso["today"].lines
    batch = today.writes() / max(len(today.costs), 1)
    # A batch under a lease is not added to the tenant's reserve (its spend was charged with the grant).
    counted = [x for x in iso["leases"].lines.costs if x.get("outcome") != "lease_request"]
    plain = [x["firestore_writes"] for x in counted if not Lines.granted(x)]
    lease_batch = statistics.median(plain) if plain else batch
    granting = [x["firestore_writes"] - lease_batch for x in counted if Lines.granted(x)]
    grant = statistics.mean(granting) if granting else 0.0
    alone_lines = [x["firestore_writes"] for w in runs if w.budget == budget and w.path == "leases"
                   for x in w.lines.costs if x.get("outcome") == "lease_request"]  # fmt: skip
    alone = statistics.mean(alone_lines) if alone_lines else grant
    riding, waited, epochs = simulate(86.4)
    return Derived(budget, batch, lease_batch, grant, alone, per_return, riding / 1000, waited / 1000, epochs / 1000)


def monthly(writes: float, reads: float, calls_per_month: float) -> str:
    usd = Decimal(calls_per_month) * (Decimal(str(writes)) * WRITE_USD + Decimal(str(reads)) * READ_USD)
    return f"${usd:,.2f}"


def cost_table(runs: list[Writes], derived: list[Derived]) -> list[str]:
    """Firestore cost per agent-month: calls a month x (writes/call x $0.18 + reads/call x $0.06) / 100,000."""
    day, fast = 1000 * 30, 100 * 86400 * 30
    rows = []
    for d in derived:
        iso = {w.path: w for w in runs if w.budget == d.budget and w.label.startswith("isolated")}
        for path, writes in (("today", d.batch), ("leases", d.leases)):
            reads = iso[path].reads_per_call()
            rows.append(f"| 1,000 calls/day evenly spread (86.4 s apart) | {budget_name(d.budget)} | {path} "
                        f"| {writes:.2f} | {reads:.4f} | {day:,} | {monthly(writes, reads, day)} |")  # fmt: skip
    for name, prefix, calls in (("1,000 calls/day in bursts (as the burst run)", "a burst", day),
                                ("100 calls/s (the whole 30 s run)", "one agent", fast)):  # fmt: skip
        for w in (w for w in runs if w.label.startswith(prefix)):
            usd = monthly(w.per_call(), w.reads_per_call(), calls)
            rows.append(f"| {name} | {budget_name(w.budget)} | {w.path} | {w.per_call():.4f} "
                        f"| {w.reads_per_call():.4f} | {calls:,} | {usd} |")  # fmt: skip
    return [
        "",
        "**Firestore cost per agent-month** (list prices: $0.18 per 100,000 writes, $0.06 per 100,000 reads): "
        "calls a month x (writes/call x $0.18 + reads/call x $0.06) / 100,000; 30 days.",
        "",
        "| agent | tenant budget | path | writes/call | reads/call | calls/month | $/agent-month |",
        "|---|---|---|---|---|---|---|",
        *rows,
    ]


def report(bench: Bench, runs: list[Writes], reg: dict[bool, int], ret: tuple[int, int, int]) -> list[str]:
    """The writes section of the report: per run, the parts, the derived isolated figure, the cost table."""
    returned, return_reads, return_writes = ret
    per_return = return_writes / returned if returned else 0.0
    derived = [derive(runs, b, per_return) for b in BUDGETS]
    parts = [
        f"| 100 calls/s once the first 10 s are over, tenant budget {budget_name(w.budget)}: {w.path} "
        f"| {steady(bench, w)} |"
        for w in runs
        if w.label.startswith("one agent")
    ]
    for d in derived:
        parts += [
            f"| tenant budget {budget_name(d.budget)}: writes per isolated batch, today's path / under a lease / "
            f"per grant riding on a batch / per request alone | {d.batch:.2f} / {d.lease_batch:.2f} / "
            f"{d.grant:.2f} / {d.alone:.2f} |",
            f"| tenant budget {budget_name(d.budget)}: writes of the first grant at registration (median) "
            f"| {reg[d.budget]} |",
        ]
    lease = max(CALL_USD, 1000 * CALL_USD / 86400 * HORIZON_S, SMALLEST_USD)
    d0 = derived[0]
    parts += [
        f"| the tick's returns: epochs returned / reads / writes | {returned} / {return_reads} / {return_writes} "
        f"({per_return:.2f} writes each) |",
        f"| lease at 1,000 calls/day: max(need ${CALL_USD}, {HORIZON_S} s x ${1000 * CALL_USD / 86400:.6f}/s, "
        f"smallest ${SMALLEST_USD}) | ${lease:.4f} |",
        f"| the SDK's wallet over 1,000 such calls (simulated clock): grants asked ahead with a record / waited "
        f"for / epochs, per call | {d0.riding:.3f} / {d0.waited:.3f} / {d0.epochs:.3f} |",
        *[d.row() for d in derived],
        f"| **1,000 calls/day, 86.4 s apart, today** (one batch per call) | **{d0.batch:.2f} writes/call** |",
    ]
    return [
        "**Firestore writes per call** (fleet-costs lines of the agent, plus the first grant at registration)",
        "",
        "| run | tenant budget | path | calls | batches | batches with a grant | batch writes | first-grant writes "
        "| writes/call | reads/call |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *[w.row() for w in runs],
        "",
        "| parts | figure |",
        "|---|---|",
        *parts,
        *cost_table(runs, derived),
    ]
