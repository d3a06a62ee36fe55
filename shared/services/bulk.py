"""Bulk operator actions: one action (pause, resume, drain, label, quarantine, decommission) on the agents
a search selects, each through the same operation as a single agent's (shared/services/agent_controls.py,
shared/services/decommission.py, shared/services/agent_actions.py), each agent's result reported.

A dry run only reads: it says what each agent's result would be. The destructive actions (quarantine,
decommission) are not applied by the call: they are asked of the tenant's approvers (an approval of kind
``bulk`` naming the filter and the agents), and applied to exactly those agents when approved
(:func:`carry_out`, run by the fleet-actions function as every approval's effect).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from fleet_agent.contracts import CommandType
from fleet_agent.messages.commands import COMMANDS_V2

from shared.domain.agent_record import AgentRecord
from shared.domain.approvals import Approval
from shared.domain.lifecycle import State
from shared.services import agent_actions, agent_controls, decommission
from shared.services.agent_controls import Actor, Refused

#: Agents one call acts on at most; more matching agents: the call returns a cursor to the next ones.
CAP = 100
ACTIONS = ("pause", "resume", "drain", "label", "quarantine", "decommission")
#: Asked of the approvers, never applied by the call itself.
DESTRUCTIVE = frozenset({"quarantine", "decommission"})


@dataclass(frozen=True)
class Result:
    agent_id: str
    #: applied, unchanged, refused, failed (an error: its class); a dry run: would_apply, unchanged, refused;
    #: asked: requested.
    result: str
    reason: str | None = None


def preview(record: AgentRecord, action: str, labels: dict[str, str | None] | None) -> Result:
    """What the action would do to ``record`` (pure, for a dry run and an approval's list)."""
    agent_id = record.agent_id
    if record.status is State.DECOMMISSIONED:
        return Result(agent_id, "unchanged" if action == "decommission" else "refused", "decommissioned")
    if record.status is State.DECOMMISSIONING and action != "decommission":
        return Result(agent_id, "refused", "decommissioning")
    if action == "pause" and "pause" in record.holds:
        return Result(agent_id, "unchanged", "already paused")
    if action == "resume" and "pause" not in record.holds:
        return Result(agent_id, "refused", f"agent {agent_id} is not paused")
    if action == "quarantine" and "quarantine" in record.holds:
        return Result(agent_id, "unchanged", "already quarantined")
    if action == "label" and labels is not None:
        wanted = {k: v for k, v in {**record.labels, **labels}.items() if v is not None}
        if wanted == record.labels and "labels" in record.api_fields:
            return Result(agent_id, "unchanged", "labels already set")
    if action == "drain" and COMMANDS_V2 not in record.supports:
        return Result(agent_id, "refused", "its SDK does not support remediation commands (commands.v2)")
    return Result(agent_id, "would_apply")


def apply_one(
    agent_id: str, action: str, actor: Actor, reason: str, at: datetime, labels: dict[str, str | None] | None = None
) -> Result:
    """Apply ``action`` to one agent through its single-agent operation; a refusal is a result, not an error,
    and so is any other failure (``failed``, the error's class): the agents before it are already changed,
    so the caller must still get every agent's result and the bulk audit entry."""
    operations: dict[str, Callable[[], bool]] = {
        "pause": lambda: agent_controls.pause(agent_id, actor, reason, at)[1],
        "resume": lambda: bool(agent_controls.resume(agent_id, actor, reason, at)),
        "drain": lambda: bool(agent_actions.act(agent_id, CommandType.DRAIN, actor, reason, at, origin="bulk")),
        "label": lambda: agent_controls.edit_agent(agent_id, actor, {"labels": labels or {}}, at)[1],
        "quarantine": lambda: agent_controls.quarantine(agent_id, actor, reason, at)[1],
        "decommission": lambda: decommission.decommission(agent_id, actor, reason, at).changed,
    }
    try:
        changed = operations[action]()
    except Refused as refused:
        return Result(agent_id, "refused", refused.reason)
    except Exception as error:  # reported per agent (see the docstring)
        return Result(agent_id, "failed", type(error).__name__)
    return Result(agent_id, "applied" if changed else "unchanged")


def apply_all(
    agent_ids: list[str], action: str, actor: Actor, reason: str, at: datetime, labels: dict[str, Any] | None
) -> list[Result]:
    return [apply_one(agent_id, action, actor, reason, at, labels) for agent_id in agent_ids]


def summary(action: str, results: list[Result]) -> str:
    counts = {
        kind: sum(1 for r in results if r.result == kind) for kind in ("applied", "unchanged", "refused", "failed")
    }
    return f"{action} on {len(results)} agents: " + ", ".join(f"{n} {kind}" for kind, n in counts.items())


def carry_out(approval: Approval, now: datetime) -> str:
    """An approved bulk request: its action on the agents it listed (not a new search), as the approver."""
    payload = approval.payload
    actor = Actor(f"slack:{approval.decided_by}", request_id=approval.id, tenants=frozenset({approval.tenant}))
    reason = f"{payload.get('reason') or 'bulk'} (approved request {approval.id})"
    action = str(payload.get("action"))
    if action not in ACTIONS:
        return f"Not applied: unknown action {action}."
    results = apply_all([str(a) for a in payload.get("agent_ids") or []], action, actor, reason, now, None)
    refused = [f"{r.agent_id} ({r.reason})" for r in results if r.result in ("refused", "failed")][:10]
    return summary(action, results) + (f"; refused: {', '.join(refused)}" if refused else "") + "."
