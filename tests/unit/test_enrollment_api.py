"""The REST API's enrollment tokens and key revocation, without processes: the stores are faked in memory,
the routes, services and domain are the real ones."""

from __future__ import annotations

import hashlib
import json
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import flask
import pytest
from fleet_agent.identity import AgentKey, EnrollmentToken, key_id_of

from shared.api import core, router
from shared.domain import identity
from shared.domain.agent_record import AgentRecord, Plan
from shared.domain.api_keys import Role
from shared.domain.audit import AuditEntry
from shared.domain.enrollment import EnrollmentToken as StoredToken
from shared.domain.lifecycle import State
from shared.platform import fleet_key, logs
from shared.services import command_channels
from shared.store import agents as agent_store
from shared.store import api_keys, config
from shared.store import audit as audit_store
from shared.store import enrollment_tokens as token_store
from shared.store.api_keys import Principal

T0 = datetime(2026, 12, 6, 9, 0, tzinfo=UTC)
FLEET = AgentKey.generate()
AGENT_KEY = AgentKey.generate()
ADMIN, APPROVER, VIEWER, GLOBEX = (f"afm_{i:016x}_" + "a" * 43 for i in (1, 2, 3, 4))
PRINCIPALS = {
    ADMIN: Principal("0000000000000001", "root", Role.ADMIN, None),
    APPROVER: Principal("0000000000000002", "acme-approver", Role.APPROVER, "acme"),
    VIEWER: Principal("0000000000000003", "acme-viewer", Role.VIEWER, "acme"),
    GLOBEX: Principal("0000000000000004", "globex-approver", Role.APPROVER, "globex"),
}
APP = flask.Flask(__name__)


class World:
    def __init__(self) -> None:
        self.tokens: dict[str, StoredToken] = {}
        self.audit: list[AuditEntry] = []
        self.agents: dict[str, AgentRecord] = {}
        self.tenants: dict[str, dict[str, Any]] = {}
        self.readers_revoked: list[str] = []


def agent(agent_id: str, tenant: str, keyed: bool) -> AgentRecord:
    stored = identity.bind(None, AGENT_KEY.public_key, token_id="00000000000000ff", at=T0) if keyed else {}
    return AgentRecord(
        agent_id=agent_id,
        tenant=tenant,
        name=agent_id,
        agent_type="llm",
        version="1.0.0",
        owner="team",
        status=State.ACTIVE,
        status_since=T0,
        registered_at=T0,
        last_registered_at=T0,
        last_seq=-1,
        identity=stored,
    )


@pytest.fixture
def world(monkeypatch: pytest.MonkeyPatch) -> World:
    readers_revoked: list[str] = []
    monkeypatch.setattr(command_channels, "revoke_readers", readers_revoked.append)
    w = World()
    w.agents = {a.agent_id: a for a in (agent("acme-1", "acme", True), agent("acme-2", "acme", False))}
    w.agents["globex-1"] = agent("globex-1", "globex", True)

    def create(token: StoredToken, entry: AuditEntry | None = None) -> None:
        assert token.token_id not in w.tokens
        w.tokens[token.token_id] = token
        if entry is not None:
            w.audit.append(entry)

    def revoke(
        token_id: str, *, at: datetime, by: str, entry: AuditEntry | None = None, tenant: str | None = None
    ) -> StoredToken | None:
        token = w.tokens.get(token_id)
        if token is None or (tenant is not None and token.tenant != tenant):
            return None
        if token.revoked_at is None:
            token = w.tokens[token_id] = token.model_copy(update={"revoked_at": at, "revoked_by": by})
            if entry is not None:
                w.audit.append(entry)
        return token

    def update(agent_id: str, decide: Any) -> Plan:
        plan: Plan = decide(w.agents.get(agent_id))
        if plan.changes:
            w.agents[agent_id] = w.agents[agent_id].model_copy(update=plan.changes)
        w.audit.extend(plan.audit)
        return plan

    def write_tenant(tenant: str, fields: dict[str, Any], entry: AuditEntry) -> None:
        w.tenants.setdefault(tenant, {}).update(fields)
        w.audit.append(entry)

    monkeypatch.setattr(api_keys, "verify", PRINCIPALS.get)
    monkeypatch.setattr(core, "now", lambda: T0)
    monkeypatch.setattr(fleet_key, "get", lambda: FLEET)
    monkeypatch.setattr(token_store, "create", create)
    monkeypatch.setattr(token_store, "get", w.tokens.get)
    monkeypatch.setattr(token_store, "revoke", revoke)
    monkeypatch.setattr(token_store, "list_tenant", lambda t: [x for x in w.tokens.values() if x.tenant == t][::-1])
    monkeypatch.setattr(audit_store, "append", lambda e: w.audit.append(e) or True)
    monkeypatch.setattr(agent_store, "get", w.agents.get)
    monkeypatch.setattr(agent_store, "update", update)
    monkeypatch.setattr(
        config,
        "read_tenant",
        lambda t: config.TenantConfig(t, None, None, {}, {}, identity=w.tenants.get(t, {}).get("identity", {})),
    )
    monkeypatch.setattr("shared.api.settings.write_tenant", write_tenant)
    w.readers_revoked = readers_revoked
    return w


def call(path: str, token: str = ADMIN, method: str = "GET", body: Any = None) -> tuple[int, Any]:
    data = json.dumps(body) if body is not None else None
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    with APP.test_request_context(path, method=method, headers=headers, data=data):
        response = router.handle(flask.request)
    return response.status_code, json.loads(response.get_data(as_text=True))


@pytest.fixture
def log_text() -> Any:
    lines: list[str] = []
    formatter = logs.JsonFormatter()

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(formatter.format(record))

    handler = Collect()
    logging.getLogger("fleet.api").addHandler(handler)
    yield lines
    logging.getLogger("fleet.api").removeHandler(handler)


TOKENS = "/v1/tenants/acme/enrollment-tokens"


def test_an_approver_creates_a_token_shown_once_and_stored_hashed(world: World, log_text: list[str]) -> None:
    body = {"label": "build farm", "agent_prefix": "build-", "max_uses": 3, "expires_in_s": 7 * 86400}
    status, created = call(TOKENS, APPROVER, "POST", body)
    assert status == 201, created
    parsed = EnrollmentToken.parse(created["token"])
    assert parsed.token_id == created["token_id"] and parsed.fleet_public_key == FLEET.public_key
    assert created["fleet_public_key"] == FLEET.public_key
    assert created["command_subscription"] == "agent-commands.<agent_id>"
    assert created["scope"] == "build-*" and created["state"] == "active" and created["uses"] == 0
    assert created["expires_at"].startswith("2026-12-13T09:00:00")
    stored = world.tokens[parsed.token_id]
    assert stored.secret_sha256 == hashlib.sha256(parsed.secret.encode()).hexdigest()
    assert stored.tenant == "acme" and stored.max_uses == 3 and stored.created_by == "api:acme-approver"
    [entry] = [e for e in world.audit if e.action == "enrollment_token.create"]
    assert entry.tenant == "acme" and entry.details["scope"] == "build-*"
    # The secret is nowhere but in the answer: not in the audit entry, not in the log.
    assert parsed.secret not in json.dumps(entry.as_doc(), default=str)
    assert log_text and not any(parsed.secret in line for line in log_text)
    # Listed without the text or the hash.
    status, listing = call(TOKENS, VIEWER)
    assert status == 200 and [t["token_id"] for t in listing["items"]] == [parsed.token_id]
    assert "token" not in listing["items"][0] and "secret_sha256" not in listing["items"][0]


def test_one_agent_scope_names_its_command_subscription_and_principal(world: World) -> None:
    principal = "serviceAccount:agent-7@proj.iam.gserviceaccount.com"
    status, created = call(TOKENS, ADMIN, "POST", {"agent_id": "agent-7", "principal": principal})
    assert status == 201, created
    assert created["command_subscription"] == "agent-commands.agent-7" and created["principal"] == principal
    assert created["max_uses"] == 1 and created["expires_at"].startswith("2026-12-07T09:00:00")
    assert world.tokens[created["token_id"]].principal == principal


@pytest.mark.parametrize(
    "body",
    [
        {"agent_id": "agent-7", "agent_prefix": "agent-"},
        {"expires_in_s": 30 * 86400 + 1},
        {"max_uses": 0},
        {"agent_id": "Bad Id"},
        {"principal": "x@y"},
        {"secret": "x"},
    ],
)
def test_a_token_out_of_bounds_is_a_400_and_nothing_is_stored(world: World, body: dict[str, Any]) -> None:
    status, reply = call(TOKENS, ADMIN, "POST", body)
    assert status == 400 and reply["error"]["code"] == "bad_request", reply
    assert world.tokens == {}


def test_who_may_create_list_and_revoke(world: World) -> None:
    status, reply = call(TOKENS, VIEWER, "POST", {})
    assert status == 403 and reply["error"]["code"] == "forbidden"
    assert any(e.outcome == "refused" and e.details["needs"] == "approver" for e in world.audit)
    # Another tenant's approver: not found, and the attempt is audited.
    status, reply = call(TOKENS, GLOBEX, "POST", {})
    assert status == 404, reply
    [refused] = [e for e in world.audit if e.action == "enrollment_token.refused"]
    assert refused.actor == "api:globex-approver" and refused.outcome == "refused"
    assert call(TOKENS, GLOBEX)[0] == 404
    assert world.tokens == {}


def test_a_missing_fleet_key_is_a_clear_503(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    def missing() -> AgentKey:
        raise fleet_key.MissingFleetKey("no key")

    monkeypatch.setattr(fleet_key, "get", missing)
    status, reply = call(TOKENS, ADMIN, "POST", {})
    assert status == 503 and reply["error"]["code"] == "unavailable"
    assert "fleet-command-key" in reply["error"]["reason"] and world.tokens == {}


def test_states_and_idempotent_revocation(world: World) -> None:
    ids = [call(TOKENS, ADMIN, "POST", {"label": str(i), "expires_in_s": 3600})[1]["token_id"] for i in range(4)]
    world.tokens[ids[1]] = world.tokens[ids[1]].model_copy(update={"expires_at": T0 - timedelta(seconds=1)})
    world.tokens[ids[2]] = world.tokens[ids[2]].model_copy(update={"uses": 1, "used_by": ["acme-9"]})
    status, revoked = call(f"{TOKENS}/{ids[3]}/revoke", APPROVER, "POST", {})
    assert status == 200 and revoked["state"] == "revoked" and revoked["revoked_by"] == "api:acme-approver"
    again = call(f"{TOKENS}/{ids[3]}/revoke", ADMIN, "POST", {})
    assert again[0] == 200 and again[1]["revoked_by"] == "api:acme-approver"
    assert len([e for e in world.audit if e.action == "enrollment_token.revoke"]) == 1
    states = {t["token_id"]: t["state"] for t in call(TOKENS, VIEWER)[1]["items"]}
    assert [states[i] for i in ids] == ["active", "expired", "used_up", "revoked"]
    one = call(f"{TOKENS}/{ids[2]}", VIEWER)[1]
    assert one["used_by"] == ["acme-9"] and one["uses"] == 1
    # Another tenant's token, or an unknown one, is not found.
    assert call(f"/v1/tenants/globex/enrollment-tokens/{ids[0]}", ADMIN)[0] == 404
    assert call(f"/v1/tenants/globex/enrollment-tokens/{ids[0]}/revoke", ADMIN, "POST", {})[0] == 404
    assert world.tokens[ids[0]].revoked_at is None
    assert call(f"{TOKENS}/0123456789abcdef", ADMIN)[0] == 404


def test_an_approver_revokes_an_agents_key_idempotently(world: World) -> None:
    status, reply = call("/v1/agents/acme-1/keys/revoke", APPROVER, "POST", {"reason": "laptop stolen"})
    assert status == 200, reply
    assert reply["revoked_now"] is True and reply["identity"]["status"] == "revoked"
    stored = identity.AgentIdentity.of(world.agents["acme-1"].identity)
    assert stored.keys == [] and stored.revoked_key_ids == [key_id_of(AGENT_KEY.public_key)]
    [entry] = [e for e in world.audit if e.action == "agent.key.revoke"]
    assert entry.target == "acme-1" and entry.details["reason"] == "laptop stolen"
    assert world.readers_revoked == ["acme-1"]  # nobody reads its commands any more
    again = call("/v1/agents/acme-1/keys/revoke", APPROVER, "POST", {})
    assert again[0] == 200 and again[1]["revoked_now"] is False
    assert len([e for e in world.audit if e.action == "agent.key.revoke"]) == 1
    # The agent view shows it.
    view = call("/v1/agents/acme-1", VIEWER)[1]
    assert view["identity"]["status"] == "revoked" and view["identity"]["revoked_at"].startswith("2026-12-06")


def test_key_revocation_refusals(world: World) -> None:
    assert call("/v1/agents/acme-1/keys/revoke", VIEWER, "POST", {})[0] == 403
    assert call("/v1/agents/globex-1/keys/revoke", APPROVER, "POST", {})[0] == 404
    assert call("/v1/agents/nobody-1/keys/revoke", ADMIN, "POST", {})[0] == 404
    assert identity.AgentIdentity.of(world.agents["globex-1"].identity).keys
    assert identity.AgentIdentity.of(world.agents["acme-1"].identity).keys


def test_the_agent_view_shows_its_identity(world: World) -> None:
    signed = call("/v1/agents/acme-1", VIEWER)[1]["identity"]
    assert signed["status"] == "signed" and signed["key_id"] == key_id_of(AGENT_KEY.public_key)
    assert signed["public_key"] == AGENT_KEY.public_key and signed["token_id"] == "00000000000000ff"
    unsigned = call("/v1/agents/acme-2", VIEWER)[1]["identity"]
    assert unsigned["status"] == "unsigned" and unsigned["key_id"] is None


def test_identity_settings_are_a_tenant_settings_kind(world: World) -> None:
    status, shown = call("/v1/tenants/acme/identity", VIEWER)
    assert status == 200 and shown["effective"]["policy"] in ("required", "optional")
    assert call("/v1/tenants/acme/identity", APPROVER, "PUT", {"policy": "optional"})[0] == 403
    assert call("/v1/tenants/acme/identity", ADMIN, "PUT", {"policy": "sometimes"})[0] == 400
    status, shown = call("/v1/tenants/acme/identity", ADMIN, "PUT", {"policy": "optional"})
    assert status == 200 and shown["overrides"] == {"policy": "optional"}
    assert shown["effective"]["policy"] == "optional"
    assert any(e.action == "tenant.identity.set" for e in world.audit)
