"""fleet_agent.integrations.langchain off the happy path: a streamed run without usage (no ``stream_usage``),
or left by its caller, is recorded at its admitted estimate, a call with two choices is counted once, and a
run whose end never comes expires as failed, once, releasing
its lease reservation (the chat model of tests/unit/test_integrations_langchain.py, over the real OpenAI
client and the fake provider)."""

from __future__ import annotations

import logging
from typing import Any
from uuid import uuid4

import pytest
from fleet_agent.integrations import usage as usage_module
from fleet_agent.integrations.langchain import FleetCallbackHandler
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from langchain_core.outputs import ChatGeneration, ChatResult, LLMResult

from emulators.fake_llm import PROMPT_BASE, REPLY_WORDS, FakeLLM
from tests.unit.integrations_support import Agent, agent_fixture, llm_fixture, tokens  # noqa: F401  (fixtures)
from tests.unit.test_integrations_langchain import OpenAIChat, _metadata

ESTIMATE = 3  # "hello there": 11 bytes


def test_a_stream_without_usage_is_recorded_at_its_worst_case(
    llm: FakeLLM, agent: Agent, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(usage_module, "ESTIMATE_WARNING_S", 0.0)  # warned whatever earlier tests warned about
    model = OpenAIChat(base_url=llm.openai_url, max_tokens=20, stream_usage=False)
    config: Any = {"callbacks": [FleetCallbackHandler(agent)]}
    with caplog.at_level(logging.WARNING, logger="fleet_agent"):
        assert "".join(str(c.content) for c in model.stream("hello there", config=config))
    assert "stream_options" not in llm.calls()[0]["body"]
    [record] = agent.records()
    assert (record.success, tokens(record)[:2]) == (True, (ESTIMATE, 20))
    assert any("ended without usage" in m for m in caplog.messages)


def test_a_run_whose_end_never_comes_expires_once(llm: FakeLLM) -> None:
    leased = Agent(leases=True, lease_wait_s=0.05)
    leased.grant("1")
    handler = FleetCallbackHandler(leased, pending_timeout_s=0)
    try:
        lost = uuid4()  # started, then another handler raised before the model ran: no end, no error
        handler.on_chat_model_start({}, [[HumanMessage("hello there")]], run_id=lost,
                                    invocation_params={"model": "gpt-4o", "max_tokens": 100})  # fmt: skip
        lease = leased.costs.lease
        assert lease is not None and lease.reserved_usd > 0
        OpenAIChat(base_url=llm.openai_url).invoke("hello there", config={"callbacks": [handler]})  # expires it
        late = LLMResult(generations=[[ChatGeneration(message=AIMessage("late"))]])
        handler.on_llm_end(late, run_id=lost)  # its end after all: recorded already
        lease = leased.costs.lease
        assert lease is not None and lease.reserved_usd == 0
        assert [r.success for r in leased.records()] == [False, True]
    finally:
        leased.close()


class TwoChoices(OpenAIChat):
    """A chat model asking for two choices the way langchain-openai reports them (``_create_chat_result``):
    each choice's message carries the whole response's usage (the fake answers one choice, given twice)."""

    def _generate(self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kw: Any) -> Any:
        reply = self._client().chat.completions.create(**self._request(messages))
        usage = _metadata(reply.usage)
        generations = [ChatGeneration(message=AIMessage(content=f"choice {i}", usage_metadata=usage)) for i in (0, 1)]
        return ChatResult(generations=generations)


def test_a_call_with_two_choices_is_counted_once(llm: FakeLLM, agent: Agent) -> None:
    TwoChoices(base_url=llm.openai_url).invoke("hello there", config={"callbacks": [FleetCallbackHandler(agent)]})
    assert [tokens(r)[:2] for r in agent.records()] == [(PROMPT_BASE + 2, REPLY_WORDS)]  # not twice


def test_a_stream_left_by_its_caller_is_recorded_at_its_estimate(llm: FakeLLM, agent: Agent) -> None:
    model = OpenAIChat(base_url=llm.openai_url, max_tokens=20)
    stream = model.stream("hello there", config={"callbacks": [FleetCallbackHandler(agent)]})
    next(stream)
    stream.close()  # the caller leaves: LangChain reports GeneratorExit as the run's error
    assert [(r.success, tokens(r)[:2]) for r in agent.records()] == [(True, (ESTIMATE, 20))]  # billed: not free


class BreaksMidStream(OpenAIChat):
    """A chat model whose stream fails after its first chunk (the request was made and partly answered)."""

    def _stream(self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kw: Any) -> Any:
        for chunk in super()._stream(messages, stop, run_manager, **kw):
            yield chunk
            raise ConnectionError("the connection dropped")


def test_a_stream_failing_after_its_first_token_is_recorded_failed_at_its_estimate(llm: FakeLLM, agent: Agent) -> None:
    model = BreaksMidStream(base_url=llm.openai_url, max_tokens=20)
    with pytest.raises(ConnectionError):
        list(model.stream("hello there", config={"callbacks": [FleetCallbackHandler(agent)]}))
    assert [(r.success, tokens(r)[:2]) for r in agent.records()] == [(False, (ESTIMATE, 20))]
