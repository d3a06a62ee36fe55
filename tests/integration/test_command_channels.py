"""Each agent's own command subscription on the real Pub/Sub emulator (shared/services/command_channels.py),
and commands signed by the fleet on the way through it (shared/services/agent_commands.py): the
subscription is created filtered on the agent's id and never expiring, creating it again changes nothing,
a subscription of that name left unfiltered is replaced, a command published for the agent is pulled from
it with a signature the SDK accepts, and decommissioning deletes it.

Only the Pub/Sub emulator is started (the full stack's functions are not needed here).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from fleet_agent.command_signatures import verify_command
from fleet_agent.contracts import Command, CommandType
from fleet_agent.identity import AgentKey, command_subscription

from emulators.stack import _kill_group, _wait_http, free_port
from shared.platform import fleet_key, settings
from shared.services import agent_commands, command_channels

pytestmark = pytest.mark.integration
PROJECT = "fleet-channels"


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Pub/Sub emulator of its own, with the agent-commands topic; yields its host:port."""
    port = free_port()
    log = tmp_path_factory.mktemp("pubsub") / "pubsub.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PUBSUB_")}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            ["gcloud", "beta", "emulators", "pubsub", "start", f"--host-port=127.0.0.1:{port}", f"--project={PROJECT}"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    try:
        _wait_http(f"http://127.0.0.1:{port}/", 120, proc, log)
        yield f"127.0.0.1:{port}"
    finally:
        _kill_group(proc.pid)


@pytest.fixture
def fleet(emulator: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[AgentKey]:
    """This process pointed at the emulator, with a fresh fleet key; the clients built for it are dropped after."""
    key = AgentKey.generate()
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", emulator)
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", PROJECT)
    monkeypatch.setenv("FLEET_COMMAND_KEY", key.to_pem().decode().replace("\n", "\\n"))
    for module, name in [(command_channels, "_subscriber"), (agent_commands, "_publisher"), (agent_commands, "_topic")]:
        monkeypatch.setattr(module, name, None)
    settings.get.cache_clear()
    fleet_key.reset()
    from google.api_core.exceptions import AlreadyExists

    with contextlib.suppress(AlreadyExists):  # made by an earlier test of this module
        agent_commands.publisher().create_topic(name=f"projects/{PROJECT}/topics/agent-commands")
    yield key
    settings.get.cache_clear()
    fleet_key.reset()


def _agent() -> str:
    return f"ch-{uuid.uuid4().hex[:10]}"


def _command(agent_id: str, kind: CommandType = CommandType.PAUSE) -> Command:
    return Command(
        agent_id=agent_id,
        command=kind,
        reason="paused by ann",
        issued_at=datetime.now(UTC),
        command_id=f"cmd-{uuid.uuid4().hex[:12]}",
    )


def _pull(path: str, want: int = 1, timeout: float = 20.0) -> list[Any]:
    """Pull until ``want`` messages came (or the time is up); acknowledges what it got."""
    client = command_channels.subscriber()
    got: list[Any] = []
    deadline = time.monotonic() + timeout
    while len(got) < want and time.monotonic() < deadline:
        response = client.pull(request={"subscription": path, "max_messages": 10}, timeout=10)
        if response.received_messages:
            client.acknowledge(
                request={"subscription": path, "ack_ids": [m.ack_id for m in response.received_messages]}
            )
            got.extend(m.message for m in response.received_messages)
        else:
            time.sleep(0.2)
    return got


def test_the_subscription_is_created_filtered_on_the_agent_and_never_expires(fleet: AgentKey) -> None:
    agent_id = _agent()
    path = command_channels.ensure(agent_id)
    assert path == f"projects/{PROJECT}/subscriptions/{command_subscription(agent_id)}"
    found = command_channels.subscriber().get_subscription(request={"subscription": path})
    assert found.filter == f'attributes.agent_id = "{agent_id}"'
    assert found.topic == f"projects/{PROJECT}/topics/agent-commands"
    # "never": the policy is set, with no ttl (an unset policy would mean the 31-day default).
    assert "expiration_policy" in found and not found.expiration_policy.ttl


def test_ensuring_again_changes_nothing_and_loses_no_command(fleet: AgentKey) -> None:
    agent_id = _agent()
    path = command_channels.ensure(agent_id)
    agent_commands.publish([_command(agent_id)])
    assert command_channels.ensure(agent_id) == path  # a redelivered registration
    got = _pull(path)
    assert len(got) == 1  # the command waiting on it was kept: the subscription was not re-made
    assert command_channels.subscriber().get_subscription(request={"subscription": path}).filter


def test_a_command_for_the_agent_arrives_signed_by_the_fleet(fleet: AgentKey) -> None:
    agent_id = _agent()
    path = command_channels.ensure(agent_id)
    sent = _command(agent_id, CommandType.RESUME)
    agent_commands.publish([sent])
    [message] = _pull(path)
    attributes = dict(message.attributes)
    assert attributes["agent_id"] == agent_id and attributes["sig_alg"] == "ed25519"
    assert attributes["sig_key_id"] == fleet.key_id
    assert verify_command(message.data, attributes, fleet.public_key) == sent
    # The body is still the plain command JSON: an SDK that predates signatures reads it.
    assert Command.model_validate_json(message.data) == sent
    # Another fleet's key (a stranger's) does not verify it.
    assert verify_command(message.data, attributes, AgentKey.generate().public_key) is None


def test_a_subscription_of_that_name_left_unfiltered_is_replaced(fleet: AgentKey) -> None:
    agent_id = _agent()
    client = command_channels.subscriber()
    path = command_channels.subscription_path(agent_id)
    client.create_subscription(request={"name": path, "topic": f"projects/{PROJECT}/topics/agent-commands"})
    assert client.get_subscription(request={"subscription": path}).filter == ""
    command_channels.ensure(agent_id)
    assert client.get_subscription(request={"subscription": path}).filter == f'attributes.agent_id = "{agent_id}"'


def test_no_fleet_key_means_no_command_is_sent(fleet: AgentKey, monkeypatch: pytest.MonkeyPatch) -> None:
    agent_id = _agent()
    path = command_channels.ensure(agent_id)
    monkeypatch.delenv("FLEET_COMMAND_KEY")
    fleet_key.reset()
    with pytest.raises(fleet_key.MissingFleetKey):
        agent_commands.publish([_command(agent_id), _command(agent_id)])
    assert _pull(path, timeout=3) == []


def test_a_principal_is_not_granted_under_the_emulator_and_must_be_one_identity(fleet: AgentKey) -> None:
    agent_id = _agent()
    # The emulator has no IAM: the grant is skipped (logged), the subscription is still made.
    assert command_channels.ensure(agent_id, "serviceAccount:agent-7@acme.iam.gserviceaccount.com")
    for member in ("allUsers", "allAuthenticatedUsers", "domain:acme.com", "principalSet://x/y", "bob"):
        with pytest.raises(ValueError, match="IAM member"):
            command_channels.ensure(agent_id, member)


def test_decommissioning_deletes_the_subscription_once(fleet: AgentKey) -> None:
    from google.api_core.exceptions import NotFound

    agent_id = _agent()
    path = command_channels.ensure(agent_id)
    assert command_channels.delete(agent_id) is True
    assert command_channels.delete(agent_id) is False  # idempotent
    with pytest.raises(NotFound):
        command_channels.subscriber().get_subscription(request={"subscription": path})


def test_where_the_emulator_ignores_the_filter_the_sdk_check_keeps_the_agent_to_its_own(fleet: AgentKey) -> None:
    """The emulator delivers every command on the topic to every subscription (Google Cloud would not): what
    an agent accepts is a command signed by the fleet for its own id, so another agent's is dropped."""
    mine, other = _agent(), _agent()
    path = command_channels.ensure(mine)
    agent_commands.publish([_command(other), _command(mine)])
    got = _pull(path, want=2, timeout=5)
    accepted = [
        command
        for message in got
        if (command := verify_command(message.data, dict(message.attributes), fleet.public_key)) is not None
        and command.agent_id == mine
    ]
    assert [c.agent_id for c in accepted] == [mine]
