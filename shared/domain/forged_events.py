"""The ``forged_events`` security episode: which refused identities are counted where, and what opens.

A refused identity (shared/domain/rejections.py UNPROVEN: unsigned, bad signature, unknown or revoked key,
a bad enrollment token) is counted per UTC hour in two scopes:

- the **claimed agent**: more than the threshold opens a ``warning`` episode on that agent, whose owners
  must hear that someone speaks in its name (or that it lost its key: the usual innocent cause);
- the **claimed tenant**, counting only what no agent episode explains (an agent's events beyond its own
  threshold are its episode's): more than the threshold there means refusals spread over several agents,
  a spray or a tenant-wide credential problem, and opens a ``critical`` tenant episode.

A claimed agent that does not exist has no owners: its refusals keep counting for the tenant. A claimed
tenant that has no agent has no owners either: its episode is the deployment's, one per hour for all such
tenants (tenant ``_unknown``), so a stranger inventing names cannot flood Slack.

Everything shown is escaped: the claimed ids passed the id pattern, but the reasons quote what was sent.
Pure: the store and service (shared/services/forged_events.py) do the counting and the writes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from fleet_agent.contracts import AGENT_ID_PATTERN

from shared.domain.alerts import Alert, Severity
from shared.domain.notices import escape
from shared.domain.rejections import Rejected

RULE = "forged_events"
WINDOW = timedelta(hours=1)
#: The tenant of the episode for claimed tenants that have no agent (no real tenant id starts with ``_``).
UNKNOWN_TENANT = "_unknown"
#: Characters of a refusal's reason quoted in the episode.
REASON_SHOWN = 300


@dataclass(frozen=True)
class Scope:
    """One counter: ``a.<agent>`` or ``t.<tenant>`` in one UTC hour."""

    kind: str  # "a" or "t"
    name: str
    hour: datetime

    @property
    def key(self) -> str:
        return f"{RULE}.{self.kind}.{self.name}.{self.hour:%Y%m%d%H}"

    @property
    def until(self) -> datetime:
        return self.hour + WINDOW


def hour_of(at: datetime) -> datetime:
    at = at if at.tzinfo else at.replace(tzinfo=UTC)
    return at.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def claimed(value: str | None) -> str | None:
    """A claimed id if it is a well-formed one (anything else is not counted under its name)."""
    return value if value and re.fullmatch(AGENT_ID_PATTERN, value) else None


def scopes(rejected: Rejected, received_at: datetime) -> tuple[Scope | None, Scope | None]:
    """The agent's and the tenant's counters this refusal counts in (None: nothing well-formed claimed)."""
    hour = hour_of(received_at)
    agent, tenant = claimed(rejected.agent_id), claimed(rejected.tenant)
    return (Scope("a", agent, hour) if agent else None, Scope("t", tenant, hour) if tenant else None)


def crossed(count: int | None, threshold: int) -> bool:
    """More than ``threshold`` refusals in the hour (the episode opens once: its id is the scope's)."""
    return count is not None and count > threshold


def counts_for_tenant(agent_count: int | None, threshold: int, agent_has_episode: bool) -> bool:
    """Whether a refusal also counts for its tenant: not when its agent's own episode explains it."""
    return not (crossed(agent_count, threshold) and agent_has_episode)


def _latest(rejected: Rejected) -> str:
    reason = rejected.reason if len(rejected.reason) <= REASON_SHOWN else rejected.reason[:REASON_SHOWN] + "…"
    return f"latest: {escape(rejected.code.value)}: {escape(reason)}"


def agent_alert(scope: Scope, *, tenant: str, count: int, threshold: int, rejected: Rejected, at: datetime) -> Alert:
    """A warning on an agent that exists: more than ``threshold`` events in its name were refused."""
    return Alert(
        id=scope.key,
        kind=RULE,
        severity=Severity.WARNING,
        tenant=tenant,
        agent_id=scope.name,
        message=(
            f"{count} events claiming agent `{escape(scope.name)}` were refused this hour "
            f"(threshold {threshold}): someone without its key speaks in its name, or it lost its key. "
            f"{_latest(rejected)}"
        ),
        at=at,
        window=f"{scope.hour:%Y-%m-%dT%H}",
        details=_details(scope, count, threshold, rejected),
        until=scope.until,
    )


def tenant_alert(scope: Scope, *, known: bool, count: int, threshold: int, rejected: Rejected, at: datetime) -> Alert:
    """Critical: refusals spread over a tenant's agents. A tenant with no agent gets the deployment's
    hourly episode (under :data:`UNKNOWN_TENANT`) instead of one of its own."""
    if known:
        alert_id, tenant, subject = scope.key, scope.name, f"tenant *{escape(scope.name)}*"
    else:
        alert_id = Scope("t", UNKNOWN_TENANT, scope.hour).key
        tenant, subject = UNKNOWN_TENANT, f"tenants with no agent (first: *{escape(scope.name)}*)"
    return Alert(
        id=alert_id,
        kind=RULE,
        severity=Severity.CRITICAL,
        tenant=tenant,
        agent_id=None,
        message=(
            f"{count} events claiming {subject} were refused this hour, over several agents "
            f"(threshold {threshold}): someone is publishing in the names of agents they cannot sign for. "
            f"{_latest(rejected)}"
        ),
        at=at,
        window=f"{scope.hour:%Y-%m-%dT%H}",
        details={**_details(scope, count, threshold, rejected), "claimed_tenant": scope.name},
        until=scope.until,
    )


def _details(scope: Scope, count: int, threshold: int, rejected: Rejected) -> dict[str, object]:
    return {
        "scope": f"{scope.kind}.{scope.name}",
        "count": count,
        "threshold": threshold,
        "hour": scope.hour.isoformat(),
        "latest_code": rejected.code.value,
        "claimed_agent_id": claimed(rejected.agent_id),
    }
