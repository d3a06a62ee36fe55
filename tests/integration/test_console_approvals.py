"""The console's Approvals page in a real browser (Playwright driving Chromium) against the session's stack:
an approval request made through the API is listed as pending, the page says decisions stay in Slack, and
it offers no approve or deny button (nor any form besides signing out)."""

from __future__ import annotations

import uuid
from typing import Any

from emulators.stack import Stack
from tests.integration.browser import console_url as _console
from tests.integration.browser import sign_in as _sign_in
from tests.integration.conftest import Api
from tests.integration.helpers import make_key


def test_a_pending_approval_is_listed_read_only(page: Any, stack: Stack, api: Api) -> None:
    tenant = f"apr-{uuid.uuid4().hex[:8]}"
    summary = f"full re-index <b>{uuid.uuid4().hex[:6]}</b>"
    created = api.send(
        "POST",
        "/v1/approvals",
        {"kind": "operation", "tenant": tenant, "summary": summary, "estimated_cost_usd": "120"},
    )
    assert created.status_code == 200, created.text
    approval_id = created.json()["id"]
    viewer = make_key(stack, f"{tenant}-viewer", "viewer", tenant)

    _sign_in(page, stack, viewer)
    response = page.goto(_console(stack) + "/approvals")
    assert response is not None and response.status == 200
    row = page.locator(f"#pending-rows tr[data-approval-id='{approval_id}']")
    assert row.count() == 1
    assert row.locator(".kind").inner_text() == "operation"
    assert row.locator(".summary").inner_text() == summary  # escaped: shown as text
    assert row.locator(".cost").inner_text() == "$120.00"
    assert page.locator(f"#recent-rows tr[data-approval-id='{approval_id}']").count() == 0

    note = page.locator("#approvals-note").inner_text()
    assert "read-only" in note and "Slack" in note
    buttons = [b.lower() for b in page.locator("main button, main input[type=submit]").all_inner_texts()]
    assert not any("approve" in b or "deny" in b for b in buttons)
    assert page.locator("main form").count() == 0
    assert page.get_by_role("button", name="Approve").count() == 0
    assert page.get_by_role("button", name="Deny").count() == 0
