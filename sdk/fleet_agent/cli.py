"""``fleet-agent enroll``: enroll an agent from a shell, before it first starts.

    fleet-agent enroll --token "$TOKEN" --agent-id chat-7 --tenant acme --name "Support chat" \\
        --type llm-chat --version 2.4.1 --owner support --key-path /var/lib/chat-7/fleet.key

Generates the agent's key, publishes its enrollment registration (signed by the key, carrying the token
and the public key), and writes the key file (mode 0600) and its state (``<key-path>.json``). The agent
then starts with ``FleetAgent(..., key_path=...)`` and no token. Prints the key id and the name of the
command subscription the fleet creates for the agent. It is :class:`~fleet_agent.FleetAgent` underneath.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from fleet_agent.client import FleetAgent, Publisher
from fleet_agent.contracts import Registration


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fleet-agent", description="Agent Fleet Manager agent tools")
    commands = parser.add_subparsers(dest="command", required=True)
    enroll = commands.add_parser("enroll", help="enroll an agent with a token and write its key file")
    enroll.add_argument("--token", required=True, help="the enrollment token (afmt1.…) an admin created")
    enroll.add_argument("--agent-id", required=True)
    enroll.add_argument("--tenant", required=True)
    enroll.add_argument("--name", required=True)
    enroll.add_argument("--type", required=True, dest="agent_type")
    enroll.add_argument("--version", required=True)
    enroll.add_argument("--owner", required=True)
    enroll.add_argument("--key-path", required=True, help="where to write the agent's private key (mode 0600)")
    enroll.add_argument("--project", help="the fleet's project (default: GOOGLE_CLOUD_PROJECT)")
    return parser


def main(argv: Sequence[str] | None = None, *, publisher: Publisher | None = None) -> int:
    """Run the command; returns the exit status (``publisher``: for tests and other transports)."""
    args = _parser().parse_args(argv)
    try:
        registration = Registration(
            agent_id=args.agent_id,
            tenant=args.tenant,
            name=args.name,
            agent_type=args.agent_type,
            version=args.version,
            owner=args.owner,
        )
        agent = FleetAgent(
            registration,
            project=args.project,
            publisher=publisher,
            enrollment_token=args.token,
            key_path=args.key_path,
        )
    except ValueError as exc:  # pydantic's ValidationError is one; the token is never printed
        print(f"fleet-agent enroll: {exc}", file=sys.stderr)
        return 1
    with agent:
        if not agent.identity.enrolling:
            print(f"fleet-agent enroll: {args.key_path} was enrolled with this token already", file=sys.stderr)
            return 1
        agent.register()
        key = agent.identity.key
        assert key is not None
        print(f"enrolled agent {agent.agent_id} (tenant {registration.tenant})")
        print(f"key id: {key.key_id}")
        print(f"key file: {args.key_path}")
        print(f"command subscription: {agent.command_subscription}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
