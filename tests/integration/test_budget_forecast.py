"""The budget forecast through the real path: cost batches counted by fleet-costs, the minute job's tick
(fleet-sweep) projecting the budgets, budget_forecast episodes in Firestore and the usage API."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from shared.platform import metering, settings
from shared.services import budget_forecasts as service
from shared.store import budget_forecasts as store
from tests.integration.conftest import tick, wait_for
from tests.integration.helpers import publish
from tests.integration.test_costs import batch, record, register

pytestmark = pytest.mark.integration


def forecasts(api: Any, tenant: str, state: str | None = None) -> list[dict[str, Any]]:
    params = {"tenant": tenant, "rule": "budget_forecast", **({"state": state} if state else {})}
    reply = api.get("/v1/alerts", **params)
    assert reply.status_code == 200, reply.text
    return list(reply.json()["items"])


def test_a_spend_rate_that_reaches_the_daily_budget_within_the_horizon_opens_a_forecast_until_raised(
    stack, publisher, firestore, api, agent_id
) -> None:
    now = datetime.now(UTC)
    if now.replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1) - now < timedelta(minutes=40):
        pytest.skip("the UTC day resets before the projected time: nothing to forecast")
    tenant = f"t-{uuid.uuid4().hex[:10]}"
    register(publisher, firestore, agent_id, tenant=tenant, budget={"daily_usd": "9"})
    assert api.send("PUT", f"/v1/tenants/{tenant}/budget", {"daily_usd": "10"}).status_code == 200
    # $8 within the last minute: at least about $7 an hour (the previous hour and this one so far, or this
    # hour alone after 10 minutes), so $1 (agent) and $2 (tenant) left are reached within about 20 minutes.
    at = datetime.now(UTC) - timedelta(seconds=30)
    publish(publisher, batch(agent_id, [record(i, at=at, cost="0.10") for i in range(80)]))
    usage = wait_for(
        lambda: (
            (u := api.get(f"/v1/tenants/{tenant}/usage").json()["periods"]["day"])
            and Decimal(u["spend_usd"]) == Decimal("8")
            and u
        )
    )
    assert Decimal(usage["rate_usd_per_hour"]) >= 6
    projected = datetime.fromisoformat(usage["projected_limit_at"])
    assert datetime.now(UTC) < projected < datetime.now(UTC) + timedelta(minutes=30)
    agent_day = api.get(f"/v1/agents/{agent_id}/usage").json()["periods"]["day"]
    assert agent_day["projected_limit_at"] is not None and Decimal(agent_day["rate_usd_per_hour"]) >= 6

    tick(publisher)
    opened = wait_for(lambda: len(rows := forecasts(api, tenant, "open")) == 2 and rows)
    by_scope = {row["details"]["scope"]: row for row in opened}
    tenant_episode, agent_episode = by_scope["tenant"], by_scope["agent"]
    assert tenant_episode["agent_id"] is None and agent_episode["agent_id"] == agent_id
    assert tenant_episode["severity"] == "warning" and tenant_episode["window"] == usage["period"]
    assert tenant_episode["details"]["limit"] == "daily_usd" and tenant_episode["details"]["projected_at"]
    assert "runs out at about" in tenant_episode["message"] and "/h" in tenant_episode["message"]

    # One id per budget, limit and period window, whatever the hour: a second tick opens nothing more.
    first = f"budget_forecast.agent.{agent_id}.daily_usd.{usage['period']}.9000000000"
    assert agent_episode["id"] == f"{first}.1" and agent_episode["details"]["occurrence"] == 1
    tick(publisher)
    # Paused, the agent spends nothing: the next tick resolves its forecast, not the tenant's.
    paused = api.send("POST", f"/v1/agents/{agent_id}/pause", {"reason": "forecast test"})
    assert paused.status_code == 200, paused.text
    assert api.get(f"/v1/agents/{agent_id}/usage").json()["periods"]["day"]["projected_limit_at"] is None
    tick(publisher)
    held = wait_for(lambda: len(rows := forecasts(api, tenant, "resolved")) == 1 and rows, timeout=60)
    assert held[0]["id"] == agent_episode["id"] and "held (pause)" in (held[0]["resolution"] or "")
    marker = firestore.collection("markers").document(f"budget_forecast.agent.{agent_id}.daily_usd.{usage['period']}")
    assert (marker.get().to_dict() or {}).get("next") == 2
    # Resumed the same day, its run-out is back within the horizon: the second occurrence opens.
    resumed = api.send("POST", f"/v1/agents/{agent_id}/resume", {"reason": "forecast test"})
    assert resumed.status_code == 200, resumed.text
    tick(publisher)
    again = wait_for(
        lambda: [r for r in forecasts(api, tenant, "open") if r["details"]["scope"] == "agent"], timeout=60
    )
    assert [row["id"] for row in again] == [f"{first}.2"] and again[0]["details"]["occurrence"] == 2
    # Raising the tenant's budget takes its projection beyond the day: the next tick resolves it. Far beyond, at any
    # time of day: $1000 was reached before midnight at the test's ~$46/h when the test ran after 00:00 UTC.
    assert api.send("PUT", f"/v1/tenants/{tenant}/budget", {"daily_usd": "100000"}).status_code == 200
    tick(publisher)
    resolved = wait_for(lambda: len(rows := forecasts(api, tenant, "resolved")) == 2 and rows, timeout=60)
    assert {row["id"] for row in resolved} == {row["id"] for row in opened}
    by_id = {row["id"]: row for row in resolved}
    assert "not before the period resets" in (by_id[tenant_episode["id"]]["resolution"] or "")
    assert [row["id"] for row in forecasts(api, tenant, "open")] == [f"{first}.2"]  # the agent's still runs out
    raised = api.get(f"/v1/tenants/{tenant}/usage").json()["periods"]["day"]
    assert raised["projected_limit_at"] is None and Decimal(raised["remaining_usd"]) == Decimal("99992")


def test_the_forecast_reads_each_budgeted_subject_and_its_counters_once_per_tick(
    stack, publisher, firestore, api, agent_id, monkeypatch
) -> None:
    """The reads docs/alerting.md gives per tick, counted on the emulator: 1 (the cursor) + the tenants and
    agents listed + T x shards (the tenants evaluated) + A (the agents' month documents) + the open forecast
    episodes (at least 1) + the occurrence markers of the forecasts about to open."""
    tenant = f"t-{uuid.uuid4().hex[:10]}"
    register(publisher, firestore, agent_id, tenant=tenant, budget={"monthly_usd": "100"})
    assert api.send("PUT", f"/v1/tenants/{tenant}/budget", {"monthly_usd": "500"}).status_code == 200
    seen: list[int] = []
    query = store.open_episodes

    def open_episodes(limit: int) -> list[tuple[dict[str, Any], Any]]:
        rows = query(limit)
        seen.append(len(rows))
        return rows

    monkeypatch.setattr(store, "open_episodes", open_episodes)
    with metering.metered() as meter:
        out = service.run(datetime.now(UTC))
    assert out["tenants"] >= 1 and out["agents"] >= 1 and len(seen) == 1
    shards = settings.get().tenant_shards
    expected = 1 + out["listed"] + out["tenants"] * shards + out["agents"] + max(1, seen[0]) + out["opening"]
    # An episode opened (by other tests' spenders) reads its tenant's alerting settings unless cached; each
    # forecast about to open reads its occurrence marker (``opening``).
    assert expected <= meter.reads <= expected + out["opened"]
    print(f"forecast tick: {out}, {meter.reads} reads, {meter.writes} writes")  # the figure in the report


def test_successive_ticks_reach_every_budgeted_tenant_a_page_at_a_time(stack, api, monkeypatch) -> None:
    """The rotating cursor on the emulator (the budget-then-id order of a ``!= null`` query, ``start_after``
    a map): with pages of 2, the ticks of one round evaluate each budgeted tenant once, then start again."""
    mine = [f"t-{uuid.uuid4().hex[:10]}" for _ in range(3)]
    for tenant, budget in zip(mine, [{"daily_usd": "10"}, {"monthly_usd": "5"}, {"daily_usd": "3"}], strict=True):
        assert api.send("PUT", f"/v1/tenants/{tenant}/budget", budget).status_code == 200
    monkeypatch.setattr(service, "PAGE_TENANTS", 2)
    monkeypatch.setattr(service, "PAGE_AGENTS", 1000)
    evaluated: list[list[str]] = []
    months = store.tenant_month

    def tenant_month(tenant: str, now: datetime, shards: int) -> Any:
        evaluated[-1].append(tenant)
        return months(tenant, now, shards)

    monkeypatch.setattr(store, "tenant_month", tenant_month)
    store.save_cursors({"tenant": None, "agent": None}, datetime.now(UTC))
    try:
        for _ in range(500):
            evaluated.append([])
            out = service.run(datetime.now(UTC))
            assert "failed" not in out, out
            if "tenant" in out["rounds_ended"]:
                break
        round_ = [tenant for tick_ in evaluated for tenant in tick_]
        assert set(mine) <= set(round_) and len(round_) == len(set(round_)), evaluated
        assert all(len(tick_) <= 2 for tick_ in evaluated) and len(evaluated) == -(-len(round_) // 2)
        assert store.cursors()["tenant"] is None  # the round ended: the next tick starts at the first
        evaluated.append([])
        service.run(datetime.now(UTC))
        assert evaluated[-1] == round_[:2]
    finally:
        store.save_cursors({"tenant": None, "agent": None}, datetime.now(UTC))
    # An open forecast's subject off the page is read by id: found while it has a budget.
    found = store.budgeted("tenant", [mine[1], f"t-{uuid.uuid4().hex[:10]}"])
    assert [(row.subject, row.budget["monthly_usd"]) for row in found] == [(mine[1], "5")]
    print(f"rotation: {len(round_)} budgeted tenants in {len(evaluated) - 1} ticks of 2")
