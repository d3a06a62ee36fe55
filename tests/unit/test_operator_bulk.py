"""Bulk operator actions through ``POST /v1/agents/bulk``: the dry run changes nothing, each agent's
result is reported, destructive actions become one approval carried out on the agents it listed."""

from __future__ import annotations

from typing import Any

import pytest

from shared.domain import approvals as approval_domain
from shared.domain.episodes import AlertingConfig
from shared.domain.lifecycle import State
from shared.pipeline import fleet_actions
from shared.services import approvals, bulk
from shared.store import agent_search, config
from shared.store.agent_search import Filters
from tests.unit.test_http_api import record
from tests.unit.test_http_api_costs import NOW, World
from tests.unit.test_operator_api import OPERATOR, assert_error, ops, send, world

__all__ = ["ops", "world"]


@pytest.fixture
def fleet(ops: World, monkeypatch: pytest.MonkeyPatch) -> World:
    for i in range(1, 4):
        ops.agents[f"agent-b{i}"] = record(f"agent-b{i}", "acme")
    ops.agents["agent-b2"] = ops.agents["agent-b2"].model_copy(
        update={"holds": {"pause": {"command": "pause", "command_id": "pause.00000001", "key": "k", "issued_at": NOW}}}
    )

    def page(filters: Filters, page_size: int, after: str | None) -> Any:
        chosen = sorted(
            (a for a in ops.agents.values() if a.agent_id.startswith("agent-b") and a.tenant == filters.tenant),
            key=lambda a: a.agent_id,
        )
        rest = [a for a in chosen if after is None or a.agent_id > after]
        return rest[:page_size], (rest[page_size - 1].agent_id if len(rest) > page_size else None)

    monkeypatch.setattr(agent_search, "page", page)
    ops.asked = []  # type: ignore[attr-defined]

    def request(approval: approval_domain.Approval, now: Any) -> Any:
        ops.asked.append(approval)  # type: ignore[attr-defined]
        return approval, True

    monkeypatch.setattr(approvals, "request", request)
    monkeypatch.setattr(config, "alerting", lambda tenant: AlertingConfig.for_tenant(config.alerting_defaults()))
    return ops


def test_dry_run_lists_each_agents_result_and_changes_nothing(fleet: World) -> None:
    body = {"action": "pause", "filter": {"tenant": "acme"}, "dry_run": True, "reason": "freeze"}
    reply = send("/v1/agents/bulk", OPERATOR, body=body)
    assert reply.status == 200, reply.text
    assert [(r["agent_id"], r["result"]) for r in reply.json["results"]] == [
        ("agent-b1", "would_apply"),
        ("agent-b2", "unchanged"),
        ("agent-b3", "would_apply"),
    ]
    assert fleet.updates == [] and fleet.published == []


def test_bulk_pause_reports_each_agent_and_caps_a_call(fleet: World, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bulk, "CAP", 2)
    body = {"action": "pause", "filter": {"tenant": "acme"}, "reason": "freeze"}
    first = send("/v1/agents/bulk", OPERATOR, body=body)
    assert first.status == 200, first.text
    assert [(r["agent_id"], r["result"]) for r in first.json["results"]] == [
        ("agent-b1", "applied"),
        ("agent-b2", "unchanged"),
    ]
    token = first.json["next_page_token"]
    assert token
    second = send("/v1/agents/bulk", OPERATOR, body={**body, "page_token": token})
    assert [(r["agent_id"], r["result"]) for r in second.json["results"]] == [("agent-b3", "applied")]
    assert second.json["next_page_token"] is None
    assert all(fleet.agents[f"agent-b{i}"].status is State.SUSPENDED for i in (1, 3))
    resumed = send("/v1/agents/bulk", OPERATOR, body={**body, "action": "resume"})
    assert {r["result"] for r in resumed.json["results"]} == {"applied"}


def test_bulk_label_and_a_refusal_is_a_result(fleet: World) -> None:
    fleet.agents["agent-b3"] = fleet.agents["agent-b3"].model_copy(update={"status": State.DECOMMISSIONED})
    body = {"action": "label", "filter": {"tenant": "acme"}, "reason": "tag", "labels": {"env": "prod"}}
    reply = send("/v1/agents/bulk", OPERATOR, body=body)
    assert reply.status == 200, reply.text
    results = {r["agent_id"]: r for r in reply.json["results"]}
    assert results["agent-b1"]["result"] == "applied" and results["agent-b3"]["result"] == "refused"
    assert "decommissioned" in results["agent-b3"]["reason"]
    assert fleet.agents["agent-b1"].labels == {"env": "prod"}
    assert_error(send("/v1/agents/bulk", OPERATOR, body={**body, "labels": None}), 400, "bad_request")


def test_bulk_decommission_asks_the_approvers_then_applies_to_the_listed_agents(fleet: World) -> None:
    body = {"action": "decommission", "filter": {"tenant": "acme"}, "reason": "retire"}
    assert_error(send("/v1/agents/bulk", OPERATOR, body={**body, "filter": {}}), 400, "bad_request")
    reply = send("/v1/agents/bulk", OPERATOR, body=body)
    assert reply.status == 200, reply.text
    assert {r["result"] for r in reply.json["results"]} == {"requested"}
    [approval] = fleet.asked  # type: ignore[attr-defined]
    assert reply.json["approval_id"] == approval.id and approval.kind is approval_domain.Kind.BULK
    assert approval.payload["agent_ids"] == ["agent-b1", "agent-b2", "agent-b3"]
    assert all(a.status is State.ACTIVE for a in fleet.agents.values() if a.agent_id.startswith("agent-b"))

    decided = approval.model_copy(update={"state": approval_domain.State.APPROVED, "decided_by": "U2"})
    said = fleet_actions.effect(decided, NOW)
    assert said.startswith("decommission on 3 agents: 3 applied")
    assert all(fleet.agents[f"agent-b{i}"].status is State.DECOMMISSIONED for i in (1, 2, 3))
    assert fleet.deleted == ["agent-b1", "agent-b2", "agent-b3"]  # type: ignore[attr-defined]
