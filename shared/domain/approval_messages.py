"""Slack messages of approval requests (Block Kit): pure text building.

A pending request shows who asked, what, why, the estimated cost and the expiry, with Approve and
Deny buttons whose value is the approval id. Once decided, the same message is rewritten without
buttons: who decided and when, and what the decision did.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from shared.domain.approvals import Approval, Kind, State
from shared.domain.notices import escape

APPROVE = "approval_approve"
DENY = "approval_deny"
KIND_TITLES = {
    Kind.OPERATION: "Expensive operation",
    Kind.BUDGET_RAISE: "Budget raise",
    Kind.RELEASE: "Release",
    Kind.TRAINING: "Training job",
    Kind.REMEDIATION: "Remediation (stop a critical agent)",
    Kind.BULK: "Bulk action",
}
STATE_MARKS = {State.APPROVED: "✅ Approved", State.DENIED: "⛔ Denied", State.EXPIRED: "⌛ Expired"}

Message = tuple[str, list[dict[str, Any]]]
#: Room for a bulk request's agent ids in its Slack section (a section holds 3000 characters).
BULK_IDS_CHARS = 2200


def _when(at: datetime | None) -> str:
    return f"{at:%Y-%m-%d %H:%M} UTC" if at else ""


def _facts(approval: Approval) -> str:
    """Who asked, about what, why and for how much. What an agent or a person wrote is escaped: a
    ``<!channel>`` or a disguised link in a reason stays text."""
    lines = [f"*Requested by* {approval.requester.label()}"]
    if approval.agent_id:
        lines.append(f"*Agent* `{approval.agent_id}` ({approval.tenant})")
    else:
        lines.append(f"*Tenant* {approval.tenant}")
    if approval.reason:
        lines.append(f"*Why* {escape(approval.reason)}")
    if approval.kind is Kind.BULK:
        lines.extend(_bulk_facts(approval.payload))
    if approval.estimated_cost_usd is not None:
        lines.append(f"*Estimated cost* ${approval.estimated_cost_usd:,.2f}")
    return "\n".join(lines)


def _bulk_facts(payload: dict[str, Any]) -> list[str]:
    """A bulk request's filter and every agent it acts on (escaped), so the approver sees the set."""
    shown = {k: v for k, v in (payload.get("filter") or {}).items() if v is not None}
    lines = [f"*Filter* {escape(json.dumps(shown, sort_keys=True, default=str))}"]
    ids = [str(a) for a in payload.get("agent_ids") or []]
    listed, size = [], 0
    for agent_id in ids:
        size += len(agent_id) + 4
        if size > BULK_IDS_CHARS:
            break
        listed.append(f"`{escape(agent_id)}`")
    more = f" and {len(ids) - len(listed)} more (see the approval's payload)" if len(listed) < len(ids) else ""
    lines.append(f"*Agents* ({len(ids)}) {', '.join(listed)}{more}")
    return lines


def title(approval: Approval) -> str:
    return f"{KIND_TITLES.get(approval.kind, approval.kind.value)}: {escape(approval.summary)}"


def pending(approval: Approval) -> Message:
    text = f"Approval needed: {title(approval)}"
    blocks: list[dict[str, Any]] = [
        {"type": "section", "text": {"type": "mrkdwn", "text": f"🙋 *{title(approval)}*\n{_facts(approval)}"[:2900]}},
        {
            "type": "context",
            "elements": [
                {
                    "type": "mrkdwn",
                    "text": f"expires {_when(approval.expires_at)} · only an approver of {approval.tenant} other "
                    f"than the requester can approve · `{approval.id}`",
                }
            ],
        },
        {
            "type": "actions",
            "block_id": f"approval.{approval.id}",
            "elements": [
                {
                    "type": "button",
                    "action_id": APPROVE,
                    "style": "primary",
                    "text": {"type": "plain_text", "text": "Approve"},
                    "value": approval.id,
                },
                {
                    "type": "button",
                    "action_id": DENY,
                    "style": "danger",
                    "text": {"type": "plain_text", "text": "Deny"},
                    "value": approval.id,
                },
            ],
        },
    ]
    return text, blocks


def decided(approval: Approval) -> Message:
    """The message once decided: no buttons; who, when, and what it did."""
    mark = STATE_MARKS.get(approval.state, approval.state.value)
    if approval.state is State.EXPIRED:
        who = f"nobody decided by {_when(approval.expires_at)}: denied"
    else:
        who = f"by <@{approval.decided_by}> at {_when(approval.decided_at)}"
    outcome = f"\n{approval.applied}" if approval.applied else ""
    note = f"\n_{approval.note}_" if approval.note and approval.state is not State.EXPIRED else ""
    text = f"{mark}: {title(approval)} ({who})"
    blocks: list[dict[str, Any]] = [
        {"type": "section", "text": {"type": "mrkdwn", "text": f"*{title(approval)}*\n{_facts(approval)}"[:2900]}},
        {"type": "section", "text": {"type": "mrkdwn", "text": f"{mark} {who}{note}{outcome}"[:2900]}},
        {"type": "context", "elements": [{"type": "mrkdwn", "text": f"`{approval.id}`"}]},
    ]
    return text, blocks


def message(approval: Approval) -> Message:
    return pending(approval) if approval.state is State.PENDING else decided(approval)


def to_requester(approval: Approval) -> str:
    """The direct message a Slack requester gets."""
    mark = STATE_MARKS.get(approval.state, approval.state.value)
    by = f" by <@{approval.decided_by}>" if approval.decided_by else ""
    outcome = f" {approval.applied}" if approval.applied else ""
    return f"{mark}{by}: {title(approval)}.{outcome}"
