"""Who acknowledged an alert, as Slack shows it (``/fleet alerts`` and the Acknowledge button's "already"
note): a Slack user id is a mention, an acknowledgement through the API or the console (``api:<key name>``)
is plain escaped text, never a broken ``<@api:...>`` mention nor a live ``<!channel>``."""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest

from shared.domain import notices
from shared.domain.api_keys import Role
from shared.slack import buttons, commands_alerts, web_api
from shared.slack.command_context import Asker
from shared.store import episodes as episode_store
from shared.store import roles as role_store
from shared.store import slack_requests

T0 = datetime(2026, 12, 6, 10, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("who", "shown"),
    [
        ("U0ANN123", "<@U0ANN123>"),
        ("W0ENT42", "<@W0ENT42>"),
        ("api:acme-operator", "api:acme-operator"),
        ("api:<!channel> & co", "api:&lt;!channel&gt; &amp; co"),
        ("U0ANN123\n", "U0ANN123\n"),
        ("u0lower", "u0lower"),
    ],
)
def test_person_mentions_slack_users_only(who: str, shown: str) -> None:
    assert buttons.person(who) == shown


def _row(acknowledged_by: str | None) -> dict[str, Any]:
    return {
        "id": f"a.web-7.error_rate.{acknowledged_by}",
        "rule": "error_rate",
        "severity": "warning",
        "tenant": "acme",
        "agent_id": "web-7",
        "opened_at": T0,
        "acknowledged_by": acknowledged_by,
    }


def test_fleet_alerts_lists_api_acknowledgements_as_text(monkeypatch: pytest.MonkeyPatch) -> None:
    rows = [_row("api:acme-ops<x>"), _row("U0ANN123"), _row(None)]
    monkeypatch.setattr(episode_store, "list_episodes", lambda **kw: rows)
    asker = Asker(user_id="U0BOB", user_name="bob", now=T0, request_id="r1", roles={"acme": "viewer"})
    reply = commands_alerts.COMMANDS["alerts"](asker, SimpleNamespace(args=()))  # type: ignore[arg-type]
    first, second, third = reply.lines
    assert first.endswith(" · acknowledged by api:acme-ops&lt;x&gt;") and "<@api" not in first
    assert second.endswith(" · acknowledged by <@U0ANN123>")
    assert "acknowledged" not in third


@pytest.mark.parametrize(
    ("earlier", "said"),
    [
        ("api:acme-operator", "Already acknowledged by api:acme-operator."),
        ("U0ANN123", "Already acknowledged by <@U0ANN123>."),
    ],
)
def test_the_button_says_who_acknowledged_first(monkeypatch: pytest.MonkeyPatch, earlier: str, said: str) -> None:
    told: list[str] = []
    episode = {"id": "a.web-7.error_rate.1", "tenant": "acme", "state": "open", "rule": "error_rate"}
    monkeypatch.setattr(episode_store, "get", lambda episode_id: episode)
    monkeypatch.setattr(episode_store, "acknowledge", lambda *a, **kw: earlier)
    monkeypatch.setattr(role_store, "role_in", lambda user, tenant: Role.OPERATOR)
    monkeypatch.setattr(slack_requests, "begin", lambda key, now: slack_requests.Claim("new", None))
    monkeypatch.setattr(slack_requests, "finish", lambda key, reply: None)
    monkeypatch.setattr(slack_requests, "abandon", lambda key: None)
    monkeypatch.setattr(web_api, "ephemeral", lambda channel, user, text: told.append(text))
    click = buttons.Click(
        action_id=notices.ACK,
        value="a.web-7.error_rate.1",
        user_id="U0BOB",
        user_names=("bob",),
        channel="C1",
        message_ts="",
        message_blocks=[],
        message_text="",
        trigger_id="t1",
    )
    buttons.on_alert(click, T0)
    assert told == [said]
