from __future__ import annotations

import ast
from pathlib import Path

import pytest

from shared.platform.topology import load, parse

ROOT = Path(__file__).resolve().parents[2]


def _entry_points() -> dict[str, str]:
    """Functions defined in functions/main.py and the signature their decorator declares."""
    tree = ast.parse((ROOT / "functions" / "main.py").read_text())
    found = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            for dec in node.decorator_list:
                if isinstance(dec, ast.Attribute) and dec.attr in ("cloud_event", "http"):
                    found[node.name] = "cloudevent" if dec.attr == "cloud_event" else "http"
    return found


def test_every_function_in_the_manifest_has_its_entry_point() -> None:
    entry_points = _entry_points()
    for fn in load().functions:
        assert entry_points.get(fn.entry_point) == fn.signature, fn.name


def test_each_subscription_pushes_its_topic_to_a_function_expecting_that_event() -> None:
    import functions.main as main

    topology = load()
    for sub in topology.subscriptions:
        topic = topology.topic(sub.topic)
        fn = topology.function(sub.push_to)
        if topic.event_type:
            assert main.EXPECTS[fn.entry_point].value == topic.event_type, sub.name
        if topic.dead_letter:
            assert fn.entry_point == "on_dead_letter", sub.name


def test_every_agent_topic_with_a_subscription_has_a_dead_letter_topic() -> None:
    topology = load().deployed()
    for sub in topology.subscriptions:
        topic = topology.topic(sub.topic)
        if not topic.dead_letter and not topic.tick:  # a lost tick is redone by the next run
            assert sub.dead_letter_topic, f"{sub.name} would drop messages that keep failing"


def test_deployed_topology_leaves_out_local_only_parts() -> None:
    deployed = load().deployed()
    assert "bench-baseline" not in {t.name for t in deployed.topics}
    assert "bench-baseline" not in {f.name for f in deployed.functions}


@pytest.mark.parametrize(
    "bad",
    [
        {"topics": [{"name": "ab"}]},
        {
            "topics": [{"name": "abc"}],
            "functions": [],
            "subscriptions": [{"name": "s1x", "topic": "abc", "push_to": "nope"}],
        },
    ],
)
def test_manifest_errors_are_refused(bad: dict) -> None:
    with pytest.raises(ValueError):
        parse(bad)


def test_unknown_agent_grace_ends_well_inside_the_retry_window() -> None:
    """A heartbeat for an unregistered agent must be rejected as unknown_agent, not dead-lettered."""
    from shared.platform import settings

    sub = next(s for s in load().subscriptions if s.name == "agent-heartbeats-push")
    window = sum(min(sub.min_backoff_s * 2**i, sub.max_backoff_s) for i in range(sub.max_delivery_attempts - 1))
    assert settings.get().unknown_agent_grace_s <= 0.5 * window


def test_the_fleet_key_is_read_by_exactly_the_functions_that_sign_commands_or_make_tokens() -> None:
    """Commands are signed by the fleet (shared/services/agent_commands.py), so every function that publishes
    to agent-commands needs the secret, and so do those making enrollment tokens (they carry the fleet's
    public key), and the one settling and relaunching jobs; no other function may read the fleet's private key."""
    from shared.platform import fleet_key

    topology = load().deployed()
    command_topic = topology.topic_for("command").name
    readers = {f.name for f in topology.functions if fleet_key.SECRET in f.secrets}
    signers = {f.name for f in topology.functions if command_topic in f.publishes}
    assert {"fleet-registrations", "fleet-costs", "fleet-api"} <= signers
    # fleet-jobs signs job settlements and derives the key of a job it relaunches.
    assert readers == signers | {"fleet-api", "fleet-slack", "fleet-jobs"}
    assert fleet_key.SECRET in {s.name for s in topology.secrets}
