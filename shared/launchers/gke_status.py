"""What the Kubernetes API's answers mean (pure): a Job and its pods as a run's :class:`RunStatus`, and
an ``ApiException`` in the API's own words (the GKE backend's status mapping)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from shared.domain.run_phase import Phase, Preemption, RunStatus

if TYPE_CHECKING:
    from kubernetes.client import V1Job, V1Pod


def run_status(job: V1Job, pods: Sequence[V1Pod]) -> RunStatus:
    """The :class:`RunStatus` of a Job and its pods (pure: what ``status`` makes of the API's answers).

    Complete (or SuccessCriteriaMet) → succeeded; Failed → failed, message ``"<reason>: <message>"``;
    otherwise running once a pod runs, else pending. Every pod with a true ``DisruptionTarget``
    condition is a preemption, keyed by the pod's name. ``failed_attempts`` is ``status.failed``: with our
    podFailurePolicy the Job controller does not count pods the Ignore rule matched (a Job without the
    policy counts them, so they are subtracted then).
    """
    status = job.status
    conditions = {c.type: c for c in (status.conditions if status else None) or [] if c.status == "True"}
    preemptions = _preemptions(pods)
    failed = (status.failed if status else None) or 0
    has_policy = bool(job.spec and job.spec.pod_failure_policy)
    failed_attempts = failed if has_policy else max(0, failed - len(preemptions))
    started = status.start_time if status else None
    common: dict[str, Any] = {"started_at": started, "preemptions": preemptions, "failed_attempts": failed_attempts}

    done = conditions.get("Complete") or conditions.get("SuccessCriteriaMet")
    if done is not None:
        finished = (status.completion_time if status else None) or done.last_transition_time
        return RunStatus(Phase.SUCCEEDED, finished_at=finished, **common)
    failure = conditions.get("Failed")
    if failure is not None:
        message = ": ".join(part for part in (failure.reason, failure.message) if part) or "Failed"
        return RunStatus(Phase.FAILED, finished_at=failure.last_transition_time, message=message, **common)
    active = (status.active if status else None) or 0
    ready = (status.ready if status else None) or 0
    running = active > 0 and (ready > 0 or any(pod.status and pod.status.phase == "Running" for pod in pods))
    return RunStatus(Phase.RUNNING if running else Phase.PENDING, **common)


def _preemptions(pods: Sequence[V1Pod]) -> tuple[Preemption, ...]:
    found: list[Preemption] = []
    for pod in pods:
        name = pod.metadata.name if pod.metadata else None
        for condition in (pod.status.conditions if pod.status else None) or []:
            if condition.type == "DisruptionTarget" and condition.status == "True" and name:
                detail = ": ".join(part for part in (condition.reason, condition.message) if part)
                found.append(Preemption(key=name, at=condition.last_transition_time, detail=detail))
                break
    return tuple(sorted(found, key=lambda p: (_timestamp(p.at), p.key)))


def _timestamp(at: datetime | None) -> float:
    return at.timestamp() if at else 0.0


def api_message(exc: Any) -> str:
    """The API's own words from an ``ApiException`` (its body is a ``Status`` object)."""
    try:
        body = json.loads(exc.body or "")
    except (TypeError, ValueError):
        body = None
    if isinstance(body, dict) and body.get("message"):
        reason = body.get("reason") or exc.reason or ""
        return f"{exc.status} {reason}: {body['message']}".replace("  ", " ")
    return f"{exc.status} {exc.reason or ''}".strip()


def describe(exc: Any) -> str:
    if not exc.status:  # raised by the client itself (TLS...), not an API answer
        return f"request failed: {exc.reason}"
    return api_message(exc)
