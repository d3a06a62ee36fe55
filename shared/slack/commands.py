"""``/fleet`` in Slack: each subcommand checks the user's role in the tenant it touches, does its work
through the same code as the REST API (shared.services.agent_controls, shared.services.approvals,
the stores), and answers in a few lines of Block Kit. Every command, and every refusal, is audited.

The reply is the slash command's immediate answer (``ack``), so it is shown within Slack's 3
seconds; nothing here waits on more than a handful of Firestore reads and one conditional write.
A command that changes something claims its Slack request first (shared/store/slack_requests.py):
Slack's retry of it gets the first reply back and changes nothing.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from fleet_agent.contracts import AGENT_ID_PATTERN

from shared.domain import approvals as approval_domain
from shared.domain import budgets, episodes, release, roles, slash
from shared.domain.agent_record import AgentRecord
from shared.domain.api_keys import Role
from shared.domain.audit import AuditEntry
from shared.domain.lifecycle import State
from shared.domain.roles import Action
from shared.domain.silences import Silence
from shared.platform import logs, settings
from shared.services import accounting, agent_controls, approvals
from shared.store import agents as agent_store
from shared.store import approvals as approval_store
from shared.store import audit as audit_store
from shared.store import episodes as episode_store
from shared.store import roles as role_store
from shared.store import slack_requests
from shared.store import usage as usage_store

log = logs.get_logger("slack.commands")

LISTED = 20
_STATES = {s.value for s in State}
_PERIODS = {"hourly", "daily", "monthly"}


class Refusal(Exception):
    """The user may not do this, or it cannot be done: said back, and audited as refused (under the
    tenant and target it was about, when known)."""

    def __init__(self, message: str, *, tenant: str | None = None, target: str = "") -> None:
        super().__init__(message)
        self.tenant = tenant
        self.target = target


@dataclass
class Asker:
    """Who typed the command and what Slack said about the request."""

    user_id: str
    user_name: str
    now: datetime
    #: The request's id for audit and idempotency (the trigger id; a retry carries the same one).
    request_id: str
    roles: dict[str, str] = field(default_factory=dict)
    channel_id: str = ""
    #: The agent (or tenant) the command turned out to be about, and its tenant: for the audit entry
    #: of a refusal raised after it was found.
    subject: tuple[str, str | None] = ("", None)

    @property
    def actor(self) -> str:
        return f"slack:{self.user_id}"

    def operator(self) -> agent_controls.Actor:
        return agent_controls.Actor(self.actor, self.request_id, frozenset(self.roles))

    def role(self, tenant: str) -> Role | None:
        return roles.role_of(self.roles, tenant)


@dataclass(frozen=True)
class Reply:
    """A Block Kit reply; ``public`` ones are shown to the channel (changes), the rest only to the user."""

    text: str
    lines: tuple[str, ...] = ()
    public: bool = False
    outcome: str = "ok"
    target: str = ""
    tenant: str | None = None

    def payload(self) -> dict[str, Any]:
        blocks: list[dict[str, Any]] = [{"type": "section", "text": {"type": "mrkdwn", "text": self.text[:2900]}}]
        body = "\n".join(self.lines)
        while body:
            blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": body[:2900]}})
            body = body[2900:]
        return {
            "response_type": "in_channel" if self.public else "ephemeral",
            "text": self.text[:3000],
            "blocks": blocks[:10],
        }


def run(payload: dict[str, Any], now: datetime) -> dict[str, Any]:
    """Answer one ``/fleet`` request (Slack's form fields as a dict); never raises for user errors.
    Usage lines name the command as the workspace registered it (``FLEET_SLASH_COMMAND``)."""
    return _named(_run(payload, now), str(payload.get("command") or slash.COMMAND))


def _named(reply: dict[str, Any], command: str) -> dict[str, Any]:
    if command == slash.COMMAND:
        return reply
    return dict(json.loads(json.dumps(reply).replace(f"{slash.COMMAND} ", f"{command} ")))


def _run(payload: dict[str, Any], now: datetime) -> dict[str, Any]:
    text = str(payload.get("text") or "")
    user_id = str(payload.get("user_id") or "")
    request_id = str(payload.get("trigger_id") or "") or _fallback_id(payload)
    asker = Asker(
        user_id, str(payload.get("user_name") or ""), now, request_id, channel_id=str(payload.get("channel_id") or "")
    )
    try:
        parsed = slash.parse(text)
    except slash.Usage as usage:
        reply = _usage(usage)
        _audit(asker, "slack.command", "", None, "usage", text=text[:200], reason=str(usage))
        return reply.payload()
    key = f"cmd.{request_id}"
    if parsed.spec.mutates:
        claim = slack_requests.begin(key, now)
        if claim.state == "done" and claim.reply is not None:
            return claim.reply
        if claim.state != "new":
            return Reply("⏳ Still working on this command; its result will show here shortly.").payload()
    asker.roles = role_store.of_user(user_id)
    try:
        reply = COMMANDS[parsed.name](asker, parsed)
    except slash.Usage as usage:
        reply = _usage(usage, parsed.spec)
    except Refusal as refusal:
        reply = Reply(f"🚫 {refusal}", outcome="refused", target=refusal.target, tenant=refusal.tenant)
    except agent_controls.Refused as refused:
        target, tenant = asker.subject
        outcome = "refused" if refused.status == 403 else "failed"
        reply = Reply(f"Nothing changed: {refused.reason}.", outcome=outcome, target=target, tenant=tenant)
    except Exception:
        if parsed.spec.mutates:
            slack_requests.abandon(key)  # Slack's retry acts again instead of waiting out the claim
        raise
    _audit(
        asker,
        f"slack.{parsed.name}",
        reply.target,
        reply.tenant,
        reply.outcome,
        text=text[:200],
        reply=reply.text[:300],
    )
    out = reply.payload()
    if parsed.spec.mutates:
        slack_requests.finish(key, out)
    return out


def _fallback_id(payload: dict[str, Any]) -> str:
    """Without a trigger id (never from Slack itself): a hash of who said what, so retries still match."""
    raw = "|".join(str(payload.get(k) or "") for k in ("team_id", "user_id", "channel_id", "text", "response_url"))
    return hashlib.sha256(raw.encode()).hexdigest()[:32]


def _usage(usage: slash.Usage, spec: slash.Spec | None = None) -> Reply:
    spec = spec or usage.spec
    lines = (f"`/fleet {spec.usage}`",) if spec else tuple(slash.help_lines())
    return Reply(f"🤔 {usage}", lines, outcome="usage")


def _audit(asker: Asker, action: str, target: str, tenant: str | None, outcome: str, **details: Any) -> None:
    entry = AuditEntry(
        id=f"slack.{asker.request_id}.{action}"[:1400],
        at=asker.now,
        actor=asker.actor,
        action=action,
        target=target,
        outcome=outcome,
        tenant=tenant,
        details={"user_name": asker.user_name, **details},
    )
    audit_store.append(entry)


# --- resolving names --------------------------------------------------------------------------


def _require(asker: Asker, tenant: str, action: Action, target: str = "") -> None:
    role = asker.role(tenant)
    if not roles.allows(role, action):
        raise Refusal(roles.refusal(role, action, tenant), tenant=tenant, target=target or f"tenant.{tenant}")


def _agent(asker: Asker, agent_id: str, action: Action = Action.READ) -> AgentRecord:
    """The agent if the user has a role in its tenant (else "not found": existence is not leaked),
    after checking the role ``action`` needs."""
    record = agent_store.get(agent_id) if _valid_id(agent_id) else None
    if record is None or asker.role(record.tenant) is None:
        raise Refusal(f"agent `{agent_id[:64]}` not found among the tenants you have a role in")
    asker.subject = (record.agent_id, record.tenant)
    _require(asker, record.tenant, action, record.agent_id)
    return record


def _valid_id(value: str) -> bool:
    import re

    return re.match(AGENT_ID_PATTERN, value) is not None


def _tenant(asker: Asker, given: str | None) -> str:
    """The tenant named, or the user's only tenant."""
    if given is not None:
        if asker.role(given) is None:
            raise Refusal(f"you have no role in tenant `{given[:64]}`")
        return given
    mine = sorted(asker.roles)
    if len(mine) == 1:
        return mine[0]
    if not mine:
        raise Refusal("you have no role in any tenant yet: ask an admin to add you (`/fleet roles`)")
    raise slash.Usage(f"you have roles in several tenants ({', '.join(mine)}): name one")


def _tenants(asker: Asker, given: str | None) -> list[str]:
    if given is not None:
        return [_tenant(asker, given)]
    if not asker.roles:
        raise Refusal("you have no role in any tenant yet: ask an admin to add you (`/fleet roles`)")
    return sorted(asker.roles)


def _when(at: Any) -> str:
    return f"{at:%Y-%m-%d %H:%M} UTC" if isinstance(at, datetime) else "never"


def _said(record: AgentRecord, text: str, outcome: str = "applied") -> Reply:
    """A reply about one agent; a change is shown to the channel, anything else only to the user."""
    return Reply(text, public=outcome == "applied", outcome=outcome, target=record.agent_id, tenant=record.tenant)


def _agent_line(record: AgentRecord) -> str:
    held = f" · held: {', '.join(sorted(record.holds))}" if record.holds else ""
    return f"`{record.agent_id}` {record.status.value} · liveness {record.liveness}{held}"


# --- the commands -----------------------------------------------------------------------------


def _help(asker: Asker, parsed: slash.Parsed) -> Reply:
    mine = ", ".join(f"{t}: {r}" for t, r in sorted(asker.roles.items())) or "none yet"
    return Reply(f"*/fleet* commands (your roles: {mine})", tuple(slash.help_lines()))


def _status(asker: Asker, parsed: slash.Parsed) -> Reply:
    if parsed.args:
        record = _agent(asker, parsed.args[0])
        score = record.health.get("score")
        open_rules = ", ".join(sorted(record.episodes)) or "none"
        facts = (
            f"tenant {record.tenant} · owner {record.owner} · {record.agent_type} {record.version}",
            f"last heartbeat {_when(record.last_heartbeat_at)} (every {record.heartbeat_interval_s} s)",
            f"security score {score if score is not None else 100} · open alerts: {open_rules}",
        )
        return Reply(_agent_line(record), facts, target=record.agent_id, tenant=record.tenant)
    lines = []
    for tenant in _tenants(asker, None):
        counts = {state: agent_store.count(tenant, [state]) for state in ("ok", "late", "offline", "frozen")}
        total = agent_store.count(tenant)
        open_alerts = len(episode_store.list_episodes(state="open", tenant=tenant, limit=100))
        summary = " · ".join(f"{n} {state}" for state, n in counts.items() if n)
        lines.append(f"*{tenant}*: {total} agents ({summary or 'none watched'}) · {open_alerts} open alerts")
    return Reply("Fleet status", tuple(lines))


def _agents(asker: Asker, parsed: slash.Parsed) -> Reply:
    args = list(parsed.args)
    status = args.pop() if args and args[-1] in _STATES else None
    if args and args[0] in _STATES:
        raise slash.Usage("write the tenant first: `/fleet agents [tenant] [status]`")
    tenant = _tenant(asker, args[0] if args else None)
    records, more = agent_store.list_agents(tenant=tenant, status=status, page_size=LISTED, after=None)
    lines = [_agent_line(r) for r in records] or ["no agents"]
    if more:
        lines.append(f"… more: `GET /v1/agents?tenant={tenant}`")
    head = f"Agents of {tenant}" + (f" ({status})" if status else "")
    return Reply(head, tuple(lines), tenant=tenant)


def _usage_lines(periods: dict[str, Any]) -> tuple[str, ...]:
    lines = []
    for name, view in periods.items():
        budget = f" of ${view['budget_usd']}" if view.get("budget_usd") else ""
        lines.append(
            f"*{name}* ({view['period']}): ${view['spend_usd']}{budget} · {view['tokens']:,} tokens · "
            f"{view['calls']:,} calls, {view['failures']:,} failed"
        )
    return tuple(lines)


def _usage_cmd(asker: Asker, parsed: slash.Parsed) -> Reply:
    name = parsed.args[0]
    record = agent_store.get(name) if _valid_id(name) else None
    if record is not None and asker.role(record.tenant) is not None:
        periods = usage_store.agent_periods(record.agent_id, asker.now)
        view = accounting.usage_view(periods, budgets.parse(record.budget))
        return Reply(f"Usage of `{record.agent_id}`", _usage_lines(view), target=record.agent_id, tenant=record.tenant)
    if asker.role(name) is None:
        raise Refusal(f"`{name[:64]}` is neither an agent nor a tenant you have a role in")
    from shared.store import config

    periods = usage_store.tenant_periods(name, asker.now, settings.get().tenant_shards)
    view = accounting.usage_view(periods, budgets.parse(config.read_tenant(name).budget))
    return Reply(f"Usage of tenant {name}", _usage_lines(view), target=f"tenant.{name}", tenant=name)


def _budget(asker: Asker, parsed: slash.Parsed) -> Reply:
    args = parsed.args
    if len(args) == 1:
        record = _agent(asker, args[0])
        limits = ", ".join(
            f"{k} {v}" for k, v in sorted((record.budget or {}).items()) if k.endswith(("_usd", "_tokens"))
        )
        source = f" (from {record.budget_source})" if record.budget_source else ""
        return _said(record, f"Budget of `{record.agent_id}`: {limits or 'none'}{source}", "ok")
    if len(args) != 4 or args[1].lower() != "set" or args[2].lower() not in _PERIODS:
        raise slash.Usage("write `/fleet budget <agent> set <hourly|daily|monthly> <usd>`", parsed.spec)
    period, usd = args[2].lower(), slash.usd(args[3])
    record = _agent(asker, args[0])
    if roles.allows(asker.role(record.tenant), Action.BUDGET):
        stored = {**(record.budget or {}), f"{period}_usd": format(usd, "f")}
        try:
            from fleet_agent.contracts import BudgetSpec

            spec = budgets.store(BudgetSpec.model_validate(stored))
        except ValueError as exc:
            raise slash.Usage(f"that budget is invalid: {exc}") from None
        agent_controls.set_agent_budget(record.agent_id, asker.operator(), spec, "agent.budget.set", asker.now)
        return _said(
            record,
            f"💰 <@{asker.user_id}> set the {period} budget of `{record.agent_id}` to ${usd:,.2f}.",
        )
    _require(asker, record.tenant, Action.REQUEST)
    current = (record.budget or {}).get(f"{period}_usd")
    summary = f"{period} budget of {record.agent_id} from ${current or 'none'} to ${usd}"
    asked = _ask(
        asker,
        record,
        approval_domain.Kind.BUDGET_RAISE,
        summary,
        f"asked in Slack by {asker.user_name or asker.user_id}",
        {"period": period, "usd": format(usd, "f")},
    )
    return _said(
        record, f"🙋 Only admins set budgets: asked the approvers of {record.tenant} instead ({asked}).", "requested"
    )


def _ask(
    asker: Asker, record: AgentRecord, kind: approval_domain.Kind, summary: str, reason: str, payload: dict[str, Any]
) -> str:
    """What a user without the role does instead: ask the tenant's approvers. The request's id comes
    from the Slack request (a retry finds it); the agent's owner may not approve it either."""
    approval = approvals.new(
        approval_id=approval_domain.approval_id("slack", asker.request_id),
        tenant=record.tenant,
        kind=kind,
        requester=approval_domain.Requester(kind="slack", id=asker.user_id, owner=record.owner),
        summary=summary,
        now=asker.now,
        agent_id=record.agent_id,
        reason=reason,
        payload=payload,
    )
    stored, _new = approvals.request(approval, asker.now)
    return f"`{stored.id}`"


def _hold(asker: Asker, parsed: slash.Parsed, action: Action) -> Reply:
    """``pause`` and ``quarantine``: place the hold, or say it was there already."""
    record = _agent(asker, parsed.args[0], action)
    if action is Action.PAUSE:
        reason = parsed.rest or f"paused in Slack by {asker.user_name or asker.user_id}"
        held, changed = agent_controls.pause(record.agent_id, asker.operator(), reason, asker.now)
        done, after = "paused", ""
    else:
        reason = parsed.rest
        held, changed = agent_controls.quarantine(record.agent_id, asker.operator(), reason, asker.now)
        done, after = "quarantined", " An approver releases it (`/fleet release`)."
    if not changed:
        return _said(held, f"`{held.agent_id}` was already {done}.", "unchanged")
    return _said(held, f"<@{asker.user_id}> {done} `{held.agent_id}`: {reason}.{after}")


def _pause(asker: Asker, parsed: slash.Parsed) -> Reply:
    return _hold(asker, parsed, Action.PAUSE)


def _quarantine(asker: Asker, parsed: slash.Parsed) -> Reply:
    return _hold(asker, parsed, Action.QUARANTINE)


def _resume(asker: Asker, parsed: slash.Parsed) -> Reply:
    record = _agent(asker, parsed.args[0], Action.RESUME)
    reason = parsed.rest or f"resumed in Slack by {asker.user_name or asker.user_id}"
    resumed = agent_controls.resume(record.agent_id, asker.operator(), reason, asker.now)
    still = f" (still held: {', '.join(sorted(resumed.holds))})" if resumed.holds else ""
    return _said(resumed, f"<@{asker.user_id}> resumed `{resumed.agent_id}`: it is {resumed.status.value}{still}.")


def _release(asker: Asker, parsed: slash.Parsed) -> Reply:
    record = _agent(asker, parsed.args[0], Action.REQUEST)
    reason = parsed.rest or f"released in Slack by {asker.user_name or asker.user_id}"
    if roles.allows(asker.role(record.tenant), Action.RELEASE):
        done = agent_controls.release_agent(record.agent_id, asker.operator(), reason, asker.now)
        return _said(
            record,
            f"🔓 <@{asker.user_id}> released `{record.agent_id}` ({', '.join(done.released)}): "
            f"it is {done.record.status.value}.",
        )
    if not release.releasable(record):
        raise agent_controls.Refused(409, f"agent {record.agent_id} is neither frozen nor quarantined")
    summary = f"release {record.agent_id} ({record.status.value})"
    asked = _ask(asker, record, approval_domain.Kind.RELEASE, summary, reason, {})
    return _said(
        record, f"🙋 Only approvers release agents: asked the approvers of {record.tenant} ({asked}).", "requested"
    )


def _approvals(asker: Asker, parsed: slash.Parsed) -> Reply:
    lines = []
    for tenant in _tenants(asker, parsed.args[0] if parsed.args else None):
        for item in approval_store.list_approvals(tenant=tenant, state="pending", limit=LISTED):
            cost = f" · ~${item.estimated_cost_usd:,.2f}" if item.estimated_cost_usd is not None else ""
            lines.append(
                f"`{item.id}` {tenant}: {item.summary} · by {item.requester.label()}{cost} · "
                f"expires {_when(item.expires_at)}"
            )
    return Reply(f"Pending approvals: {len(lines)}", tuple(lines[:LISTED]))


def _alerts(asker: Asker, parsed: slash.Parsed) -> Reply:
    lines = []
    for tenant in _tenants(asker, parsed.args[0] if parsed.args else None):
        for row in episode_store.list_episodes(state="open", tenant=tenant, limit=LISTED):
            subject = f"`{row['agent_id']}`" if row.get("agent_id") else f"tenant {tenant}"
            ack = f" · acknowledged by <@{row['acknowledged_by']}>" if row.get("acknowledged_by") else ""
            lines.append(
                f"{row.get('severity')} · {episodes.title(str(row.get('rule')))} · {subject} · "
                f"since {_when(row.get('opened_at'))}{ack}"
            )
    return Reply(f"Open alerts: {len(lines)}", tuple(lines[:LISTED]))


def _silence(asker: Asker, parsed: slash.Parsed) -> Reply:
    target, length = parsed.args
    lasts = slash.duration(length)
    reason = parsed.rest or f"silenced in Slack by {asker.user_name or asker.user_id}"
    agent_id = rule = None
    record = agent_store.get(target) if _valid_id(target) else None
    if record is not None and asker.role(record.tenant) is not None:
        tenant, agent_id, what = record.tenant, record.agent_id, f"`{record.agent_id}`"
    elif asker.role(target) is not None:
        tenant, what = target, f"tenant {target}"
    elif target.partition(":")[2] in episodes.TITLES or target in episodes.TITLES:
        named, _, rule = target.rpartition(":")
        tenant = _tenant(asker, named or None)
        what = f"rule {rule} in {tenant}"
    else:
        raise Refusal(f"`{target[:64]}` is not an agent, a tenant you have a role in, or a rule")
    _require(asker, tenant, Action.SILENCE)
    silence = Silence(
        id=f"sil-{hashlib.sha256(asker.request_id.encode()).hexdigest()[:16]}",
        agent_id=agent_id,
        tenant=tenant,
        rule=rule,
        reason=reason,
        created_by=asker.actor,
        created_at=asker.now,
        starts_at=asker.now,
        expires_at=asker.now + lasts,
    )
    agent_controls.create_silence(silence, asker.operator(), asker.now)
    return Reply(
        f"🔕 <@{asker.user_id}> silenced {what} until {_when(silence.expires_at)} (`{silence.id}`): {reason}",
        public=True,
        outcome="applied",
        target=agent_id or f"tenant.{tenant}",
        tenant=tenant,
    )


def _roles(asker: Asker, parsed: slash.Parsed) -> Reply:
    args = list(parsed.args)
    if args and args[0].lower() in ("set", "remove"):
        raise slash.Usage("name the tenant first: `/fleet roles <tenant> set <@user> <role>`", parsed.spec)
    tenant = _tenant(asker, args[0] if args else None)
    if len(args) <= 1:
        current = role_store.of_tenant(tenant)
        lines = [f"<@{user}>: {role}" for user, role in sorted(current.items(), key=lambda kv: (kv[1], kv[0]))]
        return Reply(f"Roles in {tenant}", tuple(lines) or ("nobody yet",), tenant=tenant)
    verb = args[1].lower()
    if verb not in ("set", "remove") or (verb == "set" and len(args) != 4) or (verb == "remove" and len(args) != 3):
        raise slash.Usage("write `/fleet roles <tenant> set <@user> <role>` or `remove <@user>`", parsed.spec)
    _require(asker, tenant, Action.ROLES)
    user = roles.parse_user(args[2])
    if user is None:
        raise slash.Usage(f"`{args[2][:40]}` is not a Slack user: mention them (@name)")
    wanted: str | None = None
    if verb == "set":
        try:
            wanted = Role(args[3].lower()).value
        except ValueError:
            raise slash.Usage("a role is viewer, operator, approver or admin") from None

    def apply(current: dict[str, str]) -> dict[str, str]:
        updated = {k: v for k, v in current.items() if k != user}
        if wanted is not None:
            updated[user] = wanted
        if not any(role == Role.ADMIN.value for role in updated.values()):
            raise Refusal(f"{tenant} would have no admin left: make someone else admin first", tenant=tenant)
        return updated

    def entry(previous: dict[str, str], updated: dict[str, str]) -> AuditEntry:
        return AuditEntry(
            id=f"slack.{asker.request_id}.tenant.roles.set",
            at=asker.now,
            actor=asker.actor,
            action="tenant.roles.set",
            target=f"tenant.{tenant}",
            outcome="applied",
            tenant=tenant,
            details={"user": user, "role": updated.get(user), "previous": previous.get(user)},
        )

    role_store.change(tenant, apply, entry)
    said = f"is now {wanted}" if wanted else "no longer has a role"
    return Reply(
        f"👥 <@{user}> {said} in {tenant} (by <@{asker.user_id}>).",
        public=True,
        outcome="applied",
        target=f"tenant.{tenant}",
        tenant=tenant,
    )


# --- training jobs ------------------------------------------------------------------------------


def _train(asker: Asker, parsed: slash.Parsed) -> Reply:
    """Submit a training job as this user (the quota is theirs; a DM tells them how it ended)."""
    from pydantic import ValidationError

    from shared.domain.jobs import JobRequest
    from shared.training import submit

    agent_id, name, *words = parsed.args
    record = _agent(asker, agent_id, Action.TRAIN)
    options = slash.train_options(tuple(words))
    resources: dict[str, Any] = {}
    body: dict[str, Any] = {
        "agent_id": record.agent_id,
        "requester": asker.user_id,
        "name": name,
        "request_id": hashlib.sha256(asker.request_id.encode()).hexdigest()[:32],
    }
    for key, value in options.items():
        target = slash.TRAIN_OPTIONS[key]
        if key == "spot":
            resources["spot"] = value.lower() in ("yes", "true", "1", "on")
        elif key == "hours":
            try:
                body["max_runtime_s"] = int(Decimal(value) * 3600)
            except (InvalidOperation, ValueError, OverflowError):
                raise slash.Usage(f"hours must be a number, not `{value[:20]}`", parsed.spec) from None
        elif target.startswith("resources."):
            resources[target.split(".", 1)[1]] = value
        else:
            body[target] = value
    if resources:
        body["resources"] = resources
    try:
        request = JobRequest.model_validate(body)
    except ValidationError as exc:
        said = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors(include_url=False))
        raise slash.Usage(f"not a valid job: {said}", parsed.spec) from None
    job, _new = submit.submit(request, asker.operator(), asker.now)
    est = job.costing()
    head = (
        f"🏋️ <@{asker.user_id}> submitted `{job.name}` ({job.id}) for `{job.agent_id}`: {est.machine} on "
        f"{job.backend.value}{' (spot)' if job.resources.spot else ''}, up to {est.hours.normalize():f} h, "
        f"estimate ${est.usd} (${est.hourly_usd:.2f}/h). It is *{job.state.value}*"
    )
    detail = f": {job.reason}" if job.reason and job.state.value in ("queued", "awaiting_approval") else "."
    return Reply(head + detail, public=True, outcome="applied", target=job.id, tenant=job.tenant)


def _job_line(job: Any) -> str:
    where = f" · #{job.position} in queue: {job.reason}" if job.position else ""
    cost = f" · ${job.cost_usd}" if job.cost_usd else f" · est ${job.estimate_usd}"
    return f"`{job.id}` {job.name} · `{job.agent_id}` · *{job.state.value}* on {job.backend.value}{cost}{where}"


def _jobs(asker: Asker, parsed: slash.Parsed) -> Reply:
    from shared.store import jobs as job_store

    given = parsed.args[0] if parsed.args else None
    record = agent_store.get(given) if given is not None and _valid_id(given) else None
    if record is not None and asker.role(record.tenant) is not None:
        found = job_store.list_jobs(tenant=record.tenant, state=None, agent_id=record.agent_id, limit=LISTED)
    else:
        found = []
        for tenant in _tenants(asker, given):
            found += job_store.list_jobs(tenant=tenant, state=None, agent_id=None, limit=LISTED)
    return Reply(f"Training jobs: {len(found)}", tuple(_job_line(j) for j in found[:LISTED]))


def _visible_job(asker: Asker, job_id: str) -> Any:
    from shared.store import jobs as job_store

    job = job_store.get(job_id) if re.match(r"^j-[a-z0-9]{8,40}$", job_id) else None
    if job is None or asker.role(job.tenant) is None:
        raise Refusal(f"job `{job_id[:64]}` not found among the tenants you have a role in")
    asker.subject = (job.id, job.tenant)
    return job


def _job(asker: Asker, parsed: slash.Parsed) -> Reply:
    job = _visible_job(asker, parsed.args[0])
    lines = [
        f"requested by {job.requester} · priority {job.priority} · {job.backend.value} ({job.backend_reason})",
        f"estimate ${job.estimate_usd} · cost so far ${job.cost_usd} · preemptions {job.preemptions}",
    ]
    if job.progress:
        metrics = ", ".join(f"{k} {v:.3g}" for k, v in list((job.progress.get("metrics") or {}).items())[:5])
        lines.append(f"progress: step {job.progress.get('step')}/{job.progress.get('total_steps')} {metrics}")
    lines += [f"{_when(e.at)} · {e.kind} {e.to_state.value if e.to_state else ''} {e.reason}" for e in job.history[-8:]]
    return Reply(_job_line(job), tuple(lines))


def _cancel(asker: Asker, parsed: slash.Parsed) -> Reply:
    from shared.training import follow

    job = _visible_job(asker, parsed.args[0])
    _require(asker, job.tenant, Action.TRAIN, job.id)
    done = follow.cancel(job.id, asker.operator(), asker.now, parsed.rest)
    return Reply(
        f"🛑 <@{asker.user_id}> cancelled `{done.name}` ({done.id}).", public=True, target=done.id, tenant=done.tenant
    )


COMMANDS = {
    "help": _help,
    "status": _status,
    "agents": _agents,
    "usage": _usage_cmd,
    "budget": _budget,
    "pause": _pause,
    "resume": _resume,
    "quarantine": _quarantine,
    "release": _release,
    "approvals": _approvals,
    "alerts": _alerts,
    "silence": _silence,
    "roles": _roles,
    "train": _train,
    "jobs": _jobs,
    "job": _job,
    "cancel": _cancel,
}

__all__ = ["COMMANDS", "Asker", "Reply", "run"]
