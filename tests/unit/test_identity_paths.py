"""Signatures on each event path (heartbeat, cost batch, approval request, job progress), refusals that
touch nothing, replay, the cost marker outliving the implausible-time window, and rejections that keep no
enrollment token secret."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from fleet_agent.contracts import CostBatch, EventType, Heartbeat, encode
from fleet_agent.identity import AgentKey, EnrollmentToken

from shared.domain import identity
from shared.domain.agent_record import AgentRecord
from shared.domain.identity import IdentityConfig, Policy
from shared.domain.pricing import PriceTable
from shared.domain.rejections import Code, Rejected
from shared.ml import live
from shared.pipeline import handlers
from shared.pipeline.decoding import Decoded, PushedMessage, decode
from shared.services import accounting, forged_events
from shared.store import agents as agent_store
from shared.store import config, rejections
from shared.store import usage as usage_store
from shared.store.config import TenantConfig

NOW = datetime.now(UTC).replace(microsecond=0)


def agent(key: AgentKey | None) -> AgentRecord:
    ident = identity.bind(None, key.public_key, token_id="t", at=NOW - timedelta(days=1)) if key else {}
    return AgentRecord(agent_id="chat-1", tenant="acme", name="Chat", agent_type="llm", version="1.0.0",
                       owner="ann@acme.com", status_since=NOW, registered_at=NOW, last_registered_at=NOW,
                       last_seq=5, identity=ident)  # fmt: skip


def decoded(event: Any, signer: AgentKey | None, *, tenant: str = "acme", raw: bytes | None = None,
            attributes: dict[str, str] | None = None, at: datetime = NOW) -> Decoded:  # fmt: skip
    body, attrs = encode(event, signer=signer, tenant=tenant if signer else None)
    message = PushedMessage("m-1", at, raw if raw is not None else body, {**attrs, **(attributes or {})})
    return decode(message, EventType(attrs["event_type"]))


def heartbeat(seq: int) -> Heartbeat:
    return Heartbeat(agent_id="chat-1", seq=seq, sent_at=NOW, status="busy", metrics={"cpu_pct": 10.0})


def batch(at: datetime = NOW, batch_id: str = "batch-0001") -> CostBatch:
    record = {"call_id": "call-0001", "at": at, "model": "gpt-4o", "input_tokens": 10, "output_tokens": 5,
              "cost_usd": Decimal("0.01"), "success": True, "latency_ms": 100.0, "operation": "chat"}  # fmt: skip
    return CostBatch.model_validate({"agent_id": "chat-1", "batch_id": batch_id, "records": [record]})


@pytest.fixture
def store(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """The agent as stored (``state["agent"]``), its writes recorded; no counting happens unless allowed."""
    state: dict[str, Any] = {"agent": None, "writes": [], "reads": 0, "counted": []}

    def read(agent_id: str) -> agent_store.Snapshot | None:
        state["reads"] += 1
        return agent_store.Snapshot(state["agent"], "t") if state["agent"] else None

    def commit(agent_id: str, snap: Any, plan: Any, token: Any = None) -> None:
        state["writes"].append(plan)

    def counted(tally: Any, **kw: Any) -> Any:
        state["counted"].append(tally)
        raise _Counted

    monkeypatch.setattr(agent_store, "read", read)
    monkeypatch.setattr(agent_store, "_commit", commit)
    monkeypatch.setattr(agent_store, "current", lambda agent_id, max_age_s: read(agent_id))
    monkeypatch.setattr(usage_store, "apply", counted)
    monkeypatch.setattr(config, "tenant", lambda name: TenantConfig(name, None, None, {}, {}))
    monkeypatch.setattr(config, "table_for", lambda tenant: PriceTable({}))
    monkeypatch.setattr(accounting, "read_inputs", lambda *a, **k: None)
    monkeypatch.setattr(config, "rules", lambda name: (None, None))
    monkeypatch.setattr(config, "identity", lambda name: IdentityConfig(policy=Policy.REQUIRED))
    monkeypatch.setattr(live, "for_heartbeats", lambda: None)
    agent_store.cache.drop("chat-1")
    yield state
    agent_store.cache.drop("chat-1")


class _Counted(Exception):
    """Raised by the fake usage store: the batch reached the count."""


def test_a_signed_heartbeat_is_accepted_and_a_replayed_one_is_an_old_seq(store: dict[str, Any]) -> None:
    """Why a replayed heartbeat changes nothing: the signature covers ``seq``, and a seq not above the
    stored ``last_seq`` is stale."""
    key = AgentKey.generate()
    store["agent"] = agent(key)
    plan = handlers.process_heartbeat(decoded(heartbeat(6), key))
    assert plan.changes["last_seq"] == 6 and len(store["writes"]) == 1
    store["agent"] = store["agent"].model_copy(update=plan.changes)
    agent_store.cache.drop("chat-1")
    assert handlers.process_heartbeat(decoded(heartbeat(6), key)).skipped == "stale"
    assert len(store["writes"]) == 1


@pytest.mark.parametrize("forger", ["stranger", "tampered", "unsigned", "other_tenant"])
def test_a_forged_heartbeat_touches_nothing(store: dict[str, Any], forger: str) -> None:
    key = AgentKey.generate()
    store["agent"] = agent(key)
    event = heartbeat(99)
    if forger == "stranger":
        d = decoded(event, AgentKey.generate())
    elif forger == "tampered":
        body = json.loads(encode(event, signer=key, tenant="acme")[0])
        body["data"]["metrics"]["cpu_pct"] = 99.0
        d = decoded(event, key, raw=json.dumps(body).encode())
    elif forger == "unsigned":
        d = decoded(event, None)
    else:
        d = decoded(event, key, tenant="globex")
    with pytest.raises(Rejected) as refused:
        handlers.process_heartbeat(d)
    assert refused.value.unproven and refused.value.agent_id == "chat-1" and refused.value.tenant == "acme"
    assert store["writes"] == []


def test_a_heartbeat_of_an_agent_without_a_key_follows_the_policy(
    store: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    store["agent"] = agent(None)
    with pytest.raises(Rejected) as refused:
        handlers.process_heartbeat(decoded(heartbeat(6), None))
    assert refused.value.code is Code.UNSIGNED
    monkeypatch.setattr(config, "identity", lambda name: IdentityConfig(policy=Policy.OPTIONAL))
    assert handlers.process_heartbeat(decoded(heartbeat(6), None)).changes["last_seq"] == 6


def test_a_revoked_key_is_refused_after_a_fresh_read_even_when_the_cache_still_accepts_it(
    store: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cached copy still has the key; the acceptance's write fails its precondition (the fake
    commit below), the agent is read again, and the heartbeat is refused there."""
    key = AgentKey.generate()
    cached = agent(key)
    store["agent"] = cached.model_copy(update={"identity": identity.revoke(cached.identity, at=NOW, by="x")})
    agent_store.cache.put("chat-1", agent_store.Snapshot(cached, "t0"))
    from google.api_core.exceptions import FailedPrecondition

    def conflict_once(agent_id: str, snap: Any, plan: Any, token: Any = None) -> None:
        if snap.update_time == "t0":
            raise FailedPrecondition("changed")
        store["writes"].append(plan)

    monkeypatch.setattr(agent_store, "_commit", conflict_once)
    with pytest.raises(Rejected) as refused:
        handlers.process_heartbeat(decoded(heartbeat(6), key))
    assert refused.value.code is Code.REVOKED_KEY and store["writes"] == []


def test_a_cost_batch_is_checked_before_anything_is_counted(store: dict[str, Any]) -> None:
    key = AgentKey.generate()
    store["agent"] = agent(key)
    for forged in (decoded(batch(), AgentKey.generate()), decoded(batch(), None)):
        with pytest.raises(Rejected) as refused:
            accounting.process_cost(forged, unknown=lambda *a: AssertionError("known"))
        assert refused.value.unproven
    assert store["counted"] == []
    with pytest.raises(_Counted):
        accounting.process_cost(decoded(batch(), key), unknown=lambda *a: AssertionError("known"))


def test_a_cost_refusal_on_a_cached_agent_is_confirmed_on_a_fresh_read(
    store: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another instance rotated the agent's key: this one's cached copy knows only the old key; the
    new key's batch is counted after a fresh read, not refused."""
    old, new = AgentKey.generate(), AgentKey.generate()
    cached = agent(old)
    store["agent"] = cached.model_copy(update={"identity": identity.rotate(cached.identity, new.public_key, at=NOW,
                                                                           overlap=timedelta(minutes=10))})  # fmt: skip
    monkeypatch.setattr(agent_store, "current", lambda agent_id, max_age_s: agent_store.Snapshot(cached, "t0", 0.0))
    with pytest.raises(_Counted):
        accounting.process_cost(decoded(batch(), new), unknown=lambda *a: AssertionError("known"))
    assert store["reads"] == 1


def test_the_cost_marker_outlives_the_implausible_time_window() -> None:
    """Why a replayed cost batch is never counted twice (accounting.marker_retention): while its marker
    lives it is a duplicate; once the marker may be gone, the batch is judged implausible."""
    for days in (0, 1, 14, 365):
        retention = accounting.marker_retention(days)
        assert retention > accounting.replay_window(days) + accounting.MAX_BEHIND + accounting.MAX_AHEAD
        received = NOW
        calls_at = received + accounting.MAX_AHEAD  # the latest calls an accepted batch may have
        replayed_at = received + retention  # the marker may be gone from here on
        attrs = {"first_published_at": (replayed_at - accounting.replay_window(days)).isoformat()}
        judged = accounting._first_published(attrs, replayed_at, days)
        with pytest.raises(Rejected) as refused:
            accounting._check_times(batch(at=calls_at), judged)
        assert refused.value.code is Code.IMPLAUSIBLE_TIME


def test_a_first_published_at_older_than_the_replay_window_is_not_believed() -> None:
    long_ago = NOW - timedelta(days=30)
    attrs = {"first_published_at": long_ago.isoformat()}
    assert accounting._first_published(attrs, NOW, 14) == NOW
    recent = NOW - timedelta(days=2)
    assert accounting._first_published({"first_published_at": recent.isoformat()}, NOW, 14) == recent


def test_the_stored_marker_retention_is_the_one_checked(monkeypatch: pytest.MonkeyPatch, store: dict[str, Any]) -> None:
    key = AgentKey.generate()
    store["agent"] = agent(key)
    seen: dict[str, Any] = {}

    def apply(tally: Any, **kw: Any) -> Any:
        seen.update(kw)
        raise _Counted

    monkeypatch.setattr(usage_store, "apply", apply)
    with pytest.raises(_Counted):
        accounting.process_cost(decoded(batch(), key), unknown=lambda *a: AssertionError("known"))
    from shared.platform import settings

    assert seen["marker_retention"] == accounting.marker_retention(settings.get().retention_days)


def test_a_rejected_registration_keeps_no_token_secret_and_unproven_ones_are_noted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    recorded: list[Any] = []
    noted: list[Rejected] = []
    monkeypatch.setattr(rejections, "record", lambda rejected, **kw: recorded.append(kw["payload"]))
    monkeypatch.setattr(forged_events, "note", lambda rejected, at: noted.append(rejected))
    text = EnrollmentToken.new(AgentKey.generate().public_key)
    body = {"event_id": "e-12345678", "data": {"agent_id": "chat-1", "identity": {"enrollment_token": str(text)}},
            "note": f"again {text}"}  # fmt: skip
    message = PushedMessage("m", NOW, json.dumps(body).encode(), {"agent_id": "chat-1"})
    refused = Rejected(Code.TOKEN_EXPIRED, "expired", agent_id="chat-1", tenant="acme")
    handlers.record_rejection(refused, message, "registration")
    kept = recorded[0].text
    assert text.secret not in kept and text.token_id in kept
    assert noted == [refused]
    handlers.record_rejection(Rejected(Code.SCHEMA_VIOLATION, "x"), message, "registration")
    assert len(noted) == 1  # a proven agent's rejection is not a forgery
    garbled = PushedMessage("m", NOW, b'{"enrollment_token": "' + str(text).encode() + b'" oops', {})
    handlers.record_rejection(refused, garbled, "registration")
    assert text.secret not in recorded[-1].text
