"""The daily report shows the GPU-hours lost to relaunched training runs that day, per tenant and job (read
from the jobs relaunched since the day began), in its API body and its Slack message."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from shared.domain import job_runs
from shared.domain.jobs import Job
from shared.domain.run_phase import Phase, Preemption, RunStatus
from shared.services import report_messages, reports
from shared.store import jobs as job_store
from tests.unit.test_jobs_domain import CFG, res, running_job
from tests.unit.test_reports import DAILY_TICK, Fleet, fleet  # noqa: F401  (the fixture)

DAY = datetime(2026, 11, 20, tzinfo=UTC)


def preempted(job_id: str, gpu: int, *minutes_into_day: int) -> Job:
    job = running_job(job_id=job_id, resources=res(cpu=8, memory_gb=32, gpu=gpu, gpu_type="nvidia-l4"))
    job = job.model_copy(update={"started_at": DAY, "admitted_at": DAY})
    keys: list[Preemption] = []
    for n, minute in enumerate(minutes_into_day):
        keys.append(Preemption(f"{job_id}-pod-{n}", DAY.replace(hour=minute // 60, minute=minute % 60), "spot"))
        job = job_runs.observe(job, RunStatus(Phase.RUNNING, DAY, preemptions=tuple(keys)), keys[-1].at, CFG).job or job  # type: ignore[arg-type]
    return job


def test_the_daily_report_shows_gpu_hours_lost_per_tenant_and_job(
    fleet: Fleet,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    asked: list[datetime] = []
    jobs = [preempted("j-a", 2, 30), preempted("j-b", 1, 60, 90)]

    def relaunched_since(at: datetime, tenant: str | None = None) -> list[Job]:
        asked.append(at)
        return [j for j in jobs if tenant in (None, j.tenant)]

    monkeypatch.setattr(job_store, "relaunched_since", relaunched_since)
    report = reports.daily(DAILY_TICK)
    assert asked == [DAY]
    [acme] = report.gpu_hours_lost
    assert (acme.tenant, acme.relaunches, acme.gpu_hours_lost) == ("acme", 3, 2.5)  # 30 min x 2; 60 + 30 min x 1
    assert [(j.job_id, j.gpu_hours_lost) for j in acme.jobs] == [("j-b", 1.5), ("j-a", 1.0)]
    assert reports.daily(DAILY_TICK, tenant="globex").gpu_hours_lost == []
    _, blocks = report_messages.daily_message(report)
    shown = "\n".join(str(b) for b in blocks)
    assert "GPU-hours lost" in shown and "*acme* 2.5 GPU-hours in 3 relaunches" in shown and "`j-a`" in shown
