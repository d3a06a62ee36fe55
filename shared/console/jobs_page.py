"""The Jobs page's data: the training queue (position and why each job waits), the running jobs
(progress, cost so far, estimate, preemptions) and the recently finished ones.

Read through the REST API's own handler in-process (``GET /v1/jobs`` via
shared/console/api_calls.call_api with the session's key as the bearer token): the same roles, the
same tenant scope (a tenant-scoped key sees only its tenant's jobs), the same audit.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

import flask

from shared.console.api_calls import call_api

#: How many jobs one page view reads (the API's own maximum).
LIMIT = 200
WAITING = ("awaiting_approval", "queued")
ACTIVE = ("admitted", "running")


@dataclass(frozen=True)
class JobRow:
    id: str
    name: str
    tenant: str
    agent_id: str
    requester: str
    backend: str
    state: str
    reason: str
    position: int | None
    priority: int
    created_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    step: int | None
    total_steps: int | None
    cost_usd: Decimal
    estimate_usd: Decimal | None
    machine: str
    preemptions: int

    @property
    def progress_pct(self) -> int | None:
        if self.step is None or not self.total_steps:
            return None
        return max(0, min(100, round(100 * self.step / self.total_steps)))


@dataclass(frozen=True)
class Jobs:
    queue: list[JobRow]
    running: list[JobRow]
    finished: list[JobRow]
    notes: list[str]


def _time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def _decimal(value: Any) -> Decimal | None:
    if value is None:
        return None
    try:
        return Decimal(str(value))
    except InvalidOperation:
        return None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def row(item: dict[str, Any]) -> JobRow:
    """One job of the API's answer as the page shows it."""
    progress = item.get("progress") if isinstance(item.get("progress"), dict) else {}
    estimate = item.get("estimate") if isinstance(item.get("estimate"), dict) else {}
    assert isinstance(progress, dict) and isinstance(estimate, dict)
    return JobRow(
        id=str(item.get("id") or ""),
        name=str(item.get("name") or ""),
        tenant=str(item.get("tenant") or ""),
        agent_id=str(item.get("agent_id") or ""),
        requester=str(item.get("requester") or ""),
        backend=str(item.get("backend") or ""),
        state=str(item.get("state") or ""),
        reason=str(item.get("reason") or ""),
        position=_int(item.get("position")),
        priority=_int(item.get("priority")) or 0,
        created_at=_time(item.get("created_at")),
        started_at=_time(item.get("started_at")),
        finished_at=_time(item.get("finished_at")),
        step=_int(progress.get("step")),
        total_steps=_int(progress.get("total_steps")),
        cost_usd=_decimal(item.get("cost_usd")) or Decimal(0),
        estimate_usd=_decimal(estimate.get("usd")),
        machine=str(estimate.get("machine") or ""),
        preemptions=_int(item.get("preemptions")) or 0,
    )


def split(items: list[dict[str, Any]]) -> tuple[list[JobRow], list[JobRow], list[JobRow]]:
    """(queue by tenant then position, with those awaiting approval last; running; finished newest first)."""
    rows = [row(i) for i in items if isinstance(i, dict)]
    queue = [r for r in rows if r.state in WAITING]
    queue.sort(key=lambda r: (r.tenant, r.state != "queued", r.position or 10**9, r.created_at or datetime.min))
    running = [r for r in rows if r.state in ACTIVE]
    finished = [r for r in rows if r.state not in WAITING and r.state not in ACTIVE]
    return queue, running, finished


def load(request: flask.Request) -> Jobs:
    """The jobs the session's key may see (the API's newest first, at most :data:`LIMIT`)."""
    answer = call_api(request, "GET", f"/v1/jobs?limit={LIMIT}")
    notes = [] if answer.ok else [f"Jobs could not be read: {answer.reason}"]
    items = answer.body.get("items") or []
    queue, running, finished = split(items if isinstance(items, list) else [])
    return Jobs(queue, running, finished, notes)
