"""Generated requests against the local stack's API, from the API's own OpenAPI document (schemathesis).

Every operation of ``GET /openapi.json`` gets a few requests generated from its documented parameters
and bodies, valid and invalid, sent with an admin key to the API served by functions-framework, with
exactly three checks: no server error (no 5xx), every status documented for the operation, every
response body valid by its documented schema. Any failing check fails the test. (The operations are
driven with hypothesis directly: schemathesis' lazy pytest fixture does not run under pytest 9.)

The run is seeded and derandomized (the same requests every run, but for the seeded ids), shrinks
nothing, and is short: 4 examples per operation and mode, about 25 s after the stack is up on a 2-core
machine (budget: under 60 s). Requests a long run found a 500 with are checked explicitly as well.

Path ids name seeded resources (an agent of a tenant of its own, a silence, an approval, a waiting job,
a task), so those operations reach their logic instead of a 404; prices are set for a model of this
test's own. It starts and stops nothing itself: the stack is the session's (tests/integration/conftest.py).
"""

from __future__ import annotations

import uuid
from typing import Any

import hypothesis
import hypothesis.errors
import pytest
import schemathesis
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import response_schema_conformance, status_code_conformance

from emulators.stack import Stack
from tests.integration.conftest import Api, wait_for
from tests.integration.helpers import agent_doc, heartbeat, publish, registration

pytestmark = pytest.mark.integration

#: Fixed, so the same requests are generated on every run.
SEED = 20261121
#: Requests generated per operation (about 50 operations).
EXAMPLES_PER_OPERATION = 4
CHECKS = [not_a_server_error, status_code_conformance, response_schema_conformance]
APPROVER = "USTAPPR01"


def _ok(reply: Any) -> dict[str, Any]:
    assert reply.status_code == 200, reply.text
    return dict(reply.json())


@pytest.fixture(scope="module")
def seeded(api: Api, publisher: Any, firestore: Any) -> dict[str, str]:
    """Resources for the path ids: an active agent of its own tenant, a silence, an approval, a job that
    waits for its approval (so no run is launched), a task assigned to the agent."""
    tenant = f"st{uuid.uuid4().hex[:10]}"
    agent_id = f"{tenant}-agent"
    publish(publisher, registration(agent_id, tenant=tenant, capabilities=["chat"]))
    wait_for(lambda: agent_doc(firestore, agent_id))
    publish(publisher, heartbeat(agent_id, 1, status="active", active_tasks=0, cpu_pct=10.0, error_rate=0.01))
    wait_for(lambda: (agent_doc(firestore, agent_id) or {}).get("status") == "active")
    _ok(api.send("PUT", f"/v1/tenants/{tenant}/roles", {"roles": {APPROVER: "approver"}}))
    # Every job of the tenant waits for a human: none is launched by the generated requests.
    _ok(api.send("PUT", f"/v1/tenants/{tenant}/jobs", {"approval_threshold_usd": 0}))
    silence = _ok(api.send("POST", "/v1/silences", {"tenant": tenant, "reason": "schemathesis", "duration_s": 3600}))
    approval = _ok(
        api.send("POST", "/v1/approvals", {"kind": "operation", "agent_id": agent_id, "summary": "Run the export"})
    )
    job = _ok(api.send("POST", "/v1/jobs", {"agent_id": agent_id, "name": "st-train"}))
    task = {"task_id": f"{tenant}-task", "tenant": tenant, "required_capabilities": ["chat"]}
    _ok(api.send("POST", "/v1/tasks/assign", {**task, "estimated_duration_s": 60}))
    return {
        "agent_id": agent_id,
        "tenant": tenant,
        "silence_id": silence["id"],
        "approval_id": approval["id"],
        "job_id": job["id"],
        "task_id": task["task_id"],
        "model": f"{tenant}-model",
    }


@pytest.fixture(scope="module")
def api_schema(stack: Stack, seeded: dict[str, str]) -> schemathesis.BaseSchema:
    """The API's own document, served by the running API."""
    config = schemathesis.Config.from_dict({"seed": SEED, "request-timeout": 30})
    return schemathesis.openapi.from_url(f"{stack.env['FLEET_API_URL']}/openapi.json", config=config)


def run_operation(
    operation: schemathesis.APIOperation,
    mode: schemathesis.GenerationMode,
    headers: dict[str, str],
    ids: dict[str, str],
) -> int:
    """A few generated requests to one operation, each sent and checked; raises on the first failure.
    Returns how many were sent (0: the operation has nothing to make invalid, for the negative mode)."""
    path_ids = {name: value for name, value in ids.items() if f"{{{name}}}" in operation.path}
    strategy = operation.as_strategy(mode, path_parameters=path_ids, headers=headers)

    @hypothesis.seed(SEED)
    @hypothesis.settings(
        max_examples=EXAMPLES_PER_OPERATION,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],  # no shrinking
        suppress_health_check=list(hypothesis.HealthCheck),
    )
    @hypothesis.given(case=strategy)
    def check(case: schemathesis.Case) -> None:
        sent.append(case)
        case.call_and_validate(checks=CHECKS)

    sent: list[schemathesis.Case] = []
    try:
        check()
    except hypothesis.errors.Unsatisfiable:
        if mode is schemathesis.GenerationMode.POSITIVE or sent:
            raise
    return len(sent)


def test_generated_requests_get_documented_answers(
    api_schema: schemathesis.BaseSchema, stack: Stack, seeded: dict[str, str]
) -> None:
    """Every operation, with valid and with invalid requests; every failure is listed, then the test fails."""
    headers = {"Authorization": f"Bearer {stack.env['FLEET_API_KEY']}"}
    failures: list[str] = []
    operations = sent = 0
    for result in api_schema.get_all_operations():
        assert isinstance(result, Ok), f"the document has an invalid operation: {result}"
        operation = result.ok()
        operations += 1
        for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):
            try:
                sent += run_operation(operation, mode, headers, seeded)
            except Exception as exc:  # a failed check, or a request the API did not answer
                failures.append(f"{operation.method.upper()} {operation.path} ({mode.value}): {exc}")
    assert operations >= 50, f"only {operations} operations in the document"
    assert sent >= 2 * operations, f"only {sent} requests sent to {operations} operations"
    assert not failures, "\n\n".join(failures)


#: Requests a long run (20,149 generated cases) answered with a 500, which a short run may not generate:
#: checked the same way on every run. A time at the very start of the calendar leaves no hour (day) before.
KNOWN_EDGES = [
    ("/v1/reports/daily", {"at": "0001-01-01T00:02:00Z"}),
    ("/v1/reports/hourly", {"at": "0001-01-01T00:02:00Z"}),
]


@pytest.mark.parametrize(("path", "query"), KNOWN_EDGES)
def test_known_edges_get_documented_answers(
    api_schema: schemathesis.BaseSchema, stack: Stack, path: str, query: dict[str, str]
) -> None:
    case = api_schema[path]["GET"].Case(query=query)
    case.call_and_validate(headers={"Authorization": f"Bearer {stack.env['FLEET_API_KEY']}"}, checks=CHECKS)
