"""The console's Alerts page without processes: the stores monkeypatched, the API's handlers called
in-process for real (roles, tenant scope, audit). The browser tests are tests/integration/test_console_alerts.py."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any
from urllib.parse import parse_qs, urlsplit

import flask
import pytest
from google.api_core.exceptions import AlreadyExists

from shared.console import alerts_page, api_calls, app, session
from shared.domain.api_keys import Role
from shared.domain.silences import Silence, snooze_id
from shared.store import agents as agent_store
from shared.store import api_keys
from shared.store import audit as audit_store
from shared.store import episodes as episode_store
from shared.store import silences as silence_store
from shared.store.api_keys import Principal

T0 = datetime(2026, 12, 6, 10, 0, tzinfo=UTC)
OPERATOR = Principal("00000000000000cc", "acme-operator", Role.OPERATOR, "acme")
VIEWER = Principal("00000000000000bb", "acme-viewer", Role.VIEWER, "acme")
TOKENS = {"operator-token": OPERATOR, "viewer-token": VIEWER}
APP = flask.Flask(__name__)
EPISODE_ID = "agent-a1.error_rate.1"


def _episode(**kw: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "id": EPISODE_ID,
        "rule": "error_rate",
        "severity": "warning",
        "state": "open",
        "tenant": "acme",
        "agent_id": "agent-a1",
        "summary": "<script>window.__xss=1</script> error rate 50%",
        "opened_at": T0,
    }
    row.update(kw)
    return row


@pytest.fixture
def world(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    state: dict[str, Any] = {
        "episodes": [_episode(), _episode(id="g.error_rate.1", tenant="globex", agent_id="agent-g1")],
        "audit": [],
        "silences": {},
    }

    def list_episodes(**kw: Any) -> list[dict[str, Any]]:
        wanted = {k: v for k, v in kw.items() if k != "limit" and v is not None}
        found = [e for e in state["episodes"] if all(e.get(k) == v for k, v in wanted.items())]
        return sorted(found, key=lambda e: e["opened_at"], reverse=True)[: kw.get("limit", 50)]

    def get(episode_id: str) -> dict[str, Any] | None:
        return next((e for e in state["episodes"] if e["id"] == episode_id), None)

    def acknowledge(episode_id: str, user: str, at: datetime, *, require_open: bool = False) -> str | None:
        found = get(episode_id)
        assert found is not None
        if require_open and found.get("state") != "open":
            raise episode_store.NotOpen(episode_id, found.get("state"))
        earlier = found.get("acknowledged_by")
        if earlier is None:
            found.update(acknowledged_by=user, acknowledged_at=at)
        return earlier

    def create_silence(silence: Silence) -> None:
        if silence.id in state["silences"]:
            raise AlreadyExists(f"silences/{silence.id}")
        state["silences"][silence.id] = silence

    agents = {"agent-a1": "acme", "agent-g1": "globex"}
    monkeypatch.setattr(episode_store, "list_episodes", list_episodes)
    monkeypatch.setattr(episode_store, "get", get)
    monkeypatch.setattr(episode_store, "acknowledge", acknowledge)
    monkeypatch.setattr(silence_store, "active", lambda now: list(state["silences"].values()))
    monkeypatch.setattr(silence_store, "get", lambda silence_id: state["silences"].get(silence_id))
    monkeypatch.setattr(silence_store, "create", create_silence)
    monkeypatch.setattr(
        agent_store,
        "get",
        lambda a: SimpleNamespace(agent_id=a, tenant=agents[a]) if a in agents else None,
    )
    monkeypatch.setattr(audit_store, "append", lambda entry: state["audit"].append(entry))
    monkeypatch.setattr(api_keys, "verify", lambda token: TOKENS.get(token))
    return state


def _call(path: str, token: str, method: str = "GET", data: dict[str, str] | None = None, **headers: str) -> Any:
    headers["Cookie"] = f"{session.COOKIE}={token}"
    with APP.test_request_context(path, method=method, base_url="http://127.0.0.1:8080", headers=headers, data=data):
        return app.handle(flask.request)


def _post(path: str, token: str, data: dict[str, str] | None = None) -> Any:
    return _call(path, token, "POST", data, **{"Sec-Fetch-Site": "same-origin"})


def _notice(response: Any) -> dict[str, str]:
    """The 303's target: /alerts and its query string (one value per key)."""
    assert response.status_code == 303
    target = urlsplit(response.headers["Location"])
    assert target.path == "/alerts" and not target.netloc
    return {k: v[0] for k, v in parse_qs(target.query).items()}


def _follow(response: Any, token: str) -> str:
    return str(_call(response.headers["Location"], token).get_data(as_text=True))


def _token(page: str) -> str:
    match = re.search(r'name="token" value="([0-9a-f]{32})"', page)
    assert match is not None, "each Snooze form carries the page's token"
    return match.group(1)


def test_the_page_lists_the_tenants_open_episodes_escaped(world: dict[str, Any]) -> None:
    response = _call("/alerts", "viewer-token")
    body = response.get_data(as_text=True)
    assert response.status_code == 200
    assert f'data-episode-id="{EPISODE_ID}"' in body and "g.error_rate.1" not in body
    assert "<script>window" not in body and "&lt;script&gt;window.__xss=1&lt;/script&gt;" in body
    assert f'action="/alerts/{EPISODE_ID}/ack"' in body and "No active silences." in body
    assert "Only the newest" not in body and 'id="alert-message"' not in body


def test_an_operator_acknowledges_and_is_sent_back_with_a_notice(world: dict[str, Any]) -> None:
    response = _post(f"/alerts/{EPISODE_ID}/ack", "operator-token")
    assert _notice(response) == {"notice": "acknowledged", "action": "ack", "episode": EPISODE_ID}
    assert world["episodes"][0]["acknowledged_by"] == "api:acme-operator"
    assert [(e.action, e.target) for e in world["audit"]] == [("alert.acknowledge", EPISODE_ID)]
    page = _follow(response, "operator-token")
    assert f'<p class="message" role="status" id="alert-message">Acknowledged {EPISODE_ID}.</p>' in page
    assert "api:acme-operator" in page and f'action="/alerts/{EPISODE_ID}/ack"' not in page


def test_a_viewer_is_refused_with_the_reason_and_audited(world: dict[str, Any]) -> None:
    response = _post(f"/alerts/{EPISODE_ID}/ack", "viewer-token")
    notice = _notice(response)
    assert notice["notice"] == "refused" and notice["reason"] == "role"
    assert world["episodes"][0].get("acknowledged_by") is None
    assert [(e.action, e.outcome) for e in world["audit"]] == [("api.acknowledge_alert", "refused")]
    page = _follow(response, "viewer-token")
    assert f"Could not acknowledge {EPISODE_ID}: your API key&#39;s role cannot do this" in page


def test_the_notice_in_the_query_string_carries_no_words_of_its_own(world: dict[str, Any]) -> None:
    """A crafted link cannot put text on the page: the reason is a code, the episode an episode id."""
    evil = "/alerts?notice=refused&action=ack&episode=x&reason=Your+key+expired%2C+sign+in+at+evil.example"
    page = _call(evil, "viewer-token").get_data(as_text=True)
    assert "evil.example" not in page and "Could not acknowledge x: the API could not do it just now" in page
    words = _call("/alerts?notice=acknowledged&action=ack&episode=sign+in+at+evil", "viewer-token")
    assert "evil" not in words.get_data(as_text=True)
    unknown = _call("/alerts?notice=%3Cb%3Ehi&action=ack&episode=x", "viewer-token").get_data(as_text=True)
    assert 'id="alert-message"' not in unknown and "<b>hi" not in unknown


def test_a_resolved_episode_is_not_acknowledged(world: dict[str, Any]) -> None:
    world["episodes"][0]["state"] = "resolved"
    notice = _notice(_post(f"/alerts/{EPISODE_ID}/ack", "operator-token"))
    assert notice["notice"] == "refused" and notice["reason"] == "not_open"
    assert world["episodes"][0].get("acknowledged_by") is None and world["audit"] == []


def test_another_tenants_episode_is_not_found_and_cross_site_posts_are_refused(world: dict[str, Any]) -> None:
    for action in ("ack", "snooze"):
        notice = _notice(_post(f"/alerts/g.error_rate.1/{action}", "operator-token"))
        assert notice["notice"] == "refused" and notice["reason"] == "not_found"
    assert world["episodes"][1].get("acknowledged_by") is None and world["silences"] == {}
    crossed = _call(f"/alerts/{EPISODE_ID}/ack", "operator-token", "POST", **{"Sec-Fetch-Site": "cross-site"})
    assert crossed.status_code == 403 and world["episodes"][0].get("acknowledged_by") is None


def _many(world: dict[str, Any], count: int) -> None:
    """``count`` newer open episodes of acme, so the first one is the oldest."""
    world["episodes"] += [
        _episode(id=f"agent-a1.saturation.{n}", rule="saturation", opened_at=T0 + timedelta(minutes=n + 1))
        for n in range(count)
    ]


def test_snooze_finds_an_episode_older_than_the_newest_hundred(world: dict[str, Any]) -> None:
    _many(world, alerts_page.LIMIT)
    page = _call("/alerts", "operator-token").get_data(as_text=True)
    assert f'data-episode-id="{EPISODE_ID}"' not in page
    assert f"Only the newest {alerts_page.LIMIT} open alerts are listed" in page
    response = _post(f"/alerts/{EPISODE_ID}/snooze", "operator-token", {"token": _token(page)})
    assert _notice(response) == {"notice": "snoozed", "action": "snooze", "episode": EPISODE_ID}
    [silence] = world["silences"].values()
    assert (silence.agent_id, silence.tenant, silence.rule) == ("agent-a1", "acme", "error_rate")
    assert silence.expires_at - silence.starts_at == timedelta(seconds=alerts_page.SNOOZE_S)
    assert [(e.action, e.target) for e in world["audit"]] == [("silence.create", silence.id)]
    assert f"Snoozed {EPISODE_ID} for 60 minutes." in _follow(response, "operator-token")


def test_a_double_submit_of_one_snooze_form_is_one_silence(world: dict[str, Any]) -> None:
    token = _token(_call("/alerts", "operator-token").get_data(as_text=True))
    for _ in range(2):
        assert _notice(_post(f"/alerts/{EPISODE_ID}/snooze", "operator-token", {"token": token}))["notice"] == "snoozed"
    expected = snooze_id(f"console.snooze.{token}", EPISODE_ID)
    assert list(world["silences"]) == [expected]
    assert [e.action for e in world["audit"]] == ["silence.create"]
    # A fresh page (a new token) is a new snooze.
    fresh = _token(_call("/alerts", "operator-token").get_data(as_text=True))
    assert fresh != token
    _post(f"/alerts/{EPISODE_ID}/snooze", "operator-token", {"token": fresh})
    assert len(world["silences"]) == 2


def test_a_viewer_cannot_snooze(world: dict[str, Any]) -> None:
    notice = _notice(_post(f"/alerts/{EPISODE_ID}/snooze", "viewer-token", {"token": "0" * 32}))
    assert notice["notice"] == "refused" and notice["reason"] == "role" and world["silences"] == {}
    assert [(e.action, e.outcome) for e in world["audit"]] == [("api.create_silence", "refused")]


def test_a_resolved_episode_is_not_snoozed(world: dict[str, Any]) -> None:
    world["episodes"][0]["state"] = "resolved"
    notice = _notice(_post(f"/alerts/{EPISODE_ID}/snooze", "operator-token", {"token": "0" * 32}))
    assert notice["reason"] == "not_open" and world["silences"] == {}


def _api(method: str, path: str, token: str, body: dict[str, Any] | None = None) -> api_calls.Answer:
    with APP.test_request_context("/alerts", headers={"Cookie": f"{session.COOKIE}={token}"}):
        return api_calls.call_api(flask.request, method, path, body)


def test_get_one_alert_by_id_is_tenant_scoped(world: dict[str, Any]) -> None:
    world["episodes"][0]["state"] = "resolved"
    found = _api("GET", f"/v1/alerts/{EPISODE_ID}", "viewer-token")
    assert found.status == 200 and (found.body["id"], found.body["state"]) == (EPISODE_ID, "resolved")
    assert _api("GET", "/v1/alerts/g.error_rate.1", "viewer-token").status == 404
    assert _api("GET", "/v1/alerts/nope.1", "viewer-token").status == 404
    assert _api("GET", "/v1/alerts/bad%20id", "viewer-token").status == 404


def test_a_silence_id_chosen_by_the_client_is_idempotent_and_not_shared(world: dict[str, Any]) -> None:
    body = {"id": "sil-00000000000000aa", "agent_id": "agent-a1", "duration_s": 600, "reason": "r"}
    first = _api("POST", "/v1/silences", "operator-token", body)
    again = _api("POST", "/v1/silences", "operator-token", body)
    assert first.ok and again.ok and first.body == again.body and len(world["silences"]) == 1
    assert [e.action for e in world["audit"]] == ["silence.create"]
    other = _api("POST", "/v1/silences", "operator-token", {**body, "rule": "liveness"})
    assert other.status == 409 and "taken" in other.reason
    world["silences"]["sil-00000000000000bb"] = world["silences"]["sil-00000000000000aa"].model_copy(
        update={"id": "sil-00000000000000bb", "tenant": "globex", "agent_id": "agent-g1"}
    )
    theirs = _api("POST", "/v1/silences", "operator-token", {**body, "id": "sil-00000000000000bb"})
    assert theirs.status == 409 and len(world["silences"]) == 2
    assert _api("POST", "/v1/silences", "operator-token", {**body, "id": "mine"}).status == 400


def test_a_concurrent_repeat_of_a_chosen_id_returns_the_silence_made_first(
    world: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both requests read "no such silence"; the second's create fails (AlreadyExists) and it answers the first's."""
    now = datetime.now(UTC)
    first = Silence(
        id="sil-00000000000000cc",
        agent_id="agent-a1",
        tenant="acme",
        reason="first",
        created_by="api:acme-operator",
        created_at=now,
        starts_at=now,
        expires_at=now + timedelta(hours=1),
    )
    reads = iter([None, first])
    monkeypatch.setattr(silence_store, "get", lambda silence_id: next(reads))
    world["silences"][first.id] = first
    body = {"id": first.id, "agent_id": "agent-a1", "duration_s": 600, "reason": "second"}
    answer = _api("POST", "/v1/silences", "operator-token", body)
    assert answer.status == 200 and answer.body["reason"] == "first" and world["audit"] == []


def test_a_repeat_of_a_snooze_that_has_ended_is_refused_not_reported_done(world: dict[str, Any]) -> None:
    body = {"id": "sil-00000000000000dd", "agent_id": "agent-a1", "duration_s": 600, "reason": "r"}
    assert _api("POST", "/v1/silences", "operator-token", body).ok
    silence = world["silences"][body["id"]]
    world["silences"][body["id"]] = silence.model_copy(update={"ended_at": silence.created_at})
    again = _api("POST", "/v1/silences", "operator-token", body)
    assert again.status == 409 and "has ended" in again.reason and len(world["silences"]) == 1


def test_ids_firestore_refuses_are_not_found_not_errors(world: dict[str, Any]) -> None:
    for bad in ("..", ".", "__x__"):
        assert _api("GET", f"/v1/alerts/{bad}", "viewer-token").status == 404, bad
