"""Budget leases granted by the real path (emulator push -> fleet-registrations / fleet-costs -> Firestore,
signed ``lease`` commands back on ``agent-commands``), driven by raw signed events: what the fleet
grants, never more than a budget leaves, and how it answers a batch that spent beyond its lease."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from fleet_agent.contracts import BudgetSpec, Command, CommandType, CostBatch, LeaseUse

from tests.integration.conftest import wait_for
from tests.integration.helpers import agent_doc, publish, registration
from tests.integration.test_costs import commands_seen, record  # noqa: F401 (a fixture)

pytestmark = pytest.mark.integration


def leases_of(seen: list[Command], agent_id: str) -> list[Command]:
    return [c for c in list(seen) if c.agent_id == agent_id and c.command is CommandType.LEASE]


def register(publisher: Any, firestore: Any, agent_id: str, **kw: Any) -> None:
    publish(publisher, registration(agent_id, leases=True, **kw))
    wait_for(lambda: agent_doc(firestore, agent_id))


def ask(publisher: Any, agent_id: str, lease_id: str | None, records: list[Any] | None = None, **kw: Any) -> str:
    request_id = f"r-{uuid.uuid4().hex[:12]}"
    use = LeaseUse(lease_id=lease_id, request_id=request_id, **kw)
    publish(publisher, CostBatch(agent_id=agent_id, batch_id=f"b-{uuid.uuid4().hex}", records=records or [], lease=use))
    return request_id


def test_registration_grants_a_first_lease_and_a_request_tops_it_up(
    stack,
    publisher,
    firestore,
    agent_id,
    commands_seen,  # noqa: F811
) -> None:
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    register(publisher, firestore, agent_id, tenant=tenant, budget=BudgetSpec(hourly_usd=Decimal("1")))
    first = wait_for(lambda: leases_of(commands_seen, agent_id))[0]
    assert first.lease is not None and first.lease.lease_id.endswith(".1")
    assert Decimal(0) < first.lease.usd <= Decimal("1")
    epoch = first.lease.lease_id.split(".")[0]
    request_id = ask(publisher, agent_id, first.lease.lease_id, need_usd=Decimal("0.05"), models=["gpt-4o"])
    second = wait_for(
        lambda: [c for c in leases_of(commands_seen, agent_id) if c.lease and c.lease.request_id == request_id]
    )[0]
    assert second.lease is not None and second.lease.lease_id == f"{epoch}.2"
    assert "gpt-4o" in second.lease.prices
    assert first.lease.usd + second.lease.usd <= Decimal("1")


def test_leases_never_exceed_a_shared_tenant_budget(stack, publisher, firestore, api, commands_seen) -> None:  # noqa: F811
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    assert api.send("PUT", f"/v1/tenants/{tenant}/budget", {"hourly_usd": "0.50"}).status_code == 200
    agents = [f"share-{uuid.uuid4().hex[:8]}" for _ in range(4)]
    for agent in agents:
        register(publisher, firestore, agent, tenant=tenant)
    wait_for(lambda: all(leases_of(commands_seen, a) for a in agents))
    for _round in range(3):
        for agent in agents:
            latest = leases_of(commands_seen, agent)[-1]
            assert latest.lease is not None
            ask(publisher, agent, latest.lease.lease_id, need_usd=Decimal("0.20"))
    wait_for(lambda: sum(len(leases_of(commands_seen, a)) for a in agents) >= 4 * 4, timeout=60)
    total = sum((c.lease.usd for a in agents for c in leases_of(commands_seen, a) if c.lease), Decimal(0))
    assert Decimal("0.40") <= total <= Decimal("0.50")


def test_a_batch_beyond_its_lease_is_counted_alerted_and_the_agent_paused(
    stack,
    publisher,
    firestore,
    api,
    agent_id,
    commands_seen,  # noqa: F811
) -> None:
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    register(publisher, firestore, agent_id, tenant=tenant, budget=BudgetSpec(hourly_usd=Decimal("100")))
    first = wait_for(lambda: leases_of(commands_seen, agent_id))[0]
    assert first.lease is not None
    much = first.lease.usd * 3
    spent = [record(i, cost=str(much / 10)) for i in range(10)]
    use = LeaseUse(lease_id=first.lease.lease_id)
    publish(publisher, CostBatch(agent_id=agent_id, batch_id=f"b-{uuid.uuid4().hex}", records=spent, lease=use))
    doc = wait_for(lambda: (d := agent_doc(firestore, agent_id)) and "pause" in d.get("holds", {}) and d)
    assert "lease_exceeded" in doc["holds"]["pause"]["reason"]
    alerts = api.get("/v1/alerts", agent_id=agent_id, rule="lease_exceeded").json()
    assert alerts["items"], alerts
    now = datetime.now(UTC)
    assert now.year >= 2026
