"""Protection rules on an agent's calls: circuit breaker, runaway loops, cost spikes.

Every rule reads exact counters after the batch's increments (per minute, per operation, per hour)
and decides from them alone, so any instance reaches the same decision; the store applies it with
a conditional write, so it happens once. Thresholds have defaults here, overridden per tenant and
then per agent (``PUT /v1/tenants/{t}/protection``, ``PUT /v1/agents/{id}/protection``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from shared.domain.pricing import to_nanos, to_usd
from shared.domain.usage import Minute


class Protection(BaseModel):
    """Thresholds of the protection rules. Defaults suit an LLM agent making a few calls a second."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: The breaker opens after this many failed calls in a row...
    breaker_consecutive_failures: int = Field(default=5, ge=1, le=10_000)
    #: ...or when at least this share of a minute's calls failed, once the minute has enough calls.
    breaker_failure_rate: float = Field(default=0.5, gt=0, le=1)
    breaker_min_calls: int = Field(default=20, ge=1, le=1_000_000)
    #: Seconds the breaker stays open before trial calls are let through (half-open); doubled after
    #: each failed trial, up to the maximum.
    breaker_cooldown_s: int = Field(default=60, ge=1, le=86_400)
    breaker_max_cooldown_s: int = Field(default=900, ge=1, le=86_400)
    #: Runaway loop: more calls than this in one minute...
    runaway_calls_per_minute: int = Field(default=1200, ge=1, le=10_000_000)
    #: ...or one operation called this many times its norm in a minute (and at least the minimum).
    runaway_operation_factor: float = Field(default=10.0, gt=1, le=1000)
    runaway_operation_min_calls: int = Field(default=120, ge=1, le=10_000_000)
    #: What a runaway loop does: pause the agent (it receives ``pause``) or only alert.
    runaway_action: Literal["pause", "alert"] = "pause"
    #: Cost spike: the current hour's spend this many percent above the mean of recent hours.
    spike_pct: float = Field(default=20.0, gt=0, le=100_000)
    spike_baseline_hours: int = Field(default=24, ge=1, le=24 * 31)
    spike_min_hours: int = Field(default=3, ge=1, le=24 * 31)
    spike_min_baseline_usd: Decimal = Field(default=Decimal("0.10"), ge=0, le=Decimal("1000000"))


class ProtectionOverrides(BaseModel):
    """A subset of :class:`Protection` set for a tenant or an agent (the API body). Same fields and
    bounds, all optional (a unit test keeps the two in step)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    breaker_consecutive_failures: int | None = Field(default=None, ge=1, le=10_000)
    breaker_failure_rate: float | None = Field(default=None, gt=0, le=1)
    breaker_min_calls: int | None = Field(default=None, ge=1, le=1_000_000)
    breaker_cooldown_s: int | None = Field(default=None, ge=1, le=86_400)
    breaker_max_cooldown_s: int | None = Field(default=None, ge=1, le=86_400)
    runaway_calls_per_minute: int | None = Field(default=None, ge=1, le=10_000_000)
    runaway_operation_factor: float | None = Field(default=None, gt=1, le=1000)
    runaway_operation_min_calls: int | None = Field(default=None, ge=1, le=10_000_000)
    runaway_action: Literal["pause", "alert"] | None = None
    spike_pct: float | None = Field(default=None, gt=0, le=100_000)
    spike_baseline_hours: int | None = Field(default=None, ge=1, le=24 * 31)
    spike_min_hours: int | None = Field(default=None, ge=1, le=24 * 31)
    spike_min_baseline_usd: Decimal | None = Field(default=None, ge=0, le=Decimal("1000000"))

    def stored(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)


def resolve(*layers: dict[str, Any] | None) -> Protection:
    """Defaults, then each layer of overrides in order (tenant, then agent)."""
    merged: dict[str, Any] = {}
    for layer in layers:
        merged.update({k: v for k, v in (layer or {}).items() if v is not None})
    return Protection.model_validate(merged)


# -- circuit breaker ---------------------------------------------------------------------------


@dataclass(frozen=True)
class BreakerChange:
    action: Literal["open", "close"]
    reason: str
    cooldown_s: int = 0


def breaker(
    rules: Protection,
    hold: dict[str, Any] | None,
    *,
    streak: int,
    minutes: dict[str, Minute],
    outcomes: list[bool],
    received_at: datetime,
) -> BreakerChange | None:
    """Open on a failure streak or rate. While open, the first batch published after the cooldown
    (server time, not the agent's clock) holds the trial calls: all successes close the breaker, a
    failure opens it again for twice as long."""
    if hold is None:
        if streak >= rules.breaker_consecutive_failures:
            return BreakerChange("open", f"{streak} calls failed in a row", rules.breaker_cooldown_s)
        for minute, counts in sorted(minutes.items()):
            if counts.calls >= rules.breaker_min_calls and counts.failures / counts.calls >= rules.breaker_failure_rate:
                return BreakerChange(
                    "open",
                    f"{counts.failures} of {counts.calls} calls failed in minute {minute}",
                    rules.breaker_cooldown_s,
                )
        return None
    until = hold.get("until")
    if until is None or not outcomes:
        return None
    until_at = until if isinstance(until, datetime) else datetime.fromisoformat(str(until))
    if received_at < until_at:
        return None  # calls in flight when the breaker opened
    if all(outcomes):
        return BreakerChange("close", f"{len(outcomes)} trial calls succeeded after the cooldown")
    cooldown = min(int(hold.get("cooldown_s") or rules.breaker_cooldown_s) * 2, rules.breaker_max_cooldown_s)
    return BreakerChange("open", f"a trial call failed after the cooldown; open for {cooldown}s more", cooldown)


# -- runaway loops ------------------------------------------------------------------------------


def runaway(
    rules: Protection,
    *,
    minutes: dict[str, Minute],
    op_minutes: dict[str, dict[str, int]],
    op_hour: dict[str, int],
) -> str | None:
    """Why the agent looks stuck in a loop (None when it does not): too many calls in a minute, or
    one operation called far above its own rate so far this hour."""
    for minute, counts in sorted(minutes.items()):
        if counts.calls > rules.runaway_calls_per_minute:
            return f"{counts.calls} calls in minute {minute} (limit {rules.runaway_calls_per_minute}/min)"
    for minute, ops in sorted(op_minutes.items()):
        elapsed = int(minute)
        if elapsed < 5:  # too little of the hour to know the operation's norm
            continue
        for op, count in sorted(ops.items()):
            if count < rules.runaway_operation_min_calls:
                continue
            norm = max(0, op_hour.get(op, count) - count) / elapsed
            # An operation new this hour has no norm yet: only the calls-per-minute rule applies to it.
            if norm >= 1.0 and count >= rules.runaway_operation_factor * norm:
                return (
                    f"operation {op} called {count} times in minute {minute}, "
                    f"{count / norm:.0f}x its norm of {norm:.1f}/min this hour"
                )
    return None


# -- cost spikes --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Baseline:
    mean_nanos: int
    hours: int


def baseline(hours: dict[datetime, int], now: datetime, span_hours: int) -> Baseline:
    """Mean spend of the hours with calls among the ``span_hours`` before the current hour."""
    start = now.replace(minute=0, second=0, microsecond=0)
    earliest = start - timedelta(hours=span_hours)
    used = [nanos for hour, nanos in hours.items() if earliest <= hour < start and nanos > 0]
    return Baseline(sum(used) // len(used) if used else 0, len(used))


def spike(rules: Protection, base: Baseline, *, before: int, after: int) -> str | None:
    """The hour's spend crossed ``spike_pct`` above the baseline with this batch (once per hour)."""
    if base.hours < rules.spike_min_hours or base.mean_nanos < to_nanos(rules.spike_min_baseline_usd):
        return None
    threshold = base.mean_nanos * (100 + rules.spike_pct) / 100
    if before <= threshold < after:
        return (
            f"spend this hour ${to_usd(after):.2f} is more than {rules.spike_pct:g}% above the "
            f"mean of the last {base.hours} active hours (${to_usd(base.mean_nanos):.2f})"
        )
    return None
