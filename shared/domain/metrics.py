"""The fleet's Prometheus series (``GET /metrics``), computed from figures the stores read: pure.

shared/store/metrics_reads.py reads the figures (bounded reads: a projection of the agents, the open
episodes and the active jobs, one count aggregation per rejection code, each tenant's usage shards);
shared/api/metrics.py caches them and serves the series below as OpenMetrics text with prometheus-client.
Names follow LiteLLM (``..._spend``, ``..._remaining_budget``, ``..._max_budget``) and Kueue
(``..._pending_jobs``, ``..._running_jobs``). Every series is a gauge: spend is per period (it resets), the
rejection counts are over a sliding hour; none only grows, so none is named ``_total``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from shared.domain import fleet_health
from shared.domain.alerts import Severity
from shared.domain.jobs import ACTIVE, JobState
from shared.domain.lifecycle import State
from shared.domain.rejections import Code

PREFIX = "fleet_"
#: The statuses ``fleet_agents`` counts: all but ``decommissioned``. A decommissioned agent never comes back
#: and they only accumulate, so a scrape does not read them (shared/store/metrics_reads.py filters them out).
AGENT_STATUSES = tuple(s for s in State if s is not State.DECOMMISSIONED)


@dataclass(frozen=True)
class PeriodUsage:
    """A tenant's spend in one period (hour, day, month) with its budget, as the usage API shows it."""

    tenant: str
    period: str
    spend_usd: float
    spend_tokens: int
    budget_usd: float | None
    remaining_usd: float | None
    budget_tokens: int | None
    remaining_tokens: int | None
    resets_at: datetime


@dataclass(frozen=True)
class AgentSpend:
    """One agent's spend in one period (only with per-agent labels)."""

    tenant: str
    agent_id: str
    period: str
    spend_usd: float


@dataclass(frozen=True)
class Figures:
    """What one scrape shows, as read (already scoped to the key's tenant when it has one)."""

    #: (tenant, agent id, status) of every agent read.
    agents: tuple[tuple[str, str, str], ...] = ()
    usage: tuple[PeriodUsage, ...] = ()
    #: (tenant, severity) of every open episode read (the deployment's ``_fleet`` ones included).
    open_episodes: tuple[tuple[str, str], ...] = ()
    #: (kind, severity) of the open ``fleet_health`` episodes (fleet-wide; None for a tenant's key).
    fleet_health: tuple[tuple[str, str], ...] | None = None
    #: (tenant, backend, state) of every job waiting or active.
    jobs: tuple[tuple[str, str, str], ...] = ()
    #: Rejection code -> rejections received in the last hour (fleet-wide; None for a tenant's key).
    rejections: dict[str, int] | None = None
    agent_spend: tuple[AgentSpend, ...] = ()
    #: Parts whose read hit its cap (the series then undercount).
    truncated: tuple[str, ...] = ()
    #: Firestore reads the figures cost.
    reads: int = 0
    read_at: datetime | None = None
    #: Extra tenants to show even without agents (a tenant-scoped key's own).
    tenants: tuple[str, ...] = field(default=())


@dataclass
class Series:
    """One metric family: its name (prefix included), help, label names and samples (labels, value)."""

    name: str
    help: str
    labels: tuple[str, ...]
    samples: list[tuple[tuple[str, ...], float]] = field(default_factory=list)

    def add(self, value: float, *labels: str) -> None:
        self.samples.append((labels, float(value)))


#: Job states a backend's pending series counts (Kueue's pending workloads: waiting for quota).
PENDING = frozenset({JobState.QUEUED})


def tenants_of(figures: Figures) -> list[str]:
    """Every tenant the figures name, sorted; not the deployment's pseudo-tenant ``_fleet``, whose episodes
    are ``fleet_health_open_episodes`` (by kind), not a tenant's."""
    names = {t for t, _a, _s in figures.agents} | {u.tenant for u in figures.usage} | set(figures.tenants)
    names |= {t for t, _s in figures.open_episodes} | {t for t, _b, _s in figures.jobs}
    return sorted(names - {fleet_health.TENANT})


def series(figures: Figures, *, per_agent: bool, age_s: float = 0.0) -> list[Series]:
    """The families of one scrape. Counts are zero-filled per tenant (every status, every severity), so a
    series drops to 0 instead of vanishing when its last agent or episode goes."""
    tenants = tenants_of(figures)
    out = [_agents(figures, tenants), *_usage(figures.usage), _episodes(figures, tenants), *_jobs(figures)]
    if figures.rejections is not None:
        out += _rejections(figures.rejections)
    if figures.fleet_health is not None:
        out.append(_fleet_health(figures.fleet_health))
    if per_agent:
        out += _per_agent(figures)
    out += _self(figures, age_s)
    return out


def _agents(figures: Figures, tenants: Iterable[str]) -> Series:
    counts = Counter((tenant, status) for tenant, _agent, status in figures.agents)
    out = Series(PREFIX + "agents", "Agents by tenant and status.", ("tenant", "status"))
    for tenant in tenants:
        for status in AGENT_STATUSES:
            out.add(counts[(tenant, status.value)], tenant, status.value)
    return out


def _usage(rows: Iterable[PeriodUsage]) -> list[Series]:
    labels = ("tenant", "period")
    spend = Series(PREFIX + "tenant_spend_usd", "A tenant's spend in the current UTC period (USD).", labels)
    tokens = Series(PREFIX + "tenant_spend_tokens", "A tenant's tokens in the current UTC period.", labels)
    budget = Series(PREFIX + "tenant_max_budget_usd", "A tenant's budget for the period (USD), if set.", labels)
    left = Series(PREFIX + "tenant_remaining_budget_usd", "What remains of the tenant's USD budget.", labels)
    budget_t = Series(PREFIX + "tenant_max_budget_tokens", "A tenant's token budget for the period, if set.", labels)
    left_t = Series(PREFIX + "tenant_remaining_budget_tokens", "What remains of the tenant's token budget.", labels)
    resets = Series(
        PREFIX + "tenant_budget_reset_timestamp_seconds", "When the period (and its budget) resets, Unix time.", labels
    )
    for row in sorted(rows, key=lambda r: (r.tenant, r.period)):
        key = (row.tenant, row.period)
        spend.add(row.spend_usd, *key)
        tokens.add(row.spend_tokens, *key)
        resets.add(row.resets_at.timestamp(), *key)
        for family, value in ((budget, row.budget_usd), (left, row.remaining_usd)):
            if value is not None:
                family.add(value, *key)
        for family, count in ((budget_t, row.budget_tokens), (left_t, row.remaining_tokens)):
            if count is not None:
                family.add(count, *key)
    return [spend, tokens, budget, left, budget_t, left_t, resets]


def _episodes(figures: Figures, tenants: Iterable[str]) -> Series:
    counts = Counter(figures.open_episodes)
    out = Series(PREFIX + "open_episodes", "Open alert episodes by tenant and severity.", ("tenant", "severity"))
    for tenant in tenants:
        for severity in Severity:
            out.add(counts[(tenant, severity.value)], tenant, severity.value)
    return out


def _fleet_health(open_: Iterable[tuple[str, str]]) -> Series:
    counts = Counter(open_)
    out = Series(
        "fleet_health_open_episodes",
        "Open fleet_health episodes (the deployment's own pipeline) by kind and severity.",
        ("kind", "severity"),
    )
    for kind in fleet_health.Kind:
        for severity in Severity:
            out.add(counts[(kind.value, severity.value)], kind.value, severity.value)
    return out


def _jobs(figures: Figures) -> list[Series]:
    labels = ("tenant", "backend")
    pending = Series(PREFIX + "training_pending_jobs", "Training jobs queued for quota (the queue's length).", labels)
    running = Series(PREFIX + "training_running_jobs", "Training jobs admitted or running (holding quota).", labels)
    waiting = Counter((t, b) for t, b, s in figures.jobs if s in PENDING)
    active = Counter((t, b) for t, b, s in figures.jobs if s in ACTIVE)
    for key in sorted(set(waiting) | set(active)):
        pending.add(waiting[key], *key)
        running.add(active[key], *key)
    return [pending, running]


def _rejections(by_code: dict[str, int]) -> list[Series]:
    out = Series(PREFIX + "rejections_last_hour", "Events rejected in the last hour, by code.", ("code",))
    for code in sorted(by_code):
        out.add(by_code[code], code)
    dead = Series(PREFIX + "dead_letters_last_hour", "Messages dead-lettered in the last hour.", ())
    dead.add(by_code.get(Code.DELIVERY_EXHAUSTED.value, 0))  # the dead letters' code (handle_dead_letter)
    return [out, dead]


def _per_agent(figures: Figures) -> list[Series]:
    status = Series(
        PREFIX + "agent_status", "1 for an agent's current status (per-agent labels).", ("tenant", "agent_id", "status")
    )
    for tenant, agent, state in sorted(figures.agents):
        status.add(1, tenant, agent, state)
    spend = Series(
        PREFIX + "agent_spend_usd", "An agent's spend in the current UTC period.", ("tenant", "agent_id", "period")
    )
    for row in sorted(figures.agent_spend, key=lambda r: (r.tenant, r.agent_id, r.period)):
        spend.add(row.spend_usd, row.tenant, row.agent_id, row.period)
    return [status, spend]


def _self(figures: Figures, age_s: float) -> list[Series]:
    reads = Series(PREFIX + "metrics_firestore_reads", "Firestore reads the figures of this scrape cost.", ())
    reads.add(figures.reads)
    age = Series(PREFIX + "metrics_age_seconds", "Age of the cached figures (cached 30 s per instance).", ())
    age.add(age_s)
    truncated = Series(PREFIX + "metrics_truncated", "1 when a part's read hit its cap (it undercounts).", ("part",))
    for part in sorted(figures.truncated):
        truncated.add(1, part)
    return [reads, age, truncated]
