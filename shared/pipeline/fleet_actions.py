"""The ``fleet-actions`` function: work the Slack app handed to Pub/Sub (shared/services/handoff.py).

Acknowledged when done or when the message can never be done (unknown kind, malformed: logged, not
retried forever); raises on a transient failure (Firestore, Slack unavailable) so Pub/Sub redelivers.
Each kind re-reads its state, so a redelivery finds finished work finished.
"""

from __future__ import annotations

import json
import logging
import re
from datetime import UTC, datetime
from typing import Any

from fleet_agent.contracts import JOB_ID_PATTERN

from shared.pipeline.decoding import PushedMessage
from shared.platform import logs
from shared.services import handoff

log = logs.get_logger("actions")

#: Outcomes that are the message's fault, and the reason recorded for them.
REJECTED = {
    "malformed": "a fleet-actions message must be a JSON object with its kind and ids",
    "unknown_kind": f"unknown kind; this version handles {handoff.APPROVAL_DECIDED} and {handoff.JOB_LAUNCH}",
}


def handle(message: PushedMessage) -> str:
    with logs.invocation(log, "action failed; Pub/Sub will redeliver", message_id=message.message_id) as entry:
        outcome = _run(message, entry.fields)
        level = logging.INFO if outcome in ("done", "nothing_to_do") else logging.WARNING
        if outcome in REJECTED:
            # Never retried (it cannot succeed), but recorded with its payload, like agents' bad events.
            from shared.domain.rejections import Code, Rejected
            from shared.pipeline.handlers import record_rejection

            record_rejection(Rejected(Code.BAD_ENVELOPE, REJECTED[outcome]), message, "action")
        entry.outcome(f"action {entry.fields.get('kind', '?')} {outcome}", level, outcome=outcome)
    return outcome


def _run(message: PushedMessage, fields: dict[str, Any]) -> str:
    try:
        body = json.loads(message.raw)
    except ValueError:
        return "malformed"
    if not isinstance(body, dict):
        return "malformed"
    kind = fields["kind"] = str(body.get("kind") or "")
    if kind == handoff.APPROVAL_DECIDED:
        from shared.services import approvals

        approval_id = fields["approval_id"] = str(body.get("approval_id") or "")
        if not approval_id:
            return "malformed"
        done = approvals.carry_out(approval_id, datetime.now(UTC))
        return "done" if done is not None else "nothing_to_do"
    if kind == handoff.JOB_LAUNCH:
        from shared.training import launch

        job_id = fields["job_id"] = str(body.get("job_id") or "")
        if not re.match(JOB_ID_PATTERN, job_id):
            return "malformed"
        outcome = launch.launch(job_id, datetime.now(UTC))
        return "done" if outcome in ("launched", "failed", "cancelled") else "nothing_to_do"
    return "unknown_kind"
