"""The Approvals page's data: pending and recently decided approval requests, read-only.

Read through the REST API's own handler in-process (GET /v1/approvals via shared/api/router, with the
session's key as the bearer token; see api_calls.call_api): the same tenant scope and roles as the API.
The page decides nothing: approving or denying stays in Slack (shared/slack/buttons.py), where the
approver's identity is known and the four-eyes rule (not the requester, not the agent's owner) is checked.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import flask

from shared.console.api_calls import call_api

#: How many requests each table shows (the API's list is newest first).
LIMIT = 50
#: Where the decisions are made, said on the page.
NOTE = (
    "This page is read-only. Approve or deny in Slack, in the tenant's approvals channel: there the "
    "approver's identity is known, and the requester and the agent's owner cannot approve their own request."
)


@dataclass(frozen=True)
class Row:
    id: str
    tenant: str
    kind: str
    agent_id: str | None
    requested_by: str
    summary: str
    reason: str
    estimated_cost_usd: str | None
    state: str
    created_at: datetime | None
    expires_at: datetime | None
    decided_by: str | None
    decided_at: datetime | None
    applied: str | None
    post_error: str | None


@dataclass(frozen=True)
class Approvals:
    pending: list[Row]
    recent: list[Row]
    notes: list[str]
    note: str = NOTE


def _time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _row(item: dict[str, Any]) -> Row:
    raw = item.get("requester")
    requester: dict[str, Any] = raw if isinstance(raw, dict) else {}
    who = f"{requester.get('kind')}:{requester.get('id')}" if requester.get("id") else ""
    return Row(
        id=str(item.get("id")),
        tenant=str(item.get("tenant") or ""),
        kind=str(item.get("kind") or ""),
        agent_id=_text(item.get("agent_id")),
        requested_by=who,
        summary=str(item.get("summary") or ""),
        reason=str(item.get("reason") or ""),
        estimated_cost_usd=_text(item.get("estimated_cost_usd")),
        state=str(item.get("state") or ""),
        created_at=_time(item.get("created_at")),
        expires_at=_time(item.get("expires_at")),
        decided_by=_text(item.get("decided_by")),
        decided_at=_time(item.get("decided_at")),
        applied=_text(item.get("applied")),
        post_error=_text(item.get("post_error")),
    )


def load(request: flask.Request) -> Approvals:
    """Pending requests and the most recent others (approved, denied, expired), as the key may see them."""
    notes: list[str] = []
    pending = call_api(request, "GET", f"/v1/approvals?state=pending&limit={LIMIT}")
    if not pending.ok:
        notes.append(f"Pending approvals could not be read: {pending.reason}")
    recent = call_api(request, "GET", f"/v1/approvals?limit={LIMIT}")
    if not recent.ok:
        notes.append(f"Recent approvals could not be read: {recent.reason}")
    pending_rows = [_row(i) for i in pending.body.get("items") or [] if isinstance(i, dict)]
    recent_rows = [
        _row(i) for i in recent.body.get("items") or [] if isinstance(i, dict) and i.get("state") != "pending"
    ]
    return Approvals(pending_rows, recent_rows, notes)
