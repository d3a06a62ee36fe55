"""A training request becomes a job: backend chosen by policy, cost estimated, refused at once if it
could never fit, sent to the approvers above the tenant's threshold, otherwise queued, then one
admission pass. The same request (same requester and ``request_id``) always names the same job."""

from __future__ import annotations

import json
import os
from datetime import datetime
from decimal import Decimal
from typing import Any

from shared.domain import approvals as approval_domain
from shared.domain import job_costs, job_policy, job_queue
from shared.domain import jobs as domain
from shared.domain.audit import AuditEntry
from shared.domain.jobs import Job, JobRequest, JobsConfig, JobState
from shared.domain.pricing import format_usd
from shared.services import agent_controls, approvals
from shared.store import agents as agent_store
from shared.store import config, price_files
from shared.store import jobs as store
from shared.training import admission, budget
from shared.training.job_audit import entry


def _never_fits(
    request: JobRequest, cfg: JobsConfig, tenant: str, agent_budget: Any, estimate: job_costs.Estimate
) -> str | None:
    """Why the job can never run here: a quota it exceeds in total, a hard budget below its estimate."""
    reason = job_queue.never_fits(request.resources, str(request.requester), cfg)
    if reason is not None:
        return reason
    scopes = ((f"agent {request.agent_id}", agent_budget), ("the tenant", config.tenant(tenant).budget))
    for label, spec in scopes:
        for limit in budget.hard_limits(spec):
            if estimate.nanos > limit:
                return (
                    f"its estimate (${format_usd(estimate.nanos)}) is above a hard budget of {label} "
                    f"(${format_usd(limit)}); shorten max_runtime_s or raise the budget"
                )
    return None


def gke_gpu_types() -> frozenset[str] | None:
    """The accelerators the GKE cluster has node pools of (``FLEET_GKE_GPU_TYPES``, comma-separated, set by
    terraform/locals.tf from ``var.gpu_types``); None (unset, the local stack): every type."""
    raw = os.environ.get("FLEET_GKE_GPU_TYPES")
    if raw is None:
        return None
    return frozenset(part.strip() for part in raw.split(",") if part.strip())


def build(request: JobRequest, tenant: str, via: str, now: datetime, cfg: JobsConfig) -> Job:
    """The new job (not stored): backend, estimate, runtime; raises Refused when it cannot run."""
    requester = request.requester or via
    runtime = request.max_runtime_s or cfg.default_runtime_s
    if runtime > cfg.max_runtime_s:
        raise agent_controls.Refused(400, f"max_runtime_s is at most {cfg.max_runtime_s} for this tenant")
    prices = price_files.machine_prices()
    try:
        backend, why = job_policy.choose(
            request.resources, runtime, request.backend, cfg, prices=prices, gpu_types=gke_gpu_types()
        )
        res = request.resources
        estimate = job_costs.estimate(
            backend.value,
            res.cpu,
            res.memory_gb,
            res.gpu,
            res.gpu_type,
            res.spot,
            runtime,
            cfg.price_factor,
            prices=prices,
        )
    except (job_policy.NoBackend, job_costs.NoMachine) as exc:
        raise agent_controls.Refused(400, str(exc)) from None
    if backend.value == "local" and request.image is not None and not request.command:
        raise agent_controls.Refused(
            400, "the local backend runs a command, not an image: give a command, or name another backend"
        )
    return Job(
        id=domain.job_id(tenant, requester, request.request_id),
        tenant=tenant,
        agent_id=request.agent_id,
        requester=requester,
        requested_via=via,
        notify=request.notify,
        name=request.name,
        image=request.image,
        command=request.command,
        hyperparameters=request.hyperparameters,
        training_config=request.training_config,
        resources=request.resources,
        priority=request.priority,
        max_runtime_s=runtime,
        max_cost_usd=request.max_cost_usd,
        backend=backend,
        backend_reason=why,
        estimate=estimate.to_doc(),
        state=JobState.QUEUED,
        created_at=now,
        updated_at=now,
        queued_at=now,
    )


def submit(request: JobRequest, actor: agent_controls.Actor, now: datetime) -> tuple[Job, bool]:
    """Store the job (once) and start it on its way; returns (job as it stands, whether it is new).

    Raises Refused: 404 unknown agent, 400 no backend or machine, 409 it could never fit.
    """
    if request.requester is None:  # the caller's own job
        request = request.model_copy(update={"requester": actor.name})
    agent = agent_store.get(request.agent_id)
    if agent is None or not actor.can_see(agent.tenant):
        raise agent_controls.not_found(request.agent_id)
    if agent.status.value == "decommissioned":
        raise agent_controls.Refused(409, f"agent {agent.agent_id} was decommissioned")
    tenant = agent.tenant
    cfg = config.jobs(tenant)
    job = build(request, tenant, actor.name, now, cfg)
    existing = store.get(job.id) if request.request_id is not None else None  # a random id is new
    if existing is not None:
        return existing, False
    reason = _never_fits(request, cfg, tenant, agent.budget, job.costing())
    if reason is not None:
        raise agent_controls.Refused(409, f"this job can never be admitted: {reason}")
    if job.estimate_usd > cfg.approval_threshold_usd:
        job = job.model_copy(
            update={
                "state": JobState.AWAITING_APPROVAL,
                "queued_at": None,
                "approval_id": approval_domain.approval_id("job", job.id),
                "reason": (
                    f"estimate ${format_usd(job.costing().nanos)} is above the approval threshold "
                    f"(${cfg.approval_threshold_usd}); waiting for an approver in Slack"
                ),
            }
        )
        # The request first (its id derives from the job's): a job never waits on a request that
        # does not exist; a request whose job was never stored finds no job when decided.
        _ask(job, agent.owner, now)
    created = domain.Event(at=now, kind="state", reason=job.reason or "queued", by=actor.name, to_state=job.state)
    job = job.model_copy(update={"history": [created]})
    details = {"estimate_usd": str(job.estimate_usd), "backend": job.backend.value, "name": job.name}
    if not store.create(job, entry(job, "job.submit", actor.name, now, "requested", **details)):
        found = store.get(job.id)
        return (found or job), False
    if job.state is JobState.QUEUED:
        admission.try_pass(tenant, now)
        job = store.get(job.id) or job
    return job, True


def _ask(job: Job, owner: str | None, now: datetime) -> None:
    """The approval request of a job above the threshold (stored once, posted to the approvers)."""
    kind, _, who = job.requested_via.partition(":")
    requester = approval_domain.Requester(
        kind="slack" if kind == "slack" else "api", id=who if kind == "slack" else job.requester, owner=owner
    )
    est = job.costing()
    summary = (
        f"train `{job.name}` for `{job.agent_id}`: {est.machine} on {job.backend.value}"
        f"{' (spot)' if job.resources.spot else ''}, up to {est.hours.normalize():f} h at ${est.hourly_usd:.2f}/h"
    )
    approval = approvals.new(
        approval_id=str(job.approval_id),
        tenant=job.tenant,
        kind=approval_domain.Kind.TRAINING,
        requester=requester,
        summary=summary[:200],
        now=now,
        agent_id=job.agent_id,
        reason=f"requested by {job.requester}",
        estimated_cost_usd=Decimal(str(job.estimate_usd)),
        payload={"job_id": job.id, "requested_via": job.requested_via, "resources": json.dumps(job.resources.demand())},
    )
    approvals.request(approval, now)


def decided(job_id: str, approved: bool, by: str, now: datetime) -> str:
    """The approval of a job was decided (or expired): queue it or cancel it. Returns a sentence."""

    def step(job: Job) -> tuple[Job, list[AuditEntry]] | None:
        if job.state is not JobState.AWAITING_APPROVAL:
            return None
        if approved:
            changed = domain.advance(job, JobState.QUEUED, now, f"approved by {by}", by)
        else:
            changed = domain.advance(job, JobState.CANCELLED, now, f"not approved ({by})", by)
        return changed, [entry(changed, "job.approval", by, now, changed.state.value)]

    job = store.change(job_id, step)
    if job is None:
        return f"Job {job_id} no longer exists."
    if job.state is JobState.QUEUED:
        admission.try_pass(job.tenant, now)
        job = store.get(job_id) or job
        where = f" (position {job.position}: {job.reason})" if job.position else ""
        return f"Job `{job.name}` ({job.id}) is {job.state.value}{where}."
    return f"Job `{job.name}` ({job.id}) is {job.state.value}."
