"""shared/slack/web_api.py against the in-process fake Slack server, and the fake itself."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from emulators import fake_slack
from emulators.fake_slack import FakeSlack, channel_id, render
from emulators.stack import free_port
from shared.slack import web_api

TOKEN = "xoxb-test-token"


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeSlack]:
    with FakeSlack() as server:
        monkeypatch.setenv("SLACK_API_URL", server.url)
        monkeypatch.setenv("SLACK_BOT_TOKEN", TOKEN)
        web_api.reset()
        yield server
    web_api.reset()


def _http(method: str, url: str, body: Any = None, headers: dict[str, str] | None = None) -> tuple[int, Any, Any]:
    data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            return resp.status, json.loads(resp.read() or b"null"), resp.headers
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null"), exc.headers


# --- the adapter ---------------------------------------------------------------------------------


def test_post_by_name_answers_with_the_channel_id(fake: FakeSlack) -> None:
    posted = web_api.post("#fleet-alerts", "agent a1 is offline")
    assert posted.channel == channel_id("fleet-alerts")
    assert posted.channel.startswith("C") and posted.channel != "#fleet-alerts"
    (call,) = fake.calls("chat.postMessage")
    assert call["params"] == {"channel": "#fleet-alerts", "text": "agent a1 is offline"}
    assert call["response"]["ts"] == posted.ts
    assert "token" not in json.dumps(call)  # the token is never recorded


def test_post_update_and_thread_round_trip(fake: FakeSlack) -> None:
    blocks = [{"type": "section", "text": {"type": "mrkdwn", "text": "*a1* offline"}}]
    first = web_api.post("fleet-alerts", "a1 offline", blocks=blocks)
    reply = web_api.post(first.channel, "still offline", thread_ts=first.ts)
    web_api.update(first.channel, first.ts, "a1 back online", blocks=[])
    web_api.update("#fleet-alerts", first.ts, "a1 back online (by name)")
    assert reply.channel == first.channel
    assert float(reply.ts) > float(first.ts)
    updates = fake.calls("chat.update")
    assert [u["params"]["channel"] for u in updates] == [first.channel, first.channel]
    assert all(u["response"]["ok"] for u in updates)
    assert render(fake.calls()) == [
        "#fleet-alerts *a1* offline",
        "#fleet-alerts     ↳ still offline",
        "#fleet-alerts (edited) a1 back online",
        "#fleet-alerts (edited) a1 back online (by name)",
    ]
    assert web_api.stats()["ok"] == 4


def test_ts_values_increase_and_are_unique(fake: FakeSlack) -> None:
    stamps = [web_api.post("fleet-alerts", f"m{i}").ts for i in range(20)]
    assert len(set(stamps)) == 20
    assert stamps == sorted(stamps, key=float)
    seconds, _, micros = stamps[0].partition(".")
    assert len(seconds) == 10 and len(micros) == 6


def test_update_of_an_unknown_ts_is_refused(fake: FakeSlack) -> None:
    posted = web_api.post("fleet-alerts", "hello")
    with pytest.raises(web_api.SlackRefused) as caught:
        web_api.update(posted.channel, "1600000000.000001", "edit")
    assert caught.value.error == "message_not_found"
    assert web_api.stats()["refused"] == 1


def test_unknown_channel_id_is_refused(fake: FakeSlack) -> None:
    with pytest.raises(web_api.SlackRefused) as caught:
        web_api.post("C0000000000", "hello")
    assert caught.value.error == "channel_not_found"


def test_upload_round_trip(fake: FakeSlack) -> None:
    posted = web_api.post("#fleet-reports", "daily report")
    png = b"\x89PNG\r\n\x1a\n" + bytes(2048)
    web_api.upload("#fleet-reports", png, "spend.png", "Spend by tenant", comment="yesterday", thread_ts=posted.ts)
    methods = [c["method"] for c in fake.calls()]
    assert methods == ["chat.postMessage", "files.getUploadURLExternal", "_upload", "files.completeUploadExternal"]
    upload = fake.calls("_upload")[0]
    assert upload["params"]["size"] == len(png)
    complete = fake.calls("files.completeUploadExternal")[0]
    assert complete["params"]["channel_id"] == posted.channel  # an id: Slack refuses names here
    assert complete["params"]["thread_ts"] == posted.ts
    assert complete["response"]["files"][0]["size"] == len(png)
    assert render(fake.calls())[-1] == "#fleet-reports     ↳ [file spend.png: Spend by tenant, 2.0 KB] yesterday"


def test_upload_to_a_channel_never_posted_to_resolves_its_name(fake: FakeSlack) -> None:
    web_api.upload("fleet-reports", b"a,b\n1,2\n", "spend.csv", "Spend")
    assert fake.calls()[0]["method"] == "conversations.list"
    complete = fake.calls("files.completeUploadExternal")[0]
    assert complete["params"]["channel_id"] == channel_id("fleet-reports")


def test_upload_to_an_unknown_channel_name_is_refused(fake: FakeSlack) -> None:
    with pytest.raises(web_api.SlackRefused) as caught:
        web_api.upload("#no-such-channel", b"x", "x.txt", "x")
    assert caught.value.error == "channel_not_found"


def test_long_retry_after_is_handed_to_the_caller_without_sleeping(fake: FakeSlack) -> None:
    fake.fail(status=429, retry_after=30, count=1)
    started = time.monotonic()
    with pytest.raises(web_api.SlackUnavailable) as caught:
        web_api.post("fleet-alerts", "hello")
    assert time.monotonic() - started < 2
    assert caught.value.retry_after == 30
    assert [c["failed"] for c in fake.calls()] == [True]


def test_short_retry_after_is_retried_inline(fake: FakeSlack) -> None:
    fake.fail(status=429, retry_after=1, count=1)
    posted = web_api.post("fleet-alerts", "hello")
    assert posted.ts
    assert [(c["method"], c["failed"]) for c in fake.calls()] == [
        ("chat.postMessage", True),
        ("chat.postMessage", False),
    ]


def test_server_error_twice_is_unavailable(fake: FakeSlack) -> None:
    fake.fail(status=503, count=2)
    with pytest.raises(web_api.SlackUnavailable) as caught:
        web_api.post("fleet-alerts", "hello")
    assert caught.value.retry_after is None
    assert len(fake.calls()) == 2


def test_server_error_once_is_retried(fake: FakeSlack) -> None:
    fake.fail(status=500, count=1)
    web_api.post("fleet-alerts", "hello")
    assert [c["failed"] for c in fake.calls()] == [True, False]


def test_transient_error_with_http_200_is_unavailable(fake: FakeSlack) -> None:
    fake.fail(status=200, error="service_unavailable", count=1)
    with pytest.raises(web_api.SlackUnavailable):
        web_api.post("fleet-alerts", "hello")


def test_connection_refused_is_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLACK_API_URL", f"http://127.0.0.1:{free_port()}/api/")
    monkeypatch.setenv("SLACK_BOT_TOKEN", TOKEN)
    web_api.reset()
    try:
        with pytest.raises(web_api.SlackUnavailable):
            web_api.post("fleet-alerts", "hello")
    finally:
        web_api.reset()


def test_missing_token_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SLACK_BOT_TOKEN", raising=False)
    monkeypatch.delenv("FLEET_SECRETS_BACKEND", raising=False)
    web_api.reset()
    with pytest.raises(web_api.SlackRefused) as caught:
        web_api.post("fleet-alerts", "hello")
    assert caught.value.error == "not_configured"


def test_a_token_the_workspace_does_not_know_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    with FakeSlack(token="xoxb-the-right-one") as server:
        monkeypatch.setenv("SLACK_API_URL", server.url)
        monkeypatch.setenv("SLACK_BOT_TOKEN", "xoxb-a-wrong-one")
        web_api.reset()
        try:
            with pytest.raises(web_api.SlackRefused) as caught:
                web_api.post("fleet-alerts", "hello")
        finally:
            web_api.reset()
    assert caught.value.error == "invalid_auth"


def test_client_is_one_per_process(fake: FakeSlack) -> None:
    assert web_api.client() is web_api.client()


# --- the fake itself ------------------------------------------------------------------------------


def test_fake_requires_a_bot_token(fake: FakeSlack) -> None:
    status, body, _ = _http("POST", fake.url + "auth.test")
    assert (status, body) == (200, {"ok": False, "error": "not_authed"})
    status, body, _ = _http("POST", fake.url + "auth.test", headers={"Authorization": "Bearer xoxp-user"})
    assert body == {"ok": False, "error": "invalid_auth"}
    status, body, _ = _http("POST", fake.url + "auth.test", headers={"Authorization": f"Bearer {TOKEN}"})
    assert body["ok"] is True and body["user_id"]


def test_fake_accepts_form_and_json_bodies(fake: FakeSlack) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    form = b"channel=%23fleet-alerts&text=from+a+form&blocks=%5B%5D"
    _, by_form, _ = _http(
        "POST", fake.url + "chat.postMessage", form, {**auth, "Content-Type": "application/x-www-form-urlencoded"}
    )
    _, by_json, _ = _http(
        "POST",
        fake.url + "chat.postMessage",
        {"channel": "fleet-alerts", "text": "from json"},
        {**auth, "Content-Type": "application/json; charset=utf-8"},
    )
    assert by_form["ok"] and by_json["ok"]
    assert by_form["channel"] == by_json["channel"] == channel_id("fleet-alerts")
    assert by_form["message"]["text"] == "from a form"


def test_fake_control_endpoints(fake: FakeSlack) -> None:
    web_api.post("fleet-alerts", "one")
    web_api.update("fleet-alerts", web_api.post("fleet-alerts", "two").ts, "two!")
    calls = fake_slack.get_calls(fake.url)
    assert [c["method"] for c in calls] == ["chat.postMessage", "chat.postMessage", "chat.update"]
    assert [c["seq"] for c in calls] == [1, 2, 3]
    assert [c["method"] for c in fake_slack.get_calls(fake.url, "chat.update")] == ["chat.update"]
    assert {"method", "params", "time", "response", "failed"} <= set(calls[0])

    fake_slack.clear_calls(fake.url)
    assert fake_slack.get_calls(fake.root) == []

    fake_slack.fail_next(fake.url, status=503, count=3)
    auth = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    for _ in range(3):
        status, body, _ = _http("POST", fake.url + "auth.test", {}, auth)
        assert (status, body["ok"]) == (503, False)
    status, body, _ = _http("POST", fake.url + "auth.test", {}, auth)
    assert (status, body["ok"]) == (200, True)
    assert [c["failed"] for c in fake.calls()] == [True, True, True, False]

    status, body, headers = _http("POST", fake.root + "/_fail", {"status": 429, "retry_after": 7, "count": 5})
    assert status == 200
    status, body, headers = _http("POST", fake.url + "auth.test", {}, auth)
    assert (status, body, headers["Retry-After"]) == (429, {"ok": False, "error": "ratelimited"}, "7")
    _http("POST", fake.root + "/_fail", {"count": 0})
    status, body, _ = _http("POST", fake.url + "auth.test", {}, auth)
    assert status == 200 and body["ok"]

    status, _, _ = _http("DELETE", fake.root + "/_calls")
    assert status == 200 and fake.calls() == []


def test_fake_upload_requires_an_issued_file_and_a_channel_id(fake: FakeSlack) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    _, issued, _ = _http("POST", fake.url + "files.getUploadURLExternal", {"filename": "a.txt", "length": 3}, auth)
    assert issued["upload_url"].startswith(fake.root + "/_upload/")
    _, not_uploaded, _ = _http(
        "POST", fake.url + "files.completeUploadExternal", {"files": [{"id": issued["file_id"]}]}, auth
    )
    assert not_uploaded == {"ok": False, "error": "file_not_found"}
    with urllib.request.urlopen(urllib.request.Request(issued["upload_url"], data=b"abc", method="POST")) as resp:
        assert resp.read() == b"OK - 3"
    files = [{"id": issued["file_id"], "title": "A"}]
    _, by_name, _ = _http(
        "POST", fake.url + "files.completeUploadExternal", {"files": files, "channel_id": "#fleet-alerts"}, auth
    )
    assert by_name == {"ok": False, "error": "invalid_arguments"}
    cid = channel_id("fleet-alerts")
    _, done, _ = _http("POST", fake.url + "files.completeUploadExternal", {"files": files, "channel_id": cid}, auth)
    assert done["ok"] and done["files"][0]["channels"] == [cid]


def test_render_flattens_blocks_and_skips_failures() -> None:
    calls: list[dict[str, Any]] = [
        {
            "method": "chat.postMessage",
            "params": {"channel": "#fleet-alerts", "text": "fallback"},
            "response": {
                "ok": True,
                "channel": "C1",
                "ts": "1.000001",
                "message": {
                    "text": "fallback",
                    "blocks": [
                        {"type": "header", "text": {"type": "plain_text", "text": "Budget"}},
                        {"type": "section", "fields": [{"type": "mrkdwn", "text": "*acme*"}]},
                        {
                            "type": "actions",
                            "elements": [{"type": "button", "text": {"type": "plain_text", "text": "Ack"}}],
                        },
                    ],
                },
            },
            "channel": "C1",
            "channel_name": "fleet-alerts",
            "failed": False,
        },
        {"method": "chat.postMessage", "params": {"channel": "x", "text": "lost"}, "response": {"ok": False}},
        {"method": "auth.test", "params": {}, "response": {"ok": True}},
    ]
    assert render(calls) == ["#fleet-alerts Budget | *acme* | [Ack]"]


def test_the_control_endpoints_answer_under_the_web_api_base_url_too(fake: FakeSlack) -> None:
    web_api.post("#fleet-alerts", "hello")
    for url in (f"{fake.url}_calls", f"{fake.url}/_calls", f"{fake.root}/_calls"):  # {SLACK_API_URL}/_calls
        with urllib.request.urlopen(url, timeout=5) as reply:
            calls = json.loads(reply.read())
        assert [c["method"] for c in calls] == ["chat.postMessage"], url
