"""`make bench`, training-jobs section: what submitting, admitting, launching and following jobs costs.

    python -m tests.bench.jobs      # this section alone (about two minutes)

On a local stack whose GKE is the test fakes (tests/fakes/fake_gke.py and fake_k8s.py, reached by the
functions through google-cloud-container and the kubernetes client), timed at the client:

- baseline: ``GET /v1/jobs/{id}`` (one read) on the same function;
- ``POST /v1/jobs`` admitted at once (estimate, create, the tenant's admission pass in a
  transaction, the launch handed to ``fleet-actions``), then into a queue of ``QUEUE`` waiting jobs
  at the same priority (appended: no other job moves) and at priority 10 (every waiting job moves
  down one place: the pass rewrites their positions);
- submit -> launched: until the Kubernetes Job exists and its handle is recorded (``fleet-actions``);
- one reconcile tick (``fleet-jobs``) over ``ACTIVE`` admitted jobs, each compared with its
  Kubernetes Job: duration, reads, writes, from the function's log line;
- ``RACE`` launch work items for one admitted job delivered at once: Kubernetes Jobs created.

Reads and writes per request come from the functions' structured log lines.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import requests

from emulators.stack import ROOT, Stack
from tests.bench.run import UNSIGNED, LogCounter
from tests.bench.slack import machine, percentile, summary
from tests.fakes import fake_gke, fake_k8s

SAMPLES = int(os.environ.get("BENCH_JOB_SAMPLES", 30))
QUEUE = int(os.environ.get("BENCH_JOB_QUEUE", 100))
ACTIVE = int(os.environ.get("BENCH_JOB_ACTIVE", 100))
RACE = int(os.environ.get("BENCH_JOB_RACE", 8))
TENANT = "bench-jobs"
AGENT = "bench-jobs-agent"
CLUSTER = "projects/fleet-local/locations/us-central1/clusters/bench-gpu"


class Client:
    def __init__(self, stack: Stack) -> None:
        self.url, self.session = stack.env["FLEET_API_URL"], requests.Session()
        self.session.headers["Authorization"] = f"Bearer {stack.env['FLEET_API_KEY']}"

    def call(self, method: str, path: str, body: Any = None) -> tuple[float, dict[str, Any]]:
        start = time.perf_counter()
        reply = self.session.request(method, self.url + path, json=body, timeout=60)
        ms = (time.perf_counter() - start) * 1000
        if reply.status_code != 200:
            raise RuntimeError(f"{method} {path}: {reply.status_code} {reply.text[:300]}")
        return ms, dict(reply.json())

    def submit(self, requester: str, **fields: Any) -> tuple[float, dict[str, Any]]:
        body = {"agent_id": AGENT, "requester": requester, "name": "bench", "resources": {"gpu": 1}, **fields}
        return self.call("POST", "/v1/jobs", body)


def series(label: str, counter: LogCounter, run: Callable[[], float], endpoint: str) -> dict[str, Any]:
    start = len(counter.poll())
    times = [run() for _ in range(SAMPLES)]
    time.sleep(0.3)
    return summary(label, times, [x for x in counter.poll()[start:] if x.get("endpoint") == endpoint])


def tick(stack: Stack) -> None:
    from google.cloud import pubsub_v1

    client = pubsub_v1.PublisherClient()
    topic = client.topic_path(stack.env["GOOGLE_CLOUD_PROJECT"], "tick-jobs-reconcile")
    client.publish(topic, json.dumps({"job": "jobs-reconcile"}).encode(), job="jobs-reconcile").result(timeout=30)


def wait(condition: Callable[[], Any], timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.05)
    raise RuntimeError("timed out")


def describe() -> list[str]:
    return [
        "`python -m tests.bench.jobs` (part of `make bench`): `fleet-api`, `fleet-actions` and `fleet-jobs` on the "
        f"local stack with GKE as the local fakes (real clients); {SAMPLES} requests of each kind one after another, "
        "timed at the client. The baseline is `GET /v1/jobs/{id}` on the same function (one read). Reads and writes "
        "per request are from the functions' log lines.",
    ]


def main(report: Callable[[str], None] = print) -> list[str]:
    k8s = fake_k8s.start()
    gke = fake_gke.start(clusters={CLUSTER: k8s.url})
    env = {
        "FLEET_GKE_CLUSTER": CLUSTER,
        "FLEET_GKE_API_ENDPOINT": gke.url,
        "FLEET_JOB_DEFAULT_BACKEND": "gke",
        "FLEET_CONFIG_CACHE_S": "1",
    }
    stack = Stack(ROOT / ".stack-bench-jobs", function_env={**env, **UNSIGNED}, create_admin_key=True)
    try:
        stack.up()
        os.environ.update(stack.env)
        client = Client(stack)
        settings = {
            "backends": ["gke", "local"],
            "user_quota": {"gpu": 1},
            "tenant_quota": {"cpu": None, "memory_gb": None, "gpu": None, "storage_gb": None},
        }
        client.call("PUT", f"/v1/tenants/{TENANT}/jobs", settings)
        from google.cloud import firestore, pubsub_v1

        from tests.integration.helpers import PROJECT, agent_doc, publish, registration

        publish(pubsub_v1.PublisherClient(), registration(AGENT, tenant=TENANT))
        store = firestore.Client(project=PROJECT)
        wait(lambda: agent_doc(store, AGENT))
        api_log = LogCounter(stack.logs / "fleet-api.log")
        first = client.submit("warm-up@bench.test")[1]  # builds the function's clients: measured apart
        wait(lambda: client.call("GET", f"/v1/jobs/{first['id']}")[1]["handle"])

        launched: list[float] = []

        def admitted_at_once() -> float:
            started = time.perf_counter()
            ms, job = client.submit(f"user-{uuid.uuid4().hex[:8]}")
            assert job["state"] == "admitted", job
            wait(lambda: client.call("GET", f"/v1/jobs/{job['id']}")[1]["handle"])
            launched.append((time.perf_counter() - started) * 1000)
            return ms

        rows = [
            series("baseline: `GET /v1/jobs/{id}`", api_log,
                   lambda: client.call("GET", f"/v1/jobs/{first['id']}")[0], "get_job"),
            series("`POST /v1/jobs`, admitted at once", api_log, admitted_at_once, "submit_job"),
        ]  # fmt: skip
        # One requester's quota is full: each of its next jobs waits, behind the others.
        client.submit("queued-user@bench.test")
        for _ in range(QUEUE):
            client.submit("queued-user@bench.test")
        rows.append(
            series(f"`POST /v1/jobs` into a queue of {QUEUE}+ (appended)", api_log,
                   lambda: client.submit("queued-user@bench.test")[0], "submit_job")
        )  # fmt: skip
        rows.append(
            series(f"`POST /v1/jobs` priority 10 into a queue of {QUEUE + SAMPLES}+ (all move)", api_log,
                   lambda: client.submit("queued-user@bench.test", priority=10)[0], "submit_job")
        )  # fmt: skip
        active = len(k8s.jobs())
        while active < ACTIVE:
            client.submit(f"user-{uuid.uuid4().hex[:8]}")
            active += 1
        wait(lambda: len(k8s.jobs()) >= ACTIVE, timeout=120)
        jobs_log = LogCounter(stack.logs / "fleet-jobs.log")
        ticks = []
        for _ in range(3):
            before = len(jobs_log.poll())
            tick(stack)
            line = wait(lambda b=before: [x for x in jobs_log.poll()[b:] if x.get("outcome") == "done"], 120)[0]
            ticks.append(line)
        raced = race(stack, client, k8s)
    finally:
        stack.down()
        gke.stop()
        k8s.stop()
    base = rows[0]["p50"]
    lines = [
        "| request | p50 ms | p95 ms | max ms | p50 vs baseline | Firestore reads | writes |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['label']} | {r['p50']:.0f} | {r['p95']:.0f} | {r['max']:.0f} | {r['p50'] / base:.1f}x | "
            f"{r['reads']:.1f} | {r['writes']:.1f} |"
        )
    lines += [
        "",
        f"Submit -> launched (the Kubernetes Job created through google-cloud-container and the kubernetes client, "
        f"its handle recorded by `fleet-actions`): p50 {statistics.median(launched):.0f} ms, "
        f"p95 {percentile(launched, 0.95):.0f} ms over {len(launched)} jobs.",
        "",
        "| reconcile tick | active jobs followed | duration ms | Firestore reads | writes |",
        "|---|---|---|---|---|",
    ]
    for i, t in enumerate(ticks, 1):
        result = t.get("result") or {}
        lines.append(
            f"| tick {i} | {result.get('followed')} | {t.get('duration_ms', 0):.0f} | {t.get('firestore_reads')} | "
            f"{t.get('firestore_writes')} |"
        )
    lines += [
        "",
        f"A launched job whose launch was not recorded, then {RACE} launch work items for it delivered at once: "
        f"{raced['created']} Kubernetes Job created in all, {raced['conflicts']} retried creates answered 409 and "
        f"recognised as ours, {raced['jobs']} Job exists, the relaunch recorded {raced['launches']} time(s).",
    ]
    for line in lines:
        report(line)
    return lines


def race(stack: Stack, client: Client, k8s: Any) -> dict[str, int]:
    """Publish RACE ``job.launch`` work items for one admitted job whose launch was not recorded yet."""
    from google.cloud import firestore, pubsub_v1

    _, job = client.submit(f"racer-{uuid.uuid4().hex[:6]}")
    ref = firestore.Client(project=stack.env["GOOGLE_CLOUD_PROJECT"]).collection("jobs").document(job["id"])
    wait(lambda: (ref.get().to_dict() or {}).get("handle"))
    name = ref.get().to_dict()["handle"]["name"].split("/")[1]
    before = sum(1 for e in ref.get().to_dict().get("history", []) if e.get("kind") == "launched")
    ref.update({"handle": None, "launched_at": None})  # as if the first launch was lost before it was recorded
    publisher = pubsub_v1.PublisherClient()
    topic = publisher.topic_path(stack.env["GOOGLE_CLOUD_PROJECT"], "fleet-actions")
    body = json.dumps({"kind": "job.launch", "job_id": job["id"]}).encode()
    barrier = threading.Barrier(RACE)

    def one() -> None:
        barrier.wait()
        publisher.publish(topic, body, kind="job.launch").result(timeout=30)

    threads = [threading.Thread(target=one) for _ in range(RACE)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wait(lambda: (ref.get().to_dict() or {}).get("handle"))
    time.sleep(2)
    posts = [r for r in k8s.requests("POST") if r["path"].endswith("/jobs") and name in json.dumps(r.get("body"))]
    doc = ref.get().to_dict() or {}
    return {
        "created": sum(1 for r in posts if r.get("status") == 201),
        "conflicts": sum(1 for r in posts if r.get("status") == 409),
        "jobs": sum(1 for j in k8s.jobs() if j["metadata"]["name"] == name),
        "launches": sum(1 for e in doc.get("history", []) if e.get("kind") == "launched") - before,
    }


if __name__ == "__main__":
    print(machine())
    print("\n".join(describe()))
    main()
    sys.exit(0)
