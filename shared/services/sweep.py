"""The minute job: the liveness sweep, root alerts, the Slack outbox (shared/services/notifier.py), then expired
approval requests (shared/services/approvals.py), ended lease epochs, the budget forecast
(shared/services/budget_forecasts.py) and the fleet's own health (shared/services/fleet_health.py), whose
notices, due at once, are sent at the end of the same run (``notifier.send_due``).

The sweep reads only agents whose ``sweep_at`` has passed (shared/domain/liveness.py), and moves
each with the agent store's conditional write: concurrent sweeps make each transition once. The
document the query returned is the one the step is computed on (no second read).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from shared.domain import episodes as domain
from shared.domain import liveness
from shared.domain import silences as silence_rules
from shared.domain.agent_record import AgentRecord, Liveness, Plan
from shared.domain.remediation import Ask
from shared.platform import logs
from shared.services import (
    agent_commands,
    approvals,
    budget_forecasts,
    command_sweep,
    fleet_health,
    leases,
    notifier,
    remediation,
)
from shared.store import agents as agent_store
from shared.store import agents_due
from shared.store import config as config_store
from shared.store import episodes as episode_store
from shared.store import silences as silence_store

log = logs.get_logger("sweep")
PAGE = 300
#: Rungs that count towards a tenant's root alert.
SILENT = (Liveness.OFFLINE, Liveness.FROZEN)


@dataclass
class Swept:
    due: int = 0
    moved: dict[str, int] = field(default_factory=dict)
    #: Tenants with agents newly offline or frozen (their root alert is checked).
    tenants: set[str] = field(default_factory=set)
    roots_opened: int = 0
    roots_resolved: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "due": self.due,
            "moved": self.moved,
            "roots_opened": self.roots_opened,
            "roots_resolved": self.roots_resolved,
        }


def run(now: datetime) -> dict[str, Any]:
    swept = sweep(now)
    roots(swept, now)
    # Remediation commands not acknowledged by their deadline: re-sent once, then escalated.
    commands = command_sweep.run(now)
    flushed = notifier.flush(now)
    # Approval requests: deny the lapsed ones, post those Slack refused before.
    decided = approvals.sweep(now)
    # Budget leases: ended epochs' unspent charge back to their tenants' pools (a dead agent's lease).
    returned = leases.release_due(now)
    # Budget forecasts last (a failure there leaves the outbox flushed): open or resolve the budgeted
    # tenants' and agents' budget_forecast episodes; their notices go out from the next run (group wait).
    forecast = budget_forecasts.run(now)
    # The fleet watching itself: dead letters, rejections, Slack failures, the outbox, model loads.
    health = fleet_health.run(now)
    # Its notices are due now but were written after the flush: sent now, not at the next tick.
    due_now = health.pop("notices", [])
    own = notifier.send_due(due_now).as_dict() if due_now else {}
    return {
        **swept.as_dict(),
        "commands": commands,
        "notifications": flushed.as_dict(),
        "own_notifications": own,
        "leases_returned": returned,
        "budget_forecast": forecast,
        "fleet_health": health,
        **decided,
    }


def sweep(now: datetime) -> Swept:
    out = Swept()
    silences = silence_store.active(now)
    for snap in agents_due.due_for_sweep(now, PAGE):
        out.due += 1
        _step(snap.record, now, silences, out)
    return out


def _step(record: AgentRecord, now: datetime, silences: list[silence_rules.Silence], out: Swept) -> None:
    config = config_store.alerting(record.tenant)
    window = silence_rules.maintenance_until(silences, now, tenant=record.tenant, agent_id=record.agent_id)

    asks: list[Ask] = []

    def decide(current: AgentRecord | None) -> Plan:
        if current is None:
            return Plan(skipped="gone")
        plan = liveness.step(current, now, config=config, maintenance_until=window)
        # A frozen agent: the tenant's remediation policy (restart, by default), in the same write.
        return remediation.on_sweep(current, plan, now, asks)

    plan = agent_store.update(record.agent_id, decide)
    if plan.commands:
        agent_commands.publish(plan.commands)
    remediation.ask(asks, now)  # after the commands; never raises
    rung = plan.changes.get("liveness")
    if rung is not None:
        out.moved[str(rung)] = out.moved.get(str(rung), 0) + 1
        if rung in SILENT:
            out.tenants.add(record.tenant)


def roots(swept: Swept, now: datetime) -> None:
    """Open a tenant's root alert when a large share of its agents is offline; resolve it when most
    are back. Checked for tenants with new offline agents and tenants whose root is open."""
    for tenant in sorted(swept.tenants | set(episode_store.tenants_with_open_root())):
        opened, resolved = _root(tenant, now)
        swept.roots_opened += opened
        swept.roots_resolved += resolved


def _root(tenant: str, now: datetime) -> tuple[int, int]:
    config = config_store.alerting(tenant)
    silent_rungs = [rung.value for rung in SILENT]
    total, silent = agent_store.count(tenant), agent_store.count(tenant, silent_rungs)
    share = silent / total if total else 0.0
    listed = agent_store.ids(tenant, silent_rungs) if silent >= config.root_min_agents else []

    def decide(state: dict[str, Any]) -> tuple[dict[str, Any], list[domain.EpisodeWrite]]:
        open_ = dict(state.get("episodes") or {})
        seq = int(state.get("episode_seq") or 0)
        current = open_.get(domain.FLEET_OFFLINE)
        if current is None and silent >= config.root_min_agents and share >= config.root_share:
            seq += 1
            episode = domain.episode_id(f"t.{tenant}", domain.FLEET_OFFLINE, seq)
            more = f" and {silent - len(listed)} more" if silent > len(listed) else ""
            write = domain.new_episode(
                episode,
                rule=domain.FLEET_OFFLINE,
                severity=domain.Severity.EMERGENCY if share >= 0.9 else domain.Severity.CRITICAL,
                tenant=tenant,
                agent_id=None,
                at=now,
                summary=(
                    f"{silent} of {total} agents of {tenant} are offline ({share:.0%}): a shared cause is likely. "
                    f"Their own alerts are held back under this one. Offline: {', '.join(listed)}{more}"
                ),
                details={"offline": silent, "total": total, "agents": listed},
                config=config,
            )
            open_[domain.FLEET_OFFLINE] = {"id": episode, "severity": write.fields["severity"], "opened_at": now}
            return {"episodes": open_, "episode_seq": seq, "root_open": True}, [write]
        if current is not None and share < config.root_share / 2:
            summary = f"{silent} of {total} agents of {tenant} offline now ({share:.0%})"
            snapshot = {**current, "rule": domain.FLEET_OFFLINE, "tenant": tenant, "agent_id": None}
            snapshot["title"] = domain.TITLES[domain.FLEET_OFFLINE]
            del open_[domain.FLEET_OFFLINE]
            return {"episodes": open_, "root_open": False}, [domain.resolution(snapshot, now, summary)]
        return {}, []

    writes = episode_store.update_tenant(tenant, decide)
    opened = sum(1 for w in writes if w.fields.get("state") == "open")
    if writes:
        logs.log(log, f"root alert for {tenant}: {'opened' if opened else 'resolved'}", tenant=tenant, share=share)
    return opened, len(writes) - opened
