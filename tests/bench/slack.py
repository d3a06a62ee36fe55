"""`make bench`, Slack app section: how fast ``fleet-slack`` answers Slack, what each request costs in
Firestore, and that concurrent clicks decide an approval once.

    python -m tests.bench.slack      # this section alone (about a minute)

On a local stack (functions-framework per function, Firestore and Pub/Sub emulators, fake Slack),
signed requests as Slack sends them, one at a time, ``SAMPLES`` of each kind, timed at the client
(request sent -> response received, i.e. what Slack's 3-second limit applies to):

- baseline: a signed request with a wrong signature, refused with 401 before any listener: the same
  HTTP path and framework with no Firestore and no Bolt dispatch;
- ``/fleet help`` (role read + audit), ``/fleet status <agent>``, ``/fleet pause`` then ``resume``
  (the mutations: request claim, conditional agent write, command published, audit), and Approve
  clicks on fresh approval requests (role read, conditional decision write, a work item published
  to ``fleet-actions``, an ephemeral note to the clicker).

Firestore reads and writes per request come from the function's structured log lines. Then
``CLICKERS`` approvers click Approve on one request at the same moment: exactly one decision must be
recorded and carried out.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import requests

from emulators.stack import ROOT, Stack
from tests.bench.run import UNSIGNED, LogCounter
from tests.integration import helpers
from tests.integration.keyring import Keyring

SAMPLES = int(os.environ.get("BENCH_SLACK_SAMPLES", 40))
CLICKERS = int(os.environ.get("BENCH_SLACK_CLICKERS", 8))
TENANT = "bench-slack"
AGENT = "bench-slack-agent"
ADMIN = "UBENCHADM"
APPROVERS = [f"UBENCHAP{i}" for i in range(CLICKERS)]
REQUESTER = "UBENCHOPS"


class Signed:
    def __init__(self, url: str, secret: str) -> None:
        from slack_sdk.signature import SignatureVerifier

        self.url, self.signer = url, SignatureVerifier(secret)
        self.session = requests.Session()

    def post(self, body: str, *, forged: bool = False) -> tuple[float, requests.Response]:
        ts = str(int(time.time()))
        signature = "v0=" + "0" * 64 if forged else self.signer.generate_signature(timestamp=ts, body=body)
        headers = {
            "Content-Type": "application/x-www-form-urlencoded",
            "X-Slack-Request-Timestamp": ts,
            "X-Slack-Signature": signature,
        }
        start = time.perf_counter()
        reply = self.session.post(self.url, data=body.encode(), headers=headers, timeout=30)
        return (time.perf_counter() - start) * 1000, reply


def command(text: str, user: str) -> str:
    return urllib.parse.urlencode(
        {"command": "/fleet", "text": text, "user_id": user, "user_name": user.lower(), "team_id": "T1",
         "channel_id": "C0BENCH001", "trigger_id": f"tr.{uuid.uuid4().hex}",
         "response_url": "https://hooks.slack.invalid/1"}
    )  # fmt: skip


def click(approval_id: str, user: str) -> str:
    payload = {
        "type": "block_actions",
        "user": {"id": user, "username": user.lower()},
        "trigger_id": f"tr.{uuid.uuid4().hex}",
        "channel": {"id": "C0BENCH001"},
        "message": {"ts": "1.0", "text": "", "blocks": []},
        "actions": [{"action_id": "approval_approve", "value": approval_id, "type": "button"}],
    }
    return urllib.parse.urlencode({"payload": json.dumps(payload)})


def api(stack: Stack, method: str, path: str, body: Any = None) -> Any:
    headers = {"Authorization": f"Bearer {stack.env['FLEET_API_KEY']}"}
    reply = requests.request(method, stack.env["FLEET_API_URL"] + path, json=body, headers=headers, timeout=30)
    reply.raise_for_status()
    return reply.json()


def new_approval(stack: Stack) -> str:
    body = {"kind": "operation", "agent_id": AGENT, "summary": "bench", "requested_by": REQUESTER}
    return str(api(stack, "POST", "/v1/approvals", body)["id"])


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def series(label: str, counter: LogCounter, run: Callable[[], tuple[float, requests.Response]]) -> dict[str, Any]:
    start = len(counter.poll())
    times = []
    for _ in range(SAMPLES):
        ms, reply = run()
        if reply.status_code not in (200, 401):
            raise RuntimeError(f"{label}: {reply.status_code} {reply.text[:200]}")
        times.append(ms)
    time.sleep(0.3)
    lines = [x for x in counter.poll()[start:] if str(x.get("message", "")).startswith("slack ")]
    return summary(label, times, lines)


def summary(label: str, times: list[float], lines: list[dict[str, Any]]) -> dict[str, Any]:
    """Client-timed percentiles beside the mean reads, writes and publishes of the requests' log lines."""
    n = max(len(lines), 1)
    return {
        "label": label,
        "p50": statistics.median(times),
        "p95": percentile(times, 0.95),
        "max": max(times),
        "reads": sum(x.get("firestore_reads", 0) for x in lines) / n,
        "writes": sum(x.get("firestore_writes", 0) for x in lines) / n,
        "publishes": sum(x.get("publishes", 0) for x in lines) / n,
    }


def race(stack: Stack, signed: Signed) -> dict[str, Any]:
    """CLICKERS approvers click Approve on one request together (a barrier)."""
    from google.cloud import firestore
    from google.cloud.firestore_v1.base_query import FieldFilter

    approval_id = new_approval(stack)
    barrier = threading.Barrier(CLICKERS)
    codes: list[int] = []

    def one(user: str) -> None:
        body = click(approval_id, user)
        barrier.wait()
        codes.append(signed.post(body)[1].status_code)

    threads = [threading.Thread(target=one, args=(u,)) for u in APPROVERS]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and api(stack, "GET", f"/v1/approvals/{approval_id}").get("applied") is None:
        time.sleep(0.2)
    decided = api(stack, "GET", f"/v1/approvals/{approval_id}")
    client = firestore.Client(project=stack.env["GOOGLE_CLOUD_PROJECT"])
    query = client.collection("audit").where(filter=FieldFilter("tenant", "==", TENANT))
    audit = [d.to_dict() for d in query.stream()]
    mine = [a for a in audit if (a.get("details") or {}).get("approval_id") == approval_id]
    return {
        "codes": sorted(codes),
        "state": decided["state"],
        "decisions": sum(1 for a in mine if a["action"] == "approval.approve" and a["outcome"] == "approved"),
        "refused": sum(1 for a in mine if a["action"] == "approval.approve" and a["outcome"] == "refused"),
        "applied": sum(1 for a in mine if a["action"] == "approval.apply"),
    }


def describe() -> list[str]:
    return [
        f"`python -m tests.bench.slack` (part of `make bench`): signed requests to `fleet-slack` on the local stack, "
        f"{SAMPLES} of each kind one after another, timed at the client (what Slack's 3-second limit applies to). "
        "The baseline is the same HTTP function answering a request with a forged signature (401 before Bolt and "
        "Firestore). Reads, writes and publishes per request are from the function's log lines.",
    ]


def main(report: Callable[[str], None] = print) -> list[str]:
    roles = {ADMIN: "admin", REQUESTER: "operator", **dict.fromkeys(APPROVERS, "approver")}
    stack = Stack(ROOT / ".stack-bench-slack", function_env=UNSIGNED, create_admin_key=True)
    try:
        stack.up()
        os.environ.update(stack.env)
        # The agent's registration is published as the integration tests' agents are: enrolled and signed.
        helpers.KEYRING = Keyring(stack.env["FLEET_PUBLIC_KEY"])
        signed = Signed(stack.env["SLACK_APP_URL"], stack.env["SLACK_SIGNING_SECRET"])
        api(stack, "PUT", f"/v1/tenants/{TENANT}/roles", {"roles": roles})
        from google.cloud import pubsub_v1

        from tests.integration.helpers import PROJECT, agent_doc, publish, registration

        publisher = pubsub_v1.PublisherClient()
        publish(publisher, registration(AGENT, tenant=TENANT, owner="UBENCHOWN"))
        from google.cloud import firestore

        client = firestore.Client(project=PROJECT)
        deadline = time.monotonic() + 30
        while agent_doc(client, AGENT) is None and time.monotonic() < deadline:
            time.sleep(0.2)
        counter = LogCounter(stack.logs / "fleet-slack.log")
        signed.post(command("help", ADMIN))  # the first request builds the app: measured apart
        pending = [new_approval(stack) for _ in range(SAMPLES)]
        paused = [False]

        def pause_or_resume() -> tuple[float, requests.Response]:
            paused[0] = not paused[0]
            return signed.post(command(f"{'pause' if paused[0] else 'resume'} {AGENT} bench", REQUESTER))

        rows = [
            series("baseline: forged signature, 401", counter,
                   lambda: signed.post(command("help", ADMIN), forged=True)),
            series("`/fleet help`", counter, lambda: signed.post(command("help", ADMIN))),
            series("`/fleet status <agent>`", counter, lambda: signed.post(command(f"status {AGENT}", ADMIN))),
            series("`/fleet pause` / `resume` (alternating)", counter, pause_or_resume),
            series("Approve click (decision + work item)", counter,
                   lambda: signed.post(click(pending.pop(), APPROVERS[0]))),
        ]  # fmt: skip
        raced = race(stack, signed)
    finally:
        helpers.KEYRING = None
        stack.down()
    base = rows[0]["p50"]
    lines = [
        "| request | p50 ms | p95 ms | max ms | p50 vs baseline | Firestore reads | writes | publishes |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['label']} | {r['p50']:.0f} | {r['p95']:.0f} | {r['max']:.0f} | {r['p50'] / base:.1f}x | "
            f"{r['reads']:.1f} | {r['writes']:.1f} | {r['publishes']:.1f} |"
        )
    lines += [
        "",
        f"{CLICKERS} approvers clicking Approve on one request at once: HTTP {raced['codes']}; state "
        f"`{raced['state']}`; {raced['decisions']} decision recorded, {raced['refused']} refusals audited, "
        f"carried out {raced['applied']} time(s).",
    ]
    for line in lines:
        report(line)
    return lines


def machine() -> str:
    return (
        f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}."
    )


if __name__ == "__main__":
    print(machine())
    print("\n".join(describe()))
    main()
    sys.exit(0)
