"""What review C of the operator controls found, each pinned by a test: a failure midway through a bulk
call is a per-agent result, a bulk names one tenant, a client's request_id makes a bulk retry idempotent,
a refused tenant is audited, labels stay bounded, a decommissioned agent leaves the acknowledgement sweep,
a bulk label's dry run agrees with the call, a decommissioning agent takes no hold."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest

from shared.domain import approval_messages
from shared.domain.lifecycle import State
from shared.services import agent_controls, bulk
from tests.unit.test_http_api_costs import NOW, TOKENS, World
from tests.unit.test_operator_api import APPROVER, OPERATOR, assert_error, audit_of, ops, send, world
from tests.unit.test_operator_bulk import fleet

__all__ = ["fleet", "ops", "world"]


def test_an_error_midway_is_a_failed_result_and_the_bulk_is_still_audited(
    fleet: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = agent_controls.pause

    def pause(agent_id: str, *rest: Any) -> Any:
        if agent_id == "agent-b3":
            raise RuntimeError("publish failed")
        return real(agent_id, *rest)

    monkeypatch.setattr(agent_controls, "pause", pause)
    reply = send("/v1/agents/bulk", OPERATOR, body={"action": "pause", "filter": {"tenant": "acme"}, "reason": "f"})
    assert reply.status == 200, reply.text
    results = {r["agent_id"]: (r["result"], r["reason"]) for r in reply.json["results"]}
    assert results["agent-b1"] == ("applied", None) and results["agent-b3"] == ("failed", "RuntimeError")
    assert ("agent.bulk.pause", "applied", "bulk.pause") in audit_of(fleet)


def test_every_bulk_names_one_tenant(fleet: World) -> None:
    reply = send("/v1/agents/bulk", OPERATOR, body={"action": "pause", "reason": "freeze"})
    assert_error(reply, 400, "bad_request")
    assert all(a.status is State.ACTIVE for a in fleet.agents.values() if a.agent_id.startswith("agent-b"))
    # A tenant-scoped key names its own tenant by itself.
    scoped = send("/v1/agents/bulk", TOKENS["acme-operator"], body={"action": "pause", "reason": "freeze"})
    assert scoped.status == 200, scoped.text


def test_a_tenant_scoped_key_naming_another_tenant_is_refused_and_audited(fleet: World) -> None:
    body = {"action": "pause", "filter": {"tenant": "globex"}, "reason": "freeze"}
    assert_error(send("/v1/agents/bulk", TOKENS["acme-operator"], body=body), 403, "forbidden")
    assert ("agent.bulk.pause", "refused", "bulk.pause") in audit_of(fleet)


def test_a_bulk_retried_with_its_request_id_asks_the_same_approval(fleet: World) -> None:
    body = {"action": "decommission", "filter": {"tenant": "acme"}, "reason": "retire", "request_id": "retry-0001"}
    first = send("/v1/agents/bulk", OPERATOR, body=body)
    again = send("/v1/agents/bulk", OPERATOR, body=body)
    other = send("/v1/agents/bulk", OPERATOR, body={**body, "request_id": "retry-0002"})
    assert first.status == 200, first.text
    assert first.json["approval_id"] == again.json["approval_id"] != other.json["approval_id"]


def test_labels_stay_bounded(ops: World) -> None:
    for n in range(2):
        labels = {f"k{n}-{i}": "v" for i in range(40)}
        reply = send("/v1/agents/agent-a1", OPERATOR, "PATCH", {"labels": labels})
    assert_error(reply, 409, "conflict")
    assert len(ops.agents["agent-a1"].labels) <= agent_controls.MAX_LABELS


def test_a_decommissioned_agent_leaves_the_acknowledgement_sweep(ops: World) -> None:
    ops.agents["agent-a1"] = ops.agents["agent-a1"].model_copy(
        update={
            "commands": {"c1": {"command": "drain", "state": "sent", "sent_at": NOW}},
            "command_due_at": NOW + timedelta(minutes=1),
        }
    )
    reply = send("/v1/agents/agent-a1/decommission", APPROVER, body={"reason": "retired"})
    assert reply.status == 200, reply.text
    assert ops.agents["agent-a1"].command_due_at is None


def test_a_bulk_labels_dry_run_says_what_the_call_does(fleet: World) -> None:
    fleet.agents["agent-b1"] = fleet.agents["agent-b1"].model_copy(update={"labels": {"env": "prod"}})
    body = {"action": "label", "filter": {"tenant": "acme"}, "reason": "t", "labels": {"env": "prod"}}
    dry = send("/v1/agents/bulk", OPERATOR, body={**body, "dry_run": True})
    real = send("/v1/agents/bulk", OPERATOR, body=body)
    assert dry.json["results"][0]["result"] == "would_apply" and real.json["results"][0]["result"] == "applied"
    again = send("/v1/agents/bulk", OPERATOR, body={**body, "dry_run": True})
    assert again.json["results"][0]["result"] == "unchanged"


def test_a_decommissioning_agent_takes_no_hold(fleet: World) -> None:
    fleet.agents["agent-b1"] = fleet.agents["agent-b1"].model_copy(update={"status": State.DECOMMISSIONING})
    assert_error(send("/v1/agents/agent-b1/quarantine", APPROVER, body={"reason": "x"}), 409, "conflict")
    assert fleet.agents["agent-b1"].holds == {}
    assert bulk.preview(fleet.agents["agent-b1"], "pause", None).result == "refused"


def test_the_bulk_approval_shows_its_filter_and_every_agent_escaped(fleet: World) -> None:
    body = {"action": "decommission", "filter": {"tenant": "acme"}, "reason": "retire"}
    assert send("/v1/agents/bulk", OPERATOR, body=body).status == 200
    [approval] = fleet.asked  # type: ignore[attr-defined]
    approval = approval.model_copy(update={"payload": {**approval.payload, "filter": {"tenant": "<!channel>"}}})
    text = json.dumps(approval_messages.pending(approval)[1])
    assert all(f"`agent-b{i}`" in text for i in (1, 2, 3)) and "*Filter*" in text
    assert "<!channel>" not in text


def test_a_decommission_is_audited_as_such(ops: World) -> None:
    assert send("/v1/agents/agent-a1/decommission", APPROVER, body={"reason": "retired"}).status == 200
    assert ("agent.decommission", "applied", "agent-a1") in audit_of(ops)


def test_only_an_approver_changes_or_removes_the_critical_label(fleet: World) -> None:
    key, value = agent_controls.CRITICAL_LABEL
    fleet.agents["agent-a1"] = fleet.agents["agent-a1"].model_copy(update={"labels": {key: value}})
    refused = send("/v1/agents/agent-a1", OPERATOR, "PATCH", {"labels": {key: None}})
    assert_error(refused, 403, "forbidden")
    assert fleet.agents["agent-a1"].labels == {key: value}
    assert ("agent.update", "refused", "agent-a1") in audit_of(fleet)
    body = {"action": "label", "filter": {"tenant": "acme"}, "reason": "t", "labels": {key: "false"}}
    assert_error(send("/v1/agents/bulk", OPERATOR, body=body), 403, "forbidden")
    assert ("agent.bulk.label", "refused", "bulk.label") in audit_of(fleet)
    assert send("/v1/agents/agent-a1", OPERATOR, "PATCH", {"labels": {key: value, "env": "x"}}).status == 200
    assert send("/v1/agents/agent-a1", APPROVER, "PATCH", {"labels": {key: None}}).status == 200
    assert key not in fleet.agents["agent-a1"].labels
