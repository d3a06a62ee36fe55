"""The Slack outbox (shared/services/notifier.py) against fakes, and the messages (shared/domain/notices.py)."""

from __future__ import annotations

import importlib
import sys
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

import shared.slack
from shared.domain import episodes as domain
from shared.domain import notices as render
from shared.domain.episodes import AgentEpisodes, AlertingConfig, Severity
from shared.domain.silences import Silence
from shared.services import notifier
from shared.store import config as config_store
from shared.store import episodes as episode_store
from shared.store import silences as silence_store

T0 = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
NOW = T0 + timedelta(minutes=1)
ROOT = "t.acme.fleet_offline.1"


# --- notices to send --------------------------------------------------------------------------------


def opening(
    agent: str = "agent-1", rule: str = domain.ERROR_RATE, tenant: str = "acme", severity: Severity = Severity.WARNING
) -> dict[str, Any]:
    eps = AgentEpisodes(agent, tenant, {}, 0, AlertingConfig())
    eps.open_(rule, severity, T0, f"{agent}: {rule} summary", wait=False)
    notice = eps.writes[0].notice
    assert notice is not None
    return notice


def episode_id(agent: str = "agent-1", rule: str = domain.ERROR_RATE) -> str:
    return f"a.{agent}.{rule}.1"


def later(agent: str = "agent-1", rule: str = domain.ERROR_RATE, tenant: str = "acme", event: str = "resolve") -> dict:
    """A resolution (or escalation, or reminder) of the episode ``opening`` opened."""
    index = {rule: {"id": episode_id(agent, rule), "severity": "warning", "opened_at": T0.isoformat()}}
    eps = AgentEpisodes(agent, tenant, index, 1, AlertingConfig())
    if event == "resolve":
        eps.resolve(rule, T0 + timedelta(seconds=30), f"{agent}: back to normal")
        notice = eps.writes[0].notice
    elif event == "escalate":
        eps.escalate(rule, Severity.HIGH, T0 + timedelta(seconds=30), f"{agent}: worse")
        notice = eps.writes[0].notice
    else:
        episode = {**index[rule], "rule": rule, "tenant": tenant, "agent_id": agent, "title": "T", "repeats": 0}
        notice = domain.reminder(episode, T0 + timedelta(seconds=30), AlertingConfig()).notice
    assert notice is not None
    return notice


# --- fakes ------------------------------------------------------------------------------------------


class FakeStore:
    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []
        self.lost: set[str] = set()
        self.claimed: list[str] = []
        self.finished: dict[str, list[dict[str, Any]]] = {}
        self.episodes: dict[str, dict[str, Any]] = {}
        #: What episodes remembered, each written with its notice's end (``finish``).
        self.set: list[tuple[str, dict[str, Any]]] = []
        self.tenants: dict[str, dict[str, Any]] = {}
        self.tenant_reads: list[str] = []
        self.due_episodes: dict[str, list[dict[str, Any]]] = {"next_repeat_at": [], "resolve_at": []}
        self.conditional_ok = True
        self.conditionals: list[domain.EpisodeWrite] = []
        #: Stored notices (notices_as_read): an opening still pending holds its episode's later events back.
        self.notices: dict[str, dict[str, Any]] = {}

    def due_notices(self, now: datetime, limit: int) -> list[tuple[dict[str, Any], Any]]:
        return [(n, f"ut-{n['id']}") for n in self.rows]

    def claim(self, notice: dict[str, Any], update_time: Any, now: datetime, lease: timedelta) -> Any:
        assert update_time == f"ut-{notice['id']}"
        if notice["id"] in self.lost:
            return None
        self.claimed.append(notice["id"])
        return "claimed"

    def finish(self, notice_id: str, fields: dict[str, Any], *, episode: Any = None) -> None:
        """The notice's end and what its episode remembers (``set``): one atomic write, as in the store."""
        self.finished.setdefault(notice_id, []).append(fields)
        if episode is not None:
            self.set.append(episode)

    def finish_all(self, finished: list[tuple[str, dict[str, Any], Any]]) -> None:
        for notice_id, fields, episode in finished:
            self.finish(notice_id, fields, episode=episode)

    def notices_as_read(self, ids: list[str]) -> list[tuple[dict[str, Any], Any]]:
        return [(self.notices[i], f"ut-{i}") for i in ids if i in self.notices]

    def get_many(self, ids: list[str]) -> dict[str, dict[str, Any]]:
        return {i: self.episodes[i] for i in ids if i in self.episodes}

    def tenant_state(self, tenant: str) -> tuple[dict[str, Any], Any]:
        self.tenant_reads.append(tenant)
        return self.tenants.get(tenant, {}), None

    def due(self, field: str, now: datetime, limit: int) -> list[tuple[dict[str, Any], Any]]:
        return [(e, "ut") for e in self.due_episodes[field]]

    def conditional(self, episode: dict[str, Any], update_time: Any, write: domain.EpisodeWrite) -> bool:
        self.conditionals.append(write)
        return self.conditional_ok

    def state(self, notice: dict[str, Any]) -> str | None:
        done = self.finished.get(notice["id"])
        return done[-1]["state"] if done else None


@dataclass(frozen=True)
class Posted:
    channel: str
    ts: str


class FakeSlack:
    def __init__(self, module: types.ModuleType) -> None:
        self.module = module
        self.calls: list[dict[str, Any]] = []
        self.fail: Callable[[dict[str, Any]], Exception | None] = lambda call: None

    def post(self, channel: str, text: str, blocks: Any = None, thread_ts: str | None = None) -> Any:
        call = {"method": "post", "channel": channel, "text": text, "blocks": blocks, "thread_ts": thread_ts}
        self._record(call)
        return self.module.Posted(channel=f"C-{channel.lstrip('#')}", ts=f"{len(self.calls)}.000")

    def update(self, channel: str, ts: str, text: str, blocks: Any = None) -> None:
        self._record({"method": "update", "channel": channel, "ts": ts, "text": text, "blocks": blocks})

    def _record(self, call: dict[str, Any]) -> None:
        self.calls.append(call)
        error = self.fail(call)
        if error is not None:
            raise error

    def methods(self) -> list[str]:
        return [c["method"] for c in self.calls]


class FakeRef:
    def __init__(self, docs: dict[str, dict[str, Any]], key: str) -> None:
        self.docs, self.key = docs, key

    def set(self, data: dict[str, Any], **_: Any) -> None:
        self.docs[self.key] = dict(data)

    def update(self, data: dict[str, Any], **_: Any) -> Any:
        self.docs[self.key] = {**self.docs[self.key], **data}
        return types.SimpleNamespace(update_time="ut")  # what Firestore answers: a write result


class FakeSnapshot:
    def __init__(self, data: dict[str, Any] | None) -> None:
        self.exists, self._data, self.update_time = data is not None, data, "ut"

    def to_dict(self) -> dict[str, Any] | None:
        return self._data


class FakeDB:
    """The few ``shared.store.db`` calls the grouped-message documents need (shared/store/episodes.py)."""

    def __init__(self) -> None:
        self.docs: dict[str, dict[str, Any]] = {}

    def client(self) -> Any:
        docs = self.docs

        class Client:
            def collection(self, name: str) -> Any:
                return types.SimpleNamespace(document=lambda key: FakeRef(docs, f"{name}/{key}"))

            def write_option(self, **_: Any) -> None:
                return None

        return Client()

    def doc_id(self, key: str) -> str:
        return key

    def call_options(self) -> dict[str, Any]:
        return {}

    def count(self, **_: int) -> None:
        return None

    def get(self, ref: FakeRef) -> FakeSnapshot:
        return FakeSnapshot(ref.docs.get(ref.key))

    def unless_changed(self, write: Callable[[], Any], **_: Any) -> Any:
        return write()

    def is_conflict(self, exc: BaseException) -> bool:
        return False


def slack_module() -> types.ModuleType:
    """shared.slack.web_api if it exists, else a stand-in with the agreed interface."""
    try:
        real = importlib.import_module("shared.slack.web_api")
    except ImportError:
        real = None
    module = types.ModuleType("shared.slack.web_api")

    class SlackUnavailable(Exception):
        def __init__(self, message: str = "slack unavailable", retry_after: float | None = None) -> None:
            super().__init__(message)
            self.retry_after = retry_after

    class SlackRefused(Exception):
        def __init__(self, error: str) -> None:
            super().__init__(error)
            self.error = error

    module.SlackUnavailable = getattr(real, "SlackUnavailable", SlackUnavailable)  # type: ignore[attr-defined]
    module.SlackRefused = getattr(real, "SlackRefused", SlackRefused)  # type: ignore[attr-defined]
    module.Posted = getattr(real, "Posted", Posted)  # type: ignore[attr-defined]
    return module


@dataclass
class World:
    store: FakeStore
    slack: FakeSlack
    db: FakeDB
    silences: list[Silence]
    configs: dict[str, AlertingConfig]

    def flush(self, *notices: dict[str, Any]) -> notifier.Flushed:
        self.store.rows = list(notices)
        return notifier.flush(NOW)

    def unavailable(self, retry_after: float | None = None) -> Exception:
        return self.slack.module.SlackUnavailable("down", retry_after=retry_after)

    def refused(self, error: str) -> Exception:
        return self.slack.module.SlackRefused(error)


@pytest.fixture
def world(monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    store = FakeStore()
    for name in (
        "due",
        "due_notices",
        "claim",
        "finish",
        "finish_all",
        "get_many",
        "tenant_state",
        "conditional",
        "notices_as_read",
    ):
        monkeypatch.setattr(episode_store, name, getattr(store, name))
    silences: list[Silence] = []
    monkeypatch.setattr(silence_store, "active", lambda now: list(silences))
    configs: dict[str, AlertingConfig] = {}
    monkeypatch.setattr(config_store, "alerting", lambda tenant: configs.get(tenant, AlertingConfig()))
    module = slack_module()
    fake = FakeSlack(module)
    module.post = fake.post  # type: ignore[attr-defined]
    module.update = fake.update  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "shared.slack.web_api", module)
    monkeypatch.setattr(shared.slack, "web_api", module, raising=False)
    db = FakeDB()
    monkeypatch.setattr(episode_store, "db", db)
    yield World(store, fake, db, silences, configs)


def a_silence(**kw: Any) -> Silence:
    data: dict[str, Any] = {
        "id": "sil-1",
        "tenant": "acme",
        "reason": "deploy",
        "created_by": "ann",
        "created_at": T0,
        "starts_at": T0,
        "expires_at": T0 + timedelta(hours=1),
    }
    return Silence.model_validate({**data, **kw})


# --- sending once ---------------------------------------------------------------------------------


def test_each_claimed_notice_is_sent_once(world: World) -> None:
    first, second = opening("agent-1"), opening("agent-2", rule=domain.EGRESS, severity=Severity.HIGH)
    out = world.flush(first, second)
    assert world.slack.methods() == ["post", "post"]
    assert [c["channel"] for c in world.slack.calls] == ["#fleet-alerts", "#fleet-alerts"]
    for notice in (first, second):
        [done] = world.store.finished[notice["id"]]
        assert done["state"] == "sent" and done["done_at"] == NOW
    assert (out.sent, out.slack_calls, out.failed, out.deferred) == (2, 2, 0, 0)


def test_a_sent_opening_remembers_where_its_message_is(world: World) -> None:
    world.flush(opening())
    assert world.store.set == [(episode_id(), {"slack": {"channel": "C-fleet-alerts", "ts": "1.000"}})]
    [done] = world.store.finished[opening()["id"]]
    assert (done["channel"], done["ts"]) == ("C-fleet-alerts", "1.000")


def test_an_opening_is_routed_by_severity(world: World) -> None:
    world.flush(opening(rule=domain.SECURITY, severity=Severity.CRITICAL))
    assert world.slack.calls[0]["channel"] == "#fleet-oncall"


def test_an_opening_uses_the_tenant_channel(world: World) -> None:
    world.configs["acme"] = AlertingConfig(default_channel="#acme-alerts")
    world.flush(opening())
    assert world.slack.calls[0]["channel"] == "#acme-alerts"


def test_an_opening_message_is_rendered(world: World) -> None:
    notice = opening()
    world.flush(notice)
    text, blocks = render.opened(notice)
    assert world.slack.calls[0]["text"] == text and world.slack.calls[0]["blocks"] == blocks


def test_a_lost_claim_is_not_sent(world: World) -> None:
    mine, theirs = opening("agent-1"), opening("agent-2", rule=domain.EGRESS)
    world.store.lost.add(theirs["id"])
    out = world.flush(mine, theirs)
    assert out.lost_claims == 1 and out.sent == 1
    assert len(world.slack.calls) == 1 and "agent-1" in world.slack.calls[0]["text"]
    assert theirs["id"] not in world.store.finished


def test_nothing_claimed_calls_no_one(world: World) -> None:
    notice = opening()
    world.store.lost.add(notice["id"])
    out = world.flush(notice)
    assert world.slack.calls == [] and out.as_dict()["lost_claims"] == 1


def test_an_empty_outbox_sends_nothing(world: World) -> None:
    assert world.flush().sent == 0 and world.slack.calls == []


# --- grouping ---------------------------------------------------------------------------------------


def test_three_openings_of_one_rule_and_tenant_make_one_grouped_message(world: World) -> None:
    group = [opening(f"agent-{i}") for i in range(3)]
    out = world.flush(*group)
    [call] = world.slack.calls
    assert call["text"] == "High error rate: 3 agents of acme (warning), 3 open"
    assert (out.sent, out.grouped, out.slack_calls) == (1, 3, 1)
    group_id = "C-fleet-alerts.1.000"
    for notice in group:
        [done] = world.store.finished[notice["id"]]
        assert done["state"] == "sent" and done["group"] == group_id
    assert {e for e, _ in world.store.set} == {n["episode_id"] for n in group}
    assert all(f["slack"]["group"] == group_id for _, f in world.store.set)
    stored = world.db.docs[f"{episode_store.GROUPS}/{group_id}"]
    assert stored["notices"] == group and stored["states"] == {}


def test_two_openings_are_sent_one_by_one(world: World) -> None:
    out = world.flush(opening("agent-1"), opening("agent-2"))
    assert world.slack.methods() == ["post", "post"] and out.grouped == 0


def test_openings_of_other_tenants_or_rules_are_not_grouped(world: World) -> None:
    notices = [opening("a1"), opening("a2"), opening("a3", tenant="globex"), opening("a4", rule=domain.EGRESS)]
    out = world.flush(*notices)
    assert out.grouped == 0 and len(world.slack.calls) == 4


def test_a_tenant_group_minimum_applies(world: World) -> None:
    world.configs["acme"] = AlertingConfig(group_min=2)
    out = world.flush(opening("agent-1"), opening("agent-2"))
    assert out.grouped == 2 and len(world.slack.calls) == 1


# --- silences and root alerts ---------------------------------------------------------------------


def test_a_silenced_opening_is_not_sent(world: World) -> None:
    world.silences.append(a_silence(rule=domain.ERROR_RATE))
    notice = opening()
    out = world.flush(notice)
    assert world.slack.calls == []
    assert world.store.finished[notice["id"]] == [
        {"state": "silenced", "done_at": NOW, "sent_by": "minute_job", "silence": "sil-1"}
    ]
    assert world.store.set == [(notice["episode_id"], {"silenced": "sil-1"})]
    assert out.silenced == 1 and out.sent == 0


def test_a_silence_of_another_agent_does_not_hold_back(world: World) -> None:
    world.silences.append(a_silence(tenant=None, agent_id="agent-9"))
    assert world.flush(opening()).sent == 1


def test_resolution_of_a_silenced_opening_is_posted_as_a_new_message(world: World) -> None:
    world.silences.append(a_silence())  # still active: resolutions are sent anyway
    resolution = later()
    world.store.episodes[resolution["episode_id"]] = {"id": resolution["episode_id"], "silenced": "sil-1"}
    out = world.flush(resolution)
    [call] = world.slack.calls
    assert call["method"] == "post" and call["thread_ts"] is None
    assert "(its alerts were silenced)" in call["blocks"][0]["text"]["text"]
    assert world.store.state(resolution) == "sent" and out.sent == 1


def test_a_liveness_opening_under_an_open_root_alert_is_inhibited(world: World) -> None:
    world.store.tenants["acme"] = {"episodes": {domain.FLEET_OFFLINE: {"id": ROOT}}}
    notices = [opening(f"agent-{i}", rule=domain.LIVENESS) for i in range(4)]
    out = world.flush(*notices)
    assert world.slack.calls == []
    assert all(
        world.store.finished[n["id"]][-1]
        == {"state": "inhibited", "done_at": NOW, "sent_by": "minute_job", "root": ROOT}
        for n in notices
    )
    assert all(fields == {"inhibited_by": ROOT} for _, fields in world.store.set)
    assert out.inhibited == 4
    assert world.store.tenant_reads == ["acme"]  # read once per tenant and run


def test_a_liveness_escalation_under_a_root_alert_is_inhibited(world: World) -> None:
    world.store.tenants["acme"] = {"episodes": {domain.FLEET_OFFLINE: {"id": ROOT}}}
    notice = later(rule=domain.LIVENESS, event="escalate")
    assert world.flush(notice).inhibited == 1 and world.slack.calls == []


def test_other_rules_are_not_inhibited_by_a_root_alert(world: World) -> None:
    world.store.tenants["acme"] = {"episodes": {domain.FLEET_OFFLINE: {"id": ROOT}}}
    out = world.flush(opening(rule=domain.ERROR_RATE), opening("agent-2", rule=domain.LIVENESS, tenant="globex"))
    assert out.sent == 2 and out.inhibited == 0


def test_resolution_of_an_inhibited_episode_is_not_announced(world: World) -> None:
    resolution = later(rule=domain.LIVENESS)
    world.store.episodes[resolution["episode_id"]] = {"id": resolution["episode_id"], "inhibited_by": ROOT}
    out = world.flush(resolution)
    assert world.slack.calls == [] and out.inhibited == 1
    assert world.store.finished[resolution["id"]][-1]["state"] == "inhibited"


# --- resolutions, escalations, reminders ------------------------------------------------------------


def sent_episode(world: World, notice: dict[str, Any], **slack: str) -> None:
    ref = {"channel": "C1", "ts": "111.1", **slack}
    world.store.episodes[notice["episode_id"]] = {"id": notice["episode_id"], "slack": ref}


def test_a_resolution_edits_the_original_and_replies_in_its_thread(world: World) -> None:
    resolution = later()
    sent_episode(world, resolution)
    out = world.flush(resolution)
    text, blocks = render.resolved(resolution)
    assert world.slack.calls == [
        {"method": "update", "channel": "C1", "ts": "111.1", "text": text, "blocks": blocks},
        {"method": "post", "channel": "C1", "text": text, "blocks": blocks, "thread_ts": "111.1"},
    ]
    assert world.store.finished[resolution["id"]][-1]["state"] == "sent" and out.sent == 1


def test_a_resolution_of_a_grouped_episode_marks_it_in_the_grouped_message(world: World) -> None:
    group = [opening(f"agent-{i}") for i in range(3)]
    world.flush(*group)
    group_id = "C-fleet-alerts.1.000"
    resolution = later("agent-1")
    sent_episode(world, resolution, channel="C-fleet-alerts", ts="1.000", group=group_id)
    world.slack.calls.clear()
    world.flush(resolution)
    update, reply = world.slack.calls
    assert (update["method"], update["ts"]) == ("update", "1.000")
    assert "2 still open" in update["blocks"][0]["text"]["text"]
    assert "✅ `agent-1`" in update["blocks"][1]["text"]["text"]
    assert reply["thread_ts"] == "1.000"
    assert world.db.docs[f"{episode_store.GROUPS}/{group_id}"]["states"] == {episode_id("agent-1"): "resolved"}


def test_an_escalation_rewrites_the_original_and_replies_in_its_thread(world: World) -> None:
    escalation = later(event="escalate")
    sent_episode(world, escalation)
    world.flush(escalation)
    update, reply = world.slack.calls
    assert (update["method"], update["channel"], update["ts"]) == ("update", "C1", "111.1")
    assert "(high)" in update["text"]
    assert (reply["method"], reply["thread_ts"]) == ("post", "111.1")


def test_a_reminder_replies_in_the_thread(world: World) -> None:
    reminder = later(event="repeat")
    sent_episode(world, reminder)
    world.flush(reminder)
    [call] = world.slack.calls
    assert call["thread_ts"] == "111.1" and call["text"].startswith("Still open (reminder 1)")


def test_a_reminder_of_a_never_sent_episode_is_posted_as_an_opening(world: World) -> None:
    reminder = later(event="repeat")
    world.flush(reminder)
    [call] = world.slack.calls
    assert call["thread_ts"] is None and call["channel"] == "#fleet-alerts"
    assert world.store.set[-1][1]["slack"]["ts"] == call_ts(world)


def test_a_later_event_waits_while_its_opening_is_still_pending(world: World) -> None:
    reminder = later(event="repeat")
    world.store.notices[f"{reminder['episode_id']}.open"] = {"state": "pending", "due_at": NOW + timedelta(seconds=20)}
    out = world.flush(reminder)
    assert world.slack.calls == [] and out.deferred == 1
    assert world.store.finished[reminder["id"]] == [{"state": "pending", "due_at": NOW + timedelta(seconds=35)}]


def call_ts(world: World) -> str:
    return f"{len(world.slack.calls)}.000"


def test_an_opening_and_its_resolution_in_one_batch_end_resolved(world: World) -> None:
    first, resolution = opening(), later()
    world.flush(first, resolution)
    texts = [c["text"] for c in world.slack.calls]
    resolved = texts.index(render.resolved(resolution)[0])
    assert render.opened(first)[0] not in texts[resolved + 1 :]


# --- Slack failures -------------------------------------------------------------------------------


def test_slack_unavailable_defers_every_unsent_notice_and_stops(world: World) -> None:
    world.slack.fail = lambda call: world.unavailable(retry_after=7)
    notices = [opening("agent-1"), opening("agent-2", rule=domain.EGRESS), opening("agent-3", rule=domain.SATURATION)]
    out = world.flush(*notices)
    assert out.slack_calls == 1 and len(world.slack.calls) == 1
    for notice in notices:
        assert world.store.finished[notice["id"]] == [{"state": "pending", "due_at": NOW + timedelta(seconds=7)}]
    assert (out.deferred, out.sent, out.failed) == (3, 0, 0)


def test_slack_unavailable_keeps_what_was_already_sent(world: World) -> None:
    resolution = later("agent-0")
    sent_episode(world, resolution)
    world.slack.fail = lambda call: world.unavailable(retry_after=7) if "agent-2" in call["text"] else None
    first, second = opening("agent-1", rule=domain.EGRESS), opening("agent-2", rule=domain.SATURATION)
    out = world.flush(resolution, first, second)
    # Openings go first: the first was sent and stays sent; the rest (the resolution too) waits.
    assert world.store.state(first) == "sent"
    for waiting in (second, resolution):
        assert world.store.finished[waiting["id"]] == [{"state": "pending", "due_at": NOW + timedelta(seconds=7)}]
    assert out.deferred == 2


def test_slack_unavailable_without_retry_after_backs_off(world: World) -> None:
    world.slack.fail = lambda call: world.unavailable()
    first = opening()
    again = {**opening("agent-2", rule=domain.EGRESS), "attempts": 2}
    world.flush(first, again)
    assert world.store.finished[first["id"]][-1]["due_at"] == NOW + timedelta(seconds=15)
    assert world.store.finished[again["id"]][-1]["due_at"] == NOW + timedelta(seconds=60)


def test_slack_refused_marks_the_notice_failed_and_goes_on(world: World) -> None:
    world.slack.fail = lambda call: world.refused("channel_not_found") if "agent-1" in call["text"] else None
    bad, good = opening("agent-1"), opening("agent-2", rule=domain.EGRESS)
    out = world.flush(bad, good)
    assert world.store.finished[bad["id"]] == [
        {"state": "failed", "done_at": NOW, "sent_by": "minute_job", "error": "channel_not_found"}
    ]
    assert world.store.state(good) == "sent"
    assert (out.failed, out.sent, out.deferred) == (1, 1, 0)


def test_slack_refusing_a_grouped_message_fails_every_member(world: World) -> None:
    world.slack.fail = lambda call: world.refused("not_in_channel")
    group = [opening(f"agent-{i}") for i in range(3)]
    out = world.flush(*group)
    assert all(world.store.state(n) == "failed" for n in group) and out.failed == 3


def test_slack_refusing_a_resolution_marks_it_failed(world: World) -> None:
    resolution = later()
    sent_episode(world, resolution)
    world.slack.fail = lambda call: world.refused("message_not_found")
    assert world.flush(resolution).failed == 1
    assert world.store.state(resolution) == "failed"


# --- reminders and expired cost alerts (before the outbox) -------------------------------------------


def open_episode(severity: str = "warning") -> dict[str, Any]:
    eps = AgentEpisodes("agent-1", "acme", {}, 0, AlertingConfig())
    eps.open_(domain.ERROR_RATE, Severity(severity), T0 - timedelta(hours=4), "s")
    return eps.writes[0].fields


def test_due_reminders_are_written_with_their_notice(world: World) -> None:
    world.store.due_episodes["next_repeat_at"] = [open_episode()]
    out = world.flush()
    [write] = world.store.conditionals
    assert write.notice is not None and write.notice["id"] == "a.agent-1.error_rate.1.repeat-1"
    assert write.fields == {"repeats": 1, "next_repeat_at": T0 + timedelta(hours=4)}
    assert out.reminders == 1


def test_a_reminder_another_run_wrote_first_is_not_counted(world: World) -> None:
    world.store.due_episodes["next_repeat_at"] = [open_episode()]
    world.store.conditional_ok = False
    assert world.flush().reminders == 0


def test_an_expired_cost_alert_is_resolved(world: World) -> None:
    episode = {**open_episode(), "rule": "budget_threshold", "title": "Budget threshold", "resolve_at": T0}
    world.store.due_episodes["resolve_at"] = [episode]
    out = world.flush()
    [write] = world.store.conditionals
    assert write.fields["state"] == "resolved"
    assert write.notice is not None and write.notice["summary"] == "Budget threshold: the window ended"
    assert out.expired == 1


# --- messages (shared/domain/notices.py) -----------------------------------------------------------


def test_opened_message_says_what_where_and_how_bad() -> None:
    notice = opening(severity=Severity.HIGH, rule=domain.EGRESS)
    text, blocks = render.opened(notice)
    assert text == "🟠 High data egress (high): agent-1: egress summary"
    assert blocks[0]["text"]["text"] == "🟠 *High data egress* · high · `agent-1` (acme)\nagent-1: egress summary"
    assert blocks[1]["elements"][0]["text"] == "opened 2026-11-21 12:00 UTC · episode `a.agent-1.egress.1`"


def test_opened_message_of_a_tenant_episode_names_the_tenant() -> None:
    notice = {**opening(), "agent_id": None, "opened_at": T0.isoformat()}
    _, blocks = render.opened(notice)
    assert "tenant *acme*" in blocks[0]["text"]["text"]
    assert "opened 2026-11-21 12:00 UTC" in blocks[1]["elements"][0]["text"]


def test_resolved_message_is_marked() -> None:
    notice = later()
    text, blocks = render.resolved(notice)
    assert text == "✅ Resolved: High error rate: agent-1: back to normal"
    assert blocks[0]["text"]["text"].startswith("✅ *Resolved: High error rate* · `agent-1` (acme)")
    assert blocks[1]["elements"][0]["text"] == "opened 2026-11-21 12:00 UTC · resolved 2026-11-21 12:00 UTC"
    assert "silenced" not in blocks[0]["text"]["text"]


def test_resolved_message_of_a_silenced_episode_says_so() -> None:
    _, blocks = render.resolved(later(), silenced=True)
    assert "(its alerts were silenced)" in blocks[0]["text"]["text"]


def test_reminder_message_is_numbered() -> None:
    text, blocks = render.reminder({**later(event="repeat"), "event": "repeat-3", "summary": "still bad"})
    assert text == "Still open (reminder 3): T · still bad"
    assert blocks[0]["text"]["text"] == f"⏰ {text}"


def test_grouped_message_lists_at_most_25_agents_and_counts_the_rest() -> None:
    group = [opening(f"agent-{i:02d}") for i in range(30)]
    text, blocks = render.grouped(group)
    assert text == "High error rate: 30 agents of acme (warning), 30 open"
    lines = blocks[1]["text"]["text"].split("\n")
    assert len(lines) == 26 and lines[-1] == "… and 5 more"
    assert lines[0] == "• `agent-00`: agent-00: error_rate summary"
    assert "agent-25" not in blocks[1]["text"]["text"]
    assert blocks[0]["text"]["text"] == "⚠️ *High error rate: 30 agents of acme* · warning · 30 still open"


def test_grouped_message_of_25_has_no_more_line() -> None:
    _, blocks = render.grouped([opening(f"agent-{i:02d}") for i in range(25)])
    assert "more" not in blocks[1]["text"]["text"]


def test_grouped_message_marks_resolved_members() -> None:
    group = [opening(f"agent-{i}") for i in range(3)]
    text, blocks = render.grouped(group, {group[1]["episode_id"]: "resolved"})
    assert text.endswith("2 open")
    assert blocks[1]["text"]["text"].split("\n")[1].startswith("✅ `agent-1`")
    assert blocks[0]["text"]["text"].endswith("2 still open")


def test_grouped_message_all_resolved_is_marked_resolved() -> None:
    group = [opening(f"agent-{i}") for i in range(3)]
    _, blocks = render.grouped(group, {n["episode_id"]: "resolved" for n in group})
    assert blocks[0]["text"]["text"] == "✅ *Resolved: High error rate: 3 agents of acme*"


def test_message_sections_fit_slack_limits() -> None:
    notice = {**opening(), "summary": "x" * 5000}
    _, blocks = render.opened(notice)
    assert len(blocks[0]["text"]["text"]) == 2900
