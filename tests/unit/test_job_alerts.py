"""Job alerts (shared/domain/job_alerts.py): which job ends raise an episode, and the tenant's
conditions (stalls, the day's failure rate, the queue's length and oldest wait) open once and resolve
when they clear, leaving the root alert's index alone."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from shared.domain import job_alerts as rules
from shared.domain.episodes import AlertingConfig
from shared.domain.jobs import Event, JobsConfig, JobState
from tests.unit.test_jobs_domain import HOUR, MIN, T0, make_job

CONFIG = AlertingConfig()
LIMITS = rules.Thresholds()


def ended(state: JobState, *, stalled: bool = False, started: bool = True, reason: str = "exit 1") -> Any:
    history = [Event(at=T0, kind="stalled", reason="admitted 15 min ago")] if stalled else []
    return make_job(
        "j-7",
        state=state,
        requester="maya@acme.com",
        admitted_at=T0,
        started_at=T0 if started else None,
        finished_at=T0 + HOUR,
        reason=reason,
        history=history,
    )


def test_the_thresholds_default_to_the_documented_ones_and_come_from_the_tenant_settings() -> None:
    assert rules.Thresholds.of(JobsConfig()) == rules.Thresholds(0.2, 5, 50, 7200)
    cfg = JobsConfig(alert_queue_length=3, alert_wait_s=60, alert_failure_rate=0.5, alert_failure_min_jobs=2)
    assert rules.Thresholds.of(cfg) == rules.Thresholds(0.5, 2, 3, 60)


def test_a_failed_job_raises_its_episode_under_its_own_id_mentioning_the_resolved_requester() -> None:
    alert = rules.final_alert(ended(JobState.FAILED, reason="<!channel> OOM"), T0 + HOUR, "U0MAYA01")
    assert alert is not None
    assert (alert.id, alert.kind, alert.tenant, alert.agent_id) == ("job_failed.j-7", "job_failed", "acme", "agent-a")
    assert "<@U0MAYA01>" in alert.message
    assert "&lt;!channel&gt; OOM" in alert.message and "<!channel>" not in alert.message
    assert alert.until == T0 + 2 * HOUR


def test_an_unresolved_requester_is_named_as_text() -> None:
    alert = rules.final_alert(ended(JobState.FAILED), T0 + HOUR, None)
    assert alert is not None and "`maya@acme.com`" in alert.message and "<@" not in alert.message


def test_a_job_stopped_before_it_ever_ran_after_a_stall_is_released() -> None:
    job = ended(JobState.FAILED, stalled=True, started=False, reason="not running 60 min after admission")
    alert = rules.final_alert(job, T0 + HOUR, None)
    assert alert is not None and alert.id == "job_released.j-7" and "released without running" in alert.message


def test_succeeded_and_cancelled_jobs_raise_nothing() -> None:
    assert rules.final_alert(ended(JobState.SUCCEEDED), T0, None) is None
    assert rules.final_alert(ended(JobState.CANCELLED), T0, None) is None


def stall(job_id: str = "j-1") -> rules.Stalled:
    return rules.Stalled(job_id, "train", "agent-a", "U0BOB0001", "U0BOB0001", T0, "admitted 15 min ago")


def run(state: dict[str, Any], readings: rules.Readings, now: Any = T0, limits: rules.Thresholds = LIMITS) -> Any:
    findings = rules.judge("acme", readings, limits, now)
    return rules.decide("acme", state, readings, findings, now, CONFIG)


def apply(state: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    return {**state, **changes}


def test_a_stall_opens_once_then_resolves_when_the_job_no_longer_stalls() -> None:
    changes, writes = run({}, rules.Readings(stalled=[stall()]))
    assert [w.fields["rule"] for w in writes] == ["job_stalled"]
    assert writes[0].episode_id == "t.acme.job_stalled.1" and writes[0].fields["agent_id"] == "agent-a"
    assert writes[0].notice is not None and "<@U0BOB0001>" in writes[0].notice["summary"]
    state = apply({}, changes)
    assert state[rules.OPEN_FLAG] is True
    assert run(state, rules.Readings(stalled=[stall()])) == ({}, [])  # a second tick changes nothing
    assert run(state, rules.Readings()) == ({}, [])  # not judged (stalls not read): left open
    changes, writes = run(state, rules.Readings(stalled=[]))
    assert [w.fields["state"] for w in writes] == ["resolved"] and writes[0].episode_id == "t.acme.job_stalled.1"
    assert changes["episodes"] == {} and changes[rules.OPEN_FLAG] is False


def test_the_failure_rate_opens_over_the_threshold_with_enough_jobs_and_resolves_under_it() -> None:
    assert run({}, rules.Readings(ended_today=4, failed_today=4)) == ({}, [])  # 4 < 5 jobs: 100% of few
    assert run({}, rules.Readings(ended_today=5, failed_today=1)) == ({}, [])  # 20% is not over 20%
    changes, writes = run({}, rules.Readings(ended_today=5, failed_today=2))
    assert [(w.fields["rule"], w.fields["severity"]) for w in writes] == [("job_failure_rate", "high")]
    assert "2 of 5" in writes[0].fields["summary"]
    state = apply({}, changes)
    _, writes = run(state, rules.Readings(ended_today=0, failed_today=0), now=T0 + 24 * HOUR)  # a new day
    assert [w.fields["state"] for w in writes] == ["resolved"]


def test_the_queue_length_and_the_oldest_wait_open_and_resolve() -> None:
    limits = rules.Thresholds(queue_length=2, wait_s=600)
    readings = rules.Readings(queued=3, oldest_queued_at=T0 - 11 * MIN)
    changes, writes = run({}, readings, limits=limits)
    assert sorted(w.fields["rule"] for w in writes) == ["job_queue", "job_wait"]
    state = apply({}, changes)
    assert run(state, readings, limits=limits) == ({}, [])
    changes, writes = run(state, rules.Readings(queued=2, oldest_queued_at=T0 - 11 * MIN), limits=limits)
    assert [(w.notice or {}).get("rule") for w in writes] == ["job_queue"] and writes[0].fields["state"] == "resolved"
    state = apply(state, changes)
    _, writes = run(state, rules.Readings(queued=0), limits=limits)
    assert [((w.notice or {}).get("rule"), w.fields["state"]) for w in writes] == [("job_wait", "resolved")]


def test_a_threshold_of_zero_turns_its_check_off() -> None:
    limits = rules.Thresholds(failure_rate=0, queue_length=0, wait_s=0)
    readings = rules.Readings(queued=10_000, oldest_queued_at=T0 - 100 * HOUR, ended_today=10, failed_today=10)
    assert run({}, readings, limits=limits) == ({}, [])


def test_the_root_alert_and_its_sequence_are_kept() -> None:
    root = {"id": "t.acme.fleet_offline.4", "severity": "critical", "opened_at": T0}
    state = {"episodes": {"fleet_offline": root}, "episode_seq": 4, "root_open": True}
    changes, writes = run(state, rules.Readings(stalled=[], queued=0, ended_today=0, failed_today=0))
    assert (changes, writes) == ({}, [])  # the root alert is not ours to resolve
    changes, writes = run(state, rules.Readings(stalled=[stall("j-9")]))
    assert writes[0].episode_id == "t.acme.job_stalled.5"
    assert changes["episodes"]["fleet_offline"] == root and "root_open" not in changes


def test_the_day_starts_at_midnight_utc() -> None:
    assert rules.day_start(T0 + timedelta(hours=14, minutes=59)) == T0.replace(hour=0)


def test_a_failure_rate_episode_is_of_one_day_a_new_day_over_it_opens_a_new_one() -> None:
    over = rules.Readings(ended_today=5, failed_today=2)
    changes, _ = run({}, over)
    state = apply({}, changes)
    assert state["episodes"]["job_failure_rate"]["day"] == "2026-03-02"
    assert run(state, over) == ({}, [])  # the same day: open already
    changes, writes = run(state, over, now=T0 + 24 * HOUR)  # the next day is over the threshold too
    assert [(w.episode_id, w.fields["state"]) for w in writes] == [
        ("t.acme.job_failure_rate.1", "resolved"),
        ("t.acme.job_failure_rate.2", "open"),
    ]
    assert changes["episodes"]["job_failure_rate"]["day"] == "2026-03-03"


def test_counts_of_an_earlier_day_do_not_resolve_todays_failure_rate() -> None:
    changes, _ = run({}, rules.Readings(ended_today=5, failed_today=2), now=T0 + 24 * HOUR)
    state = apply({}, changes)
    late = rules.Readings(ended_today=9, failed_today=0, day="2026-03-02")  # a job of yesterday settled late
    assert run(state, late, now=T0 + 24 * HOUR) == ({}, [])
    _, writes = run(state, rules.Readings(ended_today=9, failed_today=0), now=T0 + 24 * HOUR)
    assert [w.fields["state"] for w in writes] == ["resolved"]
