"""fleet_agent.integrations.anthropic: the real Anthropic client against the fake provider; the record's input
is the whole prompt (cache reads and writes included), failures recorded, held agents refused before the
request leaves."""

from __future__ import annotations

import asyncio
from typing import Any

import anthropic
import pytest
from fleet_agent.costs import CallRefused
from fleet_agent.integrations.anthropic import fleet_anthropic

from emulators.fake_llm import PROMPT_BASE, REPLY_WORDS, FakeLLM
from tests.unit.integrations_support import Agent, agent_fixture, leased_fixture, llm_fixture, tokens  # noqa: F401  (fixtures)

HI: Any = [{"role": "user", "content": "hi there"}]  # + "be brief": 4 words, 11 input tokens
MODEL = "claude-sonnet-4-5"


def client(llm: FakeLLM, agent: Agent) -> anthropic.Anthropic:
    return fleet_anthropic(anthropic.Anthropic(base_url=llm.url, api_key="x", max_retries=0), agent)


def test_messages_input_includes_the_cache(llm: FakeLLM, agent: Agent) -> None:
    llm.usage(cached=5, cache_write=3)
    message = client(llm, agent).messages.create(model=MODEL, max_tokens=100, system="be brief", messages=HI)
    assert message.usage.input_tokens == PROMPT_BASE + 4 - 8  # Anthropic's leaves the cache out
    [record] = agent.records()
    assert (record.model, record.operation, record.success) == (MODEL, "messages", True)
    assert tokens(record) == (PROMPT_BASE + 4, REPLY_WORDS, 5, 3, 0)


def test_stream_events_and_stream_helper(llm: FakeLLM, agent: Agent) -> None:
    llm.usage(cached=2, cache_write=1)
    c = client(llm, agent)
    events = list(c.messages.create(model=MODEL, max_tokens=6, messages=HI, stream=True))
    assert events[-1].type == "message_stop"
    with c.messages.stream(model=MODEL, max_tokens=100, messages=HI) as stream:
        assert len(stream.get_final_message().content) == 1
    raw, helper = agent.records()
    assert tokens(raw) == (PROMPT_BASE + 2, 6, 2, 1, 0)
    assert tokens(helper) == (PROMPT_BASE + 2, REPLY_WORDS, 2, 1, 0)


def test_failures_recorded_as_failed(llm: FakeLLM, agent: Agent) -> None:
    c = client(llm, agent)
    llm.fail_next(500)
    with pytest.raises(anthropic.InternalServerError):
        c.messages.create(model=MODEL, max_tokens=10, messages=HI)
    llm.fail_next(429)
    with pytest.raises(anthropic.RateLimitError), c.messages.stream(model=MODEL, max_tokens=10, messages=HI):
        pass
    assert [r.success for r in agent.records()] == [False, False]


def test_a_stream_block_raising_is_failed_only_before_the_whole_answer(llm: FakeLLM, agent: Agent) -> None:
    """The caller's code raising after the whole answer came is not a model failure (breakers, error
    alerts); raising before it is, with the usage of what came."""
    c = client(llm, agent)
    with pytest.raises(ValueError), c.messages.stream(model=MODEL, max_tokens=100, messages=HI) as stream:
        stream.get_final_message()
        raise ValueError("the caller's own bug")
    with pytest.raises(ValueError), c.messages.stream(model=MODEL, max_tokens=100, messages=HI) as stream:
        next(iter(stream))  # message_start: the input known, one output token so far
        raise ValueError("left half-read")
    assert [(r.success, tokens(r)[:2]) for r in agent.records()] == [
        (True, (PROMPT_BASE + 2, REPLY_WORDS)),
        (False, (PROMPT_BASE + 2, 1)),
    ]


def test_held_agent_refused_before_the_request(llm: FakeLLM, agent: Agent, leased: Agent) -> None:
    agent.pause()
    with pytest.raises(CallRefused):
        client(llm, agent).messages.create(model=MODEL, max_tokens=10, messages=HI)
    with pytest.raises(CallRefused), client(llm, agent).messages.stream(model=MODEL, max_tokens=10, messages=HI):
        pass  # refused as its block is entered, where the request would leave
    with pytest.raises(CallRefused):
        client(llm, leased).messages.create(model=MODEL, max_tokens=4000, messages=HI)
    assert llm.calls() == [] and agent.records() == [] and leased.records() == []


def test_async_client(llm: FakeLLM, agent: Agent) -> None:
    llm.usage(cached=1)

    async def run() -> None:
        c = fleet_anthropic(anthropic.AsyncAnthropic(base_url=llm.url, api_key="x", max_retries=0), agent)
        await c.messages.create(model=MODEL, max_tokens=100, messages=HI)
        stream = await c.messages.create(model=MODEL, max_tokens=100, messages=HI, stream=True)
        assert [e.type async for e in stream][-1] == "message_stop"
        async with c.messages.stream(model=MODEL, max_tokens=100, messages=HI) as helper:
            await helper.get_final_message()

    asyncio.run(run())
    assert [tokens(r) for r in agent.records()] == [(PROMPT_BASE + 2, REPLY_WORDS, 1, 0, 0)] * 3
