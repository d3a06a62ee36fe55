"""Scheduler ticks: the jobs of the topology manifest's ``schedules``, one message per run.

Cloud Scheduler (locally emulators/scheduler.py, or ``make tick JOB=...``) publishes
``{"job": name}`` to the job's topic. A tick delivered later than its job's ``max_age_s`` is
acknowledged and skipped: the next run does the work. A failing job raises, so Pub/Sub retries it
within that age. Every run logs one line with what it did and its Firestore reads and writes.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from shared.pipeline.decoding import PushedMessage
from shared.platform import logs, topology

log = logs.get_logger("ticks")


def _sweep(job: str, now: datetime) -> dict[str, Any]:
    # lazy: each scheduled function loads only the service its own jobs run
    from shared.services import sweep

    return sweep.run(now)


def _report(job: str, now: datetime) -> dict[str, Any]:
    # lazy: each scheduled function loads only the service its own jobs run
    from shared.services import reports

    return reports.run(job, now)


def _jobs(job: str, now: datetime) -> dict[str, Any]:
    # lazy: each scheduled function loads only the service its own jobs run
    from shared.training import follow

    return follow.reconcile(now)


def _retrain(job: str, now: datetime) -> dict[str, Any]:
    # lazy: each scheduled function loads only the service its own jobs run
    from shared.ml import runs

    return runs.launch(now)


#: What each scheduled job runs (a unit test checks every schedule in the manifest has one).
JOBS: dict[str, Callable[[str, datetime], dict[str, Any]]] = {
    "liveness-sweep": _sweep,
    "hourly-summary": _report,
    "daily-report": _report,
    "jobs-reconcile": _jobs,
    "model-retrain": _retrain,
}


def job_of(message: PushedMessage) -> str | None:
    try:
        body = json.loads(message.raw or b"{}")
    except (ValueError, UnicodeDecodeError):
        body = {}
    job = body.get("job") if isinstance(body, dict) else None
    return str(job or message.attributes.get("job") or "") or None


def handle(message: PushedMessage, function: str) -> str:
    """Run the job a tick names, if it belongs to ``function`` and is fresh; returns the outcome."""
    now = datetime.now(UTC)
    job = job_of(message)
    fields: dict[str, Any] = {"job": job, "message_id": message.message_id, "function": function}
    schedules = {s.name: s for s in topology.load().schedules}
    schedule = schedules.get(job or "")
    if schedule is None or schedule.function != function or job not in JOBS:
        logs.log(log, f"tick for unknown job {job!r} ignored", logging.WARNING, outcome="rejected", **fields)
        return "rejected"
    age = (now - message.published_at).total_seconds()
    if age > schedule.max_age_s:
        logs.log(log, f"{job}: tick {age:.0f}s old skipped", logging.WARNING, outcome="stale", age_s=age, **fields)
        return "stale"
    with logs.invocation(log, f"{job} failed", **fields) as entry:
        result = JOBS[job](job, now)
        entry.outcome(f"{job} done", outcome="done", result=result)
    return "done"
