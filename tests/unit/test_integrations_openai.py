"""fleet_agent.integrations.openai: the real OpenAI client against the fake provider, every call recorded
with its exact usage, failures recorded, held agents refused before the request leaves."""

from __future__ import annotations

import asyncio
from typing import Any

import openai
import pytest
from fleet_agent.costs import CallRefused
from fleet_agent.integrations.openai import fleet_openai

from emulators.fake_llm import PROMPT_BASE, REPLY_WORDS, FakeLLM
from tests.unit.integrations_support import Agent, agent_fixture, leased_fixture, llm_fixture, tokens  # noqa: F401  (fixtures)

HELLO: Any = [{"role": "user", "content": "hello there fleet"}]  # 3 words: 10 input tokens


def client(llm: FakeLLM, agent: Agent) -> openai.OpenAI:
    return fleet_openai(openai.OpenAI(base_url=llm.openai_url, api_key="x", max_retries=0), agent)


def test_chat_records_cached_and_reasoning_tokens(llm: FakeLLM, agent: Agent) -> None:
    llm.usage(cached=4, reasoning=6)
    reply = client(llm, agent).chat.completions.create(model="gpt-4o", messages=HELLO)
    assert reply.choices[0].message.content
    [record] = agent.records()
    assert (record.model, record.operation, record.success) == ("gpt-4o", "chat.completions", True)
    assert tokens(record) == (PROMPT_BASE + 3, REPLY_WORDS + 6, 4, 0, 6)


def test_chat_stream_adds_usage_and_hides_its_chunk(llm: FakeLLM, agent: Agent) -> None:
    llm.usage(cached=2)
    chat = client(llm, agent).chat.completions
    chunks = list(chat.create(model="gpt-4o", messages=HELLO, stream=True, max_tokens=5))
    assert llm.calls()[0]["body"]["stream_options"] == {"include_usage": True}
    assert all(c.choices for c in chunks)  # the caller did not ask for the usage chunk: not passed on
    assert "".join(c.choices[0].delta.content or "" for c in chunks).split().__len__() == 5
    asked = list(chat.create(model="gpt-4o", messages=HELLO, stream=True, stream_options={"include_usage": True}))
    assert asked[-1].usage is not None and not asked[-1].choices  # asked for: passed on
    first, second = agent.records()
    assert tokens(first) == (10, 5, 2, 0, 0) and tokens(second) == (10, REPLY_WORDS, 2, 0, 0)


def test_stream_closed_early_is_recorded_once(llm: FakeLLM, agent: Agent) -> None:
    chat = client(llm, agent).chat.completions
    with chat.create(model="gpt-4o", messages=HELLO, stream=True) as stream:
        next(iter(stream))
    assert len(agent.records()) == 1


def test_responses_and_embeddings(llm: FakeLLM, agent: Agent) -> None:
    llm.usage(cached=3, reasoning=1)
    c = client(llm, agent)
    c.responses.create(model="o4-mini", input="two words", max_output_tokens=50)
    events = list(c.responses.create(model="o4-mini", input="two words", stream=True))
    assert events[-1].type == "response.completed"
    c.embeddings.create(model="text-embedding-3-small", input=["a b c", "d"])
    plain, streamed, embedded = agent.records()
    assert tokens(plain) == tokens(streamed) == (9, REPLY_WORDS + 1, 3, 0, 1)
    assert (embedded.operation, tokens(embedded)) == (
        "embeddings",
        (PROMPT_BASE + 4, 0, 0, 0, 0),
    )  # no cache for embeddings


def test_failure_recorded_as_failed(llm: FakeLLM, agent: Agent) -> None:
    llm.fail_next(500)
    with pytest.raises(openai.InternalServerError):
        client(llm, agent).chat.completions.create(model="gpt-4o", messages=HELLO)
    llm.fail_next(429)
    with pytest.raises(openai.RateLimitError):
        list(client(llm, agent).chat.completions.create(model="gpt-4o", messages=HELLO, stream=True))
    assert [(r.success, r.input_tokens) for r in agent.records()] == [(False, 0), (False, 0)]


def test_held_agent_refused_before_the_request(llm: FakeLLM, agent: Agent) -> None:
    agent.pause()
    c = client(llm, agent)
    with pytest.raises(CallRefused) as refused:
        c.chat.completions.create(model="gpt-4o", messages=HELLO)
    assert refused.value.reason == "pause"
    with pytest.raises(CallRefused):
        c.embeddings.create(model="text-embedding-3-small", input="x")
    assert llm.calls() == [] and agent.records() == []


def test_lease_that_cannot_cover_the_worst_case_refuses(llm: FakeLLM, leased: Agent) -> None:
    with pytest.raises(CallRefused) as refused:
        client(llm, leased).chat.completions.create(model="gpt-4o", messages=HELLO, max_tokens=4000)
    assert refused.value.reason in ("lease_exhausted", "unknown_model")
    assert llm.calls() == []


def test_lease_admits_what_it_covers_and_refuses_the_rest(llm: FakeLLM, leased: Agent) -> None:
    leased.grant("0.01")
    chat = client(llm, leased).chat.completions
    chat.create(model="gpt-4o", messages=HELLO, max_tokens=500)  # worst case about $0.002: admitted
    with pytest.raises(CallRefused) as refused:
        chat.create(model="gpt-4o", messages=HELLO, max_tokens=5000)  # about $0.02: more than the lease
    assert refused.value.reason == "lease_exhausted"
    assert len(llm.calls()) == 1 and [r.success for r in leased.records()] == [True]


def test_async_client(llm: FakeLLM, agent: Agent) -> None:
    llm.usage(cached=1, reasoning=2)

    async def run() -> None:
        c = fleet_openai(openai.AsyncOpenAI(base_url=llm.openai_url, api_key="x", max_retries=0), agent)
        await c.chat.completions.create(model="gpt-4o", messages=HELLO)
        stream = await c.chat.completions.create(model="gpt-4o", messages=HELLO, stream=True)
        assert len([chunk async for chunk in stream]) == REPLY_WORDS + 2
        agent.pause()
        with pytest.raises(CallRefused):
            await c.responses.create(model="gpt-4o", input="x")

    asyncio.run(run())
    assert [tokens(r) for r in agent.records()] == [(10, REPLY_WORDS + 2, 1, 0, 2)] * 2
    assert len(llm.calls()) == 2
