"""Training jobs that tell someone: the job episodes of the reconcile tick and of a job's end.

- :func:`on_final`, from settling a finished job (shared/training/follow.py ``settle``, whichever function
  finished it): a failed or released job opens its episode once (a create under ``job_failed.<id>`` or
  ``job_released.<id>``; it resolves by itself an hour later), and a failure or a success judges the
  tenant's failure rate of the UTC day the job finished in at once.
- :func:`tick`, once per reconcile tick: every tenant with active or queued jobs or open job episodes is
  judged (stalls, the day's failure rate while its episode is open, the queue's length and oldest wait)
  and its episodes opened or resolved in one conditional write of its alert document (shared/store/
  episodes.py ``update_tenant``: two ticks open each once).

The rules are shared/domain/job_alerts.py's. The notices go through the ordinary outbox (sent by the minute
job, grouped, silenced by rule, routed by severity to the tenant's channels). The requester (or the job's
``notify``, when given) is mentioned when their e-mail (``users.lookupByEmail``) or Slack user id
(``users.info``) is a Slack user (cached per process); otherwise the message names them as text in the
tenant's channel. Each step counts its Firestore reads and writes (the tick's result: ``alerts``).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from shared.domain import job_alerts as rules
from shared.domain.jobs import Job, JobState
from shared.platform import logs, metering
from shared.slack import web_api
from shared.store import config as config_store
from shared.store import episodes as episode_store
from shared.store import job_alerts as store

log = logs.get_logger("job_alerts")
EMAIL = re.compile(r"^[^@\s]{1,100}@[^@\s]{1,150}\.[^@\s]{1,50}$")
SLACK_USER = re.compile(r"^(?:slack:)?([UW][A-Z0-9]{2,20})$")


def mention(requester: str) -> str | None:
    """The Slack user id to mention for ``requester`` (an e-mail address or a Slack user id), None when it
    names no Slack user or Slack cannot say now (the message then names the requester as text)."""
    try:
        if EMAIL.match(requester):
            return web_api.user_by_email(requester)
        found = SLACK_USER.match(requester)
        if found is not None:
            user = found.group(1)
            web_api.user_email(user)  # users.info: refused (user_not_found) when there is no such user
            return user
    except (web_api.SlackRefused, web_api.SlackUnavailable) as exc:
        logs.log(log, f"requester {requester[:200]} not resolved in Slack: {exc}", requester=requester[:200])
    return None


def on_final(job: Job, now: datetime) -> bool:
    """A finished job's episode (failed, released) and, after a failure, its tenant's failure rate; False
    when it could not be done now (settling tries again: the episode's create makes it once)."""
    done = True
    with metering.metered() as meter:
        try:
            alert = rules.final_alert(job, now, mention(job.notify or job.requester) if rules.final_rule(job) else None)
            if alert is not None and episode_store.raise_once(alert):
                logs.log(log, f"{alert.kind} episode opened", logging.WARNING, job_id=job.id, tenant=job.tenant)
            if job.state in (JobState.FAILED, JobState.SUCCEEDED):
                _rate(job, now)
        except Exception as exc:  # Firestore or Slack trouble: the job stays unsettled, the next tick retries
            logs.log(log, f"job {job.id}: alerts not raised: {type(exc).__name__}: {exc}", logging.ERROR, job_id=job.id)
            done = False
    metering.count(reads=meter.reads, writes=meter.writes, conflicts=meter.conflicts)
    return done


def _rate(job: Job, now: datetime) -> None:
    """The failure rate of the UTC day ``job`` finished in (not the day it is settled in), judged on every
    succeeded or failed end: a success can push the rate over the threshold too (fewer than
    ``alert_failure_min_jobs`` ended before it). A success reads the alert document only when the rate is
    over (an open episode under it is resolved by the tick)."""
    limits = rules.Thresholds.of(config_store.jobs(job.tenant))
    start = rules.day_start(job.finished_at or now)
    ended, failed = store.ended_since(job.tenant, start, start + timedelta(days=1)) if limits.failure_rate else (0, 0)
    readings = rules.Readings(ended_today=ended, failed_today=failed, day=str(start.date()))
    if job.state is JobState.FAILED or rules.judge(job.tenant, readings, limits, now):
        _judge(job.tenant, readings, limits, now)


def tick(now: datetime, active: Iterable[Job], waiting: set[str], *, complete: bool = True) -> dict[str, Any]:
    """Judge every tenant with active jobs (``active``, as the tick listed them), queued jobs (``waiting``)
    or open job episodes; returns what it did and the Firestore reads and writes it cost. A listing that
    is not ``complete`` (the tick's page was full) does not judge stalls: an unlisted stalled job's episode
    must not resolve."""
    out: dict[str, Any] = {"tenants": 0, "opened": 0, "resolved": 0, "errors": 0}
    by_tenant: dict[str, list[Job]] = {}
    for job in active:
        by_tenant.setdefault(job.tenant, []).append(job)
    with metering.metered() as meter:
        try:
            open_ = store.tenants_open()
        except Exception as exc:  # judged again next tick; tenants with jobs are still judged now
            out["errors"] += 1
            logs.log(log, f"tenants with open job alerts not listed: {type(exc).__name__}: {exc}")
            open_ = set()
        for tenant in sorted(set(by_tenant) | waiting | open_):
            out["tenants"] += 1
            try:
                jobs = by_tenant.get(tenant, []) if complete else None
                opened, resolved = _tenant(tenant, now, jobs, tenant in waiting, tenant in open_)
            except Exception as exc:  # this tenant's next tick tries again; the others go on
                out["errors"] += 1
                logs.log(log, f"job alerts of {tenant} not judged: {type(exc).__name__}: {exc}", tenant=tenant)
                continue
            out["opened"] += opened
            out["resolved"] += resolved
    metering.count(reads=meter.reads, writes=meter.writes, conflicts=meter.conflicts)
    out["reads"], out["writes"] = meter.reads, meter.writes
    return out


def _tenant(tenant: str, now: datetime, jobs: list[Job] | None, waiting: bool, has_open: bool) -> tuple[int, int]:
    limits = rules.Thresholds.of(config_store.jobs(tenant))
    stalled = [
        rules.Stalled(
            job.id,
            job.name,
            job.agent_id,
            job.requester,
            mention(job.notify or job.requester),
            job.stalled_at,
            next((e.reason for e in reversed(job.history) if e.kind == "stalled"), "not running yet"),
        )
        for job in jobs or []
        if job.state is JobState.ADMITTED and job.stalled_at is not None
    ]
    queued, oldest = store.queue(tenant) if waiting else (0, None)
    readings = rules.Readings(queued=queued, oldest_queued_at=oldest, stalled=stalled if jobs is not None else None)
    if has_open and limits.failure_rate:
        readings.ended_today, readings.failed_today = store.ended_since(tenant, rules.day_start(now))
    elif has_open:
        readings.ended_today, readings.failed_today = 0, 0  # the check is off: an open episode resolves
    if not has_open and not rules.judge(tenant, readings, limits, now):
        return 0, 0  # nothing open, nothing found: no read of the alert document
    return _judge(tenant, readings, limits, now)


def _judge(tenant: str, readings: rules.Readings, limits: rules.Thresholds, now: datetime) -> tuple[int, int]:
    findings = rules.judge(tenant, readings, limits, now)
    config = config_store.alerting(tenant)

    def decide(state: dict[str, Any]) -> tuple[dict[str, Any], list[Any]]:
        return rules.decide(tenant, state, readings, findings, now, config)

    writes = episode_store.update_tenant(tenant, decide)
    opened = sum(1 for w in writes if w.fields.get("state") == "open")
    for write in writes:
        state = write.fields.get("state")
        logs.log(log, f"job episode {state}", logging.WARNING if state == "open" else logging.INFO, tenant=tenant)
    return opened, len(writes) - opened
