"""docs/events.md, "Signatures", is enough to sign: a signer written from it alone is accepted by the fleet.

The signer below (between the two ``standalone`` markers) uses only the standard library and
``cryptography``: its JCS canonicaliser is hand-written, as an agent in another language would write
one, and checked against the ``rfc8785`` package. One test runs that block in a namespace that cannot
import ``fleet_agent`` or ``shared``; the others check what it makes with the fleet's own code: the
decode path accepts the message, and the fleet's verification accepts the signature over the bytes it
builds from the decoded body. The worked example in docs/events.md is parsed out of the document and
checked, so the document stays true.

Until the decode path builds the signed bytes itself (issue 18's verification at ingest), the fleet's
side is ``fleet_agent.identity.event_signing_bytes`` over ``json.loads(body)["data"]``, which is what
that path is specified to use.
"""

# ruff: noqa: E402  (the standalone signer comes first, with its own imports; the test's imports follow it)

from __future__ import annotations

# --- standalone signer: begin (stdlib and cryptography only; docs/events.md "Signatures") ---
import base64
import hashlib
import json
import math
from decimal import Decimal
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat


def jcs(value: Any) -> str:
    """RFC 8785 for the JSON values events carry (json.loads' types)."""
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, int):
        if abs(value) >= 2**53:
            raise ValueError("integer beyond 2**53: send it as a string")
        return str(value)
    if isinstance(value, float):
        return es_number(value)
    if isinstance(value, str):  # json.dumps escapes exactly what JCS escapes, lowercase \u00xx
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ",".join(jcs(v) for v in value) + "]"
    if isinstance(value, dict):
        keys = sorted(value, key=lambda k: k.encode("utf-16-be"))
        return "{" + ",".join(jcs(k) + ":" + jcs(value[k]) for k in keys) + "}"
    raise TypeError(f"not JSON: {type(value).__name__}")


def es_number(x: float) -> str:
    """ECMAScript Number.prototype.toString, from the shortest digits Python's repr finds."""
    if math.isnan(x) or math.isinf(x):
        raise ValueError("NaN and infinities are not JSON")
    if x == 0:
        return "0"
    sign = "-" if x < 0 else ""
    _, digit_tuple, exponent = Decimal(repr(abs(x))).normalize().as_tuple()
    digits, k = "".join(map(str, digit_tuple)), len(digit_tuple)
    n = int(exponent) + k  # the value is 0.digits * 10**n
    if k <= n <= 21:
        return sign + digits + "0" * (n - k)
    if 0 < n <= 21:
        return sign + digits[:n] + "." + digits[n:]
    if -6 < n <= 0:
        return sign + "0." + "0" * -n + digits
    mantissa = digits[0] + ("." + digits[1:] if k > 1 else "")
    return sign + mantissa + "e" + ("+" if n > 1 else "-") + str(abs(n - 1))


def b64u(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def sign_message(
    private_key: bytes, tenant: str, event_type: str, event_id: str, data: dict[str, Any]
) -> tuple[bytes, dict[str, str]]:
    """The Pub/Sub body and attributes of one signed event."""
    key = Ed25519PrivateKey.from_private_bytes(private_key)
    public = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    signed = jcs(["agent-fleet-manager/event/v1", event_type, data["agent_id"], event_id, tenant, data])
    signature = {
        "key_id": hashlib.sha256(public).hexdigest()[:16],
        "alg": "ed25519",
        "value": b64u(key.sign(signed.encode("utf-8"))),
    }
    body = json.dumps({"event_id": event_id, "data": data, "signature": signature}).encode()
    return body, {"agent_id": data["agent_id"], "event_type": event_type, "schema_version": "1"}


def public_key_of(private_key: bytes) -> str:
    raw = Ed25519PrivateKey.from_private_bytes(private_key).public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return b64u(raw)


# --- standalone signer: end ---

import builtins
import random
import re
import struct
from datetime import UTC, datetime
from pathlib import Path

import pytest
import rfc8785
from fleet_agent import identity as fleet_identity
from fleet_agent.contracts import EventType, Signature

from shared.domain import identity as domain_identity
from shared.domain.rejections import Rejected
from shared.pipeline.decoding import PushedMessage, decode

DOC = Path(__file__).resolve().parents[2] / "docs" / "events.md"
SECRET = bytes(range(32))
AT = datetime(2026, 12, 6, 8, 0, tzinfo=UTC)

EVENTS: dict[str, tuple[EventType, dict[str, Any]]] = {
    "registration": (
        EventType.REGISTRATION,
        {
            "agent_id": "chat-7",
            "tenant": "acme",
            "name": 'Zoë\'s "support" bot 🤖\n(tier 2)',
            "agent_type": "llm-chat",
            "version": "1.4.0",
            "owner": "zoë@example.com",
            "labels": {"team": "support—eu", "region": "eu-west1"},
            "resources": {"cpu": 0.5, "memory_gb": 1.0, "gpu": 0},
            "identity": {"public_key": public_key_of(SECRET), "enrollment_token": "afmt1.0123456789abcdef.x.y"},
            "sent_at": "2026-12-06T08:00:00.123456+01:00",
        },
    ),
    "heartbeat": (
        EventType.HEARTBEAT,
        {
            "agent_id": "chat-7",
            "seq": 1796544000000,
            "sent_at": "2026-12-06T08:00:00Z",
            "status": "busy",
            "metrics": {"cpu_pct": 99.99, "memory_pct": 1e-7, "error_rate": 0.1, "failed_tasks": 2, "bytes_out": 1e20},
        },
    ),
    "cost": (
        EventType.COST,
        {
            "agent_id": "chat-7",
            "batch_id": "b-20261206-0800",
            "records": [
                {
                    "call_id": f"call-{i:04d}",
                    "at": "2026-12-06T07:59:59.5Z",
                    "model": "gpt-4o-mini@2024-07-18",
                    "input_tokens": 1200 + i,
                    "output_tokens": 300,
                    "cost_usd": "0.000123456789",
                    "success": i != 1,
                    "latency_ms": 812.5,
                    "operation": "chat.reply",
                    **({"repeat": True} if i == 2 else {}),
                }
                for i in range(3)
            ],
        },
    ),
    "approval": (
        EventType.APPROVAL,
        {
            "agent_id": "chat-7",
            "request_id": "req-00000001",
            "operation": 'refund €120 to customer \\ "A" \t now',
            "reason": "control chars \x01\x1f, U+2028 \u2028, DEL \x7f, astral 𝄞",
            "estimated_cost_usd": 120.5,
            "requested_at": "2026-12-06T08:00:00Z",
            "details": {"ticket": "T-1", "customer": "Ærøskøbing Åsa"},
        },
    ),
    "job_progress": (
        EventType.JOB_PROGRESS,
        {
            "agent_id": "chat-7",
            "job_id": "j-abcdef12",
            "attempt": 1,
            "seq": 1796544000000123,
            "at": "2026-12-06T08:00:00Z",
            "phase": "progress",
            "step": 100,
            "total_steps": 1000,
            "metrics": {"loss": 0.30000000000000004, "val_accuracy": 0.875, "lr": 3e-4},
        },
    ),
}


def pushed(body: bytes, attributes: dict[str, str]) -> PushedMessage:
    return PushedMessage(message_id="m-1", published_at=AT, raw=body, attributes=attributes)


def fleet_signed_bytes(body: bytes, attributes: dict[str, str], tenant: str) -> bytes:
    """The bytes the fleet checks, built from what it received (not from the signer's data)."""
    envelope = json.loads(body)
    return fleet_identity.event_signing_bytes(
        attributes["event_type"], attributes["agent_id"], envelope["event_id"], tenant, envelope["data"]
    )


@pytest.mark.parametrize("name", sorted(EVENTS))
def test_the_fleet_accepts_what_the_standalone_signer_signs(name: str) -> None:
    event_type, data = EVENTS[name]
    body, attributes = sign_message(SECRET, "acme", event_type.value, "e-0000000001", data)

    decoded = decode(pushed(body, attributes), event_type)  # a valid event by the contract
    assert decoded.signature is not None
    public_key = public_key_of(SECRET)
    assert fleet_identity.verify(public_key, decoded.signature, fleet_signed_bytes(body, attributes, "acme"))
    stored = domain_identity.bind(None, public_key, token_id="0123456789abcdef", at=AT)
    key = domain_identity.check(
        stored,
        decoded.signature,
        lambda: fleet_signed_bytes(body, attributes, "acme"),
        policy=domain_identity.Policy.REQUIRED,
        received_at=AT,
        agent_id="chat-7",
        tenant="acme",
    )
    assert key is not None and key.public_key == public_key


@pytest.mark.parametrize("name", sorted(EVENTS))
def test_a_signature_binds_every_element(name: str) -> None:
    event_type, data = EVENTS[name]
    body, attributes = sign_message(SECRET, "acme", event_type.value, "e-0000000001", data)
    envelope = json.loads(body)
    signature = Signature.model_validate(envelope["signature"])
    public_key = public_key_of(SECRET)
    moved = [
        ("other", attributes["agent_id"], envelope["event_id"], "acme", envelope["data"]),
        (event_type.value, "chat-8", envelope["event_id"], "acme", envelope["data"]),
        (event_type.value, attributes["agent_id"], "e-0000000002", "acme", envelope["data"]),
        (event_type.value, attributes["agent_id"], envelope["event_id"], "globex", envelope["data"]),
        (event_type.value, attributes["agent_id"], envelope["event_id"], "acme", {**envelope["data"], "x": 1}),
    ]
    for event, agent, event_id, tenant, value in moved:
        assert not fleet_identity.verify(
            public_key, signature, fleet_identity.event_signing_bytes(event, agent, event_id, tenant, value)
        )
    with pytest.raises(Rejected) as refused:
        domain_identity.check(
            domain_identity.bind(None, public_key, token_id="0123456789abcdef", at=AT),
            signature,
            lambda: fleet_signed_bytes(body, attributes, "globex"),
            policy=domain_identity.Policy.REQUIRED,
            received_at=AT,
            agent_id="chat-7",
            tenant="globex",
        )
    assert refused.value.code.value == "bad_signature"


def test_the_layout_of_the_body_does_not_matter_its_values_do() -> None:
    _, data = EVENTS["heartbeat"]
    body, attributes = sign_message(SECRET, "acme", "heartbeat", "e-0000000001", data)
    envelope = json.loads(body)
    signature = Signature.model_validate(envelope["signature"])
    relaid = json.dumps(dict(reversed(list(envelope.items()))), indent=3, sort_keys=True).encode()
    assert fleet_identity.verify(public_key_of(SECRET), signature, fleet_signed_bytes(relaid, attributes, "acme"))
    changed = body.replace(b'"status": "busy"', b'"status": "idle"')
    assert changed != body
    assert not fleet_identity.verify(public_key_of(SECRET), signature, fleet_signed_bytes(changed, attributes, "acme"))


# --- the hand-written canonicaliser against rfc8785 ---

#: RFC 8785, appendix B: IEEE 754 bits and their ECMAScript form.
RFC8785_NUMBERS = {
    0x0000000000000000: "0",
    0x8000000000000000: "0",
    0x0000000000000001: "5e-324",
    0x8000000000000001: "-5e-324",
    0x7FEFFFFFFFFFFFFF: "1.7976931348623157e+308",
    0xFFEFFFFFFFFFFFFF: "-1.7976931348623157e+308",
    0x4340000000000000: "9007199254740992",
    0xC340000000000000: "-9007199254740992",
    0x4430000000000000: "295147905179352830000",
    0x44B52D02C7E14AF5: "9.999999999999997e+22",
    0x44B52D02C7E14AF6: "1e+23",
    0x44B52D02C7E14AF7: "1.0000000000000001e+23",
    0x444B1AE4D6E2EF4E: "999999999999999700000",
    0x444B1AE4D6E2EF4F: "999999999999999900000",
    0x444B1AE4D6E2EF50: "1e+21",
    0x3EB0C6F7A0B5ED8C: "9.999999999999997e-7",
    0x3EB0C6F7A0B5ED8D: "0.000001",
    0x41B3DE4355555553: "333333333.3333332",
    0x41B3DE4355555554: "333333333.33333325",
    0x41B3DE4355555555: "333333333.3333333",
    0x41B3DE4355555556: "333333333.3333334",
    0x41B3DE4355555557: "333333333.33333343",
    0xBECBF647612F3696: "-0.0000033333333333333333",
    0x43143FF3C1CB0959: "1424953923781206.2",
}


def _double(bits: int) -> float:
    return float(struct.unpack(">d", bits.to_bytes(8, "big"))[0])


@pytest.mark.parametrize("bits", sorted(RFC8785_NUMBERS))
def test_numbers_as_rfc8785_writes_them(bits: int) -> None:
    value = _double(bits)
    assert es_number(value) == RFC8785_NUMBERS[bits]
    assert rfc8785.dumps(value).decode() == RFC8785_NUMBERS[bits]


def test_the_hand_written_canonicaliser_agrees_with_rfc8785() -> None:
    rng = random.Random(18)
    doubles = [_double(rng.getrandbits(64)) for _ in range(3000)]
    doubles = [x for x in doubles if math.isfinite(x)]
    doubles += [rng.uniform(-1e6, 1e6) for _ in range(1000)] + [
        round(rng.random(), rng.randint(0, 12)) for _ in range(1000)
    ]
    doubles += [10.0**e for e in range(-10, 25)] + [1.5 * 10.0**e for e in range(-10, 25)]
    for x in doubles:
        assert jcs(x) == rfc8785.dumps(x).decode(), repr(x)
    ints = [0, 1, -1, 2**53 - 1, -(2**53 - 1), *(rng.randint(-(2**53 - 1), 2**53 - 1) for _ in range(200))]
    strings = ["", "plain", '"\\/', "\b\f\n\r\t\x00\x01\x1f\x7f", "\u2028\u2029", "é€😀𝄞", "\ufb33\ue000\uffff"]
    # RFC 8785 §3.2.3's key-ordering example, and keys where UTF-16 order differs from code-point order.
    keys = {"\u20ac": "Euro Sign", "\r": "Carriage Return", "\ufb33": "Hebrew Letter Dalet With Dagesh", "1": "One",
            "\U0001f600": "Emoji: Grinning Face", "\x80": "Control", "\u00f6": "Latin Small Letter O With Diaeresis",
            "\ue000": "private use", "\U00010000": "astral"}  # fmt: skip
    nested = [{"b": [True, False, None], "a": {}}, []]
    value: dict[str, Any] = {"ints": ints, "strings": strings, "keys": keys, "nested": nested}
    assert jcs(value) == rfc8785.dumps(value).decode()
    assert list(json.loads(jcs(keys))) == ["\r", "1", "\x80", "\u00f6", "\u20ac", "\U00010000", "\U0001f600",
                                           "\ue000", "\ufb33"]  # fmt: skip
    for name, (event_type, data) in EVENTS.items():
        array = ["agent-fleet-manager/event/v1", event_type.value, "chat-7", "e-1", "acme", data]
        assert jcs(array).encode() == fleet_identity.event_signing_bytes(
            event_type.value, "chat-7", "e-1", "acme", data
        ), name


@pytest.mark.parametrize("value", [2**53, -(2**53), 10**20, math.nan, math.inf, -math.inf])
def test_what_cannot_be_signed_is_refused_by_both(value: Any) -> None:
    with pytest.raises(ValueError):
        jcs({"n": value})
    with pytest.raises(ValueError):
        fleet_identity.canonical({"n": value})


# --- the standalone block stands alone ---


def _standalone_source() -> str:
    text = Path(__file__).read_text()
    begin = text.index("# --- standalone signer: begin")
    return text[begin : text.index("# --- standalone signer: end")]


def test_the_standalone_signer_needs_neither_the_sdk_nor_the_server() -> None:
    real_import = builtins.__import__

    def guarded(name: str, *args: Any, **kwargs: Any) -> Any:
        if name.split(".")[0] in {"fleet_agent", "shared", "rfc8785"}:
            raise ImportError(f"the standalone signer imported {name}")
        return real_import(name, *args, **kwargs)

    namespace: dict[str, Any] = {"__builtins__": {**vars(builtins), "__import__": guarded}, "__name__": "standalone"}
    exec(compile(_standalone_source(), "standalone-signer", "exec"), namespace)
    event_type, data = EVENTS["approval"]
    assert namespace["sign_message"](SECRET, "acme", event_type.value, "e-1", data) == sign_message(
        SECRET, "acme", event_type.value, "e-1", data
    )
    assert len([line for line in _standalone_source().splitlines() if line.strip()]) < 90


# --- the worked example in docs/events.md ---


def _worked_example() -> tuple[dict[str, str], list[str], str]:
    """The table rows, the JSON blocks and the text block of docs/events.md's worked example."""
    text = DOC.read_text()
    section = text[text.index("### Worked example") :]
    section = section[: section.index("\n### ", 1)]
    rows = dict(re.findall(r"^\| ([a-z][a-z ()0-9,]+?) \| `([^`]+)` \|$", section, flags=re.M))
    blocks = re.findall(r"^```json\n(.*?)^```$", section, flags=re.M | re.S)
    (signed,) = re.findall(r"^```text\n(.*?)\n```$", section, flags=re.M | re.S)
    return rows, blocks, signed


def test_the_worked_example_in_the_document_is_true() -> None:
    rows, (attributes_text, body_text), signed = _worked_example()
    private_key = bytes.fromhex(rows["private key (32 bytes, hex)"])
    assert public_key_of(private_key) == rows["public key"]
    assert fleet_identity.key_id_of(rows["public key"]) == rows["key id"]
    attributes, body = json.loads(attributes_text), json.loads(body_text)
    assert attributes == {"agent_id": rows["agent id"], "event_type": rows["event type"], "schema_version": "1"}
    assert body["event_id"] == rows["event id"]
    assert body["signature"] == {"key_id": rows["key id"], "alg": "ed25519", "value": rows["signature"]}

    # The signed bytes: by the hand-written canonicaliser, by rfc8785, by the fleet, from the body as sent.
    array = ["agent-fleet-manager/event/v1", rows["event type"], rows["agent id"], rows["event id"], rows["tenant"],
             body["data"]]  # fmt: skip
    assert jcs(array) == signed
    assert rfc8785.dumps(array) == signed.encode()
    raw = body_text.encode()
    assert fleet_signed_bytes(raw, attributes, rows["tenant"]) == signed.encode()

    # The signature: Ed25519 is deterministic, so signing again gives the document's value; it verifies.
    again, _ = sign_message(private_key, rows["tenant"], rows["event type"], rows["event id"], body["data"])
    assert json.loads(again)["signature"]["value"] == rows["signature"]
    decoded = decode(pushed(raw, attributes), EventType(rows["event type"]))
    assert decoded.signature is not None
    assert fleet_identity.verify(rows["public key"], decoded.signature, signed.encode())
    assert not fleet_identity.verify(rows["public key"], decoded.signature, signed.replace("acme", "acma").encode())
