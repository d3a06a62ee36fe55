"""The fleet watching itself through the real path: notices the fake Slack refuses (a bad bot token), the
minute job's tick (fleet-sweep) judging the pipeline, ``fleet_health`` episodes in Firestore listed by
``GET /v1/alerts`` to admin keys only, and resolved when the condition clears; a burst of rejected messages
over a low threshold opens one too."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fleet_agent.contracts import EventType
from google.cloud.firestore_v1.base_query import FieldFilter

from shared.domain import fleet_health as rules
from shared.domain.alerts import Alert, Severity
from shared.domain.rejections import Code
from shared.ml.serving import KINDS
from shared.platform import metering
from shared.services import fleet_health as service
from shared.store import episodes as episode_store
from shared.store import metrics_reads
from tests.integration.conftest import tick, wait_for
from tests.integration.helpers import make_key, publish_raw

pytestmark = pytest.mark.integration


def fleet_episodes(api: Any, kind: str, state: str = "open", key: str | None = None) -> list[dict[str, Any]]:
    reply = api.get("/v1/alerts", key=key, rule=rules.RULE, state=state, limit=100)
    assert reply.status_code == 200, reply.text
    return [row for row in reply.json()["items"] if (row.get("details") or {}).get("kind") == kind]


def _failed_since(firestore: Any, since: datetime) -> list[Any]:
    query = (
        firestore.collection("notifications")
        .where(filter=FieldFilter("state", "==", "failed"))
        .where(filter=FieldFilter("done_at", ">=", since))
    )
    return list(query.stream())


def test_notices_slack_refuses_open_a_critical_fleet_health_episode_for_admins_until_they_age_out(
    stack, publisher, firestore, api, slack
) -> None:
    tenant = f"t-{uuid.uuid4().hex[:10]}"
    viewer = make_key(stack, f"{tenant}-viewer", "viewer", tenant)
    at = datetime.now(UTC) - timedelta(minutes=1)
    slack.fail(error="invalid_auth", count=10_000)
    try:
        # Four alerts of the tenant, due now: the tick's flush posts them and Slack refuses the token.
        for i in range(4):
            alert = Alert(
                id=f"it-health.{tenant}.{i}",
                kind=f"it_health_{i}",
                severity=Severity.WARNING,
                tenant=tenant,
                agent_id=None,
                message=f"test alert {i}",
                at=at - timedelta(seconds=60),
                until=datetime.now(UTC) + timedelta(minutes=2),
            )
            assert episode_store.raise_once(alert)

        def refused() -> bool:
            notices = [episode_store.get_notice(f"it-health.{tenant}.{i}.open") or {} for i in range(4)]
            return all(n.get("state") == "failed" and n.get("error") == "invalid_auth" for n in notices)

        tick(publisher)
        wait_for(refused, timeout=60)
        # The same tick judged the pipeline after its flush (a later one at the latest).
        opened = wait_for(lambda: tick(publisher) or fleet_episodes(api, "slack_failing"), timeout=60, every=2)[0]
        assert opened["tenant"] == rules.TENANT and opened["rule"] == rules.RULE and opened["agent_id"] is None
        assert opened["severity"] == "critical" and "bot token is refused (invalid_auth)" in opened["message"]
        assert opened["details"]["count"] >= 4 and "invalid_auth" in opened["details"]["errors"]
        assert api.get(f"/v1/alerts/{opened['id']}").status_code == 200
        # A tenant's key sees neither the list entry nor the episode itself.
        assert fleet_episodes(api, "slack_failing", key=viewer) == []
        assert api.get(f"/v1/alerts/{opened['id']}", key=viewer).status_code == 404
        assert api.get("/v1/alerts", key=viewer, tenant=rules.TENANT).status_code in (400, 403)
    finally:
        slack.fail(count=0)
    # The refusals leave the last hour (aged here, as an hour would): the next tick resolves the episode, and
    # later tests start from a Slack that is healthy again.
    for doc in _failed_since(firestore, datetime.now(UTC) - timedelta(hours=1)):
        doc.reference.update({"done_at": datetime.now(UTC) - timedelta(hours=2)})
    resolved = wait_for(
        lambda: (
            tick(publisher) or [r for r in fleet_episodes(api, "slack_failing", "resolved") if r["id"] == opened["id"]]
        ),
        timeout=60,
        every=2,
    )[0]
    assert "back to normal" in (resolved["resolution"] or "")
    assert fleet_episodes(api, "slack_failing") == []


def test_a_burst_of_rejected_messages_over_the_threshold_opens_a_fleet_health_episode(publisher, api) -> None:
    codes = [c.value for c in Code]

    def rejected() -> int:
        counts = metrics_reads.rejections_since(codes, datetime.now(UTC) - timedelta(hours=1))
        return sum(n for code, n in counts.items() if code != "delivery_exhausted")

    before = rejected()
    attributes = {"agent_id": f"it-{uuid.uuid4().hex[:12]}", "event_type": "heartbeat", "schema_version": "1"}
    for _ in range(3):
        publish_raw(publisher, EventType.HEARTBEAT, b"{not json", attributes)
    wait_for(lambda: rejected() >= before + 3, timeout=60)
    # A threshold the burst passes (the deployment's default, 1000 an hour, stays for the other kinds).
    low = dataclasses.replace(service.thresholds(), rejections_per_hour=before + 2)
    out = service.run(datetime.now(UTC), low)
    assert "rejections" in out["unhealthy"], out
    opened = wait_for(lambda: fleet_episodes(api, "rejections"))[0]
    assert opened["severity"] == "warning" and opened["details"]["threshold"] == before + 2
    assert opened["details"]["count"] >= before + 3 and opened["details"]["by_code"]["not_json"] >= 3
    # With the threshold back where it was, the next tick finds the rejections normal and resolves it.
    tick(publisher)
    wait_for(lambda: [r for r in fleet_episodes(api, "rejections", "resolved") if r["id"] == opened["id"]], timeout=60)
    assert fleet_episodes(api, "rejections") == []


def test_a_healthy_tick_reads_about_thirty_documents_whatever_the_fleet(firestore) -> None:
    """The reads docs/alerting.md gives per tick: one count per rejection code, the failed notices (at least
    1), two outbox counts, the model pointers, the ``_fleet`` alert document (and the deployment's alerting
    settings, unless cached)."""
    off = dataclasses.replace(service.thresholds(), rejections_per_hour=10**9, dead_letters_per_hour=10**9)
    with metering.metered() as meter:
        service.run(datetime.now(UTC), off)
    failed = len(_failed_since(firestore, datetime.now(UTC) - timedelta(hours=1)))
    expected = len(Code) + max(1, failed) + 2 + len(KINDS) + 1
    assert expected <= meter.reads <= expected + 1, meter.reads
    print(f"fleet_health tick: {meter.reads} reads, {meter.writes} writes")  # the figure in the report
