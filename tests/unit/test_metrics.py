"""GET /metrics without processes: the series of shared/domain/metrics.py, their OpenMetrics text (parsed back
with prometheus-client's parser) and the route, with the store reads monkeypatched."""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any
from unittest.mock import ANY

import flask
import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from shared.api import core, costs, router
from shared.api import metrics as api_metrics
from shared.domain import metrics as domain
from shared.domain import roles
from shared.domain.api_keys import Role
from shared.domain.audit import AuditEntry
from shared.domain.lifecycle import State
from shared.domain.rejections import Code
from shared.platform import metering
from shared.store import api_keys, config, metrics_reads
from shared.store import audit as audit_store
from shared.store import usage as usage_store
from shared.store.api_keys import Principal

T0 = datetime(2026, 11, 21, 10, 20, tzinfo=UTC)
ADMIN = "afm_00000000000000aa_" + "a" * 43
ACME = "afm_00000000000000bb_" + "b" * 43
SCRAPER = "afm_00000000000000cc_" + "c" * 43
PRINCIPALS = {
    ADMIN: Principal("00000000000000aa", "admin", Role.ADMIN, None),
    ACME: Principal("00000000000000bb", "acme-viewer", Role.VIEWER, "acme"),
    SCRAPER: Principal("00000000000000cc", "prometheus", Role.SCRAPE, None),
}
APP = flask.Flask(__name__)


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """(sample name, sorted labels) -> value, as Prometheus would read them."""
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def usage_row(tenant: str, period: str, spend: float, budget: float | None) -> domain.PeriodUsage:
    left = None if budget is None else max(0.0, budget - spend)
    return domain.PeriodUsage(tenant, period, spend, 100, budget, left, None, None, T0 + timedelta(hours=1))


FIGURES = domain.Figures(
    agents=(("acme", "a1", "active"), ("acme", "a2", "active"), ("acme", "a3", "idle"), ("globex", "g1", "suspended")),
    usage=(usage_row("acme", "hour", 0.25, 1.0), usage_row("globex", "day", 2.0, None)),
    open_episodes=(("acme", "critical"), ("acme", "critical"), ("globex", "warning")),
    jobs=(
        ("acme", "local", "queued"),
        ("acme", "local", "queued"),
        ("acme", "local", "running"),
        ("acme", "gke", "admitted"),
    ),
    rejections={"schema_violation": 3, "delivery_exhausted": 2},
    agent_spend=(domain.AgentSpend("acme", "a1", "day", 0.5),),
    reads=17,
)


# --- the series ------------------------------------------------------------------------------------


def test_agents_are_counted_by_tenant_and_status_with_every_status_zero_filled() -> None:
    got = samples(api_metrics.render(domain.series(FIGURES, per_agent=False)).decode())
    assert got[("fleet_agents", (("status", "active"), ("tenant", "acme")))] == 2
    assert got[("fleet_agents", (("status", "idle"), ("tenant", "acme")))] == 1
    assert got[("fleet_agents", (("status", "suspended"), ("tenant", "acme")))] == 0
    assert got[("fleet_agents", (("status", "suspended"), ("tenant", "globex")))] == 1
    assert sum(v for (name, _l), v in got.items() if name == "fleet_agents") == 4


def test_spend_budget_remaining_and_reset_time_per_tenant_and_period() -> None:
    got = samples(api_metrics.render(domain.series(FIGURES, per_agent=False)).decode())
    acme_hour = (("period", "hour"), ("tenant", "acme"))
    assert got[("fleet_tenant_spend_usd", acme_hour)] == 0.25
    assert got[("fleet_tenant_max_budget_usd", acme_hour)] == 1.0
    assert got[("fleet_tenant_remaining_budget_usd", acme_hour)] == 0.75
    assert got[("fleet_tenant_budget_reset_timestamp_seconds", acme_hour)] == (T0 + timedelta(hours=1)).timestamp()
    globex_day = (("period", "day"), ("tenant", "globex"))
    assert got[("fleet_tenant_spend_usd", globex_day)] == 2.0
    # No budget: no budget series (not a misleading 0).
    assert ("fleet_tenant_remaining_budget_usd", globex_day) not in got
    assert ("fleet_tenant_max_budget_tokens", acme_hour) not in got


def test_episodes_jobs_and_rejections() -> None:
    got = samples(api_metrics.render(domain.series(FIGURES, per_agent=False)).decode())
    assert got[("fleet_open_episodes", (("severity", "critical"), ("tenant", "acme")))] == 2
    assert got[("fleet_open_episodes", (("severity", "warning"), ("tenant", "acme")))] == 0
    assert got[("fleet_open_episodes", (("severity", "warning"), ("tenant", "globex")))] == 1
    assert got[("fleet_training_pending_jobs", (("backend", "local"), ("tenant", "acme")))] == 2
    assert got[("fleet_training_running_jobs", (("backend", "local"), ("tenant", "acme")))] == 1
    assert got[("fleet_training_running_jobs", (("backend", "gke"), ("tenant", "acme")))] == 1
    assert got[("fleet_training_pending_jobs", (("backend", "gke"), ("tenant", "acme")))] == 0
    assert got[("fleet_rejections_last_hour", (("code", "schema_violation"),))] == 3
    assert got[("fleet_dead_letters_last_hour", ())] == 2
    assert got[("fleet_metrics_firestore_reads", ())] == 17


def test_per_agent_series_only_when_asked_and_no_rejections_for_a_tenant_scope() -> None:
    plain = samples(api_metrics.render(domain.series(FIGURES, per_agent=False)).decode())
    assert not [k for k in plain if k[0].startswith("fleet_agent_")]
    detailed = samples(api_metrics.render(domain.series(FIGURES, per_agent=True)).decode())
    assert detailed[("fleet_agent_status", (("agent_id", "g1"), ("status", "suspended"), ("tenant", "globex")))] == 1
    assert detailed[("fleet_agent_spend_usd", (("agent_id", "a1"), ("period", "day"), ("tenant", "acme")))] == 0.5
    scoped = domain.Figures(agents=FIGURES.agents[:1], rejections=None, tenants=("acme",))
    names = {name for name, _l in samples(api_metrics.render(domain.series(scoped, per_agent=False)).decode())}
    assert "fleet_rejections_last_hour" not in names and "fleet_dead_letters_last_hour" not in names


def test_the_deployments_fleet_health_episodes_are_by_kind_not_a_tenant() -> None:
    figures = domain.Figures(
        agents=FIGURES.agents,
        open_episodes=(("acme", "critical"), ("_fleet", "high"), ("_fleet", "critical")),
        fleet_health=(("dead_letters", "high"), ("slack_failing", "critical")),
    )
    got = samples(api_metrics.render(domain.series(figures, per_agent=False)).decode())
    assert not [k for k in got if dict(k[1]).get("tenant") == "_fleet"]  # no agents, episodes... of "_fleet"
    assert got[("fleet_open_episodes", (("severity", "critical"), ("tenant", "acme")))] == 1
    assert got[("fleet_health_open_episodes", (("kind", "dead_letters"), ("severity", "high")))] == 1
    assert got[("fleet_health_open_episodes", (("kind", "slack_failing"), ("severity", "critical")))] == 1
    assert got[("fleet_health_open_episodes", (("kind", "model_load"), ("severity", "critical")))] == 0  # zero-filled
    # A tenant's key (fleet_health None): no such family.
    scoped = samples(api_metrics.render(domain.series(replace(figures, fleet_health=None), per_agent=False)).decode())
    assert not [k for k in scoped if k[0].startswith("fleet_health_")]


def test_a_tenant_without_agents_is_still_shown_for_its_own_key() -> None:
    got = samples(api_metrics.render(domain.series(domain.Figures(tenants=("acme",)), per_agent=False)).decode())
    assert got[("fleet_agents", (("status", "active"), ("tenant", "acme")))] == 0


# --- the route -------------------------------------------------------------------------------------


class Reads:
    """The fake reads (each counting one Firestore read) and what they were asked."""

    def __init__(self) -> None:
        self.scopes: list[str | None] = []
        self.rejection_since: list[datetime] = []
        self.audit: list[AuditEntry] = []


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> Reads:
    seen = Reads()

    def agents(tenant: str | None, cap: int) -> tuple[list[tuple[str, str, str]], bool]:
        seen.scopes.append(tenant)
        metering.count(reads=len(FIGURES.agents))
        shown = [a for a in FIGURES.agents if tenant in (None, a[0])]
        return shown[:cap], len(shown) > cap

    def episodes(tenant: str | None, cap: int) -> tuple[list[tuple[str, str, str]], bool]:
        metering.count(reads=1)
        rows = [(*e, "") for e in FIGURES.open_episodes] + [("_fleet", "critical", "slack_failing")]
        return [e for e in rows if tenant in (None, e[0])], False

    def jobs(tenant: str | None, cap: int) -> tuple[list[tuple[str, str, str]], bool]:
        metering.count(reads=1)
        return [j for j in FIGURES.jobs if tenant in (None, j[0])], tenant is None

    def rejections(codes: Any, since: datetime) -> dict[str, int]:
        seen.rejection_since.append(since)
        metering.count(reads=len(list(codes)))
        return {"schema_violation": 3}

    monkeypatch.setattr(api_keys, "verify", PRINCIPALS.get)
    monkeypatch.setattr(core, "now", lambda: T0)
    monkeypatch.setattr(metrics_reads, "agents", agents)
    monkeypatch.setattr(metrics_reads, "open_episodes", episodes)
    monkeypatch.setattr(metrics_reads, "live_jobs", jobs)
    monkeypatch.setattr(metrics_reads, "rejections_since", rejections)
    monkeypatch.setattr(config, "read_tenant", lambda t: config.TenantConfig(t, {"daily_usd": "5"}, "api", {}, {}))
    monkeypatch.setattr(usage_store, "tenant_month", lambda tenant, month, shards, skip=(): {})
    monkeypatch.setattr(usage_store, "agent_months", lambda ids, month: {})
    monkeypatch.setattr(audit_store, "append", seen.audit.append)
    api_metrics.forget()
    yield seen
    api_metrics.forget()


def get(path: str, token: str | None, **query: Any) -> flask.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with APP.test_request_context(path, headers=headers, query_string=query):
        return router.handle(flask.request)


def test_a_viewer_gets_openmetrics_text_of_every_tenant(reads: Reads) -> None:
    reply = get("/metrics", ADMIN)
    assert reply.status_code == 200
    assert reply.headers["Content-Type"] == "application/openmetrics-text; version=1.0.0; charset=utf-8"
    text = reply.get_data(as_text=True)
    assert text.endswith("# EOF\n")
    got = samples(text)
    assert got[("fleet_agents", (("status", "active"), ("tenant", "acme")))] == 2
    assert got[("fleet_tenant_max_budget_usd", (("period", "day"), ("tenant", "globex")))] == 5.0
    assert got[("fleet_tenant_remaining_budget_usd", (("period", "day"), ("tenant", "globex")))] == 5.0
    assert got[("fleet_rejections_last_hour", (("code", "schema_violation"),))] == 3
    assert got[("fleet_metrics_truncated", (("part", "jobs"),))] == 1
    assert got[("fleet_health_open_episodes", (("kind", "slack_failing"), ("severity", "critical")))] == 1
    assert "_fleet" not in text  # the deployment's episodes are not a tenant's series
    assert reads.rejection_since == [T0 - timedelta(hours=1)]
    # The fakes' reads: one per agent (4), the episodes (1), the jobs (1), one count per rejection code (the
    # tenant documents and usage shards are monkeypatched: 0).
    assert got[("fleet_metrics_firestore_reads", ())] == len(FIGURES.agents) + 1 + 1 + len(Code)


def test_a_tenant_key_sees_only_its_tenant(reads: Reads) -> None:
    text = get("/metrics", ACME).get_data(as_text=True)
    got = samples(text)
    assert reads.scopes == ["acme"]
    assert {dict(labels).get("tenant") for _name, labels in got if dict(labels).get("tenant")} == {"acme"}
    assert "globex" not in text and "fleet_rejections_last_hour" not in text and "fleet_health_" not in text
    assert got[("fleet_agents", (("status", "active"), ("tenant", "acme")))] == 2
    assert got[("fleet_open_episodes", (("severity", "critical"), ("tenant", "acme")))] == 2
    assert got[("fleet_training_pending_jobs", (("backend", "local"), ("tenant", "acme")))] == 2
    assert got[("fleet_tenant_max_budget_usd", (("period", "day"), ("tenant", "acme")))] == 5.0
    # The same fakes without the rejection counts: 4 + 1 + 1.
    assert got[("fleet_metrics_firestore_reads", ())] == len(FIGURES.agents) + 1 + 1


def test_tenant_usage_is_the_usage_apis_own_view(reads: Reads, monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[tuple[str, datetime]] = []
    real = costs.tenant_usage_view

    def view(tenant: str, now: datetime) -> Any:
        asked.append((tenant, now))
        cfg, periods = real(tenant, now)
        return cfg, {**periods, "day": {**periods["day"], "spend_usd": "1.25", "remaining_usd": "3.75"}}

    monkeypatch.setattr(costs, "tenant_usage_view", view)
    got = samples(get("/metrics", ADMIN).get_data(as_text=True))
    assert asked == [("acme", T0), ("globex", T0)]
    assert got[("fleet_tenant_spend_usd", (("period", "day"), ("tenant", "acme")))] == 1.25
    assert got[("fleet_tenant_remaining_budget_usd", (("period", "day"), ("tenant", "acme")))] == 3.75
    resets = got[("fleet_tenant_budget_reset_timestamp_seconds", (("period", "day"), ("tenant", "acme")))]
    assert resets == datetime(2026, 11, 22, tzinfo=UTC).timestamp()


def test_figures_are_cached_per_scope_for_30_seconds(reads: Reads, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [1000.0]
    monkeypatch.setattr(api_metrics.time, "monotonic", lambda: clock[0])
    get("/metrics", ADMIN)
    get("/metrics", SCRAPER)
    assert reads.scopes == [None]  # the same scope: read once
    get("/metrics", ACME)
    assert reads.scopes == [None, "acme"]
    clock[0] += 29
    cached = samples(get("/metrics", ADMIN).get_data(as_text=True))
    assert reads.scopes == [None, "acme"]
    assert cached[("fleet_metrics_firestore_reads", ())] == 0  # served from the cache: nothing read
    clock[0] += 2
    age = samples(get("/metrics", ADMIN).get_data(as_text=True))
    assert reads.scopes == [None, "acme", None]
    assert age[("fleet_metrics_age_seconds", ())] == 0


def test_per_agent_labels_are_opt_in(reads: Reads) -> None:
    assert "fleet_agent_status" not in get("/metrics", ADMIN).get_data(as_text=True)
    got = samples(get("/metrics", ADMIN, agents="true").get_data(as_text=True))
    assert got[("fleet_agent_status", (("agent_id", "a3"), ("status", "idle"), ("tenant", "acme")))] == 1
    assert got[("fleet_agent_spend_usd", (("agent_id", "a3"), ("period", "month"), ("tenant", "acme")))] == 0


def test_errors_stay_json(reads: Reads) -> None:
    for reply, status in ((get("/metrics", None), 401), (get("/metrics", ADMIN, agents="maybe"), 400)):
        assert reply.status_code == status
        assert reply.headers["Content-Type"] == "application/json"
        assert set(reply.get_json()["error"]) == {"code", "reason"}


#: Every authenticated route but GET /metrics, with its arguments filled in.
REFUSED = [
    (r.method, re.sub(r"<(?:[^:>]+:)?[^>]+>", "x1", r.rule), r.endpoint)
    for r in router.ROUTES
    if r.auth and r.endpoint != "get_metrics"
]


def test_every_route_is_listed_for_the_scrape_key() -> None:
    assert len(REFUSED) == len([r for r in router.ROUTES if r.auth]) - 1 > 50
    assert ("GET", "/v1/agents", "list_agents") in REFUSED
    assert Role.VIEWER.allows(Role.SCRAPE) and not Role.SCRAPE.allows(Role.VIEWER)


@pytest.mark.parametrize(("method", "path", "endpoint"), REFUSED, ids=[f"{m} {p}" for m, p, _e in REFUSED])
def test_a_scrape_key_reads_metrics_and_nothing_else(reads: Reads, method: str, path: str, endpoint: str) -> None:
    assert get("/metrics", SCRAPER).status_code == 200
    with APP.test_request_context(path, method=method, headers={"Authorization": f"Bearer {SCRAPER}"}, json={}):
        refused = router.handle(flask.request)
    assert refused.status_code == 403 and refused.get_json()["error"]["code"] == "forbidden"
    [entry] = reads.audit
    assert (entry.outcome, entry.action, entry.actor) == ("refused", f"api.{endpoint}", "api:prometheus")
    assert entry.details == {"reason": refused.get_json()["error"]["reason"], "role": "scrape", "needs": ANY}


def test_scrape_is_an_api_keys_role_only() -> None:
    """A Slack user mapped to "scrape" (by hand in Firestore) has no role: it grants nothing there."""
    assert roles.role_of({"acme": "scrape"}, "acme") is None
    assert not roles.allows(Role.SCRAPE, roles.Action.READ)


class _Doc:
    def __init__(self, doc_id: str) -> None:
        self.id = doc_id

    def to_dict(self) -> dict[str, Any]:
        return {"tenant": "acme", "status": "active"}


class _Query:
    """Enough of a Firestore query for the paged projection: ordered ids, start_after, limit."""

    #: Every page streamed (the id it started after).
    streamed: list[str | None] = []

    def __init__(self, ids: list[str], after: str | None = None, limit: int | None = None) -> None:
        self.ids, self.after, self.limit_n = ids, after, limit

    def select(self, fields: list[str]) -> _Query:
        return self

    def order_by(self, field: str) -> _Query:
        return self

    def start_after(self, doc: _Doc) -> _Query:
        return _Query(self.ids, doc.id, self.limit_n)

    def limit(self, n: int) -> _Query:
        return _Query(self.ids, self.after, n)

    def stream(self, **options: Any) -> list[_Doc]:
        _Query.streamed.append(self.after)
        rows = [i for i in sorted(self.ids) if self.after is None or i > self.after]
        return [_Doc(i) for i in rows[: self.limit_n]]


@pytest.mark.parametrize(
    ("count", "cap", "pages", "reads"),
    [
        (0, 10_000, 1, 1),  # an empty page still costs a read
        (2500, 10_000, 3, 1000 + 1000 + 500),  # every document read once
        (2000, 10_000, 3, 1000 + 1000 + 1),  # a full last page: the next, empty, says it was the last
        (2500, 1500, 2, 1000 + 501),  # the cap: the second page asks for 501 (the 1501st says it was cut)
        (2500, 2000, 3, 1000 + 1000 + 1),
    ],
)
def test_projections_page_by_1000_up_to_their_cap(count: int, cap: int, pages: int, reads: int) -> None:
    ids = [f"a{i:05d}" for i in range(count)]
    _Query.streamed.clear()
    with metering.metered() as meter:
        rows, cut = metrics_reads._projected(_Query(ids), ["tenant", "status"], cap)
    assert [r["_id"] for r in rows] == ids[:cap]
    assert cut == (count > cap)
    assert len(_Query.streamed) == pages
    assert meter.reads == reads


def test_too_many_agents_for_per_agent_series_is_refused_before_other_reads_and_cached(
    reads: Reads, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(api_metrics, "MAX_PER_AGENT", 1)
    asked: list[str | None] = []
    monkeypatch.setattr(metrics_reads, "open_episodes", lambda tenant, cap: asked.append(tenant) or ([], False))
    for _ in range(2):
        reply = get("/metrics", ADMIN, agents="true")
        assert reply.status_code == 400 and "limited to 1 agents" in reply.get_json()["error"]["reason"]
    assert reads.scopes == [None] and asked == []  # agents read once, nothing else: the refusal is cached


def test_a_per_agent_scrape_of_too_many_agents_reads_one_past_the_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    client = type("Client", (), {"collection": lambda self, name: _Agents([f"a{i:05d}" for i in range(4500)])})()
    monkeypatch.setattr(metrics_reads.db, "client", lambda: client)
    _Query.streamed.clear()
    with metering.metered() as meter, pytest.raises(core.ApiError, match="limited to 2000 agents"):
        api_metrics.read(None, True)
    assert api_metrics.MAX_PER_AGENT == 2000
    assert meter.reads == api_metrics.MAX_PER_AGENT + 1 and len(_Query.streamed) == 3  # paged: 1000, 1000, 1
    with metering.metered() as meter:
        rows, cut = metrics_reads.agents(None, api_metrics.MAX_AGENTS)
    assert meter.reads == 4500 and len(rows) == 4500 and not cut  # without per-agent labels: every agent


class _Agents(_Query):
    """The agents collection: where() records its filters (the fake keeps every document)."""

    filters: list[tuple[str, str, Any]] = []

    def where(self, *, filter: Any) -> _Agents:
        _Agents.filters.append((filter.field_path, filter.op_string, filter.value))
        return self


def test_decommissioned_agents_are_neither_read_nor_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    client = type("Client", (), {"collection": lambda self, name: _Agents(["a1", "a2"])})()
    monkeypatch.setattr(metrics_reads.db, "client", lambda: client)
    _Agents.filters.clear()
    rows, cut = metrics_reads.agents("acme", 10)
    live = sorted(s.value for s in State if s is not State.DECOMMISSIONED)
    assert [(f, op, sorted(v) if op == "in" else v) for f, op, v in _Agents.filters] == [
        ("tenant", "==", "acme"),
        ("status", "in", live),
    ]
    assert len(live) == len(State) - 1 <= 30  # Firestore's limit on an "in" list
    assert rows == [("acme", "a1", "active"), ("acme", "a2", "active")] and not cut
    _Agents.filters.clear()
    metrics_reads.agents(None, 10)
    assert [f for f, _op, _v in _Agents.filters] == ["status"]
    # And no series says "0 decommissioned" for what was not read.
    got = samples(api_metrics.render(domain.series(FIGURES, per_agent=False)).decode())
    assert {dict(labels)["status"] for name, labels in got if name == "fleet_agents"} == set(live)
