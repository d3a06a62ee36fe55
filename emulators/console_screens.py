"""Screenshots and page-load times of the web console (``python -m emulators.console_screens``).

Starts a private stack in ``.stack-screens`` (never the one `make up` runs), registers a small signed fleet
in two tenants (tests/integration/helpers: enrolled keys, signed events), records some spend, opens one
alert, signs in to the console in Chromium (tests/integration/browser.py's flags) and saves 1280x800 PNGs of
the main pages to docs/console/. Then measures each page's load time (median of 5 ``page.goto`` with
``wait_until="load"``) and prints a markdown table. The stack is always stopped.
"""

from __future__ import annotations

import shutil
import statistics
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import requests
from fleet_agent.contracts import CostBatch, CostRecord
from google.cloud import pubsub_v1
from playwright.sync_api import sync_playwright

from emulators.stack import ROOT, Stack
from shared.platform import settings
from tests.integration import helpers
from tests.integration.browser import CHROMIUM_ARGS
from tests.integration.keyring import Keyring

STATE_DIR = ROOT / ".stack-screens"
OUT = ROOT / "docs" / "console"
FUNCTION_ENV = {"FLEET_UNKNOWN_AGENT_GRACE_S": "10", "FLEET_API_KEY_CACHE_S": "0"}
FLEET = [
    ("acme-llm-chat-01", "acme", "llm-chat", ["chat", "tools"]),
    ("acme-llm-chat-02", "acme", "llm-chat", ["chat", "tools"]),
    ("acme-retriever-01", "acme", "retriever", ["search", "embeddings"]),
    ("globex-trainer-01", "globex", "ml-trainer", ["training"]),
    ("globex-evaluator-01", "globex", "evaluator", ["eval", "scoring"]),
]


def _wait(check: Callable[[], Any], timeout: float = 60.0) -> Any:
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


def populate(stack: Stack, publisher: Any) -> str:
    """Register the fleet, beat a few times, record spend, open one alert; returns an agent id to show."""
    url, key = stack.env["FLEET_API_URL"], stack.env["FLEET_API_KEY"]
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {key}"
    for agent_id, tenant, kind, caps in FLEET:
        helpers.publish(
            publisher,
            helpers.registration(agent_id, tenant=tenant, agent_type=kind, capabilities=caps, heartbeat_interval_s=30),
        )

    def known(agent_id: str) -> bool:
        return session.get(f"{url}/v1/agents/{agent_id}", timeout=5).status_code == 200

    _wait(lambda: all(known(agent_id) for agent_id, *_ in FLEET))
    for seq in range(1, 4):
        for i, (agent_id, *_) in enumerate(FLEET):
            error = 0.5 if agent_id == "globex-evaluator-01" and seq == 3 else 0.01
            beat = helpers.heartbeat(agent_id, seq, error_rate=error, cpu_pct=20.0 + 12 * i + 5 * seq)
            helpers.publish(publisher, beat)
        time.sleep(1)
    _spend(publisher, "acme-llm-chat-01", {"gpt-4o": "0.42", "claude-haiku": "0.08"})
    _spend(publisher, "acme-llm-chat-02", {"gpt-4o": "0.17"})
    session.put(f"{url}/v1/tenants/acme/budget", json={"daily_usd": "5", "monthly_usd": "100"}, timeout=10)
    _wait(lambda: session.get(f"{url}/v1/agents/acme-llm-chat-01/usage", timeout=5).json()["periods"]["day"]["calls"])
    _wait(lambda: session.get(f"{url}/v1/alerts", params={"state": "open"}, timeout=5).json()["items"])
    return "acme-llm-chat-01"


def shoot(console: str, admin_key: str, agent_id: str) -> list[tuple[str, float]]:
    """Sign in, save each page's screenshot, and time each page (median of 5 loads, in ms)."""
    pages = {
        "fleet": "/",
        "agent": f"/agents/{agent_id}",
        "spend": "/spend?tenant=acme",
        "alerts": "/alerts",
        "jobs": "/jobs",
        "approvals": "/approvals",
    }
    OUT.mkdir(parents=True, exist_ok=True)
    times: list[tuple[str, float]] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=shutil.which("chromium") or "/usr/bin/chromium",
                                             args=CHROMIUM_ARGS)  # fmt: skip
        page = browser.new_context(viewport={"width": 1280, "height": 800}).new_page()
        # A stylesheet or script that fails to load (or a CSP violation) would spoil the screenshots.
        page.on("console", lambda msg: print("browser console:", msg.text) if msg.type == "error" else None)
        page.goto(console + "/sign-in")
        page.fill("#key", admin_key)
        with page.expect_navigation():
            page.click("form[action='/sign-in'] button[type=submit]")
        for name, path in pages.items():
            page.goto(console + path, wait_until="load")
            page.screenshot(path=str(OUT / f"{name}.png"), full_page=False)
            samples = []
            for _ in range(5):
                t0 = time.perf_counter()
                page.goto(console + path, wait_until="load")
                samples.append((time.perf_counter() - t0) * 1000)
            times.append((f"{name} (`{path}`)", statistics.median(samples)))
        browser.close()
    return times


def main() -> int:
    shutil.rmtree(STATE_DIR, ignore_errors=True)
    stack = Stack(STATE_DIR, function_env=FUNCTION_ENV)
    try:
        stack.up()
        settings.get.cache_clear()
        helpers.KEYRING = Keyring(stack.env["FLEET_PUBLIC_KEY"])
        agent_id = populate(stack, pubsub_v1.PublisherClient())
        times = shoot(stack.env["FLEET_CONSOLE_URL"], stack.env["FLEET_API_KEY"], agent_id)
    finally:
        stack.down()
    print("| page | load time (median of 5, ms) |\n|---|---:|")
    for name, ms in times:
        print(f"| {name} | {ms:.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
