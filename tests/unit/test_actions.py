"""fleet-actions: bad work items are recorded and acknowledged, never retried forever (pure, faked I/O)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from shared.pipeline import fleet_actions, handlers
from shared.pipeline.decoding import PushedMessage
from shared.services import approvals


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
    monkeypatch.setattr(approvals, "carry_out", lambda approval_id, now: seen.append(approval_id) or object())
    assert fleet_actions.handle(message(b'{"kind": "approval.decided", "approval_id": "apr-1"}')) == "done"
    assert seen == ["apr-1"]

    def down(approval_id: str, now: datetime) -> None:
        raise ConnectionError("firestore unavailable")

    monkeypatch.setattr(approvals, "carry_out", down)
    with pytest.raises(ConnectionError):
        fleet_actions.handle(message(b'{"kind": "approval.decided", "approval_id": "apr-1"}'))
