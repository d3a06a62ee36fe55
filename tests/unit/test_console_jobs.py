"""The console's Jobs page without processes: the API's job list split into queue, running and finished,
and rendered escaped. The browser test is tests/integration/test_console_jobs.py."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from shared.console import app, jobs_page
from shared.domain.api_keys import Role
from shared.store.api_keys import Principal

VIEWER = Principal("00000000000000bb", "acme-viewer", Role.VIEWER, "acme")


def _job(job_id: str, state: str, **kw: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "id": job_id,
        "name": "train",
        "tenant": "acme",
        "agent_id": "agent-a1",
        "requester": "alice@example.com",
        "backend": "gke",
        "state": state,
        "priority": 5,
        "estimate": {"usd": "12.5000", "machine": "g2-standard-8"},
        "cost_usd": "0",
        "created_at": "2026-12-06T10:00:00Z",
    }
    row.update(kw)
    return row


ITEMS = [
    _job("j-3", "queued", position=2, reason="quota of user alice: 2 of 2 GPU in use"),
    _job("j-2", "queued", position=1, reason="budget"),
    _job("j-5", "awaiting_approval"),
    _job(
        "j-1",
        "running",
        name="<script>window.__xss=1</script>",
        cost_usd="1.2345",
        preemptions=2,
        progress={"step": 3, "total_steps": 12},
    ),
    _job("j-0", "succeeded", cost_usd="4.5"),
]


def test_the_list_is_split_into_queue_running_and_finished() -> None:
    queue, running, finished = jobs_page.split(ITEMS)
    assert [j.id for j in queue] == ["j-2", "j-3", "j-5"]
    assert [j.id for j in running] == ["j-1"] and [j.id for j in finished] == ["j-0"]
    job = running[0]
    assert job.progress_pct == 25 and job.cost_usd == Decimal("1.2345") and job.preemptions == 2
    assert job.estimate_usd == Decimal("12.5000") and job.machine == "g2-standard-8"
    assert queue[2].position is None and queue[0].reason == "budget"


def test_the_page_is_rendered_escaped() -> None:
    queue, running, finished = jobs_page.split(ITEMS)
    data = jobs_page.Jobs(queue, running, finished, ["note <i>"])
    html = app.render("jobs.html", principal=VIEWER, jobs=data, active="/jobs").get_data(as_text=True)
    assert "<script>window.__xss" not in html and "&lt;script&gt;window.__xss=1&lt;/script&gt;" in html
    assert "note &lt;i&gt;" in html
    assert 'data-job-id="j-1"' in html and "$1.2345" in html and "$12.50" in html and "3 / 12" in html
    assert "quota of user alice: 2 of 2 GPU in use" in html


def test_jobs_is_a_page() -> None:
    assert app.SIGNED[("GET", "/jobs")] is app.jobs
