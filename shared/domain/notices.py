"""Slack messages for alert episodes (Block Kit), from outbox notices alone: pure text building.

Short and readable in a notification preview: the first line says what, where and how bad; the
body says why; the context line says when. The ``text`` of each message is the plain fallback
Slack shows in notifications and screen readers.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

ICONS = {"info": ":information_source:", "warning": "⚠️", "high": "🟠", "critical": "🔴", "emergency": "🚨"}
RESOLVED = "✅"
#: Agents listed by name in a grouped message (the rest are counted).
GROUP_LISTED = 25
#: Action ids of the buttons on an alert's message (shared/slack/buttons.py answers them).
ACK = "alert_ack"
SNOOZE = "alert_snooze"
SNOOZE_LABELS = ("1h", "4h", "24h")

Message = tuple[str, list[dict[str, Any]]]


def escape(text: object) -> str:
    """Text safe inside Slack mrkdwn: ``&``, ``<`` and ``>`` are control characters there (a ``<!channel>``
    or a disguised link in text an agent or a person wrote must stay text)."""
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _when(value: Any) -> str:
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return f"{value:%Y-%m-%d %H:%M} UTC" if isinstance(value, datetime) else ""


def _subject(notice: dict[str, Any]) -> str:
    agent = notice.get("agent_id")
    return f"`{agent}` ({notice['tenant']})" if agent else f"tenant *{notice['tenant']}*"


def _section(text: str) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": text[:2900]}}


def _context(text: str) -> dict[str, Any]:
    return {"type": "context", "elements": [{"type": "mrkdwn", "text": text[:2900]}]}


def _button(action_id: str, label: str, value: str) -> dict[str, Any]:
    return {"type": "button", "action_id": action_id, "text": {"type": "plain_text", "text": label}, "value": value}


def buttons(episode_id: str) -> dict[str, Any]:
    """Acknowledge (reminders stop, the message says who) and Snooze 1 h / 4 h / 24 h (a silence)."""
    elements = [_button(ACK, "Acknowledge", episode_id)]
    elements += [_button(f"{SNOOZE}_{label}", f"Snooze {label}", episode_id) for label in SNOOZE_LABELS]
    return {"type": "actions", "block_id": f"alert.{episode_id}"[:255], "elements": elements}


def opened(notice: dict[str, Any]) -> Message:
    icon = ICONS.get(notice["severity"], "")
    head = f"{icon} *{notice['title']}* · {notice['severity']} · {_subject(notice)}"
    text = f"{icon} {notice['title']} ({notice['severity']}): {notice.get('summary') or ''}"
    blocks = [
        _section(f"{head}\n{notice.get('summary') or ''}"),
        _context(f"opened {_when(notice.get('opened_at') or notice['created_at'])} · episode `{notice['episode_id']}`"),
        buttons(notice["episode_id"]),
    ]
    return text, blocks


def escalated(notice: dict[str, Any]) -> Message:
    """The original message, rewritten at the new severity (posted in its thread too)."""
    return opened(notice)


def reminder(notice: dict[str, Any]) -> Message:
    n = notice["event"].split("-", 1)[1]
    text = f"Still open (reminder {n}): {notice['title']} · {notice.get('summary') or ''}"
    return text, [_section(f"⏰ {text}")]


def remediation(notice: dict[str, Any]) -> Message:
    """What the remediation policy did about the episode (a reply in its thread). The summary names the
    agent and its labels' values, which the agent chose: escaped."""
    text = f"Remediation of {notice.get('agent_id') or notice['tenant']}: {notice.get('summary') or ''}"
    return text, [_section(f"🛠️ {escape(text)}")]


def resolved(notice: dict[str, Any], *, silenced: bool = False) -> Message:
    note = " (its alerts were silenced)" if silenced else ""
    head = f"{RESOLVED} *Resolved: {notice['title']}* · {_subject(notice)}{note}"
    text = f"{RESOLVED} Resolved: {notice['title']}: {notice.get('summary') or ''}"
    blocks = [
        _section(f"{head}\n{notice.get('summary') or ''}"),
        _context(f"opened {_when(notice.get('opened_at'))} · resolved {_when(notice['created_at'])}"),
    ]
    return text, blocks


def grouped(notices: list[dict[str, Any]], states: dict[str, str] | None = None) -> Message:
    """One message for many agents with the same rule; ``states`` marks the resolved ones (edits)."""
    states = states or {}
    first = notices[0]
    icon = ICONS.get(first["severity"], "")
    open_count = sum(1 for n in notices if states.get(n["episode_id"], "open") == "open")
    lines = []
    for n in notices[:GROUP_LISTED]:
        mark = RESOLVED if states.get(n["episode_id"]) == "resolved" else "•"
        lines.append(f"{mark} `{n.get('agent_id') or n['tenant']}`: {n.get('summary') or ''}")
    if len(notices) > GROUP_LISTED:
        lines.append(f"… and {len(notices) - GROUP_LISTED} more")
    title = f"{first['title']}: {len(notices)} agents of {first['tenant']}"
    if open_count == 0:
        head = f"{RESOLVED} *Resolved: {title}*"
    else:
        head = f"{icon} *{title}* · {first['severity']} · {open_count} still open"
    text = f"{title} ({first['severity']}), {open_count} open"
    return text, [_section(head), _section("\n".join(lines)), _context(f"first seen {_when(first['created_at'])}")]
