"""The REST API's request and response bodies: one definition serves the API and the OpenAPI document.

Responses are views, not the stored documents: internal bookkeeping of an agent (event ids kept
for deduplication, the unflushed history tail, ...) stays out of the API so it can change freely.
Requests are strict (an unknown field is a 400) and documented in validation mode, stating every rule
the validation enforces, so that a body valid by the document is accepted.

The bodies live by resource: ``common`` (timestamps, errors, reasons, decimal amounts), ``agents``,
``costs`` (usage, budgets, protection, prices, pause and resume), ``alerts`` (alerts, silences,
releases, settings), ``enrollment`` (enrollment tokens, an agent's identity), ``approvals``
(approvals, roles, audit) and ``reports``; ``jobs`` and ``tasks`` document the domain's job and
task requests (shared/domain/jobs.py, shared/domain/assignment.py) with the rules their validators
enforce. This module lists every model the OpenAPI document describes, and names each body for the
routes.
"""

from __future__ import annotations

from pydantic import BaseModel

from shared.api.bodies import operator
from shared.api.bodies.agents import (
    AgentPage,
    AgentView,
    HistorySample,
    HistoryView,
    LearnedView,
    RejectionPage,
    RejectionView,
    agent_view,
)
from shared.api.bodies.alerts import (
    AcknowledgeRequest,
    AlertList,
    AlertView,
    ReleaseRequest,
    ReleaseView,
    SettingsView,
    SilenceList,
    SilenceRequest,
    SilenceView,
)
from shared.api.bodies.approvals import (
    SLACK_USER_PATTERN,
    ApprovalCreate,
    ApprovalList,
    ApprovalView,
    AuditPage,
    AuditView,
    RequesterView,
    RolesUpdate,
    RolesView,
)
from shared.api.bodies.common import ErrorBody, ErrorDetail, Health, Reason, Timestamp, View
from shared.api.bodies.costs import (
    AgentBudgetView,
    AgentHoldsView,
    AgentUsageView,
    BudgetUpdate,
    HoldView,
    PauseRequest,
    PeriodUsage,
    PriceList,
    PriceUpdate,
    PriceView,
    ProtectionUpdate,
    ProtectionView,
    ResumeRequest,
    TenantBudgetView,
    TenantUsageView,
    UsdPerToken,
    hold_views,
)
from shared.api.bodies.enrollment import (
    EnrollmentTokenCreate,
    EnrollmentTokenCreated,
    EnrollmentTokenList,
    EnrollmentTokenView,
    IdentityView,
    KeyRevokeRequest,
    KeyRevokeView,
    created_view,
    token_view,
)
from shared.api.bodies.prices import ModelUsageView, PriceQuoteView, PriceTierView
from shared.api.bodies.reports import DailyReportView, HourlyReportView

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
    PriceQuoteView,
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
    IdentityView,
    EnrollmentTokenView,
    EnrollmentTokenCreated,
    EnrollmentTokenList,
    KeyRevokeView,
    *operator.MODELS,
)
#: Every request body (documented in validation mode: what the API accepts).
REQUEST_MODELS: tuple[type[BaseModel], ...] = (
    BudgetUpdate,
    ProtectionUpdate,
    PriceUpdate,
    PauseRequest,
    ResumeRequest,
    SilenceRequest,
    AcknowledgeRequest,
    ReleaseRequest,
    ApprovalCreate,
    RolesUpdate,
    EnrollmentTokenCreate,
    KeyRevokeRequest,
    *operator.REQUEST_MODELS,
)

__all__ = [
    "MODELS",
    "REQUEST_MODELS",
    "SLACK_USER_PATTERN",
    "AcknowledgeRequest",
    "AgentBudgetView",
    "AgentHoldsView",
    "AgentPage",
    "AgentUsageView",
    "AgentView",
    "AlertList",
    "AlertView",
    "ApprovalCreate",
    "ApprovalList",
    "ApprovalView",
    "AuditPage",
    "AuditView",
    "BudgetUpdate",
    "DailyReportView",
    "EnrollmentTokenCreate",
    "EnrollmentTokenCreated",
    "EnrollmentTokenList",
    "EnrollmentTokenView",
    "ErrorBody",
    "ErrorDetail",
    "Health",
    "HistorySample",
    "HistoryView",
    "HoldView",
    "HourlyReportView",
    "IdentityView",
    "KeyRevokeRequest",
    "KeyRevokeView",
    "LearnedView",
    "ModelUsageView",
    "PauseRequest",
    "PeriodUsage",
    "PriceList",
    "PriceQuoteView",
    "PriceTierView",
    "PriceUpdate",
    "PriceView",
    "ProtectionUpdate",
    "ProtectionView",
    "Reason",
    "RejectionPage",
    "RejectionView",
    "ReleaseRequest",
    "ReleaseView",
    "RequesterView",
    "ResumeRequest",
    "RolesUpdate",
    "RolesView",
    "SettingsView",
    "SilenceList",
    "SilenceRequest",
    "SilenceView",
    "TenantBudgetView",
    "TenantUsageView",
    "Timestamp",
    "UsdPerToken",
    "View",
    "agent_view",
    "created_view",
    "hold_views",
    "token_view",
]
