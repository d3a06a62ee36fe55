"""Silences and maintenance windows: by agent, tenant or rule, always with an expiry.

A silence holds back the opening, escalation and reminders of matching episodes; never their
resolution. A maintenance window is a silence that also stops the liveness ladder for the agents
it matches. Neither ends by anything an agent does (a heartbeat never ends maintenance): only its
expiry or an operator's DELETE does.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

#: The longest a silence may last: anything longer is a configuration change, not a silence.
MAX_SILENCE = timedelta(days=30)
RETENTION = timedelta(days=30)


class Silence(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str
    agent_id: str | None = None
    tenant: str | None = None
    rule: str | None = None
    maintenance: bool = False
    reason: str = Field(min_length=1, max_length=500)
    created_by: str
    created_at: datetime
    starts_at: datetime
    expires_at: datetime
    ended_at: datetime | None = None
    ended_by: str | None = None

    @model_validator(mode="after")
    def _scoped(self) -> Silence:
        if not (self.agent_id or self.tenant or self.rule):
            raise ValueError("a silence names an agent, a tenant or a rule (or several)")
        if self.expires_at <= self.starts_at:
            raise ValueError("expires_at must be after starts_at")
        if self.expires_at - self.starts_at > MAX_SILENCE:
            raise ValueError(f"a silence lasts at most {MAX_SILENCE.days} days")
        return self

    def active(self, now: datetime) -> bool:
        return self.ended_at is None and self.starts_at <= now < self.expires_at

    def matches(self, *, tenant: str | None, agent_id: str | None, rule: str | None) -> bool:
        return (
            (self.agent_id is None or self.agent_id == agent_id)
            and (self.tenant is None or self.tenant == tenant)
            and (self.rule is None or self.rule == rule)
        )

    def to_doc(self) -> dict[str, Any]:
        return {**self.model_dump(mode="python"), "expire_at": self.expires_at + RETENTION}


def silencing(
    silences: list[Silence], now: datetime, *, tenant: str | None, agent_id: str | None, rule: str | None
) -> Silence | None:
    """The active silence (or maintenance window) that matches, if any."""
    for silence in silences:
        if silence.active(now) and silence.matches(tenant=tenant, agent_id=agent_id, rule=rule):
            return silence
    return None


def maintenance_until(silences: list[Silence], now: datetime, *, tenant: str, agent_id: str) -> datetime | None:
    """When the agent's maintenance ends (the latest matching window), or None when not in one."""
    ends = [
        s.expires_at
        for s in silences
        if s.maintenance and s.rule is None and s.active(now) and s.matches(tenant=tenant, agent_id=agent_id, rule=None)
    ]
    return max(ends) if ends else None


def snooze_id(trigger: str, episode_id: str) -> str:
    """A snooze's silence id, from what triggered it (a Slack click's trigger_id; the console's action and
    form token) and the episode: a repeat of the same trigger is the same silence."""
    return "sil-" + hashlib.sha256(f"{trigger}|{episode_id}".encode()).hexdigest()[:16]
