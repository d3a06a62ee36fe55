"""What the budget lease adds to a call: µs per ``recorder.call()`` with a covering lease against the same
recorder without leases, and the lease's own check+reserve+settle.

    python -m tests.bench.lease_check      # a few seconds, no stack needed

A micro-benchmark of the SDK alone, against a publisher that drops what it is given (batches are still
built, encoded and handed over, every 200 calls, in both columns). Each round times ``N`` calls one by one
(perf_counter_ns around each ``with recorder.call(...)``) on a recorder with leases off, then on one whose
lease covers every call (it never asks for more); ``ROUNDS`` rounds alternate the two, and each figure is
the median over rounds of that round's p50 or p99. The extra time is leased minus plain, per percentile.
The last line times the wallet alone (reserve and settle, the part the lease adds under its lock). Not a
test: it asserts nothing.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable
from concurrent.futures import Future
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from fleet_agent.contracts import Command, CommandType, LeaseGrant, ModelPrice
from fleet_agent.costs import CostRecorder
from fleet_agent.leases import LeaseWallet, Reservation

N = 20_000
ROUNDS = 7
MODEL = "gpt-4o"
PRICE = ModelPrice(input_usd=Decimal("0.0000025"), output_usd=Decimal("0.00001"))


class Drop:
    """A publisher that accepts everything at once."""

    def publish(self, topic: str, data: bytes, **attrs: Any) -> Future[str]:
        future: Future[str] = Future()
        future.set_result("1")
        return future


def grant(now: datetime) -> Command:
    lease = LeaseGrant(
        lease_id="0123456789ab.1",
        usd=Decimal("1000000"),  # far more than the calls spend: it never runs low
        expires_at=now + timedelta(hours=1),
        prices={MODEL: PRICE},
    )
    return Command(
        agent_id="bench-agent-1",
        command=CommandType.LEASE,
        issued_at=now,
        command_id="lease-0123456789ab-1",
        until=lease.expires_at,
        lease=lease,
    )


def recorder(leases: bool) -> CostRecorder:
    rec = CostRecorder("bench-agent-1", Drop(), "projects/p/topics/agent-costs", leases=leases, max_delay_s=600)
    if leases:
        rec.apply(grant(datetime.now(UTC)))
    return rec


def one_call(rec: CostRecorder) -> int:
    start = time.perf_counter_ns()
    with rec.call("summarize", model=MODEL, max_tokens=300, prompt_tokens=1200) as call:
        call.tokens(1200, 280)
    return time.perf_counter_ns() - start


def percentiles(samples: list[int]) -> tuple[float, float]:
    ordered = sorted(samples)
    return ordered[len(ordered) // 2] / 1000, ordered[int(len(ordered) * 0.99)] / 1000


def timed(rec: CostRecorder) -> tuple[float, float]:
    for _ in range(500):  # warm up
        one_call(rec)
    gc.collect()
    return percentiles([one_call(rec) for _ in range(N)])


def wallet_only() -> tuple[float, float]:
    """The check+reserve+settle the lease adds, alone: one clock read, two lock holds, integer arithmetic."""
    wallet = LeaseWallet()
    now = datetime.now(UTC)
    wallet.grant(grant(now).lease, now)  # type: ignore[arg-type]
    samples = []
    for _ in range(N):
        start = time.perf_counter_ns()
        got = wallet.reserve(MODEL, 300, 1200)
        assert isinstance(got, Reservation)
        wallet.settle(got, MODEL, (1200, 280), None)
        samples.append(time.perf_counter_ns() - start)
    return percentiles(samples)


def main(report: Callable[[str], None] = print) -> list[str]:
    plain_runs, leased_runs, wallet_runs = [], [], []
    for _ in range(ROUNDS):
        for leases, runs in ((False, plain_runs), (True, leased_runs)):
            rec = recorder(leases)
            runs.append(timed(rec))
            rec.close()
        wallet_runs.append(wallet_only())
    plain = tuple(statistics.median(run[i] for run in plain_runs) for i in (0, 1))
    leased = tuple(statistics.median(run[i] for run in leased_runs) for i in (0, 1))
    wallet = tuple(statistics.median(run[i] for run in wallet_runs) for i in (0, 1))
    lines = [
        "| call() | p50 µs | p99 µs |",
        "|---|---|---|",
        f"| leases off | {plain[0]:.1f} | {plain[1]:.1f} |",
        f"| covering lease | {leased[0]:.1f} | {leased[1]:.1f} |",
        f"| extra (lease check) | {leased[0] - plain[0]:+.1f} | {leased[1] - plain[1]:+.1f} |",
        f"| wallet alone (reserve + settle) | {wallet[0]:.1f} | {wallet[1]:.1f} |",
    ]
    for line in lines:
        report(line)
    return lines


if __name__ == "__main__":
    main()
