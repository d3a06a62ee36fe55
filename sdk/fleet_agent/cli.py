"""``fleet-agent enroll``: enroll an agent from a shell, before it first starts; ``fleet-agent otlp-token``:
print a bearer token for the fleet's OTLP endpoint, made with the enrolled key (docs/otlp.md).

    fleet-agent enroll --token - --agent-id chat-7 --tenant acme --name "Support chat" \\
        --type llm-chat --version 2.4.1 --owner support --key-path /var/lib/chat-7/fleet.key < token.txt

The token comes from ``FLEET_ENROLLMENT_TOKEN``, or from stdin with ``--token -`` (so that it is in
neither ``ps`` nor the shell's history); ``--token TOKEN`` works too. Generates the agent's key,
publishes its enrollment registration (signed by the key, carrying the token and the public key), and
writes the key file (mode 0600) and its state (``<key-path>.json``). The agent then starts with
``FleetAgent(..., key_path=...)`` and no token. It is :class:`~fleet_agent.FleetAgent` underneath.

Pub/Sub accepting the registration is not the fleet accepting the enrollment, and the fleet sends no
confirmation of one: the command prints the key id and says how to check (the agent's ``identity.key_id``
in the API) and where a refusal is listed. Enrolling again (another token, same key path) keeps the key
enrolled before as ``<key-path>.previous`` (docs/sdk.md: going back).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from fleet_agent import otlp_token
from fleet_agent.client import FleetAgent, Publisher
from fleet_agent.contracts import Registration
from fleet_agent.enrollment import TOKEN_ENV
from fleet_agent.identity import AgentKey


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fleet-agent", description="Agent Fleet Manager agent tools")
    commands = parser.add_subparsers(dest="command", required=True)
    enroll = commands.add_parser("enroll", help="enroll an agent with a token and write its key file")
    enroll.add_argument(
        "--token",
        help=f"the enrollment token (afmt1.…) an admin created; '-' reads it from stdin (default: ${TOKEN_ENV})",
    )
    enroll.add_argument("--agent-id", required=True)
    enroll.add_argument("--tenant", required=True)
    enroll.add_argument("--name", required=True)
    enroll.add_argument("--type", required=True, dest="agent_type")
    enroll.add_argument("--version", required=True)
    enroll.add_argument("--owner", required=True)
    enroll.add_argument("--key-path", required=True, help="where to write the agent's private key (mode 0600)")
    enroll.add_argument("--project", help="the fleet's project (default: GOOGLE_CLOUD_PROJECT)")
    token = commands.add_parser("otlp-token", help="print a bearer token for the fleet's OTLP endpoint")
    token.add_argument("--agent-id", required=True)
    token.add_argument("--tenant", required=True)
    token.add_argument("--key-path", required=True, help="the agent's enrolled private key")
    token.add_argument("--days", type=float, default=otlp_token.MAX_DAYS, help="validity (at most 30)")
    return parser


def _otlp_token(args: argparse.Namespace) -> int:
    """Print a token made with the agent's enrolled key (docs/otlp.md); nothing is sent anywhere."""
    try:
        key = AgentKey.load(args.key_path)
        print(otlp_token.mint(key, agent_id=args.agent_id, tenant=args.tenant, days=args.days))
    except (OSError, ValueError) as exc:
        print(f"fleet-agent otlp-token: {exc}", file=sys.stderr)
        return 1
    return 0


def _token(given: str | None) -> str:
    """The token: ``--token`` (``-``: the first line of stdin), else ``FLEET_ENROLLMENT_TOKEN``."""
    text = sys.stdin.readline() if given == "-" else given or os.environ.get(TOKEN_ENV, "")
    if not text.strip():
        raise ValueError(f"no enrollment token: pass --token - (stdin) or set {TOKEN_ENV}")
    return text.strip()


def main(argv: Sequence[str] | None = None, *, publisher: Publisher | None = None) -> int:
    """Run the command; returns the exit status (``publisher``: for tests and other transports)."""
    args = _parser().parse_args(argv)
    if args.command == "otlp-token":
        return _otlp_token(args)
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
            enrollment_token=_token(args.token),
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
        print(f"enrollment of agent {agent.agent_id} (tenant {registration.tenant}) published, not yet confirmed")
        print(f"key id: {key.key_id}")
        print(f"key file: {args.key_path}")
        if agent.identity.kept is not None:
            print(f"previous key kept: {agent.identity.kept} (delete it once the new key is confirmed)")
        print(f"command subscription: {agent.command_subscription}")
        print(
            f"confirmed when GET /v1/agents/{agent.agent_id} shows identity.key_id {key.key_id}; "
            f"a refusal is listed by GET /v1/rejections?claimed_agent_id={agent.agent_id}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
