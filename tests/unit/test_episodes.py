"""Alert episodes and their notices (shared/domain/episodes.py), and silences (shared/domain/silences.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from shared.domain import episodes
from shared.domain.episodes import AgentEpisodes, AlertingConfig, Severity
from shared.domain.silences import MAX_SILENCE, Silence, maintenance_until, silencing

T0 = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
CONFIG = AlertingConfig()


def agent_eps(open_: dict[str, dict[str, Any]] | None = None, seq: int = 0) -> AgentEpisodes:
    return AgentEpisodes("agent-1", "acme", dict(open_ or {}), seq, CONFIG)


def opened(rule: str = episodes.ERROR_RATE, severity: Severity = Severity.WARNING) -> AgentEpisodes:
    eps = agent_eps()
    eps.open_(rule, severity, T0, "first summary", {"k": 1})
    return eps


# --- AlertingConfig --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("severity", "channel"),
    [
        (Severity.INFO, "#fleet-alerts"),
        (Severity.WARNING, "#fleet-alerts"),
        (Severity.HIGH, "#fleet-alerts"),
        (Severity.CRITICAL, "#fleet-oncall"),
        (Severity.EMERGENCY, "#fleet-oncall"),
    ],
)
def test_default_routing_per_severity(severity: Severity, channel: str) -> None:
    assert CONFIG.channel(severity) == channel


@pytest.mark.parametrize(
    ("severity", "every"),
    [
        (Severity.INFO, None),
        (Severity.WARNING, timedelta(hours=4)),
        (Severity.HIGH, timedelta(hours=1)),
        (Severity.CRITICAL, timedelta(minutes=30)),
        (Severity.EMERGENCY, timedelta(minutes=15)),
    ],
)
def test_default_repeat_intervals(severity: Severity, every: timedelta | None) -> None:
    assert CONFIG.repeat_after(severity) == every


def test_other_defaults() -> None:
    assert (CONFIG.group_wait_s, CONFIG.group_min, CONFIG.root_share, CONFIG.root_min_agents) == (30, 3, 0.5, 3)


def test_a_zero_repeat_interval_means_no_reminders() -> None:
    config = AlertingConfig.for_tenant({"repeat_every_s": {"warning": 0}})
    assert config.repeat_after(Severity.WARNING) is None


def test_tenant_routing_override() -> None:
    config = AlertingConfig.for_tenant({"default_channel": "#acme", "channels": {"high": "#acme-pager"}})
    assert config.channel(Severity.HIGH) == "#acme-pager"
    assert config.channel(Severity.WARNING) == "#acme"


def test_for_tenant_without_overrides_is_the_default() -> None:
    assert AlertingConfig.for_tenant(None) == CONFIG == AlertingConfig.for_tenant({})


@pytest.mark.parametrize(
    "overrides",
    [{"default_channel": "  "}, {"group_min": 1}, {"group_wait_s": -1}, {"root_share": 0}, {"colour": "red"}],
)
def test_invalid_alerting_overrides_are_refused(overrides: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        AlertingConfig.for_tenant(overrides)


# --- ids -------------------------------------------------------------------------------------------


def test_episode_and_notice_ids_are_deterministic() -> None:
    assert episodes.episode_id("a.agent-1", "liveness", 3) == "a.agent-1.liveness.3"
    assert episodes.episode_id("t.acme", "fleet_offline", 1) == "t.acme.fleet_offline.1"
    assert episodes.notice_id("a.agent-1.liveness.3", "resolve") == "a.agent-1.liveness.3.resolve"


def test_the_same_decision_on_the_same_record_makes_the_same_ids() -> None:
    first, second = opened(), opened()
    assert first.writes[0].episode_id == second.writes[0].episode_id == "a.agent-1.error_rate.1"
    assert first.writes[0].notice == second.writes[0].notice


# --- open ------------------------------------------------------------------------------------------


def test_open_creates_an_episode_and_its_notice() -> None:
    eps = opened()
    [write] = eps.writes
    assert write.fields == {
        "id": "a.agent-1.error_rate.1",
        "rule": "error_rate",
        "title": "High error rate",
        "severity": "warning",
        "tenant": "acme",
        "agent_id": "agent-1",
        "state": "open",
        "opened_at": T0,
        "resolved_at": None,
        "summary": "first summary",
        "details": {"k": 1},
        "next_repeat_at": T0 + timedelta(hours=4),
        "repeats": 0,
        "resolve_at": None,
        "expire_at": None,
    }
    assert write.create is False


def test_notice_carries_what_the_notifier_needs() -> None:
    notice = opened().writes[0].notice
    assert notice == {
        "id": "a.agent-1.error_rate.1.open",
        "episode_id": "a.agent-1.error_rate.1",
        "event": "open",
        "rule": "error_rate",
        "title": "High error rate",
        "severity": "warning",
        "tenant": "acme",
        "agent_id": "agent-1",
        "summary": "first summary",
        "opened_at": T0,
        "created_at": T0,
        "due_at": T0 + timedelta(seconds=30),
        "state": "pending",
        "attempts": 0,
        "expire_at": T0 + timedelta(days=30),
    }


def test_open_without_wait_is_due_at_once() -> None:
    eps = agent_eps()
    eps.open_(episodes.LIVENESS, Severity.WARNING, T0, "s", wait=False)
    assert eps.writes[0].notice is not None and eps.writes[0].notice["due_at"] == T0


def test_group_wait_comes_from_the_config() -> None:
    eps = AgentEpisodes("agent-1", "acme", {}, 0, AlertingConfig(group_wait_s=90))
    eps.open_(episodes.ERROR_RATE, Severity.WARNING, T0, "s")
    assert eps.writes[0].notice is not None and eps.writes[0].notice["due_at"] == T0 + timedelta(seconds=90)


def test_open_indexes_the_episode_for_the_agent_document() -> None:
    eps = opened()
    assert eps.is_open(episodes.ERROR_RATE) and eps.severity(episodes.ERROR_RATE) is Severity.WARNING
    assert eps.changes() == {
        "episodes": {
            "error_rate": {"id": "a.agent-1.error_rate.1", "severity": "warning", "opened_at": T0.isoformat()}
        },
        "episode_seq": 1,
    }


def test_open_of_an_open_rule_does_nothing() -> None:
    eps = opened()
    assert eps.open_(episodes.ERROR_RATE, Severity.HIGH, T0 + timedelta(minutes=1), "again") is False
    assert len(eps.writes) == 1 and eps.seq == 1


def test_each_new_episode_takes_the_next_sequence_number() -> None:
    eps = opened()
    eps.open_(episodes.EGRESS, Severity.HIGH, T0, "s")
    eps.resolve(episodes.ERROR_RATE, T0, "ok")
    eps.open_(episodes.ERROR_RATE, Severity.WARNING, T0, "s")
    assert [w.episode_id for w in eps.writes] == [
        "a.agent-1.error_rate.1",
        "a.agent-1.egress.2",
        "a.agent-1.error_rate.1",
        "a.agent-1.error_rate.3",
    ]


def test_no_change_means_no_agent_fields() -> None:
    eps = agent_eps()
    assert eps.resolve(episodes.ERROR_RATE, T0, "x") is False
    assert eps.escalate(episodes.ERROR_RATE, Severity.HIGH, T0, "x") is False
    assert eps.changes() == {} and eps.writes == []


def test_unknown_rule_gets_a_readable_title() -> None:
    eps = agent_eps()
    eps.open_("disk_full", Severity.HIGH, T0, "s")
    assert eps.writes[0].fields["title"] == "Disk full"


def test_of_reads_the_index_from_the_record_without_sharing_it() -> None:
    class Record:
        agent_id, tenant, episode_seq = "agent-1", "acme", 4
        episodes = {"liveness": {"id": "a.agent-1.liveness.4", "severity": "high"}}

    eps = AgentEpisodes.of(Record(), CONFIG)
    eps.resolve(episodes.LIVENESS, T0, "back")
    assert eps.changes() == {"episodes": {}, "episode_seq": 4}
    assert "liveness" in Record.episodes


# --- escalate --------------------------------------------------------------------------------------


def test_escalation_raises_severity_and_sends_a_notice() -> None:
    eps = opened()
    at = T0 + timedelta(minutes=5)
    assert eps.escalate(episodes.ERROR_RATE, Severity.HIGH, at, "worse") is True
    write = eps.writes[-1]
    assert write.episode_id == "a.agent-1.error_rate.1"
    assert write.fields == {
        "severity": "high",
        "summary": "worse",
        "next_repeat_at": at + timedelta(hours=1),
        "acknowledged_by": None,  # an escalation asks again: an acknowledgement of the milder alert ends
        "acknowledged_at": None,
    }
    assert write.notice is not None
    assert write.notice["id"] == "a.agent-1.error_rate.1.escalate-high"
    assert (write.notice["severity"], write.notice["summary"], write.notice["due_at"]) == ("high", "worse", at)
    assert eps.severity(episodes.ERROR_RATE) is Severity.HIGH


@pytest.mark.parametrize("severity", [Severity.WARNING, Severity.INFO])
def test_escalation_to_the_same_or_lower_severity_does_nothing(severity: Severity) -> None:
    eps = opened()
    assert eps.escalate(episodes.ERROR_RATE, severity, T0, "x") is False
    assert len(eps.writes) == 1


# --- resolve ---------------------------------------------------------------------------------------


def test_resolution_closes_the_episode_and_sends_a_notice() -> None:
    eps = opened()
    at = T0 + timedelta(minutes=7)
    assert eps.resolve(episodes.ERROR_RATE, at, "back to 2%") is True
    write = eps.writes[-1]
    assert write.fields == {
        "state": "resolved",
        "resolved_at": at,
        "resolution": "back to 2%",
        "next_repeat_at": None,
        "resolve_at": None,
        "expire_at": at + timedelta(days=30),
    }
    assert write.notice is not None
    assert write.notice["id"] == "a.agent-1.error_rate.1.resolve"
    assert write.notice["summary"] == "back to 2%"
    assert write.notice["opened_at"] == T0.isoformat()
    assert write.notice["due_at"] == at + timedelta(seconds=eps.config.group_wait_s)  # behind its opening
    assert not eps.is_open(episodes.ERROR_RATE)
    assert eps.changes()["episodes"] == {}


def test_resolution_due_at_can_be_deferred() -> None:
    write = episodes.resolution(
        {"id": "e.1", "rule": "x", "severity": "warning", "tenant": "acme"}, T0, "done", due_at=T0 + timedelta(1)
    )
    assert write.notice is not None and write.notice["due_at"] == T0 + timedelta(1)


# --- reminders -------------------------------------------------------------------------------------


def open_episode(**kw: Any) -> dict[str, Any]:
    fields = opened().writes[0].fields
    return {**fields, **kw}


def test_first_reminder_is_numbered_and_schedules_from_the_previous_schedule() -> None:
    episode = open_episode()
    now = T0 + timedelta(hours=4, minutes=10)  # the sweep ran 10 minutes late
    write = episodes.reminder(episode, now, CONFIG)
    assert write.fields == {"repeats": 1, "next_repeat_at": T0 + timedelta(hours=8)}
    assert write.notice is not None
    assert write.notice["id"] == "a.agent-1.error_rate.1.repeat-1"
    assert write.notice["event"] == "repeat-1" and write.notice["due_at"] == now


def test_a_very_late_reminder_skips_missed_slots_but_keeps_the_schedule() -> None:
    write = episodes.reminder(open_episode(), T0 + timedelta(hours=9), CONFIG)
    assert write.fields["next_repeat_at"] == T0 + timedelta(hours=12)


def test_reminder_exactly_on_a_slot_schedules_the_next_one() -> None:
    write = episodes.reminder(open_episode(next_repeat_at=T0 + timedelta(hours=4)), T0 + timedelta(hours=8), CONFIG)
    assert write.fields["next_repeat_at"] == T0 + timedelta(hours=12)


def test_later_reminders_count_up() -> None:
    episode = open_episode(repeats=2, next_repeat_at=T0 + timedelta(hours=12))
    write = episodes.reminder(episode, T0 + timedelta(hours=12), CONFIG)
    assert write.fields["repeats"] == 3
    assert write.notice is not None and write.notice["id"].endswith(".repeat-3")


def test_reminder_uses_the_current_severity_interval() -> None:
    episode = open_episode(severity="critical", next_repeat_at=T0 + timedelta(minutes=30))
    write = episodes.reminder(episode, T0 + timedelta(minutes=31), CONFIG)
    assert write.fields["next_repeat_at"] == T0 + timedelta(hours=1)


def test_reminder_without_a_repeat_interval_schedules_none() -> None:
    write = episodes.reminder(open_episode(severity="info"), T0 + timedelta(hours=1), CONFIG)
    assert write.fields["next_repeat_at"] is None


# --- silences --------------------------------------------------------------------------------------


def silence(**kw: Any) -> Silence:
    data: dict[str, Any] = {
        "id": "s-1",
        "tenant": "acme",
        "reason": "deploy",
        "created_by": "ann",
        "created_at": T0,
        "starts_at": T0,
        "expires_at": T0 + timedelta(hours=1),
    }
    data.update(kw)
    return Silence.model_validate(data)


def test_silence_needs_a_scope() -> None:
    with pytest.raises(ValidationError, match="names an agent, a tenant or a rule"):
        silence(tenant=None)


@pytest.mark.parametrize("scope", [{"agent_id": "agent-1"}, {"rule": "liveness"}])
def test_any_one_scope_is_enough(scope: dict[str, str]) -> None:
    assert silence(tenant=None, **scope).tenant is None


def test_silence_needs_an_expiry() -> None:
    with pytest.raises(ValidationError):
        Silence.model_validate({"id": "s", "tenant": "acme", "reason": "r", "created_by": "a"} | {"created_at": T0})


@pytest.mark.parametrize("expires", [T0, T0 - timedelta(seconds=1)])
def test_silence_must_expire_after_it_starts(expires: datetime) -> None:
    with pytest.raises(ValidationError):
        silence(expires_at=expires)


def test_silence_lasts_at_most_thirty_days() -> None:
    assert silence(expires_at=T0 + MAX_SILENCE).expires_at == T0 + timedelta(days=30)
    with pytest.raises(ValidationError, match="at most 30 days"):
        silence(expires_at=T0 + MAX_SILENCE + timedelta(seconds=1))


def test_silence_needs_a_reason() -> None:
    with pytest.raises(ValidationError):
        silence(reason="")


@pytest.mark.parametrize(
    ("at", "active"),
    [
        (T0 - timedelta(seconds=1), False),
        (T0, True),
        (T0 + timedelta(minutes=59), True),
        (T0 + timedelta(hours=1), False),
    ],
)
def test_silence_is_active_from_start_until_expiry(at: datetime, active: bool) -> None:
    assert silence().active(at) is active


def test_an_ended_silence_is_inactive() -> None:
    assert silence(ended_at=T0 + timedelta(minutes=5), ended_by="bob").active(T0 + timedelta(minutes=1)) is False


@pytest.mark.parametrize(
    ("scope", "target", "matches"),
    [
        ({"tenant": "acme"}, ("acme", "agent-1", "liveness"), True),
        ({"tenant": "acme"}, ("globex", "agent-1", "liveness"), False),
        ({"tenant": None, "agent_id": "agent-1"}, ("acme", "agent-1", "egress"), True),
        ({"tenant": None, "agent_id": "agent-1"}, ("acme", "agent-2", "egress"), False),
        ({"tenant": None, "rule": "egress"}, ("globex", "agent-9", "egress"), True),
        ({"tenant": None, "rule": "egress"}, ("globex", "agent-9", "liveness"), False),
        ({"tenant": "acme", "rule": "egress"}, ("acme", "agent-1", "egress"), True),
        ({"tenant": "acme", "rule": "egress"}, ("acme", "agent-1", "liveness"), False),
        ({"tenant": "acme", "rule": "egress"}, ("globex", "agent-1", "egress"), False),
    ],
)
def test_silence_matches_every_field_it_names(
    scope: dict[str, Any], target: tuple[str, str, str], matches: bool
) -> None:
    tenant, agent, rule = target
    assert silence(**scope).matches(tenant=tenant, agent_id=agent, rule=rule) is matches


def test_silencing_picks_an_active_matching_silence() -> None:
    ended = silence(id="s-ended", ended_at=T0)
    other = silence(id="s-other", tenant="globex")
    match = silence(id="s-match", rule="egress")
    now = T0 + timedelta(minutes=1)
    found = silencing([ended, other, match], now, tenant="acme", agent_id="agent-1", rule="egress")
    assert found is not None and found.id == "s-match"
    assert silencing([ended, other, match], now, tenant="acme", agent_id="agent-1", rule="liveness") is None


def test_silencing_ignores_future_and_expired_silences() -> None:
    future = silence(starts_at=T0 + timedelta(hours=1), expires_at=T0 + timedelta(hours=2))
    assert silencing([future], T0, tenant="acme", agent_id="a", rule="r") is None
    assert silencing([silence()], T0 + timedelta(hours=2), tenant="acme", agent_id="a", rule="r") is None


def test_maintenance_window_also_silences() -> None:
    window = silence(maintenance=True)
    assert silencing([window], T0, tenant="acme", agent_id="agent-1", rule="error_rate") is window


def test_maintenance_until_picks_the_latest_matching_window() -> None:
    windows = [
        silence(id="m-1", maintenance=True, expires_at=T0 + timedelta(hours=1)),
        silence(id="m-2", maintenance=True, tenant=None, agent_id="agent-1", expires_at=T0 + timedelta(hours=3)),
        silence(id="m-3", maintenance=True, tenant=None, agent_id="agent-2", expires_at=T0 + timedelta(hours=9)),
        silence(id="plain", expires_at=T0 + timedelta(hours=8)),
        silence(id="ruled", maintenance=True, rule="liveness", expires_at=T0 + timedelta(hours=7)),
        silence(id="over", maintenance=True, ended_at=T0, expires_at=T0 + timedelta(hours=6)),
    ]
    assert maintenance_until(windows, T0 + timedelta(minutes=1), tenant="acme", agent_id="agent-1") == T0 + timedelta(
        hours=3
    )


def test_maintenance_until_is_none_outside_any_window() -> None:
    windows = [silence(maintenance=True)]
    assert maintenance_until(windows, T0 + timedelta(hours=1), tenant="acme", agent_id="agent-1") is None
    assert maintenance_until(windows, T0, tenant="globex", agent_id="agent-1") is None
    assert maintenance_until([], T0, tenant="acme", agent_id="agent-1") is None


def test_silence_document_expires_after_retention() -> None:
    doc = silence().to_doc()
    assert doc["expire_at"] == T0 + timedelta(hours=1) + timedelta(days=30)
    assert doc["id"] == "s-1" and doc["tenant"] == "acme"
