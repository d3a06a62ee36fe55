"""Agent-side SDK for Agent Fleet Manager."""

from fleet_agent.approvals import ApprovalHandle, ApprovalStatus, ApprovalTimeout
from fleet_agent.client import FleetAgent
from fleet_agent.commands import CommandListener
from fleet_agent.contracts import (
    DEFAULT_TOPICS,
    SCHEMA_VERSION,
    ApprovalKind,
    ApprovalRequest,
    BudgetPeriod,
    BudgetSpec,
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
from fleet_agent.jobs import JobReporter

__all__ = [
    "DEFAULT_TOPICS",
    "SCHEMA_VERSION",
    "ApprovalHandle",
    "ApprovalKind",
    "ApprovalRequest",
    "ApprovalStatus",
    "ApprovalTimeout",
    "BudgetPeriod",
    "BudgetSpec",
    "CallRefused",
    "Command",
    "CommandListener",
    "CommandType",
    "CostBatch",
    "CostRecord",
    "CostRecorder",
    "EventType",
    "FleetAgent",
    "Heartbeat",
    "HeartbeatMetrics",
    "JobReporter",
    "Registration",
    "ReportedStatus",
    "Resources",
]
