"""Budget leases around a counted batch, and the return of ended epochs (granting is lease_grants.py's).

- **Before counting** (:func:`before_count`): was the batch spent under the agent's open or previous
  epoch? Then its cost goes to that epoch's own counter, in the batch's commit. If not (no lease, an epoch
  already returned, failing open), its cost goes into the tenant's reserve, in the same commit.
- **After counting** (:func:`after_count`): an epoch's spend beyond its grants and the most over-estimate
  the agent reported is ``lease_exceeded``: alerted, and the agent paused. A batch naming an older lease
  than the latest gets the latest again (a lost command). A batch that asks gets the next lease.
- **Return** (:func:`release_due`, from the minute tick): an epoch ended ``grace`` ago (its batches in
  flight have arrived) gives its unspent charge back to the tenant's reserve, so a dead agent's lease
  returns to the pool.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime

from fleet_agent.contracts import Command, CommandType, CostBatch, LeaseUse

from shared.domain import holds, spend
from shared.domain import leases as domain
from shared.domain.agent_record import AgentRecord, combine
from shared.domain.alerts import Alert, Severity
from shared.domain.leases import Amount, Ledger
from shared.domain.pricing import format_usd
from shared.domain.usage import Applied, EpochTag, Tally
from shared.platform import logs, settings
from shared.services import agent_commands, lease_grants, notifier
from shared.store import agents as agent_store
from shared.store import episodes as episode_store
from shared.store import lease_reserve as reserve_store
from shared.store import leases as store
from shared.store import usage as usage_store
from shared.store.increments import Increments

log = logs.get_logger("leases")


@dataclass
class Context:
    """How a batch stands to its agent's lease, judged before it is counted."""

    ledger: Ledger | None = None
    #: The epoch the batch was spent under (the ledger's open or previous one), if any.
    epoch: domain.Epoch | None = None
    #: The batch's counter update for that epoch.
    tag: EpochTag | None = None
    #: Increments the batch's commit must also make (spend outside a lease, into the reserve).
    extra: list[Increments] = field(default_factory=list)


def before_count(agent: AgentRecord, batch: CostBatch, tally: Tally, *, tenant_budget: bool, now: datetime) -> Context:
    """The epoch the batch was spent under, or the reserve increments for spend outside one. A batch
    without lease state from an agent of a tenant without a budget needs nothing (no read)."""
    if batch.lease is None and not tenant_budget:
        return Context()
    grace = lease_grants.cfg().grace_s
    ledger = store.cached(agent.agent_id, settings.get().config_cache_s)
    named = ledger.named(batch.lease)
    names = batch.lease is not None and batch.lease.lease_id is not None
    if (names and named is None) or (named is not None and now >= named.release_at(grace)):
        # An epoch granted since this instance last looked, a late batch, or one that may have been
        # returned by another instance: judged on a fresh read.
        ledger = store.read(agent.agent_id).ledger
        named = ledger.named(batch.lease)
    outside = reserve_store.outside_lease(agent.tenant, tally) if tenant_budget else []
    if named is not None and batch.lease is not None:
        over = batch.lease
        tag = EpochTag(named.id, named.hour, domain.nanos(over.over_usd), over.over_tokens)
        # An epoch whose grants never went into the reserve (begun before the tenant had a budget): its
        # spend goes in as it is counted.
        return Context(ledger=ledger, epoch=named, tag=tag, extra=[] if named.reserved else outside)
    return Context(ledger=ledger, extra=outside)


def after_count(
    agent: AgentRecord,
    batch: CostBatch,
    applied: Applied | None,
    ctx: Context,
    *,
    now: datetime,
    asked_at: datetime | None = None,
) -> list[Command]:
    """After the batch is counted (``applied``; None for a redelivery or a batch without records): judge
    it against its lease, re-send a lease it seems to have missed, grant the one it asks for (``asked_at``:
    when the batch was published). Returns the commands sent."""
    lease = batch.lease
    if lease is None:
        return []
    sent: list[Command] = []
    ledger = ctx.ledger
    if ctx.epoch is not None and applied is not None and applied.epoch is not None:
        sent += _judge(agent, ctx.epoch, applied, now)
    resend_after = settings.get().resend_after_s
    if ledger is not None and domain.missed(ledger, lease, now, resend_after) and _may_resend(agent):
        again = lease_grants.resend_last(agent, now)
        if again is not None:
            agent_commands.publish([again])
            sent.append(again)
    if lease.request_id is not None and not any(c.command is CommandType.PAUSE for c in sent):
        granted = lease_grants.grant(
            agent, lease, now, models=sorted({r.model for r in batch.records}), asked_at=asked_at
        )
        if granted is not None:
            agent_commands.publish([granted])
            sent.append(granted)
        elif lease_grants.stopped(agent, now) and _may_resend(agent):
            # A hold stops the agent: its request is answered with the hold's command again (it may have
            # missed it), not with silence it could take for an unreachable fleet.
            held = [holds.command_of(agent.agent_id, h) for h in agent.holds.values()]
            agent_commands.publish(held)
            sent += held
    return sent


def _judge(agent: AgentRecord, epoch: domain.Epoch, applied: Applied, now: datetime) -> list[Command]:
    counted = applied.epoch
    assert counted is not None
    spent = Amount(counted.usd_nanos, counted.tokens)
    over = Amount(counted.over_nanos, counted.over_tokens)
    tolerance = lease_grants.cfg().tolerance
    if domain.overspent(epoch, spent, over, tolerance) is None:
        return []
    fresh = store.read(agent.agent_id).ledger.find(epoch.id)
    if fresh is None:
        return []
    excess = domain.overspent(fresh, spent, over, tolerance)  # a grant this instance had not seen may cover it
    return [] if excess is None else exceeded(agent, fresh, excess, now)


def exceeded(agent: AgentRecord, epoch: domain.Epoch, excess: Amount, now: datetime) -> list[Command]:
    """An agent spent beyond its lease: the fleet never trusts the SDK's arithmetic. Alert and pause."""
    reason = (
        f"lease_exceeded: spent ${format_usd(excess.usd_nanos)}"
        + (f" and {excess.tokens} tokens" if excess.tokens else "")
        + f" beyond lease epoch {epoch.id} (granted ${format_usd(epoch.granted.usd_nanos)})"
    )

    step = spend.pause_step(reason, f"lease_exceeded.{epoch.id}", now, actor="system:lease")
    plan = agent_store.update(agent.agent_id, combine([step]))
    if plan.commands:
        agent_commands.publish(plan.commands)
    alert = Alert(
        id=f"lease_exceeded.{agent.agent_id}.{epoch.id}",
        kind="lease_exceeded",
        severity=Severity.CRITICAL,
        tenant=agent.tenant,
        agent_id=agent.agent_id,
        window=epoch.hour,
        message=f"{agent.agent_id} spent beyond its budget lease ({reason}); paused until an operator resumes it",
        at=now,
        details={"epoch": epoch.id, "excess_usd": format_usd(excess.usd_nanos), "excess_tokens": excess.tokens},
    )
    if episode_store.raise_once(alert):
        notifier.send_now([alert], by="lease_exceeded")
    logs.log(log, reason, agent_id=agent.agent_id, alert="lease_exceeded")
    return list(plan.commands)


#: When this instance last re-sent an agent's lease: at most once per FLEET_RESEND_AFTER_S.
_resent: dict[str, float] = {}


def _may_resend(agent: AgentRecord) -> bool:
    last = _resent.get(agent.agent_id, 0.0)
    if time.monotonic() - last < settings.get().resend_after_s:
        return False
    if len(_resent) > 10_000:
        _resent.clear()
    _resent[agent.agent_id] = time.monotonic()
    return True


def release_due(now: datetime, limit: int = 200, pages: int = 10) -> int:
    """Return the unspent charge of every epoch ended ``grace`` ago (the minute tick), ``limit`` ledgers a
    page, at most ``pages`` pages a tick (the rest the next minute). Returns how many epochs were returned."""
    done = 0
    for _page in range(pages):
        returned, seen = _release_page(now, limit)
        done += returned
        if seen < limit:
            break
    return done


def _release_page(now: datetime, limit: int) -> tuple[int, int]:
    grace = lease_grants.cfg().grace_s
    done = 0
    due = store.due(now, limit)
    for snap in due:
        ledger = snap.ledger
        ended = [e for e in (ledger.previous, ledger.epoch) if e is not None and e.release_at(grace) <= now]
        if not ended:
            continue
        spent = usage_store.epoch_spend(ledger.agent_id, [(e.id, e.hour) for e in ended])
        releases = [domain.release(e, Amount(*spent[e.id])) for e in ended]
        if store.release(snap, releases, now, grace):
            done += len(releases)
    return done, len(due)


def request_of(event_id: str) -> LeaseUse:
    """A registration's implicit request: the agent (re)started and holds no lease."""
    return LeaseUse(request_id=f"reg-{event_id}"[:64])
