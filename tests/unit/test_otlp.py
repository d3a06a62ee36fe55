"""The OTLP ingest's pure parts: agent-made tokens and their check, spans to call records, OTLP/HTTP
decoding (protobuf, JSON with hex ids, gzip, limits), and how calls are cut into cost batches."""

from __future__ import annotations

import gzip
import json
import zlib
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fleet_agent import cli, otlp_token
from fleet_agent.identity import AgentKey
from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from shared.domain import identity
from shared.domain.agent_record import AgentRecord
from shared.domain.lifecycle import State
from shared.domain.rejections import Code
from shared.otlp import auth, decode, spans
from shared.store import agents as agent_store

NOW = datetime.now(UTC).replace(microsecond=0)
KEY = AgentKey.generate()
SIG = otlp_token.b64(bytes(64))
NAN_PAYLOAD = b'{"agent_id": "chat-1", "tenant": "acme", "key_id": "k", "iat": NaN, "exp": Infinity}'


def record(key: AgentKey | None = KEY, *, tenant: str = "acme", **kw: Any) -> AgentRecord:
    ident = identity.bind(None, key.public_key, token_id="t" * 16, at=NOW) if key else {}
    data = {"agent_id": "chat-1", "tenant": tenant, "name": "Chat", "agent_type": "llm", "version": "1", "owner": "o",
            "status_since": NOW, "registered_at": NOW, "last_registered_at": NOW, "identity": ident, **kw}  # fmt: skip
    return AgentRecord.model_validate(data)


@pytest.fixture
def stored(monkeypatch: pytest.MonkeyPatch) -> dict[str, AgentRecord]:
    agents: dict[str, AgentRecord] = {}

    def snap(agent_id: str, *_a: Any) -> agent_store.Snapshot | None:
        return agent_store.Snapshot(agents[agent_id], None) if agent_id in agents else None

    monkeypatch.setattr(agent_store, "current", snap)
    monkeypatch.setattr(agent_store, "read", snap)
    return agents


def bearer(key: AgentKey = KEY, **kw: Any) -> str:
    # Minted at NOW, the time the tests verify at: a token minted at the real time would be "issued in the
    # future" once the run is more than the clock skew past this module's import (a slow, loaded run).
    return "Bearer " + otlp_token.mint(key, **{"agent_id": "chat-1", "tenant": "acme", "now": NOW.timestamp(), **kw})


def test_a_token_made_with_the_enrolled_key_authenticates(stored: dict[str, AgentRecord]) -> None:
    stored["chat-1"] = record()
    assert auth.checked(bearer(), NOW).agent_id == "chat-1"


@pytest.mark.parametrize(
    ("header", "code", "recorded"),
    [
        (None, "unauthenticated", False),
        ("Basic abc", "unauthenticated", False),
        ("Bearer afot1.notjson.x", "unauthenticated", False),
        pytest.param(f"Bearer afot1.{otlp_token.b64(b'[' * 5000)}.{SIG}", "unauthenticated", False, id="nested"),
        pytest.param(f"Bearer afot1.{otlp_token.b64(b'[]')}.{SIG}", "unauthenticated", False, id="not-an-object"),
        pytest.param(f"Bearer afot1.{otlp_token.b64(NAN_PAYLOAD)}.{SIG}", "unauthenticated", False, id="nan"),
        ("other-key", Code.UNKNOWN_KEY.value, False),
        ("other-tenant", Code.BAD_SIGNATURE.value, True),
        ("expired", Code.TOKEN_EXPIRED.value, True),
        ("too-long", Code.TOKEN_EXPIRED.value, True),
        ("unknown-agent", Code.UNKNOWN_AGENT.value, False),
        ("tampered", Code.BAD_SIGNATURE.value, True),
        ("huge-exp", Code.TOKEN_EXPIRED.value, True),
        ("huge-iat", Code.TOKEN_EXPIRED.value, True),
        ("huge-exp-other-key", Code.UNKNOWN_KEY.value, False),
    ],
)
def test_bad_tokens_are_refused_with_401(
    stored: dict[str, AgentRecord], header: str | None, code: str, recorded: bool
) -> None:
    stored["chat-1"] = record()
    headers = {
        "other-key": bearer(AgentKey.generate()),
        "other-tenant": bearer(tenant="globex"),
        "expired": bearer(days=1, now=(NOW - timedelta(days=2)).timestamp()),
        "unknown-agent": bearer(agent_id="ghost-1"),
    }
    if header == "too-long":
        token = otlp_token.mint(KEY, agent_id="chat-1", tenant="acme", now=NOW.timestamp())
        payload = json.loads(otlp_token.unb64(token.split(".")[1]))
        payload["exp"] += 86_400
        sig = KEY.sign(otlp_token.signing_bytes("chat-1", "acme", KEY.key_id, payload["iat"], payload["exp"]))
        headers["too-long"] = f"Bearer afot1.{otlp_token.b64(otlp_token.canonical(payload))}.{sig.value}"
    for name, key, field, value in (("huge-exp", KEY, "exp", 10**20), ("huge-iat", KEY, "iat", -(10**300)),
                                    ("huge-exp-other-key", AgentKey.generate(), "exp", 10**4000)):  # fmt: skip
        payload = {"agent_id": "chat-1", "tenant": "acme", "key_id": key.key_id, "iat": int(NOW.timestamp()),
                   "exp": int(NOW.timestamp()) + 60, field: value}  # fmt: skip
        body = json.dumps(payload).encode()  # forged: no key signs numbers beyond JSON's safe integers
        headers[name] = f"Bearer afot1.{otlp_token.b64(body)}.{otlp_token.b64(bytes(64))}"
    if header == "tampered":
        prefix, payload_text, sig_text = bearer().split(".")
        payload = json.loads(otlp_token.unb64(payload_text))
        payload["exp"] -= 60
        headers["tampered"] = f"{prefix}.{otlp_token.b64(otlp_token.canonical(payload))}.{sig_text}"
    with pytest.raises(auth.AuthRefused) as refused:
        auth.checked(headers.get(header or "", header), NOW)
    assert (refused.value.status, refused.value.code, refused.value.rejected is not None) == (401, code, recorded)


def test_a_revoked_key_revokes_its_tokens_and_a_decommissioned_agent_is_403(stored: dict[str, AgentRecord]) -> None:
    token = bearer()
    stored["chat-1"] = record().model_copy(update={"identity": identity.revoke(record().identity, at=NOW, by="x")})
    with pytest.raises(auth.AuthRefused) as refused:
        auth.checked(token, NOW)
    assert (refused.value.status, refused.value.code) == (401, Code.REVOKED_KEY.value)
    stored["chat-1"] = record(status=State.DECOMMISSIONED)
    with pytest.raises(auth.AuthRefused) as refused:
        auth.checked(token, NOW)
    assert (refused.value.status, refused.value.code) == (403, Code.DECOMMISSIONED.value)


def test_the_cli_prints_a_token_of_the_key(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    KEY.save(tmp_path / "k.key")
    assert cli.main(["otlp-token", "--agent-id", "chat-1", "--tenant", "acme", "--key-path", str(tmp_path / "k.key"),
                     "--days", "7"]) == 0  # fmt: skip
    token = otlp_token.OtlpToken.parse(capsys.readouterr().out)
    assert (token.agent_id, token.key_id, token.exp - token.iat) == ("chat-1", KEY.key_id, 7 * 86_400)
    assert cli.main(["otlp-token", "--agent-id", "chat-1", "--tenant", "acme", "--key-path", str(tmp_path / "k.key"),
                     "--days", "31"]) == 1  # fmt: skip


def kv(key: str, value: Any) -> KeyValue:
    if isinstance(value, bool):
        return KeyValue(key=key, value=AnyValue(bool_value=value))
    if isinstance(value, int):
        return KeyValue(key=key, value=AnyValue(int_value=value))
    if isinstance(value, float):
        return KeyValue(key=key, value=AnyValue(double_value=value))
    return KeyValue(key=key, value=AnyValue(string_value=value))


def export(*span_list: dict[str, Any], resource: dict[str, Any] | None = None) -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    rs = request.resource_spans.add()
    rs.resource.attributes.extend(kv(k, v) for k, v in (resource or {"service.name": "bot"}).items())
    scope = rs.scope_spans.add()
    for n, spec in enumerate(span_list, start=1):
        span = scope.spans.add()
        span.trace_id = bytes.fromhex(spec.get("trace", "ab" * 16))
        span.span_id = spec.get("span_id", n.to_bytes(8, "big"))
        span.name = spec.get("name", "chat gpt-4o-mini")
        end = int((spec.get("end", NOW)).timestamp() * 1e9)
        span.start_time_unix_nano = end - int(spec.get("ms", 250) * 1e6)
        span.end_time_unix_nano = end
        span.status.code = spec.get("status", 0)
        span.attributes.extend(kv(k, v) for k, v in spec.get("attrs", {}).items())
    return request


CHAT = {"gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4o-mini", "gen_ai.response.model":
        "gpt-4o-mini-2024-07-18", "gen_ai.provider.name": "openai", "gen_ai.usage.input_tokens": 120,
        "gen_ai.usage.output_tokens": 30}  # fmt: skip


def mapped(request: ExportTraceServiceRequest, attribute: str | None = None) -> spans.Mapped:
    return spans.map_request(request, operation_attribute=attribute, now=NOW, max_ahead=timedelta(minutes=5),
                             max_behind=timedelta(hours=24))  # fmt: skip


def test_a_chat_span_is_a_call_record_and_other_spans_are_ignored() -> None:
    attrs = {**CHAT, "gen_ai.usage.cache_read.input_tokens": 100, "gen_ai.usage.reasoning.output_tokens": 10,
             "gen_ai.usage.cache_creation.input_tokens": 5}  # fmt: skip
    out = mapped(export({"attrs": attrs}, {"name": "GET /", "attrs": {"http.method": "GET"}},
                        {"name": "invoke_agent x", "attrs": {"gen_ai.operation.name": "invoke_agent"}}))  # fmt: skip
    assert (out.spans, out.ignored, out.refused, dict(out.providers)) == (3, 2, [], {"openai": 1})
    (call,) = out.calls
    assert call.model_dump() == {
        "call_id": "ab" * 16 + "0000000000000001", "at": NOW, "model": "openai/gpt-4o-mini-2024-07-18",
        "input_tokens": 120, "output_tokens": 30, "cache_read_tokens": 100, "cache_write_tokens": 5,
        "reasoning_tokens": 10, "cost_usd": None, "success": True, "latency_ms": 250.0, "operation": "chat",
        "repeat": False,
    }  # fmt: skip


def test_failures_costs_operations_and_the_older_attributes() -> None:
    old = {"gen_ai.operation.name": "embeddings", "gen_ai.system": "openai", "gen_ai.request.model": "text-embed-3",
           "gen_ai.usage.input_tokens": 8, "error.type": "timeout", "gen_ai.usage.cost": 0.25,
           "app.op": "index docs"}  # fmt: skip
    out = mapped(export({"attrs": old}, {"attrs": CHAT, "status": spans.STATUS_ERROR}), attribute="app.op")
    first, second = out.calls
    assert (first.success, first.model, str(first.cost_usd), first.operation) == (
        False, "openai/text-embed-3", "0.250000000000", "index_docs")  # fmt: skip
    assert (second.success, second.cost_usd, second.operation) == (False, None, "chat")
    assert dict(out.providers) == {"openai": 2}


@pytest.mark.parametrize(
    ("spec", "why"),
    [
        ({"attrs": {**CHAT, "gen_ai.usage.reasoning.output_tokens": 31}}, "reasoning_tokens"),
        ({"attrs": {**CHAT, "gen_ai.usage.input_tokens": -1}}, "input_tokens"),
        ({"attrs": {**CHAT, "gen_ai.usage.output_tokens": "lots"}}, "not a number"),
        ({"attrs": CHAT, "end": NOW - timedelta(days=2)}, "behind now"),
        ({"attrs": CHAT, "span_id": b""}, "span id"),
        ({"attrs": {**CHAT, "gen_ai.usage.input_tokens": float("inf")}}, "not a finite number"),
        ({"attrs": {**CHAT, "gen_ai.usage.output_tokens": float("nan")}}, "not a finite number"),
        ({"attrs": {**CHAT, "gen_ai.usage.input_tokens": 1e300}}, "input_tokens"),
        ({"attrs": {**CHAT, "gen_ai.usage.input_tokens": "9" * 400}}, "input_tokens"),
        ({"attrs": {**CHAT, "gen_ai.usage.cost": "1e30"}}, "a cost is"),
        ({"attrs": {**CHAT, "gen_ai.usage.cost": "Infinity"}}, "a cost is"),
        ({"attrs": {**CHAT, "gen_ai.usage.cost": "sNaN"}}, "a cost is"),
        ({"attrs": {**CHAT, "gen_ai.usage.cost": float("inf")}}, "a cost is"),
        ({"attrs": {**CHAT, "gen_ai.usage.cost": -0.5}}, "a cost is"),
        ({"attrs": {**CHAT, "gen_ai.usage.cost.input": 9999.0, "gen_ai.usage.cost.output": 9999.0}}, "at most"),
        ({"attrs": {**CHAT, "gen_ai.usage.cost": "cheap"}}, "not a cost"),
    ],
)
def test_a_span_that_cannot_be_a_record_is_refused_alone(spec: dict[str, Any], why: str) -> None:
    out = mapped(export(spec, {"attrs": CHAT, "span_id": b"\x00" * 7 + b"\x09"}))
    assert len(out.calls) == 1 and len(out.refused) == 1 and why in out.refused[0]


def test_older_attribute_names_anthropic_style_input_and_a_zero_cost_are_read_as_meant() -> None:
    old = {"gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4o", "gen_ai.usage.prompt_tokens": 50,
           "gen_ai.usage.completion_tokens": 20, "gen_ai.usage.cache_read_input_tokens": 10,
           "gen_ai.usage.reasoning_tokens": 5, "gen_ai.usage.input_tokens": 40}  # fmt: skip
    anthropic = {"gen_ai.operation.name": "chat", "gen_ai.request.model": "claude-sonnet-4",
                 "gen_ai.usage.cost": 0, "gen_ai.usage.input_tokens": 3, "gen_ai.usage.output_tokens": 9,
                 "gen_ai.usage.cache_read_input_tokens": 100,
                 "gen_ai.usage.cache_creation_input_tokens": 20}  # fmt: skip
    free = {**CHAT, "gen_ai.usage.input_tokens": 0, "gen_ai.usage.output_tokens": 0, "gen_ai.usage.cost": 0.0}
    out = mapped(export({"attrs": old}, {"attrs": anthropic}, {"attrs": free}))
    first, second, third = out.calls
    assert (first.input_tokens, first.output_tokens, first.cache_read_tokens, first.reasoning_tokens) == (40, 20, 10, 5)
    assert (second.input_tokens, second.cache_read_tokens, second.cache_write_tokens) == (123, 100, 20)
    assert (second.cost_usd, third.cost_usd, out.cache_added, out.refused) == (None, 0, 1, [])


def test_the_same_span_twice_in_a_request_is_one_call_and_claims_are_collected() -> None:
    out = mapped(export({"attrs": {**CHAT, "gen_ai.agent.id": "x-9"}, "span_id": b"1" * 8},
                        {"attrs": CHAT, "span_id": b"1" * 8}, resource={"gen_ai.agent.id": "chat-1"}))  # fmt: skip
    assert len(out.calls) == 1 and out.claimed == {"x-9", "chat-1"}


def test_json_with_hex_ids_and_gzip_decode_to_the_same_request() -> None:
    request = export({"attrs": CHAT})
    as_json = json.dumps(json_format.MessageToDict(request))
    span = json.loads(as_json)["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    hex_json = as_json.replace(span["traceId"], "ab" * 16).replace(span["spanId"], "0000000000000001")
    from_json, was_json = decode.decode(hex_json.encode(), "application/json; charset=utf-8", None)
    from_pb, _ = decode.decode(gzip.compress(request.SerializeToString()), "application/x-protobuf", "gzip")
    assert was_json and from_json == request == from_pb


def truncated_gzip() -> bytes:
    """Ten resource spans, cut after six with a sync flush: inflates cleanly but has no end of stream."""
    deflater = zlib.compressobj(wbits=16 + zlib.MAX_WBITS)
    one = export({"attrs": CHAT}).SerializeToString()
    return deflater.compress(one * 6) + deflater.flush(zlib.Z_SYNC_FLUSH)


@pytest.mark.parametrize(
    ("body", "ctype", "encoding", "status"),
    [
        (b"\xff\x00garbage", "application/x-protobuf", None, 400),
        (b"[1]", "application/json", None, 400),
        (b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "zz"}]}]}]}', "application/json", None, 400),
        (b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"spanId": "0102 0304"}]}]}]}', "application/json", None, 400),
        (b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"spanId": "01020304"}]}]}]}', "application/json", None, 400),
        (
            b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "' + b"ab" * 17 + b'"}]}]}]}',
            "application/json",
            None,
            400,
        ),
        (b"{}", "text/plain", None, 415),
        (b"not gzip", "application/x-protobuf", "gzip", 400),
        (gzip.compress(b"\x00" * (decode.MAX_DECODED_BYTES + 1)), "application/x-protobuf", "gzip", 413),
        (gzip.compress(export({"attrs": CHAT}).SerializeToString())[:-8], "application/x-protobuf", "gzip", 400),
        (gzip.compress(b"") * 2, "application/x-protobuf", "gzip", 400),
        (truncated_gzip(), "application/x-protobuf", "gzip", 400),
        (b"\x00" * (decode.MAX_BODY_BYTES + 1), "application/x-protobuf", None, 413),
    ],
)
def test_malformed_and_oversized_bodies(body: bytes, ctype: str, encoding: str | None, status: int) -> None:
    with pytest.raises(decode.Refused) as refused:
        decode.decode(body, ctype, encoding)
    assert refused.value.status == status
    if b"Id" in body:  # the reason names the id and what it must be
        assert "hex characters" in refused.value.reason


def test_the_response_reports_refused_spans_in_the_requests_encoding() -> None:
    body, ctype = decode.response(2, "span 01: bad", as_json=False)
    answer = ExportTraceServiceResponse.FromString(body)
    assert (ctype, answer.partial_success.rejected_spans, answer.partial_success.error_message) == (
        decode.PROTOBUF, 2, "span 01: bad")  # fmt: skip
    assert decode.response(0, "", as_json=True) == (b"{}", decode.JSON)


def test_a_key_refused_on_a_cached_copy_is_checked_again_on_a_fresh_read(monkeypatch: pytest.MonkeyPatch) -> None:
    new_key = AgentKey.generate()
    cached = agent_store.Snapshot(record(), None, seen_at=0.0)  # an instance's copy from before a rotation
    reads: list[str] = []

    def read(agent_id: str) -> agent_store.Snapshot:
        reads.append(agent_id)
        return agent_store.Snapshot(record(new_key), None)

    monkeypatch.setattr(agent_store, "current", lambda *_a: cached)
    monkeypatch.setattr(agent_store, "read", read)
    assert auth.checked(bearer(new_key), NOW).agent_id == "chat-1" and reads == ["chat-1"]
    with pytest.raises(auth.AuthRefused) as refused:  # an expired token of a known key: no read again
        auth.checked(bearer(days=1, now=(NOW - timedelta(days=2)).timestamp()), NOW)
    assert refused.value.code == Code.TOKEN_EXPIRED.value and reads == ["chat-1"]
