"""The REST API's remediation commands of an agent (shared/api/agent_commands.py) with the store, the
publisher and the audit log faked: roles (stop needs an approver), refusals audited, the list newest first."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import flask
import pytest
from fleet_agent.contracts import CommandType
from fleet_agent.messages.commands import COMMANDS_V2

from shared.api import core, router
from shared.domain.agent_record import AgentRecord, Plan
from shared.domain.api_keys import Role
from shared.domain.approvals import Approval, Kind
from shared.domain.remediation_policy import RemediationPolicy
from shared.services import agent_commands, approvals
from shared.store import agents as agent_store
from shared.store import api_keys
from shared.store import audit as audit_store
from shared.store import config as config_store
from shared.store.api_keys import Principal
from tests.unit.test_http_api import APP, Reply, assert_error, record

NOW = datetime(2026, 12, 6, 10, 0, tzinfo=UTC)
TOKENS = {name: f"afm_{i:016x}_" + chr(ord("a") + i) * 43 for i, name in enumerate(["viewer", "operator", "approver"])}
PRINCIPALS = {
    TOKENS["viewer"]: Principal("01", "dash", Role.VIEWER, "acme"),
    TOKENS["operator"]: Principal("02", "oncall", Role.OPERATOR, "acme"),
    TOKENS["approver"]: Principal("03", "lead", Role.APPROVER, "acme"),
}


class World:
    def __init__(self) -> None:
        modern = record("agent-a1", "acme").model_copy(update={"supports": [COMMANDS_V2]})
        self.agents: dict[str, AgentRecord] = {"agent-a1": modern, "agent-old": record("agent-old", "acme")}
        self.agents["agent-g1"] = record("agent-g1", "globex").model_copy(update={"supports": [COMMANDS_V2]})
        self.published: list[Any] = []
        self.audit: list[Any] = []

    def update(self, agent_id: str, decide: Any) -> Plan:
        plan: Plan = decide(self.agents.get(agent_id))
        if plan.changes:
            self.agents[agent_id] = self.agents[agent_id].model_copy(update=plan.changes)
        self.audit.extend(plan.audit)
        return plan


@pytest.fixture
def world(monkeypatch: pytest.MonkeyPatch) -> World:
    w = World()
    monkeypatch.setattr(api_keys, "verify", PRINCIPALS.get)
    monkeypatch.setattr(agent_store, "get", w.agents.get)
    monkeypatch.setattr(agent_store, "update", w.update)
    monkeypatch.setattr(agent_commands, "publish", lambda commands: w.published.extend(commands) or [])
    monkeypatch.setattr(audit_store, "append", w.audit.append)
    monkeypatch.setattr(core, "now", lambda: NOW)
    monkeypatch.setattr(config_store, "remediation", lambda tenant: RemediationPolicy())
    return w


def send(path: str, who: str, body: Any = None, request_id: str = "0123456789abcdef0123456789abcdef") -> Reply:
    headers = {"Authorization": f"Bearer {TOKENS[who]}", "X-Cloud-Trace-Context": f"{request_id}/1"}
    method = "POST" if body is not None else "GET"
    data = json.dumps(body).encode() if body is not None else None
    with APP.test_request_context(path, method=method, headers=headers, data=data, content_type="application/json"):
        return Reply(router.handle(flask.request))


def test_an_operator_drains_and_the_list_shows_it_newest_first(world: World) -> None:
    reply = send(
        "/v1/agents/agent-a1/commands", "operator", {"command": "drain", "reason": "failing", "deadline_s": 60}
    )
    assert reply.status == 200, reply.text
    (drain,) = reply.json["commands"]
    assert drain["command"] == "drain" and drain["state"] == "sent" and drain["actor"] == "api:oncall"
    (command,) = world.published
    assert command.command is CommandType.DRAIN and command.command_id == drain["command_id"]
    assert [e.action for e in world.audit] == ["agent.command.drain"]
    body = {"command": "throttle", "reason": "r", "calls_per_minute": 3}
    send("/v1/agents/agent-a1/commands", "operator", body, request_id="f" * 32)
    listed = send("/v1/agents/agent-a1/commands", "viewer")
    assert listed.status == 200 and [c["command"] for c in listed.json["commands"]] in (
        ["throttle", "drain"],  # same sent_at (frozen clock): ordered by id, both listed
        ["drain", "throttle"],
    )
    assert (
        listed.json["commands"][[c["command"] for c in listed.json["commands"]].index("throttle")]["calls_per_minute"]
        == 3
    )


def test_stop_needs_an_approver_and_the_refusal_is_audited(world: World) -> None:
    refused = send("/v1/agents/agent-a1/commands", "operator", {"command": "stop", "reason": "retire"})
    assert_error(refused, 403, "forbidden")
    assert not world.published and [(e.action, e.outcome) for e in world.audit] == [("agent.command.stop", "refused")]
    assert send("/v1/agents/agent-a1/commands", "approver", {"command": "stop", "reason": "retire"}).status == 200
    assert [c.command for c in world.published] == [CommandType.STOP]


def test_a_stop_of_a_critical_agent_waits_for_a_second_approver(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[Approval] = []
    monkeypatch.setattr(approvals, "request", lambda approval, now: (asked.append(approval) or approval, True))
    world.agents["agent-a1"] = world.agents["agent-a1"].model_copy(update={"labels": {"critical": "true"}})
    reply = send("/v1/agents/agent-a1/commands", "approver", {"command": "stop", "reason": "retire", "deadline_s": 30})
    assert reply.status == 202, reply.text
    assert not world.published and reply.json["commands"] == []
    (approval,) = asked
    assert reply.json["approval_id"] == approval.id and approval.kind is Kind.REMEDIATION
    assert approval.requester.kind == "api" and approval.requester.id == "lead"
    assert approval.payload == {"action": "stop", "deadline_s": 30, "origin": "operator"}
    again = send("/v1/agents/agent-a1/commands", "approver", {"command": "stop", "reason": "retire", "deadline_s": 30})
    assert again.json["approval_id"] == approval.id  # the same request id: the same approval
    restart = send("/v1/agents/agent-a1/commands", "operator", {"command": "restart", "reason": "r"})
    assert restart.status == 200 and [c.command for c in world.published] == [CommandType.RESTART]


def test_an_old_sdk_is_refused_with_409_and_audited(world: World) -> None:
    reply = send("/v1/agents/agent-old/commands", "operator", {"command": "restart", "reason": "frozen"})
    assert_error(reply, 409, "conflict")
    assert reply.json["error"]["reason"] == "agent's SDK does not support remediation commands"
    assert [(e.action, e.outcome) for e in world.audit] == [("agent.command.restart", "refused")]


def test_viewers_other_tenants_and_bad_bodies_are_refused(world: World) -> None:
    drain = {"command": "drain", "reason": "x"}
    assert_error(send("/v1/agents/agent-a1/commands", "viewer", drain), 403, "forbidden")
    assert_error(send("/v1/agents/agent-g1/commands", "operator", drain), 404, "not_found")
    assert_error(send("/v1/agents/agent-g1/commands", "viewer"), 404, "not_found")
    bodies = (
        {"command": "pause", "reason": "x"},
        {"command": "drain"},
        {**drain, "deadline_s": 0},
        {"command": "throttle", "reason": "x"},
        {**drain, "calls_per_minute": 3},
        {**drain, "until": "2026-12-07T12:00:00Z"},
    )
    for body in bodies:
        bad = send("/v1/agents/agent-a1/commands", "operator", body)
        assert bad.status == 400 and bad.json["error"]["code"] == "bad_request", bad.text
    assert not world.published
