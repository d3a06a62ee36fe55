"""A dead letter is recorded under a stable, non-empty id even when its push body names no message id:
an empty document id would be refused by Firestore and the dead letter retried until retention ends."""

from __future__ import annotations

from typing import Any

import pytest

from shared.pipeline import handlers
from shared.pipeline.decoding import message_from_cloudevent
from shared.store import rejections


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []
    monkeypatch.setattr(rejections, "record", lambda rejected, **fields: seen.append(fields) or fields)
    return seen


def body(**message: Any) -> dict[str, Any]:
    return {"message": {"data": "e30=", "attributes": {"agent_id": "a-1"}, **message}, "subscription": "s"}


def test_a_body_without_a_message_id_gets_a_stable_id(recorded: list[dict[str, Any]]) -> None:
    for _ in range(2):
        handlers.handle_dead_letter(message_from_cloudevent(body(), event_id="", time=None, source="s"))
    first, second = (r["message_id"] for r in recorded)
    assert first.startswith("dl-") and len(first) == 35
    assert first == second
    other = message_from_cloudevent(body(data="e30K"), event_id="", time=None, source="s")
    handlers.handle_dead_letter(other)
    assert recorded[-1]["message_id"] != first


def test_either_spelling_of_the_message_id_is_kept(recorded: list[dict[str, Any]]) -> None:
    for spelling in ("messageId", "message_id"):
        message = message_from_cloudevent(body(**{spelling: "42"}), event_id="", time=None, source="s")
        handlers.handle_dead_letter(message)
    assert [r["message_id"] for r in recorded] == ["42", "42"]
