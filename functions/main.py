"""Cloud Functions (gen2) entry points. Each is a few lines: decode, call shared/, reply.

Pub/Sub-triggered functions are CloudEvent functions: functions-framework turns a push
subscription's body into a CloudEvent whose id is the message id, exactly as Eventarc does.
Returning acknowledges the message; raising makes Pub/Sub redeliver it.
Heavy clients (Firestore) are imported on first use, not here, to keep cold starts short.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

# Deployed, the source root (shared/, topology.yaml) is the function's source, not an installed package.
_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import functions_framework
from cloudevents.http import CloudEvent
from fleet_agent.contracts import EventType

from shared.pipeline import handlers
from shared.pipeline.decoding import PushedMessage, message_from_cloudevent

#: The event type each Pub/Sub entry point expects (tests check it against topology.yaml).
EXPECTS: dict[str, EventType] = {
    "on_registration": EventType.REGISTRATION,
    "on_heartbeat": EventType.HEARTBEAT,
    "on_cost": EventType.COST,
    "on_approval_request": EventType.APPROVAL,
    "on_job_progress": EventType.JOB_PROGRESS,
    "on_command_ack": EventType.COMMAND_ACK,
}


def _message(event: CloudEvent) -> PushedMessage:
    return message_from_cloudevent(event.data, event_id=event["id"], time=event.get("time"), source=event["source"])


@functions_framework.cloud_event
def on_registration(event: CloudEvent) -> None:
    handlers.handle_push(_message(event), EventType.REGISTRATION, handlers.process_registration)


@functions_framework.cloud_event
def on_heartbeat(event: CloudEvent) -> None:
    handlers.handle_push(_message(event), EventType.HEARTBEAT, handlers.process_heartbeat)


@functions_framework.cloud_event
def on_cost(event: CloudEvent) -> None:
    handlers.handle_push(_message(event), EventType.COST, handlers.process_cost)


@functions_framework.cloud_event
def on_sweep(event: CloudEvent) -> None:
    """The minute job (Cloud Scheduler tick): liveness sweep, alert reminders, the Slack outbox."""
    # lazy: only the scheduled functions load the tick runner and its services
    from shared.pipeline import ticks

    ticks.handle(_message(event), "fleet-sweep")


@functions_framework.cloud_event
def on_report(event: CloudEvent) -> None:
    """Hourly summary and daily cost report (Cloud Scheduler ticks)."""
    # lazy: only the scheduled functions load the tick runner and its services
    from shared.pipeline import ticks

    ticks.handle(_message(event), "fleet-reports")


@functions_framework.http
def on_dead_letter(request: Any) -> tuple[str, int]:
    """Dead-letter topics' push target. An HTTP function that reads the raw push body itself, so
    even a message functions-framework cannot turn into a CloudEvent (no data) is recorded, not
    retried until retention runs out."""
    body = request.get_json(silent=True) or {}
    message = message_from_cloudevent(
        body, event_id="", time=None, source=str(body.get("subscription") or request.path)
    )
    handlers.handle_dead_letter(message)
    return "", 204


@functions_framework.http
def api(request: Any) -> Any:
    # lazy: only fleet-api loads the REST API (its routes, bodies and OpenAPI document)
    from shared.api import router

    return router.handle(request)


@functions_framework.http
def console(request: Any) -> Any:
    """The web console (fleet-console): server-rendered pages signed in with an API key."""
    # lazy: only fleet-console loads the console's templates and pages
    from shared.console import app as console_app

    return console_app.handle(request)


@functions_framework.http
def otlp(request: Any) -> Any:
    """OTLP/HTTP traces (fleet-otlp, ``POST /v1/traces``): model-call spans counted as the agent's calls."""
    # lazy: only fleet-otlp loads the OpenTelemetry protobuf messages and the cost path
    from shared.otlp import ingest

    return ingest.handle(request)


@functions_framework.cloud_event
def bench_baseline(event: CloudEvent) -> None:
    """The bare baseline of `make bench`: the same push path, one Firestore write, nothing else."""
    # lazy: only the benchmark's baseline function loads it
    from shared.pipeline import bench_baseline as baseline

    baseline.write_one(_message(event))


@functions_framework.http
def slack_app(request: Any) -> Any:
    """The Slack app's request URL: ``/fleet`` slash commands and button clicks (signed by Slack)."""
    # lazy: only fleet-slack loads the Bolt app and slack_sdk
    from shared.slack import app as app

    return app.handle(request)


@functions_framework.cloud_event
def on_approval_request(event: CloudEvent) -> None:
    """An agent asks for approval (``agent-approvals``): stored once, posted to its approvers."""
    handlers.handle_push(_message(event), EventType.APPROVAL, handlers.process_approval_request)


@functions_framework.cloud_event
def on_action(event: CloudEvent) -> None:
    """Work handed over by the Slack app (``fleet-actions``): carry out a decided approval."""
    # lazy: only fleet-actions loads the worker (approvals, launchers)
    from shared.pipeline import fleet_actions

    fleet_actions.handle(_message(event))


@functions_framework.cloud_event
def on_job_progress(event: CloudEvent) -> None:
    """A training run's progress and final metrics (``job-progress``)."""
    handlers.handle_push(_message(event), EventType.JOB_PROGRESS, handlers.process_job_progress)


@functions_framework.cloud_event
def on_command_ack(event: CloudEvent) -> None:
    """An agent acknowledges a remediation command (``agent-command-acks``)."""
    handlers.handle_push(_message(event), EventType.COMMAND_ACK, handlers.process_command_ack)


@functions_framework.cloud_event
def on_jobs_tick(event: CloudEvent) -> None:
    """The reconcile tick of training jobs (Cloud Scheduler): follow, settle, admit."""
    # lazy: only the scheduled functions load the tick runner and its services
    from shared.pipeline import ticks

    ticks.handle(_message(event), "fleet-jobs")
