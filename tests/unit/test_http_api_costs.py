"""The cost routes of the REST API (usage, budgets, protection, prices, pause/resume, alerts), with fakes.

The store functions are monkeypatched; a small fake Firestore client records the tenant and audit
writes the API makes itself. ``accounting.reconcile`` runs for real on the fakes, so a budget PUT is
checked down to the hold it lifts or places and the command it sends.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from fleet_agent.contracts import Command, CommandType
from google.api_core.exceptions import ServiceUnavailable

from shared.api import core, router
from shared.domain import holds
from shared.domain.agent_record import AgentRecord, Plan
from shared.domain.api_keys import Role
from shared.domain.lifecycle import State
from shared.domain.periods import Period, window, windows
from shared.domain.pricing import Price
from shared.domain.usage import Totals, month_field
from shared.platform import metering, settings
from shared.services import accounting, agent_commands
from shared.store import agents as agent_store
from shared.store import api_keys, config, db
from shared.store import episodes as episode_store
from shared.store import usage as usage_store
from shared.store.api_keys import Principal
from tests.unit.test_http_api import APP, Reply, assert_error, record

NOW = datetime(2026, 11, 21, 10, 30, tzinfo=UTC)
TOKENS = {
    role_tenant: f"afm_{i:016x}_" + chr(ord("a") + i) * 43
    for i, role_tenant in enumerate(
        ["admin", "viewer", "operator", "acme-admin", "acme-viewer", "acme-operator"], start=1
    )
}
PRINCIPALS = {
    TOKENS["admin"]: Principal("01", "root", Role.ADMIN, None),
    TOKENS["viewer"]: Principal("02", "dash", Role.VIEWER, None),
    TOKENS["operator"]: Principal("03", "oncall", Role.OPERATOR, None),
    TOKENS["acme-admin"]: Principal("04", "acme-root", Role.ADMIN, "acme"),
    TOKENS["acme-viewer"]: Principal("05", "acme-dash", Role.VIEWER, "acme"),
    TOKENS["acme-operator"]: Principal("06", "acme-oncall", Role.OPERATOR, "acme"),
}
REQUEST_ID = "0123456789abcdef0123456789abcdef"
USD = 1_000_000_000  # nano-dollars per dollar


def send(
    path: str,
    *,
    who: str = "admin",
    method: str = "GET",
    body: Any = None,
    raw: bytes | None = None,
    **query: Any,
) -> Reply:
    headers = {"Authorization": f"Bearer {TOKENS[who]}", "X-Cloud-Trace-Context": f"{REQUEST_ID}/1"}
    import json

    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    with APP.test_request_context(
        path, method=method, headers=headers, query_string=query, data=data, content_type="application/json"
    ):
        import flask

        return Reply(router.handle(flask.request))


# --- fakes -------------------------------------------------------------------------------------


class FakeDoc:
    def __init__(self, data: dict[str, Any] | None) -> None:
        self.exists = data is not None
        self._data = data

    def to_dict(self) -> dict[str, Any] | None:
        return dict(self._data) if self._data is not None else None


class FakeRef:
    def __init__(self, client: FakeFirestore, path: str) -> None:
        self.client = client
        self.path = path

    def collection(self, name: str) -> FakeRef:
        return FakeRef(self.client, f"{self.path}/{name}")

    def document(self, doc_id: str) -> FakeRef:
        assert "/" not in doc_id, f"not a Firestore document id: {doc_id}"
        return FakeRef(self.client, f"{self.path}/{doc_id}")

    def get(self, **options: Any) -> FakeDoc:
        return FakeDoc(self.client.docs.get(self.path))

    def set(self, data: dict[str, Any], merge: Any = False, **options: Any) -> None:
        self.client.apply(self.path, data, merge)

    def create(self, data: dict[str, Any], **options: Any) -> None:
        from google.api_core.exceptions import AlreadyExists

        if self.path in self.client.docs:
            raise AlreadyExists(self.path)
        self.client.apply(self.path, data, False)


class FakeBatch:
    def __init__(self, client: FakeFirestore) -> None:
        self.client = client
        self.ops: list[tuple[str, dict[str, Any], Any]] = []

    def set(self, ref: FakeRef, data: dict[str, Any], merge: Any = False) -> None:
        self.ops.append((ref.path, data, merge))

    def commit(self, **options: Any) -> list[Any]:
        self.client.commits.append(self.ops)
        for path, data, merge in self.ops:
            self.client.apply(path, data, merge)
        return []


class FakeFirestore:
    """Documents by path; ``set`` with merge=True merges maps deeply, as Firestore does."""

    def __init__(self) -> None:
        self.docs: dict[str, dict[str, Any]] = {}
        self.commits: list[list[tuple[str, dict[str, Any], Any]]] = []

    def collection(self, name: str) -> FakeRef:
        return FakeRef(self, name)

    def batch(self) -> FakeBatch:
        return FakeBatch(self)

    def apply(self, path: str, data: dict[str, Any], merge: Any) -> None:
        if merge is True:
            raise AssertionError("merge=True would merge a replaced map with the old one")
        if isinstance(merge, list):
            doc = self.docs.setdefault(path, {})
            for name in merge:
                doc[name] = data[name]
        else:
            self.docs[path] = dict(data)


@dataclass
class World:
    agents: dict[str, AgentRecord]
    firestore: FakeFirestore = field(default_factory=FakeFirestore)
    usage: dict[str, dict[Period, Totals]] = field(default_factory=dict)
    tenant_usage: dict[str, dict[Period, Totals]] = field(default_factory=dict)
    published: list[Command] = field(default_factory=list)
    audit: list[Any] = field(default_factory=list)
    alerts_raised: list[Any] = field(default_factory=list)
    alert_queries: list[dict[str, Any]] = field(default_factory=list)
    alert_rows: list[dict[str, Any]] = field(default_factory=list)
    prices_set: list[tuple[str | None, str, Price]] = field(default_factory=list)
    shards: list[int] = field(default_factory=list)
    updates: list[str] = field(default_factory=list)

    def tenant_doc(self, tenant: str) -> dict[str, Any]:
        return self.firestore.docs.get(f"tenants/{tenant}", {})


@pytest.fixture
def world(monkeypatch: pytest.MonkeyPatch) -> World:
    w = World(agents={a.agent_id: a for a in (record("agent-a1", "acme"), record("agent-g1", "globex"))})

    def read(agent_id: str) -> agent_store.Snapshot | None:
        metering.count(reads=1)
        found = w.agents.get(agent_id)
        return agent_store.Snapshot(found, None) if found else None

    def get(agent_id: str) -> AgentRecord | None:
        snap = read(agent_id)
        return snap.record if snap else None

    def update(agent_id: str, decide: Any) -> Plan:
        plan: Plan = decide(w.agents.get(agent_id))
        if plan.changes:
            w.agents[agent_id] = w.agents[agent_id].model_copy(update=plan.changes)
            w.updates.append(agent_id)
        w.audit.extend(plan.audit)
        return plan

    def month(totals: dict[Period, Totals]) -> dict[str, Totals]:
        """The month document's counters holding these periods' totals (``m``, ``dDD``, ``hDDHH``)."""
        return {month_field(p, win): totals[p] for p, win in windows(NOW).items() if p in totals}

    def periods(totals: dict[Period, Totals]) -> Any:
        return {p: (win, totals.get(p, Totals())) for p, win in windows(NOW).items()}

    def agent_periods(agent_id: str, now: datetime) -> Any:
        assert now == NOW
        return periods(w.usage.get(agent_id, {}))

    def agent_month(agent_id: str, month_key: str) -> Any:
        assert month_key == window(Period.MONTH, NOW).key
        return {name: totals.as_dict() for name, totals in month(w.usage.get(agent_id, {})).items()}

    def tenant_month(tenant: str, month_key: str, shards: int, skip: Any = ()) -> Any:
        assert month_key == window(Period.MONTH, NOW).key
        w.shards.append(shards)
        return month(w.tenant_usage.get(tenant, {}))

    def list_episodes(
        *, state: Any, tenant: str | None, agent_id: str | None, rule: Any, severity: Any, limit: int
    ) -> list[dict[str, Any]]:
        w.alert_queries.append({"tenant": tenant, "agent_id": agent_id, "limit": limit})
        assert state is None and rule is None and severity is None
        rows = [
            r
            for r in w.alert_rows
            if (tenant is None or r["tenant"] == tenant) and (agent_id is None or r["agent_id"] == agent_id)
        ]
        return rows[:limit]

    def raise_once(alert: Any) -> bool:
        w.alerts_raised.append(alert)
        return True

    def read_prices() -> dict[str, Price]:
        return {
            "gpt-4o": Price(Decimal("0.0000025"), Decimal("0.00001")),
            "openai/gpt-4o-mini": Price(Decimal("1.5E-7"), Decimal("6E-7")),
        }

    monkeypatch.setattr(api_keys, "verify", PRINCIPALS.get)
    monkeypatch.setattr(agent_store, "read", read)
    monkeypatch.setattr(agent_store, "get", get)
    monkeypatch.setattr(agent_store, "update", update)
    monkeypatch.setattr(usage_store, "agent_periods", agent_periods)
    monkeypatch.setattr(usage_store, "agent_month", agent_month)
    monkeypatch.setattr(usage_store, "tenant_month", tenant_month)
    monkeypatch.setattr(episode_store, "list_episodes", list_episodes)
    monkeypatch.setattr(episode_store, "raise_once", raise_once)
    monkeypatch.setattr(agent_commands, "publish", lambda sent: w.published.extend(sent) or [])
    monkeypatch.setattr(db, "client", lambda: w.firestore)
    monkeypatch.setattr(config, "read_prices", read_prices)
    monkeypatch.setattr(config, "set_price", lambda model, price: w.prices_set.append((None, model, price)))
    monkeypatch.setattr(
        config, "set_tenant_price", lambda tenant, model, price: w.prices_set.append((tenant, model, price))
    )
    monkeypatch.setattr(core, "now", lambda: NOW)
    return w


def spent(usd: int, tokens: int = 0, calls: int = 0, failures: int = 0) -> Totals:
    return Totals(usd_nanos=usd * USD, tokens=tokens, input_tokens=tokens, calls=calls, failures=failures)


# --- usage -------------------------------------------------------------------------------------


def test_agent_usage_shows_each_period_with_budget_holds_and_source(world: World) -> None:
    world.agents["agent-a1"] = world.agents["agent-a1"].model_copy(
        update={
            "budget": {"daily_usd": "10", "monthly_tokens": 1_000_000, "soft_ratio": 0.8, "alert_at": [0.5]},
            "budget_source": "api",
            "holds": {
                "breaker": {
                    "command": "breaker_open",
                    "command_id": "breaker.0123",
                    "reason": "5 calls failed in a row",
                    "issued_at": NOW - timedelta(minutes=1),
                    "until": NOW + timedelta(minutes=1),
                    "actor": "system:breaker",
                    "cooldown_s": 60,
                }
            },
        }
    )
    world.usage["agent-a1"] = {
        Period.HOUR: spent(1, tokens=1000, calls=4, failures=1),
        Period.DAY: spent(3, tokens=5000, calls=10),
        Period.MONTH: spent(7, tokens=20000, calls=40),
    }
    reply = send("/v1/agents/agent-a1/usage", who="acme-viewer")
    assert reply.status == 200, reply.text
    body = reply.json
    assert body["agent_id"] == "agent-a1" and body["tenant"] == "acme" and body["budget_source"] == "api"
    assert set(body["periods"]) == {"hour", "day", "month"}
    hour, day, month = body["periods"]["hour"], body["periods"]["day"], body["periods"]["month"]
    assert hour["period"] == "2026-11-21T10" and hour["resets_at"] == "2026-11-21T11:00:00Z"
    assert hour["spend_usd"] == "1" and hour["calls"] == 4 and hour["success_rate"] == 0.75
    assert hour["budget_usd"] is None and hour["remaining_usd"] is None
    assert day["budget_usd"] == "10" and day["remaining_usd"] == "7" and day["resets_at"] == "2026-11-22T00:00:00Z"
    assert month["budget_tokens"] == 1_000_000 and month["remaining_tokens"] == 980_000
    assert month["resets_at"] == "2026-12-01T00:00:00Z"
    assert body["budget"]["daily_usd"] == "10"
    assert body["holds"] == {
        "breaker": {
            "command": "breaker_open",
            "command_id": "breaker.0123",
            "reason": "5 calls failed in a row",
            "issued_at": "2026-11-21T10:29:00Z",
            "until": "2026-11-21T10:31:00Z",
        }
    }


def test_agent_usage_of_another_tenants_agent_is_404(world: World) -> None:
    assert_error(send("/v1/agents/agent-g1/usage", who="acme-viewer"), 404, "not_found")
    assert_error(send("/v1/agents/agent-zz/usage"), 404, "not_found")
    assert send("/v1/agents/agent-g1/usage", who="viewer").status == 200


def test_tenant_usage_sums_every_shard_against_the_tenants_budget(world: World) -> None:
    world.firestore.docs["tenants/acme"] = {"tenant": "acme", "budget": {"monthly_usd": "100"}, "budget_source": "api"}
    world.tenant_usage["acme"] = {Period.MONTH: spent(40, calls=9)}
    reply = send("/v1/tenants/acme/usage", who="acme-viewer")
    assert reply.status == 200, reply.text
    assert reply.json["tenant"] == "acme"
    month = reply.json["periods"]["month"]
    assert month["spend_usd"] == "40" and month["budget_usd"] == "100" and month["remaining_usd"] == "60"
    assert world.shards == [settings.get().tenant_shards]
    assert_error(send("/v1/tenants/globex/usage", who="acme-viewer"), 404, "not_found")
    assert_error(send("/v1/tenants/Not_A_Tenant/usage"), 404, "not_found")


def test_transient_errors_on_cost_routes_are_503(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    def down(*args: Any, **kwargs: Any) -> None:
        raise ServiceUnavailable("firestore is down")

    monkeypatch.setattr(usage_store, "agent_month", down)
    reply = send("/v1/agents/agent-a1/usage")
    assert_error(reply, 503, "unavailable")
    assert reply.headers["Retry-After"] == "1"


# --- agent budgets -----------------------------------------------------------------------------


def test_get_agent_budget(world: World) -> None:
    world.agents["agent-a1"] = world.agents["agent-a1"].model_copy(
        update={"budget": {"hourly_usd": "2.5"}, "budget_source": "registration"}
    )
    reply = send("/v1/agents/agent-a1/budget", who="acme-viewer")
    assert reply.status == 200
    assert reply.json["budget"]["hourly_usd"] == "2.5" and reply.json["budget_source"] == "registration"
    assert reply.json["holds"] == {}
    assert_error(send("/v1/agents/agent-g1/budget", who="acme-viewer"), 404, "not_found")


def test_put_agent_budget_replaces_it_and_audits(world: World) -> None:
    world.agents["agent-a1"] = world.agents["agent-a1"].model_copy(
        update={"budget": {"monthly_usd": "500"}, "budget_source": "registration"}
    )
    reply = send(
        "/v1/agents/agent-a1/budget",
        method="PUT",
        body={"daily_usd": "25.50", "hourly_tokens": 100_000, "soft_ratio": 0.9},
    )
    assert reply.status == 200, reply.text
    stored = world.agents["agent-a1"]
    assert stored.budget_source == "api"
    assert stored.budget == {
        "daily_usd": "25.50",
        "hourly_tokens": 100000,
        "soft_ratio": 0.9,
        "alert_at": [0.5, 0.8, 1.0],
    }
    assert "monthly_usd" not in stored.budget  # replaced, not merged
    assert reply.json["budget"]["daily_usd"] == "25.50" and reply.json["budget_source"] == "api"
    [entry] = world.audit
    assert entry.action == "agent.budget.set" and entry.actor == "api:root" and entry.target == "agent-a1"
    assert entry.tenant == "acme" and entry.details["previous"] == {"monthly_usd": "500"}
    assert REQUEST_ID in entry.id
    # Nothing reached: no hold, nothing sent.
    assert world.published == [] and stored.holds == {}


def test_raising_the_budget_lifts_the_budget_hold_at_once(world: World) -> None:
    world.usage["agent-a1"] = {Period.DAY: spent(5), Period.MONTH: spent(5)}
    send("/v1/agents/agent-a1/budget", method="PUT", body={"daily_usd": 2})
    held = world.agents["agent-a1"]
    assert "budget" in held.holds and held.status is State.SUSPENDED
    [exhausted] = world.published
    assert exhausted.command is CommandType.BUDGET_EXHAUSTED and exhausted.until == datetime(2026, 11, 22, tzinfo=UTC)

    reply = send("/v1/agents/agent-a1/budget", method="PUT", body={"daily_usd": 10})
    assert reply.status == 200, reply.text
    assert reply.json["holds"] == {} and reply.json["budget"]["daily_usd"] == "10"
    lifted = world.agents["agent-a1"]
    assert lifted.holds == {} and lifted.status is State.ACTIVE
    assert [c.command for c in world.published] == [CommandType.BUDGET_EXHAUSTED, CommandType.BUDGET_RESTORED]


def test_lowering_the_budget_places_the_hold_and_shows_it(world: World) -> None:
    world.usage["agent-a1"] = {Period.HOUR: spent(3), Period.DAY: spent(3), Period.MONTH: spent(3)}
    reply = send("/v1/agents/agent-a1/budget", method="PUT", body={"hourly_usd": "1"}, who="acme-admin")
    assert reply.status == 200, reply.text
    assert reply.json["holds"]["budget"]["command"] == "budget_exhausted"
    assert reply.json["holds"]["budget"]["until"] == "2026-11-21T11:00:00Z"
    assert world.agents["agent-a1"].status is State.SUSPENDED
    assert [c.command for c in world.published] == [CommandType.BUDGET_EXHAUSTED]


def test_deleting_the_budget_lifts_the_hold_and_keeps_the_registrations_away(world: World) -> None:
    world.usage["agent-a1"] = {Period.HOUR: spent(3), Period.DAY: spent(3), Period.MONTH: spent(3)}
    assert send("/v1/agents/agent-a1/budget", method="PUT", body={"hourly_usd": "1"}, who="acme-admin").status == 200
    reply = send("/v1/agents/agent-a1/budget", method="DELETE", who="acme-admin")
    assert reply.status == 200, reply.text
    assert reply.json["budget"] is None and reply.json["budget_source"] == "api" and reply.json["holds"] == {}
    assert world.agents["agent-a1"].status is State.ACTIVE
    assert [c.command for c in world.published] == [CommandType.BUDGET_EXHAUSTED, CommandType.BUDGET_RESTORED]
    assert "agent.budget.delete" in [e.action for e in world.audit]
    assert_error(send("/v1/agents/agent-a1/budget", method="DELETE", who="acme-viewer"), 403, "forbidden")


@pytest.mark.parametrize(
    ("body", "where"),
    [
        ({"daily_usd": -5}, "daily_usd"),
        ({"daily_usd": "0"}, "daily_usd"),
        ({"daily_tokens": -1}, "daily_tokens"),
        ({"daily_usd": 10, "soft_daily_usd": 20}, "soft_daily_usd"),
        ({"daily_usd": 10, "weekly_usd": 50}, "weekly_usd"),
        ({"daily_usd": 10, "soft_ratio": 1.5}, "soft_ratio"),
        ({}, "at least one"),
        ({"soft_ratio": 0.5}, "at least one"),
        ({"daily_usd": "ten"}, "daily_usd"),
    ],
)
def test_a_bad_budget_is_400_listing_the_errors(world: World, body: dict[str, Any], where: str) -> None:
    reply = send("/v1/agents/agent-a1/budget", method="PUT", body=body)
    assert reply.status == 400, reply.text
    error = reply.json["error"]
    assert error["code"] == "bad_request" and where in error["reason"]
    assert error["details"] and all({"loc", "msg", "type"} <= set(d) for d in error["details"])
    assert world.updates == [] and world.audit == []
    reply = send("/v1/tenants/acme/budget", method="PUT", body=body)
    assert reply.status == 400 and where in reply.json["error"]["reason"]
    assert world.firestore.commits == []


@pytest.mark.parametrize("raw", [b"{not json", b"[1, 2]", b'"daily"', b'{"daily_usd": NaN}', b"\xff\xfe\x00"])
def test_a_body_that_is_not_a_json_object_is_400(world: World, raw: bytes) -> None:
    reply = send("/v1/agents/agent-a1/budget", method="PUT", raw=raw)
    assert_error(reply, 400, "bad_request")
    assert world.updates == []


@pytest.mark.parametrize("who", ["viewer", "acme-viewer", "operator"])
def test_only_admins_set_budgets(world: World, who: str) -> None:
    assert_error(send("/v1/agents/agent-a1/budget", method="PUT", body={"daily_usd": 1}, who=who), 403, "forbidden")
    assert_error(send("/v1/tenants/acme/budget", method="PUT", body={"daily_usd": 1}, who=who), 403, "forbidden")
    assert world.updates == [] and world.firestore.commits == []


def test_a_tenant_admin_changes_only_its_own_tenant(world: World) -> None:
    assert_error(
        send("/v1/agents/agent-g1/budget", method="PUT", body={"daily_usd": 1}, who="acme-admin"), 404, "not_found"
    )
    assert_error(
        send("/v1/tenants/globex/budget", method="PUT", body={"daily_usd": 1}, who="acme-admin"), 404, "not_found"
    )
    assert_error(send("/v1/agents/agent-g1/protection", method="PUT", body={}, who="acme-admin"), 404, "not_found")
    assert_error(send("/v1/tenants/globex/protection", method="PUT", body={}, who="acme-admin"), 404, "not_found")
    assert world.updates == [] and world.firestore.commits == []
    assert send("/v1/agents/agent-a1/budget", method="PUT", body={"daily_usd": 1}, who="acme-admin").status == 200


# --- tenant budgets ----------------------------------------------------------------------------


def test_put_tenant_budget_replaces_the_field_and_audits_in_one_commit(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    reconciled: list[str] = []
    monkeypatch.setattr(accounting, "reconcile_tenant", lambda tenant, **kw: reconciled.append(tenant) or [])
    world.firestore.docs["tenants/acme"] = {
        "tenant": "acme",
        "budget": {"monthly_usd": "1000", "daily_usd": "50"},
        "budget_source": "api",
        "prices": {"gpt-4o": {"input_usd": "0.000001", "output_usd": "0.000004"}},
    }
    config.cache.get("tenant:acme", lambda: "stale", 3600)
    reply = send("/v1/tenants/acme/budget", method="PUT", body={"monthly_usd": "2000"}, who="acme-admin")
    assert reply.status == 200, reply.text
    assert reply.json == {
        "tenant": "acme",
        "budget": {**reply.json["budget"], "monthly_usd": "2000", "daily_usd": None},
        "budget_source": "api",
    }
    doc = world.tenant_doc("acme")
    assert doc["budget"] == {"monthly_usd": "2000", "soft_ratio": 0.8, "alert_at": [0.5, 0.8, 1.0]}
    assert doc["prices"]  # other fields are left alone
    [commit] = world.firestore.commits
    assert [path.split("/")[0] for path, _, _ in commit] == ["tenants", "audit"]
    [(_, entry, _)] = [op for op in commit if op[0].startswith("audit/")]
    assert entry["action"] == "tenant.budget.set" and entry["actor"] == "api:acme-root"
    assert entry["details"]["previous"] == {"monthly_usd": "1000", "daily_usd": "50"}
    assert config.cache.get("tenant:acme", lambda: "fresh", 3600) == "fresh"  # this instance forgot its copy

    assert reconciled == ["acme"]  # the tenant's holds follow the new budget at once
    got = send("/v1/tenants/acme/budget", who="acme-viewer")
    assert got.status == 200 and got.json["budget"]["monthly_usd"] == "2000"


def test_get_tenant_budget_without_one_is_null(world: World) -> None:
    reply = send("/v1/tenants/initech/budget", who="viewer")
    assert reply.status == 200 and reply.json == {"tenant": "initech", "budget": None, "budget_source": None}


# --- protection --------------------------------------------------------------------------------


def test_agent_protection_overrides_layer_over_the_tenants(world: World) -> None:
    world.firestore.docs["tenants/acme"] = {"protection": {"breaker_cooldown_s": 120, "spike_pct": 50.0}}
    reply = send(
        "/v1/agents/agent-a1/protection",
        method="PUT",
        body={"spike_pct": 75, "runaway_action": "alert", "spike_min_baseline_usd": "0.5"},
    )
    assert reply.status == 200, reply.text
    assert world.agents["agent-a1"].protection == {
        "spike_pct": 75.0,
        "runaway_action": "alert",
        "spike_min_baseline_usd": "0.5",
    }
    body = reply.json
    assert body["agent_id"] == "agent-a1" and body["tenant"] == "acme"
    assert body["overrides"]["spike_pct"] == 75.0 and body["overrides"]["breaker_cooldown_s"] is None
    effective = body["effective"]
    assert effective["spike_pct"] == 75.0  # the agent's
    assert effective["breaker_cooldown_s"] == 120  # the tenant's
    assert effective["breaker_consecutive_failures"] == 5  # the default
    assert effective["spike_min_baseline_usd"] == "0.5"
    assert world.audit[-1].action == "agent.protection.set"
    got = send("/v1/agents/agent-a1/protection", who="acme-viewer")
    assert got.status == 200 and got.json == body


def test_tenant_protection_round_trip_and_empty_body_resets(world: World) -> None:
    reply = send("/v1/tenants/acme/protection", method="PUT", body={"breaker_consecutive_failures": 10})
    assert reply.status == 200, reply.text
    assert reply.json["agent_id"] is None and reply.json["effective"]["breaker_consecutive_failures"] == 10
    assert world.tenant_doc("acme")["protection"] == {"breaker_consecutive_failures": 10}
    reply = send("/v1/tenants/acme/protection", method="PUT", body={})
    assert reply.status == 200 and world.tenant_doc("acme")["protection"] == {}
    assert reply.json["effective"]["breaker_consecutive_failures"] == 5
    assert (
        send("/v1/tenants/acme/protection", who="acme-viewer").json["overrides"]["breaker_consecutive_failures"] is None
    )


@pytest.mark.parametrize(
    "body",
    [{"breaker_failure_rate": 2}, {"breaker_cooldown_s": 0}, {"runaway_action": "explode"}, {"breaker": 1}],
)
def test_bad_protection_is_400(world: World, body: dict[str, Any]) -> None:
    assert_error_details(send("/v1/agents/agent-a1/protection", method="PUT", body=body))
    assert_error_details(send("/v1/tenants/acme/protection", method="PUT", body=body))
    assert world.updates == [] and world.firestore.commits == []


def assert_error_details(reply: Reply) -> None:
    assert reply.status == 400, reply.text
    assert reply.json["error"]["code"] == "bad_request" and reply.json["error"]["details"]


# --- prices ------------------------------------------------------------------------------------

#: An override that sets no cache or reasoning price (those parts are charged at its input / output price);
#: overrides have no long-context tiers.
NO_PARTS = {"cache_read_usd": None, "cache_write_usd": None, "reasoning_usd": None, "tiers": []}


def test_prices_list_global_prices_as_decimal_strings(world: World) -> None:
    reply = send("/v1/prices", who="viewer")
    assert reply.status == 200, reply.text
    assert reply.json == {
        "tenant": None,
        "next_page_token": None,
        "items": [
            {
                "model": "gpt-4o",
                "input_usd": "0.0000025",
                "output_usd": "0.00001",
                **NO_PARTS,
                "source": "override:fleet",
            },
            {
                "model": "openai/gpt-4o-mini",
                "input_usd": "0.00000015",
                "output_usd": "0.0000006",
                **NO_PARTS,
                "source": "override:fleet",
            },
        ],
    }


def test_prices_with_a_tenant_show_its_overrides_in_place(world: World) -> None:
    world.firestore.docs["tenants/acme"] = {
        "prices": {
            "gpt-4o": {"input_usd": "0.000002", "output_usd": "0.000008"},
            "acme/private-llm": {"input_usd": "0", "output_usd": "0"},
        }
    }
    for reply in (send("/v1/prices", tenant="acme"), send("/v1/prices", who="acme-viewer")):
        assert reply.status == 200, reply.text
        assert reply.json["tenant"] == "acme"
        by_model = {item["model"]: item for item in reply.json["items"]}
        assert by_model["gpt-4o"] == {
            "model": "gpt-4o",
            "input_usd": "0.000002",
            "output_usd": "0.000008",
            **NO_PARTS,
            "source": "override:tenant",
        }
        assert by_model["acme/private-llm"]["source"] == "override:tenant"
        assert by_model["openai/gpt-4o-mini"]["source"] == "override:fleet"
    assert_error(send("/v1/prices", who="acme-viewer", tenant="globex"), 403, "forbidden")
    assert_error(send("/v1/prices", tenant="Bad Tenant"), 400, "bad_request")


@pytest.mark.parametrize(
    ("path", "model"),
    [
        ("/v1/prices/openai/gpt-4o", "openai/gpt-4o"),
        ("/v1/prices/openai%2Fgpt-4o", "openai/gpt-4o"),
        ("/v1/prices/ollama/llama3:70b", "ollama/llama3:70b"),
        ("/v1/prices/gpt-4o", "gpt-4o"),
        ("/v1/prices/gpt-4o/", "gpt-4o"),
    ],
)
def test_put_price_accepts_model_names_with_slashes_and_colons(world: World, path: str, model: str) -> None:
    reply = send(path, method="PUT", body={"input_usd": "0.0000025", "output_usd": 0.00001})
    assert reply.status == 200, reply.text
    assert reply.json == {"model": model, "input_usd": "0.0000025", "output_usd": "0.00001", **NO_PARTS,
                          "source": "override:fleet"}  # fmt: skip
    assert world.prices_set == [(None, model, Price(Decimal("0.0000025"), Decimal("0.00001")))]
    [(path_, entry)] = [(p, d) for p, d in world.firestore.docs.items() if p.startswith("audit/")]
    assert entry["action"] == "price.set" and entry["details"]["model"] == model
    assert path_.count("/") == 1  # the model's "/" is escaped in the audit id


def test_put_tenant_price(world: World) -> None:
    reply = send("/v1/prices/anthropic/claude-3-5-sonnet", method="PUT", tenant="acme", who="acme-admin",
                 body={"input_usd": "0.000003", "output_usd": "0.000015"})  # fmt: skip
    assert reply.status == 200, reply.text
    assert reply.json["source"] == "override:tenant"
    assert world.prices_set == [
        ("acme", "anthropic/claude-3-5-sonnet", Price(Decimal("0.000003"), Decimal("0.000015")))
    ]


def test_a_tenant_admin_sets_only_its_own_tenants_prices(world: World) -> None:
    body = {"input_usd": "0.000001", "output_usd": "0.000002"}
    assert_error(send("/v1/prices/gpt-4o", method="PUT", body=body, who="acme-admin"), 403, "forbidden")
    assert_error(
        send("/v1/prices/gpt-4o", method="PUT", body=body, who="acme-admin", tenant="globex"), 403, "forbidden"
    )
    assert_error(send("/v1/prices/gpt-4o", method="PUT", body=body, who="viewer"), 403, "forbidden")
    assert world.prices_set == []


@pytest.mark.parametrize(
    "body",
    [
        {"input_usd": "-0.1", "output_usd": "0"},
        {"input_usd": "2", "output_usd": "0"},
        {"input_usd": "cheap", "output_usd": "0"},
        {"input_usd": "0.000001"},
        {"input_usd": "0.000001", "output_usd": "0.000001", "currency": "EUR"},
        {"input_usd": True, "output_usd": "0"},
    ],
)
def test_a_bad_price_is_400(world: World, body: dict[str, Any]) -> None:
    assert_error_details(send("/v1/prices/gpt-4o", method="PUT", body=body))
    assert world.prices_set == []


@pytest.mark.parametrize("path", ["/v1/prices/-gpt", "/v1/prices/gpt 4o", "/v1/prices/" + "x" * 129])
def test_an_impossible_model_name_is_400(world: World, path: str) -> None:
    reply = send(path, method="PUT", body={"input_usd": "0", "output_usd": "0"})
    assert_error(reply, 400, "bad_request")
    assert world.prices_set == []


# --- pause and resume --------------------------------------------------------------------------


def test_pause_then_resume(world: World) -> None:
    reply = send("/v1/agents/agent-a1/pause", method="POST", body={"reason": "runaway costs"}, who="acme-operator")
    assert reply.status == 200, reply.text
    assert reply.json["status"] == "suspended"
    assert reply.json["holds"]["pause"]["command"] == "pause"
    assert reply.json["holds"]["pause"]["reason"] == "runaway costs"
    [pause] = world.published
    assert pause.command is CommandType.PAUSE
    assert pause.command_id == holds.command_id("pause", "agent-a1", f"api.{REQUEST_ID}", "0")
    assert world.agents["agent-a1"].holds["pause"]["actor"] == "api:acme-oncall"
    assert world.audit[-1].action == "agent.hold.pause" and world.audit[-1].actor == "api:acme-oncall"

    # Pausing again changes nothing and sends the same command again (a failed publish is repaired).
    again = send("/v1/agents/agent-a1/pause", method="POST", body={"reason": "again"}, who="operator")
    assert again.status == 200 and again.json["holds"]["pause"]["reason"] == "runaway costs"
    assert [c.command_id for c in world.published] == [pause.command_id, pause.command_id]

    reply = send("/v1/agents/agent-a1/resume", method="POST", body={"reason": "fixed"}, who="operator")
    assert reply.status == 200, reply.text
    assert reply.json["status"] == "active" and reply.json["holds"] == {}
    resume = world.published[-1]
    assert resume.command is CommandType.RESUME and resume.reason == "fixed"


def test_resume_when_not_paused_is_409(world: World) -> None:
    reply = send("/v1/agents/agent-a1/resume", method="POST", who="operator")
    assert_error(reply, 409, "conflict")
    assert "not paused" in reply.json["error"]["reason"]
    assert world.published == [] and world.updates == []


def test_resume_keeps_the_other_holds(world: World) -> None:
    world.usage["agent-a1"] = {Period.DAY: spent(5)}
    send("/v1/agents/agent-a1/pause", method="POST", body={"reason": "look"})
    send("/v1/agents/agent-a1/budget", method="PUT", body={"daily_usd": 1})
    reply = send("/v1/agents/agent-a1/resume", method="POST", body={})
    assert reply.status == 200
    assert set(reply.json["holds"]) == {"budget"} and reply.json["status"] == "suspended"


def test_pause_needs_an_operator_a_reason_and_a_visible_agent(world: World) -> None:
    assert_error(send("/v1/agents/agent-a1/pause", method="POST", body={"reason": "x"}, who="viewer"), 403, "forbidden")
    assert_error_details(send("/v1/agents/agent-a1/pause", method="POST", body={}))
    assert_error_details(send("/v1/agents/agent-a1/pause", method="POST", body={"reason": "   "}))
    assert_error(
        send("/v1/agents/agent-g1/pause", method="POST", body={"reason": "x"}, who="acme-operator"), 404, "not_found"
    )
    assert_error(send("/v1/agents/agent-g1/resume", method="POST", who="acme-operator"), 404, "not_found")
    assert world.published == [] and world.updates == []


def test_a_decommissioned_agent_cannot_be_paused(world: World) -> None:
    world.agents["agent-a1"] = world.agents["agent-a1"].model_copy(update={"status": State.DECOMMISSIONED})
    assert_error(send("/v1/agents/agent-a1/pause", method="POST", body={"reason": "x"}), 409, "conflict")


# --- alerts ------------------------------------------------------------------------------------


def alert_row(i: int, tenant: str, agent_id: str | None) -> dict[str, Any]:
    at = NOW - timedelta(minutes=i)
    return {
        "id": f"budget_exhausted.agent.{agent_id}.daily_usd.2026-11-21",
        "rule": "budget_exhausted",
        "title": "Budget exhausted",
        "severity": "critical",
        "tenant": tenant,
        "agent_id": agent_id,
        "summary": "exhausted",
        "details": {"limit": "daily_usd", "resets_at": "2026-11-22T00:00:00+00:00", "window": "2026-11-21"},
        "opened_at": at,
        "state": "open",
        "expire_at": at + timedelta(days=30),
    }


def test_alerts_are_listed_newest_first_with_iso_times(world: World) -> None:
    world.alert_rows = [
        alert_row(0, "acme", "agent-a1"),
        alert_row(1, "globex", "agent-g1"),
        alert_row(2, "acme", None),
    ]
    reply = send("/v1/alerts", who="viewer")
    assert reply.status == 200, reply.text
    items = reply.json["items"]
    assert [a["tenant"] for a in items] == ["acme", "globex", "acme"]
    assert items[0]["raised_at"] == items[0]["opened_at"] == "2026-11-21T10:30:00Z" and "expire_at" not in items[0]
    assert items[0]["kind"] == items[0]["rule"] == "budget_exhausted" and items[0]["message"] == "exhausted"
    assert world.alert_queries == [{"tenant": None, "agent_id": None, "limit": 50}]
    send("/v1/alerts", tenant="globex", limit="200")
    assert world.alert_queries[-1] == {"tenant": "globex", "agent_id": None, "limit": 200}


def test_a_tenant_key_sees_only_its_tenants_alerts(world: World) -> None:
    world.alert_rows = [alert_row(0, "acme", "agent-a1"), alert_row(1, "globex", "agent-g1")]
    reply = send("/v1/alerts", who="acme-viewer")
    assert [a["tenant"] for a in reply.json["items"]] == ["acme"]
    assert world.alert_queries[-1]["tenant"] == "acme"
    assert send("/v1/alerts", who="acme-viewer", agent_id="agent-g1").json["items"] == []
    assert world.alert_queries[-1] == {"tenant": "acme", "agent_id": "agent-g1", "limit": 50}
    assert len(send("/v1/alerts", who="acme-viewer", agent_id="agent-a1").json["items"]) == 1
    assert_error(send("/v1/alerts", who="acme-viewer", tenant="globex"), 403, "forbidden")


@pytest.mark.parametrize("query", [{"limit": "0"}, {"limit": "201"}, {"limit": "ten"}, {"agent_id": "Bad Id"}])
def test_bad_alert_filters_are_400(world: World, query: dict[str, str]) -> None:
    assert_error(send("/v1/alerts", **query), 400, "bad_request")
    assert world.alert_queries == []


# --- errors ------------------------------------------------------------------------------------


def test_other_errors_carry_no_details(world: World) -> None:
    reply = send("/v1/agents/agent-zz/budget")
    assert reply.json == {"error": {"code": "not_found", "reason": "agent agent-zz not found"}}


def test_wrong_methods_name_the_allowed_ones(world: World) -> None:
    reply = send("/v1/agents/agent-a1/pause")
    assert_error(reply, 405, "method_not_allowed")
    assert reply.headers["Allow"] == "POST"
    reply = send("/v1/agents/agent-a1/budget", method="POST")
    assert_error(reply, 405, "method_not_allowed")
    assert set(reply.headers["Allow"].split(", ")) == {"DELETE", "GET", "HEAD", "PUT"}


def test_openapi_documents_the_cost_routes_with_their_bodies(world: World) -> None:
    spec = router.openapi_document()
    paths = spec["paths"]
    assert set(paths["/v1/agents/{agent_id}/budget"]) == {"get", "put", "delete"}
    assert set(paths["/v1/tenants/{tenant}/protection"]) == {"get", "put"}
    assert set(paths["/v1/agents/{agent_id}/pause"]) == {"post"}
    assert set(paths["/v1/prices/{model}"]) == {"get", "put"}
    put = paths["/v1/agents/{agent_id}/budget"]["put"]
    assert put["requestBody"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/BudgetUpdate"}
    assert put["requestBody"]["required"] is True
    assert paths["/v1/agents/{agent_id}/resume"]["post"]["requestBody"]["required"] is False
    assert "409" in paths["/v1/agents/{agent_id}/resume"]["post"]["responses"]
    assert "admin" in put["description"]
    budget = spec["components"]["schemas"]["BudgetUpdate"]
    assert budget["additionalProperties"] is False and "daily_usd" in budget["properties"]
    assert spec["components"]["responses"]["Conflict"]
