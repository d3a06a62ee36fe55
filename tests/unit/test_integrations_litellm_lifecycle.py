"""fleet_agent.integrations.litellm off the happy path, with real LiteLLM calls against the fake provider: a
call whose provider sent no usage is recorded at its worst case (LiteLLM reports zeros then), an admission
whose end event never comes expires at its estimate and releases its reservation (once, a late event records
nothing), and an async call waiting for its lease leaves the event loop running."""

from __future__ import annotations

import asyncio
import os
from datetime import UTC, datetime, timedelta
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # before litellm: no price map fetched
os.environ.setdefault("LITELLM_OFFLINE_MODE", "true")  # nor anything else LiteLLM fetches on its own

import litellm
import pytest
from fleet_agent.integrations.litellm import FleetLiteLLM, fleet_litellm, unregister

from emulators.fake_llm import FakeLLM
from tests.unit.integrations_support import Agent, agent_fixture, llm_fixture, tokens  # noqa: F401  (fixtures)
from tests.unit.test_integrations_litellm import HI, settled
from tests.unit.test_sdk_lease_recorder import PRICE, lease

MODEL = "openai/gpt-4o"
ESTIMATE = 2  # "hi there": 8 bytes


def funded(wait_s: float = 0.05, usd: str | None = "1") -> Agent:
    """An agent with leases on; ``usd`` granted for openai/gpt-4o (the name LiteLLM calls are recorded under)."""
    made = Agent(leases=True, lease_wait_s=wait_s)
    if usd is not None:
        grant(made, usd)
    return made


def grant(agent: Agent, usd: str) -> None:
    now = datetime.now(UTC)
    agent.costs.apply(lease("aaaaaaaaaaaa.1", usd, issued=now, expires=now + timedelta(minutes=10),
                            prices={MODEL: PRICE}))  # fmt: skip


def test_calls_whose_provider_sent_no_usage_are_recorded_at_their_worst_case(llm: FakeLLM, agent: Agent) -> None:
    logger = fleet_litellm(agent)
    llm.usage(omit=True)
    try:
        litellm.completion(model=MODEL, api_base=llm.openai_url, api_key="x", messages=HI, max_tokens=33)

        async def run() -> None:
            await litellm.acompletion(model=MODEL, api_base=llm.openai_url, api_key="x", messages=HI, max_tokens=44)
            await asyncio.sleep(0.3)  # the async success events run as tasks of this loop

        asyncio.run(run())
        records = settled(agent, 2)
    finally:
        unregister(logger)
    assert sorted((r.success, tokens(r)[:2]) for r in records) == [(True, (ESTIMATE, 33)), (True, (ESTIMATE, 44))]


def test_a_stream_without_include_usage_is_not_free(llm: FakeLLM, agent: Agent) -> None:
    logger = fleet_litellm(agent)
    try:
        for _ in litellm.completion(model=MODEL, api_base=llm.openai_url, api_key="x", messages=HI, stream=True):
            pass
        [record] = settled(agent, 1)
    finally:
        unregister(logger)
    assert record.success and record.input_tokens > 0 and record.output_tokens > 0  # LiteLLM counts it itself


def test_an_admission_whose_end_never_comes_expires_once(agent: Agent) -> None:
    leased = funded()
    logger = FleetLiteLLM(leased, pending_timeout_s=0)
    try:

        async def run() -> None:
            data = {"model": MODEL, "messages": HI, "max_tokens": 100, "litellm_call_id": "lost-1"}
            await logger.async_pre_call_hook(None, None, data, "acompletion")  # another hook then rejects it
            assert leased.costs.lease is not None and leased.costs.lease.reserved_usd > 0
            other = {**data, "litellm_call_id": "next-2"}
            await logger.async_pre_call_hook(None, None, other, "acompletion")  # expires lost-1

        asyncio.run(run())
        [lost] = leased.records()  # at its estimate, never free
        assert (lost.success, lost.model, tokens(lost)[:2]) == (True, MODEL, (ESTIMATE, 100))
        late: Any = {"litellm_call_id": "lost-1", "model": MODEL}
        logger.log_success_event(late, None, None, None)  # its event after all: already recorded
        logger.log_success_event({"litellm_call_id": "next-2", "model": MODEL}, None, None, None)
        lease_now = leased.costs.lease
        assert lease_now is not None and lease_now.reserved_usd == 0
        assert [(r.success, tokens(r)[:2]) for r in leased.records()] == [(True, (ESTIMATE, 100))] * 2
    finally:
        leased.close()


def test_an_async_call_waiting_for_its_lease_leaves_the_loop_running(llm: FakeLLM) -> None:
    waiting = funded(wait_s=10, usd=None)
    logger = fleet_litellm(waiting)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            if ticks == 3:  # the grant comes from another coroutine, which runs only if the loop does
                grant(waiting, "1")
            await asyncio.sleep(0.01)

    async def run() -> None:
        task = asyncio.create_task(ticker())
        try:
            await litellm.acompletion(model=MODEL, api_base=llm.openai_url, api_key="x", messages=HI, max_tokens=10)
            await asyncio.sleep(0.3)
        finally:
            task.cancel()

    try:
        asyncio.run(run())
        assert ticks >= 3
        assert [r.success for r in settled(waiting, 1)] == [True]
    finally:
        unregister(logger)
        waiting.close()


@pytest.fixture(autouse=True)
def _no_leftover_loggers() -> Any:
    yield
    assert not any(isinstance(c, FleetLiteLLM) for c in litellm.callbacks)
