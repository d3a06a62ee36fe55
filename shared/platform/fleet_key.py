"""The fleet's own signing key: it signs every command on ``agent-commands`` (fleet_agent.identity).

The private half is the secret ``fleet-command-key`` (PKCS#8 PEM; Secret Manager in Google Cloud, the
``FLEET_COMMAND_KEY`` environment variable locally, which the local stack generates). Agents receive the
public half inside their enrollment token and ignore any command it did not sign.
"""

from __future__ import annotations

import threading

from fleet_agent.identity import AgentKey

from shared.platform import settings

SECRET = "fleet-command-key"

_key: AgentKey | None = None
_lock = threading.Lock()


class MissingFleetKey(RuntimeError):
    """No fleet key is configured: commands cannot be signed, nor tokens made."""


def get() -> AgentKey:
    """The fleet key, loaded once per instance. Raises MissingFleetKey when it is not configured."""
    global _key
    if _key is None:
        with _lock:
            if _key is None:
                pem = settings.secret(SECRET)
                if not pem:
                    raise MissingFleetKey(f"secret {SECRET} is not set (FLEET_COMMAND_KEY locally)")
                _key = AgentKey.from_pem(pem.replace("\\n", "\n"))
    return _key


def public_key() -> str:
    return get().public_key


def reset() -> None:
    """Forget the loaded key (tests that switch keys)."""
    global _key
    with _lock:
        _key = None
