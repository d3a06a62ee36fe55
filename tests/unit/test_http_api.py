"""The REST API without processes: flask test request contexts, store functions monkeypatched."""

from __future__ import annotations

import json
import logging
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import flask
import pytest
from google.api_core.exceptions import ServiceUnavailable

from shared.api import core, router
from shared.domain.agent_record import AgentRecord
from shared.domain.api_keys import Role
from shared.domain.lifecycle import State
from shared.platform import logs, metering
from shared.store import agents as agent_store
from shared.store import api_keys
from shared.store import audit as audit_store
from shared.store import rejections as rejection_store
from shared.store.api_keys import Principal

T0 = datetime(2026, 11, 21, 10, 0, tzinfo=UTC)
ADMIN_TOKEN = "afm_00000000000000aa_" + "a" * 43
ACME_TOKEN = "afm_00000000000000bb_" + "b" * 43
PRINCIPALS = {
    ADMIN_TOKEN: Principal("00000000000000aa", "admin", Role.ADMIN, None),
    ACME_TOKEN: Principal("00000000000000bb", "acme-viewer", Role.VIEWER, "acme"),
}
APP = flask.Flask(__name__)


def record(agent_id: str, tenant: str, status: State = State.ACTIVE) -> AgentRecord:
    return AgentRecord(
        agent_id=agent_id,
        tenant=tenant,
        name=agent_id.upper(),
        agent_type="llm",
        version="1.0.0",
        owner="team",
        status=status,
        status_since=T0,
        registered_at=T0,
        last_registered_at=T0,
        last_heartbeat_at=T0 + timedelta(seconds=30),
        last_seq=4,
        registration_event_ids=["ev-00000001"],
        recent={
            "s03": {
                "seq": 4,
                "at": T0.isoformat(),
                "sent_at": T0.isoformat(),
                "status": "active",
                "metrics": {"cpu_pct": 12.5, "active_tasks": 3},
            }
        },
        versions=["1.0.0"],
    )


AGENTS = {
    a.agent_id: a
    for a in (
        record("agent-a1", "acme"),
        record("agent-a2", "acme", State.IDLE),
        record("agent-a3", "acme"),
        record("agent-g1", "globex"),
    )
}
REJECTIONS: list[dict[str, Any]] = [
    {
        "id": str(900 - i),
        "code": "schema_violation" if i % 2 else "unknown_agent",
        "reason": "bad",
        "details": [{"loc": ["seq"]}],
        "agent_id": "agent-a1" if i < 3 else "agent-g1",
        "event_type": "heartbeat",
        "source": "//pubsub/agent-heartbeats-push",
        "payload": {"size": 2, "sha256": "00", "truncated": False, "attributes": {}, "text": "{}"},
        "received_at": T0 - timedelta(minutes=i),
        "expire_at": T0 + timedelta(days=14),
    }
    for i in range(5)
]


class Calls:
    """What the fake store was asked (to check the filters the API forced)."""

    def __init__(self) -> None:
        self.list_agents: list[dict[str, Any]] = []
        self.list_rejections: list[dict[str, Any]] = []
        self.gets: list[str] = []


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> Calls:
    seen = Calls()

    def get(agent_id: str) -> AgentRecord | None:
        seen.gets.append(agent_id)
        metering.count(reads=1)
        return AGENTS.get(agent_id)

    def list_agents(
        *, tenant: str | None, status: str | None, page_size: int, after: str | None
    ) -> tuple[list[AgentRecord], str | None]:
        seen.list_agents.append({"tenant": tenant, "status": status, "page_size": page_size, "after": after})
        rows = [
            a
            for _, a in sorted(AGENTS.items())
            if (tenant is None or a.tenant == tenant)
            and (status is None or a.status == status)
            and (after is None or a.agent_id > after)
        ]
        metering.count(reads=max(1, min(len(rows), page_size + 1)))
        page = rows[:page_size]
        return page, (page[-1].agent_id if len(rows) > page_size else None)

    def list_page(
        *, agent_id: str | None, code: str | None, page_size: int, after: str | None
    ) -> tuple[list[dict[str, Any]], str | None]:
        seen.list_rejections.append({"agent_id": agent_id, "code": code, "page_size": page_size, "after": after})
        rows = [r for r in REJECTIONS if (agent_id is None or r["agent_id"] == agent_id)]
        rows = [r for r in rows if code is None or r["code"] == code]
        if after is not None:
            ids = [r["id"] for r in rows]
            rows = rows[ids.index(after) + 1 :] if after in ids else rows
        page = rows[:page_size]
        return page, (page[-1]["id"] if len(rows) > page_size else None)

    def history(agent_id: str, limit: int | None = None) -> list[dict[str, Any]]:
        return [
            {"seq": s, "at": T0 + timedelta(seconds=s), "sent_at": T0, "status": "busy", "metrics": {"x": s}}
            for s in (1, 2, 3)
        ]

    monkeypatch.setattr(api_keys, "verify", PRINCIPALS.get)
    monkeypatch.setattr(agent_store, "get", get)
    monkeypatch.setattr(agent_store, "list_agents", list_agents)
    monkeypatch.setattr(agent_store, "history", history)
    monkeypatch.setattr(rejection_store, "list_page", list_page)
    return seen


class Reply:
    def __init__(self, response: flask.Response) -> None:
        self.status = response.status_code
        self.headers = response.headers
        self.text = response.get_data(as_text=True)
        self.json: Any = json.loads(self.text)


def call(
    path: str,
    *,
    token: str | None = ADMIN_TOKEN,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    **query: Any,
) -> Reply:
    sent = dict(headers or {})
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    with APP.test_request_context(path, method=method, headers=sent, query_string=query):
        return Reply(router.handle(flask.request))


@pytest.fixture
def log_lines() -> Any:
    """The JSON lines the API logs, rendered by the real formatter (redaction included)."""
    lines: list[dict[str, Any]] = []
    formatter = logs.JsonFormatter()

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(json.loads(formatter.format(record)))

    handler = Collect()
    logger = logging.getLogger("fleet.api")
    logger.addHandler(handler)
    yield lines
    logger.removeHandler(handler)


def assert_error(reply: Reply, status: int, code: str) -> None:
    assert reply.status == status, reply.text
    assert reply.headers["Content-Type"] == "application/json"
    assert set(reply.json) == {"error"} and set(reply.json["error"]) == {"code", "reason"}
    assert reply.json["error"]["code"] == code and reply.json["error"]["reason"]


# --- public routes ---------------------------------------------------------------------------


def test_healthz_needs_no_key_and_no_firestore(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(token: str) -> None:
        raise AssertionError("healthz must not verify keys")

    monkeypatch.setattr(api_keys, "verify", boom)
    reply = call("/healthz", token=None)
    assert reply.status == 200 and reply.json == {"status": "ok"}


def test_openapi_lists_every_route_and_resolves_every_ref() -> None:
    reply = call("/openapi.json", token=None)
    assert reply.status == 200
    spec = reply.json
    assert spec["openapi"] == "3.1.0"
    served = {
        (re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"{\1}", rule.rule), method.lower())
        for rule in router.URL_MAP.iter_rules()
        for method in rule.methods or ()
        if method != "HEAD"
    }
    documented = {(path, method) for path, item in spec["paths"].items() for method in item}
    assert (
        documented
        == served
        == {
            ("/healthz", "get"),
            ("/openapi.json", "get"),
            ("/v1/agents", "get"),
            ("/v1/agents/{agent_id}", "get"),
            ("/v1/agents/{agent_id}/history", "get"),
            ("/v1/agents/{agent_id}", "patch"),
            ("/v1/agents/{agent_id}/quarantine", "post"),
            ("/v1/agents/{agent_id}/decommission", "post"),
            ("/v1/agents/bulk", "post"),
            ("/v1/tenants/{tenant}/enrollment-tokens", "get"),
            ("/v1/tenants/{tenant}/enrollment-tokens", "post"),
            ("/v1/tenants/{tenant}/enrollment-tokens/{token_id}", "get"),
            ("/v1/tenants/{tenant}/enrollment-tokens/{token_id}/revoke", "post"),
            ("/v1/agents/{agent_id}/keys/revoke", "post"),
            ("/v1/tenants/{tenant}/identity", "get"),
            ("/v1/tenants/{tenant}/identity", "put"),
            ("/v1/models", "get"),
            ("/v1/tasks/assign", "post"),
            ("/v1/tasks/{task_id}", "get"),
            ("/v1/tasks/{task_id}/outcome", "post"),
            ("/v1/tenants/{tenant}/tasks", "get"),
            ("/v1/tenants/{tenant}/tasks", "put"),
            ("/v1/rejections", "get"),
            ("/v1/agents/{agent_id}/usage", "get"),
            ("/v1/agents/{agent_id}/budget", "get"),
            ("/v1/agents/{agent_id}/budget", "put"),
            ("/v1/agents/{agent_id}/budget", "delete"),
            ("/v1/agents/{agent_id}/protection", "get"),
            ("/v1/agents/{agent_id}/protection", "put"),
            ("/v1/agents/{agent_id}/pause", "post"),
            ("/v1/agents/{agent_id}/resume", "post"),
            ("/v1/agents/{agent_id}/commands", "get"),
            ("/v1/agents/{agent_id}/commands", "post"),
            ("/v1/tenants/{tenant}/usage", "get"),
            ("/v1/tenants/{tenant}/budget", "get"),
            ("/v1/tenants/{tenant}/budget", "put"),
            ("/v1/tenants/{tenant}/budget", "delete"),
            ("/v1/tenants/{tenant}/protection", "get"),
            ("/v1/tenants/{tenant}/protection", "put"),
            ("/v1/prices", "get"),
            ("/v1/prices/{model}", "get"),
            ("/v1/prices/{model}", "put"),
            ("/v1/alerts", "get"),
            ("/v1/alerts/{episode_id}", "get"),
            ("/v1/alerts/{episode_id}/acknowledge", "post"),
            ("/v1/silences", "get"),
            ("/v1/silences", "post"),
            ("/v1/silences/{silence_id}", "delete"),
            ("/v1/agents/{agent_id}/release", "post"),
            ("/v1/tenants/{tenant}/alerting", "get"),
            ("/v1/tenants/{tenant}/alerting", "put"),
            ("/v1/tenants/{tenant}/health", "get"),
            ("/v1/tenants/{tenant}/health", "put"),
            ("/v1/tenants/{tenant}/remediation", "get"),
            ("/v1/tenants/{tenant}/remediation", "put"),
            ("/v1/reports/hourly", "get"),
            ("/v1/reports/daily", "get"),
            ("/v1/approvals", "get"),
            ("/v1/approvals", "post"),
            ("/v1/approvals/{approval_id}", "get"),
            ("/v1/tenants/{tenant}/roles", "get"),
            ("/v1/tenants/{tenant}/roles", "put"),
            ("/v1/audit", "get"),
            ("/v1/jobs", "get"),
            ("/v1/jobs", "post"),
            ("/v1/jobs/{job_id}", "get"),
            ("/v1/jobs/{job_id}/cancel", "post"),
            ("/v1/tenants/{tenant}/jobs", "get"),
            ("/v1/tenants/{tenant}/jobs", "put"),
            ("/metrics", "get"),
        }
    )
    assert spec["components"]["securitySchemes"]["bearerAuth"] == {
        **spec["components"]["securitySchemes"]["bearerAuth"],
        "type": "http",
        "scheme": "bearer",
    }
    operation_ids = [op["operationId"] for item in spec["paths"].values() for op in item.values()]
    assert len(operation_ids) == len(set(operation_ids))
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            public = path in ("/healthz", "/openapi.json")
            assert operation["security"] == ([] if public else [{"bearerAuth": []}])
            assert {"201" if operation["operationId"].startswith("create_enrollment") else "200", "405", "500"} <= set(
                operation["responses"]
            )
            if not public:
                assert {"401", "403", "503"} <= set(operation["responses"])
            for name in re.findall(r"{([^}]+)}", path):
                assert {"name": name, "in": "path"}.items() <= next(
                    p for p in operation["parameters"] if p["name"] == name
                ).items()
            # Writes take a JSON body and may refuse it; reads take none.
            assert ("requestBody" in operation) == (method in ("put", "post", "patch"))
            if method in ("put", "post", "patch"):
                assert "400" in operation["responses"]
                assert operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    names = {p["name"] for p in spec["paths"]["/v1/agents"]["get"]["parameters"]}
    assert names == {"tenant", "status", "page_size", "page_token", "limit"} | {
        "capability",
        "label",
        "version",
        "liveness",
        "min_security",
        "max_security",
    }

    def resolve(ref: str) -> Any:
        node: Any = spec
        for part in ref.removeprefix("#/").split("/"):
            node = node[part]
        return node

    refs = re.findall(r'"\$ref": "([^"]+)"', json.dumps(spec))
    assert refs and all(ref.startswith("#/components/") for ref in refs)
    for ref in refs:
        assert resolve(ref)
    assert "$defs" not in json.dumps(spec)


# --- authentication --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({}, "missing"),
        ({"Authorization": "Basic dXNlcjpwYXNz"}, "Bearer <API key>"),
        ({"Authorization": "Bearer "}, "Bearer <API key>"),
        ({"Authorization": "Bearer afm_0000000000000000_" + "x" * 43}, "invalid or revoked"),
        ({"Authorization": "Bearer garbage"}, "invalid or revoked"),
    ],
)
def test_requests_without_a_valid_key_are_401(
    calls: Calls, log_lines: list[dict[str, Any]], headers: dict[str, str], reason: str
) -> None:
    reply = call("/v1/agents", token=None, headers=headers)
    assert_error(reply, 401, "unauthorized")
    assert reason in reply.json["error"]["reason"]
    assert reply.headers["WWW-Authenticate"].startswith("Bearer")
    assert calls.list_agents == []
    logged = json.dumps(log_lines)
    for secret in ("x" * 43, "garbage", "dXNlcjpwYXNz"):
        assert secret not in logged and secret not in reply.text


def test_a_valid_key_is_never_logged_nor_echoed(calls: Calls, log_lines: list[dict[str, Any]]) -> None:
    reply = call("/v1/agents/agent-a1")
    assert reply.status == 200
    assert ADMIN_TOKEN not in json.dumps(log_lines) and ADMIN_TOKEN not in reply.text


# --- agents ----------------------------------------------------------------------------------


def test_get_agent_shows_the_view_with_rfc3339_times(calls: Calls) -> None:
    reply = call("/v1/agents/agent-a1")
    assert reply.status == 200
    view = reply.json
    assert view["agent_id"] == "agent-a1" and view["tenant"] == "acme" and view["status"] == "active"
    assert view["registered_at"] == "2026-11-21T10:00:00Z"
    assert view["last_heartbeat_at"] == "2026-11-21T10:00:30Z"
    assert view["metrics"] == {"cpu_pct": 12.5, "active_tasks": 3}
    assert view["versions"] == ["1.0.0"] and view["last_seq"] == 4
    # Internal bookkeeping stays internal.
    assert not {"recent", "registration_event_ids", "status_changes", "history_chunks"} & set(view)


def test_unknown_agent_is_404(calls: Calls) -> None:
    assert_error(call("/v1/agents/no-such-agent"), 404, "not_found")
    assert_error(call("/v1/agents/no-such-agent/history"), 404, "not_found")


def test_an_impossible_agent_id_is_404_without_a_read(calls: Calls) -> None:
    assert_error(call("/v1/agents/Not%20An%20Id"), 404, "not_found")
    assert calls.gets == []


def test_unknown_route_is_404_json(calls: Calls) -> None:
    assert_error(call("/v2/agents"), 404, "not_found")
    assert_error(call("/", token=None), 404, "not_found")


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/agents"),
        ("DELETE", "/v1/agents/agent-a1"),
        ("PUT", "/healthz"),
        ("PATCH", "/v1/rejections"),
    ],
)
def test_other_methods_are_405(calls: Calls, method: str, path: str) -> None:
    reply = call(path, method=method)
    assert_error(reply, 405, "method_not_allowed")
    assert "GET" in reply.headers["Allow"]


def test_history_is_served_for_a_visible_agent(calls: Calls) -> None:
    reply = call("/v1/agents/agent-a1/history", token=ACME_TOKEN)
    assert reply.status == 200
    assert reply.json["agent_id"] == "agent-a1"
    assert [s["seq"] for s in reply.json["samples"]] == [1, 2, 3]
    assert reply.json["samples"][0]["at"] == "2026-11-21T10:00:01Z"


@pytest.mark.parametrize("page_size", ["0", "501", "abc", "-1", "1.5", "+5", " 5"])
def test_bad_page_size_is_400(calls: Calls, page_size: str) -> None:
    reply = call("/v1/agents", page_size=page_size)
    assert_error(reply, 400, "bad_request")
    assert "page_size" in reply.json["error"]["reason"]
    assert calls.list_agents == []


@pytest.mark.parametrize(
    "token",
    [
        "!!!",
        "YWdlbnQtYTE=",  # padded: not what the API hands out
        core.encode_page_token("Not An Id"),  # decodes, but to something that is no agent id
        "_w",  # not UTF-8
        "a",  # impossible length
    ],
)
def test_bad_page_token_is_400(calls: Calls, token: str) -> None:
    reply = call("/v1/agents", page_token=token)
    assert_error(reply, 400, "bad_request")
    assert "page_token" in reply.json["error"]["reason"]


def test_bad_status_or_tenant_filter_is_400(calls: Calls) -> None:
    reply = call("/v1/agents", status="sleeping")
    assert_error(reply, 400, "bad_request")
    assert "active" in reply.json["error"]["reason"]  # it lists the valid states
    assert_error(call("/v1/agents", tenant="Not A Tenant"), 400, "bad_request")


def test_listing_filters_by_status_and_defaults_the_page_size(calls: Calls) -> None:
    reply = call("/v1/agents", status="idle")
    assert reply.status == 200
    assert [a["agent_id"] for a in reply.json["items"]] == ["agent-a2"]
    assert calls.list_agents == [{"tenant": None, "status": "idle", "page_size": 50, "after": None}]
    assert reply.json["next_page_token"] is None


def test_pagination_token_round_trip(calls: Calls) -> None:
    seen: list[str] = []
    token: str | None = None
    pages = 0
    while True:
        query: dict[str, Any] = {"page_size": 2, **({"page_token": token} if token else {})}
        reply = call("/v1/agents", **query)
        assert reply.status == 200
        seen += [a["agent_id"] for a in reply.json["items"]]
        token = reply.json["next_page_token"]
        pages += 1
        if token is None:
            break
        assert "agent-" not in token  # opaque, not the raw id
    assert seen == sorted(AGENTS) and pages == 2
    assert [c["after"] for c in calls.list_agents] == [None, "agent-a2"]


@pytest.mark.parametrize("value", ["agent-a1", "1234567890123456", "x", "ünïcode-id"])
def test_page_tokens_decode_to_what_they_encode(value: str) -> None:
    token = core.encode_page_token(value)
    assert re.fullmatch(r"[A-Za-z0-9_-]+", token)
    assert core.decode_page_token(token, lambda _: True) == value


# --- tenant scope ----------------------------------------------------------------------------


def test_a_tenant_key_lists_only_its_tenant(calls: Calls) -> None:
    reply = call("/v1/agents", token=ACME_TOKEN)
    assert reply.status == 200
    assert {a["tenant"] for a in reply.json["items"]} == {"acme"}
    assert calls.list_agents[-1]["tenant"] == "acme"
    assert call("/v1/agents", token=ACME_TOKEN, tenant="acme").status == 200
    assert_error(call("/v1/agents", token=ACME_TOKEN, tenant="globex"), 403, "forbidden")


def test_a_tenant_key_gets_404_for_another_tenants_agent(calls: Calls) -> None:
    other = call("/v1/agents/agent-g1", token=ACME_TOKEN)
    missing = call("/v1/agents/agent-zz", token=ACME_TOKEN)
    assert_error(other, 404, "not_found")
    # Same answer as for an agent that does not exist: existence is not leaked.
    assert other.json["error"]["reason"].replace("agent-g1", "X") == missing.json["error"]["reason"].replace(
        "agent-zz", "X"
    )
    assert_error(call("/v1/agents/agent-g1/history", token=ACME_TOKEN), 404, "not_found")
    assert call("/v1/agents/agent-g1").status == 200  # an all-tenant key sees it


def test_a_tenant_key_sees_rejections_only_of_its_own_agents(calls: Calls) -> None:
    assert_error(call("/v1/rejections", token=ACME_TOKEN), 403, "forbidden")
    assert_error(call("/v1/rejections", token=ACME_TOKEN, agent_id="agent-g1"), 403, "forbidden")
    assert_error(call("/v1/rejections", token=ACME_TOKEN, agent_id="agent-zz"), 403, "forbidden")
    assert calls.list_rejections == []
    reply = call("/v1/rejections", token=ACME_TOKEN, agent_id="agent-a1")
    assert reply.status == 200
    assert {r["agent_id"] for r in reply.json["items"]} == {"agent-a1"}


# --- rejections ------------------------------------------------------------------------------


def test_rejections_are_listed_and_paginated(calls: Calls) -> None:
    first = call("/v1/rejections", page_size=3)
    assert first.status == 200
    items = first.json["items"]
    assert [r["id"] for r in items] == ["900", "899", "898"]
    assert items[0]["received_at"] == "2026-11-21T10:00:00Z"
    assert "expire_at" not in items[0]
    assert items[0]["payload"]["sha256"] == "00"
    second = call("/v1/rejections", page_size=3, page_token=first.json["next_page_token"])
    assert [r["id"] for r in second.json["items"]] == ["897", "896"]
    assert second.json["next_page_token"] is None
    assert calls.list_rejections[-1]["after"] == "898"


def test_rejection_filters_are_validated(calls: Calls) -> None:
    assert_error(call("/v1/rejections", code="nope"), 400, "bad_request")
    assert_error(call("/v1/rejections", agent_id="Bad Id"), 400, "bad_request")
    assert_error(call("/v1/rejections", page_size="0"), 400, "bad_request")
    assert_error(call("/v1/rejections", page_token="***"), 400, "bad_request")
    reply = call("/v1/rejections", code="unknown_agent")
    assert reply.status == 200 and {r["code"] for r in reply.json["items"]} == {"unknown_agent"}


# --- failures --------------------------------------------------------------------------------


def test_unexpected_errors_are_500_without_the_stack_trace(
    calls: Calls, monkeypatch: pytest.MonkeyPatch, log_lines: list[dict[str, Any]]
) -> None:
    def broken(agent_id: str) -> None:
        raise RuntimeError("internal detail the caller must not see")

    monkeypatch.setattr(agent_store, "get", broken)
    reply = call("/v1/agents/agent-a1")
    assert_error(reply, 500, "internal")
    assert "Traceback" not in reply.text and "internal detail" not in reply.text
    request_id = reply.headers["X-Request-Id"]
    assert request_id in reply.json["error"]["reason"]
    [line] = [line for line in log_lines if line.get("request_id") == request_id]
    assert line["severity"] == "ERROR" and line["status"] == 500
    assert "Traceback" in line["exception"] and "internal detail" in line["error"]


def test_transient_firestore_errors_are_503_with_retry_after(calls: Calls, monkeypatch: pytest.MonkeyPatch) -> None:
    def unavailable(**kwargs: Any) -> None:
        raise ServiceUnavailable("firestore is down")

    monkeypatch.setattr(agent_store, "list_agents", unavailable)
    reply = call("/v1/agents")
    assert_error(reply, 503, "unavailable")
    assert reply.headers["Retry-After"] == "1"


def test_key_verification_hitting_a_transient_error_is_503(monkeypatch: pytest.MonkeyPatch) -> None:
    def unavailable(token: str) -> None:
        raise ServiceUnavailable("firestore is down")

    monkeypatch.setattr(api_keys, "verify", unavailable)
    assert_error(call("/v1/agents"), 503, "unavailable")


def test_one_log_line_per_request_with_cost_and_timing(calls: Calls, log_lines: list[dict[str, Any]]) -> None:
    reply = call("/v1/agents/agent-a1", headers={"X-Cloud-Trace-Context": "0123456789abcdef0123456789abcdef/1;o=1"})
    assert reply.headers["X-Request-Id"] == "0123456789abcdef0123456789abcdef"
    [line] = log_lines
    assert line["method"] == "GET" and line["path"] == "/v1/agents/agent-a1" and line["status"] == 200
    assert line["firestore_reads"] == 1 and line["firestore_writes"] == 0
    assert isinstance(line["duration_ms"], float | int)
    assert line["key_id"] == "00000000000000aa" and line["endpoint"] == "get_agent"
    assert line["logging.googleapis.com/trace"].endswith("/traces/0123456789abcdef0123456789abcdef")


def test_audit_before_out_of_range_is_a_400_not_a_500(calls: Calls, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[datetime | None] = []

    def list_entries(**kwargs: Any) -> list[dict[str, Any]]:
        seen.append(kwargs["before"])
        return []

    monkeypatch.setattr(audit_store, "list_entries", list_entries)
    for before in ("0001-01-01T00:00:00+05:00", "9999-12-31T23:59:59-05:00", "not a time"):
        assert_error(call("/v1/audit", before=before), 400, "bad_request")
    assert seen == []
    assert call("/v1/audit", before="2026-11-21T10:00:00+01:00").status == 200
    assert seen == [datetime(2026, 11, 21, 9, 0, tzinfo=UTC)]


def test_serve_within_answers_as_handle_with_no_line_or_meter_of_its_own(
    calls: Calls, log_lines: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The console's in-process calls: the caller's one log line counts the reads the API made for it."""

    def get(agent_id: str) -> AgentRecord:
        metering.count(reads=1)
        return record(agent_id, "acme")

    monkeypatch.setattr(agent_store, "get", get)
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    with metering.metered() as meter, APP.test_request_context("/v1/agents/agent-a1", headers=auth):
        reply = Reply(router.serve_within(flask.request, "req-1"))
    assert reply.status == 200 and reply.json["agent_id"] == "agent-a1"
    assert reply.headers["X-Request-Id"] == "req-1"
    assert meter.reads == 1 and log_lines == []
    with APP.test_request_context("/v1/agents/agent-a1", headers={"Authorization": "Bearer nope"}):
        refused = Reply(router.serve_within(flask.request, "req-2"))
    assert_error(refused, 401, "unauthorized")
