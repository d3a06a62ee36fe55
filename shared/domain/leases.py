"""Budget leases, decided purely: the size of the next lease, what the tenant's reserve must add or give
back, when an epoch ends, and whether a batch spent beyond its lease. Nothing here reads or writes
(shared/store/leases.py keeps the state, shared/services/leases.py runs a grant).

- **Epoch.** The leases an agent spends as one balance: each grant adds to it; it ends at its expiry (the
  latest grant's: ``ttl`` after it, and never past the end of the hour, so an epoch lies in exactly one
  hour, day and month window), when a hold revokes it, or when the agent gives it up (a restart).
- **Charged.** What an epoch has put into its tenant's *reserve*: its grants, plus any spend beyond them
  found at a later grant. The reserve of a window is the sum over open epochs of what they charged, plus
  the spend of ended epochs and any spend outside a lease. It never falls below what was spent.
- **Agent budget.** An agent's commitment in a window is its spend there when its epoch began (``base``)
  plus what the epoch charged; a grant is sized so that the commitment stays within every hard limit.
- **Tenant budget.** A grant adds to the reserve with an atomic increment and reads the total back; it
  keeps only ``limit - (total - grant)`` (never less than 0). Concurrent grants each see the others'
  increments, so together they never keep more than the room (the order of increments is a total order).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from fleet_agent.contracts import LeaseUse, epoch_of, seq_of

from shared.domain.budgets import Limit
from shared.domain.periods import Period, Window, window, windows
from shared.domain.pricing import to_nanos


@dataclass(frozen=True)
class Amount:
    """USD (integer nano-dollars) and tokens."""

    usd_nanos: int = 0
    tokens: int = 0

    def get(self, metric: str) -> int:
        return self.usd_nanos if metric == "usd" else self.tokens

    def __add__(self, other: Amount) -> Amount:
        return Amount(self.usd_nanos + other.usd_nanos, self.tokens + other.tokens)

    def __sub__(self, other: Amount) -> Amount:
        return Amount(self.usd_nanos - other.usd_nanos, self.tokens - other.tokens)

    def __neg__(self) -> Amount:
        return Amount(-self.usd_nanos, -self.tokens)

    def clamp(self, low: int = 0) -> Amount:
        return Amount(max(low, self.usd_nanos), max(low, self.tokens))

    def as_dict(self) -> dict[str, int]:
        return {"usd_nanos": self.usd_nanos, "tokens": self.tokens}

    @classmethod
    def of(cls, data: Any) -> Amount:
        data = data if isinstance(data, dict) else {}
        return cls(int(data.get("usd_nanos") or 0), int(data.get("tokens") or 0))


ZERO = Amount()
#: A reserve counter's address: the period and the window's key.
Slot = tuple[Period, str]


@dataclass(frozen=True)
class Config:
    ttl_s: int = 300
    grace_s: int = 60
    horizon_s: int = 60
    min_usd_nanos: int = 10_000_000
    min_tokens: int = 4096
    tolerance: float = 0.01


@dataclass(frozen=True)
class Epoch:
    id: str
    started_at: datetime
    expires_at: datetime
    #: The number of the epoch's latest grant (lease ids are ``<epoch>.<seq>``).
    seq: int
    #: The epoch's window key per period (hour, day, month).
    windows: dict[Period, str]
    #: The agent's spend in each window when the epoch began, plus spend outside the epoch since.
    base: dict[Period, Amount]
    granted: Amount
    charged: Amount
    tokens_limited: bool

    def live(self, now: datetime) -> bool:
        return now < self.expires_at

    def release_at(self, grace_s: int) -> datetime:
        return self.expires_at + timedelta(seconds=grace_s)

    def slots(self) -> list[Slot]:
        return [(period, key) for period, key in self.windows.items()]

    def spent_in(self, hour_spent: Amount) -> Amount:
        """What the epoch spent, from the agent's total in the epoch's hour."""
        return hour_spent - self.base[Period.HOUR]


@dataclass(frozen=True)
class Ledger:
    """One agent's lease state (``leases/a.{agent}``)."""

    agent_id: str
    tenant: str
    epoch: Epoch | None = None
    #: The latest grant as sent (its command, JSON), re-sent when it seems lost.
    last: dict[str, Any] | None = None
    #: Request ids answered lately (a redelivered request gets the same lease).
    answered: tuple[str, ...] = ()


def open_epoch(ledger: Ledger, lease: LeaseUse | None) -> bool:
    """Whether the batch's records were spent under the ledger's open epoch."""
    return (
        ledger.epoch is not None
        and lease is not None
        and lease.lease_id is not None
        and epoch_of(lease.lease_id) == ledger.epoch.id
    )


def missed(ledger: Ledger, lease: LeaseUse | None, now: datetime, resend_after_s: int) -> bool:
    """The agent names an older lease of its epoch than the latest granted, which is live and was
    granted more than ``resend_after_s`` ago: the latest grant was probably lost."""
    epoch, last = ledger.epoch, ledger.last
    if epoch is None or last is None or not open_epoch(ledger, lease) or not epoch.live(now):
        return False
    assert lease is not None and lease.lease_id is not None
    issued = datetime.fromisoformat(last["issued_at"])
    return seq_of(lease.lease_id) < epoch.seq and (now - issued).total_seconds() > resend_after_s


@dataclass(frozen=True)
class Release:
    """An ended epoch's unspent charge returned to the reserve (negative: spend beyond it, added)."""

    epoch: Epoch
    back: Amount

    def deltas(self) -> dict[Slot, Amount]:
        return {slot: -self.back for slot in self.epoch.slots()}


def release(epoch: Epoch, hour_spent: Amount) -> Release:
    """``hour_spent``: the agent's spend in the epoch's hour now (batches of the epoch have arrived)."""
    return Release(epoch, epoch.charged - epoch.spent_in(hour_spent))


def ended(ledger: Ledger, lease: LeaseUse | None, now: datetime) -> bool:
    """Whether a grant now starts a new epoch: none open, the open one expired, or the agent asks while
    holding no lease of it (revoked by a hold, a restart): its unspent charge returns first."""
    epoch = ledger.epoch
    if epoch is None:
        return False
    return not epoch.live(now) or (lease is not None and not open_epoch(ledger, lease))


@dataclass(frozen=True)
class GrantPlan:
    epoch: Epoch
    lease_id: str
    #: What the grant wants to add (kept only as far as the tenant's reserve allows).
    want: Amount
    #: Unconditional reserve changes: a released epoch's unspent charge (negative), spend found beyond an
    #: epoch's charge (positive).
    adjust: dict[Slot, Amount] = field(default_factory=dict)
    released: Release | None = None
    started: bool = False
    #: The tenant's hard limits by slot and metric (for :func:`kept`).
    tenant_limits: dict[tuple[Slot, str], int] = field(default_factory=dict)

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


def plan_grant(
    ledger: Ledger,
    *,
    now: datetime,
    spent: dict[Period, Amount],
    old_hour_spent: Amount | None,
    agent_limits: list[Limit],
    tenant_limits: list[Limit],
    reserve: dict[Period, Amount],
    open_epochs: int,
    request: LeaseUse | None,
    new_epoch_id: str,
    cfg: Config,
) -> GrantPlan:
    """The next grant for the agent. ``spent``: its exact spend in the current windows; ``old_hour_spent``:
    its spend in the hour of an epoch that ends now (when one does); ``reserve``: the tenant's reserve in
    the current windows as last read (sizing only: what is kept is judged on the commit's read-back)."""
    wins = windows(now)
    adjust: dict[Slot, Amount] = {}
    released = None
    epoch = ledger.epoch
    started = epoch is None or ended(ledger, request, now)
    if epoch is not None and started:
        released = release(epoch, old_hour_spent if old_hour_spent is not None else spent[Period.HOUR])
        adjust = released.deltas()
    tokens_limited = any(lim.metric == "tokens" and lim.hard is not None for lim in agent_limits + tenant_limits)
    if started:
        epoch = Epoch(
            id=new_epoch_id, started_at=now, expires_at=end_of_epoch(now, cfg.ttl_s), seq=0,
            windows={p: w.key for p, w in wins.items()}, base=dict(spent), granted=ZERO, charged=ZERO,
            tokens_limited=tokens_limited,
        )  # fmt: skip
    assert epoch is not None
    in_epoch = epoch.spent_in(spent[Period.HOUR])
    catch_up = (in_epoch - epoch.charged).clamp()
    if catch_up != ZERO:  # spend beyond the charge (over estimates, a lost grant's leftovers): reserve it
        for slot in epoch.slots():
            adjust[slot] = adjust.get(slot, ZERO) + catch_up
    charged = epoch.charged + catch_up
    want = _size(
        epoch, now=now, spent=spent, charged=charged, in_epoch=in_epoch, agent_limits=agent_limits,
        tenant_limits=tenant_limits, reserve=reserve, adjust=adjust, open_epochs=open_epochs,
        started=started, request=request, cfg=cfg, wins=wins, replacing=released is not None,
    )  # fmt: skip
    seq = epoch.seq + 1
    granted = epoch.granted
    if tokens_limited and not epoch.tokens_limited:
        # A token limit appeared mid-epoch: the tokens spent before it were spent without a token lease.
        granted = Amount(granted.usd_nanos, max(granted.tokens, in_epoch.tokens))
    epoch = replace(
        epoch, seq=seq, expires_at=end_of_epoch(now, cfg.ttl_s), granted=granted + want,
        charged=charged + want, tokens_limited=epoch.tokens_limited or tokens_limited,
    )  # fmt: skip
    return GrantPlan(
        epoch=epoch, lease_id=f"{epoch.id}.{seq}", want=want, adjust=adjust, released=released,
        started=started, tenant_limits=hard_limits(tenant_limits, wins),
    )  # fmt: skip


def _size(
    epoch: Epoch, *, now: datetime, spent: dict[Period, Amount], charged: Amount, in_epoch: Amount,
    agent_limits: list[Limit], tenant_limits: list[Limit], reserve: dict[Period, Amount],
    adjust: dict[Slot, Amount], open_epochs: int, started: bool, request: LeaseUse | None, cfg: Config,
    wins: dict[Period, Window], replacing: bool = False,
) -> Amount:  # fmt: skip
    """The lease wanted: what the waiting call needs, or ``horizon`` seconds of the agent's recent rate,
    or the smallest lease, whichever is most; cut to what every agent limit leaves and to the agent's
    fair share of what every tenant limit leaves."""
    need = Amount(
        _nanos(request.need_usd) if request is not None and request.need_usd is not None else 0,
        request.need_tokens or 0 if request is not None else 0,
    )
    hour = wins[Period.HOUR]
    elapsed_hour = max(60.0, (now - hour.starts_at).total_seconds())
    elapsed_epoch = (now - epoch.started_at).total_seconds()
    out = {}
    for metric, floor in (("usd", cfg.min_usd_nanos), ("tokens", cfg.min_tokens)):
        rate = spent[Period.HOUR].get(metric) / elapsed_hour
        if elapsed_epoch >= 5:
            rate = max(rate, in_epoch.get(metric) / elapsed_epoch)
        want = max(need.get(metric), int(rate * cfg.horizon_s), floor)
        for lim in agent_limits:
            if lim.metric == metric and lim.hard is not None:
                committed = max(epoch.base[lim.period].get(metric) + charged.get(metric), spent[lim.period].get(metric))
                want = min(want, max(0, lim.hard - committed))
        for lim in tenant_limits:
            if lim.metric == metric and lim.hard is not None:
                slot = (lim.period, wins[lim.period].key)
                room = max(0, lim.hard - (reserve.get(lim.period, ZERO) + adjust.get(slot, ZERO)).get(metric))
                # The agents holding an epoch share the room; a new epoch adds one, unless it replaces one
                # of this agent's still counted among them.
                sharing = max(1, open_epochs + (1 if started and not replacing else 0))
                share = max(room // sharing, min(room, need.get(metric)))
                want = min(want, share)
        out[metric] = max(0, want)
    return Amount(out["usd"], out["tokens"] if epoch.tokens_limited or _any_tokens(agent_limits, tenant_limits) else 0)


def _any_tokens(*limit_lists: list[Limit]) -> bool:
    return any(lim.metric == "tokens" and lim.hard is not None for limits in limit_lists for lim in limits)


def _nanos(usd: Any) -> int:
    return to_nanos(usd)


def kept(plan: GrantPlan, after: dict[Slot, Amount]) -> Amount:
    """What the grant keeps, given the reserve's totals after its commit (exact, read back): in each
    slot with a tenant limit, at most ``limit - (after - want)``, never below 0."""
    out = {"usd": plan.want.usd_nanos, "tokens": plan.want.tokens}
    for (slot, metric), hard in plan.tenant_limits.items():
        total = after.get(slot)
        if total is None:
            continue
        before = total.get(metric) - plan.want.get(metric)
        out[metric] = max(0, min(out[metric], hard - before))
    return Amount(out["usd"], out["tokens"])


def short(
    plan: GrantPlan, need: Amount, after: dict[Slot, Amount], agent_limits: list[Limit], now: datetime
) -> list[tuple[str, Limit, int]]:
    """The hard limits that leave less than the waiting call needs: (``agent`` or ``tenant``, the limit,
    what is committed against it). The fleet says so as it would for a limit reached (a lease stops an
    agent just short of a limit, where counting alone never reaches it)."""
    out: list[tuple[str, Limit, int]] = []
    before = plan.epoch.charged - plan.want
    for lim in agent_limits:
        if lim.hard is None or need.get(lim.metric) == 0:
            continue
        committed = plan.epoch.base[lim.period].get(lim.metric) + before.get(lim.metric)
        if lim.hard - committed < need.get(lim.metric):
            out.append(("agent", lim, committed))
    for (slot, metric), hard in plan.tenant_limits.items():
        total = after.get(slot)
        if total is None or need.get(metric) == 0:
            continue
        committed = total.get(metric) - plan.want.get(metric)
        if hard - committed < need.get(metric):
            out.append(("tenant", Limit(slot[0], metric, hard, None), committed))
    return out


def overspent(epoch: Epoch, hour_after: Amount, over: Amount, tolerance: float) -> Amount | None:
    """Spend of the epoch beyond its grants and the over-estimates the agent reports (plus a tolerance:
    a price changed mid-lease, rounding), or None. ``hour_after``: the agent's exact hour total after the
    batch, in the epoch's hour."""
    spent = epoch.spent_in(hour_after)
    allowed_usd = epoch.granted.usd_nanos + over.usd_nanos + int(epoch.granted.usd_nanos * tolerance)
    excess_usd = spent.usd_nanos - allowed_usd
    excess_tokens = 0
    if epoch.tokens_limited:
        excess_tokens = spent.tokens - (epoch.granted.tokens + over.tokens + int(epoch.granted.tokens * tolerance))
    if excess_usd > 0 or excess_tokens > 0:
        return Amount(max(0, excess_usd), max(0, excess_tokens))
    return None
