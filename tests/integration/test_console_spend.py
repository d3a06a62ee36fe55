"""The console's Spend page in a real browser (Playwright driving Chromium) against the session's stack:
a tenant's agents with recorded calls on two models show their spend per agent and model today, a bar
chart of the tenant's daily spend, and projections for the day and the month against the tenant's budget;
a tenant-scoped viewer sees its own tenant only."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from fleet_agent.contracts import CostBatch, CostRecord

from emulators.stack import Stack
from tests.integration.conftest import Api, wait_for
from tests.integration.helpers import make_key, publish
from tests.integration.test_console import _console, _register, _sign_in, _tenant


def _calls(publisher: Any, api: Api, agent_id: str, costs: dict[str, str]) -> None:
    """One call per model at the given cost, counted before the page is read."""
    records = [
        CostRecord.model_validate(
            {
                "call_id": f"call-{uuid.uuid4().hex}",
                "at": datetime.now(UTC),
                "model": model,
                "input_tokens": 100,
                "output_tokens": 50,
                "cost_usd": Decimal(cost),
                "success": True,
                "latency_ms": 100.0,
                "operation": "summarize",
            }
        )
        for model, cost in costs.items()
    ]
    publish(publisher, CostBatch(agent_id=agent_id, batch_id=f"b-{uuid.uuid4().hex}", records=records))
    wait_for(lambda: api.get(f"/v1/agents/{agent_id}/usage").json()["periods"]["day"]["calls"] == len(records))


def test_the_spend_page_shows_agents_models_chart_and_projection(
    page: Any, stack: Stack, publisher: Any, api: Api
) -> None:
    tenant = _tenant()
    one, two = f"it-{uuid.uuid4().hex[:12]}", f"it-{uuid.uuid4().hex[:12]}"
    for agent in (one, two):
        _register(publisher, api, agent, tenant)
    _calls(publisher, api, one, {"gpt-4o": "0.02", "claude-haiku": "0.01"})
    _calls(publisher, api, two, {"gpt-4o": "0.05"})
    assert api.send("PUT", f"/v1/tenants/{tenant}/budget", {"daily_usd": "10", "monthly_usd": "100"}).status_code == 200
    violations: list[str] = []
    page.on("console", lambda msg: violations.append(msg.text) if "Content Security Policy" in msg.text else None)

    _sign_in(page, stack, stack.env["FLEET_API_KEY"])
    page.goto(_console(stack) + f"/spend?tenant={tenant}")
    assert page.locator(".spend-tenant").inner_text() == tenant

    def today(agent: str, model: str) -> str:
        return page.locator(f"tr[data-agent-id='{agent}'][data-model='{model}'] .today").inner_text()

    assert today(one, "gpt-4o") == "$0.02"
    assert today(one, "claude-haiku") == "$0.01"
    assert today(two, "gpt-4o") == "$0.05"
    assert page.locator(f"tr[data-agent-id='{two}'][data-model='claude-haiku']").count() == 0
    chart = page.locator("figure.spend-chart svg.chart")
    assert chart.count() == 1
    assert chart.bounding_box()["height"] > 50

    day = page.locator("table.spend-projection tr[data-period='day']")
    assert day.locator(".spent").inner_text() == "$0.08"
    assert day.locator(".budget").inner_text() == "$10.00"
    month = page.locator("table.spend-projection tr[data-period='month']")
    assert month.locator(".spent").inner_text() == "$0.08"
    assert month.locator(".budget").inner_text() == "$100.00"
    # The rows are the usage API's own periods (the tenant's counters, whatever the agent list holds).
    periods = api.get(f"/v1/tenants/{tenant}/usage").json()["periods"]
    assert [Decimal(periods[p]["spend_usd"]) for p in ("day", "month")] == [Decimal("0.08")] * 2
    assert [Decimal(periods[p]["budget_usd"]) for p in ("day", "month")] == [Decimal(10), Decimal(100)]
    assert month.locator(".projected").inner_text() != ""
    assert violations == []

    # A viewer of the tenant sees it without asking; another tenant's name is ignored.
    viewer = make_key(stack, f"{tenant}-viewer", "viewer", tenant)
    page.context.clear_cookies()
    _sign_in(page, stack, viewer)
    page.goto(_console(stack) + "/spend?tenant=someone-else")
    assert page.locator(".spend-tenant").inner_text() == tenant
    assert "only sees tenant" in page.locator("p.message").first.inner_text()
    assert today(two, "gpt-4o") == "$0.05"
    assert page.locator("form.spend-tenant-form").count() == 0
