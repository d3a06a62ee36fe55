"""shared/store/episodes.acknowledge: the episode's state is read in the acknowledging transaction, so an
episode resolved between the API's read and the acknowledgement is not acknowledged (NotOpen, nothing
written). Firestore's transaction is replaced by a fake that runs the function once with the fake's reads.
Also list_episodes: which filters it sends to Firestore and how far it over-reads."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from google.cloud import firestore

from shared.store import db
from shared.store import episodes as episode_store

T0 = datetime(2026, 12, 6, 10, 0, tzinfo=UTC)


class Snap:
    def __init__(self, data: dict[str, Any] | None) -> None:
        self.exists = data is not None
        self._data = data

    def to_dict(self) -> dict[str, Any] | None:
        return dict(self._data) if self._data is not None else None


class Ref:
    """One episode document; ``get`` inside the transaction sees what it holds then."""

    def __init__(self, data: dict[str, Any] | None) -> None:
        self.data = data
        self.reads_in_transaction = 0

    def get(self, transaction: Any = None) -> Snap:
        assert transaction is not None, "read inside the transaction"
        self.reads_in_transaction += 1
        return Snap(self.data)


class Transaction:
    def __init__(self) -> None:
        self.updates: list[dict[str, Any]] = []

    def update(self, ref: Ref, fields: dict[str, Any]) -> None:
        self.updates.append(fields)


@pytest.fixture
def store(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    world: dict[str, Any] = {"ref": Ref(None), "transaction": Transaction()}
    monkeypatch.setattr(firestore, "transactional", lambda fn: fn)
    monkeypatch.setattr(db, "client", lambda: type("C", (), {"transaction": lambda self: world["transaction"]})())
    monkeypatch.setattr(episode_store, "episode_ref", lambda episode_id: world["ref"])
    return world


def test_an_open_episode_is_acknowledged_once(store: dict[str, Any]) -> None:
    store["ref"] = Ref({"id": "e1", "state": "open"})
    assert episode_store.acknowledge("e1", "api:ops", T0, require_open=True) is None
    assert store["transaction"].updates == [
        {"acknowledged_by": "api:ops", "acknowledged_at": T0, "next_repeat_at": None}
    ]
    store["ref"] = Ref({"id": "e1", "state": "open", "acknowledged_by": "U0ANN"})
    assert episode_store.acknowledge("e1", "api:ops", T0, require_open=True) == "U0ANN"
    assert len(store["transaction"].updates) == 1


@pytest.mark.parametrize(("data", "state"), [({"id": "e1", "state": "resolved"}, "resolved"), (None, None)])
def test_an_episode_no_longer_open_is_not_acknowledged(
    store: dict[str, Any], data: dict[str, Any] | None, state: str | None
) -> None:
    store["ref"] = Ref(data)
    with pytest.raises(episode_store.NotOpen) as raised:
        episode_store.acknowledge("e1", "api:ops", T0, require_open=True)
    assert raised.value.state == state and store["ref"].reads_in_transaction == 1
    assert store["transaction"].updates == []
    assert str(raised.value) == f"alert episode e1 is {state or 'gone'}, not open"


def test_without_require_open_a_resolved_episode_is_acknowledged_as_before(store: dict[str, Any]) -> None:
    """The default (no check): callers that must refuse a resolved episode ask for it, as the API and Slack do."""
    store["ref"] = Ref({"id": "e1", "state": "resolved"})
    assert episode_store.acknowledge("e1", "U0ANN", T0) is None and len(store["transaction"].updates) == 1


class Query:
    """Records the filters and the limit a listing sends to Firestore; returns ``docs``."""

    def __init__(self, docs: list[dict[str, Any]], sent: dict[str, Any]) -> None:
        self.docs, self.sent = docs, sent

    def where(self, *, filter: Any) -> Query:
        self.sent.setdefault("where", []).append((filter.field_path, filter.value))
        return self

    def order_by(self, field: str, direction: str) -> Query:
        return self

    def limit(self, n: int) -> Query:
        self.sent["limit"] = n
        return self

    def stream(self, **_: Any) -> list[Snap]:
        return [Snap(d) for d in self.docs]


def _listing(monkeypatch: pytest.MonkeyPatch, docs: list[dict[str, Any]]) -> dict[str, Any]:
    sent: dict[str, Any] = {}

    class Client:
        def collection(self, name: str) -> Query:
            return Query(docs, sent)

    monkeypatch.setattr(db, "client", Client)
    return sent


def test_an_agents_open_episodes_are_asked_of_firestore_with_both_filters(monkeypatch: pytest.MonkeyPatch) -> None:
    """Newer resolved episodes never push an old open one out: agent and state both go to the index."""
    sent = _listing(monkeypatch, [{"id": "e1", "agent_id": "a1", "state": "open", "tenant": "acme"}])
    rows = episode_store.list_episodes(agent_id="a1", state="open", tenant="acme", limit=20)
    assert [r["id"] for r in rows] == ["e1"]
    assert sent["where"] == [("agent_id", "a1"), ("state", "open")]
    assert sent["limit"] == 20  # the tenant filter on an agent's episodes needs no over-read


def test_other_filters_are_applied_over_a_bounded_over_read(monkeypatch: pytest.MonkeyPatch) -> None:
    sent = _listing(monkeypatch, [{"id": "e1", "tenant": "acme", "state": "open", "rule": "r"}])
    assert [r["id"] for r in episode_store.list_episodes(tenant="acme", rule="r", limit=5)] == ["e1"]
    assert sent["where"] == [("tenant", "acme")] and sent["limit"] == 50
