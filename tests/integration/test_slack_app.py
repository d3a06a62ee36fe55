"""The Slack app, driven over HTTP as Slack drives it: signed form-encoded slash commands and
interactive payloads against ``fleet-slack`` served by functions-framework; the app's own Web API
calls land on the fake Slack server; agents' approval requests go through the real Pub/Sub path.
"""

from __future__ import annotations

import json
import time
import urllib.parse
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import requests
from fleet_agent import ApprovalRequest, FleetAgent

from tests.integration.conftest import Api, Slack, SlackApp, approval_message, tick, wait_for
from tests.integration.helpers import PROJECT, agent_doc, agent_key, heartbeat, publish, registration

pytestmark = pytest.mark.integration

ADMIN, APPROVER, APPROVER2, OPERATOR, VIEWER, OWNER = (
    "UADMIN01",
    "UAPPR001",
    "UAPPR002",
    "UOPER001",
    "UVIEW001",
    "UOWNER01",
)


@pytest.fixture
def tenant(api: Api) -> str:
    name = f"s{uuid.uuid4().hex[:10]}"
    roles = {ADMIN: "admin", APPROVER: "approver", APPROVER2: "approver", OPERATOR: "operator", VIEWER: "viewer"}
    roles[OWNER] = "approver"
    reply = api.send("PUT", f"/v1/tenants/{name}/roles", {"roles": roles})
    assert reply.status_code == 200, reply.text
    assert api.send("PUT", f"/v1/tenants/{name}/alerting", {"group_wait_s": 0}).status_code == 200
    return name


def registered(publisher: Any, firestore: Any, tenant: str, agent_id: str) -> None:
    publish(publisher, registration(agent_id, tenant=tenant, owner=OWNER, heartbeat_interval_s=30))
    wait_for(lambda: agent_doc(firestore, agent_id))
    publish(publisher, heartbeat(agent_id, 1))
    wait_for(lambda: (agent_doc(firestore, agent_id) or {}).get("heartbeats") == 1)


def text_of(reply: dict[str, Any]) -> str:
    return json.dumps(reply)


def audit(api: Api, **filters: str) -> list[dict[str, Any]]:
    reply = api.get("/v1/audit", **filters)
    assert reply.status_code == 200, reply.text
    return list(reply.json()["items"])


# --- signatures and malformed requests ----------------------------------------------------------


def test_forged_stale_and_unsigned_requests_get_401(slack_app: SlackApp, api: Api, tenant: str) -> None:
    body = slack_app.command_body(f"pause agent-x {tenant}", ADMIN)
    forged = slack_app.post(body, signature="v0=" + "0" * 64)
    assert forged.status_code == 401
    stale = slack_app.post(body, timestamp=int(time.time()) - 6 * 60)
    assert stale.status_code == 401
    unsigned = requests.post(slack_app.url, data=body, timeout=10)
    assert unsigned.status_code == 401
    tampered = slack_app.signer.generate_signature(timestamp=str(int(time.time())), body=body)
    assert slack_app.post(body + "x", signature=tampered).status_code == 401
    assert requests.get(slack_app.url, timeout=10).status_code == 405
    not_a_number = requests.post(
        slack_app.url,
        data=body,
        headers={"X-Slack-Request-Timestamp": "soon", "X-Slack-Signature": "v0=abc"},
        timeout=10,
    )
    assert not_a_number.status_code == 401 and not_a_number.json()["error"]["code"] == "unauthorized"
    huge = slack_app.post("text=" + "x" * 70_000)
    assert huge.status_code == 400
    assert audit(api, tenant=tenant, actor=f"slack:{ADMIN}") == []  # nothing reached a listener


def test_malformed_payloads_are_refused_cleanly(slack_app: SlackApp) -> None:
    for body in ("payload=%7Bnot-json", "payload=%5B%5D", "", "command=%2Fother&text=x&user_id=U1"):
        reply = slack_app.post(body)
        assert reply.status_code in (400, 404), (body, reply.status_code, reply.text)
        assert "Traceback" not in reply.text
    missing_user = urllib.parse.urlencode({"payload": json.dumps({"type": "block_actions", "actions": []})})
    reply = slack_app.post(missing_user)
    assert reply.status_code in (400, 404) and "Traceback" not in reply.text


def test_wrong_or_incomplete_commands_answer_with_their_usage(slack_app: SlackApp, tenant: str) -> None:
    unknown = slack_app.command("frobnicate now", VIEWER)
    assert "unknown command" in text_of(unknown) and "/fleet help" in text_of(unknown).replace("`", "")
    incomplete = slack_app.command("pause", OPERATOR)
    assert "/fleet pause <agent> [reason]" in text_of(incomplete)
    bad_duration = slack_app.command(f"silence {tenant} forever", OPERATOR)
    assert "not a duration" in text_of(bad_duration)
    helped = slack_app.command("help", VIEWER)
    assert "/fleet budget" in text_of(helped) and f"{tenant}: viewer" in text_of(helped)


# --- roles and commands ---------------------------------------------------------------------------


def test_roles_decide_who_may_pause_and_refusals_are_audited(
    slack_app: SlackApp, publisher: Any, firestore: Any, api: Api, tenant: str, agent_id: str
) -> None:
    registered(publisher, firestore, tenant, agent_id)
    status = slack_app.command(f"status {agent_id}", VIEWER)
    assert agent_id in text_of(status) and "busy" in text_of(status) and "liveness ok" in text_of(status)
    refused = slack_app.command(f"pause {agent_id} noisy", VIEWER)
    assert "operator role" in text_of(refused) and refused["response_type"] == "ephemeral"
    assert "pause" not in (agent_doc(firestore, agent_id) or {}).get("holds", {})
    stranger = slack_app.command(f"status {agent_id}", "UNOBODY01")
    assert "not found" in text_of(stranger)  # another tenant's agent is not even shown to exist

    paused = slack_app.command(f"pause {agent_id} runaway prompts", OPERATOR)
    assert paused["response_type"] == "in_channel" and "paused" in text_of(paused)
    doc = agent_doc(firestore, agent_id) or {}
    assert doc["status"] == "suspended" and doc["holds"]["pause"]["reason"] == "runaway prompts"
    assert doc["holds"]["pause"]["actor"] == f"slack:{OPERATOR}"

    entries = audit(api, tenant=tenant, outcome="refused")
    assert [(e["actor"], e["action"]) for e in entries] == [(f"slack:{VIEWER}", "slack.pause")]
    actions = {e["action"] for e in audit(api, tenant=tenant)}
    assert {"slack.status", "slack.pause", "agent.hold.pause"} <= actions

    resumed = slack_app.command(f"resume {agent_id}", OPERATOR)
    assert "resumed" in text_of(resumed)
    assert (agent_doc(firestore, agent_id) or {})["status"] == "active"


def test_slack_retries_of_a_command_never_repeat_it(
    slack_app: SlackApp, publisher: Any, firestore: Any, api: Api, tenant: str, agent_id: str
) -> None:
    registered(publisher, firestore, tenant, agent_id)
    trigger = f"tr.{uuid.uuid4().hex}"
    first = slack_app.command(f"silence {agent_id} 2h deploying", OPERATOR, trigger_id=trigger)
    again = slack_app.command(f"silence {agent_id} 2h deploying", OPERATOR, trigger_id=trigger, retry_num=1)
    third = slack_app.command(f"silence {agent_id} 2h deploying", OPERATOR, trigger_id=trigger, retry_num=2)
    assert first == again == third and "silenced" in text_of(first)
    silences = [s for s in api.get("/v1/silences").json()["items"] if s["agent_id"] == agent_id]
    assert len(silences) == 1 and silences[0]["created_by"] == f"slack:{OPERATOR}"
    assert len(audit(api, tenant=tenant, action="silence.create")) == 1
    assert len(audit(api, tenant=tenant, action="slack.silence")) == 1


def test_admins_manage_roles_in_slack_and_the_api_sees_it(slack_app: SlackApp, api: Api, tenant: str) -> None:
    refused = slack_app.command(f"roles {tenant} set <@UNEW0001|newbie> operator", OPERATOR)
    assert "admin role" in text_of(refused)
    granted = slack_app.command(f"roles {tenant} set <@UNEW0001|newbie> operator", ADMIN)
    assert "is now operator" in text_of(granted)
    assert api.get(f"/v1/tenants/{tenant}/roles").json()["roles"]["UNEW0001"] == "operator"
    listed = slack_app.command(f"roles {tenant}", VIEWER)
    assert "UNEW0001" in text_of(listed)
    last_admin = slack_app.command(f"roles {tenant} remove <@{ADMIN}>", ADMIN)
    assert "no admin left" in text_of(last_admin)
    assert api.get(f"/v1/tenants/{tenant}/roles").json()["roles"][ADMIN] == "admin"


# --- approvals ----------------------------------------------------------------------------------------


def test_an_agents_request_is_decided_once_by_four_eyes_and_reaches_the_agent(
    slack_app: SlackApp, publisher: Any, firestore: Any, api: Api, slack: Slack, tenant: str, agent_id: str
) -> None:
    registered(publisher, firestore, tenant, agent_id)
    agent = FleetAgent(registration(agent_id, tenant=tenant, owner=OWNER), project=PROJECT, key=agent_key(agent_id))
    try:
        handle = agent.request_approval(
            "re-embed the 40k-document corpus", reason="index drift", estimated_cost_usd=Decimal("42.50")
        )
        approvals = wait_for(lambda: api.get("/v1/approvals", tenant=tenant, state="pending").json()["items"])
        [pending] = approvals
        assert pending["requester"] == {"kind": "agent", "id": agent_id, "owner": OWNER}
        assert pending["estimated_cost_usd"] == "42.50" and pending["agent_id"] == agent_id
        message = approval_message(slack, pending["id"])
        assert "$42.50" in json.dumps(message["blocks"]) and "Approve" in json.dumps(message["blocks"])

        # The owner of the requesting agent may not approve it; a viewer may not decide at all.
        slack_app.click("approval_approve", pending["id"], OWNER, message)
        slack_app.click("approval_approve", pending["id"], VIEWER, message)
        notes = wait_for(
            lambda: (
                len(slack.about("Nothing changed", "chat.postEphemeral")) >= 2
                and slack.about("Nothing changed", "chat.postEphemeral")
            )
        )
        said = json.dumps([n["params"] for n in notes])
        assert "four eyes" in said and "only approvers" in said
        assert api.get(f"/v1/approvals/{pending['id']}").json()["state"] == "pending"

        slack_app.click("approval_approve", pending["id"], APPROVER, message)
        assert handle.wait(timeout=30) is True
        assert handle.approval_id == pending["id"]
        decided = api.get(f"/v1/approvals/{pending['id']}").json()
        assert decided["state"] == "approved" and decided["decided_by"] == APPROVER
        edited = wait_for(lambda: slack.about(pending["id"], "chat.update"))
        assert f"<@{APPROVER}>" in json.dumps(edited[-1]["params"])
        assert [b for b in edited[-1]["params"]["blocks"] if b["type"] == "actions"] == []  # no buttons left

        # A second click, by anyone, changes nothing and says why.
        slack_app.click("approval_deny", pending["id"], APPROVER2, message)
        wait_for(lambda: slack.about("already approved", "chat.postEphemeral"))
        assert api.get(f"/v1/approvals/{pending['id']}").json()["state"] == "approved"
        outcomes = [(e["action"], e["outcome"]) for e in audit(api, tenant=tenant) if "approval" in e["action"]]
        assert ("approval.approve", "approved") in outcomes and outcomes.count(("approval.approve", "refused")) == 2
        assert ("approval.deny", "refused") in outcomes and ("approval.request", "requested") in outcomes
    finally:
        agent.close()


def test_an_operator_asks_for_a_budget_raise_and_an_approver_applies_it(
    slack_app: SlackApp, publisher: Any, firestore: Any, api: Api, slack: Slack, tenant: str, agent_id: str
) -> None:
    registered(publisher, firestore, tenant, agent_id)
    asked = slack_app.command(f"budget {agent_id} set monthly 250", OPERATOR)
    assert "asked the approvers" in text_of(asked)
    [pending] = wait_for(lambda: api.get("/v1/approvals", tenant=tenant, kind="budget_raise").json()["items"])
    message = approval_message(slack, pending["id"])
    slack_app.click("approval_approve", pending["id"], OPERATOR, message)  # the requester: not an approver
    # Slack retries a click it thinks failed with the same body: decided once, carried out once.
    clicked = slack_app.click_body("approval_approve", pending["id"], APPROVER, message)
    for retry in (None, 1, 2):
        assert slack_app.post(clicked, retry_num=retry).status_code == 200
    budget = wait_for(lambda: api.get(f"/v1/agents/{agent_id}/budget").json()["budget"])
    assert Decimal(budget["monthly_usd"]) == Decimal("250")
    done = wait_for(lambda: api.get(f"/v1/approvals/{pending['id']}").json()["applied"])
    assert "250" in done
    told = wait_for(
        lambda: [
            c
            for c in slack.about(pending["id"][:0] + "Approved", "chat.postMessage")
            if c["params"]["channel"] == OPERATOR
        ]
    )
    assert "budget" in json.dumps(told[0]["params"])

    entries = [e for e in audit(api, tenant=tenant) if e["details"].get("approval_id") == pending["id"]]
    outcomes = sorted((e["action"], e["outcome"]) for e in entries)
    assert outcomes == [
        ("approval.apply", "applied"),
        ("approval.approve", "approved"),
        ("approval.approve", "refused"),
        ("approval.request", "requested"),
    ]
    assert len(audit(api, tenant=tenant, action="agent.budget.raise")) == 1

    direct = slack_app.command(f"budget {agent_id} set daily 20", ADMIN)
    assert "set the daily budget" in text_of(direct)
    assert Decimal(api.get(f"/v1/agents/{agent_id}/budget").json()["budget"]["daily_usd"]) == Decimal("20")


def test_a_quarantined_agent_is_released_through_an_approval(
    slack_app: SlackApp, publisher: Any, firestore: Any, api: Api, slack: Slack, tenant: str, agent_id: str
) -> None:
    registered(publisher, firestore, tenant, agent_id)
    held = slack_app.command(f"quarantine {agent_id} leaked a credential", OPERATOR)
    assert "quarantined" in text_of(held)
    assert (agent_doc(firestore, agent_id) or {})["status"] == "quarantined"
    asked = slack_app.command(f"release {agent_id} rotated the key", OPERATOR)
    assert "asked the approvers" in text_of(asked)
    [pending] = wait_for(lambda: api.get("/v1/approvals", tenant=tenant, kind="release").json()["items"])
    slack_app.click("approval_approve", pending["id"], APPROVER, approval_message(slack, pending["id"]))
    wait_for(lambda: (agent_doc(firestore, agent_id) or {}).get("status") == "active")
    listed = slack_app.command("approvals", APPROVER)
    assert pending["id"] not in text_of(listed)


def test_an_expired_request_is_denied_by_the_minute_job_and_a_late_click_changes_nothing(
    slack_app: SlackApp, publisher: Any, firestore: Any, api: Api, slack: Slack, tenant: str, agent_id: str
) -> None:
    registered(publisher, firestore, tenant, agent_id)
    created = api.send(
        "POST",
        "/v1/approvals",
        {
            "kind": "operation",
            "agent_id": agent_id,
            "summary": "full re-index",
            "requested_by": OPERATOR,
            "estimated_cost_usd": "120",
            "expires_in_s": 60,
        },
    )
    assert created.status_code == 200, created.text
    approval_id = created.json()["id"]
    same = api.send(
        "POST",
        "/v1/approvals",
        {"kind": "operation", "agent_id": agent_id, "summary": "x", "request_id": "req-fixed-0001"},
    )
    again = api.send(
        "POST",
        "/v1/approvals",
        {"kind": "operation", "agent_id": agent_id, "summary": "x", "request_id": "req-fixed-0001"},
    )
    assert same.json()["id"] == again.json()["id"]
    message = approval_message(slack, approval_id)
    # Let the request run out (the emulator's clock is real: move its expiry into the past).
    past = {"expires_at": created.json()["created_at"], "pending_until": created.json()["created_at"]}
    firestore.collection("approvals").document(approval_id).update(
        {k: datetime.fromisoformat(v) for k, v in past.items()}
    )
    wait_for(
        lambda: (
            (tick(publisher), time.sleep(0.5), api.get(f"/v1/approvals/{approval_id}").json()["state"])[-1] == "expired"
        )
    )
    edited = wait_for(lambda: slack.about(approval_id, "chat.update"))
    assert "Expired" in json.dumps(edited[-1]["params"])
    slack_app.click("approval_approve", approval_id, APPROVER, message)
    wait_for(lambda: slack.about("already expired", "chat.postEphemeral"))
    assert api.get(f"/v1/approvals/{approval_id}").json()["state"] == "expired"


# --- alert buttons ------------------------------------------------------------------------------------


def test_alert_messages_can_be_acknowledged_and_snoozed(
    slack_app: SlackApp, publisher: Any, firestore: Any, api: Api, slack: Slack, tenant: str, agent_id: str
) -> None:
    registered(publisher, firestore, tenant, agent_id)
    for seq in range(2, 5):
        publish(publisher, heartbeat(agent_id, seq, error_rate=0.5, cpu_pct=10.0))
    wait_for(lambda: "error_rate" in (agent_doc(firestore, agent_id) or {}).get("episodes", {}))
    posted = wait_for(lambda: (tick(publisher), time.sleep(0.5), slack.about(agent_id, "chat.postMessage"))[-1])
    call = posted[0]
    assert "alert_ack" in json.dumps(call["params"]["blocks"])
    message = {
        "channel": call["response"]["channel"],
        "ts": call["response"]["ts"],
        "text": call["params"]["text"],
        "blocks": call["params"]["blocks"],
    }
    episode_id = next(e["value"] for b in message["blocks"] if b["type"] == "actions" for e in b["elements"])

    slack_app.click("alert_ack", episode_id, VIEWER, message)
    wait_for(lambda: slack.about("acknowledge", "chat.postEphemeral"))
    slack_app.click("alert_ack", episode_id, OPERATOR, message)
    acked = wait_for(
        lambda: [c for c in slack.about("Acknowledged by", "chat.update") if c["params"]["ts"] == message["ts"]]
    )
    assert f"<@{OPERATOR}>" in json.dumps(acked[-1]["params"])
    episode = firestore.collection("episodes").document(episode_id).get().to_dict()
    assert episode["acknowledged_by"] == OPERATOR and episode.get("next_repeat_at") is None
    alerts = slack_app.command("alerts", VIEWER)
    assert f"acknowledged by <@{OPERATOR}>" in text_of(alerts)

    slack_app.click("alert_snooze_4h", episode_id, OPERATOR, message)
    silences = wait_for(lambda: [s for s in api.get("/v1/silences").json()["items"] if s["agent_id"] == agent_id])
    assert silences[0]["rule"] == "error_rate" and silences[0]["created_by"] == f"slack:{OPERATOR}"
    wait_for(lambda: [c for c in slack.about("Snoozed by", "chat.update") if c["params"]["ts"] == message["ts"]])


# --- edges --------------------------------------------------------------------------------------------


def test_an_owner_known_by_email_cannot_approve_and_a_requester_may_withdraw(
    slack_app: SlackApp, publisher: Any, firestore: Any, api: Api, slack: Slack, tenant: str, agent_id: str
) -> None:
    from emulators.fake_slack import user_email

    publish(publisher, registration(agent_id, tenant=tenant, owner=user_email(OWNER).upper(), heartbeat_interval_s=30))
    wait_for(lambda: agent_doc(firestore, agent_id))
    request = ApprovalRequest(
        agent_id=agent_id, request_id="req-email-0001", operation="big batch job", requested_at=datetime.now(UTC)
    )
    publish(publisher, request)
    [asked] = wait_for(lambda: api.get("/v1/approvals", tenant=tenant).json()["items"])
    assert asked["requester"]["owner"] == user_email(OWNER).upper()
    slack_app.click("approval_approve", asked["id"], OWNER, approval_message(slack, asked["id"]))
    wait_for(lambda: [c for c in slack.about("four eyes", "chat.postEphemeral") if c["params"]["user"] == OWNER])
    assert api.get(f"/v1/approvals/{asked['id']}").json()["state"] == "pending"

    # An operator who asked may withdraw (deny) their own request, though they may not decide others'.
    mine = api.send(
        "POST",
        "/v1/approvals",
        {"kind": "operation", "agent_id": agent_id, "summary": "reindex", "requested_by": OPERATOR},
    ).json()
    assert mine["payload"]["requested_via"] == "api:local-admin"
    slack_app.click("approval_deny", mine["id"], OPERATOR, approval_message(slack, mine["id"]))
    withdrawn = wait_for(lambda: api.get(f"/v1/approvals/{mine['id']}").json()["applied"] and api.get(
        f"/v1/approvals/{mine['id']}").json())  # fmt: skip
    assert withdrawn["state"] == "denied" and withdrawn["decided_by"] == OPERATOR
    # The requester hears about it in a direct message.
    wait_for(lambda: [c for c in slack.about("Denied", "chat.postMessage") if c["params"]["channel"] == OPERATOR])


def test_api_requests_are_checked_and_bolt_never_calls_auth_test(
    slack_app: SlackApp, publisher: Any, firestore: Any, api: Api, slack: Slack, tenant: str, agent_id: str
) -> None:
    registered(publisher, firestore, tenant, agent_id)
    nothing_held = api.send("POST", "/v1/approvals", {"kind": "release", "agent_id": agent_id, "summary": "x"})
    assert nothing_held.status_code == 409 and "neither frozen nor quarantined" in nothing_held.text
    bad = api.send("POST", "/v1/approvals", {"kind": "budget_raise", "agent_id": agent_id, "summary": "x"})
    assert bad.status_code == 400 and "budget_period" in bad.text
    assert slack.calls("auth.test") == []  # the app authorizes with its token alone, no Web API call


def test_audit_pages_never_skip_entries_that_share_a_time(slack_app: SlackApp, api: Api, tenant: str) -> None:
    for _ in range(3):
        slack_app.command(f"agents {tenant}", VIEWER)
    slack_app.command(f"roles {tenant} set <@UNEW0002> viewer", ADMIN)  # the role change: entries at one instant
    everything = audit(api, tenant=tenant, limit="200")
    seen: list[str] = []
    token = None
    while True:
        params = {"tenant": tenant, "limit": "2", **({"page_token": token} if token else {})}
        page = api.get("/v1/audit", **params).json()
        seen += [e["id"] for e in page["items"]]
        token = page.get("next_page_token")
        if not token:
            break
    assert seen == [e["id"] for e in everything] and len(seen) == len(set(seen)) >= 5
    garbled = api.get("/v1/audit", tenant=tenant, page_token="not-a-token!")
    assert garbled.status_code == 400


def test_rules_are_silenced_per_tenant_and_the_command_keeps_its_registered_name(
    slack_app: SlackApp, api: Api, tenant: str
) -> None:
    silenced = slack_app.command(f"silence {tenant}:error_rate 30m noisy model", OPERATOR)
    assert "rule error_rate" in text_of(silenced)
    [made] = [s for s in api.get("/v1/silences").json()["items"] if s["tenant"] == tenant]
    assert made["rule"] == "error_rate" and made["agent_id"] is None
    needs_tenant = slack_app.command("roles set <@UNEW0003> viewer", ADMIN)
    assert "name the tenant first" in text_of(needs_tenant)
    body = slack_app.command_body("pause", OPERATOR).replace("%2Ffleet", "%2Ffleet-staging")
    assert slack_app.post(body).status_code == 404  # this stack registered /fleet only


def test_a_decision_whose_work_item_was_lost_is_carried_out_by_the_minute_job(
    publisher: Any, firestore: Any, api: Api, slack: Slack, tenant: str, agent_id: str
) -> None:
    registered(publisher, firestore, tenant, agent_id)
    asked = api.send(
        "POST", "/v1/approvals", {"kind": "budget_raise", "agent_id": agent_id, "summary": "more",
                                  "budget_period": "monthly", "budget_usd": "300", "requested_by": OPERATOR},
    ).json()  # fmt: skip
    approval_message(slack, asked["id"])
    # Decided, but the work item never reached fleet-actions (an instance died after the write).
    two_minutes_ago = datetime.now(UTC) - timedelta(minutes=2)
    firestore.collection("approvals").document(asked["id"]).update(
        {"state": "approved", "decided_by": APPROVER, "decided_at": two_minutes_ago, "pending_until": None,
         "followup_due_at": two_minutes_ago + timedelta(minutes=1)}
    )  # fmt: skip
    done = wait_for(
        lambda: (tick(publisher), time.sleep(0.5), api.get(f"/v1/approvals/{asked['id']}").json())[-1].get("done_at")
    )
    assert done
    decided = api.get(f"/v1/approvals/{asked['id']}").json()
    assert "300" in decided["applied"] and decided["state"] == "approved"
    assert Decimal(api.get(f"/v1/agents/{agent_id}/budget").json()["budget"]["monthly_usd"]) == Decimal("300")
    wait_for(lambda: [c for c in slack.about("Approved", "chat.postMessage") if c["params"]["channel"] == OPERATOR])
