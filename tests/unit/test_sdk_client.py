"""The agent SDK (sdk/fleet_agent/client.py) against a fake publisher: no emulator, no network."""

from __future__ import annotations

import json
import logging
import threading
import time
from concurrent.futures import Future
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fleet_agent import FleetAgent
from fleet_agent.contracts import (
    DEFAULT_TOPICS,
    SCHEMA_VERSION,
    Envelope,
    EventType,
    Heartbeat,
    JobProgress,
    Registration,
    ReportedStatus,
)
from pydantic import ValidationError


class FakePublisher:
    """Records every publish. ``auto_resolve=False`` leaves futures pending, as a slow network would."""

    def __init__(self, *, auto_resolve: bool = True, fail_first: int = 0, fail_with: Exception | None = None) -> None:
        self.auto_resolve = auto_resolve
        self.fail_first = fail_first
        #: Every future fails with this (the publish itself is accepted, as Pub/Sub's client does).
        self.fail_with = fail_with
        self.messages: list[tuple[str, bytes, dict[str, str]]] = []
        self.futures: list[Future[str]] = []
        self.lock = threading.Lock()
        self.stopped = False

    def topic_path(self, project: str, topic: str) -> str:
        return f"projects/{project}/topics/{topic}"

    def publish(self, topic: str, data: bytes, **attrs: Any) -> Future[str]:
        with self.lock:
            if self.fail_first > 0:
                self.fail_first -= 1
                raise RuntimeError("publisher unavailable")
            self.messages.append((topic, data, attrs))
            future: Future[str] = Future()
            self.futures.append(future)
            if self.fail_with is not None:
                future.set_exception(self.fail_with)
            elif self.auto_resolve:
                future.set_result(str(len(self.messages)))
            return future

    def resolve_all(self) -> None:
        for future in list(self.futures):
            if not future.done():
                future.set_result("ok")

    def stop(self) -> None:
        self.stopped = True

    def reports(self) -> list[JobProgress]:
        return [JobProgress.model_validate(json.loads(data)["data"]) for _, data, _ in self.messages]

    def heartbeats(self) -> list[Heartbeat]:
        with self.lock:
            return [
                Heartbeat.model_validate(json.loads(data)["data"])
                for _, data, attrs in self.messages
                if attrs["event_type"] == "heartbeat"
            ]


def registration(agent_id: str = "agent-1", interval: int = 30) -> Registration:
    return Registration(
        agent_id=agent_id,
        tenant="acme",
        name="Agent one",
        agent_type="llm-chat",
        version="1.2.3",
        owner="team-a",
        heartbeat_interval_s=interval,
    )


def eventually(condition: Any, timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def fast(interval_s: float = 0.1) -> Registration:
    """A registration with a sub-second interval (below the contract's minimum) to keep tests short."""
    return registration().model_copy(update={"heartbeat_interval_s": interval_s})


def make(publisher: FakePublisher, **kwargs: Any) -> FleetAgent:
    return FleetAgent(kwargs.pop("reg", registration()), project="proj", publisher=publisher, **kwargs)


def test_register_publishes_the_contract_and_returns_the_message_id() -> None:
    pub = FakePublisher()
    agent = make(pub)
    assert agent.register() == "1"
    topic, data, attrs = pub.messages[0]
    assert topic == f"projects/proj/topics/{DEFAULT_TOPICS[EventType.REGISTRATION]}"
    assert attrs == {"agent_id": "agent-1", "event_type": "registration", "schema_version": SCHEMA_VERSION}
    envelope = Envelope.model_validate_json(data)
    assert Registration.model_validate(envelope.data) == agent.registration


def test_heartbeat_body_and_attributes_follow_the_contract() -> None:
    pub = FakePublisher()
    agent = make(pub)
    before = datetime.now(UTC)
    future = agent.heartbeat(ReportedStatus.BUSY, {"cpu_pct": 12.5, "tokens_per_s": 40.0})
    assert future.result() == "1"
    topic, data, attrs = pub.messages[0]
    assert topic == "projects/proj/topics/agent-heartbeats"
    assert attrs == {"agent_id": "agent-1", "event_type": "heartbeat", "schema_version": SCHEMA_VERSION}
    envelope = Envelope.model_validate(json.loads(data))
    assert len(envelope.event_id) >= 8
    hb = Heartbeat.model_validate(envelope.data)
    assert hb.status is ReportedStatus.BUSY
    assert hb.metrics.as_dict() == {"cpu_pct": 12.5, "tokens_per_s": 40.0}
    assert before - timedelta(seconds=1) <= hb.sent_at <= datetime.now(UTC)
    assert hb.sent_at.utcoffset() == timedelta(0)
    assert hb.seq == agent.last_seq


def test_topic_overrides_and_default_project(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "from-env")
    pub = FakePublisher()
    agent = FleetAgent(registration(), publisher=pub, topics={EventType.HEARTBEAT: "prod-heartbeats"})
    agent.heartbeat()
    agent.register()
    assert [m[0] for m in pub.messages] == [
        "projects/from-env/topics/prod-heartbeats",
        "projects/from-env/topics/agent-registrations",
    ]


def test_seq_grows_by_one_and_starts_from_the_wall_clock() -> None:
    pub = FakePublisher()
    now_ms = time.time_ns() // 1_000_000
    agent = make(pub)
    for _ in range(5):
        agent.heartbeat()
    seqs = [hb.seq for hb in pub.heartbeats()]
    assert seqs == list(range(seqs[0], seqs[0] + 5))
    assert now_ms <= seqs[0] <= now_ms + 1000


def test_seq_survives_a_restart() -> None:
    pub = FakePublisher()
    first = make(pub)
    for _ in range(20):
        first.heartbeat()
    first.close()
    time.sleep(0.03)  # a restart takes longer than 20 beats' worth of milliseconds
    second = make(pub)
    second.heartbeat()
    seqs = [hb.seq for hb in pub.heartbeats()]
    assert seqs[-1] > max(seqs[:-1])


def test_seq_never_goes_backwards_when_the_clock_does(monkeypatch: pytest.MonkeyPatch) -> None:
    pub = FakePublisher()
    agent = make(pub)
    agent.heartbeat()
    real = time.time_ns()
    monkeypatch.setattr(time, "time_ns", lambda: real - 3_600 * 10**9)  # the clock steps back an hour
    agent.heartbeat()
    first, second = pub.heartbeats()
    assert second.seq == first.seq + 1


def test_seq_is_unique_across_threads() -> None:
    pub = FakePublisher()
    agent = make(pub)
    threads = [threading.Thread(target=lambda: [agent.heartbeat() for _ in range(50)]) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seqs = [hb.seq for hb in pub.heartbeats()]
    assert len(seqs) == 400
    assert seqs == sorted(set(seqs)), "enqueued in seq order, no duplicates"
    assert seqs[-1] - seqs[0] == 399


def test_the_loop_beats_at_the_interval_and_uses_the_callables() -> None:
    pub = FakePublisher()
    calls = {"metrics": 0}

    def metrics() -> dict[str, float]:
        calls["metrics"] += 1
        return {"cpu_pct": 50.0, "active_tasks": 3, "tokens_per_s": 12.0}

    agent = make(pub, reg=registration(interval=1), metrics=metrics, status=lambda: ReportedStatus.DEGRADED)
    started = time.monotonic()
    agent.start()
    assert agent.running
    time.sleep(1.3)  # first beat at once, the second one second later
    assert agent.stop(timeout=2)
    assert time.monotonic() - started < 2.0, "stop is prompt (the loop waits on an Event)"
    assert not agent.running
    beats = pub.heartbeats()
    assert len(beats) == 2
    assert calls["metrics"] == 2
    assert all(hb.status is ReportedStatus.DEGRADED for hb in beats)
    assert beats[0].metrics.as_dict() == {"cpu_pct": 50.0, "active_tasks": 3, "tokens_per_s": 12.0}
    gap = (beats[1].sent_at - beats[0].sent_at).total_seconds()
    assert 0.9 <= gap <= 1.2


def test_stop_waits_for_pending_publishes() -> None:
    pub = FakePublisher(auto_resolve=False)
    agent = make(pub)
    for _ in range(3):
        agent.heartbeat()
    assert agent.pending == 3

    def settle() -> None:
        time.sleep(0.2)
        for i, future in enumerate(pub.futures):
            future.set_result(str(i))

    threading.Thread(target=settle).start()
    started = time.monotonic()
    assert agent.stop(timeout=5) is True
    assert time.monotonic() - started >= 0.15, "stop waited for the publisher"
    assert agent.pending == 0
    assert all(f.done() for f in pub.futures)


def test_stop_reports_what_it_could_not_flush() -> None:
    pub = FakePublisher(auto_resolve=False)
    agent = make(pub)
    agent.heartbeat()
    assert agent.stop(timeout=0.1) is False
    assert agent.pending == 1


def test_publish_errors_do_not_kill_the_loop(caplog: pytest.LogCaptureFixture) -> None:
    pub = FakePublisher(fail_first=1)
    agent = make(pub, reg=fast())
    with caplog.at_level(logging.ERROR, logger="fleet_agent"):
        agent.start()
        eventually(lambda: len(pub.messages) >= 1)  # the first beat failed, a later one went out
        assert agent.running, "the loop survived the failing publish"
        agent.stop()
    assert any("heartbeat failed" in r.getMessage() for r in caplog.records)


def test_failed_futures_and_bad_metrics_are_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    pub = FakePublisher(auto_resolve=False)
    bad = iter([{"cpu_pct": 900.0}])  # out of range: the first beat cannot be built

    def metrics() -> dict[str, float]:
        return next(bad, {"cpu_pct": 1.0})

    agent = make(pub, reg=fast(), metrics=metrics)
    with caplog.at_level(logging.WARNING, logger="fleet_agent"):
        agent.start()
        eventually(lambda: len(pub.futures) >= 1)
        assert agent.running
        pub.futures[0].set_exception(RuntimeError("deadline exceeded"))
        agent.stop(timeout=0.05)  # later beats stay pending: this fake never resolves them
    messages = [r.getMessage() for r in caplog.records]
    assert any("heartbeat failed" in m for m in messages)
    assert any("publish failed: deadline exceeded" in m for m in messages)


def test_heartbeat_rejects_invalid_metrics_before_sending() -> None:
    pub = FakePublisher()
    agent = make(pub)
    seq = agent.last_seq
    with pytest.raises(ValidationError):
        agent.heartbeat(metrics={"error_rate": 2.0})
    assert pub.messages == []
    assert agent.last_seq == seq, "a refused beat does not use up a seq"


def test_context_manager_closes_and_only_stops_its_own_publisher() -> None:
    shared = FakePublisher()
    with make(shared, reg=fast()) as agent:
        agent.start()
    assert not agent.running
    assert shared.stopped is False, "a shared publisher belongs to the caller"
    with pytest.raises(RuntimeError, match="closed"):
        agent.heartbeat()
    agent.close()  # idempotent


def test_no_project_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GOOGLE_CLOUD_PROJECT", raising=False)
    monkeypatch.delenv("GCLOUD_PROJECT", raising=False)
    with pytest.raises(ValueError, match="project"):
        FleetAgent(registration(), publisher=FakePublisher())


def test_importing_the_sdk_does_not_import_grpc() -> None:
    import subprocess
    import sys

    code = "import sys, fleet_agent; print('google.cloud.pubsub_v1' in sys.modules, 'grpc' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
