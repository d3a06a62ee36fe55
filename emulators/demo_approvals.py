"""The demo's approval scene: an agent asks before an expensive operation, two people click in Slack.

Through the real path: the agent publishes its request with the SDK (``FleetAgent.preapprove``) on
``agent-approvals``; ``fleet-approvals`` posts it to the tenant's approvals channel (the fake Slack
server); the clicks are signed requests to ``fleet-slack`` (``SLACK_APP_URL``, signed with the stack's
``SLACK_SIGNING_SECRET``) as Slack would send them: first by the agent's owner (refused: four eyes),
then by an approver; the decision reaches the waiting agent on ``agent-commands``.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.parse
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import requests
from fleet_agent import FleetAgent, Registration
from rich.console import Console

OWNER = "U0DEMOOWN"
APPROVER = "U0DEMOAPR"


def _click(env: dict[str, str], approval_id: str, user: str) -> int:
    from slack_sdk.signature import SignatureVerifier

    payload = {
        "type": "block_actions",
        "user": {"id": user, "username": user.lower()},
        "trigger_id": f"demo.{uuid.uuid4().hex}",
        "channel": {"id": "C0DEMO0001"},
        "message": {"ts": "1.0", "text": "", "blocks": []},
        "actions": [{"action_id": "approval_approve", "value": approval_id, "type": "button"}],
    }
    body = urllib.parse.urlencode({"payload": json.dumps(payload)})
    ts = str(int(time.time()))
    signature = SignatureVerifier(env["SLACK_SIGNING_SECRET"]).generate_signature(timestamp=ts, body=body)
    headers = {
        "Content-Type": "application/x-www-form-urlencoded",
        "X-Slack-Request-Timestamp": ts,
        "X-Slack-Signature": signature,
    }
    return requests.post(env["SLACK_APP_URL"], data=body, headers=headers, timeout=30).status_code


def _api(env: dict[str, str], method: str, path: str, body: Any = None, **params: str) -> Any:
    headers = {"Authorization": f"Bearer {env['FLEET_API_KEY']}"}
    url = env["FLEET_API_URL"] + path
    reply = requests.request(method, url, json=body, params=params, headers=headers, timeout=30)
    reply.raise_for_status()
    return reply.json()


def run(
    env: dict[str, str],
    registration: Registration,
    console: Console,
    timeout: float = 30.0,
    key_path: Path | None = None,
) -> bool:
    """True when the owner's click was refused, the approver's decided it, and the agent heard.

    ``key_path``: the agent's key, enrolled by the fleet scene, so that this second client of the same
    agent signs its re-registration and request with it."""
    tenant = registration.tenant
    _api(env, "PUT", f"/v1/tenants/{tenant}/roles", {"roles": {OWNER: "approver", APPROVER: "approver"}})
    owned = registration.model_copy(update={"owner": OWNER})
    agent = FleetAgent(
        owned, project=env["GOOGLE_CLOUD_PROJECT"], approval_threshold_usd=Decimal("10"), key_path=key_path
    )
    answer: dict[str, Any] = {}
    try:
        agent.listen()
        agent.register()  # the owner is now a Slack user: the one person who may not approve its requests
        asking = threading.Thread(
            target=lambda: answer.update(
                ok=agent.preapprove("re-embed the 40k-document corpus", Decimal("42.50"), reason="index drift",
                                    timeout=timeout)
            ),
            daemon=True,
        )  # fmt: skip
        started = time.monotonic()
        asking.start()
        pending: list[dict[str, Any]] = []
        while not pending and time.monotonic() - started < timeout:
            time.sleep(0.3)
            pending = _api(env, "GET", "/v1/approvals", tenant=tenant, state="pending")["items"]
        if not pending:
            console.print("[red]the agent's approval request never arrived[/]")
            return False
        approval_id = pending[0]["id"]
        console.print(
            f"{registration.agent_id} asks to spend ~$42.50 (threshold $10): request {approval_id} posted to "
            "#fleet-approvals"
        )
        _click(env, approval_id, OWNER)
        refused = _api(env, "GET", f"/v1/approvals/{approval_id}")["state"] == "pending"
        console.print(f"  its owner {OWNER} clicks Approve: {'refused (four eyes)' if refused else 'ACCEPTED?!'}")
        _click(env, approval_id, APPROVER)
        asking.join(timeout)
        decided = _api(env, "GET", f"/v1/approvals/{approval_id}")
        heard = answer.get("ok") is True
        console.print(
            f"  approver {APPROVER} clicks Approve: {decided['state']}; the agent "
            f"{'heard it and goes ahead' if heard else 'did not hear back'} "
            f"({time.monotonic() - started:.1f}s from request to answer)"
        )
        return refused and decided["state"] == "approved" and heard
    finally:
        agent.close()
