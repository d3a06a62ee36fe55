"""The fleet page's data: agents by status and tenant, with liveness rung, security score, identity, last
heartbeat and spend today, filtered server-side by the query string.

Tenant and status narrow the Firestore query itself (as GET /v1/agents does); type, capability, label and
version are applied to that page in memory. A tenant-scoped key sees only its tenant, whatever it asks.
Spend today is one read per agent shown, all in one round trip (shared/store/usage_today.py). A key that sees
every tenant also gets the deployment's open ``fleet_health`` episodes above the table (one query, at most
:data:`MAX_HEALTH` reads; shared/domain/fleet_health.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from fleet_agent.contracts import AGENT_ID_PATTERN

from shared.api import core
from shared.api.bodies import agent_view
from shared.console import formats
from shared.domain import fleet_health as health_rules
from shared.domain.agent_record import AgentRecord
from shared.domain.lifecycle import State
from shared.domain.pricing import to_usd
from shared.store import agents as agent_store
from shared.store import episodes as episode_store
from shared.store import usage_today
from shared.store.api_keys import Principal

#: At most this many agents on the page (the API's largest page).
MAX_AGENTS = core.MAX_PAGE_SIZE
#: At most this many open fleet_health episodes shown (one per kind is open at a time).
MAX_HEALTH = 10
STATES = tuple(s.value for s in State)
FILTERS = ("tenant", "status", "type", "capability", "label", "version")


@dataclass(frozen=True)
class Filters:
    """The fleet page's filters from the query string (empty: not filtered). Invalid values are dropped
    with a note, not refused: a page still renders."""

    values: dict[str, str] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    def get(self, name: str) -> str:
        return self.values.get(name, "")


@dataclass(frozen=True)
class Row:
    agent_id: str
    tenant: str
    name: str
    agent_type: str
    version: str
    status: str
    liveness: str
    security_score: int
    identity: str
    last_heartbeat_at: datetime | None
    spend_today_usd: str
    capabilities: tuple[str, ...]
    labels: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Fleet:
    rows: list[Row]
    filters: Filters
    #: The tenant the key is scoped to (None: every tenant).
    scope: str | None
    truncated: bool
    by_status: dict[str, int]
    #: How many agents one view reads at most (by id, after the tenant and status filters).
    limit: int = MAX_AGENTS


def parse_filters(args: Any, principal: Principal) -> Filters:
    """The filters of ``request.args``; a scoped key's tenant replaces any other."""
    values: dict[str, str] = {}
    notes: list[str] = []
    for name in FILTERS:
        value = (args.get(name) or "").strip()[:200]
        if value:
            values[name] = value
    tenant = values.get("tenant")
    if tenant is not None and not core.is_agent_id(tenant):
        notes.append(f"tenant must match {AGENT_ID_PATTERN}; ignored")
        values.pop("tenant")
    if principal.tenant is not None:
        if tenant is not None and tenant != principal.tenant:
            notes.append(f"this API key only sees tenant {principal.tenant}")
        values["tenant"] = principal.tenant
    status = values.get("status")
    if status is not None and status not in STATES:
        notes.append(f"status must be one of: {', '.join(STATES)}; ignored")
        values.pop("status")
    return Filters(values, tuple(notes))


def _matches(record: AgentRecord, filters: Filters) -> bool:
    if filters.get("type") and record.agent_type != filters.get("type"):
        return False
    if filters.get("version") and record.version != filters.get("version"):
        return False
    if filters.get("capability") and filters.get("capability") not in record.capabilities:
        return False
    label = filters.get("label")
    if label:
        key, sep, value = label.partition("=")
        if key not in record.labels or (sep and record.labels[key] != value):
            return False
    return True


def _row(record: AgentRecord, spent: int) -> Row:
    view = agent_view(record)
    score = record.health.get("score")
    return Row(
        agent_id=view.agent_id,
        tenant=view.tenant,
        name=view.name,
        agent_type=view.agent_type,
        version=view.version,
        status=view.status.value,
        liveness=record.liveness.value,
        security_score=round(score) if isinstance(score, int | float) else 100,
        identity=str(view.identity.status),
        last_heartbeat_at=view.last_heartbeat_at,
        spend_today_usd=formats.usd(to_usd(spent)),
        capabilities=tuple(view.capabilities),
        labels=tuple(sorted(view.labels.items())),
    )


def load(principal: Principal, args: Any) -> Fleet:
    """The fleet as ``principal`` may see it, filtered by ``args`` (the query string)."""
    filters = parse_filters(args, principal)
    records, more = agent_store.list_agents(
        tenant=filters.get("tenant") or None,
        status=filters.get("status") or None,
        page_size=MAX_AGENTS,
        after=None,
    )
    shown = [r for r in records if principal.can_see(r.tenant) and _matches(r, filters)]
    today = usage_today.agents_today([r.agent_id for r in shown], core.now())
    rows = [_row(r, today[r.agent_id].usd_nanos) for r in shown]
    rows.sort(key=lambda r: (r.tenant, r.status, r.name, r.agent_id))
    by_status: dict[str, int] = {}
    for row in rows:
        by_status[row.status] = by_status.get(row.status, 0) + 1
    return Fleet(rows, filters, principal.tenant, more is not None, by_status)


def health(principal: Principal) -> list[dict[str, Any]]:
    """The open ``fleet_health`` episodes (kind, severity, summary, since), for a key that sees every tenant;
    none for a tenant's key (they are the deployment's, tenant ``_fleet``)."""
    if principal.tenant is not None:
        return []
    rows = episode_store.list_episodes(state="open", tenant=health_rules.TENANT, limit=MAX_HEALTH)
    return [
        {
            "id": str(row.get("id")),
            "kind": str((row.get("details") or {}).get("kind") or ""),
            "severity": str(row.get("severity") or "warning"),
            "summary": str(row.get("summary") or ""),
            "opened_at": formats.when(row.get("opened_at")),
        }
        for row in rows
        if row.get("rule") == health_rules.RULE
    ]
