"""What happens when an agent event arrives: decode, decide (shared.domain), persist (shared.store).

Entry points in functions/main.py call :func:`handle_push`; it turns every outcome into one of
three things: processed (acknowledge), rejected (record the reason and payload, acknowledge),
or transient failure (raise, so Pub/Sub redelivers).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from fleet_agent.contracts import ApprovalRequest, EventType

from shared.domain import agents as agent_domain
from shared.domain import holds, registration_keys
from shared.domain.agent_record import AgentRecord, Plan
from shared.domain.rejections import Code, Payload, Rejected
from shared.domain.remediation import Ask
from shared.pipeline import registrations, signatures
from shared.pipeline.decoding import Decoded, PushedMessage, decode
from shared.platform import logs, settings
from shared.services import agent_commands, forged_events, notifier, remediation
from shared.store import agents as agent_store
from shared.store import config, db, rejections

log = logs.get_logger("handlers")


class RetryLater(Exception):
    """The event cannot be processed yet (for example its agent's registration is in flight)."""


def handle_push(message: PushedMessage, expected: EventType, process: Callable[[Decoded], Plan]) -> str:
    """Decode and process one pushed message; returns the outcome name (for logs and tests)."""
    kind = expected.value
    with logs.invocation(log, f"{kind} failed", message_id=message.message_id, event_type=kind) as entry:
        fields = entry.fields
        try:
            decoded = decode(message, expected)
            fields["agent_id"] = getattr(decoded.event, "agent_id", None)
            plan = process(decoded)
            outcome = plan.skipped or "accepted"
            if plan.commands:
                fields["commands"] = [f"{c.command.value}:{c.agent_id}" for c in plan.commands]
                # One string, for the log-based metric's label (terraform/monitoring.tf).
                fields["enforced"] = ",".join(sorted({c.command.value for c in plan.commands}))
            if plan.transition is not None and plan.transition.outcome.value != "unchanged":
                fields["transition"] = f"{plan.transition.current}->{plan.transition.target}:{plan.transition.outcome}"
        except Rejected as rejected:
            outcome = "rejected"
            fields.update(code=rejected.code.value, reason=rejected.reason, agent_id=rejected.agent_id)
            record_rejection(rejected, message, kind)
        except RetryLater as exc:
            entry.outcome(f"{kind} retry", logging.WARNING, outcome="retry", reason=str(exc))
            raise
        except db.permanent_errors() as exc:
            # Valid by the contract but refused by Firestore itself: retrying cannot help.
            outcome = "rejected"
            unstorable = Rejected(
                Code.UNSTORABLE,
                f"Firestore refused the write: {type(exc).__name__}: {exc}"[:500],
                agent_id=fields.get("agent_id"),
            )
            fields.update(code=unstorable.code.value, reason=unstorable.reason)
            record_rejection(unstorable, message, kind)
        # Any other exception (Firestore unavailable, or a bug) is logged by the envelope and fails the
        # function so Pub/Sub redelivers; after max attempts it lands on the dead-letter topic, recorded there.
        # From the event's publish to its decision committed (and any command it issued published): the
        # enforcement latency of Cloud Monitoring's distribution (terraform/monitoring.tf, docs/metrics.md).
        fields["decision_latency_ms"] = _since(message.published_at)
        entry.outcome(f"{kind} {outcome}", logging.WARNING if outcome == "rejected" else logging.INFO, outcome=outcome)
        return outcome


def _since(published_at: datetime) -> float:
    """Milliseconds from ``published_at`` to now (never negative: Pub/Sub's clock and ours differ)."""
    return max(0.0, round((datetime.now(UTC) - published_at).total_seconds() * 1000, 1))


def record_rejection(rejected: Rejected, message: PushedMessage, event_type: str | None) -> None:
    """Record the refusal with its payload (a registration's enrollment token secret redacted: replaying
    it then fails verification, as it should); an unproven identity is counted towards forged_events."""
    raw = message.raw
    if event_type == EventType.REGISTRATION.value:
        raw = redacted(raw)
    rejections.record(
        rejected,
        message_id=message.message_id,
        source=message.source,
        event_type=event_type,
        payload=Payload.of(raw, message.attributes),
        received_at=message.published_at,
    )
    if rejected.unproven:
        forged_events.note(rejected, message.published_at)


#: An enrollment token's secret, wherever it appears in a body (``afmt1.<id>.<secret>.<fleet key>``).
_TOKEN_SECRET = re.compile(rb"(afmt1\.[a-f0-9]{16}\.)[A-Za-z0-9_-]+")
REDACTED = "redacted"


def redacted(raw: bytes) -> bytes:
    """``raw`` without the enrollment token's secret (its id stays, for diagnosis). The body is re-written
    when it parses (whatever the token's spelling); any token text left is redacted by pattern."""
    try:
        body = json.loads(raw)
        claim = body["data"]["identity"]
        text = claim["enrollment_token"]
    except (ValueError, KeyError, TypeError, RecursionError):
        pass
    else:
        if isinstance(text, str):
            token_id = registration_keys.token_id_of_text(text)
            claim["enrollment_token"] = f"afmt1.{token_id}.{REDACTED}" if token_id else REDACTED
            raw = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
    return _TOKEN_SECRET.sub(rb"\1" + REDACTED.encode(), raw)


def process_registration(decoded: Decoded) -> Plan:
    """Enrollment, rotation, re-registration: shared/pipeline/registrations.py."""
    return registrations.process(decoded)


def unknown_agent(agent_id: str, received_at: datetime) -> Exception:
    """An event for an agent not registered yet: retried for a grace period (its registration may be
    in flight), then rejected."""
    grace = settings.get().unknown_agent_grace_s
    if datetime.now(UTC) - received_at < timedelta(seconds=grace):
        return RetryLater(f"agent {agent_id} is not registered yet; retrying for {grace}s")
    return Rejected(
        Code.UNKNOWN_AGENT,
        f"agent {agent_id} is not registered (waited {grace}s for its registration)",
        agent_id=agent_id,
    )


def process_cost(decoded: Decoded) -> Plan:
    # lazy: the cost rules (~100 ms of imports) stay off the other functions' cold start
    from shared.services import accounting

    return accounting.process_cost(decoded, unknown=unknown_agent)


def process_heartbeat(decoded: Decoded) -> Plan:
    hb = decoded.heartbeat
    cfg = settings.get()
    received_at = decoded.message.published_at

    # lazy: numpy, loaded on the first heartbeat rather than at import (cold start)
    from shared.ml import live

    learned = live.for_heartbeats()

    def decide(current: AgentRecord | None) -> Plan:
        if current is None:
            raise unknown_agent(hb.agent_id, received_at)
        health_config, alerting = config.rules(current.tenant)
        signatures.check(decoded, current)  # on the record the write is made on (module docstring)
        plan = agent_domain.apply_heartbeat(
            current,
            hb,
            received_at=received_at,
            event_id=decoded.event_id,
            chunk_size=cfg.history_chunk_size,
            slots=cfg.history_slots,
            retention=timedelta(days=cfg.retention_days),
            health_config=health_config,
            alerting=alerting,
            learned=learned,
        )
        # A budget hold whose period has reset is lifted on the agent's next heartbeat (or cost batch),
        # in the same write as the heartbeat.
        plan = holds.with_expired_lifted(current, plan, received_at)
        # The tenant's remediation policy on the episodes this write leaves open (nothing when none).
        return remediation.on_heartbeat(current, plan, received_at, asks)

    asks: list[Ask] = []
    plan = agent_store.update(hb.agent_id, decide)
    if plan.commands:  # the health rules quarantined the agent, a budget hold was lifted, the policy acted
        agent_commands.publish(plan.commands)
    notifier.send_now(plan.episodes, by="heartbeat_rules")  # a quarantine (critical): Slack hears now
    remediation.ask(asks, received_at)  # a stop on a critical agent waits for an approver (never raises)
    return plan


def process_approval_request(decoded: Decoded) -> Plan:
    """An agent asks for approval: stored once under an id derived from its request id (a redelivery
    or a repeat finds it), posted to its tenant's approvers. A repeat of a decided request is answered
    again on agent-commands (the agent may have restarted)."""
    # lazy: approvals pull in the Slack client and hand-off (~200 ms), off the other functions' cold start
    from shared.services import approvals

    event = decoded.event
    assert isinstance(event, ApprovalRequest)
    received_at = decoded.message.published_at
    agent = agent_store.get(event.agent_id)  # a read: fresh, so a refusal made on it stands
    if agent is None:
        raise unknown_agent(event.agent_id, received_at)
    signatures.check(decoded, agent)
    if agent.status.value == "decommissioned":
        raise Rejected(Code.DECOMMISSIONED, f"agent {agent.agent_id} was decommissioned", agent_id=agent.agent_id)
    approval = approvals.from_agent(event, agent, now=received_at)
    _stored, new = approvals.request(approval, received_at)
    return Plan() if new else Plan(skipped="duplicate")


def process_job_progress(decoded: Decoded) -> Plan:
    """A training run reports progress or its final metrics (``job-progress``)."""
    # lazy: only fleet-job-progress loads the job rules and the jobs store
    from shared.training import progress

    return progress.process(decoded)


def process_command_ack(decoded: Decoded) -> Plan:
    """An agent acknowledges a remediation command (``agent-command-acks``): shared/pipeline/command_acks.py."""
    # lazy: only fleet-command-acks loads the remediation command rules
    from shared.pipeline import command_acks

    return command_acks.process(decoded, unknown_agent)


def handle_dead_letter(message: PushedMessage) -> str:
    """A message that exhausted its delivery attempts: record it as a rejection, keeping the payload."""
    attrs = message.attributes
    source = attrs.get("CloudPubSubDeadLetterSourceSubscription", message.source)
    original = {k: v for k, v in attrs.items() if not k.startswith("CloudPubSubDeadLetter")}
    rejected = Rejected(
        Code.DELIVERY_EXHAUSTED,
        f"delivery failed {attrs.get('CloudPubSubDeadLetterSourceDeliveryCount', 'too many')} times "
        f"on {source}; kept here for replay",
        agent_id=original.get("agent_id"),
        details={k: v for k, v in attrs.items() if k.startswith("CloudPubSubDeadLetter")},
    )
    # A body without a message id still gets a stable one (a redelivery lands on the same record),
    # instead of an empty document id Firestore refuses, which would retry the dead letter forever.
    message_id = (
        message.message_id
        or "dl-" + hashlib.sha256(message.raw + repr(sorted(attrs.items())).encode()).hexdigest()[:32]
    )
    with logs.invocation(log, source=source, message_id=message_id, agent_id=rejected.agent_id) as entry:
        rejections.record(
            rejected,
            message_id=message_id,
            source=source,
            event_type=original.get("event_type"),
            # A registration that kept failing may carry an enrollment token: its secret is never kept.
            payload=Payload.of(redacted(message.raw), original),
            received_at=message.published_at,
        )
        entry.outcome("dead letter recorded", logging.WARNING, outcome="dead_letter", code=rejected.code.value)
    return "dead_letter"
