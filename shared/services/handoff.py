"""Work handed to Pub/Sub (topic ``fleet-actions``, function ``fleet-actions``): what a Slack request
must not do within Slack's 3 seconds (apply an approved request, update its message, tell the
requester), a training job to launch, and critical notices to send now (the event functions hold no
Slack token, and must not wait on Slack). Each message names its work by ``kind`` and carries ids
only; the handler re-reads the state, so a redelivery finds the work done and does nothing twice."""

from __future__ import annotations

import json
from typing import Any

from shared.platform import logs, metering, settings
from shared.services import agent_commands

TOPIC = "fleet-actions"  # in topology.yaml (internal: true)
APPROVAL_DECIDED = "approval.decided"
#: Launch an admitted training job (shared/training/launch.py); idempotent.
JOB_LAUNCH = "job.launch"
#: Send critical notices now (shared/services/notifier.py ``deliver``): handed over by the function that
#: committed them, which holds no Slack token; claimed through the outbox, so idempotent.
ALERTS_NOW = "alerts.now"


def publish(kind: str, **fields: Any) -> str:
    """Publish one work item and wait for Pub/Sub to take it; returns the message id."""
    client = agent_commands.publisher()
    topic = client.topic_path(settings.get().project, TOPIC)
    body = json.dumps({"kind": kind, **fields}, separators=(",", ":"), default=str).encode()
    message_id = str(client.publish(topic, body, kind=kind).result(timeout=agent_commands.PUBLISH_TIMEOUT_S))
    metering.count_publish()
    return message_id


def hand_over(kind: str, **fields: Any) -> bool:
    """Publish a work item whose loss is recovered later (the minute job, the reconcile tick): a failed
    publish is logged and reported as False instead of failing the caller."""
    try:
        publish(kind, **fields)
    except Exception as exc:
        logs.log(logs.get_logger("work"), f"{kind} not handed over yet: {exc}", kind=kind, **fields)
        return False
    return True
