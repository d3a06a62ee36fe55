"""The drop-in clients around a recorder that closes, and admissions that must not block the event loop:
a call after ``close()`` is refused before the request leaves, a call that ends after it never raises to
its caller (the lost record is logged), a stream dropped just before ``close()`` is still recorded, and an
async admission whose lease room went between the probe and the reservation waits off the loop."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import openai
import pytest
from fleet_agent.contracts import CostRecord
from fleet_agent.costs import CallRefused
from fleet_agent.integrations.openai import fleet_openai

from emulators.fake_llm import PROMPT_BASE, REPLY_WORDS, FakeLLM
from tests.unit.integrations_support import Agent, agent_fixture, llm_fixture, tokens  # noqa: F401  (fixtures)
from tests.unit.test_integrations_lifecycle import ESTIMATE, HELLO, client


def published(agent: Agent) -> list[CostRecord]:
    """What the closed recorder published (``Agent.records`` flushes, which a closed recorder need not)."""
    return [r for b in agent.publisher.batches() for r in b.records]


def test_a_call_after_close_is_refused_before_the_request(llm: FakeLLM, agent: Agent) -> None:
    c = client(llm, agent)
    agent.close()
    with pytest.raises(CallRefused) as refused:
        c.chat.completions.create(model="gpt-4o", messages=HELLO)
    assert refused.value.reason == "recorder_closed" and "closed" in str(refused.value)
    assert llm.calls() == [] and published(agent) == []


def test_a_call_ending_after_close_reaches_its_caller_and_the_lost_record_is_logged(
    llm: FakeLLM, agent: Agent, caplog: pytest.LogCaptureFixture
) -> None:
    stream = client(llm, agent).chat.completions.create(model="gpt-4o", messages=HELLO, stream=True)
    agent.close()  # while the stream is open: its call cannot be recorded any more
    with caplog.at_level(logging.WARNING, logger="fleet_agent"):
        chunks = list(stream)  # never raises: the caller paid for this answer
    assert len(chunks) == REPLY_WORDS + 2  # a role chunk, the words, a finish chunk
    [warning] = [m for m in caplog.messages if "not recorded" in m]
    assert "gpt-4o" in warning and f"({PROMPT_BASE + 3} input, {REPLY_WORDS} output tokens)" in warning
    assert published(agent) == []


def test_a_stream_dropped_just_before_close_is_recorded(llm: FakeLLM, agent: Agent) -> None:
    for _ in client(llm, agent).chat.completions.create(model="gpt-4o", messages=HELLO, stream=True, max_tokens=30):
        break  # the stream is dropped here: its call is queued for the worker thread
    agent.close()  # waits for the queued call first
    assert [(r.success, tokens(r)[:2]) for r in published(agent)] == [(True, (ESTIMATE, 30))]


def test_an_async_admission_whose_room_went_meanwhile_waits_off_the_loop(llm: FakeLLM) -> None:
    """The room the probe saw can be taken by another thread before the reservation: the admission then
    waits for its grant in a worker thread, never on the loop (simulated: a probe that always says yes)."""
    waiting = Agent(leases=True, lease_wait_s=2)
    wallet: Any = waiting.costs._wallet
    wallet.fits = lambda *args: True  # what an older admission asked first; it is not asked now
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
