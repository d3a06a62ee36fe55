"""Approvals decided once, by four eyes (pure domain)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from shared.domain import approval_messages as messages
from shared.domain import approvals
from shared.domain.api_keys import Role
from shared.domain.approvals import Approval, Kind, Requester, State

NOW = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)


def request(requester: Requester | None = None, **kw: object) -> Approval:
    data: dict[str, object] = {
        "id": approvals.approval_id("agent", "agent-7", "req-1"),
        "tenant": "acme",
        "kind": Kind.OPERATION,
        "agent_id": "agent-7",
        "requester": requester or Requester(kind="agent", id="agent-7", owner="UOWNER1"),
        "summary": "re-embed the corpus",
        "reason": "drift",
        "estimated_cost_usd": Decimal("42.5"),
        "created_at": NOW,
        "expires_at": NOW + timedelta(hours=1),
    }
    data.update(kw)
    return Approval.model_validate(data)


def test_ids_are_deterministic_per_request() -> None:
    assert approvals.approval_id("agent", "a", "r1") == approvals.approval_id("agent", "a", "r1")
    assert approvals.approval_id("agent", "a", "r1") != approvals.approval_id("agent", "a", "r2")
    assert approvals.approval_id("a", "b") != approvals.approval_id("ab")


def test_an_approver_other_than_the_requester_decides() -> None:
    decided = approvals.decide(request(), actor="UAPPR1", role=Role.APPROVER, approve=True, now=NOW, note="ok")
    assert decided.approval is not None and decided.refusal is None
    assert (decided.approval.state, decided.approval.decided_by, decided.approval.decided_at) == (
        State.APPROVED,
        "UAPPR1",
        NOW,
    )
    admin = approvals.decide(request(), actor="UADMIN", role=Role.ADMIN, approve=False, now=NOW)
    assert admin.approval is not None and admin.approval.state is State.DENIED


def test_four_eyes_the_requester_or_the_agents_owner_cannot_approve() -> None:
    owner = approvals.decide(request(), actor="UOWNER1", role=Role.APPROVER, approve=True, now=NOW)
    assert owner.code == "four_eyes" and owner.approval is None
    by_name = approvals.decide(
        request(Requester(kind="agent", id="agent-7", owner="@ann")),
        actor="UANN",
        actor_names=("ann",),
        role=Role.ADMIN,
        approve=True,
        now=NOW,
    )
    assert by_name.code == "four_eyes"
    slack_requester = request(Requester(kind="slack", id="UOPS1"))
    assert approvals.decide(slack_requester, actor="UOPS1", role=Role.ADMIN, approve=True, now=NOW).code == "four_eyes"
    withdrawn = approvals.decide(slack_requester, actor="UOPS1", role=Role.OPERATOR, approve=False, now=NOW)
    assert withdrawn.approval is not None and withdrawn.approval.state is State.DENIED  # withdrawing is fine
    by_email = request(Requester(kind="agent", id="agent-7", owner="Ann@Example.com"))
    assert approvals.owner_is_email(by_email.requester) and not approvals.owner_is_email(request().requester)
    ann = approvals.decide(
        by_email, actor="UANN", actor_names=("ann@example.com",), role=Role.APPROVER, approve=True, now=NOW
    )
    assert ann.code == "four_eyes"
    other = approvals.decide(
        by_email, actor="UBOB", actor_names=("bob@example.com",), role=Role.APPROVER, approve=True, now=NOW
    )
    assert other.approval is not None


def test_only_approvers_decide_and_only_once_and_only_in_time() -> None:
    viewer = approvals.decide(request(), actor="UV", role=Role.OPERATOR, approve=True, now=NOW)
    assert viewer.code == "not_approver" and "operator" in (viewer.refusal or "")
    assert approvals.decide(request(), actor="UX", role=None, approve=True, now=NOW).code == "not_approver"
    done = approvals.decide(request(), actor="UA", role=Role.APPROVER, approve=True, now=NOW).approval
    assert done is not None
    again = approvals.decide(done, actor="UB", role=Role.APPROVER, approve=False, now=NOW)
    assert again.code == "already_decided" and "approved by <@UA>" in (again.refusal or "")
    late = approvals.decide(request(), actor="UA", role=Role.APPROVER, approve=True, now=NOW + timedelta(hours=1))
    assert late.code == "expired"


def test_expiry_denies_a_pending_request_once() -> None:
    assert approvals.expire(request(), NOW) is None
    lapsed = approvals.expire(request(), NOW + timedelta(hours=2))
    assert lapsed is not None and lapsed.state is State.EXPIRED and lapsed.applied == approvals.EXPIRED
    assert approvals.expire(lapsed, NOW + timedelta(hours=3)) is None


def test_stored_form_drives_the_minute_jobs_queries() -> None:
    unposted = request(post_due_at=NOW + approvals.GRACE)
    pending = approvals.to_doc(unposted)
    assert pending["pending_until"] == NOW + timedelta(hours=1) and pending["post_due_at"] == NOW + approvals.GRACE
    assert pending["estimated_cost_usd"] == "42.5" and pending["kind"] == "operation"
    assert pending["followup_due_at"] is None
    posted = approvals.to_doc(request(message={"channel": "C1", "ts": "1.1"}, post_due_at=NOW))
    assert posted["post_due_at"] is None
    decided = approvals.to_doc(request(state=State.DENIED, decided_at=NOW, post_due_at=NOW))
    assert decided["pending_until"] is None and decided["post_due_at"] is None
    # Until it is carried out to the end, the minute job looks at it again a minute after the decision.
    assert decided["followup_due_at"] == NOW + approvals.GRACE
    finished = approvals.to_doc(request(state=State.DENIED, decided_at=NOW, done_at=NOW))
    assert finished["followup_due_at"] is None
    assert decided["expire_at"] == NOW + approvals.RETENTION
    assert approvals.from_doc(pending) == unposted


def test_messages_carry_buttons_until_decided() -> None:
    text, blocks = messages.message(request())
    assert "Approval needed" in text and "$42.50" in str(blocks)
    [actions] = [b for b in blocks if b["type"] == "actions"]
    assert [e["action_id"] for e in actions["elements"]] == [messages.APPROVE, messages.DENY]
    assert {e["value"] for e in actions["elements"]} == {request().id}
    decided = request(state=State.APPROVED, decided_by="UA", decided_at=NOW, applied="Done.")
    text, blocks = messages.message(decided)
    assert not [b for b in blocks if b["type"] == "actions"] and "<@UA>" in str(blocks) and "Done." in str(blocks)
    assert "Approved by <@UA>" in messages.to_requester(decided)
