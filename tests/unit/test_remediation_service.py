"""Remediation on the real path (shared/services/remediation.py) with the stores faked: what approving a
remediation request sends (an operator's stop as asked; a policy's only while its condition holds), and
asking an approver after the write without posting or raising."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from fleet_agent.contracts import CommandType

from shared.domain import remediation as rules
from shared.domain.approvals import Approval, Kind, Requester
from shared.domain.remediation_policy import Mode, RemediationPolicy
from shared.services import agent_actions, approvals, remediation
from shared.store import agents as agent_store
from shared.store import config as config_store
from tests.unit.test_remediation import T0, agent, with_episode

EPISODE = "a.agent-1.saturation.1"


def approval(payload: dict[str, Any]) -> Approval:
    asked = approvals.new(
        approval_id="ap-1",
        tenant="acme",
        kind=Kind.REMEDIATION,
        requester=Requester(kind="api", id="lead"),
        summary="stop",
        now=T0,
        agent_id="agent-1",
        reason="r",
        expires_in=timedelta(hours=1),
        payload=payload,
    )
    return asked.model_copy(update={"decided_by": "U2"})


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    calls: list[dict[str, Any]] = []

    def act(agent_id: str, action: CommandType, actor: Any, reason: str, at: Any, **kw: Any) -> Any:
        calls.append({"agent_id": agent_id, "action": action, **kw})
        return agent(), None

    monkeypatch.setattr(agent_actions, "act", act)
    monkeypatch.setattr(config_store, "remediation", lambda tenant: RemediationPolicy())
    return calls


def test_an_operators_approved_stop_is_sent_with_the_operator_origin(
    sent: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(agent_store, "get", lambda agent_id: agent())  # no episode open: sent all the same
    text = remediation.approved(approval({"action": "stop", "deadline_s": 30, "origin": "operator"}), T0)
    assert text.startswith("`stop` sent")
    assert [(c["action"], c["origin"], c["deadline_s"]) for c in sent] == [(CommandType.STOP, "operator", 30)]


def test_a_policys_approved_stop_is_not_sent_once_its_condition_cleared(
    sent: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    payload = {"rule": "sat-stop", "action": "stop", "episode_id": EPISODE, "deadline_s": None}
    record = agent()
    monkeypatch.setattr(agent_store, "get", lambda agent_id: record)
    assert remediation.approved(approval(payload), T0).startswith("Not sent: condition cleared")
    assert not sent
    record = with_episode(agent(), "saturation", memory_high_since=T0.isoformat())
    monkeypatch.setattr(config_store, "remediation", lambda tenant: RemediationPolicy(mode=Mode.DRY_RUN))
    assert "dry_run" in remediation.approved(approval(payload), T0) and not sent
    monkeypatch.setattr(config_store, "remediation", lambda tenant: RemediationPolicy())
    assert remediation.approved(approval(payload), T0).startswith("`stop` sent")
    assert [(c["action"], c["origin"]) for c in sent] == [(CommandType.STOP, "policy:sat-stop")]


def test_asking_an_approver_stores_the_request_unposted_and_never_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    stored: list[tuple[Approval, bool]] = []

    def request(approval: Approval, now: Any, *, post_now: bool = True) -> tuple[Approval, bool]:
        stored.append((approval, post_now))
        if approval.agent_id == "broken":
            raise RuntimeError("firestore down")
        return approval, True

    monkeypatch.setattr(approvals, "request", request)
    monkeypatch.setattr(config_store, "remediation", lambda tenant: RemediationPolicy())
    asks = [rules.Ask(name, "acme", "sat-stop", "stop", EPISODE, "r") for name in ("broken", "agent-1")]
    remediation.ask(asks, T0)  # the first fails: logged, the second is still asked
    assert [(a.agent_id, post_now, a.post_due_at) for a, post_now in stored] == [
        ("broken", False, T0),
        ("agent-1", False, T0),
    ]
    assert stored[1][0].id == remediation.approval_rules.approval_id("remediation", "agent-1", EPISODE)
