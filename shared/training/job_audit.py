"""The audit entry of a change to a training job, one shape for every step of its life (submit,
approval, admission, launch, the reconcile tick, cancel): its own module, so each of those steps
imports it at the top without importing another step."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from shared.domain.audit import AuditEntry
from shared.domain.jobs import Job


def entry(job: Job, action: str, actor: str, at: datetime, outcome: str = "applied", **details: Any) -> AuditEntry:
    """The audit entry of a change of ``job`` (its id is unique per job, history length and action)."""
    return AuditEntry(
        id=f"{job.id}.{len(job.history)}.{action}",
        at=at,
        actor=actor,
        action=action,
        target=job.id,
        outcome=outcome,
        tenant=job.tenant,
        details={"agent_id": job.agent_id, "state": job.state.value, "reason": job.reason, **details},
    )
