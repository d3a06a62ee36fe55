"""An agent's acknowledgement of a remediation command (``agent-command-acks``): decoded and signature-checked
like its other events, then applied to the tracked command with the agent store's conditional write
(shared/domain/agent_actions.py ``acknowledge``).

Reads and writes per ack (counted by shared/platform/metering): one read of the agent (none when this
instance holds it cached), one write of the agent when the command moves forward, plus one audit entry for
done or failed (in the same commit) and the episode and its notice when it resolves
``command_unacknowledged``. The ``done`` of the frozen rule's restart of a frozen agent that registered
since it was sent lifts frozen (shared/domain/remediation_frozen.py). A redelivered or reordered
ack writes nothing. An ack for a command the agent was not sent, or of another type, is recorded as a
rejection (``unknown_command``).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from fleet_agent.contracts import CommandAck
from fleet_agent.messages.commands import AckState

from shared.domain import agent_actions, remediation_frozen
from shared.domain.agent_record import AgentRecord, Plan, then
from shared.domain.episodes import AlertingConfig
from shared.domain.lifecycle import State
from shared.pipeline import signatures
from shared.pipeline.decoding import Decoded
from shared.store import agents as agent_store
from shared.store import config


def process(decoded: Decoded, unknown: Callable[[str, datetime], Exception]) -> Plan:
    """Apply one acknowledgement; ``unknown`` makes the error for an agent not registered (yet)."""
    ack = decoded.event
    assert isinstance(ack, CommandAck)
    received_at = decoded.message.published_at

    def decide(current: AgentRecord | None) -> Plan:
        if current is None:
            raise unknown(ack.agent_id, received_at)
        signatures.check(decoded, current)  # on the record the write is made on (as heartbeats)
        plan = agent_actions.acknowledge(current, ack, at=received_at, config=config.alerting(current.tenant))
        if current.status is State.FROZEN and ack.state is AckState.DONE and plan.skipped is None:
            # The frozen rule's restart done, the agent registered since it was sent (reordered): back.
            alerting = config.alerting(current.tenant)
            return then(current, plan, lambda after: _lift(after, received_at, ack.command_id, alerting))
        return plan

    # An ack only resolves episodes: their notices wait for the minute job (never sent at once).
    return agent_store.update(ack.agent_id, decide)


def _lift(record: AgentRecord, at: datetime, command_id: str, alerting: AlertingConfig) -> Plan:
    return remediation_frozen.lift_frozen(
        record, at, f"ack.{command_id}", registered_at=record.last_registered_at, config=alerting
    )
