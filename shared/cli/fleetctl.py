"""``fleetctl``: the operator's command line (API keys, manual lifecycle transitions, enrollment tokens
and agent keys: shared/cli/enroll.py).

It talks to Firestore directly through ``shared.store`` with the operator's own credentials
(or the emulator when FIRESTORE_EMULATOR_HOST and GOOGLE_CLOUD_PROJECT are set), so it keeps
working when the API is down. Output meant for scripts goes to stdout, everything else to stderr.
"""

from __future__ import annotations

import argparse
import dataclasses
import getpass
import json
import re
import sys
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, TextIO

from fleet_agent.contracts import AGENT_ID_PATTERN

from shared.cli import enroll
from shared.domain import holds, release
from shared.domain.agent_record import AgentRecord, Plan
from shared.domain.agents import apply_transition
from shared.domain.api_keys import Role
from shared.domain.lifecycle import Cause, Outcome, State
from shared.platform import settings, topology
from shared.services import agent_controls, decommission, replay
from shared.store import agents as agent_store
from shared.store import api_keys
from shared.store import audit as audit_store
from shared.store import rejections as rejection_store

EXIT_OK = 0
EXIT_FAILED = 1  # the command ran and said no (unknown key or agent, illegal transition)
EXIT_UNAVAILABLE = 2  # Firestore could not be reached or refused the credentials


class UnknownAgent(Exception):
    """The agent to act on does not exist: reported, not a bug."""


def _tenant(value: str) -> str:
    if not re.match(AGENT_ID_PATTERN, value):
        raise argparse.ArgumentTypeError(f"a tenant must match {AGENT_ID_PATTERN}")
    return value


def _name(value: str) -> str:
    value = value.strip()
    if not 1 <= len(value) <= 200:
        raise argparse.ArgumentTypeError("a name has 1 to 200 characters")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fleetctl",
        description="Operate Agent Fleet Manager: API keys, lifecycle transitions, enrollment tokens, replays.",
    )
    groups = parser.add_subparsers(dest="group", required=True, metavar="{keys,agents,enroll,rejections}")

    keys = groups.add_parser("keys", help="create, list and revoke API keys")
    key_cmds = keys.add_subparsers(dest="command", required=True, metavar="{create,list,revoke}")
    create = key_cmds.add_parser("create", help="create a key; prints only the token on stdout")
    create.add_argument("--name", required=True, type=_name, help="who or what the key is for")
    create.add_argument("--role", choices=[r.value for r in Role], default=Role.VIEWER.value)
    create.add_argument("--tenant", type=_tenant, help="limit the key to one tenant (default: every tenant)")
    create.add_argument("--json", action="store_true", help='print {"key_id", "token"} instead')
    listing = key_cmds.add_parser("list", help="list keys (never their secrets)")
    listing.add_argument("--json", action="store_true", help="print a JSON array instead of a table")
    revoke = key_cmds.add_parser("revoke", help="revoke a key (takes effect within the key cache time)")
    revoke.add_argument("key_id")

    agents = groups.add_parser("agents", help="act on agents")
    agent_cmds = agents.add_subparsers(dest="command", required=True, metavar="{transition,revoke-key}")
    transition = agent_cmds.add_parser(
        "transition",
        help="move an agent through the operator's operations: suspended (pause), quarantined, active (resume, "
        "release, end of maintenance), maintenance, decommissioned (audited)",
    )
    transition.add_argument("agent_id")
    transition.add_argument("state", choices=[s.value for s in State], metavar="STATE", help="the target state")
    transition.add_argument("--reason", required=True, help="why; kept in the audit log")
    transition.add_argument("--actor", help="who asks (default: cli:<your user name>)")

    enroll.add_parsers(groups, agent_cmds)

    rejections = groups.add_parser("rejections", help="replay recorded rejections")
    rejection_cmds = rejections.add_subparsers(dest="command", required=True, metavar="{replay}")
    replay = rejection_cmds.add_parser(
        "replay", help="publish rejected events again to their topic (safe: handlers are idempotent)"
    )
    replay.add_argument("ids", nargs="*", help="rejection ids (default: every rejection matching the filters)")
    replay.add_argument("--code", default="delivery_exhausted", help="only this code (default: delivery_exhausted)")
    replay.add_argument("--agent", dest="agent_id", type=_tenant, help="only this agent")
    replay.add_argument("--limit", type=int, default=1000, help="at most this many (default 1000)")
    replay.add_argument("--dry-run", action="store_true", help="show what would be published")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    commands = {
        ("keys", "create"): _keys_create,
        ("keys", "list"): _keys_list,
        ("keys", "revoke"): _keys_revoke,
        ("agents", "transition"): _agents_transition,
        ("rejections", "replay"): _rejections_replay,
        **enroll.COMMANDS,
    }
    try:
        return commands[(args.group, args.command)](args, sys.stdout, sys.stderr)
    except Exception as exc:
        if not _is_google_error(exc):
            raise
        print(f"fleetctl: {type(exc).__name__}: {exc}", file=sys.stderr)
        print(
            "fleetctl: check your credentials (gcloud auth application-default login) and "
            "GOOGLE_CLOUD_PROJECT, or set FIRESTORE_EMULATOR_HOST for the local emulator",
            file=sys.stderr,
        )
        return EXIT_UNAVAILABLE


def _is_google_error(exc: BaseException) -> bool:
    """Firestore or credential errors: reported in one line, not as a traceback (bugs still trace)."""
    # lazy: the Google client libraries load only when a command fails
    from google.api_core.exceptions import GoogleAPIError
    from google.auth.exceptions import GoogleAuthError

    return isinstance(exc, GoogleAPIError | GoogleAuthError)


def _keys_create(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    role = Role(args.role)
    key_id, token = api_keys.create(args.name, role, args.tenant)
    if args.json:
        print(json.dumps({"key_id": key_id, "token": token}), file=out)
    else:
        print(token, file=out)
    scope = f"tenant {args.tenant}" if args.tenant else "every tenant"
    print(f"created key {key_id} ({role.value}, {scope}); the token is shown once: store it now", file=err)
    return EXIT_OK


def _keys_list(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    keys = sorted(api_keys.list_keys(), key=lambda k: (_sortable(k.get("created_at")), k["key_id"]))
    columns = ("key_id", "name", "role", "tenant", "created_at", "revoked_at")
    rows = [{c: k.get(c) for c in columns} for k in keys]  # only these: never the hash, whatever is stored
    if args.json:
        print(json.dumps(rows, default=_json_default, indent=2), file=out)
        return EXIT_OK
    if not rows:
        print("no API keys", file=err)
        return EXIT_OK
    _print_table(columns, [[_cell(row[c]) for c in columns] for row in rows], out)
    return EXIT_OK


def _keys_revoke(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    if not api_keys.revoke(args.key_id):
        print(f"fleetctl: no API key {args.key_id}", file=err)
        return EXIT_FAILED
    print(f"revoked key {args.key_id}", file=out)
    return EXIT_OK


#: The operations ``agents transition`` goes through, by target state (as the API's routes do): holds,
#: approvals' rules and cleanups apply; the other states are the system's (or an event's) to set.
OPERATIONS = {
    State.SUSPENDED: "pause",
    State.QUARANTINED: "quarantine",
    State.DECOMMISSIONING: "decommission",
    State.DECOMMISSIONED: "decommission",
    State.ACTIVE: "resume, release or end maintenance",
    State.MAINTENANCE: "maintenance",
}


def _agents_transition(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """Move an agent through the operator's operations (shared/services), never around them."""
    target = State(args.state)
    actor = agent_controls.Actor(args.actor or f"cli:{_user()}", uuid.uuid4().hex)
    # Fixed before the first attempt: a retried write computes the same audit entries (same ids).
    at = datetime.now(UTC)
    record = agent_store.get(args.agent_id)
    if record is None:
        print(f"fleetctl: no agent {args.agent_id}", file=err)
        return EXIT_FAILED
    before = record.status
    try:
        after, note = _operate(record, target, actor, args.reason, at)
    except agent_controls.Refused as refused:
        entry = agent_controls.audit_entry(
            actor, "agent.transition", record.agent_id, record.tenant, {"to": target.value, "refusal": refused.reason},
            at,
        )  # fmt: skip
        audit_store.append(dataclasses.replace(entry, outcome="refused"))
        print(f"fleetctl: refused: {refused.reason}; {args.agent_id} stays {before}", file=err)
        return EXIT_FAILED
    if after.status is before and not note:
        print(f"{args.agent_id}: already {before}; nothing changed", file=out)
    else:
        print(f"{args.agent_id}: {before} -> {after.status}{note} (audited by {actor.name})", file=out)
    return EXIT_OK


def _operate(
    record: AgentRecord, target: State, actor: agent_controls.Actor, reason: str, at: datetime
) -> tuple[AgentRecord, str]:
    """The operation moving ``record`` to ``target``: (the agent after it, a note on what it did)."""
    agent_id = record.agent_id
    operation = OPERATIONS.get(target)
    if operation is None:
        ways = ", ".join(sorted({s.value for s in OPERATIONS}))
        raise agent_controls.Refused(400, f"{target} is set by the fleet itself; an operator moves agents to: {ways}")
    if operation == "pause":
        return agent_controls.pause(agent_id, actor, reason, at)[0], ""
    if operation == "quarantine":
        return agent_controls.quarantine(agent_id, actor, reason, at)[0], ""
    if operation == "decommission":
        done = decommission.decommission(agent_id, actor, reason, at)
        return done.record, " (holds lifted, key revoked, command subscription deleted)" if done.changed else ""
    if target is State.ACTIVE and record.status is State.SUSPENDED and "pause" in record.holds:
        return agent_controls.resume(agent_id, actor, reason, at), " (pause lifted)"
    if target is State.ACTIVE and release.releasable(record):
        return agent_controls.release_agent(agent_id, actor, reason, at).record, " (released)"
    if target is State.ACTIVE and record.status is not State.MAINTENANCE:
        if record.status is State.ACTIVE:
            return record, ""
        raise agent_controls.Refused(409, f"{record.status} is not lifted by an operator's transition to active")
    return _maintenance(record, target, actor, reason, at), ""


def _maintenance(
    record: AgentRecord, target: State, actor: agent_controls.Actor, reason: str, at: datetime
) -> AgentRecord:
    """Enter or leave maintenance: refused while a hold sets the agent's state (lift the hold first), so a
    budget or a quarantine is never lifted through maintenance."""

    def step(current: AgentRecord) -> Plan:
        held = sorted(n for n in current.holds if holds.KINDS[n].state is not None)
        if held:
            raise agent_controls.Refused(409, f"agent {current.agent_id} is held ({', '.join(held)}): lift that first")
        plan = apply_transition(
            current, target, cause=Cause.OPERATOR, actor=actor.name, reason=reason, at=at, action_id=actor.request_id
        )
        if plan.transition is not None and plan.transition.outcome is Outcome.ILLEGAL:
            raise agent_controls.Refused(409, plan.transition.reason)
        return plan

    return agent_controls.update_agent(record.agent_id, actor, step)[1]


def _rejections_replay(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    manifest = topology.load()
    if args.ids:
        found = [rejection_store.get(rid) for rid in args.ids]
        missing = [rid for rid, doc in zip(args.ids, found, strict=True) if doc is None]
        if missing:
            print(f"fleetctl: no rejection {', '.join(missing)}", file=err)
            return 1
        chosen = [doc for doc in found if doc is not None]
    else:
        chosen, after = [], None
        while len(chosen) < args.limit:
            page, after = rejection_store.list_page(
                agent_id=args.agent_id, code=args.code, page_size=min(500, args.limit - len(chosen)), after=after
            )
            chosen += page
            if after is None:
                break
    publisher = None
    failures = 0
    for doc in chosen:
        try:
            item = replay.plan(doc, manifest)
        except ValueError as exc:
            failures += 1
            print(f"{doc['id']}: not replayed: {exc}", file=err)
            continue
        if args.dry_run:
            print(f"{item.rejection_id}: would publish {len(item.data)} bytes to {item.topic}", file=out)
            continue
        if publisher is None:
            # lazy: the Pub/Sub client (gRPC) loads only for a replay that publishes
            from google.cloud.pubsub_v1 import PublisherClient

            publisher = PublisherClient()
        path = publisher.topic_path(settings.get().project, item.topic)
        message_id = publisher.publish(path, item.data, **item.attributes).result(timeout=60)
        rejection_store.mark_replayed(item.rejection_id, message_id)
        print(f"{item.rejection_id}: published again to {item.topic} as message {message_id}", file=out)
    print(
        f"{len(chosen) - failures} of {len(chosen)} rejections {'would be ' if args.dry_run else ''}replayed", file=err
    )
    return 1 if failures else 0


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no login name in some containers
        return "unknown"


def _sortable(value: Any) -> str:
    return value.isoformat() if isinstance(value, datetime) else str(value or "")


def _json_default(value: Any) -> str:
    return value.isoformat() if isinstance(value, datetime) else str(value)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, datetime):
        aware = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
        return aware.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    return str(value)


def _print_table(header: Sequence[str], rows: list[list[str]], out: TextIO) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    for line in [[h.upper() for h in header], *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip(), file=out)


if __name__ == "__main__":
    raise SystemExit(main())
