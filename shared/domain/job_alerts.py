"""Training jobs that tell someone: which job episodes open and resolve. Pure: the readings come from
shared/store/job_alerts.py, the writes are made by shared/services/job_alerts.py.

Two kinds, both ordinary alert episodes (the notifier sends them; silences, grouping and routing apply):

- **one job's end**, a created episode under a deterministic id (``job_failed.<job id>``,
  ``job_released.<job id>``: opened once however often it is raised), which resolves by itself an hour
  later (it is an event, not a condition): :func:`final_alert`. *Released* is a job the fleet stopped
  because it was admitted and never started within ``release_after_s`` (it stalled first): its quota was
  given back without it running. Any other failure is *failed*. A cancelled or succeeded job raises none.
- **the tenant's conditions**, indexed in its alert document (``tenant_alerts/{tenant}``, as the root
  alert is) and judged again on every reconcile tick: a job stalled (admitted, not running after
  ``start_timeout_s``; one episode per job, resolved once it runs or ends), the failure rate of the UTC
  day (failed among the succeeded and failed jobs that ended that day, once at least
  ``alert_failure_min_jobs`` ended; judged at each job's end and each tick; its episode is of one day:
  resolved under the threshold or when the day ends, and a new day over it opens a new one), the queue longer
  than ``alert_queue_length`` and a job queued longer than ``alert_wait_s``: :func:`judge`, :func:`decide`.

A requester the service resolved to a Slack user is mentioned in the message (``<@U...>``); otherwise the
message names the requester as text, and it goes to the tenant's channel either way.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from shared.domain import episodes as domain
from shared.domain.alerts import DEFAULT_ALERT_OPEN, Alert, Severity
from shared.domain.jobs import Job, JobsConfig, JobState
from shared.domain.notices import escape

FAILED = "job_failed"
RELEASED = "job_released"
STALLED = "job_stalled"
FAILURE_RATE = "job_failure_rate"
QUEUE = "job_queue"
WAIT = "job_wait"
#: Every rule of this module (silence one by name: ``POST /v1/silences`` with ``rule``).
RULES = (FAILED, RELEASED, STALLED, FAILURE_RATE, QUEUE, WAIT)
#: Tenant-condition rules: their index keys in the tenant alert document (a stall's is ``job_stalled:<id>``).
TENANT_RULES = (FAILURE_RATE, QUEUE, WAIT)
#: The tenant alert document's flag: it has open job episodes (the tick judges those tenants again).
OPEN_FLAG = "job_alerts_open"


@dataclass(frozen=True)
class Thresholds:
    """A tenant's (``PUT /v1/tenants/{t}/jobs``: ``alert_*``); 0 turns a check off."""

    failure_rate: float = 0.2
    failure_min_jobs: int = 5
    queue_length: int = 50
    wait_s: int = 7200

    @classmethod
    def of(cls, cfg: JobsConfig) -> Thresholds:
        return cls(cfg.alert_failure_rate, cfg.alert_failure_min_jobs, cfg.alert_queue_length, cfg.alert_wait_s)


def day_start(now: datetime) -> datetime:
    """The start of ``now``'s UTC day (the failure rate's window)."""
    at = now.astimezone(UTC)
    return at.replace(hour=0, minute=0, second=0, microsecond=0)


def code(text: str) -> str:
    """``text`` as inline code in Slack mrkdwn: escaped, and a backtick in it (an e-mail address or a job
    name may hold one) replaced by a look-alike so it cannot end the code span."""
    return "`" + escape(text).replace("`", "\u02cb") + "`"


def who(requester: str, mention: str | None) -> str:
    """The requester as the message shows it: a Slack mention when resolved, else escaped inline code."""
    return f"<@{mention}>" if mention else code(requester)


def final_rule(job: Job) -> str | None:
    """``job_released``, ``job_failed`` or None (succeeded, cancelled, not final)."""
    if job.state is not JobState.FAILED:
        return None
    never_ran = job.started_at is None and any(event.kind == "stalled" for event in job.history)
    return RELEASED if never_ran else FAILED


def final_alert(job: Job, now: datetime, mention: str | None) -> Alert | None:
    """The episode of a failed or released job (None for any other end), under its deterministic id."""
    rule = final_rule(job)
    if rule is None:
        return None
    at = job.finished_at or job.updated_at or now
    what = "was released without running" if rule == RELEASED else "failed"
    message = (
        f"Training job {code(job.name)} ({job.id}) of `{job.agent_id}` {what}: {escape(job.reason or 'no reason')}"
        f" · requested by {who(job.requester, mention)}"
    )
    return Alert(
        id=f"{rule}.{job.id}",
        kind=rule,
        severity=Severity.WARNING,
        tenant=job.tenant,
        message=message,
        at=at,
        agent_id=job.agent_id,
        details={"job_id": job.id, "requester": job.requester, "mention": mention, "reason": job.reason[:500]},
        until=max(at, now) + DEFAULT_ALERT_OPEN,
    )


@dataclass(frozen=True)
class Stalled:
    """An admitted job flagged stalled, as the tick listed it."""

    job_id: str
    name: str
    agent_id: str
    requester: str
    mention: str | None
    stalled_at: datetime
    reason: str


@dataclass
class Readings:
    """What was read of one tenant; None: not read this time (its episodes are left as they are)."""

    queued: int | None = None
    oldest_queued_at: datetime | None = None
    stalled: list[Stalled] | None = None
    ended_today: int | None = None
    failed_today: int | None = None
    #: The UTC day (``YYYY-MM-DD``) the two counts are of; None: ``now``'s.
    day: str | None = None


@dataclass(frozen=True)
class Finding:
    key: str
    rule: str
    severity: Severity
    summary: str
    details: dict[str, Any] = field(default_factory=dict)
    agent_id: str | None = None


def judged(readings: Readings, key: str) -> bool:
    """Whether ``readings`` judge the episode indexed under ``key`` (an open one without a finding resolves)."""
    if key.startswith(STALLED + ":"):
        return readings.stalled is not None
    if key == FAILURE_RATE:
        return readings.ended_today is not None
    if key in (QUEUE, WAIT):
        return readings.queued is not None
    return False


def judge(tenant: str, readings: Readings, limits: Thresholds, now: datetime) -> dict[str, Finding]:
    out: dict[str, Finding] = {}
    for stall in readings.stalled or []:
        key = f"{STALLED}:{stall.job_id}"
        out[key] = Finding(
            key,
            STALLED,
            Severity.WARNING,
            f"Training job {code(stall.name)} ({stall.job_id}) of `{stall.agent_id}` is stalled: "
            f"{escape(stall.reason)} · requested by {who(stall.requester, stall.mention)}",
            {"job_id": stall.job_id, "requester": stall.requester, "mention": stall.mention},
            stall.agent_id,
        )
    ended, failed = readings.ended_today or 0, readings.failed_today or 0
    if limits.failure_rate and ended >= limits.failure_min_jobs and failed / ended > limits.failure_rate:
        out[FAILURE_RATE] = Finding(
            FAILURE_RATE,
            FAILURE_RATE,
            Severity.HIGH,
            f"{failed} of {ended} training jobs of {tenant} that ended today (UTC) failed ({failed / ended:.0%}, "
            f"threshold {limits.failure_rate:.0%}): see GET /v1/jobs?tenant={tenant}&state=failed",
            {"failed": failed, "ended": ended, "threshold": limits.failure_rate, "day": _day(readings, now)},
        )
    queued = readings.queued or 0
    if limits.queue_length and queued > limits.queue_length:
        out[QUEUE] = Finding(
            QUEUE,
            QUEUE,
            Severity.WARNING,
            f"{queued} training jobs of {tenant} are queued (threshold {limits.queue_length}): "
            "quotas or budgets hold them back",
            {"queued": queued, "threshold": limits.queue_length},
        )
    oldest = readings.oldest_queued_at
    if limits.wait_s and queued and oldest is not None and (now - oldest).total_seconds() > limits.wait_s:
        waited = int((now - oldest).total_seconds())
        out[WAIT] = Finding(
            WAIT,
            WAIT,
            Severity.WARNING,
            f"A training job of {tenant} has been queued {waited // 60} min (threshold {limits.wait_s // 60} min): "
            f"see GET /v1/jobs?tenant={tenant}&state=queued for why each waits",
            {"waited_s": waited, "threshold_s": limits.wait_s},
        )
    return out


def decide(
    tenant: str,
    state: Mapping[str, Any],
    readings: Readings,
    findings: Mapping[str, Finding],
    now: datetime,
    config: domain.AlertingConfig,
) -> tuple[dict[str, Any], list[domain.EpisodeWrite]]:
    """The tenant alert document's changes and the episode writes: open what was found and is not open,
    resolve a job episode the readings judged and did not find. Other episodes of the document (the root
    alert's) are kept as they are. Nothing to change: ``({}, [])``."""
    open_ = {str(k): dict(v) for k, v in (state.get("episodes") or {}).items()}
    seq = int(state.get("episode_seq") or 0)
    writes: list[domain.EpisodeWrite] = []
    day = _day(readings, now)
    rate = open_.get(FAILURE_RATE)
    if rate is not None and readings.ended_today is not None and str(rate.get("day") or "") < day:
        # The failure rate is a day's: the day it opened for is over, so its episode resolves (and the new
        # day's opens below if it is over the threshold too).
        writes.append(
            _resolution(tenant, FAILURE_RATE, open_.pop(FAILURE_RATE), "the day it was of ended", now, config)
        )
    for key, finding in sorted(findings.items()):
        if key in open_:
            continue
        seq += 1
        episode = domain.episode_id(f"t.{tenant}", finding.rule, seq)
        writes.append(
            domain.new_episode(
                episode,
                rule=finding.rule,
                severity=finding.severity,
                tenant=tenant,
                agent_id=finding.agent_id,
                at=now,
                summary=finding.summary,
                details={"key": key, **finding.details},
                config=config,
                due_at=now + timedelta(seconds=config.group_wait_s),
            )
        )
        open_[key] = {"id": episode, "severity": finding.severity.value, "opened_at": now, "rule": finding.rule}
        if finding.agent_id:
            open_[key]["agent_id"] = finding.agent_id
        if key == FAILURE_RATE:
            open_[key]["day"] = day
    for key in sorted(open_):
        if not _ours(key) or key in findings or not judged(readings, key):
            continue
        if key == FAILURE_RATE and str(open_[key].get("day") or "") > day:
            continue  # counts of an earlier day (a late-settled job): they do not judge today's episode
        writes.append(
            _resolution(tenant, key, open_.pop(key), _cleared(key.partition(":")[0], key, readings), now, config)
        )
    if not writes:
        return {}, []
    return {"episodes": open_, "episode_seq": seq, OPEN_FLAG: any(_ours(k) for k in open_)}, writes


def _day(readings: Readings, now: datetime) -> str:
    return readings.day or str(day_start(now).date())


def _resolution(
    tenant: str, key: str, current: dict[str, Any], summary: str, now: datetime, config: domain.AlertingConfig
) -> domain.EpisodeWrite:
    rule = str(current.get("rule") or key.partition(":")[0])
    snapshot = {
        **current,
        "rule": rule,
        "title": domain.title(rule),
        "tenant": tenant,
        "agent_id": current.get("agent_id"),
    }
    return domain.resolution(snapshot, now, summary, due_at=now + timedelta(seconds=config.group_wait_s))


def _ours(key: str) -> bool:
    return key in TENANT_RULES or key.startswith(STALLED + ":")


def _cleared(rule: str, key: str, readings: Readings) -> str:
    if rule == STALLED:
        return f"training job {key.partition(':')[2]} is no longer stalled (running or ended)"
    if rule == FAILURE_RATE:
        failed, ended = readings.failed_today or 0, readings.ended_today or 0
        return f"{failed} of {ended} jobs ended today failed: under the threshold"
    if rule == QUEUE:
        return f"{readings.queued or 0} training jobs queued now"
    return "no training job has waited past the threshold now"
