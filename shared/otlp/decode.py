"""OTLP/HTTP trace bodies in and out: protobuf or JSON, optionally gzip, within size limits.

Parsed with the official ``opentelemetry-proto`` messages. OTLP's JSON differs from protobuf's JSON mapping
in one way that matters here: trace and span ids are hex, not base64 (OTLP specification, "JSON Protobuf
Encoding"), so they are converted before ``json_format`` parses the body.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import zlib
from dataclasses import dataclass
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
#: The body as sent (compressed or not), and once gunzipped: beyond either, 413.
MAX_BODY_BYTES = 4 * 1024 * 1024
MAX_DECODED_BYTES = 16 * 1024 * 1024
_HEX = re.compile(r"[0-9a-fA-F]+")
#: OTLP/JSON's ids: a trace id is 16 bytes, a span id 8, in hex (an empty one is left to the span's own check).
_ID_HEX_CHARS = {"traceId": 32, "trace_id": 32, "spanId": 16, "span_id": 16, "parentSpanId": 16,
                 "parent_span_id": 16}  # fmt: skip


@dataclass
class Refused(Exception):
    """A request refused before anything is counted: the HTTP status, a code and a reason."""

    status: int
    code: str
    reason: str

    def __str__(self) -> str:
        return f"{self.status} {self.code}: {self.reason}"


def media_type(content_type: str | None) -> str:
    return (content_type or "").split(";")[0].strip().lower()


def gunzip(body: bytes) -> bytes:
    """``body`` gunzipped, refused (413) beyond MAX_DECODED_BYTES without inflating more than that, and (400)
    when the stream is cut short or followed by anything (the whole request is refused: nothing counted)."""
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(body, MAX_DECODED_BYTES)
    except zlib.error as exc:
        raise Refused(400, "bad_gzip", f"the body is not valid gzip: {exc}") from None
    if inflater.unconsumed_tail or (not inflater.eof and len(out) >= MAX_DECODED_BYTES):
        raise Refused(413, "too_large", f"the body inflates beyond {MAX_DECODED_BYTES} bytes")
    if not inflater.eof:  # cut off: the spans after the cut would be answered 200 and lost
        raise Refused(400, "bad_gzip", "truncated gzip stream (no end of stream): send the whole body again")
    if inflater.unused_data:
        raise Refused(400, "bad_gzip", f"{len(inflater.unused_data)} bytes after the gzip stream (one member only)")
    return out


def _hex_ids(value: Any) -> None:
    """OTLP/JSON's hex ids turned into protobuf JSON's base64, in place (spans and their links)."""
    for resource_spans in value.get("resourceSpans", value.get("resource_spans", [])) or []:
        for scope_spans in resource_spans.get("scopeSpans", resource_spans.get("scope_spans", [])) or []:
            for span in scope_spans.get("spans", []) or []:
                for item in [span, *(span.get("links") or [])]:
                    for key, size in _ID_HEX_CHARS.items():
                        text = item.get(key)
                        if isinstance(text, str) and text:
                            if not _HEX.fullmatch(text) or len(text) != size:  # fromhex takes "0102 0304"
                                raise Refused(400, "malformed", f"{key} {text[:40]!r} is not {size} hex characters")
                            item[key] = base64.b64encode(bytes.fromhex(text)).decode()


def decode(body: bytes, content_type: str | None, content_encoding: str | None) -> tuple[Any, bool]:
    """The request and whether it was JSON. Raises :class:`Refused` (400, 413, 415)."""
    if len(body) > MAX_BODY_BYTES:
        raise Refused(413, "too_large", f"the body is {len(body)} bytes; at most {MAX_BODY_BYTES}")
    encoding = (content_encoding or "").strip().lower()
    if encoding == "gzip":
        body = gunzip(body)
    elif encoding not in ("", "identity"):
        raise Refused(415, "unsupported_encoding", f"Content-Encoding {encoding!r}: gzip or none")
    kind = media_type(content_type)
    request = ExportTraceServiceRequest()
    if kind == PROTOBUF:
        try:
            request.ParseFromString(body)
        except (DecodeError, RuntimeError, ValueError) as exc:
            raise Refused(400, "malformed", f"not an ExportTraceServiceRequest (protobuf): {exc}") from None
        return request, False
    if kind == JSON:
        try:
            value = json.loads(body)
            if not isinstance(value, dict):
                raise ValueError("the body is not a JSON object")
            _hex_ids(value)
            json_format.ParseDict(value, request, ignore_unknown_fields=True)
        except Refused:
            raise
        except (ValueError, json_format.ParseError, binascii.Error, AttributeError, TypeError, RecursionError) as exc:
            raise Refused(400, "malformed", f"not an ExportTraceServiceRequest (JSON): {exc}"[:500]) from None
        return request, True
    raise Refused(415, "unsupported_media_type", f"Content-Type {kind or 'none'!r}: {PROTOBUF} or {JSON}")


def response(rejected: int, message: str, as_json: bool) -> tuple[bytes, str]:
    """An ``ExportTraceServiceResponse`` (``partial_success`` when spans were refused) and its content type."""
    answer = ExportTraceServiceResponse()
    if rejected:
        answer.partial_success.rejected_spans = rejected
        answer.partial_success.error_message = message
    if as_json:
        return json_format.MessageToJson(answer, indent=None).encode(), JSON
    return answer.SerializeToString(), PROTOBUF
