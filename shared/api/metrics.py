"""``GET /metrics``: the fleet's Prometheus series as OpenMetrics text (prometheus-client).

The series are computed by shared/domain/metrics.py from figures read by shared/store/metrics_reads.py and
each tenant's usage through the function the usage API answers with (shared/api/costs.py:
tenant_usage_view), so the two cannot disagree. The figures are cached for :data:`CACHE_S` per instance and
per scope (the key's tenant, or none; with or without per-agent labels): a Prometheus server scraping every
15 s costs a read of them every 30 s at most. Each registry is built per scrape from a collector over the cached series.

Any key that may read may scrape (a viewer key is enough), and so may a ``scrape`` key, which may read
nothing else (every other route refuses it with a 403, audited, as any role check); a tenant-scoped key
sees only its tenant's series and never the fleet-wide rejection counts. Errors stay JSON, as on every route.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime, timedelta

import flask
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.openmetrics.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector, CollectorRegistry

from shared.api import core, costs
from shared.api.core import ApiError, Call, Param, Route, Routes
from shared.domain import fleet_health
from shared.domain import metrics as domain
from shared.domain.api_keys import Role
from shared.domain.periods import Period, window
from shared.domain.pricing import format_usd
from shared.domain.rejections import Code
from shared.domain.usage import Totals, month_field
from shared.platform import metering
from shared.store import metrics_reads
from shared.store import usage as usage_store

#: Seconds the figures of one scope are reused by this instance.
CACHE_S = 30.0
#: Caps of the per-document reads (a larger fleet is shown truncated, with fleet_metrics_truncated).
MAX_AGENTS = 10_000
MAX_EPISODES = 5_000
MAX_JOBS = 5_000
#: Per-agent labels are refused above this many agents (cardinality, and one usage read per agent); such a
#: scrape reads this many agents plus one, and nothing else, before it is refused.
MAX_PER_AGENT = 2_000

routes = Routes("metrics")

_AGENTS_PARAM = Param(
    "agents",
    "query",
    "true: add per-agent series (fleet_agent_status, fleet_agent_spend_usd); off by default for cardinality.",
    {"type": "boolean", "default": False},
)

Scope = tuple[str | None, bool]
#: Per scope: when read, and the figures, or the refusal a per-agent scrape of too many agents got (cached
#: too, so repeating it does not repeat the reads).
_cache: dict[Scope, tuple[float, domain.Figures | ApiError]] = {}
_lock = threading.Lock()  # guards the two dicts, never held while reading
_scope_locks: dict[Scope, threading.Lock] = {}


def get_metrics(call: Call) -> flask.Response:
    """The fleet's Prometheus metrics (OpenMetrics text): agents, spend and budgets, episodes, jobs, rejections.

    A tenant-scoped key sees only its tenant's series. Figures are cached 30 s per instance."""
    per_agent = _flag(call)
    tenant = core.principal(call).tenant
    figures, age = _figures((tenant, per_agent))
    if age > 0:  # served from the cache: this scrape read nothing (a sum over scrapes stays true)
        figures = replace(figures, reads=0)
    body = render(domain.series(figures, per_agent=per_agent, age_s=age))
    response = flask.Response(body, status=200, mimetype=None, content_type=CONTENT_TYPE_LATEST)
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


# Declared whole rather than with routes.get: the least role of all (a scrape key reads this route and nothing
# else) and a success that is not JSON.
routes.table.append(
    Route(
        "/metrics",
        "get_metrics",
        " ".join((get_metrics.__doc__ or "").split("\n\n")[0].split()),
        get_metrics,
        None,
        role=Role.SCRAPE,
        params=(_AGENTS_PARAM,),
        errors=(400,),
        tags=routes.tags,
        media_type=CONTENT_TYPE_LATEST,
    )
)


def _flag(call: Call) -> bool:
    raw = core.query(call.request, "agents")
    if raw is None or raw.lower() in ("false", "0"):
        return False
    if raw.lower() in ("true", "1"):
        return True
    raise ApiError(400, "agents must be true or false")


class _Collector(Collector):
    """The families of one scrape, from series already computed."""

    def __init__(self, families: list[domain.Series]) -> None:
        self.families = families

    def collect(self) -> Iterator[GaugeMetricFamily]:
        for family in self.families:
            gauge = GaugeMetricFamily(family.name, family.help, labels=list(family.labels))
            for labels, value in family.samples:
                gauge.add_metric(list(labels), value)
            yield gauge


def render(families: list[domain.Series]) -> bytes:
    """OpenMetrics text of ``families`` (a registry of its own per scrape: nothing global is kept)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(families))
    return generate_latest(registry)


def _figures(scope: Scope) -> tuple[domain.Figures, float]:
    """The scope's figures and their age in seconds: cached, or read now (one reader per scope at a time)."""
    with _lock:
        scope_lock = _scope_locks.setdefault(scope, threading.Lock())
    with scope_lock:  # one reader per scope; other scopes' scrapes do not wait for it
        with _lock:
            hit = _cache.get(scope)
        if hit is not None and time.monotonic() - hit[0] < CACHE_S:
            if isinstance(hit[1], ApiError):
                raise hit[1]
            return hit[1], time.monotonic() - hit[0]
        try:
            figures = read(*scope)
        except ApiError as refused:
            with _lock:
                _cache[scope] = (time.monotonic(), refused)
            raise
        with _lock:
            _cache[scope] = (time.monotonic(), figures)
        return figures, 0.0


def forget() -> None:
    """Drop every cached figure (tests)."""
    with _lock:
        _cache.clear()


def read(tenant: str | None, per_agent: bool) -> domain.Figures:
    """The figures of one scope, read now (their Firestore reads counted in ``reads``). A per-agent scope of
    more than :data:`MAX_PER_AGENT` agents is refused after reading that many plus one, and nothing else."""
    now = core.now()
    with metering.metered() as meter:
        # Per agent: the one agent past the limit says "too many" (the cut), so refusing costs MAX_PER_AGENT + 1.
        agents, agents_cut = metrics_reads.agents(tenant, MAX_PER_AGENT if per_agent else MAX_AGENTS)
        figures = None if per_agent and agents_cut else _read_rest(tenant, per_agent, agents, agents_cut, now)
    _count_into_caller(meter.reads)
    if figures is None:
        raise ApiError(400, f"per-agent series are limited to {MAX_PER_AGENT} agents; use a tenant's key")
    return replace(figures, reads=meter.reads)


def _read_rest(
    tenant: str | None, per_agent: bool, agents: list[tuple[str, str, str]], agents_cut: bool, now: datetime
) -> domain.Figures:
    """The figures of one scope once its agents are read: episodes, jobs, usage, rejections, per-agent spend."""
    episodes, episodes_cut = metrics_reads.open_episodes(tenant, MAX_EPISODES)
    jobs, jobs_cut = metrics_reads.live_jobs(tenant, MAX_JOBS)
    shown = domain.Figures(agents=tuple(agents), tenants=(tenant,) if tenant else ())
    usage = tuple(row for name in domain.tenants_of(shown) for row in _tenant_usage(name, now))
    rejections = None
    if tenant is None:
        rejections = metrics_reads.rejections_since([c.value for c in Code], now - timedelta(hours=1))
    spend: tuple[domain.AgentSpend, ...] = ()
    if per_agent:
        spend = _agent_spend(agents, now)
    cut = tuple(p for p, hit in (("agents", agents_cut), ("episodes", episodes_cut), ("jobs", jobs_cut)) if hit)
    return domain.Figures(
        agents=tuple(agents),
        usage=usage,
        open_episodes=tuple((t, severity) for t, severity, _kind in episodes),
        fleet_health=None
        if tenant
        else tuple((k, severity) for t, severity, k in episodes if t == fleet_health.TENANT),
        jobs=tuple(jobs),
        rejections=rejections,
        agent_spend=spend,
        truncated=cut,
        read_at=now,
        tenants=shown.tenants,
    )


def _count_into_caller(reads: int) -> None:
    """The reads were counted on a meter of their own (to show them in the series): count them on the
    invocation's too, so the function's log line (firestore_reads) has them."""
    metering.count(reads=reads)


def _tenant_usage(tenant: str, now: datetime) -> list[domain.PeriodUsage]:
    """The tenant's periods from the usage API's own view (shared/api/costs.py: tenant_usage_view): its
    document and usage shards."""
    _cfg, view = costs.tenant_usage_view(tenant, now)
    return [
        domain.PeriodUsage(
            tenant=tenant,
            period=period,
            spend_usd=float(row["spend_usd"]),
            spend_tokens=int(row["tokens"]),
            budget_usd=_number(row["budget_usd"]),
            remaining_usd=_number(row["remaining_usd"]),
            budget_tokens=row["budget_tokens"],
            remaining_tokens=row["remaining_tokens"],
            resets_at=datetime.fromisoformat(row["resets_at"]),
        )
        for period, row in view.items()
    ]


def _number(value: str | None) -> float | None:
    return None if value is None else float(value)


def _agent_spend(agents: list[tuple[str, str, str]], now: datetime) -> tuple[domain.AgentSpend, ...]:
    """Every agent's spend per period, from its month document (one read per agent, batched)."""
    month = window(Period.MONTH, now).key
    docs = usage_store.agent_months([agent for _t, agent, _s in agents], month)
    out = []
    for tenant, agent, _status in agents:
        data = docs.get(agent, {})
        for period in Period:
            totals = Totals.from_dict(data.get(month_field(period, window(period, now))))
            out.append(domain.AgentSpend(tenant, agent, period.value, float(format_usd(totals.usd_nanos))))
    return tuple(out)
