"""The REST API's tenant settings: alerting, health rules, training jobs, task assignment, agent identity
and the remediation policy, each a kind of the table below, served by one pair of routes
(``GET``/``PUT /v1/tenants/{tenant}/<kind>``).

The overrides are stored in the tenant's document (shared/store/config.py); what is in effect is the
kind's model (in shared/domain) filled with the deployment's defaults, then the overrides.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, RootModel, ValidationError

from shared.api import core
from shared.api.bodies import SettingsView
from shared.api.core import TENANT, ApiError, Call, Route, Routes
from shared.api.tenancy import visible_tenant, write_tenant
from shared.domain.api_keys import Role
from shared.domain.assignment_tasks import AssignmentConfig
from shared.domain.episodes import AlertingConfig, merged
from shared.domain.health import HealthConfig
from shared.domain.identity import IdentityConfig
from shared.domain.jobs import JobsConfig
from shared.domain.remediation_policy import RemediationPolicy
from shared.store import config, db


class _Overrides(RootModel[dict[str, Any]]):
    """A settings body: any object, validated whole by the settings model."""


@dataclass(frozen=True)
class Kind:
    """A kind of tenant settings: its path segment (and field of the tenant document), its model, the
    deployment's defaults under the tenant's overrides, and how the OpenAPI document names it."""

    name: str
    model: type[BaseModel]
    #: The endpoints are get_tenant_<endpoint> and set_tenant_<endpoint>.
    endpoint: str
    tag: str
    #: What GET shows; PUT replaces the "<noun> overrides".
    shows: str
    noun: str
    defaults: Callable[[], dict[str, Any]] | None = None


KINDS: dict[str, Kind] = {
    kind.name: kind
    for kind in (
        Kind(
            "alerting",
            AlertingConfig,
            "alerting",
            "alerts",
            "alerting settings: channels per severity, repeat intervals, grouping, root alerts.",
            "alerting",
            config.alerting_defaults,
        ),
        Kind(
            "health",
            HealthConfig,
            "health",
            "alerts",
            "health-rule thresholds (error rate, saturation, flapping, egress, security score).",
            "health-rule",
        ),
        Kind(
            "jobs",
            JobsConfig,
            "jobs_settings",
            "jobs",
            "training-job settings: quotas per user and tenant, approval threshold, backends, timeouts.",
            "training-job",
            config.job_defaults,
        ),
        Kind(
            "tasks",
            AssignmentConfig,
            "tasks_settings",
            "tasks",
            "task-assignment settings: the weights of success, cost, availability and SLA, and the outcomes "
            "needed before the model is trusted over the heuristic.",
            "task-assignment",
        ),
        Kind(
            "identity",
            IdentityConfig,
            "identity_settings",
            "identity",
            "identity settings: the signature policy (required, or optional during a migration) and how many "
            "refused events an hour open a forged_events episode.",
            "identity",
            config.identity_defaults,
        ),
        Kind(
            "remediation",
            RemediationPolicy,
            "remediation",
            "remediation",
            "remediation policy: mode (on, dry_run, off), the hourly cap per agent, the restart loop, the critical "
            "label, and the rules mapping a condition to a command.",
            "remediation-policy",
        ),
    )
}


def show(call: Call, kind: str) -> SettingsView:
    """The tenant's overrides of ``kind`` and the settings in effect."""
    tenant = visible_tenant(call)
    overrides = getattr(config.read_tenant(tenant), kind)
    defaults = KINDS[kind].defaults
    base = {**defaults(), **overrides} if defaults else overrides  # the deployment's defaults
    model = KINDS[kind].model
    effective = model.model_validate(merged(model, base)).model_dump(mode="json")
    return SettingsView(tenant=tenant, overrides=overrides, effective=effective)


def replace(call: Call, kind: str) -> SettingsView:
    """Replace the tenant's overrides (an empty object restores every default); validated whole."""
    tenant = visible_tenant(call)
    raw = core.body(call, _Overrides).root
    model = KINDS[kind].model
    try:
        checked = model.model_validate(merged(model, raw))
    except ValidationError as exc:
        listed = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors(include_url=False))
        raise ApiError(400, f"invalid {kind} settings: {listed}") from None
    overrides = checked.model_dump(mode="json", include=set(raw))
    problem = db.unstorable(overrides)
    if problem:
        raise ApiError(400, f"invalid {kind} settings: {problem}")
    write_tenant(
        tenant, {kind: overrides}, core.audit(call, f"tenant.{kind}.set", tenant, tenant, overrides, core.now())
    )
    return show(call, kind)


routes = Routes()
for _kind in KINDS.values():
    for _method, _view, _verb, _summary, _request, _role, _errors in (
        ("GET", show, "get", f"A tenant's {_kind.shows}", None, Role.VIEWER, (404,)),
        (
            "PUT",
            replace,
            "set",
            f"Replace a tenant's {_kind.noun} overrides ({{}} restores the defaults).",
            _Overrides,
            Role.ADMIN,
            (400, 404),
        ),
    ):
        routes.add(
            _method,
            f"/v1/tenants/<tenant>/{_kind.name}",
            SettingsView,
            functools.partial(_view, kind=_kind.name),
            _request,
            _role,
            endpoint=f"{_verb}_tenant_{_kind.endpoint}",
            summary=_summary,
            params=TENANT,
            errors=_errors,
            tags=(_kind.tag,),
        )


def of(*kinds: str) -> list[Route]:
    """The routes of these kinds, in the table's order (the route table places each beside its area's)."""
    return [route for route in routes if route.rule.rsplit("/", 1)[1] in kinds]
