"""The REST API's request and response bodies: one definition serves the API and the OpenAPI document.

Responses are views, not the stored documents: internal bookkeeping of an agent (event ids kept
for deduplication, the unflushed history tail, ...) stays out of the API so it can change freely.
Requests are strict (an unknown field is a 400) and documented in validation mode.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from fleet_agent.contracts import AGENT_ID_PATTERN, BudgetSpec
from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints, model_validator

from shared.domain.agent_record import AgentRecord
from shared.domain.lifecycle import State
from shared.domain.protection import Protection, ProtectionOverrides
from shared.domain.report_daily import DailyReport
from shared.domain.report_hourly import HourlyReport


def _aware(value: datetime) -> datetime:
    """Firestore returns aware datetimes; a naive one is UTC, so every timestamp serialises as RFC 3339."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


Timestamp = Annotated[datetime, AfterValidator(_aware)]


class _View(BaseModel):
    # Stored documents carry more fields than a view shows (expire_at, ...): drop them.
    model_config = ConfigDict(extra="ignore", frozen=True)


class AgentView(_View):
    """An agent as the API shows it."""

    agent_id: str
    tenant: str
    name: str
    agent_type: str
    version: str
    owner: str
    capabilities: list[str] = Field(default_factory=list)
    labels: dict[str, str] = Field(default_factory=dict)
    resources: dict[str, Any] = Field(default_factory=dict)
    heartbeat_interval_s: int
    status: State = Field(description="Lifecycle state, decided by the server.")
    status_since: Timestamp
    reported_status: str | None = Field(default=None, description="The agent's own last reported status.")
    registered_at: Timestamp
    last_registered_at: Timestamp | None = None
    last_heartbeat_at: Timestamp | None = Field(default=None, description="Server receive time.")
    last_seq: int = Field(description="Sequence number of the last accepted heartbeat; -1 before any.")
    heartbeats: int = 0
    metrics: dict[str, float | int] = Field(default_factory=dict, description="Metrics of the last heartbeat.")
    late_after: Timestamp | None = Field(
        default=None, description="When the agent counts as late if no heartbeat arrives before."
    )
    versions: list[str] = Field(default_factory=list, description="Recent versions, oldest first.")
    learned: LearnedView = Field(
        default_factory=lambda: LearnedView(), description="What the learned models made of its last heartbeat."
    )


class LearnedView(_View):
    """The learned models' verdict on an agent's last heartbeat (shared/ml/live.py)."""

    status: str = Field(
        default="unscored", description="unscored (no model, or too few metrics), insufficient_data, normal, anomalous"
    )
    reason: str | None = None
    score: float | None = Field(default=None, description="Anomaly score (higher is stranger).")
    risk: float | None = Field(default=None, description="Predicted risk of failing within the horizon.")
    anomaly_model: str | None = None
    failure_model: str | None = None


class AgentPage(_View):
    items: list[AgentView]
    next_page_token: str | None = Field(
        default=None, description="Pass as page_token for the next page; null on the last page."
    )


class RejectionView(_View):
    """An event the fleet refused, with the reason and the original payload (for diagnosis and replay)."""

    id: str = Field(description="The Pub/Sub message id.")
    code: str = Field(description="Machine-readable reason, e.g. schema_violation, unknown_agent.")
    reason: str
    details: Any = None
    agent_id: str | None = None
    event_type: str | None = None
    source: str = ""
    payload: dict[str, Any] = Field(default_factory=dict)
    received_at: Timestamp


class RejectionPage(_View):
    items: list[RejectionView]
    next_page_token: str | None = None


class HistorySample(_View):
    """One accepted heartbeat."""

    seq: int
    at: Timestamp = Field(description="Server receive time.")
    sent_at: Timestamp | None = Field(default=None, description="The agent's clock when it sent the heartbeat.")
    status: str = Field(description="The status the agent reported.")
    metrics: dict[str, float | int] = Field(default_factory=dict)


class HistoryView(_View):
    agent_id: str
    samples: list[HistorySample] = Field(description="Stored heartbeat samples, oldest first.")


class ErrorDetail(_View):
    code: str = Field(
        description="bad_request, unauthorized, forbidden, not_found, method_not_allowed, conflict, internal "
        "or unavailable."
    )
    reason: str
    details: list[dict[str, Any]] | None = Field(
        default=None,
        description="Only on an invalid request body: each validation error ({loc, msg, type}).",
    )


class ErrorBody(_View):
    """Every error response has this shape, whatever its status."""

    error: ErrorDetail


class Health(_View):
    status: Literal["ok"] = "ok"


# --- costs: usage, budgets, protection, prices, pauses, alerts -------------------------------------


class HoldView(_View):
    """Why the agent must not call its model, as last told to it."""

    command: str = Field(description="The command that announced the hold (pause, budget_exhausted, ...).")
    command_id: str | None = None
    reason: str = ""
    issued_at: Timestamp | None = None
    until: Timestamp | None = Field(default=None, description="When the hold lifts by itself; null: until lifted.")


class PeriodUsage(_View):
    """Usage of one UTC period (hour, day or month) and what is left of its hard limits."""

    period: str = Field(description="The period's key: 2026-11-21T10, 2026-11-21 or 2026-11.")
    spend_usd: str = Field(description="Exact spend in USD, a decimal string.")
    tokens: int
    input_tokens: int
    output_tokens: int
    calls: int
    failures: int
    unpriced_calls: int = Field(description="Calls with tokens but no price and no reported cost.")
    success_rate: float | None = Field(description="Share of calls that succeeded; null without calls.")
    budget_usd: str | None = Field(description="The hard USD limit of the period; null without one.")
    remaining_usd: str | None
    budget_tokens: int | None
    remaining_tokens: int | None
    starts_at: Timestamp
    resets_at: Timestamp


_PERIODS = Field(description="Keyed by hour, day and month (the current UTC periods).")
_SOURCE = Field(description='Where the budget comes from: "registration", "api" (wins) or null.')


class AgentUsageView(_View):
    agent_id: str
    tenant: str
    periods: dict[str, PeriodUsage] = _PERIODS
    holds: dict[str, HoldView] = Field(description="Current holds by name (budget, tenant_budget, breaker, pause...).")
    budget: BudgetSpec | None
    budget_source: str | None = _SOURCE


class TenantUsageView(_View):
    tenant: str
    periods: dict[str, PeriodUsage] = _PERIODS
    budget: BudgetSpec | None
    budget_source: str | None = _SOURCE


class AgentBudgetView(_View):
    agent_id: str
    tenant: str
    budget: BudgetSpec | None = Field(description="null: no budget.")
    budget_source: str | None = _SOURCE
    holds: dict[str, HoldView] = Field(description="Current holds, after the budget was re-evaluated.")


class TenantBudgetView(_View):
    tenant: str
    budget: BudgetSpec | None = Field(description="null: no budget.")
    budget_source: str | None = _SOURCE


_HARD = (
    "hourly_usd",
    "daily_usd",
    "monthly_usd",
    "hourly_tokens",
    "daily_tokens",
    "monthly_tokens",
)


class BudgetUpdate(BudgetSpec):
    """A budget (PUT replaces the whole budget): at least one hard or soft limit. USD amounts are
    decimal strings or numbers; a soft limit is ``soft_ratio`` of its hard limit unless given."""

    @model_validator(mode="after")
    def _some_limit(self) -> BudgetUpdate:
        if not any(getattr(self, name) is not None or getattr(self, f"soft_{name}") is not None for name in _HARD):
            raise ValueError("a budget needs at least one hard or soft limit (e.g. daily_usd)")
        return self


class ProtectionUpdate(ProtectionOverrides):
    """Overrides of the protection thresholds (PUT replaces them all; ``{}`` goes back to the defaults)."""


class ProtectionView(_View):
    tenant: str
    agent_id: str | None = Field(default=None, description="null for a tenant's overrides.")
    overrides: ProtectionOverrides = Field(description="What was set at this level (unset fields are null).")
    effective: Protection = Field(description="Defaults, then the tenant's overrides, then the agent's.")


UsdPerToken = Annotated[Decimal, Field(ge=0, le=1, decimal_places=12)]


class PriceUpdate(BaseModel):
    """USD per token, as decimal strings (exact) or numbers, from 0 to 1."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    input_usd: UsdPerToken
    output_usd: UsdPerToken


class PriceView(_View):
    model: str
    input_usd: str = Field(description="USD per input token, a decimal string.")
    output_usd: str = Field(description="USD per output token, a decimal string.")
    source: Literal["default", "api", "tenant"] = Field(
        description="default: shipped with the code; api: set globally; tenant: the tenant's override."
    )


class PriceList(_View):
    tenant: str | None = Field(description="The tenant whose overrides are included; null: global prices only.")
    items: list[PriceView] = Field(description="Ordered by model.")


Reason = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=500)]


class PauseRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    reason: Reason


class ResumeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    reason: Reason | None = None


class AgentHoldsView(_View):
    """An agent's status and holds after a pause or a resume."""

    agent_id: str
    tenant: str
    status: State
    status_since: Timestamp
    holds: dict[str, HoldView]


class AlertView(_View):
    """An alert episode: one per (agent or tenant, rule) while the condition lasts."""

    id: str = Field(description="Deterministic: the subject, the rule and the episode's number (or window).")
    rule: str = Field(
        description="liveness, error_rate, saturation, flapping, egress, security, fleet_offline, "
        "budget_threshold, budget_exhausted, breaker_open, runaway, cost_spike, unpriced_model..."
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
        default=None, description="The Slack user who clicked Acknowledge (reminders stop until it escalates)."
    )
    acknowledged_at: Timestamp | None = None


class AlertList(_View):
    items: list[AlertView] = Field(description="Newest first.")


class SilenceRequest(BaseModel):
    """A silence (or maintenance window) by agent, tenant or rule, always with an expiry."""

    model_config = ConfigDict(extra="forbid", frozen=True)

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


class SilenceView(_View):
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


class SilenceList(_View):
    items: list[SilenceView] = Field(description="Silences not yet expired, soonest expiry first.")


class ReleaseRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    reason: Reason


class ReleaseView(_View):
    agent_id: str
    tenant: str
    status: str
    liveness: str
    released: list[str] = Field(description="What was lifted: frozen, quarantine.")
    resolved: list[str] = Field(description="Episodes the release resolved.")


class SettingsView(_View):
    """A tenant's alerting or health-rule settings: its overrides and the effective values."""

    tenant: str
    overrides: dict[str, Any]
    effective: dict[str, Any]


# --- approvals, roles, audit ---------------------------------------------------------------------

SLACK_USER_PATTERN = r"^[UW][A-Z0-9]{2,20}$"


class ApprovalCreate(BaseModel):
    """A request for a human decision, posted to the tenant's approvals channel in Slack."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["operation", "budget_raise", "release"]
    agent_id: str | None = Field(default=None, pattern=AGENT_ID_PATTERN, description="Required but for operation.")
    tenant: str | None = Field(default=None, pattern=AGENT_ID_PATTERN, description="Default: the agent's.")
    summary: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
    reason: Annotated[str, StringConstraints(strip_whitespace=True, max_length=1000)] = ""
    estimated_cost_usd: Annotated[Decimal, Field(ge=0, le=Decimal("1000000000"), decimal_places=9)] | None = None
    expires_in_s: int | None = Field(default=None, ge=60, le=7 * 86400, description="Default: the tenant's.")
    budget_period: Literal["hourly", "daily", "monthly"] | None = None
    budget_usd: Annotated[Decimal, Field(gt=0, le=Decimal("1000000000"), decimal_places=9)] | None = None
    requested_by: str | None = Field(
        default=None,
        pattern=SLACK_USER_PATTERN,
        description="The Slack user asking (they may not approve it); default: this API key.",
    )
    request_id: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{7,63}$",
        description="Makes the request idempotent: the same id returns the same approval.",
    )

    @model_validator(mode="after")
    def _kind_fields(self) -> ApprovalCreate:
        if self.kind != "operation" and self.agent_id is None:
            raise ValueError(f"a {self.kind} names agent_id")
        if self.agent_id is None and self.tenant is None:
            raise ValueError("name agent_id or tenant")
        has_budget = (self.budget_period, self.budget_usd) != (None, None)
        if self.kind == "budget_raise" and None in (self.budget_period, self.budget_usd):
            raise ValueError("a budget_raise names budget_period and budget_usd")
        if self.kind != "budget_raise" and has_budget:
            raise ValueError("budget_period and budget_usd belong to a budget_raise")
        return self


class RequesterView(_View):
    kind: str
    id: str
    owner: str | None = None


class ApprovalView(_View):
    id: str
    tenant: str
    kind: str
    agent_id: str | None = None
    requester: RequesterView
    summary: str
    reason: str
    estimated_cost_usd: Decimal | None = None
    payload: dict[str, Any] = Field(default_factory=dict)
    created_at: Timestamp
    expires_at: Timestamp
    state: Literal["pending", "approved", "denied", "expired"]
    decided_by: str | None = Field(default=None, description="The Slack user who decided.")
    decided_at: Timestamp | None = None
    note: str = ""
    message: dict[str, str] | None = Field(default=None, description="The Slack message (channel, ts), once posted.")
    applied: str | None = Field(default=None, description="What carrying out the decision did.")
    post_error: str | None = Field(
        default=None, description="Why Slack refused the last post (no such channel...): retried every 15 minutes."
    )
    done_at: Timestamp | None = Field(
        default=None, description="When carrying out the decision finished: requester answered, message edited."
    )


class ApprovalList(_View):
    items: list[ApprovalView] = Field(description="Newest first.")


class RolesView(_View):
    tenant: str
    roles: dict[str, Literal["viewer", "operator", "approver", "admin"]] = Field(
        description="Slack user id -> role. Each role includes those before it: viewer, operator, approver, admin."
    )


class RolesUpdate(BaseModel):
    """The tenant's whole map (PUT replaces it): Slack user id -> role."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    roles: dict[
        Annotated[str, StringConstraints(pattern=SLACK_USER_PATTERN)],
        Literal["viewer", "operator", "approver", "admin"],
    ] = Field(max_length=2000)


class AuditView(_View):
    id: str
    at: Timestamp
    actor: str = Field(description="api:<key name>, slack:<user id>, agent:<id>, system, ...")
    action: str
    target: str
    outcome: str = Field(description="applied, refused, requested, usage, unchanged, failed, ...")
    tenant: str | None = None
    details: dict[str, Any] = Field(default_factory=dict)


class AuditPage(_View):
    items: list[AuditView] = Field(description="Newest first.")
    next_page_token: str | None = Field(default=None, description="Pass as ?page_token= for the next (older) page.")


#: Every response model the OpenAPI document describes (components are generated from these).
MODELS: tuple[type[BaseModel], ...] = (
    AgentView,
    AgentPage,
    RejectionView,
    RejectionPage,
    HistorySample,
    HistoryView,
    ErrorBody,
    Health,
    AgentUsageView,
    TenantUsageView,
    AgentBudgetView,
    TenantBudgetView,
    ProtectionView,
    PriceList,
    PriceView,
    AgentHoldsView,
    AlertList,
    SilenceView,
    SilenceList,
    ReleaseView,
    SettingsView,
    ApprovalView,
    ApprovalList,
    RolesView,
    AuditView,
    AuditPage,
)
#: Every request body (documented in validation mode: what the API accepts).
REQUEST_MODELS: tuple[type[BaseModel], ...] = (
    BudgetUpdate,
    ProtectionUpdate,
    PriceUpdate,
    PauseRequest,
    ResumeRequest,
    SilenceRequest,
    ReleaseRequest,
    ApprovalCreate,
    RolesUpdate,
)


def agent_view(record: AgentRecord) -> AgentView:
    """The public view of a stored agent (attributes are copied by name, extra ones dropped)."""
    view = AgentView.model_validate(record, from_attributes=True)
    return view.model_copy(update={"learned": LearnedView.model_validate(record.ml)}) if record.ml else view


def hold_views(holds: dict[str, dict[str, Any]]) -> dict[str, HoldView]:
    return {name: HoldView.model_validate(hold) for name, hold in sorted(holds.items())}


# --- reports -------------------------------------------------------------------------------------


class HourlyReportView(HourlyReport):
    """The hourly summary: what is unhealthy or changed, spend, calls, success rate, top agents by spend
    (the content of its Slack message)."""


class DailyReportView(DailyReport):
    """The daily cost report: spend per tenant and agent against budgets, the trend, optimization
    suggestions (the content of its Slack message; the chart is drawn from ``trend``)."""
