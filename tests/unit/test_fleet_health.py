"""The fleet watching itself: the judgement (shared/domain/fleet_health.py) and the minute job's service
(shared/services/fleet_health.py) over a fake store and a fake ``_fleet`` alert document."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from shared.domain import episodes as episode_rules
from shared.domain import fleet_health as rules
from shared.domain.alerts import Severity
from shared.domain.fleet_health import Kind, Readings, Thresholds
from shared.services import fleet_health as service
from shared.services import sweep
from shared.slack import web_api
from shared.store import config as config_store
from shared.store import episodes as episode_store
from shared.store import fleet_health as store

NOW = datetime(2026, 12, 6, 16, 0, tzinfo=UTC)
LIMITS = Thresholds(
    dead_letters_per_hour=2, rejections_per_hour=5, slack_failures_per_hour=1, outbox_late_s=300, outbox_pending=10
)
CONFIG = episode_rules.AlertingConfig()


def test_healthy_readings_find_nothing() -> None:
    quiet = Readings(rejections={"delivery_exhausted": 2, "schema_violation": 5}, failed_errors=["invalid_auth"])
    assert rules.judge(quiet, LIMITS) == {}


def test_each_threshold_opens_its_own_kind_when_passed() -> None:
    readings = Readings(
        rejections={"delivery_exhausted": 3, "schema_violation": 4, "not_json": 2},
        failed_errors=["channel_not_found", "channel_not_found"],
        late=1,
        pending=3,
        model_failures={"anomaly": ("v7", "self_check_failed (SelfCheckFailed)")},
    )
    found = rules.judge(readings, LIMITS)
    assert set(found) == set(Kind)
    assert found[Kind.DEAD_LETTERS].details["count"] == 3
    # Dead letters are not counted again among the rejections.
    assert found[Kind.REJECTIONS].details["count"] == 6
    assert "schema_violation 4" in found[Kind.REJECTIONS].summary
    assert found[Kind.SLACK_FAILING].severity is Severity.HIGH
    assert "channel_not_found" in found[Kind.SLACK_FAILING].summary
    assert "1 more than 300 s past their due time" in found[Kind.OUTBOX_BACKLOG].summary
    assert "anomaly v7: self_check_failed" in found[Kind.MODEL_LOAD].summary


def test_a_refused_bot_token_is_critical() -> None:
    found = rules.judge(Readings(failed_errors=["invalid_auth", "invalid_auth", "not_in_channel"]), LIMITS)
    slack = found[Kind.SLACK_FAILING]
    assert slack.severity is Severity.CRITICAL and slack.details["auth"] is True
    assert "bot token is refused (invalid_auth)" in slack.summary


def test_the_adapter_and_the_health_rules_read_one_set_of_auth_errors() -> None:
    # One set (shared/domain/slack_errors.py): a code added there changes both the logged
    # slack_failure="auth" (Cloud Monitoring) and this episode's severity.
    assert web_api.AUTH_ERRORS is rules.AUTH_ERRORS
    for code in sorted(rules.AUTH_ERRORS):
        assert rules.judge(Readings(failed_errors=[code] * 2), LIMITS)[Kind.SLACK_FAILING].severity is Severity.CRITICAL


def test_too_many_pending_is_a_backlog_even_when_none_is_late_and_zero_turns_checks_off() -> None:
    readings = Readings(rejections={"delivery_exhausted": 99}, failed_errors=["x"] * 9, pending=11)
    assert set(rules.judge(readings, LIMITS)) == {Kind.DEAD_LETTERS, Kind.SLACK_FAILING, Kind.OUTBOX_BACKLOG}
    off = Thresholds(0, 0, 0, 0, 0)
    assert rules.judge(readings, off) == {}


def test_decide_opens_once_escalates_and_resolves() -> None:
    backlog = rules.judge(Readings(late=2), LIMITS)
    changes, writes = rules.decide({}, backlog, NOW, CONFIG)
    assert [w.fields["state"] for w in writes] == ["open"]
    opened = writes[0]
    assert opened.episode_id == "t._fleet.fleet_health.outbox_backlog.1"
    assert opened.fields["tenant"] == rules.TENANT and opened.fields["rule"] == rules.RULE
    assert opened.fields["details"]["kind"] == "outbox_backlog" and opened.notice is not None
    state = {"tenant": rules.TENANT, **changes}
    # Still unhealthy: nothing changes.
    assert rules.decide(state, backlog, NOW + timedelta(minutes=1), CONFIG) == ({}, [])
    # Slack refusing the token too: one more episode; the backlog stays as it is.
    both = {**backlog, **rules.judge(Readings(late=2, failed_errors=["invalid_auth"] * 2), LIMITS)}
    changes, writes = rules.decide(state, both, NOW, CONFIG)
    assert [w.episode_id for w in writes] == ["t._fleet.fleet_health.slack_failing.2"]
    state = {**state, **changes}
    # The condition clears: both resolve, their notices say so.
    changes, writes = rules.decide(state, {}, NOW + timedelta(minutes=5), CONFIG)
    assert sorted(w.fields["state"] for w in writes) == ["resolved", "resolved"]
    assert changes["episodes"] == {} and all(w.notice and w.notice["event"] == "resolve" for w in writes)
    assert all(w.notice and w.notice["tenant"] == rules.TENANT for w in writes)


def test_decide_escalates_a_more_severe_finding() -> None:
    high = rules.judge(Readings(failed_errors=["channel_not_found"] * 2), LIMITS)
    changes, _ = rules.decide({}, high, NOW, CONFIG)
    critical = rules.judge(Readings(failed_errors=["token_revoked"] * 2), LIMITS)
    changes, writes = rules.decide(changes, critical, NOW, CONFIG)
    assert len(writes) == 1 and writes[0].fields["severity"] == "critical"
    assert writes[0].notice and writes[0].notice["event"] == "escalate-critical"
    assert changes["episodes"]["slack_failing"]["severity"] == "critical"


class FleetDoc:
    """The ``_fleet`` tenant alert document, and the writes committed with it."""

    def __init__(self) -> None:
        self.state: dict[str, Any] = {}
        self.writes: list[episode_rules.EpisodeWrite] = []

    def update_tenant(self, tenant: str, decide: Any) -> list[episode_rules.EpisodeWrite]:
        assert tenant == rules.TENANT
        changes, writes = decide(dict(self.state))
        self.state.update(changes)
        self.writes += writes
        return list(writes)


@pytest.fixture
def doc(monkeypatch: pytest.MonkeyPatch) -> FleetDoc:
    fleet = FleetDoc()
    monkeypatch.setattr(episode_store, "update_tenant", fleet.update_tenant)
    monkeypatch.setattr(config_store, "alerting", lambda tenant: CONFIG)
    return fleet


def test_the_service_opens_then_resolves_through_the_tenant_document(doc: FleetDoc, monkeypatch) -> None:
    seen: list[Readings] = [Readings(rejections={"delivery_exhausted": 5})]
    monkeypatch.setattr(store, "readings", lambda now, limits, kinds: seen[-1])
    assert service.run(NOW, LIMITS) == {
        "unhealthy": ["dead_letters"],
        "opened": ["dead_letters"],
        "escalated": 0,
        "resolved": [],
        "notices": ["t._fleet.fleet_health.dead_letters.1.open"],  # due now: the tick sends them at its end
    }
    assert service.run(NOW, LIMITS)["opened"] == []
    seen.append(Readings())
    out = service.run(NOW + timedelta(minutes=1), LIMITS)
    assert out["unhealthy"] == [] and out["resolved"] == ["t._fleet.fleet_health.dead_letters.1"]
    assert out["notices"] == ["t._fleet.fleet_health.dead_letters.1.resolve"]
    assert doc.state["episodes"] == {}


def test_a_failing_read_is_reported_not_raised(doc: FleetDoc, monkeypatch) -> None:
    def broken(now: datetime, limits: Thresholds, kinds: list[str]) -> Readings:
        raise RuntimeError("firestore down")

    monkeypatch.setattr(store, "readings", broken)
    assert service.run(NOW, LIMITS) == {"error": "RuntimeError"}
    assert doc.writes == []


def test_the_minute_job_runs_the_check_last_and_sends_its_notices_in_the_same_run(monkeypatch) -> None:
    calls: list[str] = []
    monkeypatch.setattr(sweep, "sweep", lambda now: calls.append("sweep") or sweep.Swept())
    monkeypatch.setattr(sweep, "roots", lambda swept, now: calls.append("roots"))
    monkeypatch.setattr(sweep.command_sweep, "run", lambda now: calls.append("commands") or {})
    monkeypatch.setattr(sweep.notifier, "flush", lambda now: calls.append("flush") or sweep.notifier.Flushed())
    monkeypatch.setattr(sweep.approvals, "sweep", lambda now: calls.append("approvals") or {})
    monkeypatch.setattr(sweep.leases, "release_due", lambda now: calls.append("leases") or 0)
    monkeypatch.setattr(sweep.budget_forecasts, "run", lambda now: calls.append("forecast") or {})
    health = {"unhealthy": []}
    monkeypatch.setattr(sweep.fleet_health, "run", lambda now: calls.append("health") or dict(health))
    sent: list[list[str]] = []
    monkeypatch.setattr(
        sweep.notifier, "send_due", lambda ids: sent.append(list(ids)) or sweep.notifier.Flushed(sent=1)
    )
    out = sweep.run(NOW)
    assert calls == ["sweep", "roots", "commands", "flush", "approvals", "leases", "forecast", "health"]
    assert out["fleet_health"] == {"unhealthy": []} and sent == [] and out["own_notifications"] == {}
    # An opening written after the flush is sent at the end of the same run, not at the next tick.
    health = {"unhealthy": ["dead_letters"], "notices": ["t._fleet.fleet_health.dead_letters.1.open"]}
    out = sweep.run(NOW)
    assert sent == [["t._fleet.fleet_health.dead_letters.1.open"]] and out["own_notifications"]["sent"] == 1
    assert out["fleet_health"] == {"unhealthy": ["dead_letters"]}


def test_a_model_failure_counts_only_for_the_version_in_service_within_the_hour(monkeypatch) -> None:
    class Doc:
        def __init__(self, id_: str, data: dict[str, Any]) -> None:
            self.id, self.exists, self._data = id_, True, data

        def to_dict(self) -> dict[str, Any]:
            return self._data

    class Client:
        def collection(self, name: str) -> Any:
            return self

        def document(self, name: str) -> str:
            return name

        def get_all(self, refs: list[str], **kwargs: Any) -> list[Doc]:
            failure = {"version": "v2", "reason": "unloadable (ValueError)", "at": NOW - timedelta(minutes=5)}
            return [
                Doc("anomaly", {"current": "v2", "load_failure": failure}),
                Doc("failure", {"current": "v3", "load_failure": failure}),  # promoted since
                Doc("task_assignment", {"current": "v2", "load_failure": {**failure, "at": NOW - timedelta(hours=2)}}),
            ]

    monkeypatch.setattr(store.db, "client", lambda: Client())
    got = store.model_failures(["anomaly", "failure", "task_assignment"], NOW - timedelta(hours=1))
    assert got == {"anomaly": ("v2", "unloadable (ValueError)")}
