"""The price catalog: genai-prices, the version the lock pins, read from the data bundled in the package.

An adapter at the pricing domain's edge (shared/domain/pricing.py :class:`~shared.domain.pricing.Catalog`):
it turns genai-prices' models into the domain's :class:`~shared.domain.pricing.Price` (USD per token,
exact ``Decimal``: the catalog's USD per million tokens divided by a million) and nothing else of it
leaves this module. Nothing is ever fetched: the package's auto-update (``UpdatePrices``) is never
started, so the prices are those of the pinned release until the lock moves, and every call priced
here is counted under ``catalog:genai-prices@<version>``.

Model names: an agent's ``provider/model`` (``openai/gpt-4o``, ``anthropic/claude-...``) looks the model
up at that provider when the catalog knows the provider (by id or by its aliases: ``vertex_ai`` is
google, ``bedrock`` aws); a bare name (``gpt-4o``) goes to the provider whose models it matches
(``gpt`` -> openai, ``claude`` -> anthropic, ``gemini`` -> google), else to the one provider
whose models match it (``text-embedding-3-small`` -> openai, not azure, which resells it; see
:func:`_anywhere`). A name the catalog does not know, or cannot place, is not priced here (unpriced:
the alert tells the admin to set a price with ``PUT /v1/prices/{model}``).

Importing genai-prices and building its snapshot takes about 0.6 s (1.6 MB of data): both are lazy, on
the first lookup, so the functions that price nothing do not pay it at cold start.

:meth:`GenaiPrices.listing` pages through the catalog's models by ``provider/model`` (``GET
/v1/prices?catalog=true``): a sorted index built once per instance, then the page's models priced at the
time asked (about 0.5 ms a page of 50; all 2,139 token-priced models of 0.2.5 in about 50 ms).
"""

from __future__ import annotations

import bisect
import functools
import re
import threading
from collections.abc import Sequence
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

from shared.domain.pricing import Price, Quote

NAME = "genai-prices"
_MILLION = Decimal(1_000_000)
_lock = threading.Lock()


@functools.cache
def version() -> str:
    """The installed (locked) genai-prices version, from the package metadata (no import of its data)."""
    # lazy: importlib.metadata only for the label, once per instance
    from importlib.metadata import version as dist_version

    return dist_version(NAME)


def source() -> str:
    return f"catalog:{NAME}@{version()}"


def _snapshot() -> Any:
    # lazy: genai-prices' data (about 0.6 s to import and build) only on the first catalog lookup
    from genai_prices import data_snapshot

    with _lock:
        return data_snapshot.get_snapshot()


def _per_token(value: Any, threshold: int | None) -> Decimal | None:
    """A price key's USD per token (for calls above ``threshold`` input tokens, None: the base)."""
    if value is None:
        return None
    if isinstance(value, Decimal):
        return value / _MILLION
    applicable = value.base  # TieredPrices: the highest tier the threshold is past
    if threshold is not None:
        for tier in value.tiers:
            if threshold >= tier.start:
                applicable = tier.price
    return Decimal(applicable) / _MILLION


def _flat(model_price: Any, threshold: int | None) -> Price:
    def get(key: str) -> Decimal | None:
        return _per_token(getattr(model_price, key, None), threshold)

    return Price(
        input_usd=get("input_mtok") or Decimal(0),
        output_usd=get("output_mtok") or Decimal(0),
        cache_read_usd=get("cache_read_mtok"),
        cache_write_usd=get("cache_write_mtok"),
        reasoning_usd=get("output_reasoning_mtok"),
    )


def to_price(model_price: Any) -> Price | None:
    """A genai-prices ``ModelPrice`` as the domain's price; None when it prices no tokens (a model
    billed per request or second only is not priced by tokens here)."""
    if getattr(model_price, "input_mtok", None) is None and getattr(model_price, "output_mtok", None) is None:
        return None
    keys = ("input_mtok", "output_mtok", "cache_read_mtok", "cache_write_mtok", "output_reasoning_mtok")
    values: list[Any] = [getattr(model_price, key, None) for key in keys]
    starts = sorted({tier.start for value in values if hasattr(value, "tiers") for tier in value.tiers})
    base = _flat(model_price, None)
    if not starts:
        return base
    return Price(
        base.input_usd, base.output_usd, base.cache_read_usd, base.cache_write_usd, base.reasoning_usd,
        tiers=tuple((start, _flat(model_price, start)) for start in starts),
    )  # fmt: skip


def _midnight(day: date) -> datetime:
    return datetime.combine(day, time(0), tzinfo=UTC)


def validity(model: Any, at: datetime) -> tuple[datetime | None, datetime | None]:
    """Since and until when the price ``model`` has at ``at`` holds (None: open-ended).

    Dated prices (``StartDateConstraint``) change at a UTC midnight; time-of-day prices (DeepSeek's
    off-peak hours) at their boundaries, so those quotes hold until the next boundary only."""
    prices = model.prices
    if not isinstance(prices, list):
        return None, None
    day = at.astimezone(UTC).date()
    starts = sorted({c.constraint.start_date for c in prices if hasattr(c.constraint, "start_date")})
    since = max((_midnight(s) for s in starts if s <= day), default=None)
    until = min((_midnight(s) for s in starts if s > day), default=None)
    clocks = sorted(
        {
            t
            for c in prices
            if hasattr(c.constraint, "start_time")
            for t in (c.constraint.start_time, c.constraint.end_time)
        }
    )
    if clocks:
        moments = [
            datetime.combine(day + timedelta(days=d), t if t.tzinfo else t.replace(tzinfo=UTC)).astimezone(UTC)
            for d in (-1, 0, 1)
            for t in clocks
        ]
        since = max([m for m in moments if m <= at] + ([since] if since else []))
        until = min([m for m in moments if m > at] + ([until] if until else []))
    return since, until


#: When a bare name is a model of several providers that genai-prices' own data cannot tell apart, the
#: provider that made the model wins (the rest resell it); any other tie is left unpriced, never guessed.
ORIGINAL_PROVIDERS = ("openai", "anthropic", "google", "mistral", "cohere", "deepseek", "x-ai", "moonshotai",
                      "zhipuai", "meta", "minimax", "voyageai")  # fmt: skip


def _find(model: str) -> tuple[Any, Any] | None:
    """The catalog's (provider, model) for an agent's model name, the ``provider/`` prefix as a hint."""
    # lazy: only the lookup functions of the package already imported by _snapshot
    from genai_prices.data_snapshot import find_provider_by_id

    snap = _snapshot()
    name = model.lower()
    attempts: list[tuple[str, str | None]] = []
    if "/" in name:
        hint, rest = name.split("/", 1)
        if find_provider_by_id(snap.providers, hint) is not None:
            attempts.append((rest, hint))
        attempts.append((rest, None))
    attempts.append((name, None))
    for ref, provider_id in attempts:
        try:
            with _lock:
                return snap.find_provider_model(ref, None, provider_id, None)
        except LookupError:
            continue
    # The whole name first (a prefix that names no provider may name a reseller), then the name without its
    # provider's prefix: an OpenAI-compatible client names its provider openai whoever serves the call
    # (openai/llama-3.3-70b-versatile is Groq's), so a prefix never loses the price the bare name has.
    found = _anywhere(name)
    if found is None and "/" in name and find_provider_by_id(snap.providers, name.split("/", 1)[0]) is not None:
        return _find(name.split("/", 1)[1])
    return found


@functools.lru_cache(maxsize=1024)
def _anywhere(ref: str) -> tuple[Any, Any] | None:
    """The one provider whose models match ``ref`` (genai-prices' own model match, across all providers)
    when its provider inference does not place the name (``text-embedding-3-small``,
    ``chatgpt-4o-latest``, ``llama-3.3-70b-versatile``).

    Several matches are narrowed with genai-prices' own data first: a provider that lists another match's
    provider among its ``fallback_model_providers`` resells that one's models (azure: openai; google:
    anthropic), and a provider without a ``model_match`` of its own (openrouter, github-copilot) serves
    others' models; then :data:`ORIGINAL_PROVIDERS`, in order. A tie left after that is None (unpriced)."""
    found: dict[str, tuple[Any, Any]] = {}
    providers = _snapshot().providers
    with _lock:
        for provider in providers:
            info = next((m for m in provider.models if m.is_match(ref)), None)
            if info is not None:
                found.setdefault(provider.id, (provider, info))
    resellers = {p.id for p, _ in found.values() if set(p.fallback_model_providers or ()) & set(found)}
    left = {k: v for k, v in found.items() if k not in resellers} or found
    owners = {k: v for k, v in left.items() if v[0].model_match is not None}
    left = owners or left
    if len(left) == 1:
        return next(iter(left.values()))
    return next((left[p] for p in ORIGINAL_PROVIDERS if p in left), None)


@functools.cache
def _listed() -> tuple[tuple[str, Any, Any], ...]:
    """Every model of the catalog as (``provider/model``, provider, model), ordered by that name."""
    rows = [(f"{p.id}/{m.id}", p, m) for p in _snapshot().providers for m in p.models]
    return tuple(sorted(rows, key=lambda row: row[0]))


class GenaiPrices:
    """The catalog the fleet prices with (the domain's ``Catalog``)."""

    @property
    def source(self) -> str:
        return source()

    def quote(self, model: str, at: datetime | None = None) -> Quote | None:
        at = at or datetime.now(UTC)
        found = _find(model)
        return None if found is None else self._quote(*found, at)

    def _quote(self, provider: Any, info: Any, at: datetime) -> Quote | None:
        price = to_price(info.get_prices(at))
        if price is None:
            return None
        since, until = validity(info, at)
        return Quote(price, self.source, f"{provider.id}/{info.id}", since, until)

    def listing(
        self, *, provider: str | None = None, prefix: str | None = None, after: str | None = None, limit: int = 50,
        at: datetime | None = None,
    ) -> tuple[list[Quote], bool]:  # fmt: skip
        """The catalog's models priced by tokens (``Quote.matched``: ``provider/model``), ordered by that
        name, after ``after``, at most ``limit``; whether more follow. ``provider``: that provider's only
        (its id, lower case); ``prefix``: the models whose name, or ``provider/name``, starts with it
        (case-insensitive). Models billed per request or second only are left out (not priced by tokens)."""
        at = at or datetime.now(UTC)
        rows = _listed()
        start = bisect.bisect_right(rows, after, key=lambda row: row[0]) if after is not None else 0
        wanted = prefix.lower() if prefix else None
        out: list[Quote] = []
        for name, owner, info in rows[start:]:
            if provider is not None and owner.id != provider:
                continue
            if wanted is not None and not (info.id.lower().startswith(wanted) or name.lower().startswith(wanted)):
                continue
            found = self._quote(owner, info, at)
            if found is None:
                continue
            if len(out) == limit:
                return out, True
            out.append(found)
        return out, False

    def alternatives(self, model: str, at: datetime | None = None) -> Sequence[tuple[str, Price]]:
        at = at or datetime.now(UTC)
        found = _find(model)
        if found is None:
            return []
        provider, info = found
        return _alternatives(provider.id, info.id, at.date())


#: Catalog models never suggested in place of a chat model: other modalities, tools, fine-tunes, dated
#: snapshots and previews (the suggestion names a model to switch to, not a pinned build or an experiment).
_SPECIAL = re.compile(r"audio|realtime|tts|transcribe|image|embed|search|vision|live|moderation|codex|computer|"
                      r"instruct|preview|\.ft|-\d{4}|-\d{3}$|latest")  # fmt: skip


@functools.lru_cache(maxsize=64)
def _alternatives(provider_id: str, model_id: str, day: date) -> tuple[tuple[str, Price], ...]:
    """The provider's current general models taking at least ``model_id``'s context window."""
    provider = next(p for p in _snapshot().providers if p.id == provider_id)
    window = next((m.context_window for m in provider.models if m.id == model_id), None) or 0
    at = _midnight(day)
    out = []
    for info in provider.models:
        if info.id == model_id or info.deprecated or _SPECIAL.search(info.id):
            continue
        if (info.context_window or 0) < window:
            continue
        price = to_price(info.get_prices(at))
        if price is not None:
            out.append((info.id, price))
    return tuple(out)


catalog = GenaiPrices()
