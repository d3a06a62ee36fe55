"""Alerts raised by the cost rules (budgets, breaker, runaway, spikes, unpriced models).

Each alert has a deterministic id (rule, subject and window), and the store *creates* it as an alert
episode (shared/domain/episodes.py), so it is raised once however many instances or redeliveries see
the same condition. It resolves by itself at ``until`` (the end of its window), which edits its Slack
message; routing, grouping and repeats are the episodes' job.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

#: How long raised alerts are kept (Firestore TTL on ``expire_at``).
ALERT_RETENTION = timedelta(days=30)


class Severity(StrEnum):
    INFO = "info"
    WARNING = "warning"
    HIGH = "high"
    CRITICAL = "critical"
    EMERGENCY = "emergency"

    @property
    def rank(self) -> int:
        return _RANKS[self]


_RANKS = {s: n for n, s in enumerate(Severity)}
#: How long a cost alert stays open when its rule names no window end.
DEFAULT_ALERT_OPEN = timedelta(hours=1)


@dataclass(frozen=True)
class Alert:
    id: str
    kind: str
    severity: Severity
    tenant: str
    message: str
    at: datetime
    agent_id: str | None = None
    window: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    #: When the condition ends by itself (the budget period resets, the hour ends).
    until: datetime | None = None

    def as_doc(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "severity": self.severity.value,
            "tenant": self.tenant,
            "agent_id": self.agent_id,
            "message": self.message,
            "window": self.window,
            "details": self.details,
            "raised_at": self.at,
            "state": "open",
            "expire_at": self.at + ALERT_RETENTION,
        }
