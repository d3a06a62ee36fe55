"""Health rules on the agents' heartbeat metrics, and the security score.

Evaluated on every accepted heartbeat, from the heartbeat and the state kept in the agent document
(``health``), so they cost no read and their episodes are part of the heartbeat's one write:

- error rate over 20 % (resolves under 15 %: hysteresis, no flapping alert);
- CPU or memory over 95 % for 10 minutes (resolves when both are under 90 %);
- flapping: more than 10 changes of reported status in 5 minutes: the agent is held in
  ``degraded`` (its reported status is recorded, not applied) until at most 2 changes in 5 minutes;
- data egress over 1 GB in an hour: the ``bytes_out`` metric is the bytes sent since the previous
  heartbeat, summed per UTC hour.

Each rule that opens costs security points (100 at the start, recovering 6 points an hour); at 20
or below the agent is quarantined and told so on ``agent-commands``. Every threshold can be set per
tenant (``PUT /v1/tenants/{tenant}/health``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from shared.domain import episodes
from shared.domain.alerts import Severity


class HealthConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    error_rate: float = Field(default=0.20, gt=0, le=1)
    #: The error-rate episode resolves under ``error_rate * error_rate_clear``.
    error_rate_clear: float = Field(default=0.75, gt=0, le=1)
    saturation_pct: float = Field(default=95.0, gt=0, le=100)
    saturation_for_s: int = Field(default=600, ge=0)
    saturation_clear_pct: float = Field(default=90.0, gt=0, le=100)
    flap_changes: int = Field(default=10, ge=2)
    flap_window_s: int = Field(default=300, ge=10)
    flap_clear_changes: int = Field(default=2, ge=0)
    egress_bytes_per_hour: int = Field(default=1_000_000_000, ge=1)
    #: Security points each rule costs when it opens.
    score_costs: dict[str, int] = Field(
        default_factory=lambda: {
            episodes.ERROR_RATE: 15,
            episodes.SATURATION: 15,
            episodes.FLAPPING: 20,
            episodes.EGRESS: 30,
        }
    )
    score_recovery_per_hour: float = Field(default=6.0, ge=0)
    quarantine_at: float = Field(default=20.0, ge=0, le=100)

    @classmethod
    def for_tenant(cls, overrides: dict[str, Any] | None) -> HealthConfig:
        return cls.model_validate(episodes.merged(cls, overrides))


FULL_SCORE = 100.0
#: Flip times remembered (enough for any flap_changes up to this).
_FLIPS_KEPT = 40


@dataclass
class Verdict:
    """What the rules decided for one heartbeat."""

    state: dict[str, Any]
    #: The agent is flapping: hold it in degraded (True), release it (False), or no change (None).
    flapping: bool | None = None
    quarantine: str | None = None  # the reason, when the score fell to the threshold
    opened: list[str] = field(default_factory=list)


def _time(value: Any) -> datetime | None:
    return None if value is None else (value if isinstance(value, datetime) else datetime.fromisoformat(value))


def score_at(state: dict[str, Any], at: datetime, config: HealthConfig) -> float:
    """The security score now: the stored score plus what it recovered since."""
    stored = float(state.get("score", FULL_SCORE))
    since = _time(state.get("score_at"))
    if since is None or at <= since:
        return stored
    recovered = (at - since).total_seconds() / 3600 * config.score_recovery_per_hour
    return min(FULL_SCORE, stored + recovered)


def evaluate(
    state: dict[str, Any],
    metrics: dict[str, float | int],
    reported: str,
    at: datetime,
    config: HealthConfig,
    eps: episodes.AgentEpisodes,
    agent_id: str,
) -> Verdict:
    """Apply the rules to one heartbeat; opens and resolves episodes on ``eps``."""
    new = dict(state)
    verdict = Verdict(new)

    rate = metrics.get("error_rate")
    if rate is not None:
        if rate > config.error_rate:
            if eps.open_(
                episodes.ERROR_RATE,
                Severity.WARNING,
                at,
                f"{agent_id}: error rate {rate:.0%} (threshold {config.error_rate:.0%})",
                {"error_rate": rate},
            ):
                verdict.opened.append(episodes.ERROR_RATE)
        elif eps.is_open(episodes.ERROR_RATE) and rate < round(config.error_rate * config.error_rate_clear, 9):
            eps.resolve(episodes.ERROR_RATE, at, f"{agent_id}: error rate back to {rate:.0%}")

    saturated: list[str] = []
    measured = False
    cleared = True
    for metric, key in (("cpu_pct", "cpu_high_since"), ("memory_pct", "memory_high_since")):
        value = metrics.get(metric)
        if value is None:
            continue
        measured = True
        if value > config.saturation_pct:
            since = _time(new.get(key)) or at
            new[key] = since.isoformat()
            if at - since >= timedelta(seconds=config.saturation_for_s):
                saturated.append(f"{metric.split('_')[0]} {value:.0f}% since {since:%H:%M} UTC")
        else:
            new.pop(key, None)
        if value >= config.saturation_clear_pct:
            cleared = False
    if saturated:
        if eps.open_(episodes.SATURATION, Severity.HIGH, at, f"{agent_id}: {', '.join(saturated)}"):
            verdict.opened.append(episodes.SATURATION)
    elif cleared and measured and eps.is_open(episodes.SATURATION):
        back = f"{agent_id}: CPU and memory back under {config.saturation_clear_pct:.0f}%"
        eps.resolve(episodes.SATURATION, at, back)

    egress = metrics.get("bytes_out")
    hour = at.isoformat()[:13]  # YYYY-MM-DDTHH (strftime costs twice as much on every heartbeat)
    if new.get("egress_hour") != hour:
        new["egress_hour"], new["egress_bytes"] = hour, 0
        if eps.is_open(episodes.EGRESS):
            eps.resolve(episodes.EGRESS, at, f"{agent_id}: a new hour, egress counted from zero")
    if egress is not None and egress > 0:
        new["egress_bytes"] = int(new.get("egress_bytes") or 0) + int(egress)
        if new["egress_bytes"] > config.egress_bytes_per_hour and eps.open_(
            episodes.EGRESS,
            Severity.HIGH,
            at,
            f"{agent_id}: {new['egress_bytes'] / 1e9:.2f} GB sent this hour (threshold "
            f"{config.egress_bytes_per_hour / 1e9:.2f} GB)",
            {"bytes_out": new["egress_bytes"], "hour": hour},
        ):
            verdict.opened.append(episodes.EGRESS)

    window_start = at - timedelta(seconds=config.flap_window_s)
    keep_after = window_start - timedelta(seconds=config.flap_window_s)
    flips = [t for t in new.get("flips") or [] if datetime.fromisoformat(t) > keep_after]
    if new.get("last_reported") not in (None, reported):
        flips.append(at.isoformat())
    new["last_reported"] = reported
    new["flips"] = flips[-_FLIPS_KEPT:]
    recent = sum(1 for t in flips if datetime.fromisoformat(t) > window_start)
    if not new.get("flapping") and recent > config.flap_changes:
        new["flapping"] = True
        verdict.flapping = True
        if eps.open_(
            episodes.FLAPPING,
            Severity.WARNING,
            at,
            f"{agent_id}: {recent} status changes in {config.flap_window_s // 60} min; held in degraded",
            {"changes": recent},
        ):
            verdict.opened.append(episodes.FLAPPING)
    elif new.get("flapping") and recent <= config.flap_clear_changes:
        new["flapping"] = False
        verdict.flapping = False
        eps.resolve(episodes.FLAPPING, at, f"{agent_id}: status stable again ({recent} changes in the window)")

    score = score_at(state, at, config)
    cost = sum(config.score_costs.get(rule, 0) for rule in verdict.opened)
    if cost or "score" in state:
        score = max(0.0, score - cost)
        new["score"], new["score_at"] = round(score, 3), at.isoformat()
    if cost and score <= config.quarantine_at:
        verdict.quarantine = (
            f"security score {score:.0f} <= {config.quarantine_at:.0f} after {', '.join(verdict.opened)}"
        )
    return verdict
