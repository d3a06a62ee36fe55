"""The requester of a job submitted through the API (an e-mail address, a Slack user id or the caller's own
``api:<key name>``), and how the job alerts find them in Slack: ``users.lookupByEmail`` for an address,
``users.info`` for an id (both cached), against the fake Slack server."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from emulators.fake_slack import FakeSlack
from shared.api.bodies.jobs import JobRequest
from shared.domain import job_alerts as rules
from shared.domain.episodes import AlertingConfig
from shared.domain.jobs import JobsConfig, JobState
from shared.services import job_alerts
from shared.slack import web_api
from shared.store import config as config_store
from shared.store import episodes as episode_store
from shared.store import job_alerts as store
from tests.unit.test_jobs_domain import make_job

TOKEN = "xoxb-test-token"


@pytest.mark.parametrize("requester", ["maya@acme.com", "U0MAYA01", "slack:U0MAYA01", "api:ci-portal", None])
def test_a_requester_may_be_an_email_a_slack_id_or_the_caller(requester: str | None) -> None:
    body = {"agent_id": "bot-1", "name": "train", "requester": requester}
    assert JobRequest.model_validate(body).requester == requester


@pytest.mark.parametrize("requester", ["maya", "maya@acme", "<!channel>@acme.com", "u0maya01", "api:", "a b@c.com"])
def test_any_other_requester_is_refused(requester: str) -> None:
    with pytest.raises(ValidationError, match="requester"):
        JobRequest.model_validate({"agent_id": "bot-1", "name": "train", "requester": requester})


@pytest.mark.parametrize("notify", ["maya@acme.com", "U0MAYA01", "slack:U0MAYA01", None])
def test_whom_to_notify_may_be_an_email_or_a_slack_id(notify: str | None) -> None:
    body = {"agent_id": "bot-1", "name": "train", "notify": notify}
    assert JobRequest.model_validate(body).notify == notify


@pytest.mark.parametrize("notify", ["api:ci-portal", "maya", "<!channel>@acme.com", "u0maya01"])
def test_any_other_notify_is_refused(notify: str) -> None:
    with pytest.raises(ValidationError, match="notify"):
        JobRequest.model_validate({"agent_id": "bot-1", "name": "train", "notify": notify})


def test_the_schema_states_both_patterns() -> None:
    properties = JobRequest.model_json_schema()["properties"]
    for field in ("requester", "notify"):
        [pattern] = [b["pattern"] for b in properties[field]["anyOf"] if b.get("type") == "string"]
        assert re.match(pattern, "slack:U0MAYA01") and bool(re.match(pattern, "api:ci")) is (field == "requester")


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


def test_a_miss_is_believed_only_for_a_while(fake: FakeSlack, monkeypatch: pytest.MonkeyPatch) -> None:
    """The person may join Slack later: a miss older than MISS_TTL_S is looked up again; a hit is kept."""
    monkeypatch.setattr(web_api, "MISS_TTL_S", 0.0)
    assert job_alerts.mention("maya@acme.com") is None
    assert job_alerts.mention("maya@acme.com") is None
    assert len(fake.calls("users.lookupByEmail")) == 2
    assert job_alerts.mention("U0MAYA01@fleet.test") == "U0MAYA01"
    assert job_alerts.mention("U0MAYA01@fleet.test") == "U0MAYA01"
    assert len(fake.calls("users.lookupByEmail")) == 3


def test_a_job_with_notify_mentions_that_person_and_names_its_requester(
    fake: FakeSlack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A non-admin key submits as itself (api:<key name>) and names whom the alerts mention."""
    FakeStores(monkeypatch)
    raised: list[Any] = []
    monkeypatch.setattr(episode_store, "raise_once", lambda alert: raised.append(alert) or True)
    job = make_job("j-6", state=JobState.FAILED, requester="api:ci", started_at=datetime(2026, 3, 2, tzinfo=UTC))
    job = job.model_copy(update={"notify": "U0MAYA01@fleet.test", "finished_at": datetime(2026, 3, 2, 1, tzinfo=UTC)})
    assert job_alerts.on_final(job, datetime(2026, 3, 2, 1, tzinfo=UTC))
    [alert] = raised
    assert alert.details["mention"] == "U0MAYA01" and "requested by <@U0MAYA01>" in alert.message


def test_a_backtick_in_a_requester_or_a_name_cannot_end_the_code_span() -> None:
    assert rules.who("a`b@c.com", None) == "`a\u02cbb@c.com`"
    job = make_job("j-7", state=JobState.FAILED, requester="a`b@c.com").model_copy(update={"name": "x` <!channel> `y"})
    alert = rules.final_alert(job, datetime(2026, 3, 2, tzinfo=UTC), None)
    assert alert is not None and alert.message.count("`") == 6  # name, agent, requester: three spans
    assert "<!channel>" not in alert.message


def test_a_slack_user_id_is_checked_with_users_info(fake: FakeSlack) -> None:
    assert job_alerts.mention("U0BOB0001") == "U0BOB0001"
    assert [c["method"] for c in fake.calls()] == ["users.info"]


def test_an_api_caller_or_slack_trouble_means_no_mention(fake: FakeSlack) -> None:
    assert job_alerts.mention("api:ci-portal") is None
    assert fake.calls() == []
    fake.fail(status=500, count=5)
    assert job_alerts.mention("U0ANN0001@fleet.test") is None


class FakeStores:
    """The service's stores replaced: the queues it read, and the tenant alert documents it wrote (the
    2 h default wait is passed when the oldest queued job entered at 06:00: the tick is at 09:00)."""

    def __init__(
        self, monkeypatch: pytest.MonkeyPatch, *, queued: int = 0, oldest_h: int = 6, open_: set[str] | None = None
    ) -> None:
        self.queues: list[str] = []
        self.updated: dict[str, list[Any]] = {}
        self.states: dict[str, dict[str, Any]] = {}
        oldest = datetime(2026, 3, 2, oldest_h, 0, tzinfo=UTC)
        monkeypatch.setattr(store, "tenants_open", lambda: set(open_ or ()))

        def queue(tenant: str) -> tuple[int, datetime]:
            self.queues.append(tenant)
            return queued, oldest

        monkeypatch.setattr(store, "queue", queue)
        monkeypatch.setattr(store, "ended_since", lambda tenant, since, before=None: (0, 0))
        monkeypatch.setattr(config_store, "jobs", lambda tenant: JobsConfig(alert_queue_length=2))
        monkeypatch.setattr(config_store, "alerting", lambda tenant: AlertingConfig())
        monkeypatch.setattr(episode_store, "update_tenant", self.update_tenant)

    def update_tenant(self, tenant: str, decide: Any) -> list[Any]:
        changes, writes = decide(self.states.get(tenant, {}))
        if changes:
            self.states[tenant] = {**self.states.get(tenant, {}), **changes}
        self.updated.setdefault(tenant, []).extend(writes)
        return list(writes)


def test_the_tick_reads_the_alert_document_only_of_tenants_with_a_finding_or_an_open_episode(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
    fake = FakeStores(monkeypatch, queued=1, oldest_h=8)
    out = job_alerts.tick(now, [], {"acme"})
    assert fake.queues == ["acme"] and fake.updated == {}  # 1 queued: nothing found, nothing open
    assert out["tenants"] == 1 and out["opened"] == 0

    fake = FakeStores(monkeypatch, queued=3)
    out = job_alerts.tick(now, [], {"acme"})
    assert sorted(w.fields["rule"] for w in fake.updated["acme"]) == ["job_queue", "job_wait"]
    assert out["opened"] == 2
    assert job_alerts.tick(now, [], {"acme"})["opened"] == 0  # the tick again: open already


def test_a_full_page_of_active_jobs_does_not_resolve_stalls_it_did_not_list(monkeypatch: pytest.MonkeyPatch) -> None:
    now = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
    fake = FakeStores(monkeypatch, open_={"acme"})
    stalled = {"id": "t.acme.job_stalled.1", "severity": "warning", "opened_at": now, "rule": "job_stalled"}
    fake.states["acme"] = {"episodes": {"job_stalled:j-1": stalled}, "episode_seq": 1, "job_alerts_open": True}
    job_alerts.tick(now, [], set(), complete=False)
    assert fake.updated.get("acme", []) == []
    job_alerts.tick(now, [], set())
    assert [w.episode_id for w in fake.updated["acme"]] == ["t.acme.job_stalled.1"]
    assert fake.states["acme"]["job_alerts_open"] is False


def test_a_success_that_pushes_the_days_failure_rate_over_opens_it_counted_on_the_day_it_finished(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """2 failed of 4 is too few jobs; the 5th, a success, makes 2 of 5 = 40%: over 20%."""
    fake = FakeStores(monkeypatch)
    windows: list[tuple[datetime, datetime | None]] = []

    def ended_since(tenant: str, since: datetime, before: datetime | None = None) -> tuple[int, int]:
        windows.append((since, before))
        return 5, 2

    monkeypatch.setattr(store, "ended_since", ended_since)
    finished = datetime(2026, 3, 1, 23, 59, tzinfo=UTC)
    job = make_job("j-5", state=JobState.SUCCEEDED, started_at=finished, finished_at=finished)
    assert job_alerts.on_final(job, datetime(2026, 3, 2, 0, 1, tzinfo=UTC))
    assert windows == [(datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 3, 2, tzinfo=UTC))]
    [opened] = fake.updated["acme"]
    assert opened.fields["rule"] == "job_failure_rate" and opened.fields["state"] == "open"
    assert fake.states["acme"]["episodes"]["job_failure_rate"]["day"] == "2026-03-01"

    monkeypatch.setattr(store, "ended_since", lambda tenant, since, before=None: (5, 1))
    fake.updated.clear()
    assert job_alerts.on_final(job, datetime(2026, 3, 2, 0, 1, tzinfo=UTC))
    assert fake.updated == {}  # a success under the threshold reads no alert document
