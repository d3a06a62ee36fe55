"""The daily report's optimization suggestions: three rules over one day's per-model counters (no I/O).

Their thresholds are the named constants below (documented in docs/reports.md).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from decimal import Decimal
from typing import Literal, Protocol

from pydantic import Field

from shared.domain.pricing import Price, PriceTable, format_usd, to_nanos
from shared.domain.reports import ReportModel, money

# -- suggestion rules ----------------------------------------------------------------------------
# (a) An expensive model used for short, simple calls, where a cheaper model of the same family
#     would do. A (agent, model) pair of the day qualifies when all of these hold:
#: ... it made at least this many calls,
EXPENSIVE_MIN_CALLS = 20
#: ... its calls cost at least this much on average,
EXPENSIVE_CALL_USD = Decimal("0.002")
#: ... the model's price is at least this per million output tokens,
EXPENSIVE_OUTPUT_PER_MTOK_USD = Decimal("5")
#: ... and its calls returned fewer output tokens than this on average.
SHORT_OUTPUT_TOKENS = 200
#: The suggested model is the priciest model of the same family (``gpt``, ``claude``, ``gemini``...:
#: the letters the name starts with) that would have cost at most this share of the current model's
#: price for the same tokens; the saving is the day's spend minus that cost.
CHEAPER_MAX_SHARE = Decimal("0.35")
#: A model suggestion saving less than this a day is not worth a line.
CHEAPER_MIN_SAVING_USD = Decimal("0.10")
# (b) Repeated identical calls (flagged ``repeat`` by the SDK): what they cost is what a response
#     cache would have saved. Per (agent, model) of the day, reported when both hold:
REPEAT_MIN_CALLS = 10
REPEAT_MIN_USD = Decimal("0.10")
# (c) Failure cost: an agent whose failed calls cost at least FAILURE_COST_USD a day, or at least
#     FAILURE_COST_SHARE of its day's spend (and at least FAILURE_MIN_USD).
FAILURE_COST_USD = Decimal("1")
FAILURE_COST_SHARE = Decimal("0.10")
FAILURE_MIN_USD = Decimal("0.10")

SuggestionKind = Literal["cheaper_model", "cache_repeats", "failure_cost"]
_FAMILY = re.compile(r"^[a-z]+")
_MILLION = Decimal(1_000_000)


class ModelCounters(Protocol):
    """One model's counters for one agent and day (``shared.domain.usage.ModelDay``)."""

    calls: int
    failures: int
    input_tokens: int
    output_tokens: int
    usd_nanos: int
    failed_usd_nanos: int
    repeats: int
    repeat_usd_nanos: int


class CostSuggestion(ReportModel):
    """A concrete way to spend less, with what it would have saved on the report's day."""

    agent_id: str
    tenant: str
    kind: SuggestionKind
    model: str | None = None
    calls: int = Field(description="The calls the suggestion is about.")
    spend_usd: str = Field(description="What those calls cost on the day.")
    estimated_saving_usd: str = Field(description="Per day, at the day's volume.")
    alternative: str | None = Field(default=None, description="cheaper_model: the model to use instead.")
    message: str


# -- suggestions ---------------------------------------------------------------------------------


def family(model: str) -> str:
    """The letters a model's name starts with (after any ``provider/``): gpt, claude, gemini, o..."""
    found = _FAMILY.match(model.rsplit("/", 1)[-1].lower())
    return found.group(0) if found else ""


def cheaper_alternative(
    model: str, input_tokens: int, output_tokens: int, prices: PriceTable, tenant: str | None
) -> tuple[str, int] | None:
    """The model to suggest instead of ``model`` for these tokens, and what they would have cost with it.

    The priciest model of the same family, among the overrides and the catalog's current models of
    ``model``'s provider, costing at most ``CHEAPER_MAX_SHARE`` of ``model``'s price for the same tokens
    (the most capable one that still saves most of the cost). Each is priced as a call would be: an
    override first, then the catalog.
    """
    current = prices.lookup(model, tenant)
    if current is None:
        return None
    current_cost = current.cost_nanos(input_tokens, output_tokens)
    if current_cost <= 0:
        return None
    names = set(prices.prices) | set(prices.tenant_prices.get(tenant or "", {}))
    if prices.catalog is not None:  # the provider's current models in the catalog (shared/store/price_catalog.py)
        names |= {name for name, _price in prices.catalog.alternatives(model)}
    best: tuple[int, str] | None = None
    for name in sorted(names):
        if family(name) != family(model) or name == model:
            continue
        price = prices.lookup(name, tenant)
        if price is None:
            continue
        cost = price.cost_nanos(input_tokens, output_tokens)
        if cost <= current_cost * CHEAPER_MAX_SHARE and (best is None or cost > best[0]):
            best = (cost, name)
    return (best[1], best[0]) if best else None


def _expensive(price: Price) -> bool:
    return price.output_usd * _MILLION >= EXPENSIVE_OUTPUT_PER_MTOK_USD


def suggestions(
    agent_id: str, tenant: str, models: Mapping[str, ModelCounters], prices: PriceTable
) -> list[tuple[int, CostSuggestion]]:
    """The rules (a) cheaper model, (b) cache repeats, (c) failure cost for one agent's day.

    Returns (estimated saving in nano-dollars, suggestion) pairs.
    """
    out: list[tuple[int, CostSuggestion]] = []
    for model, m in sorted(models.items()):
        if m.calls <= 0:
            continue
        # (a) an expensive model for short calls
        price = prices.lookup(model, tenant)
        if (
            price is not None
            and m.calls >= EXPENSIVE_MIN_CALLS
            and m.usd_nanos >= to_nanos(EXPENSIVE_CALL_USD) * m.calls
            and _expensive(price)
            and m.output_tokens < SHORT_OUTPUT_TOKENS * m.calls
        ):
            alternative = cheaper_alternative(model, m.input_tokens, m.output_tokens, prices, tenant)
            if alternative is not None:
                alt_name, alt_cost = alternative
                saving = m.usd_nanos - alt_cost
                if saving >= to_nanos(CHEAPER_MIN_SAVING_USD):
                    out.append(
                        (
                            saving,
                            CostSuggestion(
                                agent_id=agent_id,
                                tenant=tenant,
                                kind="cheaper_model",
                                model=model,
                                calls=m.calls,
                                spend_usd=format_usd(m.usd_nanos),
                                estimated_saving_usd=format_usd(saving),
                                alternative=alt_name,
                                message=(
                                    f"{agent_id} used {model} for {m.calls:,} calls averaging "
                                    f"{m.output_tokens // m.calls} output tokens ({money(m.usd_nanos)}); "
                                    f"{alt_name} would have cost about {money(alt_cost)}: "
                                    f"save ~{money(saving)}/day"
                                ),
                            ),
                        )
                    )
        # (b) repeated identical calls
        if m.repeats >= REPEAT_MIN_CALLS and m.repeat_usd_nanos >= to_nanos(REPEAT_MIN_USD):
            out.append(
                (
                    m.repeat_usd_nanos,
                    CostSuggestion(
                        agent_id=agent_id,
                        tenant=tenant,
                        kind="cache_repeats",
                        model=model,
                        calls=m.repeats,
                        spend_usd=format_usd(m.repeat_usd_nanos),
                        estimated_saving_usd=format_usd(m.repeat_usd_nanos),
                        message=(
                            f"{agent_id} repeated {m.repeats:,} identical {model} calls "
                            f"(of {m.calls:,}); a response cache would save ~{money(m.repeat_usd_nanos)}/day"
                        ),
                    ),
                )
            )
    # (c) failure cost, over all the agent's models
    spend = sum(m.usd_nanos for m in models.values())
    failed = sum(m.failed_usd_nanos for m in models.values())
    failures = sum(m.failures for m in models.values())
    calls = sum(m.calls for m in models.values())
    if failed > 0 and (
        failed >= to_nanos(FAILURE_COST_USD)
        or (failed >= to_nanos(FAILURE_MIN_USD) and failed >= spend * FAILURE_COST_SHARE)
    ):
        share = f" ({failed * 100 // spend}% of its spend)" if spend else ""
        out.append(
            (
                failed,
                CostSuggestion(
                    agent_id=agent_id,
                    tenant=tenant,
                    kind="failure_cost",
                    calls=failures,
                    spend_usd=format_usd(failed),
                    estimated_saving_usd=format_usd(failed),
                    message=(
                        f"{agent_id}: {failures:,} of {calls:,} calls failed and cost {money(failed)}{share}; "
                        "fix the cause, or lower its breaker thresholds so failures stop sooner"
                    ),
                ),
            )
        )
    return out
