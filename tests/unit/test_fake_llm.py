"""The fake model provider (emulators/fake_llm.py) answers the real OpenAI and Anthropic clients with exact usage."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import anthropic
import openai
import pytest

from emulators.fake_llm import PROMPT_BASE, REPLY_WORDS, FakeLLM, expected_usage

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def llm() -> Iterator[FakeLLM]:
    with FakeLLM() as fake:
        yield fake


def test_expected_usage_counts_words_and_caps() -> None:
    body = {"messages": [{"role": "user", "content": "one two three"}], "max_tokens": 5}
    usage = expected_usage(body, cached=100, reasoning=2)
    assert (usage.input, usage.cached, usage.visible, usage.output) == (PROMPT_BASE + 3, PROMPT_BASE + 3, 3, 5)
    assert expected_usage({"input": ["a b", "c"]}).input == PROMPT_BASE + 3


def test_openai_chat_usage_and_stream(llm: FakeLLM) -> None:
    llm.usage(cached=4, reasoning=6)
    client = openai.OpenAI(base_url=llm.openai_url, api_key="x")
    reply = client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hello fleet"}])
    assert reply.usage is not None and reply.usage.prompt_tokens == PROMPT_BASE + 2
    assert reply.usage.completion_tokens == REPLY_WORDS + 6
    assert reply.usage.prompt_tokens_details and reply.usage.prompt_tokens_details.cached_tokens == 4
    assert reply.usage.completion_tokens_details and reply.usage.completion_tokens_details.reasoning_tokens == 6
    chunks = list(
        client.chat.completions.create(
            model="gpt-4o",
            messages=[{"role": "user", "content": "hello"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(text.split()) == REPLY_WORDS
    assert chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens == PROMPT_BASE + 1
    plain = list(
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}], stream=True)
    )
    assert all(c.usage is None for c in plain)


def test_openai_responses_and_embeddings(llm: FakeLLM) -> None:
    client = openai.OpenAI(base_url=llm.openai_url, api_key="x")
    response = client.responses.create(model="gpt-4o", input="two words", max_output_tokens=5)
    assert response.usage is not None and (response.usage.input_tokens, response.usage.output_tokens) == (9, 5)
    assert len(response.output_text.split()) == 5
    events = list(client.responses.create(model="gpt-4o", input="two words", stream=True))
    assert events[-1].type == "response.completed" and events[-1].response.usage is not None
    assert events[-1].response.usage.total_tokens == 9 + REPLY_WORDS
    embedded = client.embeddings.create(model="text-embedding-3-small", input=["a b c", "d"])
    assert len(embedded.data) == 2 and embedded.usage.prompt_tokens == PROMPT_BASE + 4


def test_anthropic_messages_and_stream(llm: FakeLLM) -> None:
    llm.usage(cached=3, cache_write=2)
    client = anthropic.Anthropic(base_url=llm.url, api_key="x")
    msg = client.messages.create(
        model="claude-sonnet-4-5", max_tokens=100, system="be brief", messages=[{"role": "user", "content": "hi"}]
    )
    total = PROMPT_BASE + 3
    usage = msg.usage
    assert (usage.input_tokens, usage.cache_read_input_tokens, usage.cache_creation_input_tokens) == (total - 5, 3, 2)
    with client.messages.stream(
        model="claude-sonnet-4-5", max_tokens=4, messages=[{"role": "user", "content": "hi"}]
    ) as s:
        final = s.get_final_message()
    assert final.usage.output_tokens == 4 and final.usage.cache_read_input_tokens == 3
    assert len(final.content[0].text.split()) == 4  # type: ignore[union-attr]


def test_failures_and_calls(llm: FakeLLM) -> None:
    client = openai.OpenAI(base_url=llm.openai_url, api_key="x")
    llm.fail_next(429)
    with pytest.raises(openai.RateLimitError):
        client.embeddings.create(model="text-embedding-3-small", input="a")
    llm.fail_next(500)
    with pytest.raises(anthropic.InternalServerError):
        anthropic.Anthropic(base_url=llm.url, api_key="x").messages.create(
            model="claude-sonnet-4-5", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
        )
    assert [(c["path"], c["status"]) for c in llm.calls()] == [("/v1/embeddings", 429), ("/v1/messages", 500)]
    llm.clear()
    assert llm.calls() == []


def test_runs_as_a_module() -> None:
    with FakeLLM() as probe:
        port = probe.port  # a free port, released on exit
    proc = subprocess.Popen(
        [sys.executable, "-m", "emulators.fake_llm", "--port", str(port)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and "127.0.0.1" in proc.stdout.readline()
        deadline = time.monotonic() + 10
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/_calls", timeout=2) as resp:
                    assert json.loads(resp.read()) == []
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
