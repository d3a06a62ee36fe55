"""The OTLP ingest's counting and HTTP handling: calls cut into cost batches, the exactly-once retries
(markers met, concurrent exports, attempts exhausted, re-exports reconciled), bodies read with a cap, refusals
recorded at a bounded rate, and a request's status (a bad span is a partial success, never a 500)."""

from __future__ import annotations

import gzip
import io
import json
from datetime import timedelta
from typing import Any

import pytest
from fleet_agent.contracts import CostRecord
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from shared.domain.rejections import Code, Rejected
from shared.otlp import auth, decode, ingest
from shared.store.increments import Increments
from tests.unit.test_otlp import CHAT, NOW, export, record


def call(n: int, *, minutes: float = 0, op: str = "chat") -> CostRecord:
    return CostRecord(call_id=f"{n:048x}", at=NOW + timedelta(minutes=minutes), model="m", input_tokens=1,
                      output_tokens=1, success=True, latency_ms=1, operation=op)  # fmt: skip


def test_calls_are_cut_into_batches_within_the_cost_batch_bounds() -> None:
    assert [len(c) for c in ingest.chunks([call(n) for n in range(450)])] == [200, 200, 50]
    assert [len(c) for c in ingest.chunks([call(n, op=f"op{n}") for n in range(60)])] == [50, 10]
    assert [len(c) for c in ingest.chunks([call(1), call(2, minutes=61), call(3, minutes=30)])] == [2, 1]


def test_a_batch_id_is_the_same_however_its_calls_are_ordered() -> None:
    calls = [call(n) for n in range(5)]
    assert ingest.batch_id(calls) == ingest.batch_id(calls[::-1]) != ingest.batch_id(calls[:4])


def test_a_call_marker_is_a_create_its_commit_fails_on_an_existing_one() -> None:
    marker = Increments("chat-1.otel.x", {"call_id": "x"}, collection="cost_batches")
    assert not marker.to_pb("projects/p/databases/(default)/documents/cost_batches/a")._pb.HasField("current_document")
    marker.must_not_exist = True
    written = marker.to_pb("projects/p/databases/(default)/documents/cost_batches/a")._pb
    assert written.current_document.HasField("exists") and written.current_document.exists is False
    assert list(written.update_mask.field_paths) == ["call_id"]


def test_refusals_are_recorded_once_per_agent_and_code_a_minute(monkeypatch: pytest.MonkeyPatch) -> None:
    written: list[str] = []
    monkeypatch.setattr(ingest.rejections, "record", lambda rejected, **_kw: written.append(rejected.code.value))
    monkeypatch.setattr(ingest.forged_events, "note", lambda rejected, _now: written.append("forged"))
    monkeypatch.setattr(ingest, "_recorded", ingest.Every(ingest.RECORD_EVERY_S))
    clock = [1000.0]
    monkeypatch.setattr(ingest.time, "monotonic", lambda: clock[0])
    bad = Rejected(Code.BAD_SIGNATURE, "x", agent_id="chat-1", tenant="acme")
    fields: dict[str, Any] = {}
    for body in (b"1", b"2", b"3"):  # distinct bodies (distinct request ids): still one record
        ingest._record(bad, body, "r" + body.decode(), NOW, fields)
    assert written == ["bad_signature", "forged"] and fields["recorded"] is False
    ingest._record(Rejected(Code.TOKEN_EXPIRED, "x", agent_id="chat-1"), b"4", "r4", NOW, fields)
    ingest._record(Rejected(Code.BAD_SIGNATURE, "x", agent_id="chat-2"), b"5", "r5", NOW, fields)
    clock[0] += ingest.RECORD_EVERY_S
    ingest._record(bad, b"6", "r6", NOW, fields)
    assert written.count("forged") == 4 and fields["recorded"] is True


class Posted:
    """A request as werkzeug gives it: a stream, and Content-Length when the client sent one."""

    def __init__(self, body: bytes, *, announced: bool) -> None:
        self.stream = io.BytesIO(body)
        self.content_length = len(body) if announced else None


@pytest.mark.parametrize("announced", [True, False])
def test_a_body_is_read_up_to_the_limit_whether_chunked_or_not(announced: bool) -> None:
    assert ingest.read_body(Posted(b"x" * 100, announced=announced), limit=100) == b"x" * 100
    over = Posted(b"x" * 10_000_000, announced=announced)
    assert ingest.read_body(over, limit=100) is None
    assert over.stream.tell() == (0 if announced else 101)  # read no further than the limit + 1


class Script:
    """``count_batch``, ``_already_counted`` and ``reconcile`` scripted: what each commit meets, which markers
    exist after it, and what was committed."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, outcomes: list[Any], markers: list[set[str]]) -> None:
        self.outcomes, self.markers = outcomes, markers
        self.batches: list[tuple[str, list[str]]] = []
        self.reconciled = 0
        monkeypatch.setattr(ingest, "_markers", lambda *_a: [])
        monkeypatch.setattr(ingest.accounting, "count_batch", self.count_batch)
        monkeypatch.setattr(ingest, "_already_counted", lambda _agent, _records: self.markers.pop(0))
        monkeypatch.setattr(ingest.accounting, "reconcile", self.reconcile)
        monkeypatch.setattr(ingest, "_reconciled", ingest.Every(ingest.RECONCILE_EVERY_S))

    def count_batch(self, _agent: Any, batch: Any, **_kw: Any) -> Any:
        self.batches.append((batch.batch_id, [r.call_id for r in batch.records]))
        outcome: Any = self.outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return type("Plan", (), {"skipped": outcome, "commands": []})()

    def reconcile(self, *_a: Any, **_kw: Any) -> list[Any]:
        self.reconciled += 1
        return []


CALLS = [call(n) for n in range(5)]
IDS = [c.call_id for c in CALLS]


def test_a_batch_meeting_markers_commits_only_the_calls_not_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    script = Script(monkeypatch, ["duplicate", None], [set(IDS[:2])])
    counted = ingest.count(record(), CALLS, NOW)
    assert (counted.calls, counted.duplicates, script.reconciled) == (3, 2, 0)
    (first, ids_1), (second, ids_2) = script.batches
    assert ids_1 == IDS and ids_2 == IDS[2:] and second == ingest.batch_id(CALLS[2:]) != first


def test_concurrent_exports_are_retried_until_the_rest_is_committed(monkeypatch: pytest.MonkeyPatch) -> None:
    script = Script(monkeypatch, ["duplicate", "duplicate", None], [{IDS[0]}, {IDS[1]}])
    counted = ingest.count(record(), CALLS, NOW)
    assert (counted.calls, counted.duplicates) == (3, 2)
    assert [ids for _b, ids in script.batches] == [IDS, IDS[1:], IDS[2:]]


def test_three_conflicting_commits_give_up_so_the_exporter_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    Script(monkeypatch, ["duplicate"] * 3, [{IDS[0]}, {IDS[1]}, {IDS[2]}])
    with pytest.raises(ingest.accounting.InputsUnavailable):
        ingest.count(record(), CALLS, NOW)


@pytest.mark.parametrize("markers", [set(IDS), set()], ids=["call markers", "batch marker only"])
def test_a_request_counted_before_reconciles_once_and_counts_nothing(
    monkeypatch: pytest.MonkeyPatch, markers: set[str]
) -> None:
    script = Script(monkeypatch, ["duplicate"], [markers])
    counted = ingest.count(record(), CALLS, NOW)
    assert (counted.calls, counted.duplicates, script.reconciled, len(script.batches)) == (0, 5, 1, 1)


def test_re_exports_reconcile_once_a_minute_per_agent(monkeypatch: pytest.MonkeyPatch) -> None:
    script = Script(monkeypatch, ["duplicate"] * 4, [set(IDS)] * 4)
    clock = [1000.0]
    monkeypatch.setattr(ingest.time, "monotonic", lambda: clock[0])
    for _ in range(2):
        ingest.count(record(), CALLS, NOW)
    ingest.count(record(agent_id="chat-2"), CALLS, NOW)
    clock[0] += ingest.RECONCILE_EVERY_S
    ingest.count(record(), CALLS, NOW)
    assert script.reconciled == 3


def test_a_partial_reexport_does_not_reconcile(monkeypatch: pytest.MonkeyPatch) -> None:
    chunks = [call(n) for n in range(200)] + [call(900, minutes=1)]
    script = Script(monkeypatch, ["duplicate", None], [{c.call_id for c in chunks[:200]}])
    counted = ingest.count(record(), chunks, NOW)
    assert (counted.calls, counted.duplicates, script.reconciled) == (1, 200, 0)


class Request(Posted):
    path, method = "/v1/traces", "POST"

    def __init__(self, body: bytes, **headers: str) -> None:
        super().__init__(body, announced=False)
        self.headers = {"Content-Type": decode.PROTOBUF, "Authorization": "Bearer x", **headers}


def test_a_bad_span_is_a_partial_success_and_a_lost_race_a_503_never_a_500(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(auth, "checked", lambda _header, _now: record())
    counted: list[int] = []

    def count(_agent: Any, calls: list[CostRecord], _now: Any, out: ingest.Counted) -> ingest.Counted:
        counted.append(len(calls))
        return out

    monkeypatch.setattr(ingest, "count", count)
    bad = {**CHAT, "gen_ai.usage.input_tokens": float("inf"), "gen_ai.usage.cost": "Infinity"}
    body = export({"attrs": CHAT}, {"attrs": bad}, {"attrs": {**CHAT, "gen_ai.usage.cost": "1e30"}})
    reply, status, _headers = ingest.handle(Request(body.SerializeToString()))
    answer = ExportTraceServiceResponse.FromString(reply)
    assert (status, answer.partial_success.rejected_spans, counted) == (200, 2, [1])

    def racing(*_a: Any) -> ingest.Counted:
        raise ingest.accounting.InputsUnavailable("still racing")

    monkeypatch.setattr(ingest, "count", racing)
    assert ingest.handle(Request(body.SerializeToString()))[1] == 503
    truncated = gzip.compress(body.SerializeToString())[:-8]
    assert ingest.handle(Request(truncated, **{"Content-Encoding": "gzip"}))[1] == 400


def test_a_batch_refused_after_others_were_counted_is_a_partial_success(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(auth, "checked", lambda _header, _now: record())
    recorded: list[str] = []
    monkeypatch.setattr(ingest, "_record", lambda rejected, *_a: recorded.append(rejected.code.value))
    late = Rejected(Code.IMPLAUSIBLE_TIME, "call times are more than 5 minutes ahead", agent_id="chat-1")
    # Two batches (the calls 2 hours apart): the first counted, the second refused by the counting.
    body = export({"attrs": CHAT, "end": NOW - timedelta(hours=2)}, {"attrs": CHAT}).SerializeToString()
    Script(monkeypatch, [None, late], [])
    reply, status, _headers = ingest.handle(Request(body))
    answer = ExportTraceServiceResponse.FromString(reply)
    assert (status, answer.partial_success.rejected_spans, recorded) == (200, 1, ["implausible_time"])
    assert answer.partial_success.error_message.startswith("1 calls: implausible_time: call times")
    # Nothing of the request counted: refused whole (400), as before.
    Script(monkeypatch, [late, late], [])
    reply, status, _headers = ingest.handle(Request(body))
    assert (status, json.loads(reply)["error"]["code"]) == (400, "implausible_time")
    # A batch re-exported (duplicates) beside a refused one: a partial success too; a batch Firestore refuses
    # (a permanent error) is refused alone and not recorded as a rejection.
    Script(monkeypatch, ["duplicate", ValueError("bad field path")], [{"ab" * 16 + "0000000000000001"}])
    reply, status, _headers = ingest.handle(Request(body))
    answer = ExportTraceServiceResponse.FromString(reply)
    assert (status, answer.partial_success.rejected_spans) == (
        200,
        1,
    ) and "unstorable" in answer.partial_success.error_message
    assert recorded == ["implausible_time"] * 3


def test_a_retry_after_some_batches_were_counted_still_logs_what_was_counted(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(auth, "checked", lambda _header, _now: record())
    body = export({"attrs": CHAT, "end": NOW - timedelta(hours=2)}, {"attrs": CHAT}).SerializeToString()
    Script(monkeypatch, [None, ingest.accounting.InputsUnavailable("tenant settings unreadable")], [])
    assert ingest.handle(Request(body))[1] == 503
    (line,) = [r.fields for r in caplog.records if r.name == "fleet.otlp"]  # type: ignore[attr-defined]
    assert (line["status"], line["calls"], line["duplicates"]) == (503, 1, 0)
