"""Agent search through ``GET /v1/agents``: the filters given to Firestore, the tenant scope of the key,
the security score filtered on each page, and the cursor."""

from __future__ import annotations

from typing import Any

import pytest

from shared.store import agent_search
from shared.store.agent_search import Filters
from tests.unit.test_http_api import record
from tests.unit.test_http_api_costs import NOW, World, send, world

__all__ = ["world"]


@pytest.fixture
def pages(world: World, monkeypatch: pytest.MonkeyPatch) -> list[tuple[Filters, int, str | None]]:
    """A fake store: agents a1..a5 of acme (a2 and a4 with a low security score), pages of ``page_size``."""
    asked: list[tuple[Filters, int, str | None]] = []
    agents = [
        record(f"agent-a{i}", "acme").model_copy(
            update={"health": {"score": 30.0 if i % 2 == 0 else 90.0, "score_at": NOW}}
        )
        for i in range(1, 6)
    ]

    def page(filters: Filters, page_size: int, after: str | None) -> Any:
        asked.append((filters, page_size, after))
        rest = [a for a in agents if after is None or a.agent_id > after]
        chosen = rest[:page_size]
        return chosen, (chosen[-1].agent_id if len(rest) > page_size else None)

    monkeypatch.setattr(agent_search, "page", page)
    return asked


def test_filters_go_to_the_store_and_the_key_scope_applies(pages: list[Any]) -> None:
    reply = send(
        "/v1/agents",
        who="acme-viewer",
        capability="gpu",
        label="env:prod",
        version="1.2",
        status="active",
        liveness="late",
    )
    assert reply.status == 200, reply.text
    [(filters, size, after)] = pages
    assert filters == Filters(
        tenant="acme", status="active", liveness="late", version="1.2", capability="gpu", label=("env", "prod")
    )
    assert (size, after) == (50, None)
    assert send("/v1/agents", who="acme-viewer", tenant="globex").status == 403


@pytest.mark.parametrize(
    "query",
    [
        {"label": "no-colon"},
        {"liveness": "sleepy"},
        {"min_security": "x"},
        {"min_security": "101"},
        {"min_security": "60", "max_security": "50"},
        {"capability": "bad capability"},
        {"limit": "0"},
        {"limit": "5", "page_size": "5"},
    ],
)
def test_bad_filters_are_400_with_a_reason(pages: list[Any], query: dict[str, str]) -> None:
    reply = send("/v1/agents", **query)
    assert reply.status == 400, reply.text
    assert reply.json["error"]["reason"] and not pages


def test_security_score_is_filtered_on_each_page_and_the_cursor_walks_every_agent(pages: list[Any]) -> None:
    seen: list[str] = []
    token = None
    for _ in range(5):
        query = {"max_security": "50", "limit": "2", **({"page_token": token} if token else {})}
        reply = send("/v1/agents", **query)
        assert reply.status == 200, reply.text
        seen += [a["agent_id"] for a in reply.json["items"]]
        assert all(a["security_score"] <= 50 for a in reply.json["items"])
        token = reply.json["next_page_token"]
        if token is None:
            break
    assert seen == ["agent-a2", "agent-a4"]
    assert [after for _f, _s, after in pages] == [None, "agent-a2", "agent-a4"]
