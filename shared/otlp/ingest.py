"""``POST /v1/traces`` (fleet-otlp): authenticate, decode, map the spans, count each call once (docs/otlp.md).

Every call is counted by the cost path's own counting (shared/services/accounting.py ``count_batch``), in
cost batches that keep ``CostBatch``'s bounds, with one marker per call created in the same commit
(``cost_batches/{agent}.otel.<call id>``): a span re-exported in any grouping is counted once. A commit
that meets a marker counts nothing; the markers of its calls are then read (one ``get_all``) and the calls
not counted yet are committed again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from fleet_agent.contracts import CostBatch, CostRecord
from fleet_agent.messages.costs import MAX_BATCH_OPERATIONS, MAX_BATCH_RECORDS, MAX_BATCH_SPAN
from google.api_core import exceptions
from werkzeug.exceptions import RequestEntityTooLarge

from shared.domain.agent_record import AgentRecord
from shared.domain.rejections import Code, Payload, Rejected
from shared.otlp import auth, decode, spans
from shared.platform import logs, metering, settings
from shared.services import accounting, forged_events
from shared.store import db, rejections
from shared.store.increments import Increments
from shared.store.usage import MARKERS

log = logs.get_logger("otlp")
PATH = "/v1/traces"
SOURCE = "fleet-otlp"
#: A span attribute naming the call's operation (default: ``gen_ai.operation.name``), e.g. ``app.operation``.
OPERATION_ENV = "FLEET_OTLP_OPERATION_ATTRIBUTE"
#: Commits of one batch of calls before giving up (503) while concurrent exports of the same spans race.
MAX_ATTEMPTS = 3
#: Refusals recorded per (agent, code) on one instance: one per this many seconds, the others logged only, so
#: a caller replaying a token of a real key cannot make the fleet write per request (docs/otlp.md).
RECORD_EVERY_S = 60.0
MAX_RECORDED_KEYS = 10_000
READ_CHUNK = 64 * 1024
#: Re-exports reconciled per agent on one instance: one per this many seconds.
RECONCILE_EVERY_S = 60.0


class Every:
    """At most once per ``seconds`` per key on this instance (``due``, then ``mark`` once done); at most
    MAX_RECORDED_KEYS keys, all forgotten when full (a forgotten key is merely due again)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._last: dict[Any, float] = {}

    def due(self, key: Any) -> bool:
        return time.monotonic() - self._last.get(key, -self.seconds) >= self.seconds

    def mark(self, key: Any) -> None:
        if len(self._last) >= MAX_RECORDED_KEYS:
            self._last.clear()
        self._last[key] = time.monotonic()


_recorded = Every(RECORD_EVERY_S)
_reconciled = Every(RECONCILE_EVERY_S)


def marker_id(agent_id: str, call_id: str) -> str:
    return f"{agent_id}.otel.{call_id}"


def batch_id(records: list[CostRecord]) -> str:
    """A batch's id from its sorted call ids: the same calls, however grouped before, give the same id."""
    return "otlp." + hashlib.sha256("\n".join(sorted(r.call_id for r in records)).encode()).hexdigest()[:40]


def chunks(records: list[CostRecord]) -> list[list[CostRecord]]:
    """The calls in time order, cut into batches within ``CostBatch``'s bounds (records, span, operations)."""
    out: list[list[CostRecord]] = []
    current: list[CostRecord] = []
    ops: set[str] = set()
    for record in sorted(records, key=lambda r: (r.at, r.call_id)):
        full = len(current) >= MAX_BATCH_RECORDS or (record.operation not in ops and len(ops) >= MAX_BATCH_OPERATIONS)
        if current and (full or record.at - current[0].at > MAX_BATCH_SPAN):
            out.append(current)
            current, ops = [], set()
        current.append(record)
        ops.add(record.operation)
    if current:
        out.append(current)
    return out


@dataclass
class Counted:
    calls: int = 0
    duplicates: int = 0
    commands: list[str] = field(default_factory=list)
    #: Calls of the batches the counting refused, each whole (a ``Rejected``, data Firestore refuses), and why:
    #: the other batches of the request are counted all the same (a partial success).
    refused: int = 0
    reasons: list[tuple[int, str, str]] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)


def _markers(agent: AgentRecord, records: list[CostRecord], now: datetime) -> list[Increments]:
    expire = now + accounting.marker_retention(settings.get().retention_days)
    out = []
    for record in records:
        marker = Increments(
            marker_id(agent.agent_id, record.call_id),
            {"agent_id": agent.agent_id, "tenant": agent.tenant, "call_id": record.call_id, "source": SOURCE,
             "received_at": now, "expire_at": expire},
            collection=MARKERS,
        )  # fmt: skip
        marker.must_not_exist = True
        out.append(marker)
    return out


def _already_counted(agent_id: str, records: list[CostRecord]) -> set[str]:
    """The call ids among ``records`` whose marker exists (one batched read, one read per call)."""
    client = db.client()
    refs = [client.collection(MARKERS).document(marker_id(agent_id, r.call_id)) for r in records]
    metering.count(reads=len(refs))
    return {doc.get("call_id") for doc in client.get_all(refs, **db.call_options()) if doc.exists}


def count(agent: AgentRecord, records: list[CostRecord], now: datetime, out: Counted | None = None) -> Counted:
    """Count every call not counted before, each exactly once (module docstring). ``out`` (filled as it goes)
    still says what was counted when a batch raises for a retry (503)."""
    out = Counted() if out is None else out
    for chunk in chunks(records):
        _count_chunk(agent, chunk, now, out)
    _reconcile_reexport(agent, now, out)
    return out


def _count_chunk(agent: AgentRecord, chunk: list[CostRecord], now: datetime, out: Counted) -> None:
    """One batch's calls, those not counted yet; refused whole when the counting refuses it (the calls not
    counted before it: the others are duplicates)."""
    pending = chunk
    for _attempt in range(MAX_ATTEMPTS):
        batch = CostBatch(agent_id=agent.agent_id, batch_id=batch_id(pending), records=pending)
        try:
            plan = accounting.count_batch(
                agent, batch, received_at=now, judged_at=now, now=now, markers=_markers(agent, pending, now),
                redelivery=False,
            )  # fmt: skip
        except Rejected as rejected:
            out.refused += len(pending)
            out.reasons.append((len(pending), rejected.code.value, rejected.reason))
            out.rejected.append(rejected)
            return
        except db.permanent_errors() as exc:  # Firestore refuses this data: retrying cannot help
            out.refused += len(pending)
            out.reasons.append((len(pending), Code.UNSTORABLE.value, f"{type(exc).__name__}: {exc}"[:300]))
            return
        if plan.skipped != "duplicate":
            out.calls += len(pending)
            out.commands += [f"{c.command.value}:{c.agent_id}" for c in plan.commands]
            break
        done = _already_counted(agent.agent_id, pending)
        # No call marker but a duplicate: the batch marker of these very calls (written with their markers).
        done = done or {r.call_id for r in pending}
        out.duplicates += len(done)
        pending = [r for r in pending if r.call_id not in done]
        if not pending:
            break
    else:
        raise accounting.InputsUnavailable(f"{len(pending)} calls still racing after {MAX_ATTEMPTS} commits")


def _reconcile_reexport(agent: AgentRecord, now: datetime, out: Counted) -> None:
    if out.duplicates and not out.calls and _reconciled.due(agent.agent_id):
        # A re-export of calls all counted before: re-derive their effects, as a redelivered cost batch does
        # (an earlier export may have failed after counting); once a minute per agent on this instance, so
        # re-sent requests do not re-publish every hold each time.
        sent = accounting.reconcile(agent.agent_id, now=now, actor="system:otlp-reexport", resend=True,
                                    lift_expired=True)  # fmt: skip
        _reconciled.mark(agent.agent_id)  # only once it succeeded: a failed one is tried on the retry
        out.commands += [f"{c.command.value}:{c.agent_id}" for c in sent]


def _error(status: int, code: str, reason: str) -> tuple[bytes, int, dict[str, str]]:
    body = json.dumps({"error": {"code": code, "reason": reason}}).encode()
    return body, status, {"Content-Type": "application/json"}


def _record(rejected: Rejected, body: bytes, request_id: str, now: datetime, fields: dict[str, Any]) -> None:
    """A refusal kept like an agent event's (``rejections``; unproven ones count towards forged_events), at
    most one per agent and code per RECORD_EVERY_S on this instance: the others are logged only."""
    key = (rejected.agent_id or "", rejected.code.value)
    if not _recorded.due(key):
        fields["recorded"] = False
        return
    _recorded.mark(key)
    rejections.record(rejected, message_id=request_id, source=SOURCE, event_type="otlp_traces",
                      payload=Payload.of(body, {}), received_at=now)  # fmt: skip
    forged_events.note(rejected, now)
    fields["recorded"] = True


def handle(request: Any) -> tuple[bytes, int, dict[str, str]]:
    """One OTLP/HTTP request (a Flask request, as functions-framework gives it)."""
    now = datetime.now(UTC)
    with logs.invocation(log, "otlp failed", path=request.path) as entry:
        status, outcome, reply = _handle(request, now, entry.fields)
        level = logging.INFO if status == 200 else logging.WARNING
        entry.outcome(f"otlp {outcome}", level, outcome=outcome, status=status)
        return reply


def read_body(request: Any, limit: int = decode.MAX_BODY_BYTES) -> bytes | None:
    """The body, or None when it is over ``limit``: never more than ``limit`` + 1 bytes read, whether its
    length is announced (Content-Length) or not (``Transfer-Encoding: chunked``)."""
    if (request.content_length or 0) > limit:
        return None
    parts: list[bytes] = []
    size = 0
    try:
        while size <= limit:
            part = request.stream.read(min(READ_CHUNK, limit + 1 - size))
            if not part:
                break
            parts.append(part)
            size += len(part)
    except RequestEntityTooLarge:  # werkzeug's own cap (max_content_length), when the server sets one
        return None
    return None if size > limit else b"".join(parts)


def _handle(request: Any, now: datetime, fields: dict[str, Any]) -> tuple[int, str, tuple[bytes, int, dict[str, str]]]:
    if request.path.rstrip("/") != PATH:
        return 404, "not_found", _error(404, "not_found", f"OTLP traces are posted to {PATH}")
    if request.method != "POST":
        return 405, "method", _error(405, "method_not_allowed", f"POST {PATH}")
    body = read_body(request)
    if body is None:
        return 413, "too_large", _error(413, "too_large", f"the body is over {decode.MAX_BODY_BYTES} bytes")
    header = request.headers.get("Authorization")
    request_id = "otlp-" + hashlib.sha256((header or "").encode() + b"\n" + body).hexdigest()[:40]
    try:  # the agent first: nothing of a refused request is decoded or counted
        agent = auth.checked(header, now)
    except auth.AuthRefused as refused:
        fields.update(code=refused.code, reason=refused.reason)
        if refused.rejected is not None:
            _record(refused.rejected, body, request_id, now, fields)
        return refused.status, "refused", _error(refused.status, refused.code, refused.reason)
    fields.update(agent_id=agent.agent_id, tenant=agent.tenant)
    try:
        export, as_json = decode.decode(
            body, request.headers.get("Content-Type"), request.headers.get("Content-Encoding")
        )
    except decode.Refused as refused:
        fields.update(code=refused.code, reason=refused.reason)
        return refused.status, "malformed", _error(refused.status, refused.code, refused.reason)
    mapped = spans.map_request(
        export, operation_attribute=os.environ.get(OPERATION_ENV) or None, now=now,
        max_ahead=accounting.MAX_AHEAD, max_behind=accounting.MAX_BEHIND,
    )  # fmt: skip
    fields.update(spans=mapped.spans, ignored=mapped.ignored, refused_spans=len(mapped.refused),
                  providers=dict(mapped.providers), cache_added=mapped.cache_added)  # fmt: skip
    foreign = sorted(mapped.claimed - {agent.agent_id})
    if foreign:
        reason = f"spans name agent {', '.join(foreign[:3])} but the token is agent {agent.agent_id}'s"
        _record(Rejected(Code.AGENT_MISMATCH, reason, agent_id=agent.agent_id, tenant=agent.tenant), body,
                request_id, now, fields)  # fmt: skip
        fields.update(code=Code.AGENT_MISMATCH.value, reason=reason)
        return 403, "refused", _error(403, Code.AGENT_MISMATCH.value, reason)
    counted = Counted()
    try:
        count(agent, mapped.calls, now, counted)
    except (accounting.InputsUnavailable, accounting.EffectsFailed, exceptions.GoogleAPIError) as exc:
        # Retried by the exporter (503 is retryable in OTLP/HTTP, 500 is not); counted calls are not counted again.
        fields.update(calls=counted.calls, duplicates=counted.duplicates, reason=str(exc)[:500])
        return 503, "retry", _error(503, "unavailable", "try again: " + str(exc)[:200])
    fields.update(calls=counted.calls, duplicates=counted.duplicates)
    if counted.commands:
        fields["commands"] = counted.commands
    for rejected in counted.rejected:
        _record(rejected, body, request_id, now, fields)
    reasons = mapped.refused[: spans.MAX_REASONS]
    if counted.refused:
        _n, code, reason = counted.reasons[0]
        fields.update(code=code, reason=reason[:500], refused_calls=counted.refused)
        if not counted.calls and not counted.duplicates:  # nothing of the request counted: refused whole
            return 400, "rejected", _error(400, code, reason)
        # Some batches counted, others refused: a partial success (OTLP/HTTP: 200, the refused spans counted in
        # rejected_spans), so the exporter does not send the counted ones again for nothing.
        reasons = [f"{n} calls: {kind}: {why}"[:300] for n, kind, why in counted.reasons]
        reasons += mapped.refused[: spans.MAX_REASONS]
    rejected_spans = len(mapped.refused) + counted.refused
    reply, content_type = decode.response(rejected_spans, "; ".join(reasons[: spans.MAX_REASONS]), as_json)
    return 200, "accepted", (reply, 200, {"Content-Type": content_type})
