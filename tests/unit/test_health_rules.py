"""Health rules and the security score (shared/domain/health.py), and their wiring into heartbeats."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fleet_agent.contracts import CommandType, Heartbeat, Registration, ReportedStatus
from pydantic import ValidationError

from shared.domain import episodes, health
from shared.domain.agent_record import AgentRecord, Plan
from shared.domain.agents import apply_heartbeat, apply_registration
from shared.domain.episodes import AgentEpisodes, AlertingConfig
from shared.domain.health import HealthConfig, Verdict
from shared.domain.lifecycle import Cause, State
from tests.unit.test_liveness import merged

T0 = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
DEFAULT = HealthConfig()


def fresh_eps(open_: dict[str, dict[str, Any]] | None = None) -> AgentEpisodes:
    return AgentEpisodes("agent-1", "acme", dict(open_ or {}), len(open_ or {}), AlertingConfig())


def evaluate(
    state: dict[str, Any],
    at: datetime = T0,
    reported: str = "busy",
    config: HealthConfig = DEFAULT,
    eps: AgentEpisodes | None = None,
    **metrics: float,
) -> tuple[Verdict, AgentEpisodes]:
    eps = eps if eps is not None else fresh_eps()
    return health.evaluate(state, metrics, reported, at, config, eps, "agent-1"), eps


def run(beats: list[tuple[datetime, str, dict[str, float]]], config: HealthConfig = DEFAULT) -> list[Verdict]:
    """Several heartbeats in a row, each on the state and episodes the previous one left."""
    state: dict[str, Any] = {}
    eps = fresh_eps()
    verdicts = []
    for at, reported, metrics in beats:
        verdict = health.evaluate(state, metrics, reported, at, config, eps, "agent-1")
        state = verdict.state
        verdicts.append(verdict)
    return verdicts


def writes_of(eps: AgentEpisodes, rule: str) -> list[str]:
    return [w.notice["event"] for w in eps.writes if w.notice and w.notice["rule"] == rule]


def m(n: float) -> timedelta:
    return timedelta(minutes=n)


# --- error rate ------------------------------------------------------------------------------------


def test_error_rate_over_twenty_percent_opens_a_warning() -> None:
    verdict, eps = evaluate({}, error_rate=0.21)
    assert verdict.opened == [episodes.ERROR_RATE]
    [write] = eps.writes
    assert write.fields["severity"] == "warning"
    assert write.fields["summary"] == "agent-1: error rate 21% (threshold 20%)"
    assert write.fields["details"] == {"error_rate": 0.21}
    assert write.notice is not None and write.notice["due_at"] == T0 + timedelta(seconds=30)  # group wait


def test_error_rate_of_exactly_twenty_percent_opens_nothing() -> None:
    verdict, eps = evaluate({}, error_rate=0.20)
    assert verdict.opened == [] and eps.writes == []


def test_error_rate_episode_opens_once() -> None:
    verdicts = run([(T0, "busy", {"error_rate": 0.5}), (T0 + m(1), "busy", {"error_rate": 0.6})])
    assert [v.opened for v in verdicts] == [[episodes.ERROR_RATE], []]


@pytest.mark.parametrize("rate", [0.19, 0.16, 0.1501])
def test_error_rate_hysteresis_keeps_it_open_down_to_fifteen_percent(rate: float) -> None:
    eps = fresh_eps()
    evaluate({}, eps=eps, error_rate=0.5)
    evaluate({}, at=T0 + m(1), eps=eps, error_rate=rate)
    assert eps.is_open(episodes.ERROR_RATE)
    assert writes_of(eps, episodes.ERROR_RATE) == ["open"]


def test_error_rate_of_exactly_fifteen_percent_does_not_resolve() -> None:
    eps = fresh_eps()
    evaluate({}, eps=eps, error_rate=0.5)
    evaluate({}, at=T0 + m(1), eps=eps, error_rate=0.15)
    assert eps.is_open(episodes.ERROR_RATE)


def test_error_rate_under_fifteen_percent_resolves() -> None:
    eps = fresh_eps()
    evaluate({}, eps=eps, error_rate=0.5)
    evaluate({}, at=T0 + m(1), eps=eps, error_rate=0.14)
    assert not eps.is_open(episodes.ERROR_RATE)
    assert writes_of(eps, episodes.ERROR_RATE) == ["open", "resolve"]
    assert eps.writes[-1].fields["resolution"] == "agent-1: error rate back to 14%"


def test_heartbeat_without_error_rate_leaves_the_episode_alone() -> None:
    eps = fresh_eps()
    evaluate({}, eps=eps, error_rate=0.5)
    evaluate({}, at=T0 + m(1), eps=eps, cpu_pct=5)
    assert eps.is_open(episodes.ERROR_RATE)


# --- saturation ------------------------------------------------------------------------------------


def test_cpu_over_95_starts_a_timer_without_opening() -> None:
    verdict, eps = evaluate({}, cpu_pct=96)
    assert verdict.state["cpu_high_since"] == T0.isoformat()
    assert eps.writes == []


def test_cpu_over_95_for_nine_minutes_opens_nothing() -> None:
    verdicts = run([(T0, "busy", {"cpu_pct": 96}), (T0 + m(9), "busy", {"cpu_pct": 99})])
    assert verdicts[-1].opened == []


def test_cpu_over_95_for_ten_minutes_opens_high() -> None:
    eps = fresh_eps()
    state = evaluate({}, eps=eps, cpu_pct=96)[0].state
    verdict, _ = evaluate(state, at=T0 + m(10), eps=eps, cpu_pct=97)
    assert verdict.opened == [episodes.SATURATION]
    [write] = eps.writes
    assert write.fields["severity"] == "high"
    assert write.fields["summary"] == "agent-1: cpu 97% since 12:00 UTC"


def test_memory_over_95_for_ten_minutes_opens() -> None:
    verdicts = run([(T0, "busy", {"memory_pct": 96}), (T0 + m(10), "busy", {"memory_pct": 96})])
    assert verdicts[-1].opened == [episodes.SATURATION]


def test_a_dip_under_95_restarts_the_saturation_timer() -> None:
    beats = [(T0, 96.0), (T0 + m(5), 93.0), (T0 + m(10), 96.0), (T0 + m(19), 96.0), (T0 + m(20), 96.0)]
    verdicts = run([(at, "busy", {"cpu_pct": cpu}) for at, cpu in beats])
    assert [v.opened for v in verdicts] == [[], [], [], [], [episodes.SATURATION]]


def test_exactly_95_percent_is_not_saturated() -> None:
    verdict, _ = evaluate({}, cpu_pct=95)
    assert "cpu_high_since" not in verdict.state


@pytest.mark.parametrize(("cpu", "memory", "resolved"), [(89, 92, False), (92, 89, False), (89, 89, True)])
def test_saturation_resolves_only_when_both_are_under_90(cpu: float, memory: float, resolved: bool) -> None:
    eps = fresh_eps()
    state = evaluate({}, eps=eps, cpu_pct=99)[0].state
    state = evaluate(state, at=T0 + m(10), eps=eps, cpu_pct=99)[0].state
    evaluate(state, at=T0 + m(11), eps=eps, cpu_pct=cpu, memory_pct=memory)
    assert eps.is_open(episodes.SATURATION) is not resolved


def test_heartbeat_without_cpu_or_memory_does_not_resolve_saturation() -> None:
    eps = fresh_eps()
    state = evaluate({}, eps=eps, cpu_pct=99)[0].state
    state = evaluate(state, at=T0 + m(10), eps=eps, cpu_pct=99)[0].state
    evaluate(state, at=T0 + m(11), eps=eps, error_rate=0.01)
    assert eps.is_open(episodes.SATURATION)


# --- egress ----------------------------------------------------------------------------------------


def test_egress_is_summed_within_the_utc_hour_and_opens_over_1gb() -> None:
    beats = [(T0 + m(1), 600e6), (T0 + m(2), 300e6), (T0 + m(3), 200e6)]
    verdicts = run([(at, "busy", {"bytes_out": b}) for at, b in beats])
    assert [v.opened for v in verdicts] == [[], [], [episodes.EGRESS]]
    assert verdicts[-1].state["egress_bytes"] == 1_100_000_000
    assert verdicts[-1].state["egress_hour"] == "2026-11-21T12"


def test_egress_of_exactly_1gb_opens_nothing() -> None:
    verdicts = run([(T0, "busy", {"bytes_out": 500e6}), (T0 + m(1), "busy", {"bytes_out": 500e6})])
    assert verdicts[-1].opened == []


def test_egress_resets_at_the_new_hour() -> None:
    beats = [(T0 + m(59), 900e6), (T0 + m(61), 900e6)]
    verdicts = run([(at, "busy", {"bytes_out": b}) for at, b in beats])
    assert verdicts[-1].opened == []
    assert verdicts[-1].state["egress_hour"] == "2026-11-21T13"
    assert verdicts[-1].state["egress_bytes"] == 900_000_000


def test_egress_episode_resolves_at_the_new_hour() -> None:
    eps = fresh_eps()
    state = evaluate({}, at=T0 + m(30), eps=eps, bytes_out=2e9)[0].state
    evaluate(state, at=T0 + m(60), eps=eps, cpu_pct=5)
    assert writes_of(eps, episodes.EGRESS) == ["open", "resolve"]
    assert eps.writes[-1].fields["resolution"] == "agent-1: a new hour, egress counted from zero"


def test_egress_episode_details_name_the_hour_and_bytes() -> None:
    _, eps = evaluate({}, bytes_out=2e9)
    assert eps.writes[0].fields["details"] == {"bytes_out": 2_000_000_000, "hour": "2026-11-21T12"}
    assert eps.writes[0].fields["severity"] == "high"


# --- flapping --------------------------------------------------------------------------------------


def alternating(n: int, start: datetime = T0, every_s: int = 20) -> list[tuple[datetime, str, dict[str, float]]]:
    return [(start + timedelta(seconds=i * every_s), ("busy", "idle")[i % 2], {}) for i in range(n)]


def test_ten_status_changes_in_five_minutes_is_not_flapping() -> None:
    verdicts = run(alternating(11))  # the first heartbeat sets the baseline: 10 changes
    assert not verdicts[-1].state.get("flapping")
    assert all(v.flapping is None for v in verdicts)


def test_eleven_changes_in_five_minutes_is_flapping() -> None:
    verdicts = run(alternating(12))
    assert verdicts[-1].flapping is True and verdicts[-1].state["flapping"] is True
    assert verdicts[-1].opened == [episodes.FLAPPING]


def test_changes_spread_over_more_than_five_minutes_are_not_flapping() -> None:
    verdicts = run(alternating(12, every_s=40))
    assert not any(v.state.get("flapping") for v in verdicts)


def test_flapping_is_held_while_changes_continue() -> None:
    verdicts = run(alternating(20))
    assert [v.flapping for v in verdicts[11:]] == [True] + [None] * 8
    assert all(v.state["flapping"] for v in verdicts[11:])


def test_flapping_is_released_at_two_changes_in_the_window() -> None:
    beats = alternating(12)
    last = beats[-1][0]
    stable: list[tuple[datetime, str, dict[str, float]]] = [
        (last + timedelta(seconds=30 * i), "idle", {}) for i in range(1, 12)
    ]
    verdicts = run(beats + stable)
    released = [i for i, v in enumerate(verdicts) if v.flapping is False]
    assert len(released) == 1
    at = verdicts[released[0]]
    assert at.state["flapping"] is False
    window_start = stable[released[0] - 12][0] - timedelta(seconds=300)
    assert sum(1 for t in at.state["flips"] if datetime.fromisoformat(t) > window_start) <= 2


def test_flapping_release_resolves_its_episode() -> None:
    beats = alternating(12)
    stable: list[tuple[datetime, str, dict[str, float]]] = [(beats[-1][0] + m(6), "idle", {})]
    eps = fresh_eps()
    state: dict[str, Any] = {}
    for at, reported, metrics in beats + stable:
        state = health.evaluate(state, metrics, reported, at, DEFAULT, eps, "agent-1").state
    assert writes_of(eps, episodes.FLAPPING) == ["open", "resolve"]


# --- the security score ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("metrics", "score"),
    [({"error_rate": 0.5}, 85.0), ({"bytes_out": 2e9}, 70.0)],
)
def test_opening_a_rule_costs_security_points(metrics: dict[str, float], score: float) -> None:
    verdict = health.evaluate({}, metrics, "busy", T0, DEFAULT, fresh_eps(), "agent-1")
    assert verdict.state["score"] == score and verdict.state["score_at"] == T0.isoformat()


def test_saturation_and_flapping_cost_points_too() -> None:
    assert DEFAULT.score_costs == {"error_rate": 15, "saturation": 15, "flapping": 20, "egress": 30}
    verdicts = run(alternating(12))
    assert verdicts[-1].state["score"] == 80.0


def test_no_score_is_written_until_a_rule_costs_points() -> None:
    verdict, _ = evaluate({}, error_rate=0.01, cpu_pct=5)
    assert "score" not in verdict.state and verdict.quarantine is None


def test_score_recovers_six_points_an_hour() -> None:
    state = {"score": 50.0, "score_at": T0.isoformat()}
    assert health.score_at(state, T0 + timedelta(hours=2), DEFAULT) == 62.0
    assert health.score_at(state, T0 + m(30), DEFAULT) == 53.0


def test_score_recovery_is_capped_at_full() -> None:
    assert health.score_at({"score": 90.0, "score_at": T0}, T0 + timedelta(days=1), DEFAULT) == 100.0


def test_score_before_its_time_is_the_stored_score() -> None:
    assert health.score_at({"score": 40.0, "score_at": T0.isoformat()}, T0 - m(5), DEFAULT) == 40.0
    assert health.score_at({}, T0, DEFAULT) == 100.0


def test_stored_score_is_rewritten_with_its_recovery() -> None:
    verdict, _ = evaluate({"score": 50.0, "score_at": T0.isoformat()}, at=T0 + timedelta(hours=1), cpu_pct=5)
    assert verdict.state["score"] == 56.0
    assert verdict.state["score_at"] == (T0 + timedelta(hours=1)).isoformat()


@pytest.mark.parametrize(("stored", "quarantined"), [(30.0, True), (35.0, True), (36.0, False)])
def test_quarantine_when_the_score_falls_to_twenty(stored: float, quarantined: bool) -> None:
    verdict, _ = evaluate({"score": stored, "score_at": T0.isoformat()}, error_rate=0.5)
    assert (verdict.quarantine is not None) is quarantined


def test_quarantine_reason_names_the_score_and_the_rules() -> None:
    verdict, _ = evaluate({"score": 30.0, "score_at": T0.isoformat()}, error_rate=0.5)
    assert verdict.quarantine == "security score 15 <= 20 after error_rate"


def test_recovery_counts_before_the_cost() -> None:
    state = {"score": 30.0, "score_at": (T0 - timedelta(hours=1)).isoformat()}
    verdict, _ = evaluate(state, error_rate=0.5)
    assert verdict.state["score"] == 21.0 and verdict.quarantine is None


def test_a_low_score_without_a_new_opening_does_not_quarantine() -> None:
    verdict, _ = evaluate({"score": 5.0, "score_at": T0.isoformat()}, cpu_pct=5)
    assert verdict.quarantine is None


def test_all_four_rules_at_once_quarantine_a_fresh_agent() -> None:
    state = {
        "cpu_high_since": (T0 - m(10)).isoformat(),
        "last_reported": "idle",
        "flips": [(T0 - timedelta(seconds=10 * i)).isoformat() for i in range(1, 11)],
    }
    metrics = {"cpu_pct": 99, "error_rate": 0.5, "bytes_out": 2e9}
    verdict = health.evaluate(state, metrics, "busy", T0, DEFAULT, fresh_eps(), "agent-1")
    assert sorted(verdict.opened) == sorted(DEFAULT.score_costs)
    assert verdict.state["score"] == 20.0
    assert verdict.quarantine == "security score 20 <= 20 after error_rate, saturation, egress, flapping"


# --- per-tenant overrides --------------------------------------------------------------------------


def test_for_tenant_without_overrides_is_the_default() -> None:
    assert HealthConfig.for_tenant(None) == HealthConfig() == HealthConfig.for_tenant({})


def test_tenant_error_rate_threshold_and_its_hysteresis() -> None:
    config = HealthConfig.for_tenant({"error_rate": 0.5})
    assert evaluate({}, config=config, error_rate=0.3)[0].opened == []
    eps = fresh_eps()
    evaluate({}, config=config, eps=eps, error_rate=0.51)
    evaluate({}, at=T0 + m(1), config=config, eps=eps, error_rate=0.38)
    assert eps.is_open(episodes.ERROR_RATE)
    evaluate({}, at=T0 + m(2), config=config, eps=eps, error_rate=0.37)
    assert not eps.is_open(episodes.ERROR_RATE)


def test_tenant_saturation_duration() -> None:
    config = HealthConfig.for_tenant({"saturation_for_s": 120})
    verdicts = run([(T0, "busy", {"cpu_pct": 99}), (T0 + m(2), "busy", {"cpu_pct": 99})], config)
    assert verdicts[-1].opened == [episodes.SATURATION]


def test_tenant_egress_threshold() -> None:
    config = HealthConfig.for_tenant({"egress_bytes_per_hour": 1000})
    assert evaluate({}, config=config, bytes_out=1001)[0].opened == [episodes.EGRESS]


def test_tenant_quarantine_threshold() -> None:
    config = HealthConfig.for_tenant({"quarantine_at": 90})
    assert evaluate({}, config=config, error_rate=0.5)[0].quarantine == "security score 85 <= 90 after error_rate"


def test_tenant_flapping_threshold() -> None:
    config = HealthConfig.for_tenant({"flap_changes": 3})
    assert run(alternating(5), config)[-1].flapping is True


@pytest.mark.parametrize("overrides", [{"error_rte": 0.5}, {"error_rate": 0}, {"error_rate": 1.5}, {"flap_changes": 1}])
def test_invalid_tenant_overrides_are_refused(overrides: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        HealthConfig.for_tenant(overrides)


# --- wiring into heartbeats (shared/domain/agents.py) ----------------------------------------------


def registered() -> AgentRecord:
    reg = Registration.model_validate(
        dict(agent_id="agent-1", tenant="acme", name="A", agent_type="llm", version="1.0", owner="ann")
    )
    plan = apply_registration(None, reg, event_id="ev-00000001", received_at=T0)
    assert plan.create is not None
    return plan.create


def beat(
    record: AgentRecord,
    seq: int,
    at: datetime,
    status: ReportedStatus = ReportedStatus.BUSY,
    config: HealthConfig | None = None,
    alerting: AlertingConfig | None = None,
    **metrics: float,
) -> Plan:
    return apply_heartbeat(
        record,
        Heartbeat(agent_id="agent-1", seq=seq, sent_at=T0, status=status, metrics=metrics),
        received_at=at,
        event_id=f"hb-{seq:08d}",
        chunk_size=10,
        slots=2,
        retention=timedelta(days=1),
        health_config=config,
        alerting=alerting,
    )


def test_heartbeat_opens_the_error_rate_episode_in_its_own_write() -> None:
    plan = beat(registered(), 1, T0, error_rate=0.5)
    [write] = plan.episodes
    assert write.episode_id == "a.agent-1.error_rate.1"
    assert plan.changes["episodes"]["error_rate"]["id"] == "a.agent-1.error_rate.1"
    assert plan.changes["health"]["score"] == 85.0
    assert plan.writes == 3  # agent (with its sample), episode, notice


def test_heartbeat_without_rule_changes_writes_no_episode() -> None:
    plan = beat(registered(), 1, T0, cpu_pct=5)
    assert plan.episodes == [] and "episodes" not in plan.changes


def test_heartbeat_resolves_error_rate_with_hysteresis() -> None:
    record = merged(registered(), beat(registered(), 1, T0, error_rate=0.5))
    assert beat(record, 2, T0 + m(1), error_rate=0.16).episodes == []
    plan = beat(record, 2, T0 + m(1), error_rate=0.1)
    assert [w.notice["event"] for w in plan.episodes if w.notice] == ["resolve"]
    assert plan.changes["episodes"] == {}


def test_heartbeat_uses_the_tenant_health_config() -> None:
    plan = beat(registered(), 1, T0, config=HealthConfig(error_rate=0.6), error_rate=0.5)
    assert plan.episodes == []


def test_heartbeat_uses_the_tenant_alerting_config_for_group_wait() -> None:
    plan = beat(registered(), 1, T0, alerting=AlertingConfig(group_wait_s=120), error_rate=0.5)
    assert plan.episodes[0].notice is not None
    assert plan.episodes[0].notice["due_at"] == T0 + timedelta(seconds=120)


def low_score() -> AgentRecord:
    return registered().model_copy(update={"health": {"score": 30.0, "score_at": T0.isoformat()}})


def test_score_at_twenty_quarantines_the_agent() -> None:
    plan = beat(low_score(), 1, T0, error_rate=0.5)
    assert plan.changes["status"] is State.QUARANTINED
    assert plan.changes["status_cause"] == Cause.SYSTEM.value
    assert plan.changes["status_hold"] == "quarantine"
    assert plan.changes["holds"]["quarantine"]["reason"] == "security score 15 <= 20 after error_rate"
    assert [c.command for c in plan.commands] == [CommandType.QUARANTINE]
    assert any(a.action == "agent.hold.quarantine" for a in plan.audit)


def test_quarantine_opens_a_critical_security_episode_sent_at_once() -> None:
    plan = beat(low_score(), 1, T0, error_rate=0.5)
    rules = {w.fields["rule"]: w for w in plan.episodes}
    assert set(rules) == {episodes.ERROR_RATE, episodes.SECURITY}
    security = rules[episodes.SECURITY]
    assert security.episode_id == "a.agent-1.security.2"
    assert security.fields["severity"] == "critical" and security.fields["details"] == {"score": 15.0}
    assert security.notice is not None and security.notice["due_at"] == T0
    assert set(plan.changes["episodes"]) == {episodes.ERROR_RATE, episodes.SECURITY}


def test_an_agent_already_quarantined_is_not_quarantined_again() -> None:
    record = merged(low_score(), beat(low_score(), 1, T0, error_rate=0.5))
    record = merged(record, beat(record, 2, T0 + m(1), error_rate=0.01))
    plan = beat(record, 3, T0 + m(2), error_rate=0.5)
    assert plan.commands == []
    assert [w.fields["rule"] for w in plan.episodes if w.notice and w.notice["event"] == "open"] == ["error_rate"]
    assert "holds" not in plan.changes


def test_quarantined_agent_stays_quarantined_on_heartbeat() -> None:
    record = merged(low_score(), beat(low_score(), 1, T0, error_rate=0.5))
    plan = beat(record, 2, T0 + m(1), ReportedStatus.ACTIVE)
    assert "status" not in plan.changes


def test_flapping_agent_is_held_in_degraded() -> None:
    record = registered()
    statuses = [ReportedStatus.BUSY, ReportedStatus.IDLE] * 6
    for seq, status in enumerate(statuses, start=1):
        record = merged(record, beat(record, seq, T0 + timedelta(seconds=20 * seq), status))
    assert record.status is State.DEGRADED
    assert record.status_cause == Cause.SYSTEM.value and record.status_reason == "flapping"
    assert record.health["flapping"] is True
    assert episodes.FLAPPING in record.episodes
    plan = beat(record, 13, T0 + timedelta(seconds=260), ReportedStatus.BUSY)
    assert "status" not in plan.changes  # the reported status is recorded, not applied
    assert plan.sample is not None and plan.sample[1]["status"] == "busy"


def test_flapping_release_lets_the_reported_status_apply_again() -> None:
    record = registered()
    statuses = [ReportedStatus.BUSY, ReportedStatus.IDLE] * 6
    for seq, status in enumerate(statuses, start=1):
        record = merged(record, beat(record, seq, T0 + timedelta(seconds=20 * seq), status))
    plan = beat(record, 20, T0 + m(15), ReportedStatus.BUSY)
    assert plan.changes["health"]["flapping"] is False
    assert plan.changes["status"] is State.BUSY
    assert [w.notice["event"] for w in plan.episodes if w.notice] == ["resolve"]
