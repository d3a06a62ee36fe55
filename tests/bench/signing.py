"""Signed telemetry in process: what signing costs an agent and verifying costs the function, µs per event.

    python -m tests.bench.signing            # a few seconds, no stack needed

For a heartbeat and a cost batch of 1 and of 50 records (the events of tests/bench/sdk_signing.py):

- **SDK**: ``fleet_agent.contracts.encode`` unsigned, and signed by an Ed25519 key (the RFC 8785 bytes of
  ``data`` plus the signature); the difference is what signing adds per event.
- **Function**: what the push path does before it decides: ``shared.pipeline.decoding.decode`` of the
  message, then ``shared.domain.identity.check`` against the agent's stored identity. Unsigned: an agent
  without a key in an ``optional`` tenant (``check`` returns at once). Signed: the agent's key in its
  identity, ``Decoded.signed_bytes`` (the body's ``data`` parsed again and canonicalised) and the Ed25519
  verification; the difference is what verification adds per event.
- The canonical bytes alone (``fleet_agent.identity.event_signing_bytes``): the share of both that is JCS;
  beside it, the same bytes by the ``rfc8785`` package alone (pure Python: what ``canonical`` did before
  its fast path), the baseline of the same run.

Best of ``ROUNDS`` rounds of ``N`` events each, so a busy machine inflates the figures less. Not a test:
it asserts nothing (tests/unit/test_signing_standalone.py and the identity tests check correctness).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import rfc8785
from fleet_agent.contracts import Event, EventType, encode
from fleet_agent.identity import EVENT_CONTEXT, AgentKey, event_signing_bytes

from shared.domain import identity
from shared.pipeline.decoding import PushedMessage, decode
from tests.bench.sdk_signing import batch, heartbeat

N = 1000
ROUNDS = 5
TENANT = "acme"
AT = datetime(2026, 12, 6, 12, tzinfo=UTC)


def best_us(fn: Callable[[], object], n: int = N) -> float:
    best = float("inf")
    for _ in range(ROUNDS):
        start = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - start) / n)
    return best * 1e6


def _pushed(body: bytes, attrs: dict[str, str]) -> PushedMessage:
    return PushedMessage(message_id="1", published_at=AT, raw=body, attributes=attrs)


def _check(message: PushedMessage, stored: dict[str, Any] | None, policy: identity.Policy) -> object:
    """The function's work before deciding: decode, then the signature check on the stored identity."""
    decoded = decode(message, message_event_type(message))
    return identity.check(
        stored, decoded.signature, decoded.signed_bytes(TENANT), policy=policy, received_at=AT,
        agent_id=message.attributes["agent_id"], tenant=TENANT,
    )  # fmt: skip


def message_event_type(message: PushedMessage) -> EventType:
    return EventType(message.attributes["event_type"])


def measure_event(name: str, event: Event, key: AgentKey) -> dict[str, Any]:
    stored = identity.bind(None, key.public_key, token_id="0" * 16, at=AT)
    plain = _pushed(*encode(event))
    signed = _pushed(*encode(event, signer=key, tenant=TENANT))
    expected = message_event_type(plain)
    assert _check(signed, stored, identity.Policy.REQUIRED) is not None  # the signed path really verifies
    data = json.loads(signed.raw)["data"]
    figures: dict[str, Any] = {
        "event": name,
        "bytes": len(signed.raw),
        "sdk_unsigned_us": best_us(lambda: encode(event)),
        "sdk_signed_us": best_us(lambda: encode(event, signer=key, tenant=TENANT)),
        "fn_unsigned_us": best_us(lambda: _check(plain, None, identity.Policy.OPTIONAL)),
        "fn_signed_us": best_us(lambda: _check(signed, stored, identity.Policy.REQUIRED)),
        "canonical_us": best_us(lambda: event_signing_bytes(expected.value, event.agent_id, "e" * 32, TENANT, data)),
        "rfc8785_us": best_us(
            lambda: rfc8785.dumps([EVENT_CONTEXT, expected.value, event.agent_id, "e" * 32, TENANT, data])
        ),
    }
    figures["signing_us"] = figures["sdk_signed_us"] - figures["sdk_unsigned_us"]
    figures["verification_us"] = figures["fn_signed_us"] - figures["fn_unsigned_us"]
    return figures


def measure() -> list[dict[str, Any]]:
    key = AgentKey.generate()
    events: list[tuple[str, Event]] = [
        ("heartbeat", heartbeat()),
        ("cost batch, 1 record", batch(1)),
        ("cost batch, 50 records", batch(50)),
    ]
    return [measure_event(name, event, key) for name, event in events]


def describe() -> list[str]:
    return [
        f"In process, no stack (`python -m tests.bench.signing`): best of {ROUNDS} rounds of {N} events. "
        "SDK: `encode` unsigned and signed (RFC 8785 bytes + Ed25519). Function: `decode` then "
        "`identity.check` on the stored identity, for an unsigned agent of an `optional` tenant and for a "
        "signed event (`Decoded.signed_bytes` + Ed25519 verify). JCS: `event_signing_bytes` alone (its fast "
        "path), and the same bytes by `rfc8785` alone (pure Python, what it used before).",
    ]


def table(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| event | body bytes | SDK unsigned µs | SDK signed µs | signing adds µs | function unsigned µs "
        "| function signed µs | verification adds µs | of which JCS µs | JCS by rfc8785 alone µs |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['event']} | {r['bytes']} | {r['sdk_unsigned_us']:.1f} | {r['sdk_signed_us']:.1f} | "
            f"{r['signing_us']:.1f} | {r['fn_unsigned_us']:.1f} | {r['fn_signed_us']:.1f} | "
            f"{r['verification_us']:.1f} | {r['canonical_us']:.1f} | {r['rfc8785_us']:.1f} |"
        )
    return lines


def main(report: Callable[[str], None] = print) -> list[str]:
    lines = table(measure())
    for line in lines:
        report(line)
    return lines


if __name__ == "__main__":
    main()
