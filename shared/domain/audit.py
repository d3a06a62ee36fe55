"""Audit entries: who did what to which target, with what outcome. Append-only."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class AuditEntry:
    #: Deterministic (derived from the causing event), so a redelivered event writes the same entry.
    id: str
    at: datetime
    actor: str
    action: str
    target: str
    outcome: str
    tenant: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def as_doc(self) -> dict[str, Any]:
        return {
            "at": self.at,
            "actor": self.actor,
            "action": self.action,
            "target": self.target,
            "outcome": self.outcome,
            "tenant": self.tenant,
            "details": self.details,
        }
