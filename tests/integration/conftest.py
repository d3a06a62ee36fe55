"""The integration tests' stack: real emulators, functions-framework per function, push delivery.

One stack per test session, in a temporary folder with its own free ports, so it never meets
a stack started by `make up`. Tests use their own agent ids instead of wiping the database. The stack's
identity policy is the deployment's default (``required``): the helpers enroll every agent they publish
for and sign its events (tests/integration/keyring.py).
"""

from __future__ import annotations

import json
import os
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from slack_sdk.signature import SignatureVerifier

from emulators.stack import Stack
from shared.platform import settings
from tests.fakes import fake_cloudrun, fake_gke, fake_k8s
from tests.integration import helpers
from tests.integration.browser import chromium, page  # noqa: F401  (fixtures of the console's browser tests)
from tests.integration.helpers import PROJECT
from tests.integration.keyring import Keyring

#: Short settings so the tests see retries and expiries in seconds.
FUNCTION_ENV = {
    "FLEET_UNKNOWN_AGENT_GRACE_S": "4",
    "FLEET_HISTORY_CHUNK": "5",
    "FLEET_HISTORY_SLOTS": "3",
    "FLEET_API_KEY_CACHE_S": "0",
    "FLEET_CONFIG_CACHE_S": "1",
    "FLEET_RESEND_AFTER_S": "2",
    # A promoted model is picked up within a second (in Google Cloud: 5 minutes).
    "FLEET_MODEL_REFRESH_S": "1",
    # Budget leases end 15 s after their latest grant (in Google Cloud: 5 minutes) and return to the
    # pool 3 s later: a test sees an epoch end, and its charge return, within seconds.
    "FLEET_LEASE_TTL_S": "15",
    "FLEET_LEASE_GRACE_S": "3",
}


#: Retry policies in seconds instead of minutes, so dead-lettering happens within a test.
SUBSCRIPTION_OVERRIDES = {"max_backoff_s": 10, "max_delivery_attempts": 5}  # the minimums Pub/Sub allows


@dataclass
class CloudFakes:
    """Local stand-ins for the Google APIs without an emulator, reached by the functions through the
    real clients: GKE (container v1) with its cluster's Kubernetes API, and Cloud Run v2."""

    gke: Any
    k8s: Any
    cloudrun: Any
    cluster: str = "projects/fleet-local/locations/us-central1/clusters/fleet-gpu"

    def env(self) -> dict[str, str]:
        return {
            "FLEET_GKE_CLUSTER": self.cluster,
            "FLEET_GKE_API_ENDPOINT": self.gke.url,
            "FLEET_CLOUDRUN_API_ENDPOINT": self.cloudrun.url,
            "FLEET_CLOUDRUN_REGION": "us-central1",
            "FLEET_TRAINING_IMAGE": "us-central1-docker.pkg.dev/fleet-local/fleet/training:test",
            "FLEET_JOB_LAUNCH_GRACE_S": "2",
        }


@pytest.fixture(scope="session")
def cloud(stack: Stack) -> CloudFakes:
    return stack.cloud  # type: ignore[attr-defined]


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    state = tmp_path_factory.mktemp("stack")
    k8s = fake_k8s.start()
    cloud = CloudFakes(gke=None, k8s=k8s, cloudrun=fake_cloudrun.start_server())
    cloud.gke = fake_gke.start(clusters={cloud.cluster: k8s.url})
    stack = Stack(
        Path(state),
        function_env={**FUNCTION_ENV, **cloud.env()},
        firestore_proxy=True,
        subscription_overrides=SUBSCRIPTION_OVERRIDES,
    )
    stack.cloud = cloud  # type: ignore[attr-defined]
    saved = dict(os.environ)
    try:
        stack.up()
        # The settings this process's own clients read (model_blobs' bucket...) come from the stack's
        # environment, not from what a unit test run earlier in the same process had cached.
        settings.get.cache_clear()
        # Every agent the tests publish for enrolls and signs (tests/integration/keyring.py): the stack's
        # identity policy is the deployment's default, required.
        helpers.KEYRING = Keyring(stack.env["FLEET_PUBLIC_KEY"])
        yield stack
    finally:
        helpers.KEYRING = None
        stack.down()
        for fake in (cloud.gke, cloud.k8s, cloud.cloudrun):
            fake.stop()
        os.environ.clear()
        os.environ.update(saved)
        settings.get.cache_clear()


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


class SlackApp:
    """Signs requests with the stack's signing secret, as Slack does."""

    def __init__(self, url: str, secret: str) -> None:
        self.url, self.signer = url, SignatureVerifier(secret)

    def post(
        self,
        body: str,
        *,
        timestamp: int | None = None,
        signature: str | None = None,
        retry_num: int | None = None,
    ) -> requests.Response:
        ts = str(timestamp if timestamp is not None else int(time.time()))
        headers = {
            "Content-Type": "application/x-www-form-urlencoded",
            "X-Slack-Request-Timestamp": ts,
            "X-Slack-Signature": signature or self.signer.generate_signature(timestamp=ts, body=body),
        }
        if retry_num is not None:
            headers["X-Slack-Retry-Num"] = str(retry_num)
            headers["X-Slack-Retry-Reason"] = "http_timeout"
        return requests.post(self.url, data=body.encode(), headers=headers, timeout=30)

    @staticmethod
    def command_body(text: str, user: str, trigger_id: str | None = None) -> str:
        return urllib.parse.urlencode(
            {
                "token": "legacy-unused",
                "team_id": "T0FLEETLOC",
                "channel_id": "C0000OPS01",
                "user_id": user,
                "user_name": user.lower(),
                "command": "/fleet",
                "text": text,
                "response_url": "https://hooks.slack.invalid/commands/1",
                "trigger_id": trigger_id or f"tr.{uuid.uuid4().hex}",
            }
        )

    def command(self, text: str, user: str, **kw: Any) -> dict[str, Any]:
        reply = self.post(self.command_body(text, user, kw.pop("trigger_id", None)), **kw)
        assert reply.status_code == 200, reply.text
        return dict(reply.json())

    @staticmethod
    def click_body(action_id: str, value: str, user: str, message: dict[str, Any] | None = None) -> str:
        payload = {
            "type": "block_actions",
            "team": {"id": "T0FLEETLOC"},
            "user": {"id": user, "username": user.lower(), "name": user.lower()},
            "api_app_id": "A0FLEET",
            "token": "legacy-unused",
            "trigger_id": f"tr.{uuid.uuid4().hex}",
            "channel": {"id": (message or {}).get("channel", "C0000OPS01")},
            "container": {"type": "message", "message_ts": (message or {}).get("ts", "1.0")},
            "message": {
                "ts": (message or {}).get("ts", "1.0"),
                "text": (message or {}).get("text", ""),
                "blocks": (message or {}).get("blocks", []),
            },
            "actions": [{"action_id": action_id, "value": value, "type": "button", "action_ts": str(time.time())}],
            "response_url": "https://hooks.slack.invalid/actions/1",
        }
        return urllib.parse.urlencode({"payload": json.dumps(payload)})

    def click(self, action_id: str, value: str, user: str, message: dict[str, Any] | None = None) -> None:
        reply = self.post(self.click_body(action_id, value, user, message))
        assert reply.status_code == 200, reply.text


@pytest.fixture(scope="session")
def slack_app(stack: Any) -> SlackApp:
    return SlackApp(stack.env["SLACK_APP_URL"], stack.env["SLACK_SIGNING_SECRET"])


def approval_message(slack: Slack, approval_id: str) -> dict[str, Any]:
    posted = wait_for(lambda: slack.about(approval_id, "chat.postMessage"))
    call = posted[0]
    return {
        "channel": call["response"]["channel"],
        "ts": call["response"]["ts"],
        "text": call["params"]["text"],
        "blocks": call["params"]["blocks"],
    }
