"""The ``fleet-actions`` function: work the Slack app handed to Pub/Sub (shared/work.py).

Acknowledged when done or when the message can never be done (unknown kind, malformed: logged, not
retried forever); raises on a transient failure (Firestore, Slack unavailable) so Pub/Sub redelivers.
Each kind re-reads its state, so a redelivery finds finished work finished.
"""

from __future__ import annotations

import json
import logging
import re
import time
from datetime import UTC, datetime
from typing import Any

from fleet_agent.contracts import JOB_ID_PATTERN

from shared import logs, work
from shared.events import PushedMessage
from shared.store import db

log = logs.get_logger("actions")

#: Outcomes that are the message's fault, and the reason recorded for them.
REJECTED = {
    "malformed": "a fleet-actions message must be a JSON object with its kind and ids",
    "unknown_kind": f"unknown kind; this version handles {work.APPROVAL_DECIDED} and {work.JOB_LAUNCH}",
}


def handle(message: PushedMessage) -> str:
    started = time.perf_counter()
    fields: dict[str, Any] = {"message_id": message.message_id}
    with db.metered() as meter:
        try:
            outcome = _run(message, fields)
            level = logging.INFO if outcome in ("done", "nothing_to_do") else logging.WARNING
            if outcome in REJECTED:
                # Never retried (it cannot succeed), but recorded with its payload, like agents' bad events.
                from shared.domain.rejections import Code, Rejected
                from shared.handlers import record_rejection

                record_rejection(Rejected(Code.BAD_ENVELOPE, REJECTED[outcome]), message, "action")
        except Exception as exc:
            logs.log(
                log,
                "action failed; Pub/Sub will redeliver",
                logging.ERROR,
                error=f"{type(exc).__name__}: {exc}",
                firestore_reads=meter.reads,
                firestore_writes=meter.writes,
                **fields,
            )
            raise
        logs.log(
            log,
            f"action {fields.get('kind', '?')} {outcome}",
            level,
            outcome=outcome,
            firestore_reads=meter.reads,
            firestore_writes=meter.writes,
            publishes=meter.publishes,
            duration_ms=round((time.perf_counter() - started) * 1000, 2),
            **fields,
        )
    return outcome


def _run(message: PushedMessage, fields: dict[str, Any]) -> str:
    try:
        body = json.loads(message.raw)
    except ValueError:
        return "malformed"
    if not isinstance(body, dict):
        return "malformed"
    kind = fields["kind"] = str(body.get("kind") or "")
    if kind == work.APPROVAL_DECIDED:
        from shared import approvals

        approval_id = fields["approval_id"] = str(body.get("approval_id") or "")
        if not approval_id:
            return "malformed"
        done = approvals.carry_out(approval_id, datetime.now(UTC))
        return "done" if done is not None else "nothing_to_do"
    if kind == work.JOB_LAUNCH:
        from shared.training import launch

        job_id = fields["job_id"] = str(body.get("job_id") or "")
        if not re.match(JOB_ID_PATTERN, job_id):
            return "malformed"
        outcome = launch.launch(job_id, datetime.now(UTC))
        return "done" if outcome in ("launched", "failed", "cancelled") else "nothing_to_do"
    return "unknown_kind"
