"""fleetctl without Firestore: the store functions it calls are monkeypatched."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from google.api_core.exceptions import ServiceUnavailable

from shared.cli import fleetctl
from shared.domain.agent_record import AgentRecord, Plan
from shared.domain.api_keys import Role
from shared.domain.episodes import AlertingConfig
from shared.domain.lifecycle import State
from shared.services import agent_commands
from shared.store import agents as agent_store
from shared.store import api_keys, config
from shared.store import audit as audit_store

T0 = datetime(2026, 11, 21, 10, 0, tzinfo=UTC)
TOKEN = "afm_0123456789abcdef_" + "s" * 43


def record(status: State) -> AgentRecord:
    return AgentRecord(
        agent_id="agent-1",
        tenant="acme",
        name="A",
        agent_type="llm",
        version="1",
        owner="o",
        status=status,
        status_since=T0,
        registered_at=T0,
        last_registered_at=T0,
    )


# --- parsing ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["keys"],
        ["keys", "create"],  # --name is required
        ["keys", "create", "--name", "ci", "--role", "root"],
        ["keys", "create", "--name", "ci", "--tenant", "Not A Tenant"],
        ["keys", "create", "--name", "   "],
        ["keys", "revoke"],
        ["agents", "transition", "agent-1", "active"],  # --reason is required
        ["agents", "transition", "agent-1", "sleeping", "--reason", "x"],
    ],
)
def test_bad_command_lines_exit_2(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        fleetctl.main(argv)
    assert exit_info.value.code == 2


def test_the_parser_knows_every_role_and_state() -> None:
    parser = fleetctl.build_parser()
    args = parser.parse_args(["keys", "create", "--name", "ci", "--role", "admin", "--tenant", "acme", "--json"])
    assert (args.group, args.command, args.role, args.tenant, args.json) == (
        "keys",
        "create",
        "admin",
        "acme",
        True,
    )
    assert parser.parse_args(["keys", "create", "--name", "ci"]).role == Role.VIEWER.value
    for state in State:
        args = parser.parse_args(["agents", "transition", "agent-1", state.value, "--reason", "r"])
        assert args.state == state.value and args.actor is None


# --- keys ------------------------------------------------------------------------------------


@pytest.fixture
def created(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, Role, str | None]]:
    made: list[tuple[str, Role, str | None]] = []

    def create(name: str, role: Role, tenant: str | None = None) -> tuple[str, str]:
        made.append((name, role, tenant))
        return "0123456789abcdef", TOKEN

    monkeypatch.setattr(api_keys, "create", create)
    return made


def test_keys_create_prints_only_the_token_on_stdout(created: list[Any], capsys: pytest.CaptureFixture[str]) -> None:
    assert fleetctl.main(["keys", "create", "--name", "ci", "--role", "operator", "--tenant", "acme"]) == 0
    out, err = capsys.readouterr()
    assert out == TOKEN + "\n"
    assert "0123456789abcdef" in err and TOKEN not in err
    assert created == [("ci", Role.OPERATOR, "acme")]


def test_keys_create_json(created: list[Any], capsys: pytest.CaptureFixture[str]) -> None:
    assert fleetctl.main(["keys", "create", "--name", "ci", "--json"]) == 0
    out, _ = capsys.readouterr()
    assert json.loads(out) == {"key_id": "0123456789abcdef", "token": TOKEN}
    assert created == [("ci", Role.VIEWER, None)]


def test_keys_list_never_shows_a_hash(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    keys = [
        {
            "key_id": "bbbb",
            "name": "ops",
            "role": "admin",
            "tenant": None,
            "created_at": T0,
            "revoked_at": T0,
            "hash": "deadbeef" * 8,
        },
        {
            "key_id": "aaaa",
            "name": "acme",
            "role": "viewer",
            "tenant": "acme",
            "created_at": T0,
            "revoked_at": None,
        },
    ]
    monkeypatch.setattr(api_keys, "list_keys", lambda: keys)
    assert fleetctl.main(["keys", "list"]) == 0
    table, _ = capsys.readouterr()
    lines = table.splitlines()
    assert lines[0].split() == ["KEY_ID", "NAME", "ROLE", "TENANT", "CREATED_AT", "REVOKED_AT"]
    assert lines[1].startswith("aaaa") and "2026-11-21 10:00:00Z" in lines[1]
    assert "deadbeef" not in table
    assert fleetctl.main(["keys", "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [k["key_id"] for k in listed] == ["aaaa", "bbbb"] and all("hash" not in k for k in listed)


def test_keys_revoke(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(api_keys, "revoke", lambda key_id: key_id == "aaaa")
    assert fleetctl.main(["keys", "revoke", "aaaa"]) == 0
    assert fleetctl.main(["keys", "revoke", "zzzz"]) == 1
    assert "no API key zzzz" in capsys.readouterr().err


def test_firestore_errors_exit_2_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def down(*args: Any, **kwargs: Any) -> None:
        raise ServiceUnavailable("no route to Firestore")

    monkeypatch.setattr(api_keys, "create", down)
    assert fleetctl.main(["keys", "create", "--name", "ci"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "ServiceUnavailable" in err and "Traceback" not in err


# --- transitions -----------------------------------------------------------------------------


@pytest.fixture
def store(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """A fake agent store: ``update`` runs ``decide`` twice (as a conflict retry would) and keeps the plans;
    the audit entries written outside an agent write (refusals) are kept too."""
    state: dict[str, Any] = {"record": record(State.ACTIVE), "plans": [], "audit": [], "published": []}

    def update(agent_id: str, decide: Callable[[AgentRecord | None], Plan]) -> Plan:
        current = state["record"] if agent_id == "agent-1" else None
        plans = [decide(current), decide(current)]
        state["plans"] = plans
        if plans[-1].changes:
            state["record"] = state["record"].model_copy(update=plans[-1].changes)
        return plans[-1]

    monkeypatch.setattr(agent_store, "update", update)
    monkeypatch.setattr(agent_store, "get", lambda agent_id: state["record"] if agent_id == "agent-1" else None)
    monkeypatch.setattr(audit_store, "append", state["audit"].append)
    monkeypatch.setattr(agent_commands, "publish", lambda sent: state["published"].extend(sent) or [])
    return state


def test_transition_to_maintenance_applied(store: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["agents", "transition", "agent-1", "maintenance", "--reason", "kernel patch", "--actor", "alice"]
    assert fleetctl.main(argv) == 0
    out, _ = capsys.readouterr()
    assert "active -> maintenance" in out
    first, retried = store["plans"]
    assert first.changes["status"] is State.MAINTENANCE
    [entry] = first.audit
    assert entry.actor == "alice" and entry.details["reason"] == "kernel patch" and entry.outcome == "applied"
    assert retried.audit[0].id == entry.id and retried.audit[0].at == entry.at  # a retry writes the same entry
    assert fleetctl.main(["agents", "transition", "agent-1", "active", "--reason", "done"]) == 0
    assert store["record"].status is State.ACTIVE


def test_suspended_is_a_pause_and_active_resumes_it(store: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    assert fleetctl.main(["agents", "transition", "agent-1", "suspended", "--reason", "noisy"]) == 0
    assert "pause" in store["record"].holds and store["record"].status is State.SUSPENDED
    assert [c.command.value for c in store["published"]] == ["pause"]
    assert fleetctl.main(["agents", "transition", "agent-1", "active", "--reason", "quiet"]) == 0
    assert store["record"].holds == {} and store["record"].status is State.ACTIVE
    assert [c.command.value for c in store["published"]] == ["pause", "resume"]


def test_a_budget_hold_is_not_lifted_by_a_transition(store: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    """The bypass this command had: a budget-suspended agent moved to active (or through maintenance)."""
    budget_hold = {"command": "budget_exhausted", "command_id": "b.1", "key": "k", "issued_at": T0}
    store["record"] = record(State.SUSPENDED).model_copy(
        update={"holds": {"budget": budget_hold}, "status_hold": "budget"}
    )
    for target in ("active", "maintenance"):
        assert fleetctl.main(["agents", "transition", "agent-1", target, "--reason", "oops"]) == 1
        assert "refused" in capsys.readouterr().err
        assert store["record"].status is State.SUSPENDED and "budget" in store["record"].holds
    assert [(e.action, e.outcome) for e in store["audit"]] == [("agent.transition", "refused")] * 2


def test_a_quarantine_is_released_by_a_transition_to_active(
    store: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(config, "alerting", lambda tenant: AlertingConfig.for_tenant(config.alerting_defaults()))
    assert fleetctl.main(["agents", "transition", "agent-1", "quarantined", "--reason", "odd"]) == 0
    assert store["record"].status is State.QUARANTINED
    assert fleetctl.main(["agents", "transition", "agent-1", "active", "--reason", "vouched"]) == 0
    assert store["record"].status is State.ACTIVE and store["record"].holds == {}


def test_states_the_fleet_sets_are_refused_and_audited(
    store: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    assert fleetctl.main(["agents", "transition", "agent-1", "frozen", "--reason", "oops"]) == 1
    _, err = capsys.readouterr()
    assert "refused" in err and "set by the fleet itself" in err
    [entry] = store["audit"]
    assert entry.outcome == "refused" and entry.actor.startswith("cli:")
    assert store["record"].status is State.ACTIVE


def test_transition_to_the_current_state_changes_nothing(
    store: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    assert fleetctl.main(["agents", "transition", "agent-1", "active", "--reason", "noop"]) == 0
    assert "already active" in capsys.readouterr().out
    assert store["plans"] == []


def test_transition_of_an_unknown_agent_exits_1(store: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    assert fleetctl.main(["agents", "transition", "agent-x", "active", "--reason", "r"]) == 1
    assert "no agent agent-x" in capsys.readouterr().err
