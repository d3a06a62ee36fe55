"""The console's session: a cookie that holds the API key itself, verified on every request.

Why the key and not a signed reference: the API already verifies keys (shared/store/api_keys.verify,
cached per instance for ``FLEET_API_KEY_CACHE_S``), and revoking a key must end its console sessions at
once. A signed reference would need a signing secret of its own (one more secret to provision and rotate)
and would still have to look the key up to notice a revocation. Holding the key costs nothing the key
did not already grant: the cookie is HttpOnly (no script reads it), SameSite=Strict (no other site sends
it), Secure outside a loopback host, and has no Expires (it ends with the browser session). It is never
logged nor echoed back. POSTs also check Sec-Fetch-Site and Origin when the browser sends them.

A key needs the viewer role (:data:`LEAST_ROLE`) or more: a ``scrape`` key reads GET /metrics and nothing
else, so it cannot sign in, and one already signed in is sent back to sign-in on its next request (either
refusal audited as the API audits a role refusal, shared/api/router.audit_refusal: ``console.sign_in`` or
``console.session``, outcome ``refused``).
"""

from __future__ import annotations

import os

import flask

from shared.api import router
from shared.domain.api_keys import Role
from shared.store import api_keys
from shared.store.api_keys import Principal

COOKIE = "fleet_console"
#: Where the console's entry point keeps its request id (audit entries and in-process API calls use it).
REQUEST_ID = "fleet.request_id"
#: The least role the console serves (every page reads what a viewer may read).
LEAST_ROLE = Role.VIEWER
_LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "[::1]", "::1"})


def is_local(request: flask.Request) -> bool:
    """A loopback host outside Google Cloud (the local stack serves plain HTTP, where a Secure cookie would
    never come back). In Cloud Run (``K_SERVICE`` is set) the cookie is always Secure, whatever Host says."""
    if os.environ.get("K_SERVICE"):
        return False
    host = (request.host or "").rsplit(":", 1)[0] if not (request.host or "").startswith("[") else "[::1]"
    return host in _LOCAL_HOSTS


def principal(request: flask.Request) -> Principal | None:
    """Who the session's key stands for; None without a cookie, for a malformed, unknown or revoked key, or
    for a key whose role may not use the console (refused and audited, see :func:`allowed`)."""
    token = request.cookies.get(COOKIE, "")
    if not token or len(token) > 4096:
        return None
    found = api_keys.verify(token)
    if found is None or not allowed(request, found, "session"):
        return None
    return found


def allowed(request: flask.Request, key: Principal, action: str) -> bool:
    """Whether ``key``'s role may use the console; a refusal is audited (``console.<action>``)."""
    if key.role.allows(LEAST_ROLE):
        return True
    reason = f"this API key's role ({key.role}) cannot use the console"
    request_id = str(request.environ.get(REQUEST_ID, "")) or "console"
    router.audit_refusal(key, action, LEAST_ROLE, request.path, request_id, reason, via="console")
    return False


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
