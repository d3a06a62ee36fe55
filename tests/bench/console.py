"""`make bench`, web console section: each page's load time in a real browser and its Firestore reads per
view, beside what the same data costs as the REST API's JSON (what the fleet offered before the console).

    python -m tests.bench.console              # this section alone (about two minutes)
    python -m tests.bench.console --screens    # also saves the pages' screenshots to docs/console/

A private stack (``.stack-bench-console``; never the one `make up` runs) gets a small signed fleet in two
tenants (enrolled keys, signed events, as tests/integration does), spend, a daily and monthly budget, one
open alert, two training jobs on the local backend (one admitted, one queued behind the GPU quota) and a
pending approval. An admin signs in to the console in Chromium (tests/integration/browser.py's flags).

- Load time: median of ``SAMPLES`` ``page.goto(..., wait_until="load")`` per page (the HTML, its
  stylesheet and script), after one warm-up load.
- Reads per view: the ``firestore_reads`` of the console's log lines for one load (the page and its
  assets; the fleet page's 5-second refresh, ``/fragments/fleet``, is given as its own row).
- Baseline: the API calls carrying the page's data, made with ``requests`` to ``fleet-api`` as a script
  would (median of ``SAMPLES``; reads from ``fleet-api``'s log lines).

Then ``BULK`` more agents are registered and the fleet page is measured again: its reads grow with the
agents shown (one agent document and one usage counter each), the other pages' do not.
"""

from __future__ import annotations

import shutil
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import requests
from fleet_agent.contracts import CostBatch, CostRecord

from emulators.stack import ROOT, Stack
from shared.console import agent_page, alerts_page, approvals_page, jobs_page
from shared.platform import settings
from tests.bench.run import LogCounter
from tests.integration import helpers
from tests.integration.browser import CHROMIUM_ARGS
from tests.integration.keyring import Keyring

STATE_DIR = ROOT / ".stack-bench-console"
SCREENS = ROOT / "docs" / "console"
SAMPLES = 5
BULK = 45
FUNCTION_ENV = {"FLEET_UNKNOWN_AGENT_GRACE_S": "10"}  # API keys cached as deployed (30 s)
FLEET = [
    ("acme-llm-chat-01", "acme", "llm-chat", ["chat", "tools"]),
    ("acme-llm-chat-02", "acme", "llm-chat", ["chat", "tools"]),
    ("acme-retriever-01", "acme", "retriever", ["search", "embeddings"]),
    ("globex-trainer-01", "globex", "ml-trainer", ["training"]),
    ("globex-evaluator-01", "globex", "evaluator", ["eval", "scoring"]),
]
AGENT = "acme-llm-chat-01"
#: Each page, and the API calls it makes for its data (the baseline makes the same calls as a script would).
_JOB_STATES = (*jobs_page.WAITING, *jobs_page.ACTIVE, *jobs_page.FINAL)
PAGES: dict[str, tuple[str, list[str]]] = {
    "fleet": ("/", ["/v1/agents?page_size=500"]),
    "agent": (
        f"/agents/{AGENT}",
        [
            f"/v1/agents/{AGENT}",
            f"/v1/agents/{AGENT}/history?limit={agent_page.HISTORY_SAMPLES}",
            f"/v1/agents/{AGENT}/usage",
            f"/v1/alerts?agent_id={AGENT}&state=open&limit={agent_page.OPEN_EPISODES}",
            f"/v1/alerts?agent_id={AGENT}&limit=10",
            f"/v1/audit?target={AGENT}&limit={agent_page.AUDIT_ENTRIES}",
        ],
    ),
    "spend": ("/spend?tenant=acme", ["/v1/tenants/acme/usage", "/v1/agents?tenant=acme&page_size=100"]),
    "alerts": ("/alerts", [f"/v1/alerts?state=open&limit={alerts_page.LIMIT}", "/v1/silences"]),
    "jobs": (
        "/jobs",
        [
            f"/v1/jobs?state={s}&limit={jobs_page.FINISHED_LIMIT if s in jobs_page.FINAL else jobs_page.LIMIT}"
            for s in _JOB_STATES
        ],
    ),
    "approvals": (
        "/approvals",
        [f"/v1/approvals?state={s}&limit={approvals_page.LIMIT}" for s in ("pending", "approved", "denied", "expired")],
    ),
}


def describe() -> list[str]:
    return [
        "`python -m tests.bench.console` (part of `make bench`): an admin signed in to the console in Chromium on "
        f'the local stack; each page\'s load time is the median of {SAMPLES} `page.goto(..., wait_until="load")` '
        "(HTML, stylesheet, script) after a warm-up load, its Firestore reads are from `fleet-console`'s log lines "
        "for that load. The baseline is the same data as JSON: the API calls the page's data comes from, made "
        "with `requests` to `fleet-api` (median of the same number of rounds; reads from `fleet-api`'s lines).",
    ]


def _wait(check: Callable[[], Any], timeout: float = 90.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            found = check()
        except (requests.RequestException, KeyError, ValueError):
            found = None
        if found:
            return found
        time.sleep(0.5)
    raise TimeoutError("the stack did not show what was published")


def _spend(publisher: Any, agent_id: str, costs: dict[str, str]) -> None:
    records = [
        CostRecord.model_validate(
            {"call_id": f"call-{uuid.uuid4().hex}", "at": datetime.now(UTC), "model": model,
             "input_tokens": 1200, "output_tokens": 300, "cost_usd": Decimal(cost), "success": True,
             "latency_ms": 850.0, "operation": "chat"}
        )
        for model, cost in costs.items()
    ]  # fmt: skip
    helpers.publish(publisher, CostBatch(agent_id=agent_id, batch_id=f"b-{uuid.uuid4().hex}", records=records))


def _register(api: requests.Session, url: str, publisher: Any, fleet: list[tuple[str, str, str, list[str]]]) -> None:
    for agent_id, tenant, kind, caps in fleet:
        registration = helpers.registration(
            agent_id, tenant=tenant, agent_type=kind, capabilities=caps, heartbeat_interval_s=30
        )
        helpers.publish(publisher, registration)

    def known(agent_id: str) -> bool:
        return api.get(f"{url}/v1/agents/{agent_id}", timeout=5).status_code == 200

    _wait(lambda: all(known(agent_id) for agent_id, *_ in fleet))


def populate(stack: Stack, publisher: Any) -> list[str]:
    """The fleet, beats, spend, a budget, an open alert, two jobs and an approval; returns the job ids."""
    url = stack.env["FLEET_API_URL"]
    api = requests.Session()
    api.headers["Authorization"] = f"Bearer {stack.env['FLEET_API_KEY']}"
    _register(api, url, publisher, FLEET)
    for seq in range(1, 4):
        for i, (agent_id, *_) in enumerate(FLEET):
            error = 0.5 if agent_id == "globex-evaluator-01" and seq == 3 else 0.01
            beat = helpers.heartbeat(agent_id, seq, error_rate=error, cpu_pct=20.0 + 12 * i + 5 * seq)
            helpers.publish(publisher, beat)
        time.sleep(1)
    _spend(publisher, AGENT, {"gpt-4o": "0.42", "claude-haiku": "0.08"})
    _spend(publisher, "acme-llm-chat-02", {"gpt-4o": "0.17"})
    api.put(f"{url}/v1/tenants/acme/budget", json={"daily_usd": "5", "monthly_usd": "100"}, timeout=10)
    _wait(lambda: api.get(f"{url}/v1/agents/{AGENT}/usage", timeout=5).json()["periods"]["day"]["calls"])
    _wait(lambda: api.get(f"{url}/v1/alerts", params={"state": "open"}, timeout=5).json()["items"])
    jobs = []
    for name, gpus in (("nightly-finetune", 2), ("eval-sweep", 1)):
        body = {"agent_id": "globex-trainer-01", "requester": "alice@example.com", "name": name,
                "resources": {"gpu": gpus, "cpu": 2, "memory_gb": 4}, "hyperparameters": {"epochs": 120},
                "training_config": {"rows": 1500, "val_fraction": 0.25, "step_sleep_s": 1}}  # fmt: skip
        reply = api.post(f"{url}/v1/jobs", json=body, timeout=10)
        reply.raise_for_status()
        jobs.append(reply.json()["id"])
    approval = {"kind": "operation", "tenant": "acme", "summary": "re-index the support corpus (2.1M documents)",
                "estimated_cost_usd": "120"}  # fmt: skip
    api.post(f"{url}/v1/approvals", json=approval, timeout=10).raise_for_status()
    return jobs


def _reads(counter: LogCounter, start: int, skip: str | None = None) -> tuple[int, int, float]:
    """(Firestore reads, requests, the function's own ms) of the log lines after ``start`` (``skip``: a path
    left out)."""
    lines = [line for line in counter.poll()[start:] if "firestore_reads" in line and line.get("path") != skip]
    ms = sum(float(line.get("duration_ms") or 0) for line in lines)
    return sum(int(line["firestore_reads"]) for line in lines), len(lines), ms


def _settle(counter: LogCounter) -> int:
    time.sleep(0.3)  # the function writes its line after the response
    return len(counter.poll())


def browse(stack: Stack, pages: dict[str, tuple[str, list[str]]], screens: bool) -> dict[str, dict[str, Any]]:
    """Sign in, optionally save each page's screenshot, and measure each page."""
    from playwright.sync_api import sync_playwright  # lazy: the bench's other sections need no browser

    console, key = stack.env["FLEET_CONSOLE_URL"], stack.env["FLEET_API_KEY"]
    counter = LogCounter(stack.logs / "fleet-console.log")
    out: dict[str, dict[str, Any]] = {}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=shutil.which("chromium") or "/usr/bin/chromium",
                                             args=CHROMIUM_ARGS)  # fmt: skip
        page = browser.new_context(viewport={"width": 1280, "height": 800}).new_page()
        errors: list[str] = []
        page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
        page.goto(console + "/sign-in")
        page.fill("#key", key)
        with page.expect_navigation():
            page.click("form[action='/sign-in'] button[type=submit]")
        for name, (path, _) in pages.items():
            page.goto(console + path, wait_until="load")
            if screens:
                page.screenshot(path=str(SCREENS / f"{name}.png"), full_page=False)
            samples, reads, requests_, server = [], [], [], []
            for _ in range(SAMPLES):
                start = _settle(counter)
                t0 = time.perf_counter()
                page.goto(console + path, wait_until="load")
                samples.append((time.perf_counter() - t0) * 1000)
                _settle(counter)
                got, n, ms = _reads(counter, start, skip="/fragments/fleet")
                reads.append(got)
                requests_.append(n)
                server.append(ms)
            out[name] = {"ms": statistics.median(samples), "reads": statistics.median(reads),
                         "requests": statistics.median(requests_), "server": statistics.median(server)}  # fmt: skip
        start = _settle(counter)
        page.goto(console + "/", wait_until="load")
        page.wait_for_timeout(5600)  # console.js refreshes the fleet table every 5 s
        refresh = [line for line in counter.poll()[start:] if line.get("path") == "/fragments/fleet"]
        first = refresh[0] if refresh else {"duration_ms": float("nan"), "firestore_reads": -1}
        fragment_reads = int(first["firestore_reads"])
        took = float(first["duration_ms"])
        out["fleet refresh"] = {"ms": float("nan"), "reads": fragment_reads, "requests": 1, "server": took}
        browser.close()
    if errors:
        print("browser console errors:", *errors, sep="\n  ", file=sys.stderr)
    return out


def baseline(stack: Stack, pages: dict[str, tuple[str, list[str]]]) -> dict[str, dict[str, Any]]:
    """The same data as JSON from fleet-api: median of SAMPLES rounds of the page's API calls."""
    url = stack.env["FLEET_API_URL"]
    api = requests.Session()
    api.headers["Authorization"] = f"Bearer {stack.env['FLEET_API_KEY']}"
    counter = LogCounter(stack.logs / "fleet-api.log")
    out: dict[str, dict[str, Any]] = {}
    for name, (_, calls) in pages.items():
        for call in calls:
            api.get(url + call, timeout=10).raise_for_status()  # warm-up, as the browser's first load
        samples, reads = [], []
        for _ in range(SAMPLES):
            start = _settle(counter)
            t0 = time.perf_counter()
            for call in calls:
                api.get(url + call, timeout=10).raise_for_status()
            samples.append((time.perf_counter() - t0) * 1000)
            _settle(counter)
            reads.append(_reads(counter, start)[0])
        out[name] = {"ms": statistics.median(samples), "reads": statistics.median(reads), "requests": len(calls)}
    return out


def table(title: str, console: dict[str, dict[str, Any]], base: dict[str, dict[str, Any]]) -> list[str]:
    head = (
        "| page | load (median of 5, ms) | in the function (ms) | reads per view | requests | API JSON (ms) | reads |"
    )
    lines = [f"**{title}**", "", head, "|---|---:|---:|---:|---:|---:|---:|"]
    for name, got in console.items():
        path = PAGES[name][0] if name in PAGES else "/fragments/fleet"
        b = base.get(name)
        tail = f"{b['ms']:.0f} | {b['reads']:.0f}" if b else "- | -"
        load = "-" if got["ms"] != got["ms"] else f"{got['ms']:.0f}"  # NaN: not a page load
        cells = f"{load} | {got['server']:.0f} | {got['reads']:.0f} | {got['requests']:.0f} | {tail}"
        lines.append(f"| {name} (`{path}`) | {cells} |")
    return lines


def main(report: Callable[[str], None] = print, screens: bool = False) -> list[str]:
    shutil.rmtree(STATE_DIR, ignore_errors=True)
    stack = Stack(STATE_DIR, function_env=FUNCTION_ENV)
    lines: list[str] = []
    try:
        from google.cloud import pubsub_v1  # lazy: the emulator's address is known once the stack is up

        stack.up()
        settings.get.cache_clear()
        helpers.KEYRING = Keyring(stack.env["FLEET_PUBLIC_KEY"])
        publisher = pubsub_v1.PublisherClient()
        jobs = populate(stack, publisher)
        if screens:
            SCREENS.mkdir(parents=True, exist_ok=True)
        small = browse(stack, PAGES, screens)
        lines += table(f"{len(FLEET)} agents", small, baseline(stack, PAGES))
        api = requests.Session()
        api.headers["Authorization"] = f"Bearer {stack.env['FLEET_API_KEY']}"
        bulk = [(f"bulk-{i:03d}", "bulk", "llm-chat", ["chat"]) for i in range(BULK)]
        _register(api, stack.env["FLEET_API_URL"], publisher, bulk)
        fleet_only = {"fleet": PAGES["fleet"]}
        big = browse(stack, fleet_only, screens=False)
        lines += ["", *table(f"{len(FLEET) + BULK} agents", big, baseline(stack, fleet_only))]
        for job in jobs:
            api.post(f"{stack.env['FLEET_API_URL']}/v1/jobs/{job}/cancel", json={}, timeout=10)
    finally:
        stack.down()
    for line in lines:
        report(line)
    return lines


if __name__ == "__main__":
    main(screens="--screens" in sys.argv[1:])
    sys.exit(0)
