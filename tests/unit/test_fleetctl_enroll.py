"""``fleetctl enroll`` and ``fleetctl agents revoke-key`` without Firestore (the stores faked in memory),
and decommissioning through ``fleetctl agents transition`` revoking the agent's key in the same write."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fleet_agent.identity import AgentKey, EnrollmentToken

from shared.cli import fleetctl
from shared.domain import identity
from shared.domain.agent_record import AgentRecord, Plan
from shared.domain.audit import AuditEntry
from shared.domain.enrollment import EnrollmentToken as StoredToken
from shared.domain.lifecycle import State
from shared.platform import fleet_key
from shared.services import command_channels
from shared.store import agents as agent_store
from shared.store import enrollment_tokens as token_store

T0 = datetime(2026, 12, 6, 9, 0, tzinfo=UTC)
FLEET = AgentKey.generate()
KEY = AgentKey.generate()


@pytest.fixture
def world(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    channels: list[tuple[str, str]] = []

    def revoke_readers(agent_id: str) -> None:
        channels.append(("revoke", agent_id))

    def delete(agent_id: str) -> bool:
        channels.append(("delete", agent_id))
        return True

    monkeypatch.setattr(command_channels, "revoke_readers", revoke_readers)
    monkeypatch.setattr(command_channels, "delete", delete)
    w: dict[str, Any] = {"tokens": {}, "audit": [], "plans": []}
    w["agent"] = AgentRecord(
        agent_id="agent-1",
        tenant="acme",
        name="A",
        agent_type="llm",
        version="1",
        owner="o",
        status=State.ACTIVE,
        status_since=T0,
        registered_at=T0,
        last_registered_at=T0,
        identity=identity.bind(None, KEY.public_key, token_id="00000000000000ff", at=T0),
    )

    def create(token: StoredToken, entry: AuditEntry | None = None) -> None:
        w["tokens"][token.token_id] = token
        w["audit"].append(entry)

    def revoke(token_id: str, *, at: datetime, by: str, entry: Any = None, tenant: Any = None) -> Any:
        token = w["tokens"].get(token_id)
        if token is None or token.tenant != tenant:
            return None
        w["tokens"][token_id] = token.model_copy(update={"revoked_at": at, "revoked_by": by})
        return w["tokens"][token_id]

    def update(agent_id: str, decide: Callable[[AgentRecord | None], Plan]) -> Plan:
        current = w["agent"] if agent_id == "agent-1" else None
        plan = decide(current)
        w["plans"].append(plan)
        if plan.changes:
            w["agent"] = w["agent"].model_copy(update=plan.changes)
        return plan

    monkeypatch.setattr(fleet_key, "get", lambda: FLEET)
    monkeypatch.setattr(token_store, "create", create)
    monkeypatch.setattr(token_store, "revoke", revoke)
    monkeypatch.setattr(token_store, "list_tenant", lambda t: [x for x in w["tokens"].values() if x.tenant == t])
    monkeypatch.setattr(agent_store, "update", update)
    monkeypatch.setattr(agent_store, "get", lambda agent_id: w["agent"] if agent_id == "agent-1" else None)
    w["channels"] = channels
    return w


def test_create_prints_only_the_token_on_stdout(world: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["enroll", "create", "--tenant", "acme", "--prefix", "build-", "--uses", "5", "--expires", "7d"]
    assert fleetctl.main([*argv, "--label", "farm"]) == 0
    out, err = capsys.readouterr()
    parsed = EnrollmentToken.parse(out.strip())
    stored = world["tokens"][parsed.token_id]
    assert stored.agent_prefix == "build-" and stored.max_uses == 5 and stored.label == "farm"
    assert stored.expires_at - stored.created_at == timedelta(days=7) and stored.created_by.startswith("cli:")
    assert "shown once" in err and "enrollment_token" in err and parsed.secret not in err
    assert world["audit"][0].action == "enrollment_token.create"


@pytest.mark.parametrize(
    "argv",
    [
        ["enroll", "create"],  # --tenant is required
        ["enroll", "create", "--tenant", "acme", "--agent-id", "a-1", "--prefix", "a-"],
        ["enroll", "create", "--tenant", "acme", "--expires", "31d"],
        ["enroll", "create", "--tenant", "acme", "--expires", "soon"],
        ["enroll", "revoke", "--tenant", "acme"],
        ["agents", "revoke-key"],
    ],
)
def test_bad_command_lines_exit_2(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        fleetctl.main(argv)
    assert exc.value.code == 2


def test_list_and_revoke(world: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    assert fleetctl.main(["enroll", "create", "--tenant", "acme", "--agent-id", "agent-9"]) == 0
    token_id = EnrollmentToken.parse(capsys.readouterr().out.strip()).token_id
    assert fleetctl.main(["enroll", "list", "--tenant", "acme"]) == 0
    out = capsys.readouterr().out
    assert token_id in out and "active" in out and "agent-9" in out
    assert fleetctl.main(["enroll", "revoke", "--tenant", "acme", token_id]) == 0
    assert "revoked" in capsys.readouterr().out
    assert fleetctl.main(["enroll", "list", "--tenant", "acme", "--json"]) == 0
    assert '"state": "revoked"' in capsys.readouterr().out
    assert fleetctl.main(["enroll", "revoke", "--tenant", "globex", token_id]) == 1
    assert "not found" in capsys.readouterr().err


def test_a_missing_fleet_key_is_said(world: dict[str, Any], monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    def missing() -> AgentKey:
        raise fleet_key.MissingFleetKey("none")

    monkeypatch.setattr(fleet_key, "get", missing)
    assert fleetctl.main(["enroll", "create", "--tenant", "acme"]) == 1
    out, err = capsys.readouterr()
    assert out == "" and "fleet-command-key" in err and world["tokens"] == {}


def test_revoke_key(world: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    assert fleetctl.main(["agents", "revoke-key", "agent-1", "--reason", "stolen"]) == 0
    assert "key revoked" in capsys.readouterr().out
    assert identity.status_of(world["agent"].identity) is identity.Status.REVOKED
    [entry] = world["plans"][-1].audit
    assert entry.action == "agent.key.revoke" and entry.details["reason"] == "stolen"
    assert fleetctl.main(["agents", "revoke-key", "agent-1"]) == 0
    assert "nothing changed" in capsys.readouterr().out
    assert fleetctl.main(["agents", "revoke-key", "agent-2"]) == 1
    # Whoever could read the agent's commands reads nothing more (repeated by the idempotent second call).
    assert world["channels"] == [("revoke", "agent-1"), ("revoke", "agent-1")]


def test_decommissioning_revokes_the_key_in_the_same_write(world: dict[str, Any]) -> None:
    argv = ["agents", "transition", "agent-1", "decommissioning", "--reason", "retired"]
    assert fleetctl.main(argv) == 0
    [plan] = world["plans"]
    # Through the one decommission operation: both steps of the lifecycle and the key in one write.
    assert plan.changes["status"] is State.DECOMMISSIONED
    revoked = identity.AgentIdentity.of(plan.changes["identity"]).revoked_key_ids
    assert revoked == [identity.key_id_of(KEY.public_key)]
    assert sorted(e.action for e in plan.audit) == [
        "agent.decommission",
        "agent.key.revoke",
        "agent.transition",
        "agent.transition",
    ]
    assert world["channels"] == [("delete", "agent-1")]  # its command channel goes with it


def test_other_transitions_keep_the_key(world: dict[str, Any]) -> None:
    assert fleetctl.main(["agents", "transition", "agent-1", "maintenance", "--reason", "patch"]) == 0
    assert "identity" not in world["plans"][-1].changes
    assert identity.status_of(world["agent"].identity) is identity.Status.SIGNED
