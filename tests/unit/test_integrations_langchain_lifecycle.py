"""fleet_agent.integrations.langchain off the happy path: a streamed run without usage (no ``stream_usage``)
is recorded at its admitted worst case, and a run whose end never comes expires as failed, once, releasing
its lease reservation (the chat model of tests/unit/test_integrations_langchain.py, over the real OpenAI
client and the fake provider)."""

from __future__ import annotations

import logging
from typing import Any
from uuid import uuid4

import pytest
from fleet_agent.integrations import usage as usage_module
from fleet_agent.integrations.langchain import FleetCallbackHandler
from langchain_core.messages import AIMessage, HumanMessage
from langchain_core.outputs import ChatGeneration, LLMResult

from emulators.fake_llm import FakeLLM
from tests.unit.integrations_support import Agent, agent_fixture, llm_fixture, tokens  # noqa: F401  (fixtures)
from tests.unit.test_integrations_langchain import OpenAIChat

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
