"""fleet_agent.integrations.litellm: real LiteLLM calls (its OpenAI provider) against the fake provider,
recorded from its success and failure events, held agents refused before the request leaves."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # before litellm: no price map fetched
os.environ.setdefault("LITELLM_OFFLINE_MODE", "true")  # nor anything else LiteLLM fetches on its own

import litellm
import pytest
from fleet_agent.contracts import CostRecord
from fleet_agent.costs import CallRefused
from fleet_agent.integrations.litellm import FleetLiteLLM, fleet_litellm, fleet_model, unregister

from emulators.fake_llm import PROMPT_BASE, REPLY_WORDS, FakeLLM
from tests.unit.integrations_support import Agent, agent_fixture, leased_fixture, llm_fixture, tokens  # noqa: F401

HI: Any = [{"role": "user", "content": "hi there"}]


@pytest.fixture
def logger(agent: Agent) -> Iterator[FleetLiteLLM]:
    made = fleet_litellm(agent)
    yield made
    unregister(made)


def settled(agent: Agent, count: int) -> list[CostRecord]:
    """The records once ``count`` are there: LiteLLM runs its sync success events on a worker thread."""
    deadline = time.monotonic() + 10
    while len(agent.records()) < count and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.2)  # and no more than that come
    return agent.records()


def ask(llm: FakeLLM, **kw: Any) -> Any:
    return litellm.completion(model="openai/gpt-4o", api_base=llm.openai_url, api_key="x", messages=HI, **kw)


def test_sync_calls_recorded_with_usage(llm: FakeLLM, agent: Agent, logger: FleetLiteLLM) -> None:
    llm.usage(cached=3, reasoning=2)
    ask(llm, max_tokens=50)
    for _ in ask(llm, stream=True, stream_options={"include_usage": True}):
        pass
    first, streamed = settled(agent, 2)
    assert (first.model, first.operation, first.success) == ("openai/gpt-4o", "litellm.completion", True)
    assert tokens(first) == tokens(streamed) == (PROMPT_BASE + 2, REPLY_WORDS + 2, 3, 0, 2)


def test_async_calls_admitted_and_recorded(llm: FakeLLM, agent: Agent, logger: FleetLiteLLM) -> None:
    llm.usage(cached=1)

    async def run() -> None:
        await litellm.acompletion(model="openai/gpt-4o", api_base=llm.openai_url, api_key="x", messages=HI)
        usage = {"include_usage": True}
        stream = await litellm.acompletion(
            model="openai/gpt-4o", api_base=llm.openai_url, api_key="x", messages=HI, stream=True, stream_options=usage
        )
        async for _ in stream:
            pass
        await asyncio.sleep(0.3)  # the async success events run as tasks of this loop

    asyncio.run(run())
    records = settled(agent, 2)
    assert [tokens(r) for r in records] == [(PROMPT_BASE + 2, REPLY_WORDS, 1, 0, 0)] * 2
    assert {r.operation for r in records} == {"litellm.acompletion"}


def test_failure_recorded_as_failed(llm: FakeLLM, agent: Agent, logger: FleetLiteLLM) -> None:
    llm.fail_next(500)
    with pytest.raises(litellm.InternalServerError):
        ask(llm, max_retries=0)
    [record] = settled(agent, 1)
    assert (record.success, record.model) == (False, "openai/gpt-4o")


def test_held_agent_refused_before_the_request(llm: FakeLLM, agent: Agent, logger: FleetLiteLLM) -> None:
    agent.pause()
    with pytest.raises(CallRefused):
        ask(llm)

    async def run() -> None:
        with pytest.raises(CallRefused):
            await litellm.acompletion(model="openai/gpt-4o", api_base=llm.openai_url, api_key="x", messages=HI)
        await asyncio.sleep(0.3)

    asyncio.run(run())
    assert llm.calls() == [] and settled(agent, 0) == []


def test_async_lease_refusal_and_proxy_hook(llm: FakeLLM, leased: Agent) -> None:
    logger = fleet_litellm(leased)
    try:

        async def run() -> None:
            with pytest.raises(CallRefused):
                await litellm.acompletion(model="openai/gpt-4o", api_base=llm.openai_url, api_key="x",
                                          messages=HI, max_tokens=4000)  # fmt: skip
            data = {"model": "gpt-4o", "messages": HI, "max_tokens": 4000, "litellm_call_id": "proxy-1"}
            with pytest.raises(CallRefused):  # the proxy's hook refuses with the same admission
                await logger.async_pre_call_hook(None, None, data, "acompletion")

        asyncio.run(run())
    finally:
        unregister(logger)
    assert llm.calls() == [] and settled(leased, 0) == []


@pytest.mark.parametrize(
    ("model", "provider", "recorded"),
    [
        ("gpt-4o", None, "openai/gpt-4o"),
        ("openai/gpt-4o", None, "openai/gpt-4o"),
        ("gpt-4o", "openai", "openai/gpt-4o"),  # an event's model, its prefix stripped
        ("groq/llama-3.3-70b-versatile", None, "groq/llama-3.3-70b-versatile"),
        ("llama-3.3-70b-versatile", "groq", "groq/llama-3.3-70b-versatile"),
        ("openrouter/openai/gpt-4o", None, "openrouter/openai/gpt-4o"),
        (
            "bedrock/anthropic.claude-3-5-sonnet-20240620-v1:0",
            None,
            "bedrock/anthropic.claude-3-5-sonnet-20240620-v1:0",
        ),
        ("text-embedding-3-small", None, "openai/text-embedding-3-small"),
        ("my-proxy-alias", None, "my-proxy-alias"),  # LiteLLM cannot route it: kept
    ],
)
def test_the_model_is_recorded_with_the_provider_litellm_routes_it_to(
    model: str, provider: str | None, recorded: str
) -> None:
    assert fleet_model(model, provider) == recorded


def test_a_provider_prefixed_call_is_recorded_under_the_name_the_fleet_prices(
    agent: Agent, logger: FleetLiteLLM
) -> None:
    # Groq's bare name is priced by no catalog entry; its groq/ form is (tests/unit/test_price_names.py).
    # (LiteLLM's mock response: its Groq provider cannot parse the fake provider's replies.)
    model, reply = "groq/llama-3.3-70b-versatile", "hello"
    litellm.completion(model=model, messages=HI, mock_response=reply)

    async def run() -> None:
        await litellm.acompletion(model=model, messages=HI, mock_response=reply)
        await asyncio.sleep(0.3)

    asyncio.run(run())
    assert [r.model for r in settled(agent, 2)] == [model] * 2
