"""The minute sweep's part for remediation commands: a command not acknowledged by its deadline is re-sent
once with the same command id, then marked ``unacknowledged`` and escalated as a ``command_unacknowledged``
episode (shared/domain/agent_actions.py ``overdue``). Reads only agents whose ``command_due_at`` has passed.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from shared.domain import agent_actions
from shared.domain.agent_record import AgentRecord, Plan
from shared.platform import logs
from shared.services import agent_commands
from shared.store import agents as agent_store
from shared.store import agents_due
from shared.store import config as config_store

log = logs.get_logger("command_sweep")
PAGE = 300


def run(now: datetime) -> dict[str, Any]:
    """Re-send or escalate every overdue command; counts of agents read, commands re-sent and escalated."""
    out = {"agents": 0, "resent": 0, "escalated": 0}
    for snap in agents_due.due_for_commands(now, PAGE):
        out["agents"] += 1
        plan = _step(snap.record, now)
        resent = len(plan.commands)
        out["resent"] += resent
        out["escalated"] += sum(1 for e in plan.audit if e.outcome == agent_actions.UNACKNOWLEDGED)
        if plan.changes:
            logs.log(log, f"commands of {snap.record.agent_id} overdue", agent_id=snap.record.agent_id, resent=resent)
    return out


def _step(record: AgentRecord, now: datetime) -> Plan:
    config = config_store.alerting(record.tenant)

    def decide(current: AgentRecord | None) -> Plan:
        if current is None:
            return Plan(skipped="gone")
        return agent_actions.overdue(current, now, config)

    plan = agent_store.update(record.agent_id, decide)
    # After the write: a failed publish leaves the command re-sent in the record; the agent is told again
    # at the next deadline (escalated then), and an ack for it is accepted whatever the attempt.
    agent_commands.publish(plan.commands)
    return plan
