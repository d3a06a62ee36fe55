"""``fleetctl enroll`` (create, list and revoke a tenant's enrollment tokens) and ``fleetctl agents
revoke-key``: the same services as the REST API (shared.services.enrollment, agent_controls), reached
with the operator's own credentials like the rest of fleetctl, audited as ``cli:<user>``.

A new token's text goes to stdout once, alone (for a script to capture); everything else to stderr.
"""

from __future__ import annotations

import argparse
import getpass
import json
import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any, TextIO

from fleet_agent.contracts import AGENT_ID_PATTERN

from shared.domain import enrollment as domain
from shared.services import agent_controls, enrollment

_DURATION = re.compile(r"^(?:(\d{1,3})d)?(?:(\d{1,4})h)?(?:(\d{1,5})m)?$")
COLUMNS = ("token_id", "state", "scope", "uses", "max_uses", "expires_at", "label", "created_by")


def _id(value: str) -> str:
    if not re.match(AGENT_ID_PATTERN, value):
        raise argparse.ArgumentTypeError(f"must match {AGENT_ID_PATTERN}")
    return value


def expiry(text: str) -> timedelta:
    """``7d``, ``12h``, ``90m``, ``1d12h``: from 1 minute to 30 days."""
    match = _DURATION.match(text.strip().lower())
    if not text.strip() or match is None or not any(match.groups()):
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration: write e.g. 7d, 12h or 90m")
    days, hours, minutes = (int(g or 0) for g in match.groups())
    value = timedelta(days=days, hours=hours, minutes=minutes)
    if not timedelta(minutes=1) <= value <= domain.MAX_TOKEN_TTL:
        raise argparse.ArgumentTypeError("a token lives from 1m to 30d")
    return value


def add_parsers(groups: Any, agent_cmds: Any) -> None:
    """``enroll {create,list,revoke}`` beside fleetctl's groups, and ``agents revoke-key``."""
    enroll = groups.add_parser("enroll", help="enrollment tokens: what lets an agent bind its first key")
    cmds = enroll.add_subparsers(dest="command", required=True, metavar="{create,list,revoke}")
    create = cmds.add_parser("create", help="create a token; prints only the token on stdout, once")
    create.add_argument("--tenant", required=True, type=_id)
    scope = create.add_mutually_exclusive_group()
    scope.add_argument("--agent-id", type=_id, help="enroll this agent only")
    scope.add_argument("--prefix", help="enroll agents whose id starts with this only")
    create.add_argument("--uses", type=int, default=1, help="enrollments it allows (default 1)")
    create.add_argument("--expires", type=expiry, default=domain.DEFAULT_TOKEN_TTL, help="e.g. 7d (default 1d)")
    create.add_argument("--label", default="", help="what it is for (shown in listings)")
    create.add_argument("--principal", help="Google principal given subscriber on the agent's command subscription")
    create.add_argument("--json", action="store_true", help="print the whole answer as JSON instead")
    listing = cmds.add_parser("list", help="a tenant's tokens, newest first (never their text)")
    listing.add_argument("--tenant", required=True, type=_id)
    listing.add_argument("--json", action="store_true", help="print a JSON array instead of a table")
    revoke = cmds.add_parser("revoke", help="revoke a token (agents it enrolled keep their keys)")
    revoke.add_argument("--tenant", required=True, type=_id)
    revoke.add_argument("token_id")
    key = agent_cmds.add_parser("revoke-key", help="revoke an agent's key: its events are refused until it enrolls")
    key.add_argument("agent_id", type=_id)
    key.add_argument("--reason", default="", help="why; kept in the audit log")


def _actor() -> agent_controls.Actor:
    try:
        user = getpass.getuser()
    except Exception:  # no login name in some containers
        user = "unknown"
    return agent_controls.Actor(f"cli:{user}", uuid.uuid4().hex)


def _refused(refused: agent_controls.Refused, err: TextIO) -> int:
    print(f"fleetctl: {refused.reason}", file=err)
    return 1


def create(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    at = datetime.now(UTC)
    try:
        made = enrollment.create(
            args.tenant,
            _actor(),
            at,
            label=args.label,
            agent_id=args.agent_id,
            agent_prefix=args.prefix,
            max_uses=args.uses,
            ttl=args.expires,
            principal=args.principal,
        )
    except agent_controls.Refused as refused:
        return _refused(refused, err)
    token = made.token
    if args.json:
        shown = {**_row(token, at), "token": made.text, "fleet_public_key": made.fleet_public_key}
        print(json.dumps({**shown, "command_subscription": made.subscription}), file=out)
    else:
        print(made.text, file=out)
    print(
        f"created token {token.token_id} for {domain.scope_text(token)} of tenant {token.tenant} "
        f"({token.max_uses} use(s), expires {token.expires_at:%Y-%m-%d %H:%M}Z); it is shown once: store it now.\n"
        "The agent enrolls with it on first start: FleetAgent(..., enrollment_token=TOKEN, key_path=...) "
        "or `fleet-agent enroll`.",
        file=err,
    )
    return 0


def list_tokens(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    at = datetime.now(UTC)
    rows = [_row(t, at) for t in enrollment.listing(args.tenant)]
    if args.json:
        print(json.dumps(rows, indent=2), file=out)
        return 0
    if not rows:
        print(f"no enrollment tokens in tenant {args.tenant}", file=err)
        return 0
    table = [[str(row[c]) if row[c] not in (None, "") else "-" for c in COLUMNS] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in table)) for i, c in enumerate(COLUMNS)]
    for line in [[c.upper() for c in COLUMNS], *table]:
        print("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip(), file=out)
    return 0


def revoke(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    try:
        token = enrollment.revoke(args.tenant, args.token_id, _actor(), datetime.now(UTC))
    except agent_controls.Refused as refused:
        return _refused(refused, err)
    print(f"token {token.token_id} revoked (by {token.revoked_by} at {token.revoked_at:%Y-%m-%d %H:%M}Z)", file=out)
    return 0


def revoke_key(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    try:
        record, changed = agent_controls.revoke_key(args.agent_id, _actor(), datetime.now(UTC), args.reason)
    except agent_controls.Refused as refused:
        return _refused(refused, err)
    said = "key revoked" if changed else "has no key (already revoked or never enrolled); nothing changed"
    print(f"{record.agent_id}: {said}", file=out)
    return 0


def _row(token: domain.EnrollmentToken, at: datetime) -> dict[str, Any]:
    return {
        "token_id": token.token_id,
        "state": token.state(at).value,
        "scope": domain.scope_text(token),
        "uses": token.uses,
        "max_uses": token.max_uses,
        "expires_at": token.expires_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "label": token.label,
        "created_by": token.created_by,
        "principal": token.principal,
    }


#: The commands of this module by (group, command), for fleetctl's dispatcher.
COMMANDS = {
    ("enroll", "create"): create,
    ("enroll", "list"): list_tokens,
    ("enroll", "revoke"): revoke,
    ("agents", "revoke-key"): revoke_key,
}
