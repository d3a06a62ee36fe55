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


def test_recent_tracked_commands_say_which_rule_sent_them() -> None:
    audit = [
        {"id": "a2", "at": "2026-12-06T11:59:30Z", "actor": "agent:agent-a1", "action": "agent.command.restart",
         "outcome": "done", "details": {"command_id": "c9", "origin": "policy:frozen-restart", "detail": ""}},
        {"id": "a1", "at": "2026-12-06T11:59:00Z", "actor": "system:remediation", "action": "agent.command.restart",
         "outcome": "sent", "details": {"command_id": "c9", "origin": "policy:<i>frozen</i>", "reason": "frozen"}},
        {"id": "a0", "at": "2026-12-06T11:58:00Z", "actor": "system:remediation", "action": "agent.remediation",
         "outcome": "acted", "details": {"rule": "frozen-restart"}},
    ]  # fmt: skip
    data = agent_view.AgentData.of(_agent(), NOW, audit=audit)
    [panel] = agent_view.panels(data, only=("commands",))
    rows = [(c["command"], c["outcome"], c["origin"]) for c in panel["commands"]]
    assert rows == [("restart", "done", "policy:frozen-restart"), ("restart", "sent", "policy:<i>frozen</i>")]
    html = ENV.get_template("panels/commands.html").render(panel=panel)
    assert 'class="command-origin">policy:frozen-restart<' in html
    assert "policy:&lt;i&gt;frozen&lt;/i&gt;" in html and "<i>frozen" not in html
