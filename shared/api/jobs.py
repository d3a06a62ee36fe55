"""The REST API's training-job routes: submit, list, read (state, queue position and why it waits,
estimate and cost, backend handle, history), cancel. The work is in shared/training/."""

from __future__ import annotations

from decimal import Decimal

from pydantic import BaseModel, ConfigDict, Field

from shared.api import core
from shared.api.bodies.jobs import JobRequest
from shared.api.core import ApiError, Call, Param, Routes
from shared.domain.api_keys import Role
from shared.domain.jobs import Job, JobFields, JobState
from shared.store import jobs as store

_STATES = tuple(s.value for s in JobState)
DEFAULT_LIMIT = 50
MAX_LIMIT = 200


class EstimateView(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    backend: str
    #: The machine priced (GKE: the smallest node of the family that fits; Cloud Run: the task's size).
    machine: str
    spot: bool
    hourly_usd: Decimal
    #: ``max_runtime_s`` in hours: the estimate is the most the run can cost.
    hours: Decimal
    usd: Decimal


class JobView(JobFields):
    """A training job as the API shows it (its bookkeeping fields left out)."""

    estimate: EstimateView  # type: ignore[assignment]  # the stored dict, typed for the OpenAPI document


class JobList(BaseModel):
    items: list[JobView]


class JobCancel(BaseModel):
    """``POST /v1/jobs/{id}/cancel``: the body may be empty."""

    model_config = ConfigDict(extra="forbid")

    reason: str = Field(default="", max_length=300)


def view(job: Job) -> JobView:
    return JobView.model_validate(job.model_dump(mode="python"))


_JOB_PARAM = Param("job_id", "path", "The job's id (j-...).", {"type": "string"}, required=True)
_LIST_PARAMS = (
    Param("tenant", "query", "Only this tenant.", {"type": "string"}),
    Param("state", "query", "Only jobs in this state.", {"type": "string", "enum": list(_STATES)}),
    Param("agent_id", "query", "Only this agent's jobs.", {"type": "string"}),
    core.int_param("limit", f"At most this many, 1 to {MAX_LIMIT}.", DEFAULT_LIMIT, MAX_LIMIT),
)

routes = Routes("jobs")


def _visible_job(call: Call) -> Job:
    job_id = call.args["job_id"]
    job = store.get(job_id) if core.is_document_id(job_id) else None
    if job is None or not core.principal(call).can_see(job.tenant):
        raise ApiError(404, f"job {job_id} not found")
    return job


@routes.post("/v1/jobs", JobView, JobRequest, Role.OPERATOR, errors=(400, 403, 404, 409))
def submit_job(call: Call) -> JobView:
    """Submit a training job: estimated, then queued (or sent to Slack approvers above the threshold).

    Admitted when it fits."""
    # lazy: shared.training brings the launchers, which only the job routes need
    from shared.training import submit

    request = core.body(call, JobRequest)
    principal = core.principal(call)
    own = f"api:{principal.name}"
    if request.requester not in (None, own) and principal.role is not Role.ADMIN:
        raise ApiError(
            403, f"only admin keys submit for another requester; this key submits as {own} (leave requester out)"
        )
    job, _new = submit.submit(request, core.operator(call), core.now())
    return view(job)


@routes.get("/v1/jobs", JobList, params=_LIST_PARAMS, errors=(400,))
def list_jobs(call: Call) -> JobList:
    """Training jobs, newest first; by tenant, and state or agent."""
    principal = core.principal(call)
    tenant = core.query(call.request, "tenant")
    if tenant is not None and not core.is_agent_id(tenant):
        raise ApiError(400, "tenant is not a valid tenant id")
    if principal.tenant is not None:
        if tenant not in (None, principal.tenant):
            raise ApiError(403, f"this API key only sees tenant {principal.tenant}")
        tenant = principal.tenant
    state, agent_id = core.query(call.request, "state"), core.query(call.request, "agent_id")
    if state is not None and state not in _STATES:
        raise ApiError(400, f"state must be one of {', '.join(_STATES)}")
    if agent_id is not None and not core.is_agent_id(agent_id):
        raise ApiError(400, "agent_id is not a valid agent id")
    if state is not None and agent_id is not None:
        raise ApiError(400, "filter by state or by agent_id, not both")
    limit = core.bounded_int(call.request, "limit", DEFAULT_LIMIT, MAX_LIMIT)
    jobs = store.list_jobs(tenant=tenant, state=state, agent_id=agent_id, limit=limit)
    return JobList(items=[view(j) for j in jobs])


@routes.get("/v1/jobs/<job_id>", JobView, params=(_JOB_PARAM,), errors=(404,))
def get_job(call: Call) -> JobView:
    """One job: state, queue position and why it waits, estimate and cost, backend handle, history."""
    return view(_visible_job(call))


@routes.post(
    "/v1/jobs/<job_id>/cancel", JobView, JobCancel, Role.OPERATOR, params=(_JOB_PARAM,), errors=(400, 404, 409, 503)
)
def cancel_job(call: Call) -> JobView:
    """Cancel a job (a running one is stopped on its backend; its quota is released).

    A waiting job at once; a launched one is stopped on its backend first."""
    # lazy: shared.training brings the launchers, which only the job routes need
    from shared.training import follow

    job = _visible_job(call)
    reason = core.body(call, JobCancel).reason.strip()
    return view(follow.cancel(job.id, core.operator(call), core.now(), reason))
