"""The fleet watching itself: which ``fleet_health`` episodes the minute job opens or resolves about its
own pipeline. Pure: the readings come from shared/store/fleet_health.py, the writes are made by
shared/services/fleet_health.py.

Five kinds, each judged on what the last hour (or the outbox right now) shows:

- ``dead_letters``: messages dead-lettered (rejections of code ``delivery_exhausted``) above a threshold;
- ``rejections``: all other rejections together above a threshold (a broken agent release, a flood);
- ``slack_failing``: notices the outbox marked ``failed`` (Slack refused them) above a threshold;
  ``critical`` when a refusal says the bot token itself is bad (``shared/domain/slack_errors.AUTH_ERRORS``);
- ``outbox_backlog``: notices pending past their due time by more than a delay, or too many pending;
- ``model_load``: the model version in service failed to load on an instance (the registry records it).

An episode per kind is open while its finding lasts and resolves the first tick it is gone. They are the
deployment's, not a tenant's: tenant :data:`TENANT` (no real tenant id starts with ``_``), whose alerting
settings are the deployment's defaults (its Slack channels), listed by ``GET /v1/alerts`` (and shown by the
console's fleet banner) to any key that sees every tenant, a viewer's included; never to a tenant's key.
Their index of open episodes is the ``_fleet`` tenant alert document, as a root alert's is.
A threshold of 0 turns its check off.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from shared.domain import episodes as domain
from shared.domain.alerts import Severity
from shared.domain.rejections import Code
from shared.domain.slack_errors import AUTH_ERRORS  # the one set, shared with shared/slack/web_api.py

RULE = "fleet_health"
#: The tenant of the deployment's own episodes.
TENANT = "_fleet"


class Kind(StrEnum):
    DEAD_LETTERS = "dead_letters"
    REJECTIONS = "rejections"
    SLACK_FAILING = "slack_failing"
    OUTBOX_BACKLOG = "outbox_backlog"
    MODEL_LOAD = "model_load"


@dataclass(frozen=True)
class Thresholds:
    """When each kind opens (settings ``FLEET_HEALTH_*``, docs/operations.md); 0 turns a check off."""

    dead_letters_per_hour: int = 10
    rejections_per_hour: int = 1000
    slack_failures_per_hour: int = 3
    outbox_late_s: int = 600
    outbox_pending: int = 500


@dataclass
class Readings:
    """What the tick read: rejections per code in the last hour; the Slack errors of the notices that
    failed in the last hour (capped); pending notices late past the delay and pending in all; and per model
    kind, the version in service that failed to load in the last hour with the reason."""

    rejections: Mapping[str, int] = field(default_factory=dict)
    failed_errors: list[str] = field(default_factory=list)
    failed_capped: bool = False
    late: int = 0
    pending: int = 0
    model_failures: Mapping[str, tuple[str, str]] = field(default_factory=dict)


@dataclass(frozen=True)
class Finding:
    kind: Kind
    severity: Severity
    summary: str
    details: dict[str, Any]


def judge(readings: Readings, limits: Thresholds) -> dict[Kind, Finding]:
    """The findings of one tick, per kind (a kind without a finding is healthy)."""
    out: dict[Kind, Finding] = {}
    dead = int(readings.rejections.get(Code.DELIVERY_EXHAUSTED.value, 0))
    if limits.dead_letters_per_hour and dead > limits.dead_letters_per_hour:
        out[Kind.DEAD_LETTERS] = Finding(
            Kind.DEAD_LETTERS,
            Severity.HIGH,
            f"{dead} messages were dead-lettered in the last hour (threshold {limits.dead_letters_per_hour}): "
            "a handler keeps failing on them; see GET /v1/rejections?code=delivery_exhausted and replay them "
            "once fixed",
            {"count": dead, "threshold": limits.dead_letters_per_hour},
        )
    others = {c: int(n) for c, n in readings.rejections.items() if c != Code.DELIVERY_EXHAUSTED.value and n}
    rejected = sum(others.values())
    if limits.rejections_per_hour and rejected > limits.rejections_per_hour:
        top = sorted(others.items(), key=lambda item: (-item[1], item[0]))[:3]
        out[Kind.REJECTIONS] = Finding(
            Kind.REJECTIONS,
            Severity.WARNING,
            f"{rejected} messages were rejected in the last hour (threshold {limits.rejections_per_hour}); "
            f"most: {', '.join(f'{code} {n}' for code, n in top)}",
            {"count": rejected, "threshold": limits.rejections_per_hour, "by_code": others},
        )
    failed = len(readings.failed_errors)
    if limits.slack_failures_per_hour and failed > limits.slack_failures_per_hour:
        auth = sorted({e for e in readings.failed_errors if e in AUTH_ERRORS})
        errors = sorted(set(readings.failed_errors))
        more = "+" if readings.failed_capped else ""
        cause = f"the bot token is refused ({', '.join(auth)})" if auth else f"Slack said {', '.join(errors)}"
        out[Kind.SLACK_FAILING] = Finding(
            Kind.SLACK_FAILING,
            Severity.CRITICAL if auth else Severity.HIGH,
            f"{failed}{more} alert notices failed to reach Slack in the last hour "
            f"(threshold {limits.slack_failures_per_hour}): {cause}",
            {"count": failed, "threshold": limits.slack_failures_per_hour, "errors": errors, "auth": bool(auth)},
        )
    late = limits.outbox_late_s > 0 and readings.late > 0
    many = limits.outbox_pending > 0 and readings.pending > limits.outbox_pending
    if late or many:
        why = []
        if late:
            why.append(f"{readings.late} more than {limits.outbox_late_s} s past their due time")
        if many:
            why.append(f"{readings.pending} pending (threshold {limits.outbox_pending})")
        out[Kind.OUTBOX_BACKLOG] = Finding(
            Kind.OUTBOX_BACKLOG,
            Severity.HIGH,
            f"The Slack outbox is backing up: {'; '.join(why)}",
            {"late": readings.late, "pending": readings.pending, "late_after_s": limits.outbox_late_s},
        )
    if readings.model_failures:
        listed = sorted(readings.model_failures.items())
        out[Kind.MODEL_LOAD] = Finding(
            Kind.MODEL_LOAD,
            Severity.WARNING,
            "Models in service failed to load in the last hour (instances keep the previous one, or none): "
            + "; ".join(f"{kind} {version}: {reason}" for kind, (version, reason) in listed),
            {"models": {kind: {"version": v, "reason": r} for kind, (v, r) in listed}},
        )
    return out


def decide(
    state: Mapping[str, Any], findings: Mapping[Kind, Finding], now: datetime, config: domain.AlertingConfig
) -> tuple[dict[str, Any], list[domain.EpisodeWrite]]:
    """The ``_fleet`` alert document's changes and the episode writes: open a kind with a finding and no
    open episode, escalate an open one whose finding got more severe, resolve an open one without a finding.
    Nothing to change: ``({}, [])``."""
    open_ = {str(k): dict(v) for k, v in (state.get("episodes") or {}).items()}
    seq = int(state.get("episode_seq") or 0)
    writes: list[domain.EpisodeWrite] = []
    for kind, finding in sorted(findings.items()):
        current = open_.get(kind.value)
        if current is None:
            seq += 1
            episode = domain.episode_id(f"t.{TENANT}", f"{RULE}.{kind.value}", seq)
            writes.append(
                domain.new_episode(
                    episode,
                    rule=RULE,
                    severity=finding.severity,
                    tenant=TENANT,
                    agent_id=None,
                    at=now,
                    summary=finding.summary,
                    details={"kind": kind.value, **finding.details},
                    config=config,
                )
            )
            open_[kind.value] = {"id": episode, "severity": finding.severity.value, "opened_at": now}
        elif Severity(current["severity"]).rank < finding.severity.rank:
            writes.append(domain.escalation(_snapshot(kind, current), finding.severity, now, finding.summary, config))
            open_[kind.value] = {**current, "severity": finding.severity.value}
    for name in sorted(set(open_) - {k.value for k in findings}):
        current = open_.pop(name)
        writes.append(domain.resolution(_snapshot(Kind(name), current), now, f"{Kind(name).value}: back to normal"))
    if not writes:
        return {}, []
    return {"episodes": open_, "episode_seq": seq}, writes


def _snapshot(kind: Kind, current: Mapping[str, Any]) -> dict[str, Any]:
    return {
        **current,
        "rule": RULE,
        "title": domain.title(RULE),
        "tenant": TENANT,
        "agent_id": None,
        "kind": kind.value,
    }
