"""Signed telemetry at ingest: the signed bytes from the decode path, the registration's key decision
(enrollment, rotation, policy, replay) and the store's rule that a refusal on a cached copy is confirmed."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fleet_agent.contracts import EventType, Registration, encode
from fleet_agent.identity import AgentKey, EnrollmentToken, verify

from shared.domain import agents as agent_domain
from shared.domain import enrollment, identity, registration_keys
from shared.domain.agent_record import AgentRecord, Plan
from shared.domain.identity import Policy
from shared.domain.rejections import Code, Rejected
from shared.pipeline.decoding import Decoded, PushedMessage, decode
from shared.store import agents as agent_store

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
FLEET = AgentKey.generate().public_key


def reg(agent_id: str = "chat-1", *, key: AgentKey | None = None, token: str | None = None, **kw: Any) -> Registration:
    data: dict[str, Any] = {
        "agent_id": agent_id,
        "tenant": "acme",
        "name": "Chat",
        "agent_type": "llm",
        "version": "1.0.0",
        "owner": "ann@acme.com",
        "sent_at": NOW - timedelta(seconds=1),
    }
    if key is not None:
        data["identity"] = {"public_key": key.public_key, "enrollment_token": token}
    data.update(kw)
    return Registration.model_validate(data)


def decoded(event: Any, *, signer: AgentKey | None = None, tenant: str = "acme", event_id: str | None = None,
            at: datetime = NOW, raw: bytes | None = None) -> Decoded:  # fmt: skip
    body, attrs = encode(event, signer=signer, tenant=tenant if signer else None, event_id=event_id)
    message = PushedMessage("m-1", at, raw if raw is not None else body, attrs)
    return decode(message, EventType(attrs["event_type"]))


def stored_token(text: EnrollmentToken, **kw: Any) -> enrollment.EnrollmentToken:
    data: dict[str, Any] = {
        "token_id": text.token_id,
        "tenant": "acme",
        "secret_sha256": text.secret_sha256,
        "max_uses": 2,
        "expires_at": NOW + timedelta(days=1),
        "created_at": NOW - timedelta(days=1),
        "created_by": "api:ann",
    }
    data.update(kw)
    return enrollment.EnrollmentToken.model_validate(data)


def keys_of(d: Decoded, current: AgentRecord | None, *, token: enrollment.EnrollmentToken | None = None,
            read: bool = True, policy: Policy = Policy.REQUIRED) -> registration_keys.KeyDecision:  # fmt: skip
    proof = registration_keys.Proof(d.signature, d.signed_bytes, token=token, token_read=read)
    tenant = current.tenant if current else d.registration.tenant
    stored = current.identity if current else None
    return registration_keys.decide(stored, tenant, d.registration, proof, policy=policy, received_at=NOW,
                                    event_id=d.event_id)  # fmt: skip


def apply(d: Decoded, current: AgentRecord | None, **kw: Any) -> Plan:
    keys = keys_of(d, current, **kw)
    return agent_domain.apply_registration(current, d.registration, event_id=d.event_id, received_at=NOW, keys=keys)


def enrolled(key: AgentKey, agent_id: str = "chat-1") -> AgentRecord:
    text = EnrollmentToken.new(FLEET)
    plan = apply(decoded(reg(agent_id, key=key, token=str(text)), signer=key), None, token=stored_token(text))
    assert plan.create is not None
    return plan.create


# --- the signed bytes -------------------------------------------------------------------------------


def test_the_decode_path_gives_the_bytes_the_agent_signed_and_a_tampered_body_verifies_no_more() -> None:
    key = AgentKey.generate()
    d = decoded(reg(), signer=key)
    assert d.signature is not None
    assert verify(key.public_key, d.signature, d.signed_bytes("acme")())
    assert not verify(key.public_key, d.signature, d.signed_bytes("other")())  # tenant is covered
    body = json.loads(encode(reg(), signer=key, event_id=d.event_id)[0])
    body["data"]["owner"] = "mallory@evil.com"
    tampered = decoded(reg(), signer=key, event_id=d.event_id, raw=json.dumps(body).encode())
    assert tampered.signature == d.signature
    assert not verify(key.public_key, d.signature, tampered.signed_bytes("acme")())


def test_the_signed_bytes_are_data_as_received_not_the_models_reserialisation() -> None:
    key = AgentKey.generate()
    event = reg()
    body, attrs = encode(event, signer=key, tenant="acme")
    spaced = json.dumps(json.loads(body), indent=2, sort_keys=False).encode()  # same JSON value, other bytes
    d = decode(PushedMessage("m", NOW, spaced, attrs), EventType.REGISTRATION)
    assert d.signature is not None and verify(key.public_key, d.signature, d.signed_bytes("acme")())


# --- enrollment -------------------------------------------------------------------------------------


def test_an_enrollment_binds_the_key_consumes_one_use_and_audits_it_without_the_secret() -> None:
    key, text = AgentKey.generate(), EnrollmentToken.new(FLEET)
    d = decoded(reg(key=key, token=str(text)), signer=key)
    with pytest.raises(registration_keys.NeedsToken) as needed:
        keys_of(d, None, read=False)
    assert needed.value.token_id == text.token_id
    plan = apply(d, None, token=stored_token(text))
    assert plan.create is not None
    ident = identity.AgentIdentity.of(plan.create.identity)
    assert ident.current is not None and ident.current.public_key == key.public_key
    assert ident.token_id == text.token_id and ident.registration_sent_at == d.registration.sent_at
    assert plan.token_use == {"uses": 1, "used_by": ["chat-1"]}
    (use,) = [a for a in plan.audit if a.action == "enrollment.use"]
    assert use.details["token_id"] == text.token_id and text.secret not in json.dumps(use.details)


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"secret_sha256": "0" * 64}, Code.TOKEN_UNKNOWN),
        ({"expires_at": NOW - timedelta(seconds=1)}, Code.TOKEN_EXPIRED),
        ({"uses": 2}, Code.TOKEN_USED_UP),
        ({"revoked_at": NOW - timedelta(hours=1)}, Code.TOKEN_REVOKED),
        ({"agent_prefix": "batch-"}, Code.TOKEN_OUT_OF_SCOPE),
        ({"tenant": "globex"}, Code.TOKEN_OUT_OF_SCOPE),
    ],
)
def test_a_token_refused_binds_nothing(change: dict[str, Any], code: Code) -> None:
    key, text = AgentKey.generate(), EnrollmentToken.new(FLEET)
    d = decoded(reg(key=key, token=str(text)), signer=key)
    with pytest.raises(Rejected) as refused:
        apply(d, None, token=stored_token(text, **change))
    assert refused.value.code is code and refused.value.unproven and refused.value.tenant == "acme"


def test_an_unknown_token_and_a_malformed_one_are_refused_as_unknown() -> None:
    key, text = AgentKey.generate(), EnrollmentToken.new(FLEET)
    with pytest.raises(Rejected) as unknown:
        apply(decoded(reg(key=key, token=str(text)), signer=key), None, token=None)
    assert unknown.value.code is Code.TOKEN_UNKNOWN
    with pytest.raises(Rejected) as malformed:
        apply(decoded(reg(key=key, token="afmt1.nope"), signer=key), None, read=False)
    assert malformed.value.code is Code.TOKEN_UNKNOWN


def test_an_enrollment_must_be_signed_by_the_key_it_enrolls() -> None:
    key, other, text = AgentKey.generate(), AgentKey.generate(), EnrollmentToken.new(FLEET)
    for signer in (other, None):
        with pytest.raises(Rejected) as refused:
            apply(decoded(reg(key=key, token=str(text)), signer=signer), None, token=stored_token(text))
        assert refused.value.code is Code.BAD_SIGNATURE


def test_a_revoked_agent_enrolls_again_with_a_new_token() -> None:
    old, new, text = AgentKey.generate(), AgentKey.generate(), EnrollmentToken.new(FLEET)
    agent = enrolled(old)
    agent = agent.model_copy(update={"identity": identity.revoke(agent.identity, at=NOW, by="api:ann")})
    with pytest.raises(Rejected) as revoked:
        apply(decoded(reg(sent_at=NOW), signer=old), agent)
    assert revoked.value.code is Code.REVOKED_KEY
    plan = apply(decoded(reg(key=new, token=str(text), sent_at=NOW), signer=new), agent, token=stored_token(text))
    assert plan.token_use is not None
    assert identity.AgentIdentity.of(plan.changes["identity"]).current.public_key == new.public_key  # type: ignore[union-attr]


def test_enrolling_again_with_the_revoked_key_is_refused_before_a_token_use_is_read_or_spent() -> None:
    old, text = AgentKey.generate(), EnrollmentToken.new(FLEET)
    agent = enrolled(old)
    agent = agent.model_copy(update={"identity": identity.revoke(agent.identity, at=NOW, by="api:ann")})
    with pytest.raises(Rejected) as refused:  # before the token is read (no NeedsToken): nothing consumed
        keys_of(decoded(reg(key=old, token=str(text), sent_at=NOW), signer=old), agent, read=False)
    assert refused.value.code is Code.REVOKED_KEY and refused.value.unproven


# --- agents with a key ------------------------------------------------------------------------------


def test_a_registration_of_an_agent_with_a_key_must_be_signed_by_it_under_any_policy() -> None:
    key, stranger = AgentKey.generate(), AgentKey.generate()
    agent = enrolled(key)
    for signer, code in ((None, Code.UNSIGNED), (stranger, Code.UNKNOWN_KEY)):
        with pytest.raises(Rejected) as refused:
            apply(decoded(reg(sent_at=NOW), signer=signer), agent, policy=Policy.OPTIONAL)
        assert refused.value.code is code


def test_a_registration_signed_with_another_tenant_never_moves_the_agent() -> None:
    key = AgentKey.generate()
    agent = enrolled(key)
    with pytest.raises(Rejected) as refused:  # signed over globex: not the bytes of an acme agent
        apply(decoded(reg(tenant="globex", sent_at=NOW), signer=key, tenant="globex"), agent)
    assert refused.value.code is Code.BAD_SIGNATURE
    with pytest.raises(Rejected) as conflict:  # signed over acme, but claiming globex
        apply(decoded(reg(tenant="globex", sent_at=NOW), signer=key, tenant="acme"), agent)
    assert conflict.value.code is Code.TENANT_CONFLICT


def test_a_rotation_is_signed_by_the_current_key_and_keeps_the_old_one_for_the_overlap() -> None:
    old, new = AgentKey.generate(), AgentKey.generate()
    agent = enrolled(old)
    plan = apply(decoded(reg(key=new, sent_at=NOW), signer=old), agent)
    ident = identity.AgentIdentity.of(plan.changes["identity"])
    assert [k.public_key for k in ident.keys] == [new.public_key, old.public_key]
    assert ident.keys[1].valid_until == NOW + timedelta(minutes=10) and ident.rotations == 1
    assert plan.token_use is None and [a.action for a in plan.audit if a.action == "agent.key_rotate"]
    rotated = agent.model_copy(update=plan.changes)
    third = AgentKey.generate()  # the old key, still in its overlap, cannot rotate again
    with pytest.raises(Rejected) as refused:
        apply(decoded(reg(key=third, sent_at=NOW + timedelta(seconds=1)), signer=old), rotated)
    assert refused.value.code is Code.UNKNOWN_KEY


def test_a_token_on_an_agent_with_a_key_consumes_nothing_signed_by_it_and_is_refused_otherwise() -> None:
    key, other, text = AgentKey.generate(), AgentKey.generate(), EnrollmentToken.new(FLEET)
    agent = enrolled(key)
    again = apply(decoded(reg(key=key, token=str(text), sent_at=NOW), signer=key), agent, read=False)
    assert again.token_use is None  # no token read either (read=False did not raise NeedsToken)
    with pytest.raises(Rejected) as refused:
        apply(decoded(reg(key=other, token=str(text), sent_at=NOW), signer=other), agent, token=stored_token(text))
    assert refused.value.code is Code.UNKNOWN_KEY


# --- agents without a key: the tenant's policy ------------------------------------------------------


def test_an_unsigned_registration_is_refused_when_required_and_accepted_when_optional() -> None:
    d = decoded(reg())
    with pytest.raises(Rejected) as refused:
        apply(d, None, policy=Policy.REQUIRED)
    assert refused.value.code is Code.UNSIGNED and refused.value.unproven
    plan = apply(d, None, policy=Policy.OPTIONAL)
    assert plan.create is not None and identity.status_of(plan.create.identity) is identity.Status.UNSIGNED


def test_a_revoked_agent_is_not_anyones_to_speak_for_unsigned_even_when_optional() -> None:
    agent = enrolled(AgentKey.generate())
    agent = agent.model_copy(update={"identity": identity.revoke(agent.identity, at=NOW, by="api:ann")})
    with pytest.raises(Rejected) as refused:
        apply(decoded(reg()), agent, policy=Policy.OPTIONAL)
    assert refused.value.code is Code.UNSIGNED and refused.value.unproven


def test_a_signature_by_a_key_never_enrolled_is_refused_even_when_optional() -> None:
    with pytest.raises(Rejected) as refused:
        apply(decoded(reg(), signer=AgentKey.generate()), None, policy=Policy.OPTIONAL)
    assert refused.value.code is Code.UNKNOWN_KEY


# --- replay of registrations ------------------------------------------------------------------------


def test_a_signed_registration_far_from_its_publish_time_is_implausible() -> None:
    key = AgentKey.generate()
    agent = enrolled(key)
    for sent_at in (NOW - timedelta(minutes=11), NOW + timedelta(minutes=6), None):
        with pytest.raises(Rejected) as refused:
            apply(decoded(reg(sent_at=sent_at), signer=key), agent)
        assert refused.value.code is Code.IMPLAUSIBLE_TIME


def test_a_replayed_or_overtaken_signed_registration_changes_nothing() -> None:
    """A captured registration replayed within its time window is a duplicate (same event id) or, with
    a new event id, superseded: its ``sent_at`` is not after the newest one accepted."""
    key = AgentKey.generate()
    agent = enrolled(key)
    newer = decoded(reg(sent_at=NOW, version="1.1.0"), signer=key)  # enrolled one was sent at NOW - 1 s
    plan = apply(newer, agent)
    assert plan.changes["identity"]["registration_sent_at"] == NOW
    agent = agent.model_copy(update=plan.changes)
    assert apply(newer, agent).skipped == "duplicate"
    old = decoded(reg(sent_at=NOW - timedelta(seconds=40)), signer=key)
    replay = apply(old, agent)
    assert replay.skipped == "superseded" and replay.writes == 0


# --- the store: refusals on a cached copy are confirmed ---------------------------------------------


def test_a_refusal_made_on_the_cached_agent_is_decided_again_on_a_fresh_read(monkeypatch: pytest.MonkeyPatch) -> None:
    old, new = AgentKey.generate(), AgentKey.generate()
    agent = enrolled(old)
    stale = agent_store.Snapshot(agent, "t1")
    rotated = agent.model_copy(update={"identity": identity.bind(agent.identity, new.public_key, token_id="x", at=NOW)})
    reads: list[str] = []

    def read(agent_id: str) -> agent_store.Snapshot:
        reads.append(agent_id)
        return agent_store.Snapshot(rotated, "t2")

    committed: list[Any] = []
    monkeypatch.setattr(agent_store, "read", read)
    monkeypatch.setattr(agent_store, "_commit", lambda agent_id, snap, plan, token=None: committed.append(snap))
    agent_store.cache.put("chat-1", stale)
    d = decoded(reg(sent_at=NOW), signer=new)  # another instance rotated to ``new``; this one cached ``old``
    try:
        plan = agent_store.update("chat-1", lambda current: apply(d, current))
    finally:
        agent_store.cache.drop("chat-1")
    assert reads == ["chat-1"] and committed[0].update_time == "t2" and plan.changes


def test_an_enrollment_conflict_is_handed_back_to_be_decided_on_both_documents_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from google.api_core.exceptions import FailedPrecondition

    def conflict(*args: Any, **kwargs: Any) -> None:
        raise FailedPrecondition("token changed")

    monkeypatch.setattr(agent_store, "read", lambda agent_id: None)
    monkeypatch.setattr(agent_store, "_commit", conflict)
    key, text = AgentKey.generate(), EnrollmentToken.new(FLEET)
    d = decoded(reg(key=key, token=str(text)), signer=key)
    with pytest.raises(agent_store.TokenConflict):
        agent_store.update("chat-1", lambda current: apply(d, current, token=stored_token(text)), token=None)
