"""The hourly summary: what is unhealthy or changed, spend, calls and success rate, top agents by spend,
built from plain inputs (no I/O). What it shares with the daily report is shared/domain/reports.py.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import Field

from shared.domain.agent_record import AgentRecord, Liveness
from shared.domain.lifecycle import Cause, State
from shared.domain.periods import Window
from shared.domain.reports import (
    TOP_AGENTS,
    ReportAgent,
    ReportModel,
    ReportUsage,
    agent_line,
    pct_change,
    report_hour,
    total_of,
    usage_of,
)
from shared.domain.usage import Totals

#: States that need an operator's attention. ``offline`` counts only when the system declared it
#: (a graceful stop is the agent's own choice); ``maintenance`` is planned.
UNHEALTHY: tuple[State, ...] = (
    State.COMPROMISED,
    State.QUARANTINED,
    State.FROZEN,
    State.SUSPENDED,
    State.OFFLINE,
    State.DEGRADED,
)
#: Status changes an agent makes on its own all day (idle <-> busy): not news unless an operator or
#: the system made them.
ROUTINE: frozenset[State] = frozenset({State.ACTIVE, State.IDLE, State.BUSY, State.PROVISIONING, State.REGISTERED})


class ReportHealth(ReportModel):
    """An agent that needs attention: an unhealthy state, or holds that stop its calls."""

    agent_id: str
    tenant: str
    status: str
    since: datetime
    cause: str | None = None
    reason: str | None = None
    holds: list[str] = Field(default_factory=list, description="Hold names: budget, breaker, pause...")
    liveness: str | None = Field(default=None, description="late, offline or frozen: heartbeats missed.")


class ReportChange(ReportModel):
    """Something that changed in the period: a new agent, or a notable change of status."""

    agent_id: str
    tenant: str
    kind: Literal["registered", "status"]
    status: str
    at: datetime
    cause: str | None = None
    reason: str | None = None
    changes: int = Field(default=1, description="Status changes of the agent in the period.")


class ReportEpisode(ReportModel):
    """An open alert episode."""

    id: str
    tenant: str | None = None
    agent_id: str | None = Field(default=None, description="null: the whole tenant.")
    rule: str
    severity: str
    title: str
    opened_at: datetime | None = None
    new: bool = Field(default=False, description="Opened during the report's period.")


class HourlyReport(ReportModel):
    """What is unhealthy or changed, spend, calls and success rate, top agents by spend."""

    kind: Literal["hourly"] = "hourly"
    tenant: str | None = Field(description="The tenant reported on; null: the whole fleet.")
    period: str = Field(description="The UTC hour covered, e.g. 2026-11-21T09.")
    starts_at: datetime
    ends_at: datetime
    generated_at: datetime
    agents: int = Field(description="Agents known (decommissioned ones excluded).")
    totals: ReportUsage
    previous: ReportUsage = Field(description="The hour before.")
    spend_change_pct: float | None = Field(description="Spend against the hour before, in percent.")
    unhealthy: list[ReportHealth] = Field(description="As of generated_at, worst first.")
    changes: list[ReportChange] = Field(description="During the hour, newest first.")
    episodes: list[ReportEpisode] = Field(description="Open alert episodes, most severe first.")
    top_agents: list[ReportAgent] = Field(description=f"The {TOP_AGENTS} biggest spenders of the hour.")


def _in(at: datetime | None, win: Window) -> bool:
    return at is not None and win.starts_at <= at.astimezone(UTC) < win.resets_at


def _liveness(agent: AgentRecord) -> str | None:
    """The liveness rung when not ``ok`` (late, offline, frozen: missed heartbeats), else None."""
    return None if agent.liveness is Liveness.OK or agent.status is State.DECOMMISSIONED else agent.liveness.value


def _is_unhealthy(agent: AgentRecord) -> bool:
    if _liveness(agent) is not None:
        return True
    if agent.status is State.OFFLINE:
        return agent.status_cause != Cause.HEARTBEAT.value  # a graceful stop is not a problem
    return agent.status in UNHEALTHY or (bool(agent.holds) and agent.status is not State.DECOMMISSIONED)


_SEVERITY_ORDER = {"emergency": 0, "critical": 1, "high": 2, "warning": 3, "info": 4}


def _episode(data: Mapping[str, Any], win: Window) -> ReportEpisode:
    opened = data.get("opened_at")
    opened_at = opened if isinstance(opened, datetime) else None
    rule = str(data.get("rule") or "")
    return ReportEpisode(
        id=str(data.get("id") or ""),
        tenant=data.get("tenant"),
        agent_id=data.get("agent_id"),
        rule=rule,
        severity=str(data.get("severity") or "warning"),
        title=str(data.get("title") or rule),
        opened_at=opened_at,
        new=_in(opened_at, win),
    )


def episodes_of(rows: Sequence[Mapping[str, Any]], win: Window, tenant: str | None) -> list[ReportEpisode]:
    """Open episodes (of ``tenant`` when given), most severe first, then newest first."""
    items = [_episode(row, win) for row in rows if str(row.get("state") or "open") == "open"]
    items = [e for e in items if tenant is None or e.tenant == tenant]
    items.sort(key=lambda e: (_SEVERITY_ORDER.get(e.severity, 9), -(e.opened_at.timestamp() if e.opened_at else 0)))
    return items


# -- the hourly summary --------------------------------------------------------------------------


def build_hourly(
    *,
    agents: Sequence[AgentRecord],
    hour: Mapping[str, Totals],
    previous: Mapping[str, Totals],
    episodes: Sequence[Mapping[str, Any]],
    at: datetime,
    generated_at: datetime,
    tenant: str | None = None,
) -> HourlyReport:
    """The summary of the last complete hour before ``at``.

    ``hour`` and ``previous`` are each agent's totals of that hour and of the hour before (agents
    without calls may be missing). Health is as the agent documents are now.
    """
    win = report_hour(at)
    agents = [a for a in agents if tenant is None or a.tenant == tenant]
    known = [a for a in agents if a.status is not State.DECOMMISSIONED]
    by_id = {a.agent_id: a for a in agents}
    total = total_of(t for agent_id, t in hour.items() if agent_id in by_id)
    before = total_of(t for agent_id, t in previous.items() if agent_id in by_id)

    rank = {state: n for n, state in enumerate(UNHEALTHY)}
    unhealthy = [
        ReportHealth(
            agent_id=a.agent_id,
            tenant=a.tenant,
            status=a.status.value,
            since=a.status_since,
            cause=a.status_cause,
            reason=a.status_reason,
            holds=sorted(a.holds),
            liveness=_liveness(a),
        )
        for a in sorted(agents, key=lambda a: (rank.get(a.status, len(rank)), a.agent_id))
        if _is_unhealthy(a)
    ]

    changes: list[ReportChange] = []
    for a in agents:
        in_hour = sum(1 for t in a.status_changes if _in(t, win))
        if _in(a.registered_at, win):
            changes.append(
                ReportChange(
                    agent_id=a.agent_id,
                    tenant=a.tenant,
                    kind="registered",
                    status=a.status.value,
                    at=a.registered_at,
                    changes=in_hour,
                )
            )
        elif _in(a.status_since, win) and (
            a.status not in ROUTINE or a.status_cause in (Cause.OPERATOR.value, Cause.SYSTEM.value)
        ):
            changes.append(
                ReportChange(
                    agent_id=a.agent_id,
                    tenant=a.tenant,
                    kind="status",
                    status=a.status.value,
                    at=a.status_since,
                    cause=a.status_cause,
                    reason=a.status_reason,
                    changes=max(1, in_hour),
                )
            )
    changes.sort(key=lambda c: (c.at, c.agent_id), reverse=True)

    spenders = sorted(
        ((agent_id, t) for agent_id, t in hour.items() if agent_id in by_id and (t.usd_nanos or t.calls)),
        key=lambda item: (-item[1].usd_nanos, -item[1].calls, item[0]),
    )
    top = [ReportAgent(**agent_line(by_id[agent_id], t)) for agent_id, t in spenders[:TOP_AGENTS]]

    return HourlyReport(
        tenant=tenant,
        period=win.key,
        starts_at=win.starts_at,
        ends_at=win.resets_at,
        generated_at=generated_at,
        agents=len(known),
        totals=usage_of(total),
        previous=usage_of(before),
        spend_change_pct=pct_change(total.usd_nanos, before.usd_nanos),
        unhealthy=unhealthy,
        changes=changes,
        episodes=episodes_of(episodes, win, tenant),
        top_agents=top,
    )
