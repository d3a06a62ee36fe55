"""The other ways a client sends a request, with the real OpenAI and Anthropic clients against the fake
provider: raw answers (``with_raw_response``, ``with_streaming_response``, streamed or not) are recorded with
their real usage, read through their ``parse()``; the structured-output and beta paths (``parse``,
``beta.chat.completions``, ``responses.parse``, Anthropic's ``beta.messages``) are refused while the agent
is held and recorded otherwise."""

from __future__ import annotations

import asyncio
import gc
import json
from typing import Any

import anthropic
import openai
import pytest
from fleet_agent.costs import CallRefused
from fleet_agent.integrations.anthropic import fleet_anthropic
from fleet_agent.integrations.openai import fleet_openai

from emulators.fake_llm import PROMPT_BASE, REPLY_WORDS, FakeLLM
from tests.unit.integrations_support import Agent, agent_fixture, llm_fixture, tokens  # noqa: F401  (fixtures)
from tests.unit.test_integrations_lifecycle import CLAUDE, ESTIMATE, HELLO, HI, claude, client, recorded

REAL = (PROMPT_BASE + 3, REPLY_WORDS)  # "hello there fleet", the whole reply
CLAUDE_REAL = (PROMPT_BASE + 2, REPLY_WORDS)  # "hi there"


def calls(agent: Agent) -> list[tuple[bool, tuple[int, int]]]:
    return [(r.success, tokens(r)[:2]) for r in agent.records()]


# -- raw answers (S2) ---------------------------------------------------------------------------------------


def test_a_raw_answer_is_recorded_with_its_usage(llm: FakeLLM, agent: Agent) -> None:
    raw = client(llm, agent).chat.completions.with_raw_response.create(model="gpt-4o", messages=HELLO, max_tokens=5)
    assert calls(agent) == [(True, (PROMPT_BASE + 3, 5))]  # the usage, not the estimate (5, 5)
    assert raw.parse().usage.completion_tokens == 5  # the caller's parse still works


def test_a_raw_stream_is_recorded_when_its_parsed_stream_ends(llm: FakeLLM, agent: Agent) -> None:
    chat = client(llm, agent).chat.completions
    raw = chat.with_raw_response.create(model="gpt-4o", messages=HELLO, stream=True)
    chunks = list(raw.parse())
    assert len(chunks) == REPLY_WORDS + 2 and all(c.usage is None for c in chunks)  # the usage chunk hidden
    assert raw.parse() is raw.parse()
    with chat.with_streaming_response.create(model="gpt-4o", messages=HELLO, stream=True) as response:
        assert len(list(response.parse())) == REPLY_WORDS + 2
    assert calls(agent) == [(True, REAL)] * 2
    assert len(llm.calls()) == 2


def test_an_anthropic_raw_answer_and_raw_stream_are_recorded(llm: FakeLLM, agent: Agent) -> None:
    messages = claude(llm, agent).messages
    raw = messages.with_raw_response.create(model=CLAUDE, max_tokens=100, messages=HI)
    assert raw.parse().usage.output_tokens == REPLY_WORDS
    streamed = messages.with_raw_response.create(model=CLAUDE, max_tokens=100, messages=HI, stream=True)
    assert [event.type for event in streamed.parse()][-1] == "message_stop"
    assert calls(agent) == [(True, CLAUDE_REAL)] * 2


def test_a_raw_stream_never_parsed_is_recorded_once_at_its_estimate(llm: FakeLLM, agent: Agent) -> None:
    raw = client(llm, agent).chat.completions.with_raw_response.create(
        model="gpt-4o", messages=HELLO, stream=True, max_tokens=40
    )
    assert agent.records() == []  # its stream may still be read
    del raw
    gc.collect()
    assert [(r.success, tokens(r)[:2]) for r in recorded(agent, 1)] == [(True, (ESTIMATE, 40))]  # billed: not free


def test_async_raw_answers_are_recorded(llm: FakeLLM, agent: Agent) -> None:
    async def run() -> None:
        c = fleet_openai(openai.AsyncOpenAI(base_url=llm.openai_url, api_key="x", max_retries=0), agent)
        raw = await c.chat.completions.with_raw_response.create(model="gpt-4o", messages=HELLO, stream=True)
        assert len([chunk async for chunk in raw.parse()]) == REPLY_WORDS + 2
        async with c.chat.completions.with_streaming_response.create(model="gpt-4o", messages=HELLO) as response:
            assert (await response.parse()).usage.completion_tokens == REPLY_WORDS
        async with c.chat.completions.with_streaming_response.create(
            model="gpt-4o", messages=HELLO, stream=True
        ) as response:
            assert len([chunk async for chunk in await response.parse()]) == REPLY_WORDS + 2

    asyncio.run(run())
    assert calls(agent) == [(True, REAL)] * 3


def test_async_anthropic_raw_answers_and_beta_stream_are_recorded(llm: FakeLLM, agent: Agent) -> None:
    async def run() -> None:
        c = fleet_anthropic(anthropic.AsyncAnthropic(base_url=llm.url, api_key="x", max_retries=0), agent)
        await c.messages.with_raw_response.create(model=CLAUDE, max_tokens=100, messages=HI)
        raw = await c.messages.with_raw_response.create(model=CLAUDE, max_tokens=100, messages=HI, stream=True)
        assert [event.type async for event in await raw.parse()][-1] == "message_stop"
        async with c.messages.with_streaming_response.create(
            model=CLAUDE, max_tokens=100, messages=HI, stream=True
        ) as response:
            assert [event.type async for event in await response.parse()][-1] == "message_stop"
        async with c.beta.messages.stream(model=CLAUDE, max_tokens=100, messages=HI) as stream:
            await stream.get_final_message()

    asyncio.run(run())
    assert calls(agent) == [(True, CLAUDE_REAL)] * 4


# -- parse and beta paths (S3) -------------------------------------------------------------------------------


def test_parse_and_beta_paths_are_refused_while_held(llm: FakeLLM, agent: Agent) -> None:
    c, a = client(llm, agent), claude(llm, agent)
    agent.pause()
    sends: list[Any] = [
        lambda: c.chat.completions.parse(model="gpt-4o", messages=HELLO),
        lambda: c.beta.chat.completions.parse(model="gpt-4o", messages=HELLO),
        lambda: c.responses.parse(model="gpt-4o", input="hello there fleet"),
        lambda: a.beta.messages.create(model=CLAUDE, max_tokens=10, messages=HI),
        lambda: a.beta.messages.stream(model=CLAUDE, max_tokens=10, messages=HI).__enter__(),
    ]
    for send in sends:
        with pytest.raises(CallRefused):
            send()
    assert llm.calls() == [] and agent.records() == []


def test_parse_and_beta_paths_are_recorded(llm: FakeLLM, agent: Agent) -> None:
    c, a = client(llm, agent), claude(llm, agent)
    assert c.chat.completions.parse(model="gpt-4o", messages=HELLO).usage is not None
    c.beta.chat.completions.parse(model="gpt-4o", messages=HELLO)
    c.responses.parse(model="gpt-4o", input="hello there fleet")
    a.beta.messages.create(model=CLAUDE, max_tokens=100, messages=HI)
    with a.beta.messages.stream(model=CLAUDE, max_tokens=100, messages=HI) as stream:
        stream.get_final_message()
    assert [r.operation for r in agent.records()] == ["chat.completions"] * 2 + ["responses"] + ["messages"] * 2
    assert calls(agent) == [(True, REAL)] * 3 + [(True, CLAUDE_REAL)] * 2


def test_tool_definitions_count_in_the_prompt_estimate(llm: FakeLLM, agent: Agent) -> None:
    tool = {"type": "function", "function": {"name": "lookup", "description": "Look a word up", "parameters": {}}}
    llm.usage(omit=True)  # the call is recorded at its estimate
    client(llm, agent).chat.completions.create(model="gpt-4o", messages=HELLO, tools=[tool], max_tokens=10)
    tool_tokens = -(-len(json.dumps([tool]).encode()) // 4)
    assert [tokens(r)[:2] for r in agent.records()] == [(ESTIMATE + tool_tokens, 10)]
