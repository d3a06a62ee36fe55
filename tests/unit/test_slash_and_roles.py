"""The /fleet grammar and the role checks (pure)."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest

from shared.domain import roles, slash
from shared.domain.api_keys import Role
from shared.domain.roles import Action


def test_words_become_a_command_with_its_arguments_and_reason() -> None:
    parsed = slash.parse("pause agent-7 too chatty today")
    assert (parsed.name, parsed.args, parsed.rest) == ("pause", ("agent-7",), "too chatty today")
    assert slash.parse("").name == "help"
    assert slash.parse("AGENTS acme suspended").args == ("acme", "suspended")
    silence = slash.parse("silence acme 2h deploy window")
    assert (silence.args, silence.rest) == (("acme", "2h"), "deploy window")


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("reboot everything", "unknown command"),
        ("pause", "/fleet pause <agent> [reason]"),
        ("quarantine agent-7", "/fleet quarantine <agent> <reason>"),
        ("usage", "/fleet usage <agent|tenant>"),
        ("status a b", "too many words"),
        ("silence agent-7", "/fleet silence"),
    ],
)
def test_a_wrong_or_incomplete_command_says_how_to_write_it(text: str, says: str) -> None:
    with pytest.raises(slash.Usage) as raised:
        slash.parse(text)
    message = str(raised.value) + (f" /fleet {raised.value.spec.usage}" if raised.value.spec else "")
    assert says in message


def test_durations_and_amounts() -> None:
    assert slash.duration("90m") == timedelta(minutes=90)
    assert slash.duration("1h30m") == timedelta(hours=1, minutes=30)
    assert slash.duration("2d") == timedelta(days=2)
    for bad in ("", "0m", "31d", "forever", "5s", "-1h"):
        with pytest.raises(slash.Usage):
            slash.duration(bad)
    assert slash.usd("$1,250.50") == Decimal("1250.50")
    for bad in ("0", "-5", "ten", "NaN", "Infinity"):
        with pytest.raises(slash.Usage):
            slash.usd(bad)


def test_every_command_is_in_the_help() -> None:
    text = "\n".join(slash.help_lines())
    for name in slash.SPECS:
        assert f"/fleet {name}" in text


def test_mentions_and_user_ids_parse_and_anything_else_does_not() -> None:
    assert roles.parse_user("<@U012ABC|ann>") == "U012ABC"
    assert roles.parse_user("<@W012ABC>") == "W012ABC"
    assert roles.parse_user("U012ABC") == "U012ABC"
    for bad in ("@ann", "ann", "<#C012ABC|ops>", "u012abc", ""):
        assert roles.parse_user(bad) is None


def test_each_role_includes_the_ones_below_it() -> None:
    mine = {"acme": "operator", "globex": "admin", "bad": "superuser"}
    assert roles.role_of(mine, "acme") is Role.OPERATOR and roles.role_of(mine, "initech") is None
    assert roles.role_of(mine, "bad") is None  # an unknown stored value grants nothing
    assert roles.allows(Role.OPERATOR, Action.PAUSE) and roles.allows(Role.OPERATOR, Action.SILENCE)
    assert not roles.allows(Role.OPERATOR, Action.DECIDE) and not roles.allows(Role.VIEWER, Action.PAUSE)
    assert roles.allows(Role.APPROVER, Action.RELEASE) and not roles.allows(Role.APPROVER, Action.BUDGET)
    assert roles.allows(Role.ADMIN, Action.ROLES) and not roles.allows(None, Action.READ)
    assert "operator role in acme" in roles.refusal(Role.VIEWER, Action.PAUSE, "acme")


def test_train_takes_options_and_names_the_accepted_ones() -> None:
    parsed = slash.parse("train agent-1 nightly gpu=1 gpu_type=nvidia-l4 spot hours=2 priority=8")
    assert parsed.name == "train" and parsed.args[:2] == ("agent-1", "nightly")
    options = slash.train_options(parsed.args[2:])
    assert options == {"gpu": "1", "gpu_type": "nvidia-l4", "spot": "yes", "hours": "2", "priority": "8"}
    with pytest.raises(slash.Usage) as unknown:
        slash.train_options(("gpus=2",))
    assert "unknown option `gpus`" in str(unknown.value) and "gpu_type" in str(unknown.value)
    with pytest.raises(slash.Usage):
        slash.train_options(("priority",))
    with pytest.raises(slash.Usage):
        slash.parse("train agent-1")


def test_cancel_takes_a_reason_and_training_needs_an_operator() -> None:
    parsed = slash.parse("cancel j-0123456789 wrong data set")
    assert parsed.args == ("j-0123456789",) and parsed.rest == "wrong data set"
    assert roles.allows(Role.OPERATOR, roles.Action.TRAIN)
    assert not roles.allows(Role.VIEWER, roles.Action.TRAIN)
