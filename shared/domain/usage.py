"""What a cost batch adds to the counters: exact integer deltas, keyed by the period the calls fell in.

Counters live in a few documents per agent (see shared/store/usage.py): a month document holding
the month, its days and its hours, an hour document holding per-minute and per-operation counts (the
runaway and breaker rules read those), and a shard of the tenant's month document. A batch adds to
them with increments only, so redelivered or reordered batches need no read and no lock: the
idempotency marker written in the same atomic batch makes a second delivery a no-op.

Calls count in the period of their own ``at`` (the agent's clock), so a batch that arrives late
still lands in the hour it was spent in; one that spans a boundary is split across periods.

Each day also gets a per-model breakdown (:class:`ModelDay`, in the agent's month document only):
what the daily report needs to suggest cheaper models, caching (calls the SDK flagged ``repeat``)
and fixing agents whose failures cost money.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime, timedelta

from fleet_agent.contracts import CostBatch, CostRecord

from shared.domain import pricing
from shared.domain.periods import Period, Window, window
from shared.domain.pricing import PriceTable


@dataclass
class Totals:
    """Counters of one period. Money in integer nano-dollars: sums are exact."""

    usd_nanos: int = 0
    tokens: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    calls: int = 0
    failures: int = 0
    #: Calls with tokens but neither a reported cost nor a price: counted, alerted, never $0 silently.
    unpriced: int = 0

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    def add(self, other: Totals) -> None:
        self.usd_nanos += other.usd_nanos
        self.tokens += other.tokens
        self.input_tokens += other.input_tokens
        self.output_tokens += other.output_tokens
        self.calls += other.calls
        self.failures += other.failures
        self.unpriced += other.unpriced

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.names()}

    @classmethod
    def from_dict(cls, data: dict[str, object] | None) -> Totals:
        data = data or {}
        return cls(**{name: int(data.get(name) or 0) for name in cls.names()})  # type: ignore[call-overload]

    def get(self, metric: str) -> int:
        return self.usd_nanos if metric == "usd" else self.tokens

    @property
    def success_rate(self) -> float | None:
        return None if self.calls == 0 else (self.calls - self.failures) / self.calls


@dataclass
class ModelDay:
    """One model's counters over one UTC day (of one agent). Money in integer nano-dollars."""

    calls: int = 0
    failures: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    usd_nanos: int = 0
    #: What the failed calls cost (their ``usd_nanos`` share).
    failed_usd_nanos: int = 0
    #: Calls the SDK flagged ``repeat`` (the same request within the hour: a cache could have
    #: served them), and what they cost.
    repeats: int = 0
    repeat_usd_nanos: int = 0
    #: Calls per price source (``override:tenant``, ``override:fleet``, ``catalog:genai-prices@0.2.5``,
    #: ``agent``, or ``unpriced``: shared/domain/pricing.py), stored as ``xDD.<model>.src.<source>``. At most
    #: two per model in a batch (the agent's cost, and the one price in force, or none, for the tenant and model).
    sources: dict[str, int] = field(default_factory=dict)

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return _MODEL_DAY_NAMES

    def add(self, other: ModelDay) -> None:
        for name in _MODEL_DAY_NAMES:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for label, calls in other.sources.items():
            self.sources[label] = self.sources.get(label, 0) + calls

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in _MODEL_DAY_NAMES}

    @classmethod
    def from_dict(cls, data: dict[str, object] | None) -> ModelDay:
        """From a stored map: a counter that is absent (never written: only non-zero ones are) is 0."""
        data = data or {}
        out = cls(*(int(data.get(name) or 0) for name in _MODEL_DAY_NAMES))  # type: ignore[call-overload]
        found = data.get(SOURCES_FIELD)
        if isinstance(found, dict):
            out.sources = {str(label): int(calls or 0) for label, calls in found.items()}
        return out


_MODEL_DAY_NAMES = tuple(f.name for f in fields(ModelDay) if f.name != "sources")
#: The per-model map of calls by price source (beside the counters of :class:`ModelDay`).
SOURCES_FIELD = "src"
#: At most this many (day, model) entries per month document per batch (8 counters and up to 2 price
#: sources each: 360 transforms at most, fewer than the 48 x 8 before the sources, so with the month's,
#: days' and hours' counters a batch stays far below Firestore's 500 field transforms per document and
#: commit). A batch naming more models puts the cheapest of them under OTHER_MODELS.
MAX_MODEL_DAYS_PER_BATCH = 36
#: Not a valid model name (the contract's pattern has no parentheses): never collides with one.
OTHER_MODELS = "(other)"


def model_day_field(day: str) -> str:
    """The month document's map holding one day's per-model counters: ``x21`` (``x21.<model>.calls``)."""
    return f"x{day}"


@dataclass
class Minute:
    calls: int = 0
    failures: int = 0


def month_field(period: Period, win: Window) -> str:
    """The field of a month document holding ``win``: ``m``, ``d21`` (day) or ``h2122`` (day, hour)."""
    if period is Period.MONTH:
        return "m"
    if period is Period.DAY:
        return f"d{win.starts_at:%d}"
    return f"h{win.starts_at:%d%H}"


@dataclass
class Tally:
    """A batch's deltas, grouped by the documents they go to."""

    agent_id: str
    tenant: str
    records: int
    #: month key -> field (``m``, ``dDD``, ``hDDHH``) -> deltas
    months: dict[str, dict[str, Totals]] = field(default_factory=dict)
    #: month key -> period -> window (the windows the batch touched)
    windows: dict[str, dict[Period, list[Window]]] = field(default_factory=dict)
    #: hour key -> minute ("05") -> calls and failures
    minutes: dict[str, dict[str, Minute]] = field(default_factory=dict)
    #: hour key -> operation -> calls (hour total) and minute -> operation -> calls
    ops: dict[str, dict[str, int]] = field(default_factory=dict)
    op_minutes: dict[str, dict[str, dict[str, int]]] = field(default_factory=dict)
    #: Consecutive failures at the end of the batch, and whether every call in it failed (then the
    #: stored streak grows by that much; otherwise it is replaced).
    trailing_failures: int = 0
    all_failed: bool = False
    unpriced_models: set[str] = field(default_factory=set)
    #: Of those, the models of calls counted unpriced for want of tokens (:class:`TokensUnknown`).
    tokenless_models: set[str] = field(default_factory=set)
    sources: dict[str, int] = field(default_factory=dict)
    #: Each call's success, in call order (a half-open breaker's trial calls).
    outcomes: list[bool] = field(default_factory=list)
    #: month key -> day ("21") -> model -> counters (the agent's month document only)
    models: dict[str, dict[str, dict[str, ModelDay]]] = field(default_factory=dict)

    @property
    def total(self) -> Totals:
        out = Totals()
        for month in self.months.values():
            out.add(month["m"])
        return out


#: Totals after an update and the update itself, for each window the update touched.
WindowTotals = dict[tuple[Period, Window], tuple[Totals, Totals]]


@dataclass(frozen=True)
class EpochTag:
    """The lease epoch a batch was spent under, and the most its agent reports spending beyond estimates."""

    epoch_id: str
    #: The epoch's hour (``YYYY-MM-DDTHH``): its counter lives in the agent's document of that hour,
    #: whatever hour the agent's clock put the records in.
    hour: str
    over_nanos: int = 0
    over_tokens: int = 0


@dataclass(frozen=True)
class EpochSpend:
    """An epoch's own counter after a batch, in one hour document (``hour``): its spend there, and the
    largest ``over`` its batches reported."""

    hour: str
    usd_nanos: int
    tokens: int
    over_nanos: int
    over_tokens: int


@dataclass
class Applied:
    """What a batch did to the counters: exact totals after it, next to its own deltas."""

    duplicate: bool = False
    agent: WindowTotals = field(default_factory=dict)
    tenant_shard: WindowTotals = field(default_factory=dict)
    streak: int = 0
    #: hour key -> minute -> counts after the batch (only the minutes the batch touched)
    minutes: dict[str, dict[str, Minute]] = field(default_factory=dict)
    op_minutes: dict[str, dict[str, dict[str, int]]] = field(default_factory=dict)
    op_hour: dict[str, dict[str, int]] = field(default_factory=dict)
    writes: int = 0
    #: The batch's lease epoch's counter after it (when the batch named one).
    epoch: EpochSpend | None = None


class TokensUnknown(CostRecord):
    """A call that succeeded but whose tokens nobody reported, nor its cost (an OTLP model-call span with no
    ``gen_ai.usage.*`` attribute): its zero token counts are unknown, not free, so :func:`tally` counts it
    unpriced (the unpriced-model alert), never $0. Made by the fleet only, never sent by an agent, and never
    serialised: it is a type, not a field, so a batch written out and read back (a retry queue) would read it as a
    plain record and count it free; count it from the batch in memory, as fleet-otlp does."""


_ZERO = timedelta(0)
_MINUTES = [f"{m:02d}" for m in range(60)]


def tally(batch: CostBatch, tenant: str, table: PriceTable) -> Tally:
    """Price every record and add it to the deltas of its hour, day and month.

    Records are summed per hour first with plain integers (a batch rarely spans more than one or
    two hours), then each hour's sums go to its hour, day and month: a 200-record batch costs a few
    window computations, not six hundred. The per-model counters are summed per hour and model in
    the same loop, then folded into days.
    """
    out = Tally(agent_id=batch.agent_id, tenant=tenant, records=len(batch.records))
    sources: dict[str, int] = defaultdict(int)
    ordered = sorted(batch.records, key=lambda r: r.at)
    # hour start -> [usd_nanos, tokens, input, output, calls, failures, unpriced]
    hours: dict[datetime, list[int]] = {}
    hour_keys: dict[datetime, str] = {}
    # hour start -> model -> [calls, failures, input, output, usd_nanos, failed_usd, repeats, repeat_usd]
    hour_models: dict[datetime, dict[str, list[int]]] = {}
    minute_counts: dict[tuple[datetime, int], Minute] = {}
    op_counts: dict[tuple[datetime, int, str], int] = {}
    # model -> its quote (kept while the records' times are within its validity), None: unpriced
    quotes: dict[str, pricing.Quote | None] = {}
    # hour start -> model -> price source -> calls
    hour_sources: dict[datetime, dict[str, dict[str, int]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(int)))
    for record in ordered:
        at = record.at if record.at.utcoffset() == _ZERO else record.at.astimezone(UTC)
        if record.cost_usd is not None:
            nanos, source, label = pricing.to_nanos(record.cost_usd), pricing.Source.REPORTED, pricing.AGENT_COST
        elif isinstance(record, TokensUnknown):
            nanos, source, label = 0, pricing.Source.UNPRICED, pricing.NO_PRICE
            out.unpriced_models.add(record.model)
            out.tokenless_models.add(record.model)
        elif record.input_tokens == 0 and record.output_tokens == 0:
            nanos, source, label = 0, pricing.Source.FREE, pricing.NO_COST
        else:
            quote = quotes.get(record.model)
            if record.model not in quotes or (quote is not None and not quote.valid_at(at)):
                quote = quotes[record.model] = table.quote(record.model, tenant, at)
            if quote is None:
                nanos, source, label = 0, pricing.Source.UNPRICED, pricing.NO_PRICE
                out.unpriced_models.add(record.model)
            else:
                nanos, source, label = quote.price.record_nanos(record), pricing.Source.TABLE, quote.source
        sources[source.value] += 1
        hour_start = at.replace(minute=0, second=0, microsecond=0)
        sums = hours.get(hour_start)
        if sums is None:
            sums = hours[hour_start] = [0, 0, 0, 0, 0, 0, 0]
            hour_keys[hour_start] = f"{at:%Y-%m-%dT%H}"
            hour_models[hour_start] = {}
        failed = 0 if record.success else 1
        inp, out_tokens = record.input_tokens, record.output_tokens
        sums[0] += nanos
        sums[1] += inp + out_tokens
        sums[2] += inp
        sums[3] += out_tokens
        sums[4] += 1
        sums[5] += failed
        sums[6] += 1 if source is pricing.Source.UNPRICED else 0
        by_model = hour_models[hour_start]
        per = by_model.get(record.model)
        if per is None:
            per = by_model[record.model] = [0, 0, 0, 0, 0, 0, 0, 0]
        per[0] += 1
        per[2] += inp
        per[3] += out_tokens
        per[4] += nanos
        if failed:
            per[1] += 1
            per[5] += nanos
        if record.repeat:
            per[6] += 1
            per[7] += nanos
        if source is not pricing.Source.FREE:  # what priced it, or ``unpriced`` (no price: an alert)
            hour_sources[hour_start][record.model][label] += 1
        minute_key = (hour_start, at.minute)
        counts = minute_counts.get(minute_key)
        if counts is None:
            counts = minute_counts[minute_key] = Minute()
        counts.calls += 1
        counts.failures += failed
        op_key = (hour_start, at.minute, record.operation)
        op_counts[op_key] = op_counts.get(op_key, 0) + 1
        out.outcomes.append(record.success)
    for (hour_start, minute_no), counts in minute_counts.items():
        out.minutes.setdefault(hour_keys[hour_start], {})[_MINUTES[minute_no]] = counts
    for (hour_start, minute_no, op), count in op_counts.items():
        hour = hour_keys[hour_start]
        ops = out.ops.setdefault(hour, {})
        ops[op] = ops.get(op, 0) + count
        out.op_minutes.setdefault(hour, {}).setdefault(_MINUTES[minute_no], {})[op] = count
    months: dict[str, dict[str, Totals]] = {}
    for hour_start, sums in hours.items():
        delta = Totals(*sums)
        month_win = window(Period.MONTH, hour_start)
        by_period = out.windows.setdefault(month_win.key, {})
        fields_ = months.setdefault(month_win.key, {})
        for period in Period:
            win = month_win if period is Period.MONTH else window(period, hour_start)
            fields_.setdefault(month_field(period, win), Totals()).add(delta)
            known = by_period.setdefault(period, [])
            if win not in known:
                known.append(win)
    for hour_start, by_model in hour_models.items():
        key = hour_keys[hour_start]  # YYYY-MM-DDTHH
        day = out.models.setdefault(key[:7], {}).setdefault(key[8:10], {})
        for model, counters in by_model.items():
            found = ModelDay(*counters)  # type: ignore[arg-type]  # the 8 counters, in order
            found.sources = dict(hour_sources[hour_start][model])
            same = day.get(model)  # the same model in the day's other hour
            if same is None:
                day[model] = found
            else:
                same.add(found)
    for days in out.models.values():
        _cap_models(days)
    trailing = 0
    for record in reversed(ordered):
        if record.success:
            break
        trailing += 1
    out.trailing_failures = trailing
    out.all_failed = trailing == len(ordered)
    out.months = months
    out.sources = dict(sources)
    return out


def _cap_models(by_day: dict[str, dict[str, ModelDay]]) -> None:
    """Keep at most MAX_MODEL_DAYS_PER_BATCH (day, model) entries in one month's days: the most
    expensive keep their own entry, the others are summed per day under OTHER_MODELS."""
    pairs = [(day, model, counters) for day, models in by_day.items() for model, counters in models.items()]
    if len(pairs) <= MAX_MODEL_DAYS_PER_BATCH:
        return
    pairs.sort(key=lambda p: (-p[2].usd_nanos, -p[2].calls, p[0], p[1]))
    kept = max(0, MAX_MODEL_DAYS_PER_BATCH - len(by_day))  # room for one OTHER_MODELS entry per day
    for day, model, counters in pairs[kept:]:
        models = by_day[day]
        del models[model]
        models.setdefault(OTHER_MODELS, ModelDay()).add(counters)
