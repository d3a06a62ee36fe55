"""fleet_agent.integrations.litellm when the program stops, retries or is refused, with real LiteLLM calls
against the fake provider: ``drain()`` waits for the events LiteLLM runs after a call returns, an async call
is recorded before ``acompletion`` returns, an abandoned stream is recorded at its estimate, a record the
closed recorder refuses is logged, ``num_retries`` is warned about, and a refusal LiteLLM wraps records
nothing (its ERROR log filtered by ``quiet_refusals``); ``fleet_litellm`` drains at exit until unregistered."""

from __future__ import annotations

import asyncio
import atexit
import gc
import logging
import os
import time
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # before litellm: no price map fetched
os.environ.setdefault("LITELLM_OFFLINE_MODE", "true")  # nor anything else LiteLLM fetches on its own

import litellm
import pytest
from fleet_agent.costs import CallRefused
from fleet_agent.integrations.litellm import _LISTS, FleetLiteLLM, fleet_litellm, quiet_refusals, refused, unregister
from litellm.integrations.custom_logger import CustomLogger

from emulators.fake_llm import PROMPT_BASE, REPLY_WORDS, FakeLLM
from tests.unit.integrations_support import Agent, agent_fixture, llm_fixture, tokens  # noqa: F401  (fixtures)
from tests.unit.test_integrations_litellm import HI, ask, settled

MODEL = "openai/gpt-4o"
ESTIMATE = 2  # "hi there": 8 bytes


def sent(agent: Agent) -> list[Any]:
    """What the recorder published (after close, ``records()`` would flush a closed recorder)."""
    return [r for b in agent.publisher.batches() for r in b.records]


class Slow(CustomLogger):
    """A callback before the fleet's that takes its time: LiteLLM runs a call's callbacks one after another."""

    def log_success_event(self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any) -> None:
        time.sleep(1)


def test_drain_waits_for_a_sync_calls_event_so_close_loses_nothing(llm: FakeLLM) -> None:
    slow = Slow()
    litellm.callbacks.append(slow)  # the event runs in LiteLLM's thread pool after completion() returned
    agent = Agent()
    logger = fleet_litellm(agent)
    try:
        ask(llm, max_tokens=50)
        assert logger.drain(10)
    finally:
        unregister(logger)
        for name in _LISTS:  # LiteLLM copied it into its lists on the call
            while slow in getattr(litellm, name, []):
                getattr(litellm, name).remove(slow)
        agent.close()
    assert [tokens(r)[:2] for r in sent(agent)] == [(PROMPT_BASE + 2, REPLY_WORDS)]


def test_an_async_call_is_recorded_before_acompletion_returns(llm: FakeLLM, agent: Agent) -> None:
    logger = fleet_litellm(agent)
    try:
        asyncio.run(litellm.acompletion(model=MODEL, api_base=llm.openai_url, api_key="x", messages=HI))
        agent.close()  # at once: the success event's task died with the loop
    finally:
        unregister(logger)
    assert [(r.success, tokens(r)[:2]) for r in sent(agent)] == [(True, (PROMPT_BASE + 2, REPLY_WORDS))]


def test_an_abandoned_sync_stream_is_recorded_at_its_estimate(llm: FakeLLM, agent: Agent) -> None:
    logger = fleet_litellm(agent)
    try:
        stream = ask(llm, stream=True, max_tokens=40)
        next(iter(stream))
        del stream
        gc.collect()
        assert not logger.drain(0.3)  # its event never comes
    finally:
        unregister(logger)
    assert [(r.success, tokens(r)[:2]) for r in settled(agent, 1)] == [(True, (ESTIMATE, 40))]


def test_an_abandoned_async_stream_is_recorded_at_its_estimate(llm: FakeLLM, agent: Agent) -> None:
    logger = fleet_litellm(agent)

    async def run() -> None:
        stream = await litellm.acompletion(model=MODEL, api_base=llm.openai_url, api_key="x", messages=HI,
                                           stream=True, max_tokens=30)  # fmt: skip
        async for _ in stream:
            break
        assert not await logger.adrain(0.3)

    try:
        asyncio.run(run())
    finally:
        unregister(logger)
    assert [(r.success, tokens(r)[:2]) for r in settled(agent, 1)] == [(True, (ESTIMATE, 30))]


def test_a_record_the_closed_recorder_refuses_is_logged(llm: FakeLLM, caplog: pytest.LogCaptureFixture) -> None:
    slow = Slow()
    litellm.callbacks.append(slow)  # holds LiteLLM's event back a second: close() surely comes first
    agent = Agent()
    logger = fleet_litellm(agent)
    caplog.set_level(logging.WARNING, logger="fleet_agent")
    try:
        ask(llm)
        agent.close()  # before LiteLLM's event (no drain)
        deadline = time.monotonic() + 10
        while "recorder is closed" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        unregister(logger)
        for name in _LISTS:
            while slow in getattr(litellm, name, []):
                getattr(litellm, name).remove(slow)
    assert "litellm.completion call to openai/gpt-4o not recorded: the cost recorder is closed" in caplog.text


def test_num_retries_is_warned_about_once(llm: FakeLLM, agent: Agent, caplog: pytest.LogCaptureFixture) -> None:
    logger = fleet_litellm(agent)
    caplog.set_level(logging.WARNING, logger="fleet_agent")

    async def run() -> None:
        for _ in range(2):
            llm.fail_next(500, count=1)
            await litellm.acompletion(model=MODEL, api_base=llm.openai_url, api_key="x", messages=HI, num_retries=1)
        await logger.adrain(0.5)

    try:
        asyncio.run(run())
    finally:
        unregister(logger)
    assert len(llm.calls()) == 4  # each call's retry was sent (and billed) without any callback
    assert caplog.text.count("retries it without its callbacks") == 1
    assert [r.success for r in settled(agent, 2)] == [False, False]  # what the fleet sees: the failed attempts


def test_a_refusal_litellm_wraps_records_nothing(llm: FakeLLM, agent: Agent) -> None:
    logger = fleet_litellm(agent)
    agent.pause()
    try:
        with pytest.raises(Exception) as raised:
            litellm.responses(model=MODEL, input="hi", api_base=llm.openai_url, api_key="x")
        assert refused(raised.value) and raised.type.__name__ == "APIConnectionError"
    finally:
        unregister(logger)
    assert llm.calls() == [] and settled(agent, 0) == []


def test_quiet_refusals_drops_the_error_litellm_logs_for_a_refused_call(llm: FakeLLM, agent: Agent) -> None:
    seen: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = seen.append  # type: ignore[method-assign]
    litellm_log = logging.getLogger("LiteLLM")
    litellm_log.addHandler(handler)
    logger = fleet_litellm(agent)
    agent.pause()
    try:
        for quiet in (False, True):
            if quiet:
                litellm_log.addFilter(quiet_refusals)
            seen.clear()
            with pytest.raises(CallRefused):
                ask(llm)
            errors = [r for r in seen if r.levelno >= logging.ERROR]
            assert bool(errors) is not quiet
    finally:
        litellm_log.removeFilter(quiet_refusals)
        litellm_log.removeHandler(handler)
        unregister(logger)


@pytest.fixture(autouse=True)
def _no_leftover_loggers() -> Any:
    yield
    assert not any(isinstance(c, FleetLiteLLM) for c in litellm.callbacks)


def test_fleet_litellm_drains_at_exit_until_unregistered(agent: Agent, monkeypatch: pytest.MonkeyPatch) -> None:
    hooks: list[Any] = []
    monkeypatch.setattr(atexit, "register", lambda fn, *args: hooks.append((fn, args)))
    monkeypatch.setattr(atexit, "unregister", lambda fn: hooks.remove(next(h for h in hooks if h[0] == fn)))
    logger = fleet_litellm(agent)
    assert hooks == [(logger.drain, (5.0,))]
    unregister(logger)
    assert hooks == []
