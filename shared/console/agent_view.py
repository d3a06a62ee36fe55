"""The agent page's view model (pure, no I/O): from what the API already returns (the agent, its heartbeat
history, its usage with holds and lease, its alerts, its audit entries) build the panels the page shows.

A panel is one function ``(AgentData) -> dict | None`` registered under a name (:func:`panel`); the page
renders :func:`panels` in registration order, each with the template ``panels/<name>.html`` (a panel that
returns None is left out). Adding a panel is one function here (or anywhere, with ``@panel``) and one
small template. Inputs are the API's views, either as pydantic models or their JSON dicts
(``GET /v1/agents/{id}``, ``/history``, ``/usage``, ``GET /v1/alerts?agent_id=``, ``GET /v1/audit?target=``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from markupsafe import Markup

from shared.console import charts
from shared.console.formats import ago, decimal, plain, until, usd, when
from shared.domain import holds as hold_kinds
from shared.domain.health import HealthConfig

#: Status changes the timeline shows at most (newest first).
TIMELINE_LIMIT = 20
#: Resolved alert episodes shown besides the open ones.
RECENT_EPISODES = 10
#: Commands shown at most (newest first).
RECENT_COMMANDS = 10
PERIOD_ORDER = ("hour", "day", "month")
_NEVER = datetime.min.replace(tzinfo=UTC)


@dataclass(frozen=True)
class Metric:
    """A metric the page charts: where it is in a heartbeat (the first name present wins), its unit and
    the threshold drawn on its chart."""

    key: str
    title: str
    names: tuple[str, ...]
    unit: str = ""
    threshold: float | None = None
    scale: float = 1.0


_HEALTH = HealthConfig()
METRICS = (
    Metric("error_rate", "Error rate", ("error_rate",), "%", _HEALTH.error_rate * 100, scale=100.0),
    Metric("latency", "Latency p95", ("latency_ms_p95", "latency_ms"), "ms"),
    Metric("cpu", "CPU", ("cpu_pct",), "%", _HEALTH.saturation_pct),
    Metric("memory", "Memory", ("memory_pct",), "%", _HEALTH.saturation_pct),
    Metric("tokens", "Tokens/s", ("tokens_per_s",), ""),
)


@dataclass(frozen=True)
class AgentData:
    """What the page has read through the API, as JSON-like dicts (see :meth:`of`)."""

    agent: Mapping[str, Any]
    now: datetime
    samples: list[Mapping[str, Any]] = field(default_factory=list)
    usage: Mapping[str, Any] | None = None
    alerts: list[Mapping[str, Any]] = field(default_factory=list)
    #: The agent's audit entries, newest first (None: not read).
    audit: list[Mapping[str, Any]] | None = None
    #: Per panel name, why its data is missing or cut (shown on the panel).
    notes: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def of(
        cls,
        agent: Any,
        now: datetime,
        history: Any = None,
        usage: Any = None,
        alerts: Iterable[Any] = (),
        *,
        audit: Iterable[Any] | None = None,
        notes: Mapping[str, str] | None = None,
    ) -> AgentData:
        """From the API's views or their dicts: ``history`` is a HistoryView (or its samples list)."""
        hist = plain(history)
        samples = hist.get("samples", []) if isinstance(hist, Mapping) else list(hist or [])
        return cls(
            agent=plain(agent),
            now=now,
            samples=[plain(s) for s in samples],
            usage=plain(usage),
            alerts=[plain(a) for a in alerts],
            audit=None if audit is None else [plain(e) for e in audit],
            notes=dict(notes or {}),
        )


Panel = Callable[[AgentData], "dict[str, Any] | None"]
_PANELS: dict[str, Panel] = {}


def panel(name: str) -> Callable[[Panel], Panel]:
    """Register a panel under ``name`` (its template: ``panels/<name>.html``); a name registers once."""

    def register(fn: Panel) -> Panel:
        if name in _PANELS:
            raise ValueError(f"panel {name} is already registered")
        _PANELS[name] = fn
        return fn

    return register


def panel_names() -> list[str]:
    return list(_PANELS)


def panels(data: AgentData, only: Iterable[str] | None = None) -> list[dict[str, Any]]:
    """Every registered panel's dict (or those in ``only``), in registration order, each with ``name``
    and ``template``; a panel that has nothing to show (None) is left out."""
    wanted = None if only is None else set(only)
    out = []
    for name, fn in _PANELS.items():
        if wanted is not None and name not in wanted:
            continue
        body = fn(data)
        if body is not None:
            out.append({"name": name, "template": f"panels/{name}.html", **body})
    return out


def _metric_value(metrics: Mapping[str, Any], metric: Metric) -> float | None:
    for name in metric.names:
        value = metrics.get(name)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value) * metric.scale
    return None


def series(samples: Iterable[Mapping[str, Any]], metric: Metric) -> list[charts.Point]:
    """The metric's points (server receive time, value in the chart's unit), oldest first."""
    points = []
    for sample in samples:
        at = when(sample.get("at"))
        metrics = sample.get("metrics")
        value = _metric_value(metrics, metric) if isinstance(metrics, Mapping) and at else None
        if at is not None and value is not None:
            points.append((at, value))
    return points


def timeline(data: AgentData) -> list[dict[str, Any]]:
    """Status changes, newest first: each time the agent's reported status changed in its history, and
    the server's lifecycle state since ``status_since``."""
    entries = []
    previous = None
    for sample in data.samples:
        status = sample.get("status")
        if status != previous:
            entries.append({"at": when(sample.get("at")), "status": status, "source": "reported"})
            previous = status
    since = when(data.agent.get("status_since"))
    if data.agent.get("status") and since is not None:
        entries.append({"at": since, "status": data.agent["status"], "source": "server"})
    entries = [e for e in entries if e["at"] is not None]
    entries.sort(key=lambda e: (e["at"], e["source"]), reverse=True)
    return [{**e, "ago": ago(e["at"], data.now)} for e in entries[:TIMELINE_LIMIT]]


@panel("status")
def status_panel(data: AgentData) -> dict[str, Any]:
    agent = data.agent
    last = when(agent.get("last_heartbeat_at"))
    return {
        "title": "Status",
        "status": agent.get("status"),
        "reported_status": agent.get("reported_status"),
        "since": when(agent.get("status_since")),
        "last_heartbeat_at": last,
        "last_heartbeat_ago": ago(last, data.now),
        "late_after": when(agent.get("late_after")),
        "version": agent.get("version"),
        "versions": list(agent.get("versions") or []),
        "learned": agent.get("learned") or {},
        "identity": agent.get("identity") or {},
        "liveness": agent.get("liveness"),
        "security_score": agent.get("security_score"),
        "timeline": timeline(data),
    }


@panel("metrics")
def metrics_panel(data: AgentData) -> dict[str, Any]:
    """One line chart per metric the agent reports (metrics it never reported are left out)."""
    items = []
    for metric in METRICS:
        points = series(data.samples, metric)
        if not points:
            continue
        svg: Markup = charts.line_chart(points, title=metric.title, unit=metric.unit, threshold=metric.threshold)
        items.append(
            {
                "key": metric.key,
                "title": metric.title,
                "unit": metric.unit,
                "threshold": metric.threshold,
                "last": points[-1][1],
                "points": len(points),
                "svg": svg,
            }
        )
    return {"title": "Metrics", "charts": items, "samples": len(data.samples)}


def stamp(at: datetime | None) -> str | None:
    """An absolute time as the page prints it (UTC, to the second), beside a relative one."""
    return f"{at.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC" if at is not None else None


def period_rows(usage: Mapping[str, Any] | None, now: datetime) -> list[dict[str, Any]]:
    """Spend per period (hour, day, month) with budget, remaining, used share and reset time."""
    periods = (usage or {}).get("periods") or {}
    rows = []
    for name in sorted(periods, key=lambda p: (PERIOD_ORDER.index(p) if p in PERIOD_ORDER else 9, p)):
        period = periods[name]
        spend, budget = decimal(period.get("spend_usd")), decimal(period.get("budget_usd"))
        resets = when(period.get("resets_at"))
        rows.append(
            {
                "period": name,
                "key": period.get("period"),
                "spend_usd": spend,
                "spend": usd(spend),
                "budget": usd(budget) if budget is not None else None,
                "remaining": usd(decimal(period.get("remaining_usd"))) if budget is not None else None,
                "used_ratio": min(float(spend / budget), 1.0) if spend is not None and budget else None,
                "over": bool(spend is not None and budget is not None and spend >= budget),
                "tokens": period.get("tokens"),
                "budget_tokens": period.get("budget_tokens"),
                "remaining_tokens": period.get("remaining_tokens"),
                "calls": period.get("calls"),
                "failures": period.get("failures"),
                "unpriced_calls": period.get("unpriced_calls"),
                "resets_at": resets,
                "resets_in": until(resets, now),
                "resets_utc": stamp(resets),
            }
        )
    return rows


@panel("spend")
def spend_panel(data: AgentData) -> dict[str, Any] | None:
    if data.usage is None:
        return None
    lease = data.usage.get("lease")
    lease_row = None
    if isinstance(lease, Mapping):
        expires = when(lease.get("expires_at"))
        lease_row = {
            "epoch": lease.get("epoch"),
            "lease_id": lease.get("lease_id"),
            "granted": usd(decimal(lease.get("granted_usd"))),
            "charged": usd(decimal(lease.get("charged_usd"))),
            "granted_tokens": lease.get("granted_tokens"),
            "expires_at": expires,
            "expires_in": until(expires, data.now),
            "expires_utc": stamp(expires),
            "returns_at": when(lease.get("returns_at")),
        }
    return {
        "title": "Spend",
        "periods": period_rows(data.usage, data.now),
        "budget_source": data.usage.get("budget_source"),
        "lease": lease_row,
    }


@panel("holds")
def holds_panel(data: AgentData) -> dict[str, Any] | None:
    """Current holds by name, with the reason and when each lifts by itself (None: until lifted)."""
    if data.usage is None:
        return None
    items = []
    for name, hold in sorted((data.usage.get("holds") or {}).items()):
        lifts = when(hold.get("until"))
        items.append(
            {
                "name": name,
                "command": hold.get("command"),
                "reason": hold.get("reason") or "",
                "issued_at": when(hold.get("issued_at")),
                "until": lifts,
                "lifts_in": until(lifts, data.now) if lifts else "until lifted",
                "lifts_utc": stamp(lifts),
            }
        )
    return {"title": "Holds", "holds": items}


#: Audit actions that record a command sent to the agent (besides ``agent.hold.<hold>``), by command.
COMMAND_ACTIONS = {"agent.release": "release", "agent.key_rotate": "key_rotated"}


def command_of(entry: Mapping[str, Any]) -> str | None:
    """The command an audit entry records (None: the entry is not a command): a hold placed or lifted sends
    its kind's command (pause/resume, budget_exhausted/budget_restored...), a release ``release``, a
    confirmed key rotation ``key_rotated``, a tracked command (``agent.command.<command>``) its command; a move to
    ``decommissioned`` is shown as ``decommission``."""
    action = str(entry.get("action") or "")
    kind = hold_kinds.KINDS.get(action.removeprefix("agent.hold.")) if action.startswith("agent.hold.") else None
    if kind is not None:
        return (kind.lifts if entry.get("outcome") == "lifted" else kind.places).value
    details = entry.get("details") or {}
    if action == "agent.transition" and isinstance(details, Mapping) and details.get("to") == "decommissioned":
        return "decommission"
    if action.startswith("agent.command."):  # a tracked command (restart, drain...): sent, acked, resent
        return action.removeprefix("agent.command.") or None
    return COMMAND_ACTIONS.get(action)


@panel("commands")
def commands_panel(data: AgentData) -> dict[str, Any] | None:
    """The newest commands from the agent's audit entries: what, when, by whom, why and the outcome."""
    note = data.notes.get("commands")
    if data.audit is None and note is None:
        return None
    items = []
    for entry in data.audit or []:
        command = command_of(entry)
        if command is None:
            continue
        raw = entry.get("details")
        details: Mapping[str, Any] = raw if isinstance(raw, Mapping) else {}
        at = when(entry.get("at"))
        items.append(
            {
                "command": command,
                "action": entry.get("action"),
                "at": at,
                "ago": ago(at, data.now),
                "actor": entry.get("actor") or "",
                "reason": details.get("reason") or "",
                "outcome": entry.get("outcome") or "",
                "origin": details.get("origin") or "",  # operator, bulk or policy:<rule>
            }
        )
    return {"title": "Recent commands", "commands": items[:RECENT_COMMANDS], "note": note}


def _episode(alert: Mapping[str, Any], now: datetime) -> dict[str, Any]:
    opened, resolved = when(alert.get("opened_at")), when(alert.get("resolved_at"))
    return {
        "id": alert.get("id"),
        "rule": alert.get("rule"),
        "title": alert.get("title") or alert.get("rule"),
        "severity": alert.get("severity"),
        "state": alert.get("state"),
        "message": alert.get("message") or "",
        "opened_at": opened,
        "opened_ago": ago(opened, now),
        "resolved_at": resolved,
        "acknowledged_by": alert.get("acknowledged_by"),
        "silenced": alert.get("silenced"),
    }


@panel("episodes")
def episodes_panel(data: AgentData) -> dict[str, Any]:
    """Open alert episodes (newest first), then the most recent resolved ones (an episode read twice, as
    open and among the newest, is shown once)."""
    mine = {a.get("id"): a for a in data.alerts if a.get("agent_id") == data.agent.get("agent_id")}.values()
    newest = sorted(mine, key=lambda a: (when(a.get("opened_at")) or _NEVER, str(a.get("id") or "")), reverse=True)
    return {
        "title": "Alert episodes",
        "open": [_episode(a, data.now) for a in newest if a.get("state") == "open"],
        "recent": [_episode(a, data.now) for a in newest if a.get("state") != "open"][:RECENT_EPISODES],
        "note": data.notes.get("episodes"),
    }
