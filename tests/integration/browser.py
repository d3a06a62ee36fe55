"""A real browser for the web console's tests: Playwright for Python driving Debian's Chromium
(``emulators/ensure_chromium.sh`` installs it; ``make test`` runs that first). Launched headless with
``executable_path`` and the flags this machine's closed network needs (no sandbox as root, no background
networking, no component updates), each test in a fresh context (its own cookies and session storage)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from typing import Any

import pytest

#: Chromium's flags here: as root it needs --no-sandbox; without the background-networking flags it keeps
#: trying Google's hosts, which this network refuses.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="session")
def chromium() -> Iterator[Any]:
    """One headless Chromium for the session (Playwright's sync API)."""
    # lazy: only the browser tests load Playwright
    from playwright.sync_api import sync_playwright

    executable = shutil.which("chromium")
    if executable is None:
        raise RuntimeError("chromium is missing: run emulators/ensure_chromium.sh (make test does)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(chromium: Any) -> Iterator[Any]:
    """A page in a fresh browser context (a new session: nothing kept from another test)."""
    context = chromium.new_context()
    try:
        yield context.new_page()
    finally:
        context.close()


def console_url(stack: Any) -> str:
    """The stack's web console (``FLEET_CONSOLE_URL``)."""
    return str(stack.env["FLEET_CONSOLE_URL"])


def sign_in(page: Any, stack: Any, key: str) -> None:
    """Sign in to the stack's console with ``key`` through the sign-in form, as a person would."""
    page.goto(console_url(stack) + "/sign-in")
    page.fill("#key", key)
    with page.expect_navigation():
        page.click("form[action='/sign-in'] button[type=submit]")
