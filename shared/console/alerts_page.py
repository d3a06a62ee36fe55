"""The Alerts page's data and actions: open alert episodes and active silences, acknowledge and snooze.

Everything goes through the REST API's own handlers in-process (shared/console/api_calls.py, with the
session's key as the bearer token), never around them: the same role checks (acknowledge and snooze
need an operator), the same tenant scope, the same audit entries (a refused call is audited by the
API's dispatcher as ``api.<endpoint>`` with outcome ``refused``). Snooze is a silence of the episode's
agent (or tenant) and rule for :data:`SNOOZE_S` seconds (as Slack's Snooze button does).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import flask

from shared.console.api_calls import Answer, call_api

#: Snooze: one hour.
SNOOZE_S = 3600
#: POST /alerts/<episode id>/<action>: the actions, and what an episode id may look like.
ACTION_PATH = re.compile(r"^/alerts/(?P<episode_id>[A-Za-z0-9_.:-]{1,300})/(?P<action>ack|snooze)$")


@dataclass(frozen=True)
class Episode:
    id: str
    rule: str
    severity: str
    agent_id: str | None
    tenant: str
    summary: str
    opened_at: datetime | None
    acknowledged_by: str | None


@dataclass(frozen=True)
class SilenceRow:
    id: str
    agent_id: str | None
    tenant: str | None
    rule: str | None
    maintenance: bool
    reason: str
    created_by: str
    expires_at: datetime | None


@dataclass(frozen=True)
class Alerts:
    episodes: list[Episode]
    silences: list[SilenceRow]
    notes: list[str]


def _time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def load(request: flask.Request) -> Alerts:
    """Open episodes (newest first) and active silences, as the session's key may see them."""
    notes: list[str] = []
    alerts = call_api(request, "GET", "/v1/alerts?state=open&limit=100")
    if not alerts.ok:
        notes.append(f"Alerts could not be read: {alerts.reason}")
    episodes = [
        Episode(
            id=str(item.get("id")),
            rule=str(item.get("rule") or ""),
            severity=str(item.get("severity") or ""),
            agent_id=item.get("agent_id"),
            tenant=str(item.get("tenant") or ""),
            summary=str(item.get("message") or ""),
            opened_at=_time(item.get("opened_at")),
            acknowledged_by=item.get("acknowledged_by"),
        )
        for item in alerts.body.get("items") or []
    ]
    silences = call_api(request, "GET", "/v1/silences")
    if not silences.ok:
        notes.append(f"Silences could not be read: {silences.reason}")
    rows = [
        SilenceRow(
            id=str(item.get("id")),
            agent_id=item.get("agent_id"),
            tenant=item.get("tenant"),
            rule=item.get("rule"),
            maintenance=bool(item.get("maintenance")),
            reason=str(item.get("reason") or ""),
            created_by=str(item.get("created_by") or ""),
            expires_at=_time(item.get("expires_at")),
        )
        for item in silences.body.get("items") or []
        if item.get("active", True)
    ]
    return Alerts(episodes, rows, notes)


def acknowledge(request: flask.Request, episode_id: str) -> Answer:
    return call_api(request, "POST", f"/v1/alerts/{episode_id}/acknowledge", {})


def snooze(request: flask.Request, episode_id: str) -> Answer:
    """A silence of the episode's agent (or tenant) and rule for an hour, created by POST /v1/silences."""
    found = call_api(request, "GET", "/v1/alerts?state=open&limit=100")
    episode = next((i for i in found.body.get("items") or [] if i.get("id") == episode_id), None)
    if episode is None:
        return found if not found.ok else Answer(404, {"error": {"reason": f"no open alert episode {episode_id}"}})
    body: dict[str, Any] = {
        "tenant": episode.get("tenant"),
        "rule": episode.get("rule"),
        "duration_s": SNOOZE_S,
        "reason": f"snoozed from the console ({episode_id})",
    }
    if episode.get("agent_id"):
        body["agent_id"] = episode["agent_id"]
    return call_api(request, "POST", "/v1/silences", body)
