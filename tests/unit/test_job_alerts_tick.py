"""The reconcile tick hands the job alerts the jobs as it left them (shared/training/follow.py
``reconcile``): a stalled job this tick saw start, or finished, is not judged stalled on the stale list."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest

from shared.domain.jobs import Job, JobState
from shared.training import follow as follow_mod
from tests.unit.test_jobs_domain import HOUR, T0, make_job


def test_stalls_are_judged_on_the_jobs_as_follow_wrote_them(monkeypatch: pytest.MonkeyPatch) -> None:
    starts = make_job("j-1", state=JobState.ADMITTED, admitted_at=T0 - HOUR, stalled_at=T0 - HOUR / 2)
    released = make_job("j-2", state=JobState.ADMITTED, admitted_at=T0 - HOUR, stalled_at=T0 - HOUR / 2)
    still = make_job("j-3", state=JobState.ADMITTED, admitted_at=T0 - HOUR, stalled_at=T0 - HOUR / 2)
    monkeypatch.setattr(follow_mod.store, "active", lambda: [(starts, None), (released, None), (still, None)])
    monkeypatch.setattr(follow_mod.store, "unsettled", lambda: [])
    monkeypatch.setattr(follow_mod.store, "tenants_waiting", lambda: set())
    monkeypatch.setattr(follow_mod.admission, "run_pass", lambda tenant, now: [])
    judged: list[list[Job]] = []

    def tick(now: datetime, active: Any, waiting: set[str], *, complete: bool = True) -> dict[str, Any]:
        judged.append(list(active))
        return {}

    def follow(job: Job, now: datetime, update_time: Any = None, written_to: Any = None) -> str:
        if job.id == "j-1":
            written_to[job.id] = job.model_copy(update={"state": JobState.RUNNING, "started_at": now})
            return "changed"
        if job.id == "j-2":
            written_to[job.id] = job.model_copy(update={"state": JobState.FAILED, "finished_at": now})
            return "finished"
        return "unchanged"

    monkeypatch.setattr(follow_mod.job_alerts, "tick", tick)
    monkeypatch.setattr(follow_mod, "follow", follow)
    follow_mod.reconcile(T0)
    [listed] = judged
    assert [(job.id, job.state) for job in listed] == [("j-1", JobState.RUNNING), ("j-3", JobState.ADMITTED)]
