"""Bearer tokens for the fleet's OTLP endpoint, made by the agent with its enrolled key (docs/otlp.md).

    token = mint(AgentKey.load("chat-7.key"), agent_id="chat-7", tenant="acme", days=30)
    # OTEL_EXPORTER_OTLP_TRACES_HEADERS="Authorization=Bearer%20" + token

An OTLP exporter sends static headers only, so the agent signs a token once instead of each request:
``afot1.<payload>.<signature>``, both unpadded base64url. The payload is the JSON object
``{"agent_id", "tenant", "key_id", "iat", "exp"}`` (seconds since the epoch); the signature is the key's
Ed25519 signature of the RFC 8785 JSON ``["agent-fleet-manager/otlp-token/v1", agent_id, tenant, key_id,
iat, exp]``. The fleet verifies it with the public key it enrolled, so it stores nothing secret, and
revoking the key revokes its tokens.
"""

from __future__ import annotations

import binascii
import json
import time
from dataclasses import dataclass

from fleet_agent.contracts import Signature
from fleet_agent.identity import ALG, AgentKey, b64, canonical, unb64

PREFIX = "afot1"
CONTEXT = "agent-fleet-manager/otlp-token/v1"
#: The longest a token may live (``exp - iat``): the fleet refuses longer ones.
MAX_DAYS = 30
MAX_LIFETIME_S = MAX_DAYS * 86_400


def signing_bytes(agent_id: str, tenant: str, key_id: str, iat: int, exp: int) -> bytes:
    return canonical([CONTEXT, agent_id, tenant, key_id, iat, exp])


@dataclass(frozen=True)
class OtlpToken:
    """A parsed token (not verified: :func:`signing_bytes` and the enrolled key do that)."""

    agent_id: str
    tenant: str
    key_id: str
    iat: int
    exp: int
    signature: Signature

    def signed_bytes(self, tenant: str) -> bytes:
        """The bytes the signature must cover, over ``tenant`` (the verifier's record of the agent's tenant)."""
        return signing_bytes(self.agent_id, tenant, self.key_id, self.iat, self.exp)

    @classmethod
    def parse(cls, text: str) -> OtlpToken:
        """Raises ``ValueError`` for anything that is not a well-formed token."""
        parts = text.strip().split(".")
        if len(parts) != 3 or parts[0] != PREFIX:
            raise ValueError(f"not an OTLP token ({PREFIX}.<payload>.<signature>)")
        try:
            payload = json.loads(unb64(parts[1]))
            signature = unb64(parts[2])
        except (ValueError, binascii.Error) as exc:
            raise ValueError(f"malformed OTLP token: {exc}") from None
        if not isinstance(payload, dict) or len(signature) != 64:
            raise ValueError("malformed OTLP token: payload or signature")
        try:
            agent_id, tenant, key_id = (payload[k] for k in ("agent_id", "tenant", "key_id"))
            iat, exp = payload["iat"], payload["exp"]
        except KeyError as exc:
            raise ValueError(f"malformed OTLP token: no {exc}") from None
        if not all(isinstance(v, str) for v in (agent_id, tenant, key_id)) or not all(
            type(v) is int for v in (iat, exp)
        ):
            raise ValueError("malformed OTLP token: field types")
        sig = Signature(key_id=key_id, alg=ALG, value=parts[2])
        return cls(agent_id, tenant, key_id, iat, exp, sig)


def mint(key: AgentKey, *, agent_id: str, tenant: str, days: float = MAX_DAYS, now: float | None = None) -> str:
    """A token for ``agent_id`` valid ``days`` (at most :data:`MAX_DAYS`) from ``now``."""
    if not 0 < days <= MAX_DAYS:
        raise ValueError(f"a token lives more than 0 and at most {MAX_DAYS} days")
    iat = int(time.time() if now is None else now)
    exp = iat + int(days * 86_400)
    payload = {"agent_id": agent_id, "tenant": tenant, "key_id": key.key_id, "iat": iat, "exp": exp}
    signature = key.sign(signing_bytes(agent_id, tenant, key.key_id, iat, exp))
    return f"{PREFIX}.{b64(canonical(payload))}.{signature.value}"
