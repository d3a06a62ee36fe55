"""The fleet watching itself through the real path, the two kinds tests/integration/test_fleet_health.py
does not drive: an outbox backing up (more notices due than a tick's flush takes, while the fake Slack
rate-limits every call) and a model in service whose bytes do not load on the heartbeat function.
Each is judged by the minute job's tick (fleet-sweep, the deployment's default thresholds), opens a
``fleet_health`` episode listed by ``GET /v1/alerts`` to admin keys, and resolves when the cause is gone."""

from __future__ import annotations

import hashlib
import re
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from shared.domain import fleet_health as rules
from shared.domain.alerts import Alert, Severity
from shared.services import fleet_health as service
from shared.services import notifier
from shared.store import episodes as episode_store
from shared.store import model_blobs
from shared.store import models as registry
from tests.integration.conftest import tick, wait_for
from tests.integration.helpers import agent_doc, heartbeat, publish, registration

pytestmark = pytest.mark.integration

#: Notices put in the outbox: more than one flush claims, so some stay behind, late.
BACKLOG = notifier.BATCH + 30
#: The model kind made unloadable (the heartbeat function loads it on every heartbeat it scores).
KIND = "failure"


def fleet_episodes(api: Any, kind: str, state: str = "open") -> list[dict[str, Any]]:
    reply = api.get("/v1/alerts", rule=rules.RULE, state=state, limit=100)
    assert reply.status_code == 200, reply.text
    return [row for row in reply.json()["items"] if (row.get("details") or {}).get("kind") == kind]


def _resolved(api: Any, kind: str, episode_id: str) -> list[dict[str, Any]]:
    return [row for row in fleet_episodes(api, kind, "resolved") if row["id"] == episode_id]


def _none_open(publisher: Any, api: Any, kind: str) -> None:
    """Tick until no episode of ``kind`` is open (another test's cause gone, its episode not yet resolved)."""
    wait_for(lambda: not fleet_episodes(api, kind) or tick(publisher), timeout=40, every=2)


def _notices(ids: list[str]) -> list[dict[str, Any]]:
    return [n for n in map(episode_store.get_notice, ids) if n is not None]


def test_an_outbox_backed_up_past_the_late_delay_opens_a_fleet_health_episode_until_it_drains(
    publisher, firestore, api, slack
) -> None:
    """Alerts raised half an hour ago (their notices due long since: the minute job was behind) while Slack
    rate-limits every call: the tick's flush claims one batch and defers it, the rest stay pending past
    ``FLEET_HEALTH_OUTBOX_LATE_S`` (600 s), and the same tick's judgement opens ``outbox_backlog``. Slack
    back, the next ticks send them and the episode resolves."""
    late_after = service.thresholds().outbox_late_s
    assert late_after > 0
    _none_open(publisher, api, "outbox_backlog")
    tenant = f"t-{uuid.uuid4().hex[:10]}"
    at = datetime.now(UTC) - timedelta(seconds=late_after * 3)
    until = datetime.now(UTC) + timedelta(minutes=10)  # not resolved by their window while the test runs
    alerts = [
        Alert(
            id=f"it-backlog.{tenant}.{i}",
            kind="it_backlog",
            severity=Severity.WARNING,
            tenant=tenant,
            agent_id=f"agent-{i}",
            message=f"backlog test alert {i}",
            at=at,
            until=until,
        )
        for i in range(BACKLOG)
    ]
    ids = [f"{a.id}.open" for a in alerts]
    try:
        _back_up_and_drain(publisher, api, slack, alerts, ids, tenant, late_after)
    finally:
        # These test alerts go (rather than 330 resolutions in a later test's tick).
        for lo in range(0, BACKLOG, 200):
            batch = firestore.batch()
            for alert in alerts[lo : lo + 200]:
                batch.delete(firestore.collection(episode_store.EPISODES).document(alert.id))
                batch.delete(firestore.collection(episode_store.NOTIFICATIONS).document(f"{alert.id}.open"))
            batch.commit()


def _back_up_and_drain(
    publisher: Any, api: Any, slack: Any, alerts: list[Alert], ids: list[str], tenant: str, late_after: int
) -> None:
    slack.fail(status=429, retry_after=1, count=10_000)
    try:
        with ThreadPoolExecutor(8) as pool:
            assert all(pool.map(episode_store.raise_once, alerts))
        due = {n["due_at"] for n in _notices(ids)}
        assert len(_notices(ids)) == BACKLOG and max(due) <= datetime.now(UTC) - timedelta(seconds=late_after)
        # One tick (not one per poll: concurrent flushes would take a batch each).
        tick(publisher, "liveness-sweep")
        opened = wait_for(lambda: fleet_episodes(api, "outbox_backlog"), timeout=45, every=1)[0]
        assert opened["tenant"] == rules.TENANT and opened["rule"] == rules.RULE and opened["agent_id"] is None
        assert opened["severity"] == "high" and "The Slack outbox is backing up" in opened["message"]
        assert opened["details"]["late_after_s"] == late_after
        # A tick still in flight from before (``_none_open`` ticks every 2 s) may flush beside this one and hold
        # a batch as ``sending`` while the judgement counts: the late notices are pending ones, at least one.
        assert opened["details"]["pending"] >= opened["details"]["late"] >= 1, opened["details"]
        # The flushes took a batch each and put it back (rate limited), due later: all pending again, the ones
        # tried once deferred, none posted.
        notices = wait_for(lambda: (n := _notices(ids)) and all(x["state"] == "pending" for x in n) and n, timeout=30)
        deferred = [n for n in notices if int(n.get("attempts") or 0) >= 1]
        assert len(notices) == BACKLOG and len(deferred) >= 1, len(deferred)
        assert not slack.about(f"agents of {tenant}", "chat.postMessage")
    finally:
        slack.fail(count=0)
    # Slack takes them again: the ticks send the backlog (one grouped message a batch) and the first tick that
    # finds nothing late resolves the episode.
    found = wait_for(lambda: tick(publisher) or _resolved(api, "outbox_backlog", opened["id"]), timeout=50, every=3)
    assert "outbox_backlog: back to normal" in (found[0]["resolution"] or "")
    assert fleet_episodes(api, "outbox_backlog") == []
    wait_for(lambda: tick(publisher) or all(n["state"] == "sent" for n in _notices(ids)), timeout=40, every=3)
    # Each sent once, in grouped messages ("<title>: <n> agents of <tenant> ...").
    posts = slack.about(f"agents of {tenant}", "chat.postMessage")
    counts = [re.search(rf": (\d+) agents of {re.escape(tenant)} ", p["params"]["text"]) for p in posts]
    assert all(counts) and sum(int(m.group(1)) for m in counts if m) == BACKLOG, [p["params"]["text"] for p in posts]


def test_a_model_in_service_that_fails_to_load_opens_a_fleet_health_episode(publisher, api, firestore) -> None:
    """A version whose bytes are not a model is promoted (stored and hashed as a real one): the heartbeat
    function fails to load it while scoring a heartbeat, records the failure on the registry pointer, and
    the minute job opens ``model_load`` naming the version and why. Taken out of service again, the next tick
    resolves it."""
    _none_open(publisher, api, "model_load")  # one episode per kind: a stale one would not name this version
    pointer_doc = firestore.collection("models").document(KIND)
    before = pointer_doc.get().to_dict() or {}
    bad = b"not a model: truncated upload"
    version = f"{KIND}-corrupt-{uuid.uuid4().hex[:8]}"
    uri = model_blobs.put(KIND, version, bad)
    registry.record(KIND, version, {"uri": uri, "reason": "corrupt bytes, by a test", "promoted": False})
    promoted_at = datetime.now(UTC)
    assert registry.promote(
        KIND, version, uri, hashlib.sha256(bad).hexdigest(), expected=before.get("current"), at=promoted_at
    )
    agent_id = f"it-{uuid.uuid4().hex[:12]}"
    try:
        publish(publisher, registration(agent_id))
        wait_for(lambda: agent_doc(firestore, agent_id))
        sent = iter(range(1, 1000))

        def recorded() -> dict[str, Any] | None:
            # Heartbeats until one is scored after the function's model refresh (FLEET_MODEL_REFRESH_S).
            seq = next(sent)
            publish(publisher, heartbeat(agent_id, seq))
            wait_for(lambda: (d := agent_doc(firestore, agent_id)) and d.get("last_seq") == seq)
            failure = (pointer_doc.get().to_dict() or {}).get("load_failure") or {}
            return failure if failure.get("version") == version else None

        failure = wait_for(recorded, timeout=30, every=0.5)
        assert failure["at"] >= promoted_at and failure["reason"].startswith("unloadable ("), failure
        # The heartbeat was still handled: the instance kept serving what it had.
        assert (agent_doc(firestore, agent_id) or {}).get("ml", {}).get("failure_model") != version
        opened = wait_for(lambda: tick(publisher) or fleet_episodes(api, "model_load"), timeout=40, every=2)[0]
        assert opened["tenant"] == rules.TENANT and opened["severity"] == "warning"
        assert opened["details"]["models"][KIND] == {"version": version, "reason": failure["reason"]}
        assert f"{KIND} {version}: unloadable" in opened["message"]
    finally:
        # Out of service again (the version that was, or none): other tests are not scored by it.
        pointer_doc.set(
            {
                "current": before.get("current"),
                "current_uri": before.get("current_uri"),
                "current_sha256": before.get("current_sha256"),
            },
            merge=True,
        )
    found = wait_for(lambda: tick(publisher) or _resolved(api, "model_load", opened["id"]), timeout=40, every=2)
    assert "model_load: back to normal" in (found[0]["resolution"] or "")
    assert fleet_episodes(api, "model_load") == []
