"""fleet-actions: bad work items are recorded and acknowledged, never retried forever (pure, faked I/O)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from shared.domain.approvals import Approval, Kind, Requester, State
from shared.pipeline import fleet_actions, handlers
from shared.pipeline.decoding import PushedMessage
from shared.services import approvals
from shared.training import submit


def message(raw: bytes) -> PushedMessage:
    return PushedMessage(
        message_id="m-1", published_at=datetime(2026, 11, 22, tzinfo=UTC), raw=raw, attributes={}, source="test"
    )


@pytest.mark.parametrize(
    ("raw", "outcome"),
    [(b"not json", "malformed"), (b"[1]", "malformed"), (b'{"kind": "x.y"}', "unknown_kind"),
     (b'{"kind": "approval.decided"}', "malformed")],
)  # fmt: skip
def test_a_bad_work_item_is_recorded_and_acknowledged(
    raw: bytes, outcome: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorded: list[Any] = []
    monkeypatch.setattr(handlers, "record_rejection", lambda rejected, msg, kind: recorded.append((rejected, kind)))
    assert fleet_actions.handle(message(raw)) == outcome
    [(rejected, kind)] = recorded
    assert kind == "action" and rejected.reason == fleet_actions.REJECTED[outcome]


def test_a_decision_is_carried_out_and_a_failure_is_raised_for_redelivery(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []

    def carry_out(approval_id: str, now: datetime, effect: approvals.Effect) -> object:
        assert effect is fleet_actions.effect  # the worker's own table decides what a decision does
        seen.append(approval_id)
        return object()

    monkeypatch.setattr(approvals, "carry_out", carry_out)
    assert fleet_actions.handle(message(b'{"kind": "approval.decided", "approval_id": "apr-1"}')) == "done"
    assert seen == ["apr-1"]

    def down(approval_id: str, now: datetime, effect: approvals.Effect) -> None:
        raise ConnectionError("firestore unavailable")

    monkeypatch.setattr(approvals, "carry_out", down)
    with pytest.raises(ConnectionError):
        fleet_actions.handle(message(b'{"kind": "approval.decided", "approval_id": "apr-1"}'))


def decided(kind: Kind, state: State, **payload: str) -> Approval:
    at = datetime(2026, 11, 22, tzinfo=UTC)
    return Approval.model_validate(
        {
            "id": "apr-1", "tenant": "acme", "kind": kind, "agent_id": "agent-7", "state": state,
            "requester": Requester(kind="agent", id="agent-7", owner="UOWNER1"), "summary": "s",
            "created_at": at, "expires_at": at, "decided_by": "UAPPROVER", "payload": payload,
        }
    )  # fmt: skip


def test_the_worker_chooses_what_a_decision_does(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[tuple[str, bool, str]] = []
    monkeypatch.setattr(submit, "decided", lambda job_id, ok, by, now: asked.append((job_id, ok, by)) or "queued")
    now = datetime(2026, 11, 22, 1, tzinfo=UTC)
    assert set(fleet_actions.EFFECTS) == set(Kind)  # every kind has its effect when approved
    assert fleet_actions.effect(decided(Kind.OPERATION, State.APPROVED), now) == "The agent was told it may go ahead."
    assert fleet_actions.effect(decided(Kind.OPERATION, State.DENIED), now) == "Nothing was done."
    assert fleet_actions.effect(decided(Kind.TRAINING, State.APPROVED, job_id="j-1"), now) == "queued"
    assert fleet_actions.effect(decided(Kind.TRAINING, State.DENIED, job_id="j-1"), now) == "queued"
    assert fleet_actions.effect(decided(Kind.TRAINING, State.EXPIRED, job_id="j-1"), now) == "queued"
    assert asked == [
        ("j-1", True, "slack:UAPPROVER"), ("j-1", False, "denied by slack:UAPPROVER"), ("j-1", False, "expired")
    ]  # fmt: skip
