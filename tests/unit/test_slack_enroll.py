"""``/fleet enroll`` without Slack or Firestore: the dispatcher (shared/slack/commands.py) with its stores
faked in memory. The token reaches the asker only, once: never the channel, the audit or the kept reply."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fleet_agent.identity import AgentKey, EnrollmentToken

from shared.domain import slash
from shared.domain.audit import AuditEntry
from shared.domain.enrollment import EnrollmentToken as StoredToken
from shared.platform import fleet_key
from shared.slack import commands
from shared.store import agents as agent_store
from shared.store import audit as audit_store
from shared.store import enrollment_tokens as token_store
from shared.store import roles as role_store
from shared.store import slack_requests

T0 = datetime(2026, 12, 6, 9, 0, tzinfo=UTC)
FLEET = AgentKey.generate()
ROLES = {
    "UAPPROVER": {"acme": "approver"},
    "UOPERATOR": {"acme": "operator"},
    "UTWO": {"acme": "admin", "globex": "approver"},
}


class World:
    def __init__(self) -> None:
        self.tokens: dict[str, StoredToken] = {}
        self.audit: list[AuditEntry] = []
        self.kept: dict[str, dict[str, Any]] = {}


@pytest.fixture
def world(monkeypatch: pytest.MonkeyPatch) -> World:
    w = World()

    def create(token: StoredToken, entry: AuditEntry | None = None) -> None:
        w.tokens[token.token_id] = token
        if entry is not None:
            w.audit.append(entry)

    def begin(key: str, now: datetime) -> slack_requests.Claim:
        if key in w.kept:
            return slack_requests.Claim("done", w.kept[key])
        return slack_requests.Claim("new")

    monkeypatch.setattr(fleet_key, "get", lambda: FLEET)
    monkeypatch.setattr(token_store, "create", create)
    monkeypatch.setattr(audit_store, "append", lambda e: w.audit.append(e) or True)
    monkeypatch.setattr(role_store, "of_user", lambda user: ROLES.get(user, {}))
    monkeypatch.setattr(agent_store, "get", lambda agent_id: None)
    monkeypatch.setattr(slack_requests, "begin", begin)
    monkeypatch.setattr(slack_requests, "finish", lambda key, reply: w.kept.__setitem__(key, reply))
    monkeypatch.setattr(slack_requests, "abandon", lambda key: None)
    return w


def run(text: str, user: str, trigger: str = "t-1") -> dict[str, Any]:
    payload = {"text": text, "user_id": user, "user_name": user.lower(), "trigger_id": trigger, "channel_id": "C1"}
    return commands.run(payload, T0)


def shown(reply: dict[str, Any]) -> str:
    return json.dumps(reply)


def test_an_approver_gets_the_token_ephemerally_and_only_once(world: World) -> None:
    reply = run("enroll build-* 5 7d", "UAPPROVER")
    assert reply["response_type"] == "ephemeral"
    [stored] = world.tokens.values()
    assert stored.agent_prefix == "build-" and stored.max_uses == 5 and stored.tenant == "acme"
    assert stored.expires_at == T0 + timedelta(days=7) and stored.created_by == "slack:UAPPROVER"
    token = next(
        EnrollmentToken.parse(b["text"]["text"].strip("`"))
        for b in reply["blocks"]
        if b["text"]["text"].startswith("```")
    )
    assert token.token_id == stored.token_id and token.fleet_public_key == FLEET.public_key
    # Never in the audit log, never in the reply kept for Slack's retries.
    assert token.secret not in json.dumps([e.as_doc() for e in world.audit], default=str)
    assert {e.action for e in world.audit} == {"enrollment_token.create", "slack.enroll"}
    retried = run("enroll build-* 5 7d", "UAPPROVER")
    assert token.secret not in shown(retried) and "shown once" in shown(retried)
    assert len(world.tokens) == 1


def test_one_agent_or_any_agent_with_the_defaults(world: World) -> None:
    run("enroll agent-7", "UAPPROVER", "t-a")
    run("enroll", "UAPPROVER", "t-b")
    one, anyone = world.tokens.values()
    assert one.agent_id == "agent-7" and one.max_uses == 1 and one.expires_at == T0 + timedelta(days=1)
    assert anyone.agent_id is None and anyone.agent_prefix is None


def test_an_operator_is_refused_and_the_refusal_is_audited(world: World) -> None:
    reply = run("enroll agent-7", "UOPERATOR")
    assert "🚫" in reply["text"] and "approver" in reply["text"]
    assert world.tokens == {}
    [entry] = world.audit
    assert entry.outcome == "refused" and entry.action == "slack.enroll" and entry.tenant == "acme"


def test_several_tenants_need_one_named(world: World) -> None:
    assert world.tokens == {} and "name one" in run("enroll", "UTWO", "t-a")["text"]
    run("enroll 2 tenant=globex", "UTWO", "t-b")
    [stored] = world.tokens.values()
    assert stored.tenant == "globex" and stored.max_uses == 2
    assert "no role" in run("enroll tenant=initech", "UTWO", "t-c")["text"]


@pytest.mark.parametrize("text", ["enroll <b>bad</b>", "enroll *", "enroll agent-7 0", "enroll agent-7 2 40d"])
def test_wrong_words_are_a_usage_answer_escaped(world: World, text: str) -> None:
    reply = run(text, "UAPPROVER")
    assert reply["text"].startswith("🤔") and "<b>" not in shown(reply)
    assert world.tokens == {}
    assert world.audit and world.audit[-1].outcome == "usage"


def test_help_lists_enroll() -> None:
    assert any(line.startswith("`/fleet enroll") for line in slash.help_lines())
