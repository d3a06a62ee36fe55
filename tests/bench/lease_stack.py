"""The budget lease benchmark's shared parts (tests/bench/leases.py, tests/bench/lease_writes.py): the
run's constants, the exactly priced call, one stack's publisher and command listener for every agent
(``Bench``), and the functions' log lines of some agents (``Lines``: writes, reads, grants).

*leases*: agents registered with ``leases=True`` and ``CostRecorder(..., leases=True)`` (30 s flush);
*today*: no leases, batches flushed after 1 s. Writes are the functions' own structured log lines
(``firestore_writes``), per agent.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from fleet_agent.commands import CommandListener
from fleet_agent.contracts import DEFAULT_TOPICS, BudgetSpec, EventType, Registration, encode
from fleet_agent.costs import CostRecorder

from emulators.stack import Stack
from tests.bench.costs import NO_RUNAWAY, Api, CountingPublisher, Target
from tests.bench.run import LogCounter, publish_all, publisher, wait_count

AGENTS = int(os.environ.get("BENCH_LEASE_AGENTS", 20))
RATE = 100.0  # calls per second per agent
LIMIT = Decimal("3")
CALL_USD = Decimal("0.01")
PATHS = ("leases", "today")
#: A tenant hourly budget far above what the writes runs spend: their leased agents' grants go through
#: the tenant's reserve (3 writes) instead of the 1-write grant of a tenant without a budget.
BIG_TENANT_USD = Decimal("1000")
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

    def tenant(self, tenant: str, hourly_usd: Decimal | None = None) -> None:
        """No runaway rule (the bench calls at 100 calls/s); a tenant hourly budget when given."""
        self.api.call("PUT", f"/v1/tenants/{tenant}/protection", NO_RUNAWAY)
        if hourly_usd is not None:
            self.api.call("PUT", f"/v1/tenants/{tenant}/budget", {"hourly_usd": str(hourly_usd)})

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
