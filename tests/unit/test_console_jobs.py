"""The console's Jobs page without processes: the API's job list split into queue, running and finished,
and rendered escaped. The browser test is tests/integration/test_console_jobs.py."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from shared.console import app, jobs_page
from shared.console.api_calls import Answer
from shared.domain.api_keys import Role
from shared.store.api_keys import Principal

VIEWER = Principal("00000000000000bb", "acme-viewer", Role.VIEWER, "acme")
#: load() passes the request on to call_api, which the tests replace.
APP_REQUEST: Any = None


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
    assert 'data-job-id="j-1"' in html and "$1.23" in html and "$12.50" in html and "3 / 12" in html
    assert "quota of user alice: 2 of 2 GPU in use" in html


def test_jobs_is_a_page() -> None:
    assert app.SIGNED[("GET", "/jobs")] is app.jobs


def test_each_state_is_asked_for_so_old_waiting_jobs_stay_and_cut_lists_say_so(monkeypatch: Any) -> None:
    monkeypatch.setattr(jobs_page, "LIMIT", 2)
    monkeypatch.setattr(jobs_page, "FINISHED_LIMIT", 2)
    asked: list[str] = []
    by_state = {
        "queued": [_job("j-old", "queued", position=1, created_at="2026-01-01T00:00:00Z")],
        "running": [_job("j-r1", "running"), _job("j-r2", "running")],  # at the limit: maybe more
        "succeeded": [_job(f"j-s{i}", "succeeded", created_at=f"2026-12-06T1{i}:00:00Z") for i in range(2)],
        "failed": [_job("j-f", "failed", created_at="2026-12-06T12:00:00Z")],
    }

    def call_api(request: Any, method: str, path: str, body: Any = None) -> Answer:
        asked.append(path)
        state = path.split("state=", 1)[1].split("&", 1)[0]
        return Answer(200, {"items": by_state.get(state, [])})

    monkeypatch.setattr(jobs_page, "call_api", call_api)
    data = jobs_page.load(APP_REQUEST)
    assert asked == [
        "/v1/jobs?state=awaiting_approval&limit=2",
        "/v1/jobs?state=queued&limit=2",
        "/v1/jobs?state=admitted&limit=2",
        "/v1/jobs?state=running&limit=2",
        "/v1/jobs?state=succeeded&limit=2",
        "/v1/jobs?state=failed&limit=2",
        "/v1/jobs?state=cancelled&limit=2",
    ]
    assert [j.id for j in data.queue] == ["j-old"] and [j.id for j in data.running] == ["j-r1", "j-r2"]
    # The newest finished of every final state, newest first, cut at the limit.
    assert [j.id for j in data.finished] == ["j-f", "j-s1"]
    assert data.notes == [
        "2 or more jobs are running: the page shows the newest 2, so any older ones (for a queue, its front) are not "
        "shown; see GET /v1/jobs?state=running.",
        "Only the newest 2 finished jobs are shown.",
    ]


def test_an_unreadable_state_is_said_and_the_others_shown(monkeypatch: Any) -> None:
    def call_api(request: Any, method: str, path: str, body: Any = None) -> Answer:
        if "state=queued" in path:
            return Answer(503, {"error": {"reason": "the store is unavailable"}})
        return Answer(200, {"items": [_job("j-1", "running")] if "state=running" in path else []})

    monkeypatch.setattr(jobs_page, "call_api", call_api)
    data = jobs_page.load(APP_REQUEST)
    assert [j.id for j in data.running] == ["j-1"] and data.notes == [
        "Jobs (queued) could not be read: the store is unavailable"
    ]


def test_times_are_shown_in_utc() -> None:
    job = jobs_page.row(_job("j-1", "running", started_at="2026-12-06T12:30:00+02:00"))
    assert job.started_at == datetime(2026, 12, 6, 10, 30, tzinfo=UTC)
    data = jobs_page.Jobs([], [job], [], [])
    html = app.render("jobs.html", principal=VIEWER, jobs=data, active="/jobs").get_data(as_text=True)
    assert "2026-12-06 10:30:00 UTC" in html and 'datetime="2026-12-06T10:30:00+00:00"' in html
