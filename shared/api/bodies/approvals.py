"""The REST API's approval bodies: requests for a human decision, a tenant's Slack roles, the audit log."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any, Literal

from fleet_agent.contracts import AGENT_ID_PATTERN
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from shared.api.bodies.common import (
    POSITIVE_USD_TEXT,
    USD_TEXT,
    Timestamp,
    View,
    decimal_doc,
    given,
    not_blank_doc,
)

SLACK_USER_PATTERN = r"^[UW][A-Z0-9]{2,20}$"
_NO_BUDGET = {"budget_period": {"type": "null"}, "budget_usd": {"type": "null"}}


def _approval_doc(schema: dict[str, Any]) -> None:
    """State the rules of each kind (the model's ``_kind_fields``), one branch per kind:

    - an operation names an agent or a tenant;
    - a release and a budget raise name an agent;
    - a budget raise names ``budget_period`` and ``budget_usd``, which belong to it alone.
    """
    schema["oneOf"] = [
        {
            "properties": {"kind": {"const": "operation"}, **_NO_BUDGET},
            "anyOf": [given("agent_id", "string"), given("tenant", "string")],
        },
        {
            "required": ["agent_id"],
            "properties": {"kind": {"const": "release"}, "agent_id": {"type": "string"}, **_NO_BUDGET},
        },
        {
            "required": ["agent_id", "budget_period", "budget_usd"],
            "properties": {
                "kind": {"const": "budget_raise"},
                "agent_id": {"type": "string"},
                "budget_period": {"type": "string"},
                "budget_usd": {"type": ["number", "string"]},
            },
        },
    ]


class ApprovalCreate(BaseModel):
    """A request for a human decision, posted to the tenant's approvals channel in Slack."""

    model_config = ConfigDict(extra="forbid", frozen=True, json_schema_extra=_approval_doc)

    kind: Literal["operation", "budget_raise", "release"]
    agent_id: str | None = Field(default=None, pattern=AGENT_ID_PATTERN, description="Required but for operation.")
    tenant: str | None = Field(default=None, pattern=AGENT_ID_PATTERN, description="Default: the agent's.")
    summary: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)] = Field(
        json_schema_extra=not_blank_doc()
    )
    reason: Annotated[str, StringConstraints(strip_whitespace=True, max_length=1000)] = ""
    estimated_cost_usd: Annotated[Decimal, Field(ge=0, le=Decimal("1000000000"), decimal_places=9)] | None = Field(
        default=None,
        json_schema_extra=decimal_doc(pattern=USD_TEXT, maximum=1_000_000_000, places=9, nullable=True),
    )
    expires_in_s: int | None = Field(default=None, ge=60, le=7 * 86400, description="Default: the tenant's.")
    budget_period: Literal["hourly", "daily", "monthly"] | None = None
    budget_usd: Annotated[Decimal, Field(gt=0, le=Decimal("1000000000"), decimal_places=9)] | None = Field(
        default=None,
        json_schema_extra=decimal_doc(
            pattern=POSITIVE_USD_TEXT, maximum=1_000_000_000, exclusive_minimum=True, places=9, nullable=True
        ),
    )
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


class RequesterView(View):
    kind: str
    id: str
    owner: str | None = None


class ApprovalView(View):
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


class ApprovalList(View):
    items: list[ApprovalView] = Field(description="Newest first.")


RoleName = Literal["viewer", "operator", "approver", "admin"]


class RolesView(View):
    tenant: str
    roles: dict[str, RoleName] = Field(
        description="Slack user id -> role. Each role includes those before it: viewer, operator, approver, admin."
    )


class RolesUpdate(BaseModel):
    """The tenant's whole map (PUT replaces it): Slack user id -> role."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Every key matches the pattern: a key that does not is no additional property the API accepts.
    roles: dict[Annotated[str, StringConstraints(pattern=SLACK_USER_PATTERN)], RoleName] = Field(
        max_length=2000, json_schema_extra={"additionalProperties": False}
    )


class AuditView(View):
    id: str
    at: Timestamp
    actor: str = Field(description="api:<key name>, slack:<user id>, agent:<id>, system, ...")
    action: str
    target: str
    outcome: str = Field(description="applied, refused, requested, usage, unchanged, failed, ...")
    tenant: str | None = None
    details: dict[str, Any] = Field(default_factory=dict)


class AuditPage(View):
    items: list[AuditView] = Field(description="Newest first.")
    next_page_token: str | None = Field(default=None, description="Pass as ?page_token= for the next (older) page.")
