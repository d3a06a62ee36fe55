"""Critical alerts at once (issue 21): which notices the raising function sends itself
(shared/domain/episodes.py ``sent_at_once``, ``at_once``) and the immediate path
(shared/services/notifier.py ``send_now``) against a stateful fake outbox, beside the minute job."""

from __future__ import annotations

import json
import types
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fleet_agent.contracts import Heartbeat
from fleet_agent.identity import AgentKey

from shared.domain import episodes as domain
from shared.domain.alerts import Alert
from shared.domain.episodes import AgentEpisodes, AlertingConfig, Severity
from shared.domain.health import HealthConfig
from shared.domain.remediation_policy import RemediationPolicy
from shared.domain.spend import Effects
from shared.pipeline import fleet_actions, handlers
from shared.pipeline.decoding import PushedMessage
from shared.platform import settings
from shared.services import accounting, handoff, notifier
from shared.store import config as config_store
from shared.store import episodes as episode_store
from tests.unit.test_identity_paths import NOW as IDENTITY_NOW
from tests.unit.test_identity_paths import agent as signed_agent
from tests.unit.test_identity_paths import decoded as signed
from tests.unit.test_identity_paths import store  # noqa: F401
from tests.unit.test_notifier import NOW, T0, World, a_silence, later, opening, world  # noqa: F401

HOUR = timedelta(hours=1)

# --- the decision ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("severity", "event", "at_once"),
    [
        ("critical", "open", True),
        ("emergency", "open", True),
        ("critical", "escalate-critical", True),
        ("emergency", "escalate-emergency", True),
        ("warning", "open", False),
        ("high", "open", False),
        ("info", "open", False),
        ("high", "escalate-high", False),
        ("critical", "resolve", False),  # edits the opening's message: never ahead of it
        ("critical", "repeat-1", False),  # reminders are the minute job's own
    ],
)
def test_only_openings_and_escalations_of_critical_and_emergency_go_at_once(
    severity: str, event: str, at_once: bool
) -> None:
    assert domain.sent_at_once({"severity": severity, "event": event}) is at_once


def alert(severity: Severity, kind: str = "runaway_loop") -> Alert:
    return Alert(id=f"{kind}.agent-1.h", kind=kind, severity=severity, tenant="acme", message="m", at=T0)


def test_of_the_cost_alerts_raised_only_the_critical_openings_are_picked() -> None:
    raised = [alert(Severity.CRITICAL), alert(Severity.WARNING, "budget_threshold"), alert(Severity.EMERGENCY, "x")]
    assert domain.at_once(raised) == ["runaway_loop.agent-1.h.open", "x.agent-1.h.open"]


def test_of_an_agents_episode_writes_only_the_critical_ones_are_picked() -> None:
    eps = AgentEpisodes("agent-1", "acme", {}, 0, AlertingConfig())
    eps.open_(domain.ERROR_RATE, Severity.WARNING, T0, "errors")
    eps.open_(domain.SECURITY, Severity.CRITICAL, T0, "quarantined", wait=False)
    eps.resolve(domain.ERROR_RATE, T0, "fine again")
    assert domain.at_once(eps.writes) == ["a.agent-1.security.2.open"]
    assert domain.at_once([domain.EpisodeWrite("e", {})]) == []  # a write without a notice


def test_an_escalation_to_critical_is_picked() -> None:
    index = {domain.LIVENESS: {"id": "a.agent-1.liveness.1", "severity": "high", "opened_at": T0.isoformat()}}
    eps = AgentEpisodes("agent-1", "acme", index, 1, AlertingConfig())
    eps.escalate(domain.LIVENESS, Severity.CRITICAL, T0, "frozen")
    assert domain.at_once(eps.writes) == ["a.agent-1.liveness.1.escalate-critical"]


# --- the immediate path, against a stateful outbox -------------------------------------------------


class Outbox:
    """``notifications`` with update times: a claim is a conditional update, as in Firestore."""

    def __init__(self, episodes: dict[str, dict[str, Any]]) -> None:
        self.docs: dict[str, dict[str, Any]] = {}
        self.versions: dict[str, int] = {}
        self.reads = 0
        #: The episodes (the world's): what a finished notice's episode remembers is merged here.
        self.episodes = episodes
        #: Which finishing writes fail (Firestore unavailable), by their fields.
        self.failing: Callable[[dict[str, Any]], bool] | None = None

    def add(self, notice: dict[str, Any]) -> dict[str, Any]:
        self.docs[notice["id"]] = dict(notice)
        self.versions[notice["id"]] = 1
        return notice

    def notices_as_read(self, ids: list[str]) -> list[tuple[dict[str, Any], Any]]:
        self.reads += len(ids)
        return [(dict(self.docs[i]), self.versions[i]) for i in ids if i in self.docs]

    def due_notices(self, now: datetime, limit: int) -> list[tuple[dict[str, Any], Any]]:
        return [
            (dict(n), self.versions[i])
            for i, n in self.docs.items()
            if n["state"] in ("pending", "sending") and n["due_at"] <= now
        ]

    def claim(self, notice: dict[str, Any], update_time: Any, now: datetime, lease: timedelta) -> Any:
        if self.versions[notice["id"]] != update_time:
            return None
        self.finish(notice["id"], {"state": "sending", "due_at": now + lease})
        return self.versions[notice["id"]]

    def finish(self, notice_id: str, fields: dict[str, Any], *, episode: Any = None) -> None:
        """The notice's end and what its episode remembers: one atomic write (both or neither)."""
        if self.failing is not None and self.failing(fields):
            raise RuntimeError("Firestore unavailable")
        self.docs[notice_id].update(fields)
        self.versions[notice_id] += 1
        if episode is not None:
            self.episodes.setdefault(episode[0], {}).update(episode[1])

    def finish_all(self, finished: list[tuple[str, dict[str, Any], Any]]) -> None:
        for notice_id, fields, episode in finished:
            self.finish(notice_id, fields, episode=episode)


@pytest.fixture
def outbox(world: World, monkeypatch: pytest.MonkeyPatch) -> Outbox:  # noqa: F811
    box = Outbox(world.store.episodes)
    for name in ("notices_as_read", "due_notices", "claim", "finish", "finish_all"):
        monkeypatch.setattr(episode_store, name, getattr(box, name))
    monkeypatch.setattr(world.slack.module, "client", lambda: object(), raising=False)  # a token is set
    return box


def critical(agent: str = "agent-1") -> dict[str, Any]:
    return opening(agent, rule=domain.SECURITY, severity=Severity.CRITICAL)


def send_now(raised: Any, *, by: str) -> notifier.Flushed:
    """What the raising function hands over (``notifier.send_now``), delivered as fleet-actions delivers it."""
    return notifier.deliver(domain.at_once(raised), by=by)


def committed(notice: dict[str, Any]) -> domain.EpisodeWrite:
    """The write a function committed with ``notice`` (what it hands to ``send_now``)."""
    return domain.EpisodeWrite(notice["episode_id"], {}, notice)


def test_a_critical_notice_is_sent_by_the_raising_function_and_never_again_by_the_minute_job(
    world: World,  # noqa: F811
    outbox: Outbox,
) -> None:
    notice = outbox.add(critical())
    out = send_now([committed(notice)], by="fleet-heartbeats")
    assert (out.sent, out.slack_calls) == (1, 1)
    assert [c["channel"] for c in world.slack.calls] == ["#fleet-oncall"]
    assert outbox.docs[notice["id"]]["state"] == "sent"
    assert outbox.docs[notice["id"]]["sent_by"] == "at_once:fleet-heartbeats"
    flushed = notifier.flush(NOW + timedelta(minutes=5))  # the minute job, long after any lease
    assert (flushed.sent, flushed.slack_calls) == (0, 0)
    assert len(world.slack.calls) == 1


def test_a_warning_waits_for_the_minute_job(world: World, outbox: Outbox) -> None:  # noqa: F811
    notice = outbox.add(opening(severity=Severity.WARNING))
    out = send_now([committed(notice)], by="fleet-heartbeats")
    assert (out.sent, outbox.reads, world.slack.calls) == (0, 0, [])  # not even read
    assert outbox.docs[notice["id"]]["state"] == "pending"
    notifier.flush(NOW)
    assert outbox.docs[notice["id"]]["state"] == "sent"
    assert outbox.docs[notice["id"]]["sent_by"] == notifier.MINUTE_JOB


def test_a_cost_alert_is_sent_at_once_under_its_opening_id(world: World, outbox: Outbox) -> None:  # noqa: F811
    raised = alert(Severity.CRITICAL)
    config = AlertingConfig()
    write = domain.new_episode(
        raised.id, rule=raised.kind, severity=raised.severity, tenant="acme", agent_id="agent-1", at=T0,
        summary="loop", config=config, due_at=T0 + timedelta(seconds=config.group_wait_s),
    )  # fmt: skip
    assert write.notice is not None
    outbox.add(write.notice)
    assert send_now([raised], by="fleet-costs").sent == 1
    assert outbox.docs[write.notice["id"]]["sent_by"] == "at_once:fleet-costs"


def test_of_two_instances_one_sends(world: World, outbox: Outbox) -> None:  # noqa: F811
    notice = outbox.add(critical())
    first = send_now([committed(notice)], by="fleet-heartbeats")
    second = send_now([committed(notice)], by="fleet-heartbeats")  # a redelivery, another instance
    assert (first.sent, second.sent, second.lost_claims) == (1, 0, 1)
    assert len(world.slack.calls) == 1


def test_a_claim_lost_to_the_minute_job_sends_nothing(
    world: World,  # noqa: F811
    outbox: Outbox,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    notice = outbox.add(critical())
    as_read = outbox.notices_as_read([notice["id"]])
    outbox.claim(notice, outbox.versions[notice["id"]], NOW, notifier.LEASE)  # the minute job took it meanwhile
    monkeypatch.setattr(episode_store, "notices_as_read", lambda ids: as_read)
    out = send_now([committed(notice)], by="fleet-costs")
    assert (out.sent, out.lost_claims, world.slack.calls) == (0, 1, [])


def test_slack_down_leaves_the_notice_to_the_minute_job(world: World, outbox: Outbox) -> None:  # noqa: F811
    notice = outbox.add(critical())
    world.slack.fail = lambda call: world.unavailable(retry_after=5)
    out = send_now([committed(notice)], by="fleet-costs")  # does not raise
    assert out.deferred == 1 and outbox.docs[notice["id"]]["state"] == "pending"
    world.slack.fail = lambda call: None
    retried_at = outbox.docs[notice["id"]]["due_at"]
    assert notifier.flush(retried_at).sent == 1
    assert outbox.docs[notice["id"]]["sent_by"] == notifier.MINUTE_JOB


def test_a_failing_store_never_fails_the_caller(
    world: World,  # noqa: F811
    outbox: Outbox,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    notice = outbox.add(critical())

    def unavailable(ids: list[str]) -> Any:
        raise RuntimeError("Firestore unavailable")

    monkeypatch.setattr(episode_store, "notices_as_read", unavailable)
    assert send_now([committed(notice)], by="fleet-costs").sent == 0
    assert outbox.docs[notice["id"]]["state"] == "pending"  # the minute job's
    assert notifier.flush(NOW).sent == 1


def test_a_silenced_critical_notice_is_recorded_not_sent(world: World, outbox: Outbox) -> None:  # noqa: F811
    now = datetime.now(UTC)  # send_now judges silences at the time it runs
    world.silences.append(a_silence(rule=domain.SECURITY, starts_at=now - timedelta(minutes=1), expires_at=now + HOUR))
    notice = outbox.add(critical())
    send_now([committed(notice)], by="fleet-heartbeats")
    assert world.slack.calls == []
    assert outbox.docs[notice["id"]]["state"] == "silenced"


def test_switched_off_the_minute_job_sends_it(
    world: World,  # noqa: F811
    outbox: Outbox,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    handed: list[Any] = []
    monkeypatch.setattr(handoff, "hand_over", lambda kind, **fields: handed.append(fields) or True)
    original = settings.get
    monkeypatch.setattr(settings, "get", lambda: types.SimpleNamespace(alerts_at_once=False))
    notice = outbox.add(critical())
    assert notifier.send_now([committed(notice)], by="fleet-costs") == 0 and handed == []
    assert world.slack.calls == [] and outbox.docs[notice["id"]]["state"] == "pending"
    monkeypatch.setattr(settings, "get", original)  # the minute job's own settings
    notifier.flush(NOW)
    assert outbox.docs[notice["id"]]["sent_by"] == notifier.MINUTE_JOB


def test_a_critical_escalation_replies_in_the_thread_of_its_sent_opening(
    world: World,  # noqa: F811
    outbox: Outbox,
) -> None:
    escalation = later(event="escalate")
    escalation = {**escalation, "severity": "critical", "event": "escalate-critical"}
    escalation["id"] = domain.notice_id(escalation["episode_id"], "escalate-critical")
    world.store.episodes[escalation["episode_id"]] = {"slack": {"channel": "C1", "ts": "9.000"}}
    outbox.add(escalation)
    assert send_now([committed(escalation)], by="fleet-sweep").sent == 1
    assert world.slack.methods() == ["update", "post"]
    assert world.slack.calls[1]["thread_ts"] == "9.000"


# --- the call sites hand over what they committed --------------------------------------------------


def test_the_cost_function_hands_the_alerts_it_opened_to_send_now(monkeypatch: pytest.MonkeyPatch) -> None:
    handed: list[tuple[list[Any], str]] = []
    monkeypatch.setattr(notifier, "send_now", lambda raised, by: handed.append((list(raised), by)))
    opened, already = alert(Severity.CRITICAL), alert(Severity.CRITICAL, "other")
    monkeypatch.setattr(episode_store, "raise_once", lambda a: a is opened)  # the other was raised before
    agent = types.SimpleNamespace(agent_id="agent-1")
    accounting.carry_out(agent, Effects(alerts=[opened, already]), now=T0)  # type: ignore[arg-type]
    assert handed == [([opened], "cost_rules")]


def test_a_function_without_the_slack_token_leaves_the_notice_to_the_minute_job(
    world: World,  # noqa: F811
    outbox: Outbox,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_token() -> Any:
        raise world.refused("not_configured")

    monkeypatch.setattr(world.slack.module, "client", no_token)
    notice = outbox.add(critical())
    assert send_now([committed(notice)], by="fleet-costs").sent == 0
    assert outbox.docs[notice["id"]]["state"] == "pending"  # not claimed, never marked failed
    assert outbox.reads == 0


def test_send_now_hands_the_critical_ids_over_and_nothing_else(monkeypatch: pytest.MonkeyPatch) -> None:
    handed: list[tuple[str, dict[str, Any]]] = []
    monkeypatch.setattr(handoff, "hand_over", lambda kind, **fields: handed.append((kind, fields)) or True)
    monkeypatch.setenv("K_SERVICE", "fleet-api")  # Cloud Run names the running function
    notice = critical()
    warning = opening("agent-2", rule=domain.SECURITY, severity=Severity.WARNING)
    assert notifier.send_now([committed(notice), committed(warning)], by="budget_change") == 1
    # The function it runs in (sent_by), and the code path that raised it (raised_by).
    assert handed == [(handoff.ALERTS_NOW, {"ids": [notice["id"]], "by": "fleet-api", "raised_by": "budget_change"})]
    assert notifier.send_now([committed(warning)], by="budget_change") == 0 and len(handed) == 1


def test_the_running_function_is_cloud_runs_service_or_the_local_stacks_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("K_SERVICE", raising=False)
    monkeypatch.delenv("FLEET_FUNCTION", raising=False)
    assert notifier.function_name() == "unknown"
    monkeypatch.setenv("FLEET_FUNCTION", "fleet-slack")  # emulators/stack.py, per function
    assert notifier.function_name() == "fleet-slack"
    monkeypatch.setenv("K_SERVICE", "fleet-costs")
    assert notifier.function_name() == "fleet-costs"


def test_a_failed_hand_over_leaves_the_notice_to_the_minute_job(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(handoff, "hand_over", lambda kind, **fields: False)  # logged by hand_over itself
    assert notifier.send_now([committed(critical())], by="fleet-costs") == 0


def test_fleet_actions_delivers_handed_notices_once(
    world: World,  # noqa: F811
    outbox: Outbox,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rejected: list[Any] = []
    monkeypatch.setattr(fleet_actions.handlers, "record_rejection", lambda *args: rejected.append(args))
    notice = outbox.add(critical())
    handed = {"kind": handoff.ALERTS_NOW, "ids": [notice["id"]], "by": "fleet-costs", "raised_by": "lease_exceeded"}
    message = PushedMessage(
        message_id="m-1", published_at=datetime.now(UTC), raw=json.dumps(handed).encode(), attributes={}
    )
    assert fleet_actions.handle(message) == "done"
    finished = outbox.docs[notice["id"]]
    assert (finished["state"], finished["sent_by"], finished["raised_by"]) == (
        "sent",
        "at_once:fleet-costs",
        "lease_exceeded",
    )
    assert fleet_actions.handle(message) == "nothing_to_do"  # a redelivery: claimed already, sent once
    bad = PushedMessage(message_id="m-2", published_at=datetime.now(UTC), raw=b'{"kind":"alerts.now","ids":[]}',
                        attributes={})  # fmt: skip
    assert fleet_actions.handle(bad) == "malformed" and len(rejected) == 1


def test_the_minute_jobs_own_late_notices_are_sent_in_the_same_tick_once(world: World, outbox: Outbox) -> None:  # noqa: F811
    # A fleet_health opening written after the flush (high: not an at-once severity, but due now).
    notice = outbox.add(opening("agent-1", rule="fleet_health", severity=Severity.HIGH))
    out = notifier.send_due([notice["id"]])
    assert out.sent == 1 and world.slack.methods() == ["post"]
    assert (outbox.docs[notice["id"]]["state"], outbox.docs[notice["id"]]["sent_by"]) == ("sent", notifier.MINUTE_JOB)
    assert "raised_by" not in outbox.docs[notice["id"]]
    assert notifier.send_due([notice["id"]]).sent == 0 and notifier.flush(NOW).sent == 0  # never twice
    assert len(world.slack.calls) == 1


def test_a_heartbeat_whose_security_score_quarantines_the_agent_hands_the_opening_over(
    store: dict[str, Any],  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """N10: the heartbeat call site itself (fleet-heartbeats also reaches send_now through forged_events,
    so the derived raisers test would not notice its removal)."""
    key = AgentKey.generate()
    low = {"health": {"score": 30.0, "score_at": IDENTITY_NOW.isoformat()}}
    store["agent"] = signed_agent(key).model_copy(update=low)
    monkeypatch.setattr(config_store, "rules", lambda name: (HealthConfig(), AlertingConfig()))
    monkeypatch.setattr(config_store, "remediation", lambda name: RemediationPolicy())  # the defaults
    published: list[Any] = []
    monkeypatch.setattr(handlers.agent_commands, "publish", published.extend)
    handed: list[tuple[str, dict[str, Any]]] = []
    monkeypatch.setattr(handoff, "hand_over", lambda kind, **fields: handed.append((kind, fields)) or True)
    monkeypatch.setenv("K_SERVICE", "fleet-heartbeats")
    beat = Heartbeat(agent_id="chat-1", seq=6, sent_at=IDENTITY_NOW, status="busy",
                     metrics={"cpu_pct": 10.0, "error_rate": 0.5})  # fmt: skip
    plan = handlers.process_heartbeat(signed(beat, key))  # score 30 - 15 (error_rate): quarantined
    assert plan.changes["status_hold"] == "quarantine" and [c.command.value for c in published] == ["quarantine"]
    security = [w.notice["id"] for w in plan.episodes if w.notice and w.fields.get("rule") == domain.SECURITY]
    assert security == ["a.chat-1.security.2.open"]
    # Only the critical opening (not the error_rate warning), with the function and the code path.
    fields = {"ids": security, "by": "fleet-heartbeats", "raised_by": "heartbeat_rules"}
    assert handed == [(handoff.ALERTS_NOW, fields)]
