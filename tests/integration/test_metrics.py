"""GET /metrics on the local stack: agents registered and spending through the real path, then the
OpenMetrics text parsed with prometheus-client's parser, and its figures checked against the API's own."""

from __future__ import annotations

import uuid
from collections import Counter
from datetime import datetime
from decimal import Decimal
from typing import Any

import pytest
import requests
from prometheus_client import parser as text_format
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from shared.cli import fleetctl
from shared.domain.metrics import AGENT_STATUSES
from shared.domain.rejections import Code
from shared.platform import settings
from shared.store import metrics_reads
from tests.integration.conftest import wait_for
from tests.integration.helpers import agent_doc, log_lines, make_key, publish
from tests.integration.test_costs import batch, record, register

pytestmark = pytest.mark.integration

OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
#: The series whose sums are the documents a fleet scrape projected.
_COUNTED = ("fleet_agents", "fleet_open_episodes", "fleet_training_pending_jobs", "fleet_training_running_jobs")


def scrape(api: Any, key: str | None = None, **params: Any) -> Samples:
    reply = api.get("/metrics", key, **params)
    assert reply.status_code == 200, reply.text
    assert reply.headers["Content-Type"] == OPENMETRICS
    out: Samples = {}
    for family in text_string_to_metric_families(reply.text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    # prometheus_client.parser (the classic text format's) reads the same samples: every gauge, no counter.
    classic = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_format.text_string_to_metric_families(reply.text)
        for sample in family.samples
    }
    assert classic == out
    return out


def of_tenant(samples: Samples, name: str, tenant: str, label: str) -> dict[str, float]:
    """``label`` -> value of the series ``name`` of ``tenant``."""
    return {
        dict(labels)[label]: value
        for (sample, labels), value in samples.items()
        if sample == name and dict(labels).get("tenant") == tenant
    }


def api_json(api: Any, path: str, **params: Any) -> Any:
    reply = api.get(path, **params)
    assert reply.status_code == 200, reply.text
    return reply.json()


def test_metrics_equal_the_apis_figures_and_stay_within_the_tenant(stack, publisher, firestore, api) -> None:
    tenant, other = f"t-{uuid.uuid4().hex[:10]}", f"t-{uuid.uuid4().hex[:10]}"
    spender, idle = f"sp-{uuid.uuid4().hex[:10]}", f"id-{uuid.uuid4().hex[:10]}"
    gone = f"gn-{uuid.uuid4().hex[:10]}"
    for agent in (spender, idle, gone):
        register(publisher, firestore, agent, tenant=tenant)
    # Decommissioned by an operator (fleetctl): listed by the API, never read by a scrape.
    for state in ("decommissioning", "decommissioned"):
        assert fleetctl.main(["agents", "transition", gone, state, "--reason", "metrics test"]) == 0
    register(publisher, firestore, f"ot-{uuid.uuid4().hex[:10]}", tenant=other)
    # A tenant budget the spend goes past: both agents are held (suspended) and budget episodes open.
    assert api.send("PUT", f"/v1/tenants/{tenant}/budget", {"daily_usd": "0.10"}).status_code == 200
    for i in range(3):
        publish(publisher, batch(spender, [record(i * 10 + j, cost="0.01") for j in range(4)]))
    wait_for(lambda: all((agent_doc(firestore, a) or {}).get("status") == "suspended" for a in (spender, idle)))
    wait_for(lambda: Decimal(api_json(api, f"/v1/tenants/{tenant}/usage")["periods"]["day"]["spend_usd"]) > 0)
    viewer = make_key(stack, f"metrics-viewer-{tenant}", "viewer", tenant)
    stranger = make_key(stack, f"metrics-viewer-{other}", "viewer", other)
    scraper = make_key(stack, f"metrics-scrape-{tenant}", "scrape", tenant)

    usage = api_json(api, f"/v1/tenants/{tenant}/usage")["periods"]
    statuses = Counter(a["status"] for a in api_json(api, "/v1/agents", tenant=tenant, page_size=500)["items"])
    alerts = api_json(api, "/v1/alerts", tenant=tenant, state="open", limit=200)["items"]
    severities = Counter(a["severity"] for a in alerts)
    assert statuses == {"suspended": 2, "decommissioned": 1} and alerts, (statuses, alerts)

    got = scrape(api, viewer)  # the tenant's scope: read now, nothing cached for it yet
    agents = of_tenant(got, "fleet_agents", tenant, "status")
    assert {s: int(v) for s, v in agents.items() if v} == {"suspended": 2}
    # Zero-filled (a status never vanishes), but for decommissioned agents: not read, so not counted.
    assert set(agents) == {s.value for s in AGENT_STATUSES} and "decommissioned" not in agents
    # The reads docs/metrics.md gives for a tenant's key: A_t + E_t + J_t (each at least 1) + 1 + S.
    shards = settings.get().tenant_shards
    reads = got[("fleet_metrics_firestore_reads", ())]
    assert reads == 2 + len(alerts) + 1 + 1 + shards, (reads, len(alerts), shards)
    print(f"/metrics, tenant viewer key: {reads:.0f} reads ({len(alerts)} open episodes, {shards} shards)")
    for period, view in usage.items():
        assert Decimal(str(of_tenant(got, "fleet_tenant_spend_usd", tenant, "period")[period])) == Decimal(
            view["spend_usd"]
        )
        assert of_tenant(got, "fleet_tenant_spend_tokens", tenant, "period")[period] == view["tokens"]
        reset = of_tenant(got, "fleet_tenant_budget_reset_timestamp_seconds", tenant, "period")[period]
        assert reset == datetime.fromisoformat(view["resets_at"]).timestamp()
    assert usage["day"]["budget_usd"] == "0.1" and usage["day"]["remaining_usd"] == "0"
    assert of_tenant(got, "fleet_tenant_max_budget_usd", tenant, "period") == {"day": 0.1}
    assert of_tenant(got, "fleet_tenant_remaining_budget_usd", tenant, "period") == {"day": 0.0}
    episodes = of_tenant(got, "fleet_open_episodes", tenant, "severity")
    assert {s: int(v) for s, v in episodes.items() if v} == dict(severities)
    # No training jobs: the API lists none, and no queue series is shown.
    assert api_json(api, "/v1/jobs", tenant=tenant)["items"] == []
    assert not of_tenant(got, "fleet_training_pending_jobs", tenant, "backend")
    # A tenant's key: only its tenant, and not the fleet-wide rejection counts.
    assert {dict(labels).get("tenant") for _name, labels in got} <= {tenant, None}
    assert not [name for name, _labels in got if name.startswith("fleet_rejections")]

    # Another tenant's viewer sees none of these series; the fleet's own key sees them all.
    assert not [labels for _name, labels in scrape(api, stranger) if dict(labels).get("tenant") == tenant]

    # (The fleet's scope may have been read by another test in the last 30 s: it shows this tenant once
    # its cached figures expire.)
    def fleet_shows_tenant() -> Samples | None:
        samples = scrape(api)
        return samples if of_tenant(samples, "fleet_agents", tenant, "status") == agents else None

    fleet = wait_for(fleet_shows_tenant, timeout=45, every=2)
    assert ("fleet_dead_letters_last_hour", ()) in fleet
    # The fleet key's reads, by the formula of docs/metrics.md over what this scrape itself shows:
    # A + E + J (each at least 1) + T x (1 + S) + one count per rejection code.
    shown = {name: sum(v for (n, _l), v in fleet.items() if n == name) for name in _COUNTED}
    # (T: the tenants with agents read; those named only by an episode or a job have no usage read.)
    tenants = {dict(labels)["tenant"] for (name, labels), v in fleet.items() if name == "fleet_agents" and v}
    jobs = shown["fleet_training_pending_jobs"] + shown["fleet_training_running_jobs"]
    # E counts the deployment's fleet_health episodes too: read, but shown by kind, not as a tenant "_fleet".
    assert "_fleet" not in {dict(labels).get("tenant") for _name, labels in fleet}
    health = sum(v for (n, _l), v in fleet.items() if n == "fleet_health_open_episodes")
    expected = (
        max(1, shown["fleet_agents"])
        + max(1, shown["fleet_open_episodes"] + health)
        + max(1, jobs)
        + len(tenants) * (1 + shards)
        + len(Code)
    )
    assert fleet[("fleet_metrics_firestore_reads", ())] in (0, expected), (fleet, expected)  # 0: from the cache
    read = fleet[("fleet_metrics_firestore_reads", ())]
    print(f"/metrics, fleet key: {read:.0f} reads ({shown}, {len(tenants)} tenants)")

    # Per-agent labels only when asked.
    assert not [name for name, _labels in got if name.startswith("fleet_agent_")]
    detailed = scrape(api, viewer, agents="true")
    spent = detailed[("fleet_agent_spend_usd", (("agent_id", spender), ("period", "day"), ("tenant", tenant)))]
    assert Decimal(str(spent)) == Decimal(api_json(api, f"/v1/agents/{spender}/usage")["periods"]["day"]["spend_usd"])

    # A scrape key reads /metrics and nothing else; no key is a 401; errors are JSON.
    assert of_tenant(scrape(api, scraper), "fleet_agents", tenant, "status") == agents
    refused = api.get("/v1/agents", scraper)
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "forbidden"
    anonymous = requests.get(api.url + "/metrics", timeout=10)
    assert anonymous.status_code == 401 and anonymous.headers["Content-Type"] == "application/json"
    assert anonymous.json()["error"]["code"] == "unauthorized"

    # The function's log line counts the scrape's Firestore reads: the figures' (shown in the series too)
    # and the key's document (read once, then cached by the instance).
    viewer_id = viewer.split("_")[1]
    lines = [x for x in log_lines(stack.state_dir, "fleet-api") if x.get("path") == "/metrics"]
    first = next(x for x in lines if x.get("key_id") == viewer_id)
    assert first["firestore_reads"] - got[("fleet_metrics_firestore_reads", ())] in (0, 1), first


def test_open_episodes_project_the_fleet_health_kind(stack, firestore) -> None:
    """The projection reads the nested ``details.kind`` (shown by fleet_health_open_episodes) on Firestore."""
    episode = f"metrics-test-{uuid.uuid4().hex[:10]}"
    ref = firestore.collection("episodes").document(episode)
    tenant = f"t-{uuid.uuid4().hex[:10]}"  # its own tenant: no other test reads it
    ref.set({"tenant": tenant, "state": "open", "severity": "high", "details": {"kind": "dead_letters", "x": 1}})
    try:
        rows, cut = metrics_reads.open_episodes(tenant, 10)
        assert rows == [(tenant, "high", "dead_letters")] and not cut
    finally:
        ref.delete()
