"""The REST API's cost bodies: usage, holds, budgets, protection thresholds, prices, pause and resume."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any

from fleet_agent.contracts import BudgetSpec
from pydantic import BaseModel, ConfigDict, Field, model_validator

from shared.api.bodies.common import POSITIVE_USD_TEXT, Reason, Timestamp, View, decimal_doc, given
from shared.api.bodies.prices import ModelUsageView, PriceTierView
from shared.domain.lifecycle import State
from shared.domain.protection import Protection, ProtectionOverrides


class HoldView(View):
    """Why the agent must not call its model, as last told to it."""

    command: str = Field(description="The command that announced the hold (pause, budget_exhausted, ...).")
    command_id: str | None = None
    reason: str = ""
    issued_at: Timestamp | None = None
    until: Timestamp | None = Field(default=None, description="When the hold lifts by itself; null: until lifted.")


class PeriodUsage(View):
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
    rate_usd_per_hour: str | None = Field(
        default=None,
        description="Recent spend per hour in USD, a decimal string: the previous hour and this one so far, or "
        "this hour alone after 10 minutes when higher (docs/costs.md, Budget forecast).",
    )
    rate_tokens_per_hour: int | None = Field(default=None, description="Recent tokens per hour, the same way.")
    projected_limit_at: Timestamp | None = Field(
        default=None,
        description="When the period's first hard limit is reached at that rate; null: not before the period "
        "resets, no hard limit, or reached already.",
    )


class LeaseView(View):
    """The agent's open lease epoch (docs/costs.md, Budget leases): what it was granted and what it holds
    in its tenant's reserve."""

    epoch: str
    lease_id: str = Field(description="The latest grant: <epoch>.<seq>.")
    granted_usd: str = Field(description="USD granted in the epoch so far, a decimal string.")
    charged_usd: str = Field(description="USD the epoch holds in the tenant's reserve (grants and spend beyond them).")
    granted_tokens: int | None = Field(description="Tokens granted; null when no token budget applies.")
    started_at: Timestamp
    expires_at: Timestamp = Field(description="When the agent must stop spending the epoch without a new grant.")
    returns_at: Timestamp = Field(description="When its unspent part returns to the tenant's pool, at the latest.")


class ReservedView(View):
    """What a tenant's budget has committed in one period: spend, plus what open leases may still spend."""

    reserved_usd: str
    reserved_tokens: int
    open_epochs: int = Field(description="Agents holding a lease this month.")


_PERIODS = Field(description="Keyed by hour, day and month (the current UTC periods).")
_SOURCE = Field(description='Where the budget comes from: "registration", "api" (wins) or null.')


class AgentUsageView(View):
    agent_id: str
    tenant: str
    periods: dict[str, PeriodUsage] = _PERIODS
    holds: dict[str, HoldView] = Field(description="Current holds by name (budget, tenant_budget, breaker, pause...).")
    budget: BudgetSpec | None
    budget_source: str | None = _SOURCE
    lease: LeaseView | None = Field(default=None, description="The open lease epoch; null: the agent holds none.")
    models: dict[str, ModelUsageView] = Field(
        default_factory=dict,
        description="This UTC month's calls by model, with the price sources they were priced at.",
    )


class TenantUsageView(View):
    tenant: str
    periods: dict[str, PeriodUsage] = _PERIODS
    budget: BudgetSpec | None
    budget_source: str | None = _SOURCE
    reserved: dict[str, ReservedView] = Field(
        default_factory=dict, description="The lease reserve by period (hour, day, month): never above a hard limit."
    )


class AgentBudgetView(View):
    agent_id: str
    tenant: str
    budget: BudgetSpec | None = Field(description="null: no budget.")
    budget_source: str | None = _SOURCE
    holds: dict[str, HoldView] = Field(description="Current holds, after the budget was re-evaluated.")


class TenantBudgetView(View):
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
#: Every limit a budget may set: the hard ones and their soft counterparts.
BUDGET_LIMITS = (*_HARD, *(f"soft_{name}" for name in _HARD))
#: A USD limit as the contract bounds it (fleet_agent.contracts.LimitUsd): above 0, at most a billion,
#: nano-dollar precision.
_LIMIT_USD_DOC = decimal_doc(
    pattern=POSITIVE_USD_TEXT, maximum=1_000_000_000, exclusive_minimum=True, places=9, nullable=True
)


def _budget_doc(schema: dict[str, Any]) -> None:
    """State what the validation enforces beyond the field types: the USD limits' string form, and at
    least one limit (``anyOf``: one of them is given and not null). That a soft limit is at most its hard
    limit compares two values, which JSON Schema cannot state: the description says it."""
    properties = schema["properties"]
    for name in BUDGET_LIMITS:
        if name.endswith("_usd"):
            properties[name] = {**properties[name], **_LIMIT_USD_DOC}
    schema["anyOf"] = [
        given(name, ["number", "string"] if name.endswith("_usd") else "integer") for name in BUDGET_LIMITS
    ]


class BudgetUpdate(BudgetSpec):
    """A budget (PUT replaces the whole budget): at least one hard or soft limit. USD amounts are
    decimal strings or numbers; a soft limit is ``soft_ratio`` of its hard limit unless given, and
    at most its hard limit when both are given."""

    model_config = ConfigDict(json_schema_extra=_budget_doc)

    @model_validator(mode="after")
    def _some_limit(self) -> BudgetUpdate:
        if not any(getattr(self, name) is not None or getattr(self, f"soft_{name}") is not None for name in _HARD):
            raise ValueError("a budget needs at least one hard or soft limit (e.g. daily_usd)")
        return self


def _protection_doc(schema: dict[str, Any]) -> None:
    """The baseline's string form: a decimal from 0 to 999,999.999999999 (a number may be 1,000,000)."""
    field = schema["properties"]["spike_min_baseline_usd"]
    field.update(decimal_doc(pattern=r"^(0|[1-9][0-9]{0,5})(\.[0-9]{1,9})?$", maximum=1_000_000, nullable=True))


class ProtectionUpdate(ProtectionOverrides):
    """Overrides of the protection thresholds (PUT replaces them all; ``{}`` goes back to the defaults)."""

    model_config = ConfigDict(json_schema_extra=_protection_doc)


class ProtectionView(View):
    tenant: str
    agent_id: str | None = Field(default=None, description="null for a tenant's overrides.")
    overrides: ProtectionOverrides = Field(description="What was set at this level (unset fields are null).")
    effective: Protection = Field(description="Defaults, then the tenant's overrides, then the agent's.")


UsdPerToken = Annotated[
    Decimal,
    Field(ge=0, le=1, decimal_places=12),
    Field(
        json_schema_extra=decimal_doc(
            pattern=r"^(0(\.[0-9]{1,12})?|1(\.0{1,12})?)$", maximum=1, places=12, nullable=False
        )
    ),
]


class PriceUpdate(BaseModel):
    """USD per token, as decimal strings (exact) or numbers, from 0 to 1, at most 12 decimals."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    input_usd: UsdPerToken
    output_usd: UsdPerToken
    #: The parts priced apart (absent: charged at the input / output price, as before).
    cache_read_usd: UsdPerToken | None = None
    cache_write_usd: UsdPerToken | None = None
    reasoning_usd: UsdPerToken | None = None


class PriceView(View):
    model: str
    input_usd: str = Field(description="USD per input token, a decimal string.")
    output_usd: str = Field(description="USD per output token, a decimal string.")
    cache_read_usd: str | None = Field(
        default=None, description="USD per input token read from the prompt cache; null: at input_usd."
    )
    cache_write_usd: str | None = Field(
        default=None, description="USD per input token written to the prompt cache; null: at input_usd."
    )
    reasoning_usd: str | None = Field(
        default=None, description="USD per output token spent reasoning; null: at output_usd."
    )
    source: str = Field(
        description="What sets it: override:fleet (PUT /v1/prices/{model} without tenant), override:tenant "
        "(with ?tenant=), or catalog:genai-prices@<version> (?catalog=true: the price catalog shipped with the code)."
    )
    tiers: list[PriceTierView] = Field(
        default_factory=list,
        description="Long-context prices by ascending threshold (catalog models only; often none).",
    )


class PriceList(View):
    tenant: str | None = Field(
        description="The tenant whose overrides are included; null: global prices only (and ?catalog=true)."
    )
    items: list[PriceView] = Field(description="Ordered by model (the catalog's by provider/model).")
    next_page_token: str | None = Field(
        default=None, description="?catalog=true only: pass as page_token for the next page; null: the last page."
    )


class PauseRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    reason: Reason


class ResumeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    reason: Reason | None = None


class AgentHoldsView(View):
    """An agent's status and holds after a pause or a resume."""

    agent_id: str
    tenant: str
    status: State
    status_since: Timestamp
    holds: dict[str, HoldView]


def hold_views(holds: dict[str, dict[str, Any]]) -> dict[str, HoldView]:
    return {name: HoldView.model_validate(hold) for name, hold in sorted(holds.items())}
