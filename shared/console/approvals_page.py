"""The Approvals page's data: pending and recently decided approval requests, read-only.

Read through the REST API's own handler in-process (GET /v1/approvals via shared/api/router, with the
session's key as the bearer token; see api_calls.call_api): the same tenant scope and roles as the API.
The API filters by one state at a time: the page asks for the pending ones, then for each decided state
(approved, denied, expired) and shows the newest :data:`LIMIT` of those together, so no pending request
is read twice. A list cut at its limit says so on the page. Firestore reads per view: one per request
read, at least one per state asked (4).
The page decides nothing: approving or denying stays in Slack (shared/slack/buttons.py), where the
approver's identity is known and the four-eyes rule (not the requester, not the agent's owner) is checked.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import flask

from shared.console.api_calls import call_api
from shared.console.formats import decimal, when

#: How many requests each table shows (the API's list is newest first).
LIMIT = 50
#: The states of a decided request, each asked for separately (the API takes one state per query).
DECIDED = ("approved", "denied", "expired")
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
    estimated_cost_usd: Decimal | None
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
        estimated_cost_usd=decimal(item.get("estimated_cost_usd")),
        state=str(item.get("state") or ""),
        created_at=when(item.get("created_at")),
        expires_at=when(item.get("expires_at")),
        decided_by=_text(item.get("decided_by")),
        decided_at=when(item.get("decided_at")),
        applied=_text(item.get("applied")),
        post_error=_text(item.get("post_error")),
    )


def _items(request: flask.Request, state: str, what: str, notes: list[str]) -> tuple[list[dict[str, Any]], bool]:
    """One state's newest :data:`LIMIT` requests, and whether the API may hold more."""
    answer = call_api(request, "GET", f"/v1/approvals?state={state}&limit={LIMIT}")
    if not answer.ok:
        notes.append(f"{what} could not be read: {answer.reason}")
        return [], False
    items = [i for i in answer.body.get("items") or [] if isinstance(i, dict)]
    return items, len(items) >= LIMIT


_EPOCH = datetime.min.replace(tzinfo=UTC)


def load(request: flask.Request) -> Approvals:
    """Pending requests and the most recent decided ones (approved, denied, expired), as the key may see them."""
    notes: list[str] = []
    pending, pending_cut = _items(request, "pending", "Pending approvals", notes)
    if pending_cut:
        notes.append(f"Only the newest {LIMIT} pending approvals are shown.")
    decided: list[Row] = []
    decided_cut = False
    for state in DECIDED:
        items, cut = _items(request, state, f"Recent approvals ({state})", notes)
        decided += [_row(i) for i in items]
        decided_cut = decided_cut or cut
    decided.sort(key=lambda r: r.created_at or _EPOCH, reverse=True)
    if decided_cut or len(decided) > LIMIT:
        notes.append(f"Only the newest {LIMIT} decided approvals are shown.")
    return Approvals([_row(i) for i in pending], decided[:LIMIT], notes)
