"""Remediation: what a tenant's policy (shared/domain/remediation_policy.py) does about an agent's open
episodes, as a plan added to the write that is already being made (a heartbeat's, the sweep's).

Conditions are read from the agent document: its open episodes (error rate, saturation with memory the
saturated metric, failure risk) and its liveness rung (frozen). Each episode is acted on once: the
decision is remembered in the episode's entry of the agent's ``episodes`` index (``remediation``: sent,
held, dry_run, capped, escalated, unsupported, approval), which goes when the episode resolves. On the common
path (no open episode with a rule, or one already decided) nothing is added: no extra write.

Safety, in order: an agent in a state a person imposed (maintenance, quarantined, compromised,
suspended, decommissioning) is left alone (recorded once, ``held``); an agent whose SDK lacks ``commands.v2`` is
skipped (recorded once); a restart when
the agent was restarted by policy ``restart_loop.restarts`` times within ``within_s`` opens a critical
``remediation_escalated`` episode instead (a person must look); more than ``max_actions_per_hour`` policy
commands in the last hour are capped; ``dry_run`` records what it would have done and sends nothing; a
``stop`` on a critical-labelled agent is asked of an approver (:class:`Ask`, made into an approval
request by shared/services/remediation.py after the write). Every decision is audited
(``agent.remediation``) and posted in the episode's Slack thread (a ``remediation-<outcome>`` notice).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from fleet_agent.contracts import CommandType
from fleet_agent.messages.commands import COMMANDS_V2

from shared.domain import agent_actions, episodes, lifecycle
from shared.domain.agent_record import AgentRecord, Liveness, Plan, merge, then
from shared.domain.alerts import Severity
from shared.domain.audit import AuditEntry
from shared.domain.episodes import AlertingConfig
from shared.domain.holds import time_of
from shared.domain.lifecycle import State
from shared.domain.remediation_policy import EPISODE_OF, Condition, Mode, RemediationPolicy, Rule

ESCALATED = "remediation_escalated"
ACTOR = "system:remediation"
#: Conditions the heartbeat looks at; the sweep looks at frozen.
ON_HEARTBEAT = (Condition.ERROR_RATE, Condition.MEMORY_SATURATED, Condition.FAILURE_RISK)
ON_SWEEP = (Condition.FROZEN,)
#: Tracked command states that count as a restart having been sent.
SENT_STATES = frozenset({"sent", "acknowledged", "done"})
#: States a person (or the security rules) put the agent in: the policy sends nothing (recorded ``held``).
HELD = lifecycle.STICKY - {State.FROZEN}


@dataclass(frozen=True)
class Ask:
    """A stop on a critical agent: to be asked of an approver (the approval's payload)."""

    agent_id: str
    tenant: str
    rule: str
    action: str
    episode_id: str
    reason: str
    deadline_s: int | None = None

    def payload(self) -> dict[str, Any]:
        return {"rule": self.rule, "action": self.action, "episode_id": self.episode_id,
                "deadline_s": self.deadline_s}  # fmt: skip


@dataclass
class Outcome:
    plan: Plan = field(default_factory=Plan)
    asks: list[Ask] = field(default_factory=list)


def holds(record: AgentRecord, condition: Condition) -> bool:
    """Whether ``condition`` holds on the agent as recorded."""
    rule = EPISODE_OF[condition]
    if rule not in record.episodes:
        return False
    if condition is Condition.FROZEN:
        return record.liveness is Liveness.FROZEN
    if condition is Condition.MEMORY_SATURATED:
        return bool(record.health.get("memory_high_since"))  # CPU alone is not a memory problem
    return True


def policy_commands(record: AgentRecord, since: datetime, action: CommandType | None = None) -> int:
    """Commands the policy sent the agent since ``since`` (of ``action`` when given)."""
    count = 0
    for entry in record.commands.values():
        if not str(entry.get("origin") or "").startswith("policy:"):
            continue
        if action is not None and entry.get("command") != action.value:
            continue
        sent = _time(entry.get("sent_at"))
        if sent is not None and sent >= since and entry.get("state") in (*SENT_STATES, "unacknowledged"):
            count += 1
    return count


def decide(
    record: AgentRecord,
    policy: RemediationPolicy,
    at: datetime,
    conditions: tuple[Condition, ...],
    config: AlertingConfig | None = None,
) -> Outcome:
    """What the policy does now about ``conditions`` on the agent (each episode decided once; ``config``:
    the tenant's alerting settings, for the escalation episode)."""
    out = Outcome()
    if policy.mode is Mode.OFF:
        return out
    current = record
    for condition in conditions:
        if not holds(current, condition):
            continue
        episode_rule = EPISODE_OF[condition]
        entry = current.episodes[episode_rule]
        if entry.get("remediation"):
            continue  # decided for this episode already
        rule = policy.rule_for(condition, current.agent_type, current.labels)
        if rule is None:
            continue
        opened = _time(entry.get("opened_at")) or at
        if at - opened < timedelta(seconds=rule.for_s):
            continue
        step = _act(current, policy, rule, episode_rule, at, out, config or AlertingConfig())
        merge(out.plan, step)
        current = current.model_copy(update=step.changes)
    if not out.plan.changes:
        out.plan.skipped = "unchanged"
    return out


def _act(
    record: AgentRecord,
    policy: RemediationPolicy,
    rule: Rule,
    episode_rule: str,
    at: datetime,
    out: Outcome,
    config: AlertingConfig,
) -> Plan:
    entry = record.episodes[episode_rule]
    episode_id = str(entry["id"])
    action = rule.action
    what = _describe(rule)
    plan = Plan()
    details: dict[str, Any] = {
        "rule": rule.name,
        "action": action.value,
        "episode_id": episode_id,
        "mode": policy.mode.value,
    }
    if record.status in HELD:
        outcome, text = "held", f"would {what}, but the agent is {record.status.value}: nothing sent"
    elif COMMANDS_V2 not in record.supports:
        outcome, text = "unsupported", f"would {what}, but the agent's SDK does not support {COMMANDS_V2}: nothing sent"
    elif action is CommandType.RESTART and _looping(record, policy, at) and policy.mode is Mode.DRY_RUN:
        loop = policy.restart_loop
        outcome = "dry_run"
        text = f"dry run: would escalate (restarted {loop.restarts} times within {loop.within_s // 60} min)"
    elif action is CommandType.RESTART and _looping(record, policy, at):
        loop = policy.restart_loop
        outcome = "escalated"
        text = (f"restarted {loop.restarts} times within {loop.within_s // 60} min: not restarting again, "
                f"a person must look")  # fmt: skip
        eps = episodes.AgentEpisodes.of(record, config)
        eps.open_(ESCALATED, Severity.CRITICAL, at, f"{record.agent_id}: remediation escalated: {text}",
                  {"rule": rule.name, "episode_id": episode_id}, wait=False)  # fmt: skip
        plan.episodes.extend(eps.writes)
        plan.changes.update(eps.changes())
    elif policy_commands(record, at - timedelta(hours=1)) >= policy.max_actions_per_hour:
        outcome = "capped"
        text = f"would {what}, but {policy.max_actions_per_hour} automatic actions an hour were reached: nothing sent"
    elif policy.mode is Mode.DRY_RUN:
        outcome, text = "dry_run", f"dry run: would {what}"
    elif action is CommandType.STOP and policy.critical(record.labels):
        outcome, text = "approval", f"{what}: the agent is critical ({policy.critical_label}), asking an approver"
        out.asks.append(Ask(record.agent_id, record.tenant, rule.name, action.value, episode_id,
                            f"policy rule {rule.name} on episode {episode_id}", rule.deadline_s))  # fmt: skip
    else:
        until = at + timedelta(seconds=rule.throttle_for_s) if action is CommandType.THROTTLE else None
        try:
            issued = agent_actions.issue(
                record,
                action,
                at=at,
                actor=ACTOR,
                reason=f"policy rule {rule.name} on episode {episode_id}",
                key=f"remediation.{episode_id}",
                origin=f"policy:{rule.name}",
                deadline_s=rule.deadline_s,
                calls_per_minute=rule.calls_per_minute,
                until=until,
            )
        except (agent_actions.Unsupported, agent_actions.NotAllowed) as refused:
            outcome, text = "refused", f"would {what}, but it was refused: {refused}"
        else:
            outcome, text = "sent", f"sent {what}"
            issued.changes["commands"] = {
                cid: {**e, "episode": episode_id} if any(c.command_id == cid for c in issued.commands) else e
                for cid, e in issued.changes.get("commands", {}).items()
            }
            details["command_ids"] = [c.command_id for c in issued.commands]
            merge(plan, issued)
    # Remember the decision on the episode's index entry (the write already being made).
    index = dict(plan.changes.get("episodes") or record.episodes)
    index[episode_rule] = {**index[episode_rule], "remediation": outcome}
    plan.changes["episodes"] = index
    plan.audit.append(
        AuditEntry(
            id=f"{record.agent_id}.remediation.{episode_id}",
            at=at,
            actor=ACTOR,
            action="agent.remediation",
            target=record.agent_id,
            outcome=outcome,
            tenant=record.tenant,
            details={**details, "summary": text},
        )
    )
    if outcome != "unsupported":  # an old SDK is the same every episode: audited, not posted each time
        plan.episodes.append(_posted(record, episode_rule, outcome, text, at))
    return plan


def undecided(record: AgentRecord, plan: Plan, conditions: tuple[Condition, ...]) -> bool:
    """Whether ``plan`` leaves an episode of ``conditions`` open and not yet decided. False on the common
    path: then neither the policy nor a copy of the record is needed."""
    if plan.skipped is not None or plan.create is not None:
        return False
    index = plan.changes.get("episodes", record.episodes)
    return any(EPISODE_OF[c] in index and not index[EPISODE_OF[c]].get("remediation") for c in conditions)


def undo(
    record: AgentRecord, plan: Plan, at: datetime, alerting: Callable[[], AlertingConfig] = AlertingConfig
) -> Plan:
    """``plan`` followed by what the policy undoes when ``plan`` resolves an episode it acted on: a
    ``resume_work`` for each policy ``drain`` (or ``throttle`` without an end) sent for it (the agent takes
    work again; origin the rule's, key ``remediation.<episode>.resume``, audited like any command), and the
    ``remediation_escalated`` episode it opened resolves (``alerting``: the tenant's settings, asked for
    only then). Nothing on the common path (no episode the policy acted on resolves)."""
    index = plan.changes.get("episodes")
    if index is None or plan.skipped is not None:
        return plan
    gone = {rule: e for rule, e in record.episodes.items()
            if rule not in index or index[rule].get("id") != e.get("id")}  # fmt: skip
    resolved = {str(e["id"]) for e in gone.values() if e.get("remediation") == "sent"}
    if ESCALATED in index and any(e.get("remediation") == "escalated" for e in gone.values()):
        eps = episodes.AgentEpisodes.of(record.model_copy(update=plan.changes), alerting())
        eps.resolve(ESCALATED, at, f"{record.agent_id}: the episode it escalated resolved")
        merge(plan, Plan(changes=eps.changes(), episodes=eps.writes))
    if not resolved or record.status in HELD:
        return plan

    def resume(current: AgentRecord) -> Plan:
        total = Plan()
        for entry in list(current.commands.values()):
            episode = str(entry.get("episode") or "")
            lasting = entry.get("command") == CommandType.DRAIN.value or (
                entry.get("command") == CommandType.THROTTLE.value and not entry.get("until")
            )
            if episode not in resolved or not lasting or not str(entry.get("origin", "")).startswith("policy:"):
                continue
            if _drained_by_a_person(current, time_of(entry["sent_at"])):
                continue  # a later operator or bulk drain stands: not the policy's to undo
            try:
                issued = agent_actions.issue(
                    current,
                    CommandType.RESUME_WORK,
                    at=at,
                    actor=ACTOR,
                    reason=f"episode {episode} resolved: undoing its {entry['command']}",
                    key=f"remediation.{episode}.resume",
                    origin=str(entry["origin"]),
                )
            except (agent_actions.Unsupported, agent_actions.NotAllowed):
                continue
            if issued.skipped is None:
                merge(total, issued)
                current = current.model_copy(update=issued.changes)
        return total

    return then(record, plan, resume)


def _drained_by_a_person(record: AgentRecord, since: datetime) -> bool:
    """An operator's or bulk ``drain`` (origin not ``policy:``) was sent after ``since`` and no
    ``resume_work`` after it."""
    sent = sorted(((time_of(e["sent_at"]), e) for e in record.commands.values() if e.get("sent_at")),
                  key=lambda pair: pair[0])  # fmt: skip
    drained = None
    for at, entry in sent:
        if entry.get("command") == CommandType.DRAIN.value and not str(entry.get("origin", "")).startswith("policy:"):
            drained = at if at > since else drained
        elif entry.get("command") == CommandType.RESUME_WORK.value and drained is not None and at >= drained:
            drained = None
    return drained is not None


def after(
    record: AgentRecord,
    plan: Plan,
    policy: RemediationPolicy,
    at: datetime,
    conditions: tuple[Condition, ...],
    asks: list[Ask],
    config: AlertingConfig | None = None,
) -> Plan:
    """``plan`` (made on ``record``) followed by the policy on the record as ``plan`` leaves it: one write.
    The approvals to ask for are put in ``asks`` (replaced: a decide may run again on a conflict)."""
    asks.clear()
    plan = undo(record, plan, at, lambda: config or AlertingConfig())
    if not undecided(record, plan, conditions) or policy.mode is Mode.OFF:
        return plan

    def step(current: AgentRecord) -> Plan:
        outcome = decide(current, policy, at, conditions, config)
        asks.extend(outcome.asks)
        outcome.plan.skipped = None
        return outcome.plan

    return then(record, plan, step)


def _posted(record: AgentRecord, episode_rule: str, outcome: str, text: str, at: datetime) -> episodes.EpisodeWrite:
    """The decision on the episode document, and its notice (a reply in the episode's Slack thread)."""
    entry = record.episodes[episode_rule]
    snapshot = {
        "id": entry["id"],
        "rule": episode_rule,
        "title": episodes.title(episode_rule),
        "severity": entry["severity"],
        "tenant": record.tenant,
        "agent_id": record.agent_id,
        "opened_at": entry.get("opened_at"),
        "summary": f"Remediation ({outcome}): {text}",
    }
    fields = {"remediation": {"outcome": outcome, "summary": text, "at": at}}
    return episodes.EpisodeWrite(str(entry["id"]), fields, episodes.notice(snapshot, f"remediation-{outcome}", at, at))


def _looping(record: AgentRecord, policy: RemediationPolicy, at: datetime) -> bool:
    loop = policy.restart_loop
    return policy_commands(record, at - timedelta(seconds=loop.within_s), CommandType.RESTART) >= loop.restarts


def _describe(rule: Rule) -> str:
    if rule.action is CommandType.THROTTLE:
        return (
            f"throttle to {rule.calls_per_minute} calls a minute for {rule.throttle_for_s // 60} min (rule {rule.name})"
        )
    return f"{rule.action.value} (rule {rule.name})"


def _time(value: Any) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    try:
        return datetime.fromisoformat(str(value))
    except ValueError:
        return None
