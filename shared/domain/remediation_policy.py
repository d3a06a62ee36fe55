"""A tenant's remediation policy, as data: which condition of an agent leads to which command, and the
safety settings around it (mode, per-agent hourly cap, restart loop, critical label).

Stored as overrides in the tenant's document (``PUT /v1/tenants/{tenant}/remediation``) over these defaults;
shared/domain/remediation.py applies it.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

from fleet_agent.contracts import CommandType
from fleet_agent.messages.commands import ACKED_COMMANDS
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator

from shared.domain.agent_actions import KEEP
from shared.domain.episodes import merged


class Mode(StrEnum):
    #: Act: send the rule's command.
    ON = "on"
    #: Record (audit, episode thread) what would have been done; send nothing.
    DRY_RUN = "dry_run"
    #: Do nothing.
    OFF = "off"


class Condition(StrEnum):
    """What a rule reacts to: an open episode of the agent (or its liveness rung)."""

    ERROR_RATE = "error_rate"
    FROZEN = "frozen"
    MEMORY_SATURATED = "memory_saturated"
    FAILURE_RISK = "failure_risk"


#: The episode (shared/domain/episodes.py rule name) each condition reads, and acts once per.
EPISODE_OF: dict[Condition, str] = {
    Condition.ERROR_RATE: "error_rate",
    Condition.FROZEN: "liveness",
    Condition.MEMORY_SATURATED: "saturation",
    Condition.FAILURE_RISK: "failure_risk",
}

Name = Annotated[str, StringConstraints(pattern=r"^[a-z0-9_-]{1,40}$")]
Text = Annotated[str, StringConstraints(min_length=1, max_length=100)]


class Rule(BaseModel):
    """``when`` the condition holds (for at least ``for_s`` since its episode opened), send ``action``;
    only to agents of ``agent_type`` (when set) carrying every label in ``labels``."""

    model_config = ConfigDict(extra="forbid")

    name: Name
    when: Condition
    action: CommandType
    agent_type: Text | None = None
    labels: dict[Text, Text] = Field(default_factory=dict, max_length=10)
    for_s: int = Field(default=0, ge=0, le=7 * 86400)
    #: When the agent must have carried it out (stop/restart: exit by then at the latest).
    deadline_s: int | None = Field(default=None, ge=5, le=3600)
    #: ``throttle`` only: the cap, and for how long (the command's ``until``).
    calls_per_minute: int | None = Field(default=None, ge=0, le=1_000_000)
    throttle_for_s: int = Field(default=3600, ge=60, le=7 * 86400)

    @field_validator("action")
    @classmethod
    def _remediation(cls, value: CommandType) -> CommandType:
        if value not in ACKED_COMMANDS:
            allowed = ", ".join(sorted(c.value for c in ACKED_COMMANDS))
            raise ValueError(f"{value.value} is not a remediation command ({allowed})")
        return value

    @model_validator(mode="after")
    def _throttle(self) -> Rule:
        if self.action is CommandType.THROTTLE and self.calls_per_minute is None:
            raise ValueError("a throttle rule names calls_per_minute")
        if self.action is not CommandType.THROTTLE and self.calls_per_minute is not None:
            raise ValueError("calls_per_minute belongs to a throttle rule")
        if self.when is Condition.FROZEN and self.for_s:
            # The sweep decides at the freeze and does not come back to a frozen agent: a wait never ends.
            raise ValueError("a frozen rule acts when the agent freezes: for_s must be 0")
        return self

    @property
    def specificity(self) -> int:
        return (self.agent_type is not None) + len(self.labels)

    def matches(self, agent_type: str, labels: dict[str, str]) -> bool:
        if self.agent_type is not None and self.agent_type != agent_type:
            return False
        return all(labels.get(k) == v for k, v in self.labels.items())


def _defaults() -> list[Rule]:
    """The issue's defaults: error rate open 10 min -> throttle; frozen -> restart; memory saturated ->
    restart; a learned failure warning -> drain."""
    return [
        Rule(name="error-rate-throttle", when=Condition.ERROR_RATE, action=CommandType.THROTTLE, for_s=600,
             calls_per_minute=10),
        Rule(name="frozen-restart", when=Condition.FROZEN, action=CommandType.RESTART, deadline_s=60),
        Rule(name="memory-restart", when=Condition.MEMORY_SATURATED, action=CommandType.RESTART, deadline_s=60),
        Rule(name="failure-risk-drain", when=Condition.FAILURE_RISK, action=CommandType.DRAIN),
    ]  # fmt: skip


class RestartLoop(BaseModel):
    """This many policy restarts within ``within_s`` make a loop: a person is called instead."""

    model_config = ConfigDict(extra="forbid")

    restarts: int = Field(default=3, ge=1, le=KEEP)
    within_s: int = Field(default=3600, ge=60, le=7 * 86400)


class RemediationPolicy(BaseModel):
    """A tenant's policy. Every field has a default; a tenant overrides any of them."""

    model_config = ConfigDict(extra="forbid")

    #: ``on`` by default: the defaults only ever reach agents whose SDK lists ``commands.v2`` (older ones
    #: are skipped), they are capped per agent and hour, and a loop calls a person; ``dry_run`` to try a
    #: policy first, ``off`` to stop.
    mode: Mode = Mode.ON
    #: Automatic actions per agent in any hour (counted from the agent's tracked commands, of which the
    #: policy's of the last hour are always kept).
    max_actions_per_hour: int = Field(default=3, ge=0, le=KEEP)
    restart_loop: RestartLoop = Field(default_factory=RestartLoop)
    #: ``key=value``: agents carrying this label are critical, and a ``stop`` on them asks an approver first
    #: (empty: none is). One string, not a map: overrides are merged key by key into map fields.
    critical_label: Annotated[str, StringConstraints(pattern=r"^([^=]{1,100}=.{1,100})?$")] = "critical=true"
    #: How long the approval of a stop on a critical agent waits.
    approval_expiry_s: int = Field(default=3600, ge=60, le=7 * 86400)
    #: Tried most specific first (agent type and labels), then in order.
    rules: list[Rule] = Field(default_factory=_defaults, max_length=50)

    @field_validator("rules")
    @classmethod
    def _unique(cls, rules: list[Rule]) -> list[Rule]:
        names = [r.name for r in rules]
        if len(set(names)) != len(names):
            raise ValueError("rule names must be unique")
        return rules

    @model_validator(mode="after")
    def _loop_below_cap(self) -> RemediationPolicy:
        # Above the cap the restarts that would make a loop are never sent: the loop would never escalate.
        if self.max_actions_per_hour and self.restart_loop.restarts > self.max_actions_per_hour:
            raise ValueError("restart_loop.restarts must not exceed max_actions_per_hour")
        return self

    @classmethod
    def for_tenant(cls, overrides: dict[str, Any] | None) -> RemediationPolicy:
        return cls.model_validate(merged(cls, overrides))

    def rule_for(self, condition: Condition, agent_type: str, labels: dict[str, str]) -> Rule | None:
        """The most specific rule for ``condition`` that matches the agent (ties: the first listed)."""
        fitting = [r for r in self.rules if r.when is condition and r.matches(agent_type, labels)]
        return max(fitting, key=lambda r: r.specificity, default=None)

    def critical(self, labels: dict[str, str]) -> bool:
        if not self.critical_label:
            return False
        key, value = self.critical_label.split("=", 1)
        return labels.get(key) == value
