"""forged_events: what a refused identity counts for, when the episode opens, whose it is, what it shows."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from shared.domain import forged_events as rules
from shared.domain.alerts import Alert, Severity
from shared.domain.identity import IdentityConfig
from shared.domain.notices import opened
from shared.domain.rejections import Code, Rejected
from shared.services import forged_events
from shared.store import agents as agent_store
from shared.store import config as config_store
from shared.store import episodes as episode_store

AT = datetime(2026, 12, 6, 9, 41, 7, tzinfo=UTC)
HOUR = datetime(2026, 12, 6, 9, tzinfo=UTC)


def forged(
    agent: str | None = "web-7", tenant: str | None = "acme", reason: str = "signature does not verify"
) -> Rejected:
    return Rejected(Code.BAD_SIGNATURE, reason, agent_id=agent, tenant=tenant)


# --- the pure rules -----------------------------------------------------------------------------


def test_scopes_are_per_claimed_agent_and_tenant_and_utc_hour() -> None:
    agent, tenant = rules.scopes(forged(), AT)
    assert agent == rules.Scope("a", "web-7", HOUR)
    assert tenant == rules.Scope("t", "acme", HOUR)
    assert agent is not None and agent.key == "forged_events.a.web-7.2026120609"
    assert agent.until == datetime(2026, 12, 6, 10, tzinfo=UTC)


def test_ill_formed_claims_are_not_counted_under_their_name() -> None:
    assert rules.scopes(forged(agent="<!channel>", tenant="Acme Corp"), AT) == (None, None)
    assert rules.scopes(forged(agent="web-7", tenant=None), AT)[1] is None


def test_the_episode_opens_past_the_threshold_not_at_it() -> None:
    assert not rules.crossed(10, 10)
    assert rules.crossed(11, 10)
    assert not rules.crossed(None, 10)


def test_an_agents_refusals_beyond_its_threshold_count_only_for_its_own_episode() -> None:
    assert rules.counts_for_tenant(10, 10, agent_has_episode=True)
    assert not rules.counts_for_tenant(11, 10, agent_has_episode=True)
    # An unknown agent has no episode: the tenant's count carries it.
    assert rules.counts_for_tenant(11, 10, agent_has_episode=False)
    # A counter write that failed: counted for the tenant rather than lost.
    assert rules.counts_for_tenant(None, 10, agent_has_episode=True)


def test_the_message_escapes_what_the_attacker_wrote() -> None:
    scope = rules.Scope("a", "web-7", HOUR)
    alert = rules.agent_alert(
        scope, tenant="acme", count=11, threshold=10, rejected=forged(reason="<!channel> & <http://x|click>"), at=AT
    )
    assert "<!channel>" not in alert.message and "<http" not in alert.message
    assert "&lt;!channel&gt; &amp; &lt;http://x|click&gt;" in alert.message
    notice = {
        "title": "Forged events",
        "severity": alert.severity.value,
        "tenant": alert.tenant,
        "agent_id": alert.agent_id,
        "summary": alert.message,
        "episode_id": alert.id,
        "created_at": AT,
    }
    text, blocks = opened(notice)
    assert "<!channel>" not in text and "<!channel>" not in str(blocks)


def test_a_long_reason_is_cut() -> None:
    alert = rules.agent_alert(
        rules.Scope("a", "web-7", HOUR),
        tenant="acme",
        count=11,
        threshold=10,
        rejected=forged(reason="x" * 5000),
        at=AT,
    )
    assert len(alert.message) < 1000


def test_agent_episode_warns_the_agents_real_tenant_and_resolves_with_the_hour() -> None:
    alert = rules.agent_alert(
        rules.Scope("a", "web-7", HOUR), tenant="acme", count=11, threshold=10, rejected=forged(tenant="evil"), at=AT
    )
    assert (alert.severity, alert.tenant, alert.agent_id, alert.kind) == (Severity.WARNING, "acme", "web-7", rules.RULE)
    assert alert.until == datetime(2026, 12, 6, 10, tzinfo=UTC)


def test_tenant_episode_is_critical_and_unknown_tenants_share_one_per_hour() -> None:
    known = rules.tenant_alert(
        rules.Scope("t", "acme", HOUR), known=True, count=11, threshold=10, rejected=forged(), at=AT
    )
    assert (known.severity, known.tenant, known.agent_id) == (Severity.CRITICAL, "acme", None)
    a = rules.tenant_alert(
        rules.Scope("t", "nope-1", HOUR), known=False, count=11, threshold=10, rejected=forged(), at=AT
    )
    b = rules.tenant_alert(
        rules.Scope("t", "nope-2", HOUR), known=False, count=11, threshold=10, rejected=forged(), at=AT
    )
    assert a.id == b.id == "forged_events.t._unknown.2026120609"
    assert a.tenant == rules.UNKNOWN_TENANT


# --- note(): counting and opening, with the store faked ---------------------------------------------


class Fleet:
    """Counters, agents and raised alerts in memory."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, agents: dict[str, str], threshold: int = 3) -> None:
        self.counts: dict[str, int] = {}
        self.raised: list[Alert] = []
        self.created: set[str] = set()
        self.reads = 0
        self.failing = False
        forged_events.forget()

        def increment(scope: rules.Scope) -> int | None:
            if self.failing:
                return None
            self.counts[scope.key] = self.counts.get(scope.key, 0) + 1
            return self.counts[scope.key]

        def get(agent_id: str) -> Any:
            self.reads += 1
            tenant = agents.get(agent_id)
            return None if tenant is None else type("R", (), {"tenant": tenant, "agent_id": agent_id})()

        def ids(tenant: str, liveness: Any = None, limit: int = 20) -> list[str]:
            self.reads += 1
            return [a for a, t in agents.items() if t == tenant][:limit]

        def raise_once(alert: Alert) -> bool:
            self.raised.append(alert)
            if alert.id in self.created:
                return False
            self.created.add(alert.id)
            return True

        identity = config_store.identity_defaults()
        monkeypatch.setattr(forged_events, "_increment", increment)
        monkeypatch.setattr(agent_store, "get", get)
        monkeypatch.setattr(agent_store, "ids", ids)
        monkeypatch.setattr(episode_store, "raise_once", raise_once)
        monkeypatch.setattr(
            config_store,
            "identity",
            lambda tenant: IdentityConfig.model_validate({**identity, "forged_events_per_hour": threshold}),
        )

    def opened(self) -> dict[str, Alert]:
        return {a.id: a for a in self.raised}


def test_a_flood_in_one_agents_name_opens_its_warning_once(monkeypatch: pytest.MonkeyPatch) -> None:
    fleet = Fleet(monkeypatch, {"web-7": "acme"})
    for _ in range(3):
        forged_events.note(forged(), AT)
    assert fleet.raised == []
    for _ in range(50):
        forged_events.note(forged(), AT)
    assert list(fleet.opened()) == ["forged_events.a.web-7.2026120609"]
    assert len(fleet.raised) == 1  # decided once per instance: no create attempt per event
    assert fleet.reads == 1
    assert fleet.counts["forged_events.a.web-7.2026120609"] == 53
    # The tenant counted the agent's first 3 only: one agent's trouble is not a tenant-wide one.
    assert fleet.counts["forged_events.t.acme.2026120609"] == 3


def test_refusals_spread_over_a_tenants_agents_open_its_critical_episode(monkeypatch: pytest.MonkeyPatch) -> None:
    fleet = Fleet(monkeypatch, {"web-1": "acme", "web-2": "acme"})
    for agent in ("web-1", "web-2"):
        for _ in range(2):
            forged_events.note(forged(agent=agent), AT)
    episode = fleet.opened()["forged_events.t.acme.2026120609"]
    assert (episode.severity, episode.tenant, episode.agent_id) == (Severity.CRITICAL, "acme", None)
    assert not any(a.agent_id for a in fleet.raised)


def test_an_unknown_claimed_agent_counts_for_its_tenant(monkeypatch: pytest.MonkeyPatch) -> None:
    fleet = Fleet(monkeypatch, {"web-1": "acme"})
    for _ in range(4):
        forged_events.note(forged(agent="ghost"), AT)
    assert list(fleet.opened()) == ["forged_events.t.acme.2026120609"]


def test_invented_tenants_share_the_deployments_hourly_episode(monkeypatch: pytest.MonkeyPatch) -> None:
    fleet = Fleet(monkeypatch, {})
    for n in range(5):
        for _ in range(4):
            forged_events.note(forged(agent=f"ghost-{n}", tenant=f"fake-{n}"), AT)
    assert set(fleet.opened()) == {"forged_events.t._unknown.2026120609"}
    assert len(fleet.created) == 1  # one Slack message an hour, however many names are invented


def test_the_next_hour_counts_again(monkeypatch: pytest.MonkeyPatch) -> None:
    fleet = Fleet(monkeypatch, {"web-7": "acme"})
    for at in (AT, AT.replace(hour=10)):
        for _ in range(4):
            forged_events.note(forged(), at)
    assert set(fleet.opened()) == {"forged_events.a.web-7.2026120609", "forged_events.a.web-7.2026120610"}


def test_failing_counters_never_fail_the_function(monkeypatch: pytest.MonkeyPatch) -> None:
    fleet = Fleet(monkeypatch, {"web-7": "acme"})
    fleet.failing = True
    for _ in range(20):
        forged_events.note(forged(), AT)
    assert fleet.raised == []


def test_an_event_claiming_no_tenant_uses_the_deployment_default(monkeypatch: pytest.MonkeyPatch) -> None:
    fleet = Fleet(monkeypatch, {"web-7": "acme"}, threshold=1000)
    for _ in range(11):  # the deployment default (10), not the (faked) tenant setting
        forged_events.note(forged(tenant=None), AT)
    assert list(fleet.opened()) == ["forged_events.a.web-7.2026120609"]
    assert fleet.opened()["forged_events.a.web-7.2026120609"].tenant == "acme"


def test_increment_reads_the_new_count_from_the_write_result(monkeypatch: pytest.MonkeyPatch) -> None:
    class Value:
        integer_value = 12

    class Result:
        transform_results = [Value()]

    class Ref:
        def __init__(self) -> None:
            self.fields: dict[str, Any] = {}

        def set(self, fields: dict[str, Any], merge: bool = False, **_: Any) -> Result:
            assert merge
            self.fields = fields
            return Result()

    ref = Ref()
    monkeypatch.setattr(forged_events, "counter_ref", lambda scope: ref)
    scope = rules.Scope("a", "web-7", HOUR)
    assert forged_events._increment(scope) == 12
    assert ref.fields["key"] == scope.key and ref.fields["expire_at"] > scope.until

    def boom(*_: Any, **__: Any) -> Any:
        raise RuntimeError("409 Too much contention on these documents")

    monkeypatch.setattr(ref, "set", boom)
    assert forged_events._increment(scope) is None


def test_only_refused_identities_are_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    fleet = Fleet(monkeypatch, {"web-7": "acme"})
    forged_events.note(Rejected(Code.SCHEMA_VIOLATION, "seq < 0", agent_id="web-7", tenant="acme"), AT)
    assert fleet.counts == {}
