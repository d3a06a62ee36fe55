"""The console's fleet page shows the deployment's open ``fleet_health`` episodes to any key that sees every
tenant (a viewer is enough), and nothing of them to a tenant's key (shared/console/fleet.py ``health``)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest

from shared.console import fleet
from shared.domain.api_keys import Role
from shared.store import episodes as episode_store
from tests.unit.test_console import ACME, ADMIN, _call, stores  # noqa: F401  (the console's fixture)

OPEN = {
    "id": "t._fleet.fleet_health.slack_failing.1",
    "rule": "fleet_health",
    "tenant": "_fleet",
    "severity": "critical",
    "state": "open",
    "summary": "5 alert notices failed to reach Slack in the last hour (threshold 3): the bot token is refused",
    "details": {"kind": "slack_failing"},
    "opened_at": datetime(2026, 12, 6, 15, 58, tzinfo=UTC),
}


@pytest.fixture
def asked(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    queries: list[dict[str, Any]] = []

    def list_episodes(**query: Any) -> list[dict[str, Any]]:
        queries.append(query)
        return [OPEN] if query.get("tenant") == "_fleet" and query.get("state") == "open" else []

    monkeypatch.setattr(episode_store, "list_episodes", list_episodes)
    return queries


@pytest.mark.parametrize("token", ["admin-token", "viewer-token"])  # any key that sees every tenant
def test_a_fleet_wide_key_sees_the_open_fleet_health_episodes_above_the_fleet(
    asked: list[dict[str, Any]], token: str
) -> None:
    body = _call("/", token=token).get_data(as_text=True)
    assert 'id="fleet-health"' in body and 'data-kind="slack_failing"' in body
    assert "the bot token is refused" in body and "2026-12-06 15:58 UTC" in body
    assert asked == [{"state": "open", "tenant": "_fleet", "limit": fleet.MAX_HEALTH}]


def test_a_tenant_key_neither_reads_nor_sees_them(asked: list[dict[str, Any]]) -> None:
    body = _call("/", token="acme-token").get_data(as_text=True)
    assert "fleet-health" not in body and "bot token" not in body
    assert asked == [] and fleet.health(ACME) == [] and fleet.health(ADMIN)[0]["kind"] == "slack_failing"
    assert fleet.health(replace(ACME, role=Role.ADMIN)) == []  # a tenant's admin neither
