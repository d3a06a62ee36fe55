"""An agent's own identity, as its SDK keeps it: its key, the fleet key it trusts, and its enrollment state.

    identity = AgentIdentity.resolve("chat-7", "acme", key_path="/var/lib/agent/fleet.key",
                                     enrollment_token="afmt1....")
    claim = identity.claim()          # for the next registration: KeyClaim(public key, token) on first start
    ...publish a registration signed by identity.key, wait for Pub/Sub...
    identity.registered(claim)        # writes <key_path>.json: never again the token

The state file next to the key (``<key_path>.json``: agent_id, tenant, key_id, fleet_public_key,
enrolled_at, token_id; never the token's secret) tells a restarted agent that it is enrolled and which
fleet key signs its commands, without the token. A rotation writes the new key to ``<key_path>.next``
first, so a crash between publishing the rotation and replacing the key file leaves both keys on disk:
the next start re-sends the rotation (signed by the old key, idempotent) and then switches.

Enrolling again (a token other than the one in the state, after a revocation) makes a new key, which waits
in ``<key_path>.enroll`` (never ``.next``, whose key a revocation may have revoked): the key file keeps the
enrolled key until Pub/Sub accepted the new enrollment. Then the old key and its state are kept as
``<key_path>.previous`` and ``<key_path>.previous.json`` (an earlier ``.previous`` is moved aside under its
key id), never deleted: the fleet does not confirm an enrollment (it sends ``key_rotated`` for a rotation
only: an enrollment is signed by the new key and carries a token), and refuses it (``unknown_key``) while
the agent's old key is still valid, so only the operator can tell which key to keep (docs/sdk.md says how to
go back).

When to switch. Pub/Sub does not order messages across topics: an event signed by the new key may reach
the fleet before the registration that binds it, and would be refused (``unknown_key``). So the agent
keeps signing with the old key, which the fleet accepts until the end of its overlap
(``FLEET_KEY_OVERLAP_S``, 600 s by default), until the fleet confirms the rotation with a signed
``key_rotated`` command naming the new key (:meth:`AgentIdentity.confirmed`; it is sent only once the new
key is stored as current). An agent that does not hear it (it does not listen for commands, or the
command is late) switches anyway ``FLEET_KEY_SWITCH_FALLBACK_S`` (300 s by default, half the fleet's default
overlap) after Pub/Sub accepted the rotation: the fleet's overlap must be longer than this fallback plus the
longest delivery delay.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from fleet_agent.contracts import KeyClaim, Signature, utcnow
from fleet_agent.identity import AgentKey, EnrollmentToken, command_subscription, write_private

log = logging.getLogger("fleet_agent")

TOKEN_ENV = "FLEET_ENROLLMENT_TOKEN"
KEY_PATH_ENV = "FLEET_KEY_PATH"
PUBLIC_KEY_ENV = "FLEET_PUBLIC_KEY"
FALLBACK_ENV = "FLEET_KEY_SWITCH_FALLBACK_S"
#: Seconds after Pub/Sub accepted a rotation at which the agent switches keys without the fleet's word.
DEFAULT_SWITCH_FALLBACK_S = 300.0


def switch_fallback_s() -> float:
    """``FLEET_KEY_SWITCH_FALLBACK_S``, else :data:`DEFAULT_SWITCH_FALLBACK_S`."""
    text = os.environ.get(FALLBACK_ENV, "").strip()
    try:
        value = float(text) if text else DEFAULT_SWITCH_FALLBACK_S
    except ValueError:
        raise ValueError(f"{FALLBACK_ENV} must be a number of seconds, not {text!r}") from None
    if not 0 <= value <= 3600:
        raise ValueError(f"{FALLBACK_ENV} must be between 0 and 3600 seconds")
    return value


def no_fleet_key(agent_id: str) -> str:
    """Why an agent that signs but lacks the fleet's public key obeys no command, and how to fix it."""
    return (
        f"agent {agent_id} signs its events but has no fleet public key, so it cannot verify the fleet's "
        f"commands and obeys none: give it fleet_public_key= or {PUBLIC_KEY_ENV} (or its enrollment state "
        "<key_path>.json, or an enrollment token)"
    )


@dataclass(frozen=True)
class EnrollmentState:
    """What ``<key_path>.json`` holds: which agent the key was enrolled for, with which token, and the
    fleet key it trusts commands from."""

    agent_id: str
    tenant: str
    key_id: str
    fleet_public_key: str | None
    enrolled_at: str
    token_id: str | None


def _state_path(key_path: Path) -> Path:
    return key_path.with_name(key_path.name + ".json")


def _next_path(key_path: Path) -> Path:
    return key_path.with_name(key_path.name + ".next")


def _enroll_path(key_path: Path) -> Path:
    """Where a new enrollment's key waits (apart from a rotation's ``.next``: a rotation cut short must
    never be taken for an earlier enrollment attempt, its key may have been revoked since)."""
    return key_path.with_name(key_path.name + ".enroll")


def _previous_path(key_path: Path) -> Path:
    return key_path.with_name(key_path.name + ".previous")


def _keep_previous(key_path: Path) -> Path:
    """Copy the key file and its state to ``<key_path>.previous`` (+ ``.json``) before they are replaced;
    an earlier ``.previous`` is moved aside to ``<key_path>.previous.<its key id>`` (nothing is deleted)."""
    previous = _previous_path(key_path)
    if previous.exists():
        aside = previous.with_name(f"{previous.name}.{AgentKey.load(previous).key_id}")
        if _state_path(previous).exists():
            os.replace(_state_path(previous), _state_path(aside))
        os.replace(previous, aside)
    if _state_path(key_path).exists():
        write_private(_state_path(previous), _state_path(key_path).read_bytes())
    write_private(previous, key_path.read_bytes())
    return previous


class AgentIdentity:
    """One agent's key and enrollment; a :class:`~fleet_agent.contracts.Signer` (its current key signs).

    Thread-safe: the key is switched under a lock on rotation, so every event is signed by one key.
    """

    def __init__(
        self,
        agent_id: str,
        tenant: str,
        *,
        key: AgentKey | None,
        key_path: Path | None = None,
        token: EnrollmentToken | None = None,
        fleet_public_key: str | None = None,
        state: EnrollmentState | None = None,
        pending: AgentKey | None = None,
        staged: bool = False,
        fallback_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.agent_id = agent_id
        self.tenant = tenant
        self.key_path = key_path
        self.token = token
        self.fleet_public_key = fleet_public_key
        self.state = state
        self._key = key
        self._pending = pending  # a rotation's new key, not yet in use
        #: ``key`` is a new enrollment's, waiting in ``<key_path>.enroll`` until Pub/Sub accepted it.
        self._staged = staged
        #: Where the key enrolled before was kept (``<key_path>.previous``) by this enrollment; None: nothing.
        self.kept: Path | None = None
        #: When (``clock``) Pub/Sub accepted the registration carrying ``_pending``; None: not yet.
        self._accepted_at: float | None = None
        self._fallback_s = fallback_s if fallback_s is not None else switch_fallback_s()
        self._clock = clock
        self._lock = threading.Lock()

    @classmethod
    def resolve(
        cls,
        agent_id: str,
        tenant: str,
        *,
        key: AgentKey | None = None,
        key_path: str | os.PathLike[str] | None = None,
        enrollment_token: str | None = None,
        fleet_public_key: str | None = None,
    ) -> AgentIdentity:
        """The identity of an agent starting now (arguments, else ``FLEET_ENROLLMENT_TOKEN``,
        ``FLEET_KEY_PATH``, ``FLEET_PUBLIC_KEY``): loads the key and its state, or makes the key."""
        token_text = enrollment_token or os.environ.get(TOKEN_ENV, "").strip() or None
        path_text = key_path or os.environ.get(KEY_PATH_ENV, "").strip() or None
        token = EnrollmentToken.parse(token_text) if token_text else None
        path = Path(path_text) if path_text else None
        state = cls._read_state(path, agent_id) if path is not None else None
        if token is not None and state is not None and state.token_id == token.token_id:
            token = None  # used already: a token is sent once, never again
        pending = None
        staged = False
        if key is None and path is not None:
            if token is not None and state is not None and path.exists() and AgentKey.load(path).key_id != state.key_id:
                state = None  # the key file is not the state's: an enrollment's, installed by a start that stopped
            if token is not None and state is not None and path.exists():
                # Enrolling again: the enrolled key stays in place until Pub/Sub accepted the enrollment.
                staged, state, nxt = True, None, _enroll_path(path)
                key = AgentKey.load(nxt) if nxt.exists() else AgentKey.generate()  # .enroll: an earlier attempt's
                key.save(nxt)  # before publishing: the key it binds must survive a crash
                log.warning("agent %s: enrolling again with a new token; %s is kept as %s once it is published",
                            agent_id, path, _previous_path(path))  # fmt: skip
            elif path.exists():
                key = AgentKey.load(path)
            else:  # first start
                key = AgentKey.generate()
                key.save(path)  # before publishing: the bound key must survive a crash
                state = None
            if not staged and _next_path(path).exists():
                pending = AgentKey.load(_next_path(path))
                log.warning("agent %s: finishing a key rotation interrupted earlier", agent_id)
        if token is not None and key is None:
            raise ValueError("an enrollment token needs key_path= or key=: the agent's key must outlive the process")
        fleet_key = (
            fleet_public_key
            or (token.fleet_public_key if token else None)
            or (state.fleet_public_key if state else None)
            or os.environ.get(PUBLIC_KEY_ENV, "").strip()
            or None
        )
        if key is None:
            log.warning("agent %s: no key and no enrollment token: its events are sent unsigned", agent_id)
        elif fleet_key is None:
            log.warning("agent %s: no fleet public key: it obeys no command until given one (%s)", agent_id,
                        PUBLIC_KEY_ENV)  # fmt: skip
        return cls(
            agent_id,
            tenant,
            key=key,
            key_path=path,
            token=token,
            fleet_public_key=fleet_key,
            state=state,
            pending=pending,
            staged=staged,
        )

    @staticmethod
    def _read_state(path: Path, agent_id: str) -> EnrollmentState | None:
        try:
            raw = json.loads(_state_path(path).read_text())
        except FileNotFoundError:
            return None
        state = EnrollmentState(**{name: raw.get(name) for name in EnrollmentState.__dataclass_fields__})
        if state.agent_id != agent_id:
            raise ValueError(f"{path} holds the key of agent {state.agent_id}, not of {agent_id}")
        return state

    # -- use ------------------------------------------------------------------------------------

    @property
    def key(self) -> AgentKey | None:
        """The key that signs now: the old one until the fleet confirmed a rotation (or the fallback passed)."""
        with self._lock:
            accepted = self._accepted_at
            if accepted is not None and self._clock() - accepted >= self._fallback_s:
                log.warning("agent %s: no key_rotated from the fleet; switching keys after %gs", self.agent_id,
                            self._fallback_s)  # fmt: skip
                self._switch_locked()
            return self._key

    @property
    def rotating(self) -> bool:
        """A rotation's new key waits: not yet accepted by Pub/Sub, or not yet confirmed by the fleet."""
        with self._lock:
            return self._pending is not None

    @property
    def signed(self) -> bool:
        return self.key is not None

    @property
    def enrolled(self) -> bool:
        """Signs its events and verifies the fleet's commands (which then arrive on its own subscription)."""
        return self.key is not None and self.fleet_public_key is not None

    @property
    def lacks_fleet_key(self) -> bool:
        """Signs its events but does not know the fleet's public key: it cannot verify a command, so it
        obeys none (fail closed) until given the key. Only an agent with no key at all is unsigned."""
        return self.key is not None and self.fleet_public_key is None

    @property
    def enrolling(self) -> bool:
        """The next registration carries the enrollment token (its command subscription may not exist yet)."""
        return self.token is not None

    @property
    def subscription(self) -> str:
        """The id of this agent's command subscription (the fleet creates it at enrollment)."""
        return command_subscription(self.agent_id)

    def sign_event(self, event_type: str, agent_id: str, event_id: str, tenant: str, data: Any) -> Signature:
        key = self.key
        if key is None:
            raise RuntimeError(f"agent {self.agent_id} has no key")
        return key.sign_event(event_type, agent_id, event_id, tenant, data)

    def claim(self) -> KeyClaim | None:
        """What the next registration carries: the first key with the token, a rotation's new key, or nothing."""
        with self._lock:
            if self._key is None:
                return None
            if self.token is not None:
                return KeyClaim(public_key=self._key.public_key, enrollment_token=str(self.token))
            if self._pending is not None:
                return KeyClaim(public_key=self._pending.public_key)
            return None

    # -- after Pub/Sub accepted a registration ----------------------------------------------------

    def registered(self, claim: KeyClaim | None) -> None:
        """Pub/Sub accepted the registration that carried ``claim``: remember the enrollment; for a rotation,
        start waiting for the fleet's ``key_rotated`` (the module doc says why not switch now)."""
        if claim is None:
            return
        with self._lock:
            if claim.enrollment_token is not None and self.token is not None:
                token_id, self.token = self.token.token_id, None
                if self._staged and self.key_path is not None:
                    self.kept = _keep_previous(self.key_path)  # the key enrolled before, and its state
                    os.replace(_enroll_path(self.key_path), self.key_path)  # atomic
                    self._staged = False
                self._save_state(token_id, utcnow().isoformat())
            elif (
                self._pending is not None and claim.public_key == self._pending.public_key and self._accepted_at is None
            ):
                self._accepted_at = self._clock()  # the fallback counts from the first acceptance

    def confirmed(self, key_id: str) -> bool:
        """The fleet says (a verified ``key_rotated`` command) that ``key_id`` is now current: switch to it
        if it is the rotation's new key. True when the agent switched."""
        with self._lock:
            if self._pending is None or self._pending.key_id != key_id:
                return False
            self._switch_locked()
            return True

    def _switch_locked(self) -> None:
        """Sign with the rotation's new key from now on, and make it the key on disk (atomically)."""
        assert self._pending is not None
        new, self._pending, self._accepted_at = self._pending, None, None
        if self.key_path is not None:
            os.replace(_next_path(self.key_path), self.key_path)  # atomic: old key until now
        self._key = new  # from here on every event is signed by the new key
        previous = self.state
        self._save_state(previous.token_id if previous else None, previous.enrolled_at if previous else None)

    def begin_rotation(self) -> AgentKey:
        """A new key, written to ``<key_path>.next`` (not used yet); :meth:`claim` now carries it."""
        with self._lock:
            if self._key is None:
                raise RuntimeError(f"agent {self.agent_id} has no key to rotate")
            if self.token is not None:
                raise RuntimeError(f"agent {self.agent_id} is enrolling: register() before rotating its key")
            if self._pending is None:
                pending = AgentKey.generate()
                if self.key_path is not None:
                    pending.save(_next_path(self.key_path))
                self._pending = pending
            return self._pending

    def _save_state(self, token_id: str | None, enrolled_at: str | None) -> None:
        assert self._key is not None
        state = EnrollmentState(
            agent_id=self.agent_id,
            tenant=self.tenant,
            key_id=self._key.key_id,
            fleet_public_key=self.fleet_public_key,
            enrolled_at=enrolled_at or utcnow().isoformat(),
            token_id=token_id,
        )
        self.state = state
        if self.key_path is not None:
            write_private(_state_path(self.key_path), json.dumps(asdict(state), indent=2).encode())
