"""The console's HTTP app (``functions/main.py: console``): routes, the session check, security headers.

Routes: GET /sign-in (the form), POST /sign-in (an API key -> verified -> the session cookie, see
shared/console/session.py), POST /sign-out, GET / (the fleet page), GET /fragments/fleet (the fleet
table's body, polled by static/console.js every 5 s), GET /agents/<agent_id> (one agent's panels,
shared/console/agent_page.py), GET /spend (spend_page.py), GET /alerts (open alert episodes and active
silences, alerts_page.py) with POST /alerts/<episode id>/ack and /snooze (through the API's own
handlers), GET /jobs (jobs_page.py), GET /approvals (read-only: decisions stay in Slack,
approvals_page.py), GET /remediation (the tenant's remediation policy, read-only,
remediation_page.py) and GET /assets/<file>. Without a valid session
(no cookie, a revoked or unknown key, or a ``scrape`` key: refused and audited, shared/console/session.py)
every page redirects to /sign-in. Every response carries a strict
Content-Security-Policy (no inline script or style: the pages load /assets/console.js and
/assets/console.css), nosniff and no-referrer. Templates are Jinja2 with autoescape on: every value from
agents or users is escaped.
"""

from __future__ import annotations

import logging
import mimetypes
import traceback
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import flask
import jinja2

from shared.api.core import ApiError
from shared.console import (
    agent_page,
    alerts_page,
    approvals_page,
    fleet,
    formats,
    jobs_page,
    remediation_page,
    session,
    spend_page,
)
from shared.platform import logs
from shared.store import api_keys, db
from shared.store.api_keys import Principal

log = logs.get_logger("console")

HERE = Path(__file__).resolve().parent
STATIC = HERE / "static"
#: The files /assets/ serves: exactly those shipped, by name (no path from the request reaches the disk). Not
#: /static/: functions-framework's Flask app keeps Flask's own /static/<path> route, which answers 404.
STATIC_FILES: dict[str, Path] = {p.name: p for p in STATIC.iterdir() if p.is_file()}
#: Spelled out: the platform's mimetypes table may say application/javascript, or nothing.
MIMETYPES = {".js": "text/javascript", ".css": "text/css"}

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}

#: Navigation: (path, label).
NAV = (
    ("/", "Fleet"),
    ("/spend", "Spend"),
    ("/alerts", "Alerts"),
    ("/jobs", "Jobs"),
    ("/approvals", "Approvals"),
    ("/remediation", "Remediation"),
)

ENV = jinja2.Environment(
    loader=jinja2.FileSystemLoader(str(HERE / "templates")),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
ENV.filters["usd"] = formats.usd  # one money format on every page


def render(template: str, status: int = 200, **context: Any) -> flask.Response:
    body = ENV.get_template(template).render(nav=NAV, **context)
    return flask.Response(body, status=status, mimetype="text/html")


def _redirect(location: str) -> flask.Response:
    response = flask.Response("", status=303)
    response.headers["Location"] = location
    return response


# --- views ------------------------------------------------------------------------------------


def sign_in_form(request: flask.Request) -> flask.Response:
    return render("sign_in.html", message=None, principal=None)


def sign_in(request: flask.Request) -> flask.Response:
    token = (request.form.get("key") or "").strip()
    principal = api_keys.verify(token) if token and len(token) <= 4096 else None
    if principal is None:
        return render("sign_in.html", 401, message="That API key is invalid or revoked.", principal=None)
    if not session.allowed(request, principal, "sign_in"):  # a scrape key: GET /metrics only (audited)
        message = f"A {principal.role} key cannot sign in to the console; use a viewer key or more."
        return render("sign_in.html", 403, message=message, principal=None)
    response = _redirect("/")
    session.sign_in(response, request, token)
    return response


def sign_out(request: flask.Request) -> flask.Response:
    response = _redirect("/sign-in")
    session.sign_out(response, request)
    return response


def fleet_page(request: flask.Request, principal: Principal) -> flask.Response:
    data = fleet.load(principal, request.args)
    health = fleet.health(principal)
    return render("fleet.html", principal=principal, fleet=data, health=health, states=fleet.STATES, active="/")


def fleet_fragment(request: flask.Request, principal: Principal) -> flask.Response:
    data = fleet.load(principal, request.args)
    return render("fleet_live.html", fleet=data)


def agent_detail(request: flask.Request, principal: Principal) -> flask.Response:
    """GET /agents/<agent_id>: the agent's panels; 404 when the key may not see it (as the API answers)."""
    agent_id = agent_page.agent_id_of(request.path.rstrip("/"))
    try:
        data = agent_page.load(principal, agent_id, request)
    except ApiError as err:
        title = "Agent not found" if err.status == 404 else err.reason
        return render("error.html", err.status, principal=principal, title=title)
    return render("agent.html", principal=principal, page=data, agent=data.agent, active="/")


def alerts(request: flask.Request, principal: Principal) -> flask.Response:
    data = alerts_page.load(request)
    return render("alerts.html", principal=principal, alerts=data, active="/alerts")


def alert_action(request: flask.Request, principal: Principal) -> flask.Response:
    """POST /alerts/<episode id>/ack or /snooze: the API's handler decides (roles, audit). Either way the answer
    is a 303 to /alerts with what happened, or the API's reason, in the query string (shown escaped), so
    refreshing the page repeats nothing."""
    match = alerts_page.ACTION_PATH.match(request.path.rstrip("/"))
    assert match is not None, "dispatched only for matching paths"
    episode_id, action = match["episode_id"], match["action"]
    act = alerts_page.acknowledge if action == "ack" else alerts_page.snooze
    return _redirect(alerts_page.after(action, episode_id, act(request, episode_id)))


def spend(request: flask.Request, principal: Principal) -> flask.Response:
    """GET /spend: the tenant's spend per agent and model, and its projections (shared/console/spend_page.py)."""
    return render("spend.html", principal=principal, spend=spend_page.load(request, principal), active="/spend")


def jobs(request: flask.Request, principal: Principal) -> flask.Response:
    """GET /jobs: the training queue, running and finished jobs (shared/console/jobs_page.py)."""
    return render("jobs.html", principal=principal, jobs=jobs_page.load(request), active="/jobs")


def approvals(request: flask.Request, principal: Principal) -> flask.Response:
    """GET /approvals: pending and recent approval requests, read-only (decisions stay in Slack)."""
    data = approvals_page.load(request)
    return render("approvals.html", principal=principal, approvals=data, active="/approvals")


def remediation(request: flask.Request, principal: Principal) -> flask.Response:
    """GET /remediation: the tenant's remediation policy in effect, read-only (shared/console/remediation_page.py)."""
    data = remediation_page.load(request, principal)
    return render("remediation.html", principal=principal, page=data, active="/remediation")


def static_file(name: str) -> flask.Response:
    path = STATIC_FILES.get(name)
    if path is None:
        return flask.Response("not found", status=404, mimetype="text/plain")
    mimetype = MIMETYPES.get(path.suffix) or mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    response = flask.Response(path.read_bytes(), mimetype=mimetype)
    response.headers["Cache-Control"] = "public, max-age=300"
    return response


Public = Callable[[flask.Request], flask.Response]
Signed = Callable[[flask.Request, Principal], flask.Response]

PUBLIC: dict[tuple[str, str], Public] = {
    ("GET", "/sign-in"): sign_in_form,
    ("POST", "/sign-in"): sign_in,
    ("POST", "/sign-out"): sign_out,
}
SIGNED: dict[tuple[str, str], Signed] = {
    ("GET", "/"): fleet_page,
    ("GET", "/fragments/fleet"): fleet_fragment,
    ("GET", "/alerts"): alerts,
    ("GET", "/spend"): spend,
    ("GET", "/jobs"): jobs,
    ("GET", "/approvals"): approvals,
    ("GET", "/remediation"): remediation,
}
#: Pages under a path prefix (the rest of the path is the page's argument, e.g. /agents/<agent_id>).
SIGNED_PREFIXES: dict[tuple[str, str], Signed] = {
    ("GET", agent_page.PREFIX): agent_detail,
}


def _signed(method: str, path: str) -> Signed | None:
    exact = SIGNED.get((method, path))
    if exact is not None:
        return exact
    for (m, prefix), view in SIGNED_PREFIXES.items():
        if m == method and path.startswith(prefix) and len(path) > len(prefix):
            return view
    return None


# --- the entry point --------------------------------------------------------------------------


def _dispatch(request: flask.Request, fields: dict[str, Any]) -> flask.Response:
    path = request.path.rstrip("/") or "/"
    if request.method == "GET" and path == "/healthz":
        return flask.Response("ok", mimetype="text/plain")
    if request.method == "GET" and path.startswith("/assets/"):
        return static_file(path.removeprefix("/assets/"))
    key = (request.method, path)
    if request.method == "POST" and not session.same_origin(request):
        return flask.Response("cross-origin request refused", status=403, mimetype="text/plain")
    public = PUBLIC.get(key)
    if public is not None:
        return public(request)
    signed = _signed(request.method, path)
    if signed is None and request.method == "POST" and alerts_page.ACTION_PATH.match(path):
        signed = alert_action
    if signed is None:
        known = {p for _, p in PUBLIC} | {p for _, p in SIGNED}
        status = 405 if path in known else 404
        return render("error.html", status, principal=None, title="Not found" if status == 404 else "Not allowed")
    principal = session.principal(request)
    if principal is None:
        response = _redirect("/sign-in")
        if session.COOKIE in request.cookies:  # a revoked or unknown key: forget it
            session.sign_out(response, request)
        return response
    fields["key_id"] = principal.key_id
    return signed(request, principal)


def handle(request: flask.Request) -> flask.Response:
    """Serve one request; never raises, logs one line, always sets the security headers."""
    request_id = uuid.uuid4().hex
    fields: dict[str, Any] = {"method": request.method, "path": request.path, "request_id": request_id}
    request.environ[session.REQUEST_ID] = request_id
    with logs.invocation(log, **fields) as entry:
        level = logging.INFO
        try:
            response = _dispatch(request, entry.fields)
        except Exception as exc:
            entry.fields["error"] = f"{type(exc).__name__}: {exc}"
            if isinstance(exc, db.transient_errors()):
                level = logging.WARNING
                response = render("error.html", 503, principal=None, title="Firestore is unavailable; retry shortly")
                response.headers["Retry-After"] = "1"
            else:
                level = logging.ERROR
                entry.fields["exception"] = traceback.format_exc()
                title = f"Internal error; see logs with request id {request_id}"
                response = render("error.html", 500, principal=None, title=title)
        for name, value in SECURITY_HEADERS.items():
            response.headers[name] = value
        if "Cache-Control" not in response.headers:
            response.headers["Cache-Control"] = "no-store"
        response.headers["X-Request-Id"] = request_id
        entry.outcome(f"{request.method} {request.path} {response.status_code}", level, status=response.status_code)
    return response
