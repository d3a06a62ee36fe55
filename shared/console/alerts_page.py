"""The Alerts page's data and actions: open alert episodes and active silences, acknowledge and snooze.

Everything goes through the REST API's own handlers in-process (shared/console/api_calls.py, with the
session's key as the bearer token), never around them: the same role checks (acknowledge and snooze
need an operator), the same tenant scope, the same audit entries (a refused call is audited by the
API's dispatcher as ``api.<endpoint>`` with outcome ``refused``). Snooze is a silence of the episode's
agent (or tenant) and rule for :data:`SNOOZE_S` seconds (as Slack's Snooze button does), the episode found by
its id (``GET /v1/alerts/{episode_id}``). Its id is derived as Slack derives a Snooze click's: from the
trigger (here the page's form token and the action) and the episode, so a double submit of one form is one
silence (``POST /v1/silences`` with that ``id`` returns the silence already made). After an action the browser
is sent back to /alerts with a notice in the query string (:func:`after`), so a refresh repeats nothing.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

import flask

from shared.console.api_calls import Answer, call_api
from shared.domain.episodes import EPISODE_ID_CHARS
from shared.domain.silences import snooze_id

#: Snooze: one hour.
SNOOZE_S = 3600
#: POST /alerts/<episode id>/<action>: the actions, and what an episode id may look like.
ACTION_PATH = re.compile(rf"^/alerts/(?P<episode_id>{EPISODE_ID_CHARS})/(?P<action>ack|snooze)$")
#: The most open episodes the page lists (newest first); a note says when there may be more.
LIMIT = 100
#: The form token of one rendered page (the trigger a snooze's silence id is derived from).
TOKEN = re.compile(r"^[0-9a-f]{32}$")
VERBS = {"ack": "acknowledge", "snooze": "snooze"}
DONE = {"ack": "acknowledged", "snooze": "snoozed"}
#: Why an action was refused, by code. The query string after an action carries the code, never text, so a
#: crafted link cannot put words of its own on the console's page.
REFUSALS = {
    "role": "your API key's role cannot do this: it needs the operator role",
    "not_found": "no such alert episode for your API key",
    "not_open": "the episode is resolved, not open",
    "ended": "that snooze has ended; snooze again from this page",
    "conflict": "the API refused it as a conflict; reload the page and try again",
    "error": "the API could not do it just now; try again",
}


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
    #: What the last action did (from the query string :func:`after` wrote), or None.
    notice: str | None = None
    #: This rendering's form token (a hidden field of each Snooze form).
    token: str = field(default_factory=lambda: uuid.uuid4().hex)


def notice_of(args: Any) -> str | None:
    """The notice the query string carries after an action (plain text: the template escapes it)."""
    episode_id = str(args.get("episode") or "")
    action = str(args.get("action") or "")
    if not ACTION_PATH.match(f"/alerts/{episode_id}/{action}"):  # an episode id, not words
        return None
    notice = args.get("notice")
    if not episode_id or action not in VERBS:
        return None
    if notice == DONE[action]:
        lasting = f" for {SNOOZE_S // 60} minutes" if action == "snooze" else ""
        return f"{notice.capitalize()} {episode_id}{lasting}."
    if notice == "refused":
        reason = REFUSALS.get(str(args.get("reason") or ""), REFUSALS["error"])
        return f"Could not {VERBS[action]} {episode_id}: {reason}."
    return None


def refusal(answer: Answer) -> str:
    """The code of a refused action's answer (see :data:`REFUSALS`; the API's own reason is in its log)."""
    if answer.status == 403:
        return "role"
    if answer.status == 404:
        return "not_found"
    if answer.status == 409:
        return "not_open" if "not open" in answer.reason else "ended" if "has ended" in answer.reason else "conflict"
    return "error"


def after(action: str, episode_id: str, answer: Answer) -> str:
    """Where the browser goes after an action: /alerts with what happened (or the code of why nothing did)."""
    query = {"notice": DONE[action] if answer.ok else "refused", "action": action, "episode": episode_id}
    if not answer.ok:
        query["reason"] = refusal(answer)
    return "/alerts?" + urlencode(query)


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
    alerts = call_api(request, "GET", f"/v1/alerts?state=open&limit={LIMIT}")
    if not alerts.ok:
        notes.append(f"Alerts could not be read: {alerts.reason}")
    elif len(alerts.body.get("items") or []) >= LIMIT:
        notes.append(
            f"Only the newest {LIMIT} open alerts are listed; there may be more "
            "(GET /v1/alerts?state=open filters by agent, rule or severity)."
        )
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
    return Alerts(episodes, rows, notes, notice_of(request.args))


def acknowledge(request: flask.Request, episode_id: str) -> Answer:
    return call_api(request, "POST", f"/v1/alerts/{episode_id}/acknowledge", {})


def snooze(request: flask.Request, episode_id: str) -> Answer:
    """A silence of the episode's agent (or tenant) and rule for an hour, created by POST /v1/silences with
    an id derived from the form's token and the episode (a repeat of the same submit is the same silence)."""
    found = call_api(request, "GET", f"/v1/alerts/{episode_id}")
    if not found.ok:
        return found
    episode = found.body
    if episode.get("state") != "open":
        return Answer(409, {"error": {"reason": f"alert episode {episode_id} is {episode.get('state')}, not open"}})
    token = str(request.form.get("token") or "")
    trigger = f"console.snooze.{token if TOKEN.fullmatch(token) else uuid.uuid4().hex}"
    body: dict[str, Any] = {
        "id": snooze_id(trigger, episode_id),
        "tenant": episode.get("tenant"),
        "rule": episode.get("rule"),
        "duration_s": SNOOZE_S,
        "reason": f"snoozed from the console ({episode_id})",
    }
    if episode.get("agent_id"):
        body["agent_id"] = episode["agent_id"]
    return call_api(request, "POST", "/v1/silences", body)
