"""The integration tests' agents' keys: every agent a test publishes for is enrolled and signs, as under
the stack's default policy (``required``) a real agent must.

    ring = Keyring(fleet_public_key)          # one per stack (tests/integration/conftest.py installs it)
    event, signer, tenant = ring.prepare(registration("it-1", tenant="acme"))   # the first: an enrollment
    event, signer, tenant = ring.prepare(heartbeat("it-1", 1))                  # then: signed, its tenant

An agent gets its key the first time an event of it is published (a heartbeat published before its
registration is signed by the key the registration then enrolls). Each registration reads the agent
document (one read): until it shows the key bound, the registration carries the key and an enrollment
token (made through the store, scoped to the agent), so one published right after the first still
enrolls. A key once bound and then gone (the document deleted, the key revoked) is replaced: the next
registration enrolls a new key with a new token (``forget`` does the same on demand). Every signed
registration carries ``sent_at``, later than the agent's previous one (an older one is superseded).

Firestore is not wiped between tests (tests/integration/conftest.py: each test has its own agent ids),
so one ring serves the whole session.

The tenant a signature covers is the agent's as the fleet stores it: the tenant of its first registration
(an agent re-registered naming another tenant is still signed over its own; the fleet refuses the move).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from fleet_agent.contracts import Event, KeyClaim, Registration
from fleet_agent.identity import AgentKey
from fleet_agent.identity import EnrollmentToken as TokenText

#: The tenant of an agent first seen on an event other than its registration (helpers.registration's).
DEFAULT_TENANT = "acme"


def make_token(
    fleet_public_key: str, tenant: str, *, max_uses: int = 1, expires_in: timedelta = timedelta(hours=1), **scope: Any
) -> str:
    """A new enrollment token of ``tenant`` written straight to Firestore (as the API stores it); returns its
    text (``afmt1...``). ``scope``: agent_id, agent_prefix, revoked_at, uses..."""
    from shared.domain.enrollment import EnrollmentToken
    from shared.store import enrollment_tokens

    text = TokenText.new(fleet_public_key)
    now = datetime.now(UTC)
    token = EnrollmentToken(
        token_id=text.token_id,
        tenant=tenant,
        secret_sha256=text.secret_sha256,
        label="integration test",
        max_uses=max_uses,
        expires_at=now + expires_in,
        created_at=now,
        created_by="api:tests",
        **scope,
    )
    enrollment_tokens.create(token)
    return str(text)


@dataclass
class Entry:
    """One agent's key in the ring."""

    key: AgentKey
    tenant: str
    #: The token its enrollment carries (made on its first registration).
    token: str | None = None
    #: The agent document showed this key bound at its last registration (then it carries no token).
    bound: bool = False
    #: ``sent_at`` of its last registration.
    sent_at: datetime | None = None


class Keyring:
    """Keys of the agents the tests publish for, by agent id (thread-safe)."""

    def __init__(self, fleet_public_key: str) -> None:
        self.fleet_public_key = fleet_public_key
        self._entries: dict[str, Entry] = {}
        self._lock = threading.Lock()
        self._registering = threading.Lock()  # a registration reads and updates its entry: one at a time

    def entry(self, agent_id: str, tenant: str | None = None) -> Entry:
        """The agent's entry, made (with a new key) on its first use."""
        with self._lock:
            found = self._entries.get(agent_id)
            if found is None:
                found = self._entries[agent_id] = Entry(AgentKey.generate(), tenant or DEFAULT_TENANT)
            return found

    def key(self, agent_id: str) -> AgentKey:
        return self.entry(agent_id).key

    def tenant(self, agent_id: str) -> str:
        return self.entry(agent_id).tenant

    def forget(self, agent_id: str) -> None:
        """Start the agent over: its next registration enrolls a new key with a new token (after a
        revocation, say)."""
        with self._lock:
            self._entries.pop(agent_id, None)

    def prepare(self, event: Event, tenant: str | None = None) -> tuple[Event, AgentKey, str]:
        """``event`` as the agent sends it (a registration completed with ``sent_at`` and, until its key is
        bound, the key and a token), the key that signs it and the tenant its signature covers."""
        if isinstance(event, Registration):
            with self._registering:
                event, entry = self._registration(event)
        else:
            entry = self.entry(event.agent_id, tenant)
        return event, entry.key, entry.tenant

    def _registration(self, reg: Registration) -> tuple[Registration, Entry]:
        entry = self.entry(reg.agent_id, reg.tenant)
        bound = self._bound(reg.agent_id, entry.key)
        if entry.bound and not bound:  # its document was deleted, or its key revoked: enroll a new key
            self.forget(reg.agent_id)
            entry = self.entry(reg.agent_id, reg.tenant)
        entry.bound = bound
        update: dict[str, Any] = {}
        if not bound:
            entry.tenant = reg.tenant  # not enrolled yet: the registration names the agent's tenant
            if reg.identity is None:
                if entry.token is None:
                    entry.token = make_token(self.fleet_public_key, entry.tenant, agent_id=reg.agent_id)
                update["identity"] = KeyClaim(public_key=entry.key.public_key, enrollment_token=entry.token)
        if reg.sent_at is None:
            now = datetime.now(UTC)
            if entry.sent_at is not None and now <= entry.sent_at:
                now = entry.sent_at + timedelta(milliseconds=1)
            update["sent_at"] = now
        entry.sent_at = update.get("sent_at", reg.sent_at)
        return (reg.model_copy(update=update) if update else reg), entry

    @staticmethod
    def _bound(agent_id: str, key: AgentKey) -> bool:
        """Whether the agent's document has ``key`` as its current key (a fresh read)."""
        from shared.store import agents as agent_store

        snap = agent_store.read(agent_id)
        keys: list[dict[str, Any]] = (snap.record.identity.get("keys") or []) if snap is not None else []
        return bool(keys) and keys[0].get("key_id") == key.key_id

    def for_sdk(self, directory: Path, agent_id: str, tenant: str, **scope: Any) -> dict[str, Any]:
        """FleetAgent's identity arguments for a new agent: a token scoped to it, its key file in
        ``directory`` (the SDK generates the key and enrolls on its first registration)."""
        token = make_token(self.fleet_public_key, tenant, agent_id=agent_id, **scope)
        return {"enrollment_token": token, "key_path": directory / f"{agent_id}.key"}
