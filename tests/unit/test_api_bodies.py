"""The request bodies' documented schemas against the API's validation (shared/api/bodies/).

For every rule the validation enforces beyond the fields' types, a body it refuses is also invalid by
the documented schema (the document states the rule), and a body valid by the document is accepted:
clients generated from the OpenAPI document send bodies the API takes. Bodies are read as the API reads
them (numbers as exact decimals); rules the router applies (a silence's expiry) go through the route.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import flask
import jsonschema_rs
import pytest
from pydantic import BaseModel, ValidationError

from shared.api import router
from shared.api.bodies import (
    ApprovalCreate,
    BudgetUpdate,
    PauseRequest,
    PriceUpdate,
    ProtectionUpdate,
    ResumeRequest,
    RolesUpdate,
    SilenceRequest,
)
from shared.api.bodies.jobs import JobRequest
from shared.api.bodies.tasks import OutcomeReport, TaskRequest
from shared.domain import assignment_tasks
from shared.domain import jobs as job_rules
from shared.domain.api_keys import Role
from shared.domain.silences import Silence
from shared.services import agent_controls
from shared.store import api_keys
from shared.store.api_keys import Principal

APP = flask.Flask(__name__)
TOKEN = "afm_00000000000000aa_" + "a" * 43


def documented(model: type[BaseModel]) -> jsonschema_rs.Validator:
    """The request schema as the OpenAPI document serves it (its component, refs resolved in it)."""
    document = router.openapi_document()
    assert model.__name__ in document["components"]["schemas"], f"{model.__name__} is not documented"
    return jsonschema_rs.validator_for(
        {"$ref": f"#/components/schemas/{model.__name__}", "components": document["components"]}
    )


def own_schema(model: type[BaseModel]) -> jsonschema_rs.Validator:
    """The request schema the model documents (for the bodies whose routes are wired at the merge)."""
    return jsonschema_rs.validator_for(model.model_json_schema(mode="validation"))


def accepted(model: type[BaseModel], body: dict[str, Any]) -> bool:
    """Whether the API's validation takes the body, read as the API reads it (numbers as decimals)."""
    try:
        model.model_validate(json.loads(json.dumps(body), parse_float=Decimal))
    except ValidationError:
        return False
    return True


def agree(schema: jsonschema_rs.Validator, model: type[BaseModel], body: dict[str, Any], valid: bool) -> None:
    assert schema.is_valid(body) is valid, f"the document {'refuses' if valid else 'accepts'} {body}"
    assert accepted(model, body) is valid, f"the API {'refuses' if valid else 'accepts'} {body}"


# --- reasons and summaries: not blank once stripped ---------------------------------------------


@pytest.mark.parametrize("reason", ["\t", "  ", "\x85\u3000", "\u2003\n"])
def test_a_blank_reason_is_refused_by_the_document_and_the_api(reason: str) -> None:
    for model in (PauseRequest, ResumeRequest):
        agree(documented(model), model, {"reason": reason}, valid=False)
    approval = {"kind": "operation", "tenant": "acme", "summary": reason}
    agree(documented(ApprovalCreate), ApprovalCreate, approval, valid=False)


def test_a_reason_with_text_around_spaces_is_accepted() -> None:
    agree(documented(PauseRequest), PauseRequest, {"reason": "  GPU upgrade "}, valid=True)
    agree(documented(PauseRequest), PauseRequest, {"reason": "\x1c"}, valid=True)  # not stripped


# --- decimal amounts: the string form states its bounds and decimals ---------------------------


@pytest.mark.parametrize(
    ("amount", "valid"),
    [
        *[("", False), ("abc", False), ("1.5", False), ("0.0000000000001", False), (0.1234567890123, False)],
        *[("0.5", True), ("1", True), ("0.000000000001", True), (0.25, True), (1, True)],
    ],
)
def test_a_price_is_documented_as_the_api_reads_it(amount: Any, valid: bool) -> None:
    agree(documented(PriceUpdate), PriceUpdate, {"input_usd": amount, "output_usd": "0.1"}, valid)


@pytest.mark.parametrize(
    ("amount", "valid"), [("", False), ("0", False), ("0.000", False), ("1000000001", False), ("12.5", True)]
)
def test_a_budget_limit_is_documented_as_the_api_reads_it(amount: str, valid: bool) -> None:
    agree(documented(BudgetUpdate), BudgetUpdate, {"daily_usd": amount}, valid)


@pytest.mark.parametrize(("amount", "valid"), [("", False), ("-1", False), ("0.25", True), (0, True)])
def test_the_spike_baseline_is_documented_as_the_api_reads_it(amount: Any, valid: bool) -> None:
    agree(documented(ProtectionUpdate), ProtectionUpdate, {"spike_min_baseline_usd": amount}, valid)


# --- a budget names a limit ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "valid"),
    [
        ({}, False),
        ({"alert_at": [0.5], "soft_ratio": 0.5}, False),
        ({"daily_usd": None, "monthly_tokens": None}, False),
        ({"soft_daily_tokens": 5000}, True),
        ({"monthly_usd": 100, "daily_usd": None}, True),
    ],
)
def test_a_budget_needs_a_limit_in_the_document_too(body: dict[str, Any], valid: bool) -> None:
    agree(documented(BudgetUpdate), BudgetUpdate, body, valid)


# --- roles: every key is a Slack user id ---------------------------------------------------------


@pytest.mark.parametrize(
    ("roles", "valid"), [({"": "admin"}, False), ({"ann": "viewer"}, False), ({"U0123ABC": "approver"}, True)]
)
def test_role_keys_are_slack_user_ids_in_the_document_too(roles: dict[str, str], valid: bool) -> None:
    agree(documented(RolesUpdate), RolesUpdate, {"roles": roles}, valid)


# --- approvals: each kind's fields -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "valid"),
    [
        ({"kind": "release", "tenant": "acme"}, False),
        ({"kind": "budget_raise", "agent_id": "bot-1", "budget_period": "daily"}, False),
        ({"kind": "budget_raise", "agent_id": "bot-1", "budget_usd": "10"}, False),
        ({"kind": "operation", "tenant": "acme", "budget_period": "daily", "budget_usd": "10"}, False),
        ({"kind": "release", "agent_id": "bot-1", "budget_usd": "10"}, False),
        ({"kind": "operation"}, False),
        ({"kind": "operation", "tenant": "acme", "estimated_cost_usd": ""}, False),
        ({"kind": "operation", "tenant": "acme", "estimated_cost_usd": "12.50"}, True),
        ({"kind": "operation", "agent_id": "bot-1", "budget_usd": None}, True),
        ({"kind": "release", "agent_id": "bot-1"}, True),
        ({"kind": "budget_raise", "agent_id": "bot-1", "budget_period": "daily", "budget_usd": 25}, True),
    ],
)
def test_an_approvals_kind_fields_are_in_the_document(body: dict[str, Any], valid: bool) -> None:
    agree(documented(ApprovalCreate), ApprovalCreate, {"summary": "Run the export", **body}, valid)


# --- silences: the router's rules, stated in the document ---------------------------------------


@pytest.fixture
def silences(monkeypatch: pytest.MonkeyPatch) -> list[Silence]:
    created: list[Silence] = []

    def create(silence: Silence, actor: agent_controls.Actor, now: datetime) -> Silence:
        created.append(silence)
        return silence

    monkeypatch.setattr(api_keys, "verify", {TOKEN: Principal("00000000000000aa", "root", Role.ADMIN, None)}.get)
    monkeypatch.setattr(agent_controls, "create_silence", create)
    return created


def post_silence(body: dict[str, Any]) -> int:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    with APP.test_request_context(
        "/v1/silences", method="POST", headers=headers, data=json.dumps(body), content_type="application/json"
    ):
        return router.handle(flask.request).status_code


SOON = (datetime.now(UTC) + timedelta(hours=2)).isoformat()


@pytest.mark.parametrize(
    ("body", "valid"),
    [
        ({"tenant": "acme"}, False),
        ({"tenant": "acme", "duration_s": 3600, "expires_at": SOON}, False),
        ({"duration_s": 3600}, False),
        ({"rule": "error_rate", "maintenance": True, "duration_s": 3600}, False),
        ({"tenant": "acme", "rule": "error_rate", "maintenance": True, "duration_s": 3600}, False),
        ({"tenant": "acme", "duration_s": 3600, "expires_at": None}, True),
        ({"rule": "error_rate", "expires_at": SOON}, True),
        ({"tenant": "acme", "maintenance": True, "duration_s": 600}, True),
    ],
)
def test_a_silences_router_rules_are_in_the_document(
    silences: list[Silence], body: dict[str, Any], valid: bool
) -> None:
    body = {"reason": "deploy", **body}
    assert documented(SilenceRequest).is_valid(body) is valid
    assert post_silence(body) == (200 if valid else 400)
    assert len(silences) == (1 if valid else 0)


# --- training jobs ---------------------------------------------------------------------------------

JOB = {"agent_id": "bot-1", "name": "failure-predictor"}


@pytest.mark.parametrize(
    ("body", "valid"),
    [
        ({"name": " \t"}, False),
        ({"requester": "  "}, False),
        ({"training_config": {"": 1}}, False),
        ({"hyperparameters": {"bad key": 1}}, False),
        ({"max_cost_usd": ""}, False),
        ({"max_cost_usd": "0"}, False),
        ({"resources": {"gpu_type": "nvidia-l4"}}, False),
        ({"resources": {"gpu": 1, "gpu_type": "nvidia-k80"}}, False),
        ({"resources": {"gpu": 1, "gpu_type": "nvidia-l4"}, "max_cost_usd": "250.5"}, True),
        ({"hyperparameters": {"lr": 0.01}, "requester": "ann@acme.com"}, True),
    ],
)
def test_a_job_requests_rules_are_in_its_schema(body: dict[str, Any], valid: bool) -> None:
    agree(own_schema(JobRequest), JobRequest, {**JOB, **body}, valid)


def test_the_documented_job_request_validates_as_the_domains() -> None:
    body = {**JOB, "resources": {"gpu": 2, "gpu_type": "nvidia-l4"}, "hyperparameters": {"depth": 3}}
    assert JobRequest.model_validate(body).model_dump() == job_rules.JobRequest.model_validate(body).model_dump()


# --- task assignment ---------------------------------------------------------------------------------

TASK = {"task_id": "t-1", "tenant": "acme", "estimated_duration_s": 60}


@pytest.mark.parametrize(
    ("body", "valid"),
    [
        ({"task_id": "assign"}, False),
        ({"weights": {"success": 0, "cost": 0, "availability": 0, "sla": 0}}, False),
        ({"weights": {"success": 0, "cost": 0, "availability": 0}}, True),
        ({"weights": {"success": 0, "cost": 0, "availability": 0, "sla": 1}}, True),
        ({"task_id": "assign-2"}, True),
    ],
)
def test_a_task_requests_rules_are_in_its_schema(body: dict[str, Any], valid: bool) -> None:
    agree(own_schema(TaskRequest), TaskRequest, {**TASK, **body}, valid)


@pytest.mark.parametrize(
    ("body", "valid"),
    [
        ({"success": True, "error": "timeout"}, False),
        ({"success": False, "cost_usd": ""}, False),
        ({"success": False, "cost_usd": 0.0000000001}, False),
        ({"success": False, "error": "timeout", "cost_usd": "0.000000001"}, True),
        ({"success": True, "error": None, "cost_usd": 1.25}, True),
    ],
)
def test_an_outcomes_rules_are_in_its_schema(body: dict[str, Any], valid: bool) -> None:
    agree(own_schema(OutcomeReport), OutcomeReport, body, valid)


def test_the_documented_task_bodies_validate_as_the_domains() -> None:
    domain_task = assignment_tasks.TaskRequest.model_validate(TASK)
    assert TaskRequest.model_validate(TASK).model_dump() == domain_task.model_dump()
    outcome = {"success": False, "error": "timeout"}
    domain_outcome = assignment_tasks.OutcomeReport.model_validate(outcome)
    assert OutcomeReport.model_validate(outcome).as_doc() == domain_outcome.as_doc()
