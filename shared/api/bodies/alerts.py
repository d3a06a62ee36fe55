"""The REST API's alert bodies: alert episodes, silences and maintenance windows, releases, and a
tenant's settings (alerting, health rules, jobs, tasks)."""

from __future__ import annotations

from typing import Any, Literal

from fleet_agent.contracts import AGENT_ID_PATTERN
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from shared.api.bodies.common import Reason, Timestamp, View, given


class AlertView(View):
    """An alert episode: one per (agent or tenant, rule) while the condition lasts."""

    id: str = Field(description="Deterministic: the subject, the rule and the episode's number (or window).")
    rule: str = Field(
        description="liveness, error_rate, saturation, flapping, egress, security, fleet_offline, "
        "budget_threshold, budget_exhausted, budget_forecast, breaker_open, runaway, cost_spike, unpriced_model..."
    )
    kind: str = Field(description="The same as rule (kept for clients of the first alerts API).")
    title: str = ""
    severity: Literal["info", "warning", "high", "critical", "emergency"]
    state: Literal["open", "resolved"]
    tenant: str
    agent_id: str | None = Field(default=None, description="None for a tenant-wide episode (a root alert).")
    message: str = Field(description="The latest summary.")
    resolution: str | None = None
    window: str | None = None
    details: dict[str, Any] = Field(default_factory=dict)
    opened_at: Timestamp
    raised_at: Timestamp = Field(description="The same as opened_at.")
    resolved_at: Timestamp | None = None
    repeats: int = Field(default=0, description="Reminders sent while it stayed open.")
    silenced: str | None = Field(default=None, description="The silence that held back its opening, if any.")
    inhibited_by: str | None = Field(default=None, description="The root alert it was held back under, if any.")
    slack: dict[str, str] | None = Field(default=None, description="channel and ts of its Slack message.")
    acknowledged_by: str | None = Field(
        default=None,
        description="Who acknowledged it: a Slack user id, or api:<key name> (the API or the console); "
        "reminders stop until it escalates.",
    )
    acknowledged_at: Timestamp | None = None


class AlertList(View):
    items: list[AlertView] = Field(description="Newest first.")


def _silence_doc(schema: dict[str, Any]) -> None:
    """State the rules the API applies to a silence, besides the fields' own:

    - exactly one of ``duration_s`` and ``expires_at`` (a silence always expires);
    - it names an agent, a tenant or a rule (a key scoped to a tenant names its tenant by itself, so
      the document states the stricter rule of unscoped keys);
    - a maintenance window names an agent or a tenant, and no rule.

    The rules on times (``expires_at`` in the future, after ``starts_at`` and at most 30 days after it)
    depend on the clock and are in the description.
    """
    scope = [given("agent_id", "string"), given("tenant", "string")]
    schema["allOf"] = [
        {"oneOf": [given("duration_s", "integer"), given("expires_at", "string")]},
        {"anyOf": [*scope, given("rule", "string")]},
        {
            "anyOf": [
                {"properties": {"maintenance": {"const": False}}},
                {
                    "required": ["maintenance"],
                    "properties": {"maintenance": {"const": True}, "rule": {"type": "null"}},
                    "anyOf": scope,
                },
            ]
        },
    ]


class SilenceRequest(BaseModel):
    """A silence (or maintenance window) by agent, tenant or rule, always with an expiry: exactly one of
    ``duration_s`` and ``expires_at``. The expiry is in the future, after ``starts_at`` and at most 30
    days after it."""

    model_config = ConfigDict(extra="forbid", frozen=True, json_schema_extra=_silence_doc)

    agent_id: str | None = Field(default=None, pattern=AGENT_ID_PATTERN)
    tenant: str | None = Field(default=None, pattern=AGENT_ID_PATTERN)
    rule: str | None = Field(default=None, pattern=r"^[a-z][a-z0-9_.]{0,63}$")
    reason: Reason
    maintenance: bool = Field(
        default=False, description="Also stop the liveness ladder for the agents it matches (no rule allowed)."
    )
    starts_at: AwareDatetime | None = Field(default=None, description="Default: now.")
    duration_s: int | None = Field(default=None, ge=60, le=30 * 86400, description="Either this or expires_at.")
    expires_at: AwareDatetime | None = None
    id: str | None = Field(
        default=None,
        pattern=r"^sil-[0-9a-f]{16}$",
        description="Optional: the silence's id, chosen by the client (sil- and 16 hex digits), which makes the "
        "call idempotent: a repeat with the same id returns the silence already created and creates nothing "
        "(409 when that id is another silence's). Default: a new random id.",
    )


class SilenceView(View):
    id: str
    agent_id: str | None = None
    tenant: str | None = None
    rule: str | None = None
    maintenance: bool
    reason: str
    created_by: str
    created_at: Timestamp
    starts_at: Timestamp
    expires_at: Timestamp
    ended_at: Timestamp | None = None
    ended_by: str | None = None
    active: bool


class SilenceList(View):
    items: list[SilenceView] = Field(description="Silences not yet expired, soonest expiry first.")


class AcknowledgeRequest(BaseModel):
    """Acknowledge an open alert episode: no fields (the caller's key says who)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ReleaseRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    reason: Reason


class ReleaseView(View):
    agent_id: str
    tenant: str
    status: str
    liveness: str
    released: list[str] = Field(description="What was lifted: frozen, quarantine.")
    resolved: list[str] = Field(description="Episodes the release resolved.")


class SettingsView(View):
    """A tenant's alerting or health-rule settings: its overrides and the effective values."""

    tenant: str
    overrides: dict[str, Any]
    effective: dict[str, Any]
