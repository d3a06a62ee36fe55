"""The Remediation page's data (GET /remediation): a tenant's remediation policy in effect, read-only (mode,
the hourly cap per agent, the restart loop, the critical label, and the rules in the order they are tried).

Read through the REST API's own handler in-process (``GET /v1/tenants/{tenant}/remediation`` via
shared/console/api_calls.call_api with the session's key): the same roles, tenant scope and audit. A
tenant-scoped key sees only its tenant; a key that sees every tenant picks one with ``?tenant=``. Editing stays
with ``PUT /v1/tenants/{tenant}/remediation`` (admins). One Firestore read per view (the tenant's document).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import flask
from pydantic import ValidationError

from shared.api import core
from shared.console.api_calls import call_api
from shared.domain.remediation_policy import RemediationPolicy
from shared.store.api_keys import Principal


@dataclass
class RemediationPage:
    """What the template shows: the chosen tenant (None: a fleet-wide key still to pick one), its policy in
    effect (None: not read), which fields the tenant overrides, and notes."""

    tenant: str | None
    policy: dict[str, Any] | None = None
    rules: list[dict[str, Any]] = field(default_factory=list)
    overridden: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def tried_order(policy: RemediationPolicy) -> list[dict[str, Any]]:
    """The rules as the policy tries them (shared/domain/remediation_policy.rule_for): most specific first
    (agent type and labels), ties in the order listed; each with its position and specificity."""
    ranked = sorted(enumerate(policy.rules), key=lambda pair: (-pair[1].specificity, pair[0]))
    return [
        {
            "position": position,
            "listed": listed + 1,
            "specificity": rule.specificity,
            **rule.model_dump(mode="json"),
            "labels": [f"{k}={v}" for k, v in sorted(rule.labels.items())],
        }
        for position, (listed, rule) in enumerate(ranked, start=1)
    ]


def load(request: flask.Request, principal: Principal) -> RemediationPage:
    """The remediation policy of the key's tenant, or of ``?tenant=`` for a key that sees every tenant."""
    notes: list[str] = []
    asked = (request.args.get("tenant") or "").strip() or None
    tenant = principal.tenant or asked
    if principal.tenant is not None and asked is not None and asked != principal.tenant:
        notes.append(f"this API key only sees tenant {principal.tenant}")
    if tenant is None:
        return RemediationPage(None, notes=notes)
    if not core.is_agent_id(tenant):
        return RemediationPage(None, notes=[*notes, "That is not a valid tenant name."])
    answer = call_api(request, "GET", f"/v1/tenants/{quote(tenant)}/remediation")
    if not answer.ok:
        return RemediationPage(tenant, notes=[*notes, f"The remediation policy could not be read: {answer.reason}"])
    try:
        policy = RemediationPolicy.model_validate(answer.body.get("effective") or {})
    except ValidationError:
        return RemediationPage(tenant, notes=[*notes, "The API answered a policy this console cannot read."])
    overrides = answer.body.get("overrides")
    overridden = sorted(overrides) if isinstance(overrides, dict) else []
    shown = policy.model_dump(mode="json", exclude={"rules"})
    return RemediationPage(tenant, shown, tried_order(policy), overridden, notes)
