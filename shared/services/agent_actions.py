"""Remediation commands sent to one agent, whoever asks (an operator through the API, a bulk operation,
a remediation policy): read the agent, decide with shared.domain.agent_actions.issue, write the tracked
command and its audit entry with the agent store's conditional write, then publish the signed command.
"""

from __future__ import annotations

from datetime import datetime

from fleet_agent.contracts import Command, CommandType

from shared.domain import agent_actions
from shared.domain.agent_record import AgentRecord, Plan
from shared.services import agent_commands
from shared.services.agent_controls import Actor, Refused, update_agent


def act(
    agent_id: str,
    action: CommandType,
    actor: Actor,
    reason: str,
    at: datetime,
    *,
    deadline_s: int | None = None,
    calls_per_minute: int | None = None,
    until: datetime | None = None,
    origin: str = "operator",
) -> tuple[AgentRecord, Command]:
    """Send ``action`` to the agent and track it; (the agent as written, the command sent).

    The same request (``actor.request_id``) sends the same command id again and changes nothing else.
    Raises Refused: 404 (missing, or in a tenant the actor cannot see), 409 (the SDK does not support
    remediation commands, or the agent cannot be sent one now), 400 (a bad argument)."""

    def step(current: AgentRecord) -> Plan:
        try:
            return agent_actions.issue(
                current,
                action,
                at=at,
                actor=actor.name,
                reason=reason,
                key=actor.key,
                origin=origin,
                deadline_s=deadline_s,
                calls_per_minute=calls_per_minute,
                until=until,
            )
        except agent_actions.Unsupported as exc:
            raise Refused(409, exc.reason) from exc
        except agent_actions.NotAllowed as exc:
            raise Refused(409, exc.reason) from exc

    plan, record = update_agent(agent_id, actor, step)
    agent_commands.publish(plan.commands)
    return record, plan.commands[0]
