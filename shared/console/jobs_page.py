"""The Jobs page's data: the training queue (position and why each job waits), the running jobs
(progress, cost so far, estimate, preemptions) and the recently finished ones.

Read through the REST API's own handler in-process (``GET /v1/jobs`` via
shared/console/api_calls.call_api with the session's key as the bearer token): the same roles, the
same tenant scope (a tenant-scoped key sees only its tenant's jobs), the same audit. The API filters by
one state at a time, so the page asks once per state: each waiting and each active state (up to the
API's maximum of :data:`LIMIT` each, so an old queued or running job is never pushed out by newer
finished ones) and each final state (the newest :data:`FINISHED_LIMIT`). A list cut at its limit says so
on the page. Firestore reads per view: one per job shown, at least one per state asked (7).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import flask

from shared.console.api_calls import call_api
from shared.console.formats import decimal, when

#: How many jobs of each waiting or active state one page view reads (the API's own maximum).
LIMIT = 200
#: How many finished jobs the page shows (the newest; each final state is asked for this many).
FINISHED_LIMIT = 50
WAITING = ("awaiting_approval", "queued")
ACTIVE = ("admitted", "running")
FINAL = ("succeeded", "failed", "cancelled")


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
        created_at=when(item.get("created_at")),
        started_at=when(item.get("started_at")),
        finished_at=when(item.get("finished_at")),
        step=_int(progress.get("step")),
        total_steps=_int(progress.get("total_steps")),
        cost_usd=decimal(item.get("cost_usd")) or Decimal(0),
        estimate_usd=decimal(estimate.get("usd")),
        machine=str(estimate.get("machine") or ""),
        preemptions=_int(item.get("preemptions")) or 0,
    )


def split(items: list[dict[str, Any]]) -> tuple[list[JobRow], list[JobRow], list[JobRow]]:
    """(queue by tenant then position, with those awaiting approval last; running; finished newest first)."""
    rows = [row(i) for i in items if isinstance(i, dict)]
    queue = [r for r in rows if r.state in WAITING]
    queue.sort(key=lambda r: (r.tenant, r.state != "queued", r.position or 10**9, r.created_at or _EPOCH))
    running = [r for r in rows if r.state in ACTIVE]
    finished = [r for r in rows if r.state not in WAITING and r.state not in ACTIVE]
    finished.sort(key=lambda r: r.created_at or _EPOCH, reverse=True)
    return queue, running, finished


_EPOCH = datetime.min.replace(tzinfo=UTC)


def load(request: flask.Request) -> Jobs:
    """The jobs the session's key may see: every waiting and active state (up to :data:`LIMIT` each) and
    the newest :data:`FINISHED_LIMIT` finished ones, with a note for each list cut at its limit."""
    items: list[dict[str, Any]] = []
    notes: list[str] = []
    cut: set[str] = set()
    for state in (*WAITING, *ACTIVE, *FINAL):
        limit = FINISHED_LIMIT if state in FINAL else LIMIT
        answer = call_api(request, "GET", f"/v1/jobs?state={state}&limit={limit}")
        if not answer.ok:
            notes.append(f"Jobs ({state}) could not be read: {answer.reason}")
            continue
        found = [i for i in answer.body.get("items") or [] if isinstance(i, dict)]
        if len(found) >= limit:
            cut.add(state)
        items += found
    queue, running, finished = split(items)
    for state in (*WAITING, *ACTIVE):
        if state in cut:
            # The API lists newest first: past the limit it is the oldest, the queue's front, that is left out.
            notes.append(
                f"{LIMIT} or more jobs are {state}: the page shows the newest {LIMIT}, so any older ones "
                "(for a queue, its front) are not shown; see GET /v1/jobs?state=" + state + "."
            )
    if cut & set(FINAL) or len(finished) > FINISHED_LIMIT:
        notes.append(f"Only the newest {FINISHED_LIMIT} finished jobs are shown.")
    return Jobs(queue, running, finished[:FINISHED_LIMIT], notes)
