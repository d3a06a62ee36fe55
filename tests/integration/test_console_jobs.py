"""The console's Jobs page in a real browser (Playwright driving Chromium) against the session's stack:
two jobs submitted through the API (the local backend), one takes the requester's GPU quota and the
other waits; the page shows the waiting one in the queue with its position and the API's reason, and
the first, still running (a slow training_config: 120 steps of at least a second each), among the
running jobs with its progress, cost so far, estimate and preemptions; another tenant's key sees neither."""

from __future__ import annotations

import re
import time
import uuid
from typing import Any

import pytest

from emulators.stack import Stack
from tests.integration.conftest import Api, tick, wait_for
from tests.integration.helpers import make_key
from tests.integration.test_console import _console, _register, _sign_in, _tenant

pytestmark = pytest.mark.integration

SLOW = {"rows": 1500, "val_fraction": 0.25, "step_sleep_s": 1}
EPOCHS = 120


def _submit(api: Api, agent: str, **fields: Any) -> dict[str, Any]:
    body = {"agent_id": agent, "requester": "alice@example.com", "name": "it-console-train", **fields}
    reply = api.send("POST", "/v1/jobs", body)
    assert reply.status_code == 200, reply.text
    return dict(reply.json())


def _running_with_progress(api: Api, publisher: Any, job_id: str) -> dict[str, Any]:
    """The job once the reconcile tick saw it run and it reported a step (its run takes minutes more)."""

    def check() -> dict[str, Any] | None:
        tick(publisher, "jobs-reconcile")
        time.sleep(0.5)
        job = dict(api.get(f"/v1/jobs/{job_id}").json())
        return job if job["state"] == "running" and (job.get("progress") or {}).get("step") else None

    return dict(wait_for(check, timeout=90, every=0.5))


def test_the_jobs_page_shows_the_queue_and_the_running_jobs(page: Any, stack: Stack, publisher: Any, api: Api) -> None:
    tenant = _tenant()
    agent = f"it-{uuid.uuid4().hex[:12]}"
    _register(publisher, api, agent, tenant, owner="owner@example.com")
    first = _submit(
        api,
        agent,
        name="<b>big</b>",
        resources={"gpu": 2, "cpu": 2, "memory_gb": 4},
        hyperparameters={"epochs": EPOCHS},
        training_config=SLOW,
    )
    second = _submit(api, agent, name="second", resources={"gpu": 1})
    try:
        assert first["state"] == "admitted", first
        assert second["state"] == "queued" and second["position"] == 1, second
        viewer = make_key(stack, f"{tenant}-viewer", "viewer", tenant)
        seen = _running_with_progress(api, publisher, first["id"])

        _sign_in(page, stack, viewer)
        page.goto(_console(stack) + "/jobs")
        queued = page.locator(f"#queue-rows tr[data-job-id='{second['id']}']")
        assert queued.locator(".state").inner_text() == "queued"
        assert queued.locator(".position").inner_text() == "1"
        assert (
            "quota of user alice@example.com: 2 of 2 GPU in use, this job asks 1"
            in queued.locator(".reason").inner_text()
        )

        assert page.locator(f"tr[data-job-id='{first['id']}']").count() == 1
        running = page.locator(f"#running-rows tr[data-job-id='{first['id']}']")
        assert running.count() == 1
        assert running.locator(".state").inner_text() == "running"
        assert running.locator(".name").inner_text().startswith("<b>big</b>")  # shown as text, not markup
        # Progress as the run reported it: at least the step seen before the page was read, of 120.
        progress = re.fullmatch(r"(\d+) / (\d+)", running.locator(".progress").inner_text().strip())
        assert progress is not None, running.locator(".progress").inner_text()
        step, total = int(progress[1]), int(progress[2])
        assert total == EPOCHS and seen["progress"]["step"] <= step < EPOCHS
        value = running.locator(".progress progress").get_attribute("value")
        assert value is not None and int(value) == round(100 * step / EPOCHS)
        assert running.locator(".cost").inner_text() == "$0.00"  # the local backend costs nothing
        assert running.locator(".estimate").inner_text() == "$0.00"
        assert running.locator(".preemptions").inner_text() == "0"

        # Another tenant's key sees none of them (the API's tenant scope).
        other = _tenant()
        stranger = make_key(stack, f"{other}-viewer", "viewer", other)
        page.context.clear_cookies()
        _sign_in(page, stack, stranger)
        page.goto(_console(stack) + "/jobs")
        assert page.locator(f"tr[data-job-id='{first['id']}']").count() == 0
        assert page.locator(f"tr[data-job-id='{second['id']}']").count() == 0
    finally:
        api.send("POST", f"/v1/jobs/{first['id']}/cancel", {})
        api.send("POST", f"/v1/jobs/{second['id']}/cancel", {})
