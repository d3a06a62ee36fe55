"""The fake model provider's usage (emulators/fake_llm.py): deterministic token counts a test can work out
the exact spend from, and the reply text they count.

- input: ``PROMPT_BASE`` + the number of whitespace-separated words in every text of the request
  (messages, system, input); this total includes the cached tokens;
- output: the visible reply has ``REPLY_WORDS`` words (fewer when the request's ``max_tokens`` /
  ``max_completion_tokens`` / ``max_output_tokens`` is smaller), one token each, plus the reasoning tokens;
- cached, cache-write and reasoning tokens are what the fake is told, at most the input (cached + cache
  writes) and 0 by default.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

#: What the fake's answers are made of: (SSE event name or None, JSON payload or a raw data line).
Event = tuple[str | None, dict[str, Any] | str]

PROMPT_BASE = 7
REPLY_WORDS = 12
EMBEDDING_DIMENSIONS = 8
_WORDS = [
    "the",
    "fleet",
    "counts",
    "every",
    "token",
    "of",
    "this",
    "reply",
    "so",
    "that",
    "spend",
    "is",
    "exact",
    "to",
    "the",
    "nano",
    "dollar",
]


@dataclass(frozen=True)
class Usage:
    """One request's usage, as the fake reports it: ``input`` is every input token (cache included),
    ``output`` every output token (reasoning included). ``omitted``: the OpenAI answers carry no usage."""

    input: int
    output: int
    cached: int = 0
    cache_write: int = 0
    reasoning: int = 0
    visible: int = 0
    omitted: bool = False

    @property
    def anthropic_input(self) -> int:
        """Anthropic's ``input_tokens``: the input that was neither read from nor written to the cache."""
        return self.input - self.cached - self.cache_write


def _texts(value: Any) -> Iterator[str]:
    """Every text in a request's messages, system prompt or input (content parts included)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):
        for item in value:
            yield from _texts(item)
    elif isinstance(value, dict):
        for key in ("content", "text", "input", "system", "messages"):
            if key in value:
                yield from _texts(value[key])


def words(body: dict[str, Any]) -> int:
    return sum(len(text.split()) for key in ("messages", "system", "input") for text in _texts(body.get(key)))


def expected_usage(
    body: dict[str, Any], *, cached: int = 0, cache_write: int = 0, reasoning: int = 0, omit: int = 0
) -> Usage:
    """The usage the fake reports for a request ``body`` (what a test computes its spend from); ``omit``:
    the OpenAI answers leave it out."""
    total = PROMPT_BASE + words(body)
    cached = min(cached, total)
    cache_write = min(cache_write, total - cached)
    limit = body.get("max_completion_tokens") or body.get("max_output_tokens") or body.get("max_tokens")
    visible = REPLY_WORDS if not limit else max(1, min(REPLY_WORDS, int(limit) - reasoning))
    return Usage(total, visible + reasoning, cached, cache_write, reasoning, visible, bool(omit))


def reply(n: int) -> list[str]:
    """The reply's ``n`` words (one token each), each with its trailing space."""
    return [_WORDS[i % len(_WORDS)] + " " for i in range(n)]
