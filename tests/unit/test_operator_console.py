"""The agent page's operator facts (shared/console/agent_pending.py, the status panel): liveness, the
security score and the pending commands, from the API's agent view, escaped when rendered."""

from __future__ import annotations

from datetime import UTC, datetime

from shared.console import agent_page, agent_view
from shared.console.app import ENV

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)


def _agent(**extra: object) -> dict[str, object]:
    return {"agent_id": "agent-a1", "tenant": "acme", "status": "active", "liveness": "late", **extra}


def test_pending_commands_and_status_facts_come_from_the_agent_view() -> None:
    assert "pending" in agent_view.panel_names() and agent_page.EXTRA_PANELS
    pending = [
        {"command_id": "c1", "command": "drain", "state": "acknowledged", "sent_at": "2026-12-06T11:59:00Z",
         "origin": "bulk", "actor": "api:oncall", "reason": "<b>rollout</b>"},
    ]  # fmt: skip
    data = agent_view.AgentData.of(_agent(security_score=42.0, pending_commands=pending), NOW)
    panels = {p["name"]: p for p in agent_view.panels(data, only=("status", "pending"))}
    assert panels["status"]["liveness"] == "late" and panels["status"]["security_score"] == 42.0
    [item] = panels["pending"]["commands"]
    assert (item["command"], item["state"], item["origin"], item["ago"]) == ("drain", "acknowledged", "bulk", "1m ago")
    html = ENV.get_template("panels/pending.html").render(panel=panels["pending"])
    assert "&lt;b&gt;rollout&lt;/b&gt;" in html and "<b>rollout" not in html


def test_no_pending_command_is_said_and_an_older_view_shows_no_panel() -> None:
    data = agent_view.AgentData.of(_agent(pending_commands=[]), NOW)
    [panel] = agent_view.panels(data, only=("pending",))
    assert panel["commands"] == []
    assert agent_view.panels(agent_view.AgentData.of(_agent(), NOW), only=("pending",)) == []
