"""Agent identity: an Ed25519 key, the canonical bytes a signature covers, enrollment tokens.

    key = AgentKey.load_or_create("/var/lib/agent/fleet.key")   # generated on first start, mode 0600
    signature = key.sign_event("heartbeat", "chat-7", event_id, "acme", data)
    verify(key.public_key, signature, event_signing_bytes("heartbeat", "chat-7", event_id, "acme", data))

What is signed (docs/events.md, "Signatures", says it for other languages): the RFC 8785 canonical JSON
(JCS) of one array, so that no field can be moved from one event to another:

    ["agent-fleet-manager/event/v1", event_type, agent_id, event_id, tenant, data]

``data`` is the envelope's ``data`` exactly as sent (its JSON value, canonicalised; never a model's
re-serialisation with defaults filled in). The fleet signs its commands the same way over
``["agent-fleet-manager/command/v1", agent_id, command]``, where ``command`` is the message body's JSON.

Keys, signatures and key ids travel as unpadded base64url: a public key is 43 characters (32 bytes),
a signature 86 (64 bytes); a key id is the first 16 hex digits of the SHA-256 of the public key.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import json
import os
import re
import secrets
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import rfc8785
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fleet_agent.contracts import Signature

ALG = "ed25519"
EVENT_CONTEXT = "agent-fleet-manager/event/v1"
COMMAND_CONTEXT = "agent-fleet-manager/command/v1"
#: An unpadded base64url Ed25519 public key (32 bytes).
PUBLIC_KEY_PATTERN = r"^[A-Za-z0-9_-]{43}$"
#: ``afmt1.<token id>.<secret>.<the fleet's public key>``: what an admin hands to an agent's deployment.
TOKEN_PREFIX = "afmt1"
_TOKEN = re.compile(r"^afmt1\.([a-f0-9]{16})\.([A-Za-z0-9_-]{43})\.([A-Za-z0-9_-]{43})$")


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def canonical(value: Any) -> bytes:
    """RFC 8785 (JCS) canonical JSON: sorted keys, no whitespace, ECMAScript number format, UTF-8.

    Raises ``ValueError`` for what JCS cannot express: integers beyond ±2**53, NaN, infinities.

    Fast path: the C ``json`` encoder writes exactly the JCS bytes when every key is ASCII (code-point
    order is then UTF-16 order) and every number is written as ECMAScript would (:func:`_jcs_ready`);
    anything else goes through ``rfc8785`` (pure Python, several times slower). Both are compared on
    random and edge values in tests/unit/test_canonical.py.
    """
    try:
        ready = _jcs_ready(value)
    except _NotFast:
        return _rfc8785(value)
    try:
        return json.dumps(ready, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
    except UnicodeEncodeError:  # a lone surrogate: not UTF-8, not signable
        return _rfc8785(value)


def _rfc8785(value: Any) -> bytes:
    try:
        return bytes(rfc8785.dumps(value))
    except (rfc8785.CanonicalizationError, UnicodeEncodeError) as exc:
        raise ValueError(f"not canonicalisable as RFC 8785 JSON: {exc}") from None


#: JCS's integers: what a double holds exactly (rfc8785 refuses the rest).
_INT_LIMIT = 2**53 - 1


class _NotFast(Exception):
    """The value needs the reference canonicaliser (or is not canonicalisable: it says so)."""


def _jcs_ready(value: Any) -> Any:
    """``value`` as ``json.dumps`` must see it to write its JCS form, or :class:`_NotFast`.

    Why the output is byte-identical to RFC 8785 (and to ``rfc8785``, which formats a float from its
    ``repr``): ``json.dumps`` escapes strings as JCS does (the quote, the backslash, the five short
    escapes, other controls below U+0020 as lowercase 4-digit hex escapes, nothing else with
    ``ensure_ascii=False``); ASCII keys sort the same by code point as by UTF-16 unit; integers within
    ±(2**53 - 1) are written as ``str(int)``. A float is written by ``float.__repr__``: the shortest
    round-trip digits, as ECMAScript, and positional (no exponent) from 1e-4 up to 1e16, where ECMAScript
    is positional too. So an integral float below 1e16 is given as the integer it is (``40.0`` -> ``40``,
    ``-0.0`` -> ``0``), a non-integral one from 1e-4 to 1e16 as itself, and every other number (tiny,
    huge, NaN, infinite, big integers) takes the slow path.
    Only exact ``dict``/``list``/``str``/``int``/``float``/``bool``/``None`` are fast (subclasses are not).
    """
    kind = type(value)
    if kind is str or kind is bool or value is None:
        return value
    if kind is int:
        if -_INT_LIMIT <= value <= _INT_LIMIT:
            return value
        raise _NotFast
    if kind is float:
        if value.is_integer():  # False for NaN and infinities
            if -1e16 < value < 1e16:
                return int(value)
        elif 1e-4 <= abs(value) < 1e16:  # False for NaN
            return value
        raise _NotFast
    if kind is dict:
        out = {}
        for key, item in value.items():
            if type(key) is not str or not key.isascii():
                raise _NotFast
            out[key] = _jcs_ready(item)
        return out
    if kind is list:
        return [_jcs_ready(item) for item in value]
    raise _NotFast


def event_signing_bytes(event_type: str, agent_id: str, event_id: str, tenant: str, data: Any) -> bytes:
    """The bytes an agent signs for one event (module docstring)."""
    return canonical([EVENT_CONTEXT, event_type, agent_id, event_id, tenant, data])


def command_signing_bytes(agent_id: str, command: Any) -> bytes:
    """The bytes the fleet signs for one command to ``agent_id`` (``command``: the body's JSON value)."""
    return canonical([COMMAND_CONTEXT, agent_id, command])


def key_id_of(public_key: str) -> str:
    return hashlib.sha256(unb64(public_key)).hexdigest()[:16]


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` readable by its owner only (0600), atomically: a crash leaves the old file or the new,
    never half of one (a key, or the enrollment state beside it)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class AgentKey:
    """An Ed25519 private key: an agent's (or the fleet's, for commands). Never logged, never sent."""

    def __init__(self, private: Ed25519PrivateKey) -> None:
        self._private = private
        raw = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        self.public_key = b64(raw)
        self.key_id = key_id_of(self.public_key)

    def __repr__(self) -> str:  # never the private half
        return f"AgentKey(key_id={self.key_id!r})"

    @classmethod
    def generate(cls) -> AgentKey:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_pem(cls, pem: bytes | str) -> AgentKey:
        """A key from PKCS#8 PEM (what :meth:`to_pem` writes), e.g. a secret the agent already has."""
        data = pem.encode() if isinstance(pem, str) else pem
        private = serialization.load_pem_private_key(data, password=None)
        if not isinstance(private, Ed25519PrivateKey):
            raise ValueError("not an Ed25519 private key")
        return cls(private)

    def to_pem(self) -> bytes:
        return self._private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> AgentKey:
        return cls.from_pem(Path(path).read_bytes())

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the key (PEM) readable by its owner only, atomically: a crash leaves the old file or the new."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        write_private(target, self.to_pem())

    @classmethod
    def load_or_create(cls, path: str | os.PathLike[str]) -> AgentKey:
        """The key in ``path``, or a new one written there (first start)."""
        if Path(path).exists():
            return cls.load(path)
        key = cls.generate()
        key.save(path)
        return key

    def sign(self, message: bytes) -> Signature:
        return Signature(key_id=self.key_id, alg=ALG, value=b64(self._private.sign(message)))

    def sign_event(self, event_type: str, agent_id: str, event_id: str, tenant: str, data: Any) -> Signature:
        return self.sign(event_signing_bytes(event_type, agent_id, event_id, tenant, data))


@functools.lru_cache(maxsize=4096)
def _public(public_key: str) -> Ed25519PublicKey:
    return Ed25519PublicKey.from_public_bytes(unb64(public_key))


def verify(public_key: str, signature: Signature, message: bytes) -> bool:
    """Whether ``signature`` is ``public_key``'s Ed25519 signature of ``message`` (any malformed part: no)."""
    if signature.alg != ALG or signature.key_id != key_id_of(public_key):
        return False
    try:
        _public(public_key).verify(unb64(signature.value), message)
    except (InvalidSignature, ValueError, binascii.Error):
        return False
    return True


@dataclass(frozen=True)
class EnrollmentToken:
    """A parsed enrollment token: which token (its id), its secret, and the fleet's public key, which the
    agent trusts commands from. It reaches the agent out of band (from an admin), so the key is trusted."""

    token_id: str
    secret: str
    fleet_public_key: str

    @classmethod
    def parse(cls, text: str) -> EnrollmentToken:
        match = _TOKEN.fullmatch(text.strip())
        if match is None:
            raise ValueError("not an enrollment token (afmt1.<id>.<secret>.<fleet key>)")
        return cls(*match.groups())

    @classmethod
    def new(cls, fleet_public_key: str) -> EnrollmentToken:
        return cls(secrets.token_hex(8), b64(secrets.token_bytes(32)), fleet_public_key)

    def __str__(self) -> str:
        return f"{TOKEN_PREFIX}.{self.token_id}.{self.secret}.{self.fleet_public_key}"

    def __repr__(self) -> str:  # never the secret
        return f"EnrollmentToken(token_id={self.token_id!r})"

    @property
    def secret_sha256(self) -> str:
        return hashlib.sha256(self.secret.encode()).hexdigest()


#: An enrolled agent's command subscription is ``agent-commands.<agent_id>``, created by the fleet.
COMMAND_SUBSCRIPTION_PREFIX = "agent-commands."


def command_subscription(agent_id: str) -> str:
    """The id of the command subscription the fleet creates for ``agent_id`` at enrollment."""
    return f"{COMMAND_SUBSCRIPTION_PREFIX}{agent_id}"
