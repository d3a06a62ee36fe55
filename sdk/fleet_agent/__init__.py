"""Agent-side SDK for Agent Fleet Manager."""

from fleet_agent.client import FleetAgent
from fleet_agent.contracts import (
    DEFAULT_TOPICS,
    SCHEMA_VERSION,
    Command,
    CommandType,
    CostBatch,
    CostRecord,
    EventType,
    Heartbeat,
    HeartbeatMetrics,
    Registration,
    ReportedStatus,
    Resources,
)
from fleet_agent.costs import CallRefused, CostRecorder

__all__ = [
    "DEFAULT_TOPICS",
    "SCHEMA_VERSION",
    "CallRefused",
    "Command",
    "CommandType",
    "CostBatch",
    "CostRecord",
    "CostRecorder",
    "EventType",
    "FleetAgent",
    "Heartbeat",
    "HeartbeatMetrics",
    "Registration",
    "ReportedStatus",
    "Resources",
]
