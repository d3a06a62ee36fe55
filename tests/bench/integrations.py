"""What each drop-in integration adds to a model call: µs per call through the instrumented client against
the bare client, both calling the fake provider (emulators/fake_llm.py) in this process.

    python -m tests.bench.integrations      # under a minute, no stack needed

Per integration, ``ROUNDS`` rounds alternate the bare and the instrumented column; each round makes ``N``
calls one by one (perf_counter_ns around each) after a warm-up, and each figure is the median over rounds of
that round's p50. The extra is instrumented minus bare. The recorder is the SDK's own (leases off, batches
handed to a publisher that drops them), so the extra is the admission, the usage read and the record; the
network round trip to the fake is in both columns. LiteLLM records from its success events, which it runs
on its own worker thread: its column includes handing them over, not the record itself. The AsyncOpenAI row
runs with leases on and a lease that covers every call (one event loop for all its calls): its extra
includes the wallet probe that keeps a fitting call's admission on the loop, and the reservation. Not a
test: it asserts nothing.
"""

from __future__ import annotations

import asyncio
import gc
import os
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # before litellm is imported: no fetch
os.environ.setdefault("LITELLM_OFFLINE_MODE", "true")  # nor anything else LiteLLM fetches on its own

import anthropic
import litellm
import openai
from fleet_agent.costs import CostRecorder
from fleet_agent.integrations.anthropic import fleet_anthropic
from fleet_agent.integrations.langchain import FleetCallbackHandler
from fleet_agent.integrations.litellm import FleetLiteLLM, unregister
from fleet_agent.integrations.openai import fleet_openai

from emulators.fake_llm import FakeLLM
from tests.bench.lease_check import Drop
from tests.unit.test_integrations_langchain import OpenAIChat
from tests.unit.test_sdk_lease_recorder import lease

N = int(os.environ.get("BENCH_INTEGRATION_CALLS", 200))
ROUNDS = int(os.environ.get("BENCH_INTEGRATION_ROUNDS", 5))
WARM_UP = 20
MESSAGES: Any = [{"role": "user", "content": "summarize the fleet's spend for today in one line"}]


def describe() -> list[str]:
    return [
        f"Overhead per call of each drop-in integration (`python -m tests.bench.integrations`): the instrumented "
        f"client against the bare one, both calling the fake provider in process; median over {ROUNDS} "
        f"alternating rounds of each round's p50 over {N} calls. The recorder is the SDK's (leases off)."
    ]


def recorder() -> CostRecorder:
    return CostRecorder("bench-agent-1", Drop(), "projects/p/topics/agent-costs", max_delay_s=600)


def leased_recorder() -> CostRecorder:
    """A recorder with leases on and an hour's lease that covers every call of the bench (gpt-4o priced)."""
    rec = CostRecorder("agent-1", Drop(), "projects/p/topics/agent-costs", max_delay_s=600, leases=True)
    now = datetime.now(UTC)
    rec.apply(lease("aaaaaaaaaaaa.1", "1000", issued=now, expires=now + timedelta(hours=1)))
    return rec


def p50(call: Callable[[], Any]) -> float:
    for _ in range(WARM_UP):
        call()
    gc.collect()
    samples = []
    for _ in range(N):
        start = time.perf_counter_ns()
        call()
        samples.append(time.perf_counter_ns() - start)
    return sorted(samples)[len(samples) // 2] / 1000


def cases(
    llm: FakeLLM, rec: CostRecorder, leased: CostRecorder, loop: asyncio.AbstractEventLoop
) -> dict[str, tuple[Callable[[], Any], Callable[[], Any]]]:
    """Per integration: (bare call, instrumented call)."""
    bare_oa = openai.OpenAI(base_url=llm.openai_url, api_key="x", max_retries=0)
    fleet_oa = fleet_openai(openai.OpenAI(base_url=llm.openai_url, api_key="x", max_retries=0), rec)
    bare_an = anthropic.Anthropic(base_url=llm.url, api_key="x", max_retries=0)
    fleet_an = fleet_anthropic(anthropic.Anthropic(base_url=llm.url, api_key="x", max_retries=0), rec)
    logger = FleetLiteLLM(rec)
    chat = OpenAIChat(base_url=llm.openai_url, max_tokens=100)
    handler: Any = {"callbacks": [FleetCallbackHandler(rec)]}
    bare_async = openai.AsyncOpenAI(base_url=llm.openai_url, api_key="x", max_retries=0)
    fleet_async = fleet_openai(openai.AsyncOpenAI(base_url=llm.openai_url, api_key="x", max_retries=0), leased)

    def async_call(client: openai.AsyncOpenAI) -> Callable[[], Any]:
        return lambda: loop.run_until_complete(
            client.chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=100)
        )

    def chat_call(client: openai.OpenAI) -> Callable[[], Any]:
        return lambda: client.chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=100)

    def stream_call(client: openai.OpenAI) -> Callable[[], Any]:
        return lambda: list(client.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True))

    def messages_call(client: anthropic.Anthropic) -> Callable[[], Any]:
        return lambda: client.messages.create(model="claude-sonnet-4-5", max_tokens=100, messages=MESSAGES)

    def litellm_call(instrumented: bool) -> Callable[[], Any]:
        def call() -> Any:
            if not instrumented:
                unregister(logger)  # LiteLLM copies its callbacks into lists of its own: out of all of them
            elif logger not in litellm.callbacks:
                litellm.callbacks.append(logger)
                litellm.pre_call_rules.append(logger.rule)
            return litellm.completion(model="openai/gpt-4o", api_base=llm.openai_url, api_key="x",
                                      messages=MESSAGES, max_tokens=100)  # fmt: skip

        return call

    return {
        "OpenAI chat.completions": (chat_call(bare_oa), chat_call(fleet_oa)),
        "OpenAI chat.completions, stream": (stream_call(bare_oa), stream_call(fleet_oa)),
        "AsyncOpenAI chat.completions, lease on": (async_call(bare_async), async_call(fleet_async)),
        "Anthropic messages": (messages_call(bare_an), messages_call(fleet_an)),
        "LiteLLM completion": (litellm_call(False), litellm_call(True)),
        "LangChain chat model invoke": (
            lambda: chat.invoke("summarize"),
            lambda: chat.invoke("summarize", config=handler),
        ),
    }


def main(report: Callable[[str], None] = print) -> list[str]:
    lines = ["| call | bare p50 µs | instrumented p50 µs | extra µs |", "|---|---|---|---|"]
    rec, leased, loop = recorder(), leased_recorder(), asyncio.new_event_loop()
    with FakeLLM() as llm:
        for name, (bare, fleet) in cases(llm, rec, leased, loop).items():
            bare_runs, fleet_runs = [], []
            for _ in range(ROUNDS):
                bare_runs.append(p50(bare))
                fleet_runs.append(p50(fleet))
            b, f = statistics.median(bare_runs), statistics.median(fleet_runs)
            lines.append(f"| {name} | {b:.0f} | {f:.0f} | {f - b:+.0f} |")
    rec.close()
    leased.close()
    loop.close()
    for line in lines:
        report(line)
    return lines


if __name__ == "__main__":
    main()
