"""The cost side of `make demo`: LLM agents recording calls with the SDK, and three that misbehave.

- most LLM agents make a few calls a second, priced from the price table or with a reported cost;
- a *runaway* agent retries the same operation in a tight loop: the fleet pauses it (``pause``);
- an agent whose *provider fails* every call: its breaker opens (``breaker_open``);
- an agent with a small *hourly budget*: it is stopped at the limit (``budget_exhausted``);
- one agent uses a model nobody priced: an "unpriced model" alert instead of $0 (that agent spends no
  budget leases, ``leases=False``: an SDK with leases refuses an unpriced model's calls, ``unknown_model``);
- a dedicated tenant (``umbrella``) whose hourly budget is shared by a few agents: their SDKs' budget
  leases stop them together, exactly at the limit (``lease_exhausted``), never past it.

Calls name ``prompt_tokens`` and ``max_tokens``, so the SDK's lease check reserves each call's worst case.
Every agent listens on ``agent-commands`` through one shared ``CommandListener`` and its recorder
refuses calls (``CallRefused``) while a block is in force, as a real agent would.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from fleet_agent import CallRefused, FleetAgent, Registration
from fleet_agent.contracts import BudgetSpec
from rich.table import Table
from rich.text import Text

#: Models and the share of calls that report their own cost (the rest are priced by the server).
MODELS = ("gpt-4o", "gpt-4o-mini", "claude-sonnet-4", "gemini-2.5-flash")
LLM_TYPES = ("llm-chat", "llm-router", "evaluator")
#: The demo tenant whose runaway threshold is lowered so a loop is caught within seconds.
RUNAWAY_CALLS_PER_MINUTE = 150
HOURLY_BUDGET_USD = Decimal("0.40")
#: The tenant whose hourly budget a few agents share, and its limit: about 30 calls of gpt-4o.
SHARED_TENANT, SHARED_AGENTS, SHARED_HOURLY_USD = "umbrella", 4, Decimal("0.30")
SPECIAL = {"runaway": 40.0, "failing": 4.0, "budget": 5.0, "unpriced": 2.0, "shared": 5.0}


class ProviderError(RuntimeError):
    """The simulated LLM provider is down."""


@dataclass
class CallSim:
    """One agent's calls: a behaviour, a rate, and what the SDK let through or refused."""

    agent: FleetAgent
    behaviour: str  # normal | runaway | failing | budget | unpriced | shared
    rate: float
    rng: random.Random
    chosen_model: str = "gpt-4o"
    calls: int = 0
    failures: int = 0
    refused: int = 0
    refusal: str | None = None
    reason: str | None = None  # CallRefused.reason of the first refusal
    refused_after_s: float | None = None
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    @property
    def agent_id(self) -> str:
        return self.agent.agent_id

    def model(self) -> str:
        if self.behaviour == "unpriced":
            return "acme-llm-7b"  # in no price table: the server alerts instead of counting $0
        return self.chosen_model

    def run(self, started: float) -> None:
        operation = "retry_tool_call" if self.behaviour == "runaway" else "answer"
        while not self.stop.is_set():
            # The prompt's size is known before the call, and max_tokens bounds the answer: the lease check
            # reserves the worst case (the shared tenant's calls: 1,000 + 750 tokens of gpt-4o, $0.01).
            prompt, most = (1000, 750) if self.behaviour == "shared" else (self.rng.randint(200, 2000), 600)
            try:
                with self.agent.costs.call(
                    operation, model=self.model(), prompt_tokens=prompt, max_tokens=most
                ) as call:
                    if self.behaviour == "failing":
                        raise ProviderError("503 from the provider")
                    call.tokens(prompt, self.rng.randint(most // 2, most))
                    if self.behaviour == "budget":
                        call.cost(Decimal("0.02"))
                self.calls += 1
            except ProviderError:
                self.calls += 1
                self.failures += 1
            except CallRefused as refused:
                self.refused += 1
                # A lease or a model's price not granted in time is no stop: the next call asks again.
                if self.refusal is None and _stopped(refused):
                    self.refusal, self.reason = str(refused), refused.reason
                    self.refused_after_s = time.monotonic() - started
                if self.behaviour == "shared" and self.refusal is not None:
                    return  # its share of the tenant's budget is spent: this agent is done for the hour
            self.stop.wait(1.0 / self.rate * self.rng.uniform(0.7, 1.3))


def assigned(registrations: list[Registration]) -> dict[str, str]:
    """The misbehaving agents: the first acme LLM agents (in fleet order), and the shared tenant's agents."""
    llm = [r.agent_id for r in registrations if r.agent_type in LLM_TYPES]
    acme = [a for a in llm if a.startswith("acme-")]
    shared = {a: "shared" for a in llm if a.startswith(f"{SHARED_TENANT}-")}
    return {**dict(zip(acme, ("runaway", "failing", "budget", "unpriced"), strict=False)), **shared}


def uses_leases(agent_id: str, registrations: list[Registration]) -> bool:
    """Every agent spends budget leases but the one calling an unpriced model (its SDK would refuse those
    calls, ``unknown_model``, before the fleet ever saw one; without leases the fleet sees them and alerts)."""
    return assigned(registrations).get(agent_id) != "unpriced"


def shared_registrations(template: Registration) -> list[Registration]:
    """The agents of the tenant whose hourly budget they share (made like the fleet's LLM agents)."""
    return [
        template.model_copy(update={"agent_id": f"{SHARED_TENANT}-llm-chat-{n:02d}", "tenant": SHARED_TENANT,
                                    "name": f"Umbrella llm-chat #{n}", "owner": f"{SHARED_TENANT}-platform-team"})
        for n in range(1, SHARED_AGENTS + 1)
    ]  # fmt: skip


def _stopped(refused: CallRefused) -> bool:
    """A hold of the fleet's, or a lease the fleet refused to top up (it has no room until ``until``, or
    answered with too little), not one that merely came late."""
    answered = refused.until is not None or "fleet answered" in str(refused)
    return bool(refused.blocks) or (refused.reason == "lease_exhausted" and answered)


def behaviours(agents: list[FleetAgent], rng: random.Random) -> list[CallSim]:
    """The LLM agents' calls; the first acme agents get the misbehaviours."""
    llm = [a for a in agents if a.registration.agent_type in LLM_TYPES]
    kinds = assigned([a.registration for a in llm])
    return [
        CallSim(a, kinds.get(a.agent_id, "normal"), SPECIAL.get(kinds.get(a.agent_id, ""), rng.uniform(1, 3)),
                random.Random(rng.random()), chosen_model="gpt-4o" if a.agent_id in kinds else rng.choice(MODELS))
        for a in llm
    ]  # fmt: skip


def budget_for(agent_type: str, behaviour: str) -> BudgetSpec | None:
    if behaviour == "shared":
        return None  # the tenant's budget (set by shared_budget()) is the only one
    if behaviour == "budget":
        return BudgetSpec(hourly_usd=HOURLY_BUDGET_USD, daily_usd=Decimal("5"))
    if agent_type in LLM_TYPES:
        return BudgetSpec(daily_usd=Decimal("25"), monthly_usd=Decimal("500"))
    return None


def start(sims: list[CallSim], timeout: float = 30.0) -> float:
    """Start every agent's calls, once the agents that spend leases hold their first one (granted when the
    fleet processes the registration: until then a call would wait for a registration still queued)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(s.agent.costs.lease is None for s in sims if s.behaviour != "unpriced"):
        time.sleep(0.2)
    started = time.monotonic()
    for sim in sims:
        sim.thread = threading.Thread(target=sim.run, args=(started,), name=f"calls-{sim.agent_id}", daemon=True)
        sim.thread.start()
    return started


def stop(sims: list[CallSim]) -> None:
    for sim in sims:
        sim.stop.set()
    for sim in sims:
        if sim.thread is not None:
            sim.thread.join(timeout=5)


def events(sims: list[CallSim], reported: set[str]) -> list[str]:
    """New refusals since the last call, for the demo's event log."""
    out = []
    for sim in sims:
        if sim.refusal is not None and sim.agent_id not in reported:
            reported.add(sim.agent_id)
            out.append(f"{sim.refused_after_s:4.0f}s  {sim.behaviour} agent stopped by the fleet: {sim.refusal}")
    return out


def spend_table(api: Any, sims: list[CallSim]) -> Table:
    table = Table(title="Spend this hour, as GET /v1/agents/{id}/usage reports it", title_justify="left")
    for name in ("agent", "behaviour"):
        table.add_column(name)
    for name in ("calls", "success", "tokens", "spend $", "budget $/h", "left $", "unpriced"):
        table.add_column(name, justify="right")
    table.add_column("held by")
    for sim in sorted(sims, key=lambda s: (s.behaviour == "normal", s.agent_id)):
        usage = api.get(f"/v1/agents/{sim.agent_id}/usage")
        hour = usage["periods"]["hour"]
        rate = hour.get("success_rate")
        holds = ", ".join(sorted(usage.get("holds") or {})) or "-"
        table.add_row(
            Text(sim.agent_id),
            Text(sim.behaviour, style="" if sim.behaviour == "normal" else "yellow"),
            str(hour["calls"]),
            Text("-" if rate is None else f"{rate:.0%}", style="red" if rate is not None and rate < 0.5 else ""),
            f"{hour['tokens']:,}",
            f"{Decimal(hour['spend_usd']):.4f}",
            hour.get("budget_usd") or "-",
            hour.get("remaining_usd") or "-",
            str(hour.get("unpriced_calls") or 0),
            Text(holds, style="red" if holds != "-" else ""),
        )
    return table


def tenants_table(api: Any, tenants: tuple[str, ...]) -> Table:
    table = Table(title="Spend per tenant (GET /v1/tenants/{tenant}/usage)", title_justify="left")
    table.add_column("tenant")
    for name in ("calls today", "tokens today", "spend today $", "spend this month $", "day resets at"):
        table.add_column(name, justify="right")
    for tenant in tenants:
        periods = api.get(f"/v1/tenants/{tenant}/usage")["periods"]
        day, month = periods["day"], periods["month"]
        table.add_row(
            tenant,
            str(day["calls"]),
            f"{day['tokens']:,}",
            f"{Decimal(day['spend_usd']):.4f}",
            f"{Decimal(month['spend_usd']):.4f}",
            day["resets_at"],
        )
    return table


def alerts_table(alerts: list[dict[str, Any]]) -> Table:
    table = Table(title=f"Alerts raised: {len(alerts)} (GET /v1/alerts)", title_justify="left")
    table.add_column("kind")
    table.add_column("severity")
    table.add_column("message", overflow="fold")
    style = {"critical": "red", "warning": "yellow", "info": "cyan"}
    for alert in sorted(alerts, key=lambda a: a.get("raised_at") or ""):
        table.add_row(
            alert["kind"], Text(alert["severity"], style=style.get(alert["severity"], "")), alert["message"][:300]
        )
    return table


def shared_budget(api: Any) -> None:
    """The shared tenant's hourly budget, through the API (every agent of the tenant counts against it)."""
    api.put(f"/v1/tenants/{SHARED_TENANT}/budget", {"hourly_usd": str(SHARED_HOURLY_USD)})
    api.put(f"/v1/tenants/{SHARED_TENANT}/protection", {"runaway_calls_per_minute": RUNAWAY_CALLS_PER_MINUTE})


def shared_table(api: Any, sims: list[CallSim]) -> Table:
    """The shared tenant's hour: its limit, what was counted, the overshoot, and each agent's calls."""
    shared = sorted((s for s in sims if s.behaviour == "shared"), key=lambda s: s.agent_id)
    hour = api.get(f"/v1/tenants/{SHARED_TENANT}/usage")["periods"]["hour"]
    spend = Decimal(hour["spend_usd"])
    table = Table(
        title=f"A tenant budget shared by {len(shared)} agents, stopped by their budget leases "
        "(GET /v1/tenants/{tenant}/usage)",
        title_justify="left",
    )
    for name in ("tenant", "limit $/h", "counted this hour $", "overshoot $", "agents", "calls before refusal"):
        table.add_column(name, justify="left" if name == "tenant" else "right")
    calls = ", ".join(f"{s.agent_id.rsplit('-', 1)[1]}: {s.calls} ({_reason(s)})" for s in shared)
    overshoot = max(spend - SHARED_HOURLY_USD, Decimal(0))
    table.add_row(
        SHARED_TENANT, f"{SHARED_HOURLY_USD:.4f}", f"{spend:.4f}",
        Text(f"{overshoot:.4f}", style="green" if overshoot == 0 else "red"), str(len(shared)), calls,
    )  # fmt: skip
    return table


def _reason(sim: CallSim) -> str:
    return sim.reason or "never refused"
