"""Budget leases, decided purely: the size of the next lease, what the tenant's reserve must add or give
back, when an epoch ends, and whether a batch spent beyond its lease. Nothing here reads or writes
(shared/store/leases.py keeps the state, shared/services/leases.py runs a grant).

- **Epoch.** The leases an agent spends as one balance: each grant adds to it; it ends at its expiry (the
  latest grant's: ``ttl`` after it, and never past the end of the hour, so its grants lie in one hour, day
  and month window), when a hold revokes it, or when the agent asks while holding none of it (a restart).
- **Epoch spend.** Every batch spent under an epoch adds its cost to the epoch's own counter (in the
  agent's hour document, in the batch's counting commit): an epoch's spend is exact, whatever else the
  agent spent in the same hour, and whatever hour its calls' records fall in.
- **Charged.** What an epoch has put into its tenant's *reserve*: its grants, plus any spend beyond them
  found at a later grant. The reserve of a window is the sum over epochs not yet returned of what they
  charged, plus the spend of returned epochs and any spend outside a lease: never below what was spent.
- **Return.** An ended epoch waits as the ledger's ``previous`` until its batches in flight have arrived
  (``grace`` after it ended), then gives ``charged - spent`` back to the reserve.
- **Agent budget.** The agent's commitment in a window is its exact spend there plus what its open and
  previous epochs may still spend (``charged - spent``); a grant keeps it within every hard limit.
- **Tenant budget.** A grant adds to the reserve with an atomic increment and reads the total back; it
  keeps only ``limit - (total - grant)`` (never less than 0). Concurrent grants each see the others'
  increments, so together they never keep more than the room (increments are totally ordered).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from fleet_agent.contracts import LeaseUse, epoch_of, seq_of

from shared.domain.budgets import Limit
from shared.domain.lease_amounts import ZERO, Amount, Slot
from shared.domain.periods import Period, Window, window, windows
from shared.domain.pricing import to_nanos

#: The largest single grant ($1M, 10^12 tokens): counters stay far inside Firestore's 64-bit integers
#: whatever a request claims to need.
MAX_LEASE = {"usd": 10**15, "tokens": 10**12}


@dataclass(frozen=True)
class Config:
    ttl_s: int = 300
    grace_s: int = 60
    horizon_s: int = 300
    min_usd_nanos: int = 10_000_000
    min_tokens: int = 4096
    tolerance: float = 0.01
    #: How long an agent refused for want of a shared (tenant) budget waits before asking again.
    shared_retry_s: int = 30
    #: How soon after an epoch's start a request naming no lease of it is still taken as not knowing it yet.
    settle_s: int = 10


@dataclass(frozen=True)
class Epoch:
    id: str
    started_at: datetime
    expires_at: datetime
    #: The number of the epoch's latest grant (lease ids are ``<epoch>.<seq>``).
    seq: int
    #: The epoch's window key per period (hour, day, month): its grants and charge go to these slots.
    windows: dict[Period, str]
    granted: Amount
    charged: Amount
    tokens_limited: bool
    #: The agent's spend rate measured at the epoch's latest grant (nano-dollars and tokens a second).
    rate: Amount = ZERO
    #: Its grants went into the tenant's reserve (the tenant had a budget when it began): only then does
    #: its return, or spend beyond its charge, change the reserve.
    reserved: bool = True

    def live(self, now: datetime) -> bool:
        return now < self.expires_at

    def release_at(self, grace_s: int) -> datetime:
        return self.expires_at + timedelta(seconds=grace_s)

    def slots(self) -> list[Slot]:
        return [(period, key) for period, key in self.windows.items()]

    @property
    def hour(self) -> str:
        return self.windows[Period.HOUR]

    def unspent(self, spent: Amount) -> Amount:
        """What the epoch may still spend (or what it charged and did not spend, once it ended)."""
        return (self.charged - spent).clamp()


@dataclass(frozen=True)
class Ledger:
    """One agent's lease state (``leases/a.{agent}``)."""

    agent_id: str
    tenant: str
    epoch: Epoch | None = None
    #: The epoch that ended last, until its batches in flight have arrived and its charge is returned.
    previous: Epoch | None = None
    #: The latest grant as sent (its command, JSON), re-sent when it seems lost; None while the latest
    #: grant is not final (its commit made, its give-back not yet: never re-sent).
    last: dict[str, Any] | None = None
    #: Request ids answered lately (a redelivered request gets the same lease).
    answered: tuple[str, ...] = ()

    def find(self, epoch_id: str) -> Epoch | None:
        """The open or previous epoch of that id, if it is one of them."""
        for epoch in (self.epoch, self.previous):
            if epoch is not None and epoch.id == epoch_id:
                return epoch
        return None

    def named(self, lease: LeaseUse | None) -> Epoch | None:
        """The open or previous epoch the batch says its records were spent under, if it is one of them."""
        if lease is None or lease.lease_id is None:
            return None
        return self.find(epoch_of(lease.lease_id))


def missed(ledger: Ledger, lease: LeaseUse | None, now: datetime, resend_after_s: int) -> bool:
    """The agent names an older lease of its open epoch than the latest granted, which is live and final
    and was granted more than ``resend_after_s`` ago: the latest grant was probably lost."""
    epoch, last = ledger.epoch, ledger.last
    if epoch is None or last is None or lease is None or lease.lease_id is None or not epoch.live(now):
        return False
    if epoch_of(lease.lease_id) != epoch.id:
        return False
    issued = datetime.fromisoformat(last["issued_at"])
    return seq_of(lease.lease_id) < epoch.seq and (now - issued).total_seconds() > resend_after_s


@dataclass(frozen=True)
class Release:
    """An ended epoch's unspent charge returned to the reserve (negative: spend beyond it, added)."""

    epoch: Epoch
    back: Amount

    def deltas(self) -> dict[Slot, Amount]:
        return {slot: -self.back for slot in self.epoch.slots()}


def release(epoch: Epoch, spent: Amount) -> Release:
    """``spent``: the epoch's exact spend (its own counter), once its batches have arrived."""
    return Release(epoch, epoch.charged - spent)


def ended(
    ledger: Ledger, lease: LeaseUse | None, now: datetime, *, asked_at: datetime | None = None, settle_s: int = 10
) -> bool:
    """Whether a grant now starts a new epoch: the open one expired, or the agent asks while holding no
    lease of it (revoked by a hold, a restart). Not when it asked (``asked_at``: its batch's publish time)
    within ``settle_s`` of the epoch's start: it could not have had the epoch's first grant yet, and a new
    epoch for each such request would churn (the grants it has not applied yet still come, and add up)."""
    epoch = ledger.epoch
    if epoch is None:
        return False
    if not epoch.live(now):
        return True
    if lease is None or (lease.lease_id is not None and epoch_of(lease.lease_id) == epoch.id):
        return False
    return asked_at is None or (asked_at - epoch.started_at).total_seconds() > settle_s


@dataclass(frozen=True)
class GrantPlan:
    epoch: Epoch
    lease_id: str
    #: What the grant wants to add (kept only as far as the tenant's reserve allows).
    want: Amount
    #: The epoch the grant ends (it becomes ``previous``), and an older previous returned now.
    previous: Epoch | None = None
    released: Release | None = None
    #: Unconditional reserve changes: a returned epoch's unspent charge (negative), spend found beyond an
    #: epoch's charge (positive).
    adjust: dict[Slot, Amount] = field(default_factory=dict)
    started: bool = False
    #: The tenant's hard limits by slot and metric (for :func:`kept`).
    tenant_limits: dict[tuple[Slot, str], int] = field(default_factory=dict)
    #: The limits that leave less than the waiting call needs: (``agent`` or ``tenant``, the limit).
    short: tuple[tuple[str, Limit], ...] = ()

    def deltas(self) -> dict[Slot, Amount]:
        """Everything the grant's commit adds to the reserve, by slot."""
        out = dict(self.adjust)
        for slot in self.epoch.slots():
            out[slot] = out.get(slot, ZERO) + self.want
        return out


def end_of_epoch(now: datetime, ttl_s: int) -> datetime:
    """A new grant's expiry: ``ttl`` from now, and never past the end of the hour (the shortest period)."""
    return min(now + timedelta(seconds=ttl_s), window(Period.HOUR, now).resets_at)


def hard_limits(limits: list[Limit], wins: dict[Period, Window]) -> dict[tuple[Slot, str], int]:
    return {((lim.period, wins[lim.period].key), lim.metric): lim.hard for lim in limits if lim.hard is not None}


@dataclass(frozen=True)
class Spend:
    """What a grant reads: the agent's exact spend in the current windows, and its epochs' own spend."""

    windows: dict[Period, Amount]
    epochs: dict[str, Amount] = field(default_factory=dict)

    def of(self, epoch: Epoch | None) -> Amount:
        return ZERO if epoch is None else self.epochs.get(epoch.id, ZERO)


def plan_grant(
    ledger: Ledger,
    *,
    now: datetime,
    spend: Spend,
    agent_limits: list[Limit],
    tenant_limits: list[Limit],
    reserve: dict[Period, Amount],
    open_epochs: int,
    request: LeaseUse | None,
    new_epoch_id: str,
    cfg: Config,
    asked_at: datetime | None = None,
) -> GrantPlan:
    """The next grant for the agent. ``reserve``: the tenant's reserve in the current windows as last read
    (sizing only: what is kept is judged on the commit's read-back)."""
    wins = windows(now)
    adjust: dict[Slot, Amount] = {}
    released = None
    epoch, previous = ledger.epoch, ledger.previous
    budgeted = any(lim.hard is not None for lim in tenant_limits)
    started = epoch is None or ended(ledger, request, now, asked_at=asked_at, settle_s=cfg.settle_s)
    # A tenant budget appeared: an epoch whose grants never went into the reserve ends (a new one does).
    started = started or (budgeted and epoch is not None and not epoch.reserved)
    if started and epoch is not None:
        if previous is not None:  # two endings within a grace: the older one is returned now
            released = release(previous, spend.of(previous))
            if previous.reserved:
                _add(adjust, released.deltas())
        previous = replace(epoch, expires_at=min(epoch.expires_at, now))  # it ended now, at the latest
    tokens_limited = any(lim.metric == "tokens" and lim.hard is not None for lim in agent_limits + tenant_limits)
    if started:
        epoch = Epoch(
            id=new_epoch_id, started_at=now, expires_at=end_of_epoch(now, cfg.ttl_s), seq=0,
            windows={p: w.key for p, w in wins.items()}, granted=ZERO, charged=ZERO,
            tokens_limited=tokens_limited, reserved=budgeted,
        )  # fmt: skip
    assert epoch is not None
    in_epoch = spend.of(epoch)
    catch_up = (in_epoch - epoch.charged).clamp()
    if catch_up != ZERO and epoch.reserved:  # spend beyond the charge (over estimates): reserve it
        _add(adjust, {slot: catch_up for slot in epoch.slots()})
    epoch = replace(epoch, charged=epoch.charged + catch_up)
    granted = epoch.granted
    if tokens_limited and not epoch.tokens_limited:
        # A token limit appeared mid-epoch: the tokens spent before it were spent without a token lease.
        granted = Amount(granted.usd_nanos, max(granted.tokens, in_epoch.tokens))
    seed = ledger.epoch.rate if started and ledger.epoch is not None else ZERO
    rate, sizing = _rate(epoch, now=now, in_epoch=in_epoch, hour=spend.windows[Period.HOUR], wins=wins, seed=seed)
    unspent = epoch.unspent(in_epoch)
    left = previous.unspent(spend.of(previous)) if previous is not None else ZERO
    # The previous epoch's unspent charge counts in its own windows only (an hour that ended is not this one).
    committed = {
        p: spend.windows[p] + unspent + (left if previous is not None and previous.windows[p] == wins[p].key else ZERO)
        for p in Period
    }
    want, short = _size(
        now=now, rate=sizing, committed=committed, agent_limits=agent_limits, tenant_limits=tenant_limits,
        reserve=reserve, adjust=adjust, sharing=max(1, open_epochs + (1 if started and previous is None else 0)),
        request=request, cfg=cfg, wins=wins, tokens=epoch.tokens_limited or tokens_limited,
    )  # fmt: skip
    seq = epoch.seq + 1
    epoch = replace(
        epoch, seq=seq, expires_at=end_of_epoch(now, cfg.ttl_s), granted=granted + want, charged=epoch.charged + want,
        tokens_limited=epoch.tokens_limited or tokens_limited, rate=rate,
    )  # fmt: skip
    return GrantPlan(
        epoch=epoch, lease_id=f"{epoch.id}.{seq}", want=want, previous=previous, released=released, adjust=adjust,
        started=started, tenant_limits=hard_limits(tenant_limits, wins), short=short,
    )  # fmt: skip


def _add(into: dict[Slot, Amount], deltas: dict[Slot, Amount]) -> None:
    for slot, amount in deltas.items():
        into[slot] = into.get(slot, ZERO) + amount


def _rate(
    epoch: Epoch, *, now: datetime, in_epoch: Amount, hour: Amount, wins: dict[Period, Window], seed: Amount
) -> tuple[Amount, Amount]:
    """The agent's recent spend a second, measured (this hour's, or this epoch's over at least a second,
    whichever is more), and the rate to size with: the measured one, or for a new epoch's first grant the
    rate its predecessor measured (an epoch starting at the top of the hour starts from it, not from
    nothing). Only the measured rate is kept: a fast minute does not size every later lease."""
    elapsed_hour = max(60.0, (now - wins[Period.HOUR].starts_at).total_seconds())
    elapsed_epoch = max(1.0, (now - epoch.started_at).total_seconds())
    measured = {}
    for metric in ("usd", "tokens"):
        measured[metric] = int(max(hour.get(metric) / elapsed_hour, in_epoch.get(metric) / elapsed_epoch))
    rate = Amount(measured["usd"], measured["tokens"])
    return rate, Amount(max(rate.usd_nanos, seed.usd_nanos), max(rate.tokens, seed.tokens))


def _size(
    *, now: datetime, rate: Amount, committed: dict[Period, Amount], agent_limits: list[Limit],
    tenant_limits: list[Limit], reserve: dict[Period, Amount], adjust: dict[Slot, Amount], sharing: int,
    request: LeaseUse | None, cfg: Config, wins: dict[Period, Window], tokens: bool,
) -> tuple[Amount, tuple[tuple[str, Limit], ...]]:  # fmt: skip
    """The lease wanted: what the waiting call needs, ``horizon`` seconds of the agent's rate, or the
    smallest lease, whichever is most; cut to what every agent limit leaves and to the agent's fair share
    of what every tenant limit leaves (at least what the waiting call needs, when the room has it)."""
    need = Amount(
        to_nanos(request.need_usd) if request is not None and request.need_usd is not None else 0,
        (request.need_tokens or 0) if request is not None else 0,
    )
    out: dict[str, int] = {}
    short: list[tuple[str, Limit]] = []
    # With no limit at all a lease protects nothing: make it last the epoch (fewer grants, fewer writes).
    limited = any(lim.hard is not None for lim in agent_limits + tenant_limits)
    horizon = cfg.horizon_s if limited else cfg.ttl_s
    for metric, floor in (("usd", cfg.min_usd_nanos), ("tokens", cfg.min_tokens)):
        want = max(need.get(metric), rate.get(metric) * horizon, floor)
        for lim in agent_limits:
            if lim.metric == metric and lim.hard is not None:
                room = max(0, lim.hard - committed[lim.period].get(metric))
                want = min(want, room)
                if room < need.get(metric):
                    short.append(("agent", lim))
        for lim in tenant_limits:
            if lim.metric == metric and lim.hard is not None:
                slot = (lim.period, wins[lim.period].key)
                room = max(0, lim.hard - (reserve.get(lim.period, ZERO) + adjust.get(slot, ZERO)).get(metric))
                want = min(want, max(room // sharing, min(room, need.get(metric))))
                if room < need.get(metric):
                    short.append(("tenant", lim))
        out[metric] = max(0, min(want, MAX_LEASE[metric]))
    return Amount(out["usd"], out["tokens"] if tokens else 0), tuple(short)


def kept(plan: GrantPlan, after: dict[Slot, Amount]) -> Amount:
    """What the grant keeps, given the reserve's totals after its commit (exact, read back): in each
    slot with a tenant limit, at most ``limit - (after - want)``, never below 0."""
    out = {"usd": plan.want.usd_nanos, "tokens": plan.want.tokens}
    for (slot, metric), hard in plan.tenant_limits.items():
        total = after.get(slot)
        if total is None:
            continue
        out[metric] = max(0, min(out[metric], hard - (total.get(metric) - plan.want.get(metric))))
    return Amount(out["usd"], out["tokens"])


def retry_after(plan: GrantPlan, kept_amount: Amount, need: Amount, now: datetime, cfg: Config) -> int | None:
    """Seconds before the agent should ask again, when what it got leaves its waiting call unserved: when
    every short limit of its own has reset (the call needs them all), or sooner, when its previous epoch's
    unspent charge comes back; a short wait for a shared limit (other agents' leases return to the pool)."""
    tokens_short = plan.epoch.tokens_limited and kept_amount.tokens < need.tokens  # else no token budget applies
    if need == ZERO or (kept_amount.usd_nanos >= need.usd_nanos and not tokens_short):
        return None
    own = [lim for scope, lim in plan.short if scope == "agent"]
    if not own:
        return cfg.shared_retry_s
    wait = max(window(lim.period, now).resets_at for lim in own) - now
    # The agent's own unspent leases count against its limit until they return: by the open epoch's end
    # at the latest (then a new epoch may hold what it could not spend), or the previous epoch's.
    soonest = min(e.release_at(cfg.grace_s) for e in (plan.epoch, plan.previous) if e is not None)
    wait = min(wait, soonest + timedelta(seconds=cfg.shared_retry_s) - now)
    return max(1, int(wait.total_seconds()))


def overspent(epoch: Epoch, spent: Amount, over: Amount, tolerance: float) -> Amount | None:
    """Spend of the epoch (``spent``: its own counter) beyond its grants and the over-estimates the agent
    reports (the most it reported: reordered batches carry older figures), plus a tolerance (a price
    changed mid-lease, rounding); None within them."""
    allowed_usd = epoch.granted.usd_nanos + over.usd_nanos + int(epoch.granted.usd_nanos * tolerance)
    excess_usd = spent.usd_nanos - allowed_usd
    excess_tokens = 0
    if epoch.tokens_limited:
        excess_tokens = spent.tokens - (epoch.granted.tokens + over.tokens + int(epoch.granted.tokens * tolerance))
    if excess_usd > 0 or excess_tokens > 0:
        return Amount(max(0, excess_usd), max(0, excess_tokens))
    return None


def nanos(usd: Decimal | None) -> int:
    return 0 if usd is None else to_nanos(usd)
