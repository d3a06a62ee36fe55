"""Delivery of a notice exactly right (issue 21, review items 4 and 9), against the stateful fake outbox of
tests/unit/test_notifier_at_once.py: a notice is finished in one atomic write with its episode's message
(shared/store/episodes.py ``finish``), so a failed finishing write costs at most one repeated post, never
a lost notice; and a critical escalation whose warning opening still waits for its group sends that
opening first, then itself in its thread (shared/services/notice_sender.py)."""

from __future__ import annotations

import types
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from shared.domain import episodes as domain
from shared.domain.episodes import Severity
from shared.platform import metering
from shared.services import notifier
from shared.store import episodes as episode_store
from tests.unit.test_notifier import World, later, opening, world  # noqa: F401
from tests.unit.test_notifier_at_once import Outbox, committed, critical, outbox, send_now  # noqa: F401

SECOND = timedelta(seconds=1)


def after_the_lease() -> datetime:
    """When the minute job may take a notice an immediate send claimed just now."""
    return datetime.now(UTC) + notifier.LEASE + SECOND


# --- item 4: finishing a notice and remembering its message are one write ----------------------------


def test_a_failed_finishing_write_after_the_post_costs_one_repeat_at_most_and_loses_nothing(
    world: World,  # noqa: F811
    outbox: Outbox,  # noqa: F811
) -> None:
    notice = outbox.add(critical())
    failures = iter([True])  # the first finishing write fails (Firestore unavailable), later ones succeed
    outbox.failing = lambda fields: fields.get("state") == "sent" and next(failures, False)

    out = send_now([committed(notice)], by="fleet-costs")  # posts, then fails to finish: logged, not raised
    assert (len(world.slack.calls), out.sent) == (1, 0)
    assert outbox.docs[notice["id"]]["state"] == "sending"  # still the outbox's
    assert "slack" not in world.store.episodes.get(notice["episode_id"], {})  # neither write happened

    assert notifier.flush(datetime.now(UTC)).slack_calls == 0  # within its lease, no one takes it
    assert notifier.flush(after_the_lease()).sent == 1  # the safety net posts it again: once
    assert len(world.slack.calls) == 2
    finished = outbox.docs[notice["id"]]
    assert (finished["state"], finished["sent_by"]) == ("sent", notifier.MINUTE_JOB)
    # The episode knows the message that was recorded, so its later events reply in that one thread.
    assert world.store.episodes[notice["episode_id"]]["slack"]["ts"] == finished["ts"] == "2.000"

    assert notifier.flush(after_the_lease() + timedelta(hours=1)).slack_calls == 0  # and never a third time
    assert len(world.slack.calls) == 2


@pytest.mark.parametrize("first", ["at_once", "minute_job"])
def test_a_posted_and_finished_notice_is_never_sent_again(
    world: World,  # noqa: F811
    outbox: Outbox,  # noqa: F811
    first: str,
) -> None:
    notice = outbox.add(critical())
    if first == "at_once":
        assert send_now([committed(notice)], by="fleet-costs").sent == 1
    else:
        assert notifier.flush(datetime.now(UTC)).sent == 1
    [post] = world.slack.calls
    assert world.store.episodes[notice["episode_id"]]["slack"] == {"channel": "C-fleet-oncall", "ts": "1.000"}
    for later_run in (after_the_lease(), after_the_lease() + timedelta(days=1)):
        assert notifier.flush(later_run).slack_calls == 0
    assert send_now([committed(notice)], by="fleet-costs").slack_calls == 0  # a redelivered hand-over
    assert world.slack.calls == [post]


class Batches:
    """``db`` of shared/store/episodes.py with write batches: what each commit held."""

    def __init__(self) -> None:
        self.commits: list[list[tuple[str, str, dict[str, Any], dict[str, Any]]]] = []

    def client(self) -> Any:
        commits = self.commits

        class Batch:
            def __init__(self) -> None:
                self.writes: list[tuple[str, str, dict[str, Any], dict[str, Any]]] = []

            def update(self, ref: Any, fields: dict[str, Any]) -> None:
                self.writes.append(("update", ref.path, fields, {}))

            def set(self, ref: Any, fields: dict[str, Any], **options: Any) -> None:
                self.writes.append(("set", ref.path, fields, options))

            def commit(self, **_: Any) -> None:
                commits.append(self.writes)

        def document(collection: str, key: str) -> Any:
            return types.SimpleNamespace(path=f"{collection}/{key}")

        return types.SimpleNamespace(
            batch=Batch,
            collection=lambda name: types.SimpleNamespace(document=lambda key: document(name, key)),
        )

    def call_options(self) -> dict[str, Any]:
        return {}

    def doc_id(self, key: str) -> str:
        return key


def test_the_store_finishes_a_notice_and_its_episode_in_one_commit_notice_first(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake = Batches()
    monkeypatch.setattr(episode_store, "db", fake)
    with metering.metered() as meter:
        episode_store.finish("e.open", {"state": "sent"}, episode=("e", {"slack": {"ts": "1.0"}}))
    assert fake.commits == [
        [
            ("update", "notifications/e.open", {"state": "sent"}, {}),
            ("set", "episodes/e", {"slack": {"ts": "1.0"}}, {"merge": True}),
        ]
    ]
    assert meter.writes == 2  # documents written: as before, in one commit instead of two


def test_a_large_group_is_finished_in_as_few_batches_as_firestore_allows_never_splitting_a_notice(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake = Batches()
    monkeypatch.setattr(episode_store, "db", fake)
    finished = [(f"e{i}.open", {"state": "sent"}, (f"e{i}", {"slack": {"ts": "1.0"}})) for i in range(300)]
    with metering.metered() as meter:
        episode_store.finish_all(finished)  # type: ignore[arg-type]
    assert [len(c) for c in fake.commits] == [500, 100]
    for commit in fake.commits:
        notices = [path.split("/")[1].removesuffix(".open") for kind, path, *_ in commit if kind == "update"]
        episodes = [path.split("/")[1] for kind, path, *_ in commit if kind == "set"]
        assert notices == episodes  # each notice with its own episode
    assert meter.writes == 600


# --- item 9: a critical escalation does not wait behind its pending warning opening --------------


def escalation_to(severity: Severity) -> dict[str, Any]:
    """The escalation of the episode ``opening()`` opened (a warning) to ``severity``."""
    notice = {**later(event="escalate"), "severity": severity.value, "event": f"escalate-{severity.value}"}
    notice["id"] = domain.notice_id(notice["episode_id"], notice["event"])
    return notice


def waiting_opening(box: Outbox) -> dict[str, Any]:
    """The warning opening, still in its group wait (pending, due in 30 s)."""
    notice = opening()
    return box.add({**notice, "due_at": datetime.now(UTC) + timedelta(seconds=30)})


def test_a_critical_escalation_sends_its_waiting_opening_first_then_replies_in_its_thread(
    world: World,  # noqa: F811
    outbox: Outbox,  # noqa: F811
) -> None:
    first = waiting_opening(outbox)
    escalation = outbox.add(escalation_to(Severity.CRITICAL))
    out = send_now([committed(escalation)], by="fleet-heartbeats")

    assert world.slack.methods() == ["post", "update", "post"]  # the opening, rewritten, the escalation
    posted, rewritten, reply = world.slack.calls
    assert posted["thread_ts"] is None and "agent-1" in posted["text"]
    assert rewritten["ts"] == reply["thread_ts"] == "1.000"
    assert (out.sent, out.deferred) == (2, 0)
    for notice in (first, escalation):
        assert outbox.docs[notice["id"]]["state"] == "sent"
        assert outbox.docs[notice["id"]]["sent_by"] == "at_once:fleet-heartbeats"
    assert notifier.flush(after_the_lease()).slack_calls == 0  # the minute job sends neither again


def test_an_escalation_below_critical_still_waits_for_its_opening(world: World, outbox: Outbox) -> None:  # noqa: F811
    first = waiting_opening(outbox)
    escalation = outbox.add({**escalation_to(Severity.HIGH), "due_at": datetime.now(UTC)})
    out = notifier.flush(datetime.now(UTC) + SECOND)
    assert (world.slack.calls, out.deferred) == ([], 1)
    assert outbox.docs[first["id"]]["state"] == "pending"
    assert outbox.docs[escalation["id"]]["state"] == "pending"


def test_an_opening_being_sent_by_another_run_is_not_sent_twice(world: World, outbox: Outbox) -> None:  # noqa: F811
    first = waiting_opening(outbox)
    outbox.claim(first, outbox.versions[first["id"]], datetime.now(UTC), notifier.LEASE)  # the minute job has it
    escalation = outbox.add(escalation_to(Severity.CRITICAL))
    out = send_now([committed(escalation)], by="fleet-heartbeats")
    assert (world.slack.calls, out.deferred) == ([], 1)  # the escalation waits for that run's opening
    assert outbox.docs[escalation["id"]]["state"] == "pending"


def test_slack_down_while_sending_the_opening_leaves_both_to_the_minute_job(
    world: World,  # noqa: F811
    outbox: Outbox,  # noqa: F811
) -> None:
    first = waiting_opening(outbox)
    escalation = outbox.add(escalation_to(Severity.CRITICAL))
    world.slack.fail = lambda call: world.unavailable(retry_after=5)
    out = send_now([committed(escalation)], by="fleet-heartbeats")
    assert out.deferred == 2
    assert {outbox.docs[n["id"]]["state"] for n in (first, escalation)} == {"pending"}  # neither left "sending"
    world.slack.fail = lambda call: None
    assert notifier.flush(after_the_lease()).sent == 2
    assert world.slack.methods()[1:] == ["post", "update", "post"]  # the opening first, then the escalation


def test_the_minute_job_too_sends_a_critical_escalations_waiting_opening_first(
    world: World,  # noqa: F811
    outbox: Outbox,  # noqa: F811
) -> None:
    """The sweep's own escalations (an agent frozen) are sent by its flush, not handed over."""
    first = waiting_opening(outbox)
    escalation = outbox.add({**escalation_to(Severity.CRITICAL), "due_at": datetime.now(UTC)})
    out = notifier.flush(datetime.now(UTC) + SECOND)  # the opening is not due yet: not in the batch
    assert world.slack.methods() == ["post", "update", "post"]
    assert world.slack.calls[1]["ts"] == world.slack.calls[2]["thread_ts"] == "1.000"  # in the opening's thread
    assert (out.sent, out.deferred) == (2, 0)
    assert {outbox.docs[n["id"]]["sent_by"] for n in (first, escalation)} == {notifier.MINUTE_JOB}
