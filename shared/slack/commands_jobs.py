"""``/fleet`` subcommands about training jobs (shared/training/): ``train``, ``jobs``, ``job``, ``cancel``."""

from __future__ import annotations

import hashlib
import re
from decimal import Decimal, InvalidOperation
from typing import Any

from pydantic import ValidationError

from shared.domain import slash
from shared.domain.jobs import JobRequest
from shared.domain.roles import Action
from shared.slack.command_context import (
    LISTED,
    Asker,
    Refusal,
    Reply,
    find_agent,
    pick_tenants,
    require,
    valid_id,
    when,
)
from shared.store import agents as agent_store
from shared.store import jobs as job_store
from shared.training import follow, submit


def _train(asker: Asker, parsed: slash.Parsed) -> Reply:
    """Submit a training job as this user (the quota is theirs; a DM tells them how it ended)."""
    agent_id, name, *words = parsed.args
    record = find_agent(asker, agent_id, Action.TRAIN)
    options = slash.train_options(tuple(words))
    resources: dict[str, Any] = {}
    body: dict[str, Any] = {
        "agent_id": record.agent_id,
        "requester": asker.user_id,
        "name": name,
        "request_id": hashlib.sha256(asker.request_id.encode()).hexdigest()[:32],
    }
    for key, value in options.items():
        target = slash.TRAIN_OPTIONS[key]
        if key == "spot":
            resources["spot"] = value.lower() in ("yes", "true", "1", "on")
        elif key == "hours":
            try:
                body["max_runtime_s"] = int(Decimal(value) * 3600)
            except (InvalidOperation, ValueError, OverflowError):
                raise slash.Usage(f"hours must be a number, not `{value[:20]}`", parsed.spec) from None
        elif target.startswith("resources."):
            resources[target.split(".", 1)[1]] = value
        else:
            body[target] = value
    if resources:
        body["resources"] = resources
    try:
        request = JobRequest.model_validate(body)
    except ValidationError as exc:
        said = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors(include_url=False))
        raise slash.Usage(f"not a valid job: {said}", parsed.spec) from None
    job, _new = submit.submit(request, asker.operator(), asker.now)
    est = job.costing()
    head = (
        f"🏋️ <@{asker.user_id}> submitted `{job.name}` ({job.id}) for `{job.agent_id}`: {est.machine} on "
        f"{job.backend.value}{' (spot)' if job.resources.spot else ''}, up to {est.hours.normalize():f} h, "
        f"estimate ${est.usd} (${est.hourly_usd:.2f}/h). It is *{job.state.value}*"
    )
    detail = f": {job.reason}" if job.reason and job.state.value in ("queued", "awaiting_approval") else "."
    return Reply(head + detail, public=True, outcome="applied", target=job.id, tenant=job.tenant)


def _job_line(job: Any) -> str:
    where = f" · #{job.position} in queue: {job.reason}" if job.position else ""
    cost = f" · ${job.cost_usd}" if job.cost_usd else f" · est ${job.estimate_usd}"
    return f"`{job.id}` {job.name} · `{job.agent_id}` · *{job.state.value}* on {job.backend.value}{cost}{where}"


def _jobs(asker: Asker, parsed: slash.Parsed) -> Reply:
    given = parsed.args[0] if parsed.args else None
    record = agent_store.get(given) if given is not None and valid_id(given) else None
    if record is not None and asker.role(record.tenant) is not None:
        found = job_store.list_jobs(tenant=record.tenant, state=None, agent_id=record.agent_id, limit=LISTED)
    else:
        found = []
        for tenant in pick_tenants(asker, given):
            found += job_store.list_jobs(tenant=tenant, state=None, agent_id=None, limit=LISTED)
    return Reply(f"Training jobs: {len(found)}", tuple(_job_line(j) for j in found[:LISTED]))


def _visible_job(asker: Asker, job_id: str) -> Any:
    job = job_store.get(job_id) if re.match(r"^j-[a-z0-9]{8,40}$", job_id) else None
    if job is None or asker.role(job.tenant) is None:
        raise Refusal(f"job `{job_id[:64]}` not found among the tenants you have a role in")
    asker.subject = (job.id, job.tenant)
    return job


def _job(asker: Asker, parsed: slash.Parsed) -> Reply:
    job = _visible_job(asker, parsed.args[0])
    lines = [
        f"requested by {job.requester} · priority {job.priority} · {job.backend.value} ({job.backend_reason})",
        f"estimate ${job.estimate_usd} · cost so far ${job.cost_usd} · preemptions {job.preemptions}",
    ]
    if job.progress:
        metrics = ", ".join(f"{k} {v:.3g}" for k, v in list((job.progress.get("metrics") or {}).items())[:5])
        lines.append(f"progress: step {job.progress.get('step')}/{job.progress.get('total_steps')} {metrics}")
    lines += [f"{when(e.at)} · {e.kind} {e.to_state.value if e.to_state else ''} {e.reason}" for e in job.history[-8:]]
    return Reply(_job_line(job), tuple(lines))


def _cancel(asker: Asker, parsed: slash.Parsed) -> Reply:
    job = _visible_job(asker, parsed.args[0])
    require(asker, job.tenant, Action.TRAIN, job.id)
    done = follow.cancel(job.id, asker.operator(), asker.now, parsed.rest)
    return Reply(
        f"🛑 <@{asker.user_id}> cancelled `{done.name}` ({done.id}).", public=True, target=done.id, tenant=done.tenant
    )


#: The subcommands of this family, by name (shared/slack/commands.py dispatches on them).
COMMANDS = {
    "train": _train,
    "jobs": _jobs,
    "job": _job,
    "cancel": _cancel,
}
