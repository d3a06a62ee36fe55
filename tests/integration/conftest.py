"""The integration tests' stack: real emulators, functions-framework per function, push delivery.

One stack per test session, in a temporary folder with its own free ports, so it never meets
a stack started by `make up`. Tests use their own agent ids instead of wiping the database.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from emulators.stack import Stack
from tests.integration.helpers import PROJECT

#: Short settings so the tests see retries and expiries in seconds.
FUNCTION_ENV = {
    "FLEET_UNKNOWN_AGENT_GRACE_S": "4",
    "FLEET_HISTORY_CHUNK": "5",
    "FLEET_HISTORY_SLOTS": "3",
    "FLEET_API_KEY_CACHE_S": "0",
    "FLEET_CONFIG_CACHE_S": "1",
    "FLEET_RESEND_AFTER_S": "2",
}


#: Retry policies in seconds instead of minutes, so dead-lettering happens within a test.
SUBSCRIPTION_OVERRIDES = {"max_backoff_s": 10, "max_delivery_attempts": 5}  # the minimums Pub/Sub allows


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    state = tmp_path_factory.mktemp("stack")
    stack = Stack(
        Path(state), function_env=FUNCTION_ENV, firestore_proxy=True, subscription_overrides=SUBSCRIPTION_OVERRIDES
    )
    saved = dict(os.environ)
    try:
        stack.up()
        yield stack
    finally:
        stack.down()
        os.environ.clear()
        os.environ.update(saved)


@pytest.fixture(scope="session")
def publisher(stack: Stack) -> Iterator[Any]:
    from google.cloud import pubsub_v1

    client = pubsub_v1.PublisherClient()
    yield client


@pytest.fixture(scope="session")
def firestore(stack: Stack) -> Any:
    from google.cloud import firestore

    return firestore.Client(project=stack.env["GOOGLE_CLOUD_PROJECT"])


class Api:
    def __init__(self, url: str, key: str) -> None:
        self.url, self.key = url, key

    def get(self, path: str, key: str | None = None, **params: Any) -> requests.Response:
        headers = {"Authorization": f"Bearer {key if key is not None else self.key}"}
        return requests.get(self.url + path, headers=headers, params=params, timeout=10)

    def send(
        self, method: str, path: str, body: Any = None, key: str | None = None, **params: Any
    ) -> requests.Response:
        headers = {"Authorization": f"Bearer {key if key is not None else self.key}"}
        return requests.request(method, self.url + path, headers=headers, params=params, json=body, timeout=30)


@pytest.fixture(scope="session")
def api(stack: Stack) -> Api:
    return Api(stack.env["FLEET_API_URL"], stack.env["FLEET_API_KEY"])


@pytest.fixture
def agent_id() -> str:
    return f"it-{uuid.uuid4().hex[:12]}"


def wait_for(condition: Callable[[], Any], timeout: float = 30.0, every: float = 0.2) -> Any:
    """Poll until ``condition()`` is truthy; fail with the last value otherwise."""
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"condition not met within {timeout}s (last value: {value!r})")


class Slack:
    """The fake Slack server's record of calls."""

    def __init__(self, api_url: str) -> None:
        self.base = api_url.removesuffix("/").removesuffix("/api")

    def calls(self, method: str | None = None) -> list[dict[str, Any]]:
        calls = requests.get(f"{self.base}/_calls", timeout=5).json()
        return [c for c in calls if method is None or c["method"] == method]

    def about(self, needle: str, method: str | None = None) -> list[dict[str, Any]]:
        """Successful calls whose text or blocks mention ``needle``."""
        return [c for c in self.calls(method) if not c.get("failed") and needle in json.dumps(c.get("params"))]

    def fail(self, **spec: Any) -> None:
        requests.post(f"{self.base}/_fail", json=spec, timeout=5).raise_for_status()


@pytest.fixture(scope="session")
def slack(stack: Any) -> Slack:
    return Slack(stack.env["SLACK_API_URL"])


def tick(publisher: Any, job: str = "liveness-sweep") -> None:
    topic = publisher.topic_path(PROJECT, f"tick-{job}")
    publisher.publish(topic, json.dumps({"job": job}).encode(), job=job).result()
