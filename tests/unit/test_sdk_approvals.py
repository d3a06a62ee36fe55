"""Approvals in the agent SDK (sdk/fleet_agent/approvals.py, FleetAgent.request_approval/preapprove)
against a fake publisher and subscriber: no emulator, no network."""

from __future__ import annotations

import json
import logging
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from fleet_agent import (
    ApprovalHandle,
    ApprovalKind,
    ApprovalRequest,
    ApprovalStatus,
    ApprovalTimeout,
    BudgetPeriod,
    CallRefused,
    Command,
    CommandType,
    EventType,
    FleetAgent,
    Registration,
)
from fleet_agent.approvals import ApprovalBook
from fleet_agent.contracts import SCHEMA_VERSION, Envelope
from pydantic import ValidationError

from tests.unit.test_sdk_commands import FakeMessage, FakeStream

T0 = datetime(2026, 11, 21, 12, tzinfo=UTC)


class FakePublisher:
    """Records every publish; ``on_approval(request)`` plays the server for approval requests."""

    def __init__(self, *, fail: bool = False) -> None:
        self.fail = fail
        self.messages: list[tuple[str, bytes, dict[str, str]]] = []
        self.lock = threading.Lock()
        self.on_approval: Callable[[ApprovalRequest], None] | None = None
        self.log: list[str] | None = None

    def topic_path(self, project: str, topic: str) -> str:
        return f"projects/{project}/topics/{topic}"

    def publish(self, topic: str, data: bytes, **attrs: Any) -> Future[str]:
        future: Future[str] = Future()
        if self.fail:
            future.set_exception(RuntimeError("publish failed"))
            return future
        with self.lock:
            self.messages.append((topic, data, attrs))
            if self.log is not None:
                self.log.append(f"publish {attrs['event_type']}")
            future.set_result(str(len(self.messages)))
        if attrs["event_type"] == "approval" and self.on_approval is not None:
            self.on_approval(ApprovalRequest.model_validate(json.loads(data)["data"]))
        return future

    def approvals(self) -> list[ApprovalRequest]:
        with self.lock:
            return [
                ApprovalRequest.model_validate(json.loads(data)["data"])
                for _, data, attrs in self.messages
                if attrs["event_type"] == "approval"
            ]


class FakeSubscriber:
    def __init__(self, log: list[str] | None = None) -> None:
        self.created: list[dict[str, Any]] = []
        self.callback: Callable[[Any], Any] | None = None
        self.log = log

    def create_subscription(self, request: Mapping[str, Any], *, timeout: float) -> Any:
        self.created.append(dict(request))
        if self.log is not None:
            self.log.append("create_subscription")
        return request

    def delete_subscription(self, request: Mapping[str, Any], *, timeout: float) -> None:
        pass

    def subscribe(self, subscription: str, callback: Callable[[Any], Any], flow_control: Any = ()) -> FakeStream:
        self.callback = callback
        return FakeStream()

    def close(self) -> None:
        pass

    def send(self, command: Command) -> FakeMessage:
        """Deliver a command as the server publishes it: JSON body, agent_id and event_type attributes."""
        assert self.callback is not None, "not subscribed"
        attrs = {"agent_id": command.agent_id, "event_type": "command"}
        message = FakeMessage(command.model_dump_json().encode(), attrs, command.command_id)
        self.callback(message)
        return message


def registration(agent_id: str = "agent-1") -> Registration:
    return Registration(
        agent_id=agent_id, tenant="acme", name=agent_id, agent_type="llm-chat", version="1.0.0", owner="team"
    )


def decision(
    request_id: str,
    approved: bool,
    reason: str = "",
    *,
    agent_id: str = "agent-1",
    command_id: str | None = None,
    at: datetime = T0,
) -> Command:
    return Command(
        agent_id=agent_id,
        command=CommandType.APPROVAL_DECIDED,
        reason=reason,
        issued_at=at,
        command_id=command_id or uuid.uuid4().hex,
        request_id=request_id,
        approval_id=f"apr-{request_id[:8]}",
        approved=approved,
    )


@pytest.fixture(autouse=True)
def _no_threshold_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLEET_APPROVAL_THRESHOLD_USD", raising=False)


class Setup:
    def __init__(self, agent: FleetAgent, publisher: FakePublisher, subscriber: FakeSubscriber) -> None:
        self.agent, self.pub, self.sub = agent, publisher, subscriber


@pytest.fixture
def make() -> Iterator[Callable[..., Setup]]:
    """An agent with a fake publisher, already listening through a fake subscriber (unless listen=False)."""
    agents: list[FleetAgent] = []

    def build(*, listen: bool = True, agent_id: str = "agent-1", **kwargs: Any) -> Setup:
        pub, sub = FakePublisher(), FakeSubscriber()
        agent = FleetAgent(registration(agent_id), project="proj", publisher=pub, **kwargs)
        agents.append(agent)
        if listen:
            agent.listen(subscriber=sub)
        return Setup(agent, pub, sub)

    yield build
    for agent in agents:
        agent.close(timeout=1)


def answer_in_background(setup: Setup, approved: bool, reason: str = "") -> list[threading.Thread]:
    """Play the server: answer each approval request from another thread, as a Pub/Sub callback would."""
    threads: list[threading.Thread] = []

    def on_approval(request: ApprovalRequest) -> None:
        thread = threading.Thread(target=setup.sub.send, args=(decision(request.request_id, approved, reason),))
        threads.append(thread)
        thread.start()

    setup.pub.on_approval = on_approval
    return threads


# -- the request ---------------------------------------------------------------------------------


def test_request_publishes_an_approval_request_on_the_approvals_topic(make: Callable[..., Setup]) -> None:
    s = make()
    before = datetime.now(UTC)
    handle = s.agent.request_approval(
        "re-embed the corpus",
        reason="new embedding model",
        estimated_cost_usd=0.1 + 0.2,  # a float goes through str(): no binary noise on the wire
        expires_in_s=900,
        details={"documents": "40000"},
    )

    (topic, data, attrs) = s.pub.messages[0]
    assert topic == "projects/proj/topics/agent-approvals" == s.agent.approvals_topic
    assert attrs == {"agent_id": "agent-1", "event_type": "approval", "schema_version": SCHEMA_VERSION}
    request = ApprovalRequest.model_validate(Envelope.model_validate_json(data).data)
    assert request.agent_id == "agent-1"
    assert request.kind is ApprovalKind.OPERATION
    assert request.operation == "re-embed the corpus"
    assert request.reason == "new embedding model"
    assert request.estimated_cost_usd == Decimal("0.30000000000000004").quantize(Decimal("1e-9"))
    assert request.expires_in_s == 900
    assert request.details == {"documents": "40000"}
    assert before <= request.requested_at <= datetime.now(UTC)
    assert request.budget_period is None and request.budget_usd is None
    uuid.UUID(hex=request.request_id)  # a fresh uuid hex by default

    assert isinstance(handle, ApprovalHandle)
    assert handle.request_id == request.request_id
    assert (handle.operation, handle.kind) == ("re-embed the corpus", ApprovalKind.OPERATION)
    assert handle.status is ApprovalStatus.PENDING and handle.status == "pending"
    assert handle.approved is None and handle.reason is None and handle.approval_id is None
    assert handle.decided_at is None and not handle.done()
    assert handle.expires_at == request.requested_at + timedelta(seconds=900)
    assert s.agent.approval(handle.request_id) is handle


def test_each_request_gets_its_own_id(make: Callable[..., Setup]) -> None:
    s = make()
    first = s.agent.request_approval("op")
    second = s.agent.request_approval("op")
    assert first is not second and first.request_id != second.request_id
    assert [r.request_id for r in s.pub.approvals()] == [first.request_id, second.request_id]


def test_budget_raise_request(make: Callable[..., Setup]) -> None:
    s = make()
    handle = s.agent.request_approval(
        "raise the daily budget",
        kind=ApprovalKind.BUDGET_RAISE,
        budget_period=BudgetPeriod.DAILY,
        budget_usd="75.50",
    )
    (request,) = s.pub.approvals()
    assert request.kind is ApprovalKind.BUDGET_RAISE and handle.kind is ApprovalKind.BUDGET_RAISE
    assert (request.budget_period, request.budget_usd) == (BudgetPeriod.DAILY, Decimal("75.50"))


def test_invalid_requests_are_refused_before_anything_is_sent(make: Callable[..., Setup]) -> None:
    s = make()
    with pytest.raises(ValidationError, match="budget_raise"):
        s.agent.request_approval("op", budget_period=BudgetPeriod.DAILY, budget_usd=10)
    with pytest.raises(ValidationError):
        s.agent.request_approval("op", expires_in_s=59)
    with pytest.raises(ValidationError):
        s.agent.request_approval("op", request_id="no spaces allowed")
    with pytest.raises(ValueError, match="estimated_cost_usd"):
        s.agent.request_approval("op", estimated_cost_usd=-1)
    assert s.pub.messages == []


def test_topic_override(make: Callable[..., Setup]) -> None:
    s = make(topics={EventType.APPROVAL: "prod-agent-approvals"})
    s.agent.request_approval("op")
    assert s.pub.messages[0][0] == "projects/proj/topics/prod-agent-approvals"


def test_the_same_request_id_returns_the_same_handle(make: Callable[..., Setup]) -> None:
    s = make()
    handle = s.agent.request_approval("op", request_id="job-42-approval", estimated_cost_usd=20)
    again = s.agent.request_approval("another op", request_id="job-42-approval", estimated_cost_usd=99)
    assert again is handle
    # Still pending: the original request goes out again (the server keeps one approval per id and
    # re-sends a decision it already made), never the new arguments.
    first, second = s.pub.approvals()
    assert first == second and first.operation == "op" and first.estimated_cost_usd == 20
    event_ids = {Envelope.model_validate_json(data).event_id for _, data, _ in s.pub.messages}
    assert len(event_ids) == 2, "a new event id, or the server would drop it as a redelivery"

    s.sub.send(decision("job-42-approval", True))
    assert s.agent.request_approval("op", request_id="job-42-approval") is handle
    assert len(s.pub.approvals()) == 2, "a decided request is not published again"


def test_a_failed_publish_raises_and_leaves_no_handle(make: Callable[..., Setup]) -> None:
    s = make()
    s.pub.fail = True
    with pytest.raises(RuntimeError, match="publish failed"):
        s.agent.request_approval("op", request_id="req-00000001")
    assert s.agent.approval("req-00000001") is None
    s.pub.fail = False
    handle = s.agent.request_approval("op", request_id="req-00000001")
    assert handle.status is ApprovalStatus.PENDING and len(s.pub.approvals()) == 1


def test_request_starts_listening_before_publishing(monkeypatch: pytest.MonkeyPatch) -> None:
    events: list[str] = []
    subscribers: list[FakeSubscriber] = []

    def subscriber_client() -> FakeSubscriber:
        subscribers.append(FakeSubscriber(events))
        return subscribers[-1]

    monkeypatch.setattr("google.cloud.pubsub_v1.SubscriberClient", subscriber_client)
    pub = FakePublisher()
    pub.log = events
    agent = FleetAgent(registration(), project="proj", publisher=pub)
    try:
        assert agent.listener is None
        handle = agent.request_approval("op")
        assert events == ["create_subscription", "publish approval"], "no decision may arrive unheard"
        assert agent.listener is not None and agent.listener.running
        assert subscribers[0].created[0]["filter"] == 'attributes.agent_id = "agent-1"'

        subscribers[0].send(decision(handle.request_id, True))
        assert handle.approved is True

        agent.request_approval("op")
        assert len(subscribers) == 1, "one listener per agent"
    finally:
        agent.close(timeout=1)


def test_listen_false_leaves_listening_to_a_shared_listener(make: Callable[..., Setup]) -> None:
    s = make(listen=False)
    handle = s.agent.request_approval("op", listen=False)
    assert s.agent.listener is None
    assert s.agent.apply_command(decision(handle.request_id, False).model_dump_json().encode()) is not None
    assert handle.status is ApprovalStatus.DENIED


def test_a_closed_agent_refuses_requests(make: Callable[..., Setup]) -> None:
    s = make()
    s.agent.close(timeout=1)
    with pytest.raises(RuntimeError, match="closed"):
        s.agent.request_approval("op")
    assert s.pub.messages == []


# -- decisions -----------------------------------------------------------------------------------


def test_an_approval_resolves_the_handle(make: Callable[..., Setup]) -> None:
    s = make()
    handle = s.agent.request_approval("op")
    message = s.sub.send(decision(handle.request_id, True, "go ahead", at=T0 + timedelta(minutes=3)))
    assert message.acks == 1
    assert handle.done() and handle.status is ApprovalStatus.APPROVED and handle.status == "approved"
    assert handle.approved is True
    assert handle.reason == "go ahead"
    assert handle.approval_id == f"apr-{handle.request_id[:8]}"
    assert handle.decided_at == T0 + timedelta(minutes=3)
    assert handle.command is not None and handle.command.command is CommandType.APPROVAL_DECIDED
    assert handle.wait(0) is True


def test_a_denial_resolves_the_handle(make: Callable[..., Setup]) -> None:
    s = make()
    handle = s.agent.request_approval("op")
    s.sub.send(decision(handle.request_id, False, "too expensive this month"))
    assert handle.status is ApprovalStatus.DENIED and handle.approved is False
    assert handle.reason == "too expensive this month"
    assert handle.wait(0) is False


def test_an_expiry_resolves_the_handle(make: Callable[..., Setup]) -> None:
    s = make()
    handle = s.agent.request_approval("op")
    s.sub.send(decision(handle.request_id, False, "expired"))
    assert handle.status is ApprovalStatus.EXPIRED and handle.status == "expired"
    assert handle.approved is False and handle.reason == "expired"
    assert handle.wait(0) is False


def test_decisions_for_other_agents_and_unknown_requests_are_ignored(make: Callable[..., Setup]) -> None:
    s = make()
    handle = s.agent.request_approval("op")
    other = decision(handle.request_id, True, agent_id="agent-2")
    assert s.agent.apply_command(other.model_dump_json().encode()) is None
    assert not handle.done()

    unknown = decision("never-requested", True)
    assert s.agent.apply_command(unknown.model_dump_json().encode()) == unknown  # new to the agent, no effect
    assert not handle.done()
    assert s.agent.approval("never-requested") is None


def test_the_first_decision_wins(make: Callable[..., Setup]) -> None:
    s = make()
    handle = s.agent.request_approval("op")
    denial = decision(handle.request_id, False, "no", command_id="decision-0001")
    s.sub.send(denial)
    redelivered = s.sub.send(denial)  # Pub/Sub delivers at least once
    assert redelivered.acks == 1
    assert s.agent.apply_command(denial.model_dump_json().encode()) is None, "a repeat is ignored"
    s.sub.send(decision(handle.request_id, True, "changed my mind", command_id="decision-0002"))
    assert handle.status is ApprovalStatus.DENIED and handle.reason == "no"
    assert handle.command == denial


def test_other_commands_still_apply(make: Callable[..., Setup]) -> None:
    s = make()
    handle = s.agent.request_approval("op")
    pause = Command(
        agent_id="agent-1", command=CommandType.PAUSE, reason="ops", issued_at=T0, command_id="pause-0000001"
    )
    s.sub.send(pause)
    with pytest.raises(CallRefused):
        s.agent.costs.check()
    assert not handle.done()


def test_the_listener_callback_sees_the_decision(make: Callable[..., Setup]) -> None:
    pub, sub = FakePublisher(), FakeSubscriber()
    seen: list[tuple[str, Command]] = []
    agent = FleetAgent(registration(), project="proj", publisher=pub)
    try:
        agent.listen(lambda agent_id, command: seen.append((agent_id, command)), subscriber=sub)
        handle = agent.request_approval("op")
        approved = decision(handle.request_id, True)
        sub.send(approved)
        sub.send(approved)
        assert seen == [("agent-1", approved)]
    finally:
        agent.close(timeout=1)


# -- waiting and callbacks -----------------------------------------------------------------------


def test_wait_raises_approval_timeout_and_the_request_stays_pending(make: Callable[..., Setup]) -> None:
    s = make()
    handle = s.agent.request_approval("op")
    with pytest.raises(ApprovalTimeout) as raised:
        handle.wait(0.01)
    assert raised.value.handle is handle and raised.value.request_id == handle.request_id
    assert isinstance(raised.value, TimeoutError)
    assert handle.request_id in str(raised.value)
    assert handle.status is ApprovalStatus.PENDING
    s.sub.send(decision(handle.request_id, True))
    assert handle.wait(0.01) is True, "decided later: a new wait succeeds"


def test_wait_returns_when_the_decision_arrives_on_another_thread(make: Callable[..., Setup]) -> None:
    s = make()
    handle = s.agent.request_approval("op")
    result: list[bool] = []
    waiting = threading.Event()

    def waiter() -> None:
        waiting.set()
        result.append(handle.wait(5))

    thread = threading.Thread(target=waiter)
    thread.start()
    waiting.wait(5)
    s.sub.send(decision(handle.request_id, True))
    thread.join(5)
    assert result == [True]


def test_request_with_wait_returns_the_decided_handle(make: Callable[..., Setup]) -> None:
    s = make()
    threads = answer_in_background(s, approved=False, reason="not today")
    handle = s.agent.request_approval("op", wait=5)
    assert handle.status is ApprovalStatus.DENIED and handle.reason == "not today"
    for thread in threads:
        thread.join(5)


def test_request_with_wait_returns_a_pending_handle_when_nobody_decides(make: Callable[..., Setup]) -> None:
    s = make()
    handle = s.agent.request_approval("op", wait=0.01)
    assert handle.status is ApprovalStatus.PENDING


def test_done_callbacks_run_once_and_at_once_when_already_decided(
    make: Callable[..., Setup], caplog: pytest.LogCaptureFixture
) -> None:
    s = make()
    handle = s.agent.request_approval("op")
    calls: list[tuple[str, ApprovalStatus]] = []

    def broken(h: ApprovalHandle) -> None:
        raise ValueError("callback bug")

    handle.add_done_callback(lambda h: calls.append(("early", h.status)))
    handle.add_done_callback(broken)
    handle.add_done_callback(lambda h: calls.append(("after the broken one", h.status)))
    assert calls == []
    with caplog.at_level(logging.ERROR, logger="fleet_agent"):
        s.sub.send(decision(handle.request_id, True, command_id="decision-0001"))
        s.sub.send(decision(handle.request_id, False, command_id="decision-0002"))
    assert calls == [("early", ApprovalStatus.APPROVED), ("after the broken one", ApprovalStatus.APPROVED)]
    assert any("done callback failed" in r.getMessage() for r in caplog.records)

    handle.add_done_callback(lambda h: calls.append(("late", h.status)))
    assert calls[-1] == ("late", ApprovalStatus.APPROVED)


# -- preapprove and the threshold ----------------------------------------------------------------


def test_preapprove_at_or_under_the_threshold_asks_nobody(make: Callable[..., Setup]) -> None:
    s = make(listen=False, approval_threshold_usd="5")
    assert s.agent.approval_threshold_usd == Decimal("5")
    assert s.agent.preapprove("small job", 4.99) is True
    assert s.agent.preapprove("small job", Decimal("5")) is True
    assert s.pub.messages == []
    assert s.agent.listener is None, "nothing to hear: no subscription either"


def test_preapprove_over_the_threshold_asks_and_waits(make: Callable[..., Setup]) -> None:
    s = make(approval_threshold_usd=5)
    threads = answer_in_background(s, approved=True)
    assert s.agent.preapprove("big job", "5.01", reason="quarterly re-index", timeout=90.5) is True
    (request,) = s.pub.approvals()
    assert request.operation == "big job" and request.reason == "quarterly re-index"
    assert request.estimated_cost_usd == Decimal("5.01")
    assert request.expires_in_s == 91, "expires when the agent stops waiting (rounded up)"
    threads += answer_in_background(s, approved=False)
    assert s.agent.preapprove("big job", 50, timeout=5) is False
    assert s.pub.approvals()[1].expires_in_s == 60, "at least the contract's minimum"
    for thread in threads:
        thread.join(5)


def test_preapprove_expiry_can_be_given(make: Callable[..., Setup]) -> None:
    s = make()
    threads = answer_in_background(s, approved=False, reason="expired")
    assert s.agent.preapprove("big job", 11, timeout=5, expires_in_s=7200) is False
    assert s.pub.approvals()[0].expires_in_s == 7200
    for thread in threads:
        thread.join(5)


def test_preapprove_raises_approval_timeout_without_a_decision(make: Callable[..., Setup]) -> None:
    s = make()
    with pytest.raises(ApprovalTimeout) as raised:
        s.agent.preapprove("big job", 11, timeout=0.01)
    (request,) = s.pub.approvals()
    assert raised.value.request_id == request.request_id
    assert raised.value.handle.status is ApprovalStatus.PENDING


def test_preapprove_refuses_a_negative_estimate(make: Callable[..., Setup]) -> None:
    s = make()
    with pytest.raises(ValueError, match="estimated_cost_usd"):
        s.agent.preapprove("job", -1)


def test_the_threshold_defaults_to_ten_dollars(make: Callable[..., Setup]) -> None:
    s = make()
    assert s.agent.approval_threshold_usd == Decimal("10")
    assert s.agent.preapprove("job", 10) is True
    with pytest.raises(ApprovalTimeout):
        s.agent.preapprove("job", "10.000000001", timeout=0)
    assert len(s.pub.approvals()) == 1


def test_the_threshold_comes_from_the_environment(make: Callable[..., Setup], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEET_APPROVAL_THRESHOLD_USD", "0.50")
    s = make()
    assert s.agent.approval_threshold_usd == Decimal("0.50")
    with pytest.raises(ApprovalTimeout):
        s.agent.preapprove("job", 1, timeout=0)
    assert len(s.pub.approvals()) == 1
    assert make(approval_threshold_usd=2).agent.approval_threshold_usd == Decimal("2"), "the argument wins"


@pytest.mark.parametrize("value", ["ten", "-1", "nan"])
def test_an_invalid_threshold_is_refused(
    value: str, make: Callable[..., Setup], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLEET_APPROVAL_THRESHOLD_USD", value)
    with pytest.raises(ValueError, match="FLEET_APPROVAL_THRESHOLD_USD"):
        make(listen=False)
    monkeypatch.delenv("FLEET_APPROVAL_THRESHOLD_USD")
    with pytest.raises(ValueError, match="approval_threshold_usd"):
        make(listen=False, approval_threshold_usd=value)


def test_decided_handles_are_kept_up_to_a_bound_pending_ones_always() -> None:
    book = ApprovalBook(max_decided=2)

    def request(n: int) -> ApprovalRequest:
        return ApprovalRequest(agent_id="agent-1", request_id=f"request-{n:04d}", operation="op", requested_at=T0)

    handles = [book.track(request(n))[0] for n in range(5)]
    assert book.track(request(0)) == (handles[0], False)
    for handle in handles[1:4]:
        assert book.decide(decision(handle.request_id, True)) is handle
    assert book.decide(decision(handles[1].request_id, False)) is None, "decided already"
    assert [book.get(h.request_id) is h for h in handles] == [True, False, True, True, True]
    assert len(book) == 4
