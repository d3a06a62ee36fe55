"""The console's session: a cookie that holds the API key itself, verified on every request.

Why the key and not a signed reference: the API already verifies keys (shared/store/api_keys.verify,
cached per instance for ``FLEET_API_KEY_CACHE_S``), and revoking a key must end its console sessions at
once. A signed reference would need a signing secret of its own (one more secret to provision and rotate)
and would still have to look the key up to notice a revocation. Holding the key costs nothing the key
did not already grant: the cookie is HttpOnly (no script reads it), SameSite=Strict (no other site sends
it), Secure outside a loopback host, and has no Expires (it ends with the browser session). It is never
logged nor echoed back. POSTs also check Sec-Fetch-Site and Origin when the browser sends them.
"""

from __future__ import annotations

import os

import flask

from shared.store import api_keys
from shared.store.api_keys import Principal

COOKIE = "fleet_console"
_LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "[::1]", "::1"})


def is_local(request: flask.Request) -> bool:
    """A loopback host outside Google Cloud (the local stack serves plain HTTP, where a Secure cookie would
    never come back). In Cloud Run (``K_SERVICE`` is set) the cookie is always Secure, whatever Host says."""
    if os.environ.get("K_SERVICE"):
        return False
    host = (request.host or "").rsplit(":", 1)[0] if not (request.host or "").startswith("[") else "[::1]"
    return host in _LOCAL_HOSTS


def principal(request: flask.Request) -> Principal | None:
    """Who the session's key stands for; None without a cookie, or for a malformed, unknown or revoked key."""
    token = request.cookies.get(COOKIE, "")
    if not token or len(token) > 4096:
        return None
    return api_keys.verify(token)


def sign_in(response: flask.Response, request: flask.Request, token: str) -> None:
    """Set the session cookie (a session cookie: no Expires, no Max-Age)."""
    response.set_cookie(COOKIE, token, httponly=True, samesite="Strict", secure=not is_local(request), path="/")


def sign_out(response: flask.Response, request: flask.Request) -> None:
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="Strict", secure=not is_local(request))


def same_origin(request: flask.Request) -> bool:
    """A POST from this console's own pages. Browsers say where a request comes from in Sec-Fetch-Site;
    Origin is checked too when it names a site (under Referrer-Policy: no-referrer, Chromium sends
    ``Origin: null`` even from the same origin, so "null" alone proves nothing either way)."""
    fetch_site = request.headers.get("Sec-Fetch-Site")
    if fetch_site is not None and fetch_site not in {"same-origin", "none"}:
        return False
    origin = request.headers.get("Origin")
    if origin is None or origin == "null":
        return True
    return origin in {f"http://{request.host}", f"https://{request.host}"}
