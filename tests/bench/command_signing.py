"""Micro-benchmark: what signing a command costs the fleet, and checking it costs an agent (µs per command).

    python -m tests.bench.command_signing            # prints the figures (a few seconds)
    python -m tests.bench.command_signing --json     # the same as one JSON object

In process, no Pub/Sub: ``agent_commands.encode`` as it was (the command's JSON and attributes) against
``fleet_agent.command_signatures.sign_command`` (the same, plus JCS of the body and an Ed25519 signature),
and ``verify_command`` (what the SDK adds per command received) against the plain
``Command.model_validate_json``. Each figure is the median of several rounds of many commands.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from fleet_agent.command_signatures import sign_command, verify_command
from fleet_agent.contracts import Command, CommandType, EventType
from fleet_agent.identity import AgentKey

ROUNDS = 7
PER_ROUND = 2000


def _commands() -> list[Command]:
    now = datetime(2026, 12, 6, 9, 0, tzinfo=UTC)
    return [
        Command(
            agent_id=f"bench-agent-{i % 50:03d}",
            command=CommandType.BUDGET_EXHAUSTED,
            reason="daily budget of $25.00 exhausted: $25.13 spent",
            issued_at=now,
            command_id=f"bench-cmd-{i:08d}",
            until=now + timedelta(hours=15),
        )
        for i in range(PER_ROUND)
    ]


def _unsigned(command: Command) -> tuple[bytes, dict[str, str]]:
    """The encoding before signatures (agent_commands.encode as it was)."""
    return command.model_dump_json(exclude_none=True).encode(), {
        "agent_id": command.agent_id,
        "event_type": EventType.COMMAND.value,
        "command": command.command.value,
    }


def _us_per_item(run: Callable[[], object]) -> float:
    times = []
    for _ in range(ROUNDS):
        start = time.perf_counter()
        run()
        times.append((time.perf_counter() - start) / PER_ROUND * 1e6)
    return statistics.median(times)


def measure() -> dict[str, float]:
    key = AgentKey.generate()
    commands = _commands()
    signed = [sign_command(c, key) for c in commands]
    plain = [_unsigned(c) for c in commands]
    figures = {
        "encode_unsigned_us": _us_per_item(lambda: [_unsigned(c) for c in commands]),
        "encode_signed_us": _us_per_item(lambda: [sign_command(c, key) for c in commands]),
        "decode_unsigned_us": _us_per_item(lambda: [Command.model_validate_json(b) for b, _ in plain]),
        "decode_verified_us": _us_per_item(lambda: [verify_command(b, a, key.public_key) for b, a in signed]),
    }
    figures["signing_cost_us"] = figures["encode_signed_us"] - figures["encode_unsigned_us"]
    figures["verification_cost_us"] = figures["decode_verified_us"] - figures["decode_unsigned_us"]
    return {k: round(v, 1) for k, v in figures.items()}


def main(argv: list[str]) -> int:
    figures = measure()
    if "--json" in argv:
        print(json.dumps(figures))
        return 0
    print(f"commands, µs each (median of {ROUNDS} rounds of {PER_ROUND}):")
    print(f"  fleet: encode unsigned {figures['encode_unsigned_us']}, signed {figures['encode_signed_us']}")
    print(f"         signing adds {figures['signing_cost_us']} per command")
    print(f"  agent: decode unchecked {figures['decode_unsigned_us']}, verified {figures['decode_verified_us']}")
    print(f"         verification adds {figures['verification_cost_us']} per command")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
