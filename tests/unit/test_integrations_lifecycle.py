"""The drop-in clients' calls from admission to record when things go off the happy path, with the real
OpenAI and Anthropic clients against the fake provider: a successful call without usage is recorded at its
admitted worst case (never free), a stream dropped half-read is recorded once and releases its lease
reservation, an async call waiting for its lease leaves the event loop running, ``with_options``/``copy``
stay instrumented, and a usage block that cannot be read never reaches the caller."""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import anthropic
import openai
import pytest
from fleet_agent.contracts import CostRecord
from fleet_agent.costs import CallRefused
from fleet_agent.integrations import openai as openai_integration
from fleet_agent.integrations import usage as usage_module
from fleet_agent.integrations.anthropic import fleet_anthropic
from fleet_agent.integrations.openai import fleet_openai

from emulators.fake_llm import PROMPT_BASE, REPLY_WORDS, FakeLLM
from tests.unit.integrations_support import Agent, agent_fixture, llm_fixture, tokens  # noqa: F401  (fixtures)

HELLO: Any = [{"role": "user", "content": "hello there fleet"}]  # 17 bytes: a 5-token prompt estimate
ESTIMATE = 5
HI: Any = [{"role": "user", "content": "hi there"}]
CLAUDE = "claude-sonnet-4-5"


def client(llm: FakeLLM, agent: Agent) -> openai.OpenAI:
    return fleet_openai(openai.OpenAI(base_url=llm.openai_url, api_key="x", max_retries=0), agent)


def claude(llm: FakeLLM, agent: Agent) -> anthropic.Anthropic:
    return fleet_anthropic(anthropic.Anthropic(base_url=llm.url, api_key="x", max_retries=0), agent)


@pytest.fixture(name="funded")
def funded_fixture() -> Iterator[Agent]:
    """An agent with leases on and $1 granted (gpt-4o at $1 / $4 per million input / output tokens)."""
    made = Agent(leases=True, lease_wait_s=0.05)
    made.grant("1")
    yield made
    made.close()


def reserved(agent: Agent) -> Decimal:
    lease = agent.costs.lease
    assert lease is not None
    return lease.reserved_usd


def recorded(agent: Agent, count: int) -> list[CostRecord]:
    """The records once ``count`` are there (a dropped stream's call is recorded by a worker thread), and
    after a moment in which no more came."""
    deadline = time.monotonic() + 10
    while len(agent.records()) < count and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.1)
    return agent.records()


# -- S7: no usage is never free ------------------------------------------------------------------------


def test_a_chat_stream_asked_without_usage_still_records_it(llm: FakeLLM, agent: Agent) -> None:
    chat = client(llm, agent).chat.completions
    options = {"include_usage": False}
    chunks = list(chat.create(model="gpt-4o", messages=HELLO, stream=True, stream_options=options, max_tokens=5))
    assert llm.calls()[0]["body"]["stream_options"] == {"include_usage": True}  # always asked
    assert all(c.choices for c in chunks)  # the usage chunk the caller declined is not passed on
    [record] = agent.records()
    assert tokens(record) == (PROMPT_BASE + 3, 5, 0, 0, 0)


@pytest.fixture(name="every_warning")
def every_warning_fixture(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every call without usage warns (no rate limit), whatever earlier tests warned about."""
    monkeypatch.setattr(usage_module, "ESTIMATE_WARNING_S", 0.0)


def test_successful_calls_without_usage_are_recorded_at_their_worst_case(
    llm: FakeLLM, agent: Agent, caplog: pytest.LogCaptureFixture, every_warning: None
) -> None:
    llm.usage(omit=True)
    c = client(llm, agent)
    with caplog.at_level(logging.WARNING, logger="fleet_agent"):
        reply = c.chat.completions.create(model="gpt-4o", messages=HELLO, max_tokens=50)
        assert reply.usage is None and reply.choices[0].message.content
        c.chat.completions.create(model="gpt-4o", messages=HELLO)  # no max_tokens: the recorder's default
        events = list(c.responses.create(model="o4-mini", input=HELLO, stream=True, max_output_tokens=40))
        assert events and all(e.type != "response.completed" for e in events)
        c.embeddings.create(model="text-embedding-3-small", input="hello there fleet")
    records = agent.records()
    assert [(r.success, tokens(r)[:2]) for r in records] == [
        (True, (ESTIMATE, 50)),
        (True, (ESTIMATE, 1024)),
        (True, (ESTIMATE, 40)),
        (True, (ESTIMATE, 0)),
    ]
    assert sum("ended without usage" in m for m in caplog.messages) == 4


def test_warnings_about_calls_without_usage_are_rate_limited(
    llm: FakeLLM, agent: Agent, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(usage_module, "_warned", {})
    llm.usage(omit=True)
    chat = client(llm, agent).chat.completions
    with caplog.at_level(logging.WARNING, logger="fleet_agent"):
        for _ in range(3):
            chat.create(model="gpt-4o", messages=HELLO, max_tokens=50)
        chat.create(model="gpt-4o-mini", messages=HELLO, max_tokens=50)  # another model: its own warning
        monkeypatch.setattr(usage_module, "ESTIMATE_WARNING_S", 0.0)  # as if the minute had passed
        chat.create(model="gpt-4o", messages=HELLO, max_tokens=50)
    warned = [m for m in caplog.messages if "ended without usage" in m]
    assert len(warned) == 3 and "gpt-4o-mini" in warned[1]
    assert "(2 more such calls since the last warning)" in warned[2]
    assert [tokens(r)[:2] for r in agent.records()] == [(ESTIMATE, 50)] * 5  # every one recorded all the same


def test_a_failed_call_is_not_estimated(llm: FakeLLM, agent: Agent) -> None:
    llm.fail_next(500)
    with pytest.raises(openai.InternalServerError):
        client(llm, agent).chat.completions.create(model="gpt-4o", messages=HELLO, max_tokens=50)
    assert [(r.success, tokens(r)) for r in agent.records()] == [(False, (0, 0, 0, 0, 0))]


# -- N10: a usage block that cannot be read ------------------------------------------------------------


def test_a_usage_reader_that_fails_is_logged_and_the_call_estimated(
    llm: FakeLLM, agent: Agent, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(call: Any, usage: Any) -> bool:
        raise KeyError("an unexpected usage block")

    monkeypatch.setattr(openai_integration, "openai_usage", broken)
    with caplog.at_level(logging.WARNING, logger="fleet_agent"):
        reply = client(llm, agent).chat.completions.create(model="gpt-4o", messages=HELLO, max_tokens=30)
    assert reply.choices[0].message.content  # the caller gets its answer: it paid for it
    [record] = agent.records()
    assert (record.success, tokens(record)[:2]) == (True, (ESTIMATE, 30))
    assert any("could not be read" in m for m in caplog.messages)


# -- S8: a stream dropped half-read ----------------------------------------------------------------------


def test_a_dropped_stream_is_recorded_once_and_releases_its_reservation(llm: FakeLLM, funded: Agent) -> None:
    chat = client(llm, funded).chat.completions
    stream = chat.create(model="gpt-4o", messages=HELLO, stream=True, max_tokens=50)
    next(stream)
    assert reserved(funded) > 0
    del stream
    gc.collect()
    [record] = recorded(funded, 1)  # the usage chunk never came: the admitted worst case
    assert (record.success, tokens(record)[:2]) == (True, (ESTIMATE, 50))
    assert reserved(funded) == 0
    gc.collect()
    time.sleep(0.2)
    assert len(funded.records()) == 1  # never twice


def test_a_stream_read_to_its_end_then_dropped_is_recorded_once(llm: FakeLLM, agent: Agent) -> None:
    stream = client(llm, agent).chat.completions.create(model="gpt-4o", messages=HELLO, stream=True)
    assert len(list(stream)) == REPLY_WORDS + 2
    del stream
    gc.collect()
    time.sleep(0.2)
    assert [tokens(r)[:2] for r in agent.records()] == [(PROMPT_BASE + 3, REPLY_WORDS)]  # once


def test_a_dropped_anthropic_stream_records_the_usage_read_so_far(llm: FakeLLM, agent: Agent) -> None:
    stream = claude(llm, agent).messages.create(model=CLAUDE, max_tokens=100, messages=HI, stream=True)
    assert next(iter(stream)).type == "message_start"  # input tokens known, 1 output token so far
    del stream
    gc.collect()
    [record] = recorded(agent, 1)
    assert (record.success, tokens(record)[:2]) == (True, (PROMPT_BASE + 2, 1))


def test_an_anthropic_stream_manager_never_entered_reserves_and_records_nothing(llm: FakeLLM, funded: Agent) -> None:
    manager = claude(llm, funded).messages.stream(model="gpt-4o", max_tokens=100, messages=HI)  # not entered
    assert reserved(funded) == 0  # the request leaves only when its block is entered: admitted then
    del manager
    gc.collect()
    time.sleep(0.2)
    assert funded.records() == [] and llm.calls() == []


def test_a_dropped_async_stream_releases_its_reservation(llm: FakeLLM, funded: Agent) -> None:
    async def run() -> None:
        c = fleet_openai(openai.AsyncOpenAI(base_url=llm.openai_url, api_key="x", max_retries=0), funded)
        stream = await c.chat.completions.create(model="gpt-4o", messages=HELLO, stream=True, max_tokens=20)
        await stream.__anext__()
        assert reserved(funded) > 0
        del stream
        gc.collect()

    asyncio.run(run())
    assert [tokens(r)[:2] for r in recorded(funded, 1)] == [(ESTIMATE, 20)]
    assert reserved(funded) == 0


# -- S9: waiting for a lease off the event loop -----------------------------------------------------------


def test_an_async_call_waiting_for_its_lease_leaves_the_loop_running(llm: FakeLLM) -> None:
    waiting = Agent(leases=True, lease_wait_s=10)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            if ticks == 3:  # the grant comes from another coroutine, which runs only if the loop does
                waiting.grant("1")
            await asyncio.sleep(0.01)

    async def run() -> None:
        c = fleet_openai(openai.AsyncOpenAI(base_url=llm.openai_url, api_key="x", max_retries=0), waiting)
        task = asyncio.create_task(ticker())
        try:
            await c.chat.completions.create(model="gpt-4o", messages=HELLO, max_tokens=10)
        finally:
            task.cancel()

    try:
        asyncio.run(run())
        assert ticks >= 3
        assert [r.success for r in waiting.records()] == [True]
    finally:
        waiting.close()


def test_an_async_call_cancelled_while_waiting_for_its_lease_records_nothing(llm: FakeLLM) -> None:
    waiting = Agent(leases=True, lease_wait_s=10)
    wallet = waiting.costs._wallet
    assert wallet is not None

    async def run() -> None:
        c = fleet_openai(openai.AsyncOpenAI(base_url=llm.openai_url, api_key="x", max_retries=0), waiting)
        call = asyncio.create_task(c.chat.completions.create(model="gpt-4o", messages=HELLO, max_tokens=10))
        await asyncio.sleep(0.05)  # waiting for a grant, in its thread
        assert wallet._waiters, "the call waits for its lease"
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        waiting.grant("1")  # the admission completes in its thread after the caller left
        for _ in range(500):
            if not wallet._waiters:
                break
            await asyncio.sleep(0.01)
        assert not wallet._waiters, "the admission in its thread ended"
        await asyncio.sleep(0.1)  # its result reaches the loop

    try:
        asyncio.run(run())
        assert waiting.records() == []  # no request was sent: no model call, failed or not
        assert reserved(waiting) == 0 and llm.calls() == []
    finally:
        waiting.close()


def test_an_async_call_that_fits_is_admitted_without_a_thread(llm: FakeLLM, funded: Agent) -> None:
    async def run() -> list[str]:
        c = fleet_openai(openai.AsyncOpenAI(base_url=llm.openai_url, api_key="x", max_retries=0), funded)
        seen: list[str] = []
        original = asyncio.to_thread

        async def watched(fn: Any, *args: Any, **kwargs: Any) -> Any:
            seen.append(getattr(fn, "__name__", str(fn)))
            return await original(fn, *args, **kwargs)

        asyncio.to_thread = watched  # type: ignore[assignment]
        try:
            await c.chat.completions.create(model="gpt-4o", messages=HELLO, max_tokens=10)
        finally:
            asyncio.to_thread = original
        return seen

    assert "Pending" not in asyncio.run(run())
    assert len(funded.records()) == 1


# -- S10: copies stay instrumented --------------------------------------------------------------------------


def test_with_options_and_copy_of_an_openai_client_stay_instrumented(llm: FakeLLM, agent: Agent) -> None:
    c = fleet_openai(openai.OpenAI(base_url=llm.openai_url, api_key="x", max_retries=0), agent, operation="triage")
    c.with_options(timeout=5).chat.completions.create(model="gpt-4o", messages=HELLO)
    c.copy(max_retries=0).embeddings.create(model="text-embedding-3-small", input="x")
    assert [(r.operation, r.success) for r in agent.records()] == [("triage", True)] * 2
    agent.pause()
    with pytest.raises(CallRefused):
        c.with_options(timeout=5).chat.completions.create(model="gpt-4o", messages=HELLO)
    with pytest.raises(CallRefused):
        c.with_options(timeout=5).with_options(max_retries=0).responses.create(model="gpt-4o", input="x")
    assert len(llm.calls()) == 2 and len(agent.records()) == 2  # refused: no request, no record


def test_with_options_of_an_anthropic_client_stays_instrumented(llm: FakeLLM, agent: Agent) -> None:
    c = claude(llm, agent)
    c.with_options(timeout=5).messages.create(model=CLAUDE, max_tokens=10, messages=HI)
    with c.copy().messages.stream(model=CLAUDE, max_tokens=10, messages=HI) as stream:
        stream.get_final_message()
    assert [(r.operation, tokens(r)[:2]) for r in agent.records()] == [("messages", (PROMPT_BASE + 2, 10))] * 2
    agent.pause()
    with pytest.raises(CallRefused):
        c.with_options(timeout=5).messages.create(model=CLAUDE, max_tokens=10, messages=HI)
    with pytest.raises(CallRefused), c.copy().messages.stream(model=CLAUDE, max_tokens=10, messages=HI):
        pass
    assert len(llm.calls()) == 2 and len(agent.records()) == 2  # refused: no request, no record
