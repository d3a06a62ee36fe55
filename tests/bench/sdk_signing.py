"""What signing costs the agent: µs per ``encode`` of a heartbeat and of a cost batch, signed and unsigned.

    python -m tests.bench.sdk_signing      # a few seconds, no stack needed

A micro-benchmark of the SDK alone (fleet_agent.contracts.encode with and without an Ed25519 signer):
the canonical bytes (RFC 8785) plus the signature are the whole difference. Best of ``ROUNDS`` rounds of
``N`` encodes each, so a busy machine inflates the figures less. Not a test: it asserts nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from fleet_agent.contracts import CostBatch, CostRecord, Event, Heartbeat, HeartbeatMetrics, ReportedStatus, encode
from fleet_agent.identity import AgentKey

N = 2000
ROUNDS = 5
T0 = datetime(2026, 12, 6, 12, tzinfo=UTC)


def heartbeat() -> Heartbeat:
    metrics = HeartbeatMetrics(cpu_pct=42.0, error_rate=0.01, active_tasks=3, tokens_per_s=48.5)
    return Heartbeat(
        agent_id="bench-agent-1", seq=1_765_000_000_000, sent_at=T0, status=ReportedStatus.ACTIVE, metrics=metrics
    )


def batch(records: int) -> CostBatch:
    rows = [
        CostRecord(
            call_id=f"c-{i:06d}",
            at=T0 + timedelta(milliseconds=10 * i),
            model="gpt-4o",
            input_tokens=1200,
            output_tokens=300,
            cost_usd=Decimal("0.006"),
            success=True,
            latency_ms=850.0,
            operation="summarize",
        )
        for i in range(records)
    ]
    return CostBatch(agent_id="bench-agent-1", batch_id="b" * 32, records=rows)


def per_call_us(fn: Callable[[], object]) -> float:
    best = float("inf")
    for _ in range(ROUNDS):
        start = time.perf_counter()
        for _ in range(N):
            fn()
        best = min(best, (time.perf_counter() - start) / N)
    return best * 1e6


def main(report: Callable[[str], None] = print) -> list[str]:
    key = AgentKey.generate()
    events: list[tuple[str, Event]] = [("heartbeat", heartbeat()), ("cost batch, 1 record", batch(1))]
    events.append(("cost batch, 50 records", batch(50)))
    lines = []
    for name, event in events:
        plain = per_call_us(lambda event=event: encode(event))  # type: ignore[misc]
        signed = per_call_us(lambda event=event: encode(event, signer=key, tenant="acme"))  # type: ignore[misc]
        line = f"{name}: unsigned {plain:.1f} µs, signed {signed:.1f} µs per encode (+{signed - plain:.1f} µs)"
        report(line)
        lines.append(line)
    return lines


if __name__ == "__main__":
    main()
