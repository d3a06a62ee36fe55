"""Agent-side SDK for Agent Fleet Manager."""

from fleet_agent.client import FleetAgent
from fleet_agent.contracts import (
    DEFAULT_TOPICS,
    SCHEMA_VERSION,
    EventType,
    Heartbeat,
    HeartbeatMetrics,
    Registration,
    ReportedStatus,
    Resources,
)

__all__ = [
    "DEFAULT_TOPICS",
    "SCHEMA_VERSION",
    "EventType",
    "FleetAgent",
    "Heartbeat",
    "HeartbeatMetrics",
    "Registration",
    "ReportedStatus",
    "Resources",
]
