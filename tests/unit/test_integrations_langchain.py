"""fleet_agent.integrations.langchain: a LangChain chat model over the real OpenAI client and the fake
provider, run by langchain-core with the handler as its callback; usage from ``usage_metadata``, streaming
too; failures recorded; held agents refused before the request leaves.

No LangChain provider package is installed (only langchain-core, the extra), so the chat model is a small
``BaseChatModel`` over ``openai.OpenAI`` here, reporting usage the way langchain-openai does."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from fleet_agent.costs import CallRefused
from fleet_agent.integrations.langchain import FleetCallbackHandler
from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, BaseLLM
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult, Generation, LLMResult

from emulators.fake_llm import PROMPT_BASE, REPLY_WORDS, FakeLLM
from tests.unit.integrations_support import Agent, agent_fixture, leased_fixture, llm_fixture, tokens  # noqa: F401


def _metadata(usage: Any) -> UsageMetadata:
    """OpenAI's usage as langchain-openai reports it."""
    cached = usage.prompt_tokens_details.cached_tokens if usage.prompt_tokens_details else 0
    reasoning = usage.completion_tokens_details.reasoning_tokens if usage.completion_tokens_details else 0
    return UsageMetadata(
        input_tokens=usage.prompt_tokens,
        output_tokens=usage.completion_tokens,
        total_tokens=usage.total_tokens,
        input_token_details={"cache_read": cached or 0},
        output_token_details={"reasoning": reasoning or 0},
    )


CLIENTS: dict[str, openai.OpenAI] = {}


class OpenAIChat(BaseChatModel):
    """A chat model over the real OpenAI client."""

    base_url: str
    model: str = "gpt-4o"
    max_tokens: int | None = None
    #: Whether a stream asks for its usage (langchain-openai's ``stream_usage``).
    stream_usage: bool = True

    @property
    def _llm_type(self) -> str:
        return "test-openai"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model": self.model, "max_tokens": self.max_tokens}

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> Any:
        params = super()._get_ls_params(stop=stop, **kwargs)
        params["ls_model_name"] = self.model
        if self.max_tokens is not None:
            params["ls_max_tokens"] = self.max_tokens
        return params

    def _client(self) -> openai.OpenAI:
        if self.base_url not in CLIENTS:  # one client (and its connections) per server, as an application keeps
            CLIENTS[self.base_url] = openai.OpenAI(base_url=self.base_url, api_key="x", max_retries=0)
        return CLIENTS[self.base_url]

    def _request(self, messages: list[BaseMessage]) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [{"role": "user", "content": m.content} for m in messages],
        }
        if self.max_tokens is not None:
            body["max_tokens"] = self.max_tokens
        return body

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        reply = self._client().chat.completions.create(**self._request(messages))
        message = AIMessage(content=reply.choices[0].message.content or "", usage_metadata=_metadata(reply.usage))
        return ChatResult(generations=[ChatGeneration(message=message)])

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        options = {"include_usage": True} if self.stream_usage else openai.NOT_GIVEN
        stream = self._client().chat.completions.create(**self._request(messages), stream=True, stream_options=options)
        for chunk in stream:
            text = chunk.choices[0].delta.content or "" if chunk.choices else ""
            usage = _metadata(chunk.usage) if chunk.usage else None
            yield ChatGenerationChunk(message=AIMessageChunk(content=text, usage_metadata=usage))


def test_invoke_and_stream_record_usage(llm: FakeLLM, agent: Agent) -> None:
    llm.usage(cached=3, reasoning=4)
    model = OpenAIChat(base_url=llm.openai_url)
    config: Any = {"callbacks": [FleetCallbackHandler(agent)]}
    assert model.invoke("hello there", config=config).content
    assert len("".join(str(c.content) for c in model.stream("hello there", config=config)).split()) == REPLY_WORDS
    records = agent.records()
    assert [(r.model, r.operation, r.success) for r in records] == [("gpt-4o", "langchain", True)] * 2
    assert [tokens(r) for r in records] == [(PROMPT_BASE + 2, REPLY_WORDS + 4, 3, 0, 4)] * 2


def test_failure_recorded_as_failed(llm: FakeLLM, agent: Agent) -> None:
    llm.fail_next(500)
    with pytest.raises(openai.InternalServerError):
        OpenAIChat(base_url=llm.openai_url).invoke("hi", config={"callbacks": [FleetCallbackHandler(agent)]})
    [record] = agent.records()
    assert (record.success, record.model) == (False, "gpt-4o")


def test_refused_before_the_request(llm: FakeLLM, agent: Agent, leased: Agent) -> None:
    agent.pause()
    model = OpenAIChat(base_url=llm.openai_url)
    with pytest.raises(CallRefused):
        model.invoke("hi", config={"callbacks": [FleetCallbackHandler(agent)]})

    async def run() -> None:
        with pytest.raises(CallRefused):
            await model.ainvoke("hi", config={"callbacks": [FleetCallbackHandler(agent)]})

    asyncio.run(run())
    big = OpenAIChat(base_url=llm.openai_url, max_tokens=4000)
    with pytest.raises(CallRefused):  # the lease cannot cover it
        big.invoke("hi", config={"callbacks": [FleetCallbackHandler(leased)]})
    assert llm.calls() == [] and agent.records() == [] and leased.records() == []


class OpenAIText(BaseLLM):
    """A text LLM over the real OpenAI client (chat API), reporting OpenAI's usage in ``llm_output``."""

    base_url: str
    model_name: str = "gpt-4o-mini"

    @property
    def _llm_type(self) -> str:
        return "test-openai-text"

    def _generate(
        self,
        prompts: list[str],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> LLMResult:
        client = openai.OpenAI(base_url=self.base_url, api_key="x", max_retries=0)
        generations, usage = [], {"prompt_tokens": 0, "completion_tokens": 0}
        for prompt in prompts:
            reply = client.chat.completions.create(
                model=self.model_name, messages=[{"role": "user", "content": prompt}]
            )
            generations.append([Generation(text=reply.choices[0].message.content or "")])
            assert reply.usage is not None
            usage = {key: usage[key] + getattr(reply.usage, key) for key in usage}
        return LLMResult(generations=generations, llm_output={"token_usage": usage})


def test_text_llm_usage_from_llm_output(llm: FakeLLM, agent: Agent) -> None:
    text = OpenAIText(base_url=llm.openai_url)
    assert text.invoke("one two three", config={"callbacks": [FleetCallbackHandler(agent, operation="draft")]})
    [record] = agent.records()
    assert (record.model, record.operation, tokens(record)) == ("gpt-4o-mini", "draft", (10, REPLY_WORDS, 0, 0, 0))
    agent.pause()
    with pytest.raises(CallRefused):
        text.invoke("x", config={"callbacks": [FleetCallbackHandler(agent)]})
    assert len(llm.calls()) == 1
