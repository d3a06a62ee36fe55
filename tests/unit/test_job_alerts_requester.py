"""The requester of a job submitted through the API (an e-mail address, a Slack user id or the caller's own
``api:<key name>``), and how the job alerts find them in Slack: ``users.lookupByEmail`` for an address,
``users.info`` for an id (both cached), against the fake Slack server."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pydantic import ValidationError

from emulators.fake_slack import FakeSlack
from shared.api.bodies.jobs import JobRequest
from shared.services import job_alerts
from shared.slack import web_api

TOKEN = "xoxb-test-token"


@pytest.mark.parametrize("requester", ["maya@acme.com", "U0MAYA01", "api:ci-portal", None])
def test_a_requester_may_be_an_email_a_slack_id_or_the_caller(requester: str | None) -> None:
    body = {"agent_id": "bot-1", "name": "train", "requester": requester}
    assert JobRequest.model_validate(body).requester == requester


@pytest.mark.parametrize("requester", ["maya", "maya@acme", "<!channel>@acme.com", "u0maya01", "api:", "a b@c.com"])
def test_any_other_requester_is_refused(requester: str) -> None:
    with pytest.raises(ValidationError, match="requester"):
        JobRequest.model_validate({"agent_id": "bot-1", "name": "train", "requester": requester})


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeSlack]:
    with FakeSlack() as server:
        monkeypatch.setenv("SLACK_API_URL", server.url)
        monkeypatch.setenv("SLACK_BOT_TOKEN", TOKEN)
        web_api.reset()
        yield server
    web_api.reset()


def test_an_email_slack_knows_is_mentioned_once_looked_up(fake: FakeSlack) -> None:
    assert job_alerts.mention("U0MAYA01@fleet.test") == "U0MAYA01"
    assert job_alerts.mention("u0maya01@FLEET.test") == "U0MAYA01"  # the cache: no second call
    assert [c["method"] for c in fake.calls()] == ["users.lookupByEmail"]


def test_an_email_slack_does_not_know_is_not_mentioned_and_the_miss_is_cached(fake: FakeSlack) -> None:
    assert job_alerts.mention("maya@acme.com") is None
    assert job_alerts.mention("maya@acme.com") is None
    assert len(fake.calls("users.lookupByEmail")) == 1


def test_a_slack_user_id_is_checked_with_users_info(fake: FakeSlack) -> None:
    assert job_alerts.mention("U0BOB0001") == "U0BOB0001"
    assert [c["method"] for c in fake.calls()] == ["users.info"]


def test_an_api_caller_or_slack_trouble_means_no_mention(fake: FakeSlack) -> None:
    assert job_alerts.mention("api:ci-portal") is None
    assert fake.calls() == []
    fake.fail(status=500, count=5)
    assert job_alerts.mention("U0ANN0001@fleet.test") is None
