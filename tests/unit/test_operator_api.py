"""The operator controls of the REST API on one agent (quarantine, decommission, PATCH, the agent view),
on the fakes of test_http_api_costs: the real services, the stores faked."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import flask
import pytest

from shared.api import router
from shared.domain.api_keys import Role
from shared.domain.lifecycle import State
from shared.services import command_channels
from shared.store import api_keys
from shared.store.api_keys import Principal
from tests.unit.test_http_api import APP, Reply
from tests.unit.test_http_api_costs import NOW, PRINCIPALS, REQUEST_ID, World, world

__all__ = ["world"]

APPROVER = "afm_00000000000000aa_" + "q" * 43
ACME_APPROVER = "afm_00000000000000ab_" + "r" * 43
OPERATOR = next(t for t, p in PRINCIPALS.items() if p.name == "oncall")
VIEWER = next(t for t, p in PRINCIPALS.items() if p.name == "dash")


@pytest.fixture
def ops(world: World, monkeypatch: pytest.MonkeyPatch) -> World:
    keys = {
        **PRINCIPALS,
        APPROVER: Principal("0a", "boss", Role.APPROVER, None),
        ACME_APPROVER: Principal("0b", "acme-boss", Role.APPROVER, "acme"),
    }
    monkeypatch.setattr(api_keys, "verify", keys.get)
    world.deleted = []  # type: ignore[attr-defined]
    monkeypatch.setattr(command_channels, "delete", lambda agent_id: world.deleted.append(agent_id) or True)  # type: ignore[attr-defined]
    monkeypatch.setattr(command_channels, "revoke_readers", lambda agent_id: None)
    return world


def send(path: str, token: str, method: str = "POST", body: Any = None) -> Reply:
    headers = {"Authorization": f"Bearer {token}", "X-Cloud-Trace-Context": f"{REQUEST_ID}/1"}
    data = json.dumps(body).encode() if body is not None else None
    with APP.test_request_context(path, method=method, headers=headers, data=data, content_type="application/json"):
        return Reply(router.handle(flask.request))


def assert_error(reply: Reply, status: int, code: str) -> None:
    assert reply.status == status, reply.text
    assert reply.json["error"]["code"] == code and reply.json["error"]["reason"]


def audit_of(world: World) -> list[tuple[str, str, str]]:
    entries = [(a.action, a.outcome, a.target) for a in world.audit]
    for path, doc in world.firestore.docs.items():
        if path.startswith("audit/"):
            entries.append((doc["action"], doc["outcome"], doc["target"]))
    return entries


def test_quarantine_is_for_approvers_audited_and_idempotent(ops: World) -> None:
    reply = send("/v1/agents/agent-a1/quarantine", OPERATOR, body={"reason": "leaking keys"})
    assert_error(reply, 403, "forbidden")
    assert ("api.quarantine_agent", "refused", "/v1/agents/agent-a1/quarantine") in audit_of(ops)
    assert ops.agents["agent-a1"].status is State.ACTIVE

    reply = send("/v1/agents/agent-a1/quarantine", ACME_APPROVER, body={"reason": "leaking keys"})
    assert reply.status == 200, reply.text
    assert reply.json["status"] == "quarantined" and reply.json["changed"] is True
    assert reply.json["holds"]["quarantine"]["command"] == "quarantine"
    assert [c.command.value for c in ops.published] == ["quarantine"]
    assert ("agent.hold.quarantine", "placed", "agent-a1") in [(a.action, a.outcome, a.target) for a in ops.audit]

    again = send("/v1/agents/agent-a1/quarantine", ACME_APPROVER, body={"reason": "again"})
    assert again.status == 200 and again.json["changed"] is False
    assert ops.published[0].command_id == ops.published[1].command_id

    assert_error(send("/v1/agents/agent-g1/quarantine", ACME_APPROVER, body={"reason": "x"}), 404, "not_found")
    assert_error(send("/v1/agents/agent-a1/quarantine", APPROVER, body={}), 400, "bad_request")


def test_decommission_cleans_up_and_a_retry_finishes_it(ops: World) -> None:
    held = ops.agents["agent-a1"].model_copy(
        update={
            "holds": {"pause": {"command": "pause", "command_id": "pause.1", "key": "k", "issued_at": NOW}},
            "status": State.SUSPENDED,
            "status_hold": "pause",
            "identity": {"keys": [{"key_id": "k1", "public_key": "x" * 43, "bound_at": NOW.isoformat()}]},
            "commands": {
                "c1": {"command": "drain", "state": "sent", "sent_at": NOW},
                "c0": {"command": "restart", "state": "done", "sent_at": NOW - timedelta(hours=1)},
            },
        }
    )
    ops.agents["agent-a1"] = held
    assert_error(send("/v1/agents/agent-a1/decommission", OPERATOR, body={"reason": "retired"}), 403, "forbidden")

    reply = send("/v1/agents/agent-a1/decommission", APPROVER, body={"reason": "retired"})
    assert reply.status == 200, reply.text
    body = reply.json
    assert body["status"] == "decommissioned" and body["changed"] is True
    assert body["cleanup"]["holds"] == ["pause"] and body["cleanup"]["commands"] == ["c1"]
    assert body["cleanup"]["subscription_deleted"] is True
    after = ops.agents["agent-a1"]
    assert after.holds == {} and after.status_hold is None
    assert after.commands["c1"]["state"] == "failed" and after.commands["c0"]["state"] == "done"
    assert ops.deleted == ["agent-a1"]  # type: ignore[attr-defined]
    actions = [(a.action, a.outcome) for a in ops.audit]
    assert ("agent.transition", "applied") in actions and ("agent.decommission.cleanup", "applied") in actions
    assert not ops.published, "a decommissioned agent is told nothing more"

    retry = send("/v1/agents/agent-a1/decommission", APPROVER, body={"reason": "retired"})
    assert retry.status == 200 and retry.json["status"] == "decommissioned"
    assert ops.deleted == ["agent-a1", "agent-a1"]  # type: ignore[attr-defined]

    refused = send("/v1/agents/agent-a1/quarantine", APPROVER, body={"reason": "x"})
    assert_error(refused, 409, "conflict")
    assert ("agent.hold.quarantine", "refused", "agent-a1") in audit_of(ops)


def test_patch_sets_owner_labels_and_interval_which_then_win(ops: World) -> None:
    assert_error(send("/v1/agents/agent-a1", VIEWER, "PATCH", {"owner": "x"}), 403, "forbidden")
    assert_error(send("/v1/agents/agent-a1", OPERATOR, "PATCH", {}), 400, "bad_request")
    assert_error(send("/v1/agents/agent-a1", OPERATOR, "PATCH", {"heartbeat_interval_s": 0}), 400, "bad_request")
    assert_error(send("/v1/agents/agent-a1", OPERATOR, "PATCH", {"labels": {"Bad Key": "x"}}), 400, "bad_request")
    ops.agents["agent-a1"] = ops.agents["agent-a1"].model_copy(update={"labels": {"team": "a", "old": "y"}})

    body = {"owner": "ml-platform", "labels": {"env": "prod", "old": None}, "heartbeat_interval_s": 60}
    reply = send("/v1/agents/agent-a1", OPERATOR, "PATCH", body)
    assert reply.status == 200, reply.text
    view = reply.json
    assert view["owner"] == "ml-platform" and view["labels"] == {"env": "prod", "team": "a"}
    assert view["heartbeat_interval_s"] == 60
    assert view["api_fields"] == ["heartbeat_interval_s", "labels", "owner"]
    after = ops.agents["agent-a1"]
    assert after.late_after is not None and after.last_heartbeat_at is not None
    assert after.late_after > after.last_heartbeat_at + timedelta(seconds=60)
    assert [a.action for a in ops.audit] == ["agent.update"]
    same = send("/v1/agents/agent-a1", OPERATOR, "PATCH", body)
    assert same.status == 200 and [a.action for a in ops.audit] == ["agent.update"]


def test_agent_view_shows_liveness_security_score_and_pending_commands(ops: World) -> None:
    ops.agents["agent-a1"] = ops.agents["agent-a1"].model_copy(
        update={
            "health": {"score": 40.0, "score_at": NOW},
            "commands": {
                "c2": {"command": "throttle", "state": "acknowledged", "sent_at": NOW, "origin": "policy:errors"},
                "c1": {"command": "drain", "state": "sent", "sent_at": NOW - timedelta(minutes=1)},
                "c0": {"command": "restart", "state": "failed", "sent_at": NOW - timedelta(hours=1)},
            },
        }
    )
    reply = send("/v1/agents/agent-a1", VIEWER, "GET")
    assert reply.status == 200, reply.text
    assert reply.json["liveness"] == "ok" and reply.json["security_score"] == 40.0
    pending = reply.json["pending_commands"]
    assert [(c["command_id"], c["state"]) for c in pending] == [("c1", "sent"), ("c2", "acknowledged")]
    assert pending[1]["origin"] == "policy:errors"
