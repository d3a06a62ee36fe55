"""A fleet simulator with labelled faults, so detector quality is measured rather than assumed.

Healthy agents each get their own baseline per metric, noise that is partly autocorrelated (real metrics
wander, they are not white noise), a mild daily load cycle and rare benign blips (a short latency/CPU bump a
detector must not page for). After the training period, faults of six kinds are injected into a share of the
agents and labelled as ``FaultEvent`` rows, which the evaluation harness matches detections against.

Every agent's healthy stream comes from its own seeded generator and the faults from another one, so the
training period is bit-identical whatever the fault settings, and a seed reproduces the whole fleet.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from shared.ml.data import METRICS, AgentStream, FaultEvent, Fleet

#: The fault kinds injected (and reported by the harness), in report order.
FAULT_KINDS = ("spike", "drift", "stuck", "gap", "error_burst", "runaway_cost")

LAT, ERR, CPU, MEM, TOK, COST = (
    METRICS.index(m) for m in ("latency_ms", "error_rate", "cpu_pct", "memory_pct", "tokens_per_s", "cost_per_min")
)
DAY_S = 86_400.0
#: Benign blips start on this share of rows (about one per agent per 12 hours at a 30 s interval).
BLIP_RATE = 1 / 1500
#: Rows kept free around every fault, so tolerance windows of neighbouring faults never overlap.
MARGIN = 12
#: Rows after a drift's ramp kept inside the stream (the harness's drift allowance).
DRIFT_AFTER = 50
#: Fault durations in rows (inclusive bounds); gap: missed heartbeats.
DURATIONS = {
    "spike": (3, 8),
    "drift": (150, 300),
    "stuck": (15, 40),
    "gap": (6, 20),
    "error_burst": (5, 15),
    "runaway_cost": (8, 20),
}


def _agent_id(index: int) -> str:
    return f"agent-{index:04d}"


def _smooth_noise(rng: np.random.Generator, rows: int, tau: float) -> np.ndarray:
    """Unit-variance noise with an exponential autocorrelation of ``tau`` rows (an AR(1)-like wander)."""
    kernel = np.exp(-np.arange(int(4 * tau) + 1) / tau)
    kernel /= np.sqrt(np.sum(kernel**2))
    white = rng.standard_normal(rows + kernel.size - 1)
    return np.convolve(white, kernel, mode="valid")


def healthy_stream(rng: np.random.Generator, agent_id: str, rows: int, interval_s: float) -> AgentStream:
    """One healthy agent: its own baselines, noise, a daily cycle and rare benign blips."""
    jitter = np.clip(rng.normal(0.0, 0.03, rows), -0.1, 0.1)
    steps = interval_s * (1.0 + jitter)
    steps[0] = rng.uniform(0.0, interval_s)  # agents do not all start on the same second
    t = np.cumsum(steps)

    phase = rng.uniform(0.0, 2 * np.pi)
    load = 1.0 + rng.uniform(0.04, 0.10) * np.sin(2 * np.pi * t / DAY_S + phase)

    X = np.empty((rows, len(METRICS)))
    latency = rng.uniform(200.0, 2000.0)
    X[:, LAT] = latency * load * np.exp(0.06 * _smooth_noise(rng, rows, 10.0) + rng.normal(0.0, 0.08, rows))
    error_rate = rng.uniform(0.005, 0.03)
    X[:, ERR] = np.clip(error_rate * np.exp(rng.normal(0.0, 0.35, rows)), 0.0, 1.0)
    cpu = rng.uniform(20.0, 60.0)
    X[:, CPU] = cpu * load + 2.5 * _smooth_noise(rng, rows, 8.0) + rng.normal(0.0, 2.0, rows)
    memory = rng.uniform(30.0, 70.0)
    X[:, MEM] = memory + 2.0 * _smooth_noise(rng, rows, 40.0) + rng.normal(0.0, 1.0, rows)
    tokens = rng.uniform(20.0, 400.0)
    X[:, TOK] = tokens * load * np.exp(rng.normal(0.0, 0.10, rows))
    price_per_1k = rng.uniform(0.002, 0.02)  # dollars per thousand tokens
    X[:, COST] = X[:, TOK] * 60.0 / 1000.0 * price_per_1k * np.exp(rng.normal(0.0, 0.05, rows))

    for start in np.flatnonzero(rng.random(rows) < BLIP_RATE):  # a GC pause, a slow upstream call
        stop = min(rows, start + int(rng.integers(1, 3)))
        X[start:stop, LAT] *= rng.uniform(1.3, 1.8)
        X[start:stop, CPU] += rng.uniform(5.0, 15.0)

    X[:, CPU] = np.clip(X[:, CPU], 0.0, 100.0)
    X[:, MEM] = np.clip(X[:, MEM], 0.0, 100.0)
    return AgentStream(agent_id, float(interval_s), t, X)


def _agent_rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, 0, index])


def _inject(
    rng: np.random.Generator, kind: str, t: np.ndarray, X: np.ndarray, start: int, length: int, interval_s: float
) -> int:
    """Apply one fault in place from row ``start``; returns the event's end row (exclusive)."""
    end = start + length
    if kind == "spike":
        if rng.random() < 0.5:
            X[start:end, LAT] *= rng.uniform(3.0, 6.0)
        else:
            X[start:end, CPU] = rng.uniform(97.0, 99.5, length)
    elif kind == "drift":  # latency ramps up and stays: no threshold is ever crossed
        rise = rng.uniform(0.6, 1.5)
        X[start:end, LAT] *= 1.0 + rise * np.arange(1, length + 1) / length
        X[end:, LAT] *= 1.0 + rise
    elif kind == "stuck":  # a hung reporter resends its last values
        X[start:end] = X[start - 1]
    elif kind == "gap":  # ``length`` heartbeats never arrive; the event is the first one after the silence
        t[start:] += length * interval_s
        end = start + 1
    elif kind == "error_burst":
        X[start:end, ERR] = rng.uniform(0.25, 0.6, length)
    elif kind == "runaway_cost":  # a loop burning tokens
        X[start:end, COST] *= rng.uniform(8.0, 20.0)
        X[start:end, TOK] *= rng.uniform(2.0, 4.0)
    else:
        raise ValueError(f"unknown fault kind {kind!r}")
    return end


def _place(rng: np.random.Generator, kinds: list[str], train_rows: int, rows: int) -> list[tuple[str, int, int]]:
    """(kind, start, length) for one agent's faults: one per equal segment of the test period, drift last
    (it never ends, so nothing may follow it)."""
    kinds = sorted(kinds, key=lambda k: k == "drift")
    lo, hi = train_rows + MARGIN, rows - MARGIN
    segment = (hi - lo) // len(kinds)
    placed = []
    for position, kind in enumerate(kinds):
        low, high = DURATIONS[kind]
        rows_used = 1 if kind == "gap" else int(rng.integers(low, high + 1))
        room = segment - MARGIN
        # Drift keeps its 50 rows of detection allowance inside the stream (shortened on a short test period).
        after = DRIFT_AFTER if kind == "drift" else 0
        rows_used = min(rows_used, room - after)
        if rows_used < (1 if kind in ("gap", "drift") else low):
            raise ValueError(f"the test period ({rows - train_rows} rows) is too short for a {kind} fault")
        seg_lo = lo + position * segment
        start = int(rng.integers(seg_lo, seg_lo + room - rows_used - after + 1))
        length = int(rng.integers(low, high + 1)) if kind == "gap" else rows_used
        placed.append((kind, start, length))
    return placed


def simulate(
    agents: int = 60,
    rows: int = 1500,
    train_rows: int = 600,
    interval_s: float = 30.0,
    seed: int = 7,
    fault_share: float = 0.6,
) -> Fleet:
    """A fleet whose first ``train_rows`` rows are healthy, with 1-2 labelled faults in ``fault_share`` of
    the agents after that; fault kinds are spread evenly across the fleet."""
    if not 0 < train_rows < rows:
        raise ValueError("need 0 < train_rows < rows")
    if not 0.0 <= fault_share <= 1.0:
        raise ValueError("fault_share must be within [0, 1]")
    base = {_agent_id(i): healthy_stream(_agent_rng(seed, i), _agent_id(i), rows, interval_s) for i in range(agents)}
    return inject_faults(base, train_rows, seed=seed, fault_share=fault_share)


def inject_faults(
    base: Mapping[str, AgentStream],
    train_rows: int,
    seed: int = 7,
    fault_share: float = 0.6,
    kinds: Sequence[str] = FAULT_KINDS,
) -> Fleet:
    """Labelled faults injected after row ``train_rows`` of ``fault_share`` of the streams (1-2 each, kinds
    spread evenly); the simulator's fleets, and the held-out part of a real fleet's history when the
    retraining job compares two models (shared/ml/retrain.py). Streams must be at least ``train_rows`` +
    the faults' room long."""
    ids = list(base)
    agents = len(ids)
    rng = np.random.default_rng([seed, 1])
    faulty = np.sort(rng.choice(agents, size=round(fault_share * agents), replace=False))
    counts = rng.integers(1, 3, size=faulty.size)
    # A cycle through all kinds (shuffled once): balanced to within one, and an agent's two faults always
    # differ because they are consecutive in the cycle.
    cycle = [kinds[i] for i in rng.permutation(len(kinds))]
    slots = [cycle[i % len(cycle)] for i in range(int(counts.sum()))]

    streams = dict(base)
    events: list[FaultEvent] = []
    offset = 0
    for index, count in zip(faulty, counts, strict=True):
        agent_id = ids[int(index)]
        stream = base[agent_id]
        t, X = stream.t.copy(), stream.X.copy()
        for kind, start, length in sorted(
            _place(rng, slots[offset : offset + count], train_rows, len(stream)), key=lambda p: p[1]
        ):
            end = _inject(rng, kind, t, X, start, length, stream.interval_s)
            events.append(FaultEvent(agent_id, kind, start, end))
        offset += int(count)
        streams[agent_id] = AgentStream(agent_id, stream.interval_s, t, X)
    events.sort(key=lambda e: (e.agent_id, e.start))
    return Fleet(streams=streams, events=events, train_rows=train_rows)


def simulate_rows(
    n_rows_total: int = 1_000_000, rows_per_agent: int = 2000, interval_s: float = 30.0, seed: int = 11
) -> dict[str, AgentStream]:
    """About ``n_rows_total`` healthy heartbeat rows (whole agents of ``rows_per_agent``), for the retraining
    benchmark: vectorised per agent, a couple of seconds for a million rows."""
    agents = max(1, -(-n_rows_total // rows_per_agent))
    return {
        _agent_id(i): healthy_stream(_agent_rng(seed, i), _agent_id(i), rows_per_agent, interval_s)
        for i in range(agents)
    }


#: Failure prediction (``simulate_failures``): precursor length in rows (inclusive bounds).
PRECURSOR_ROWS = (10, 40)
#: An error-burst failure's length in rows, and a heartbeat-gap failure's missed heartbeats.
FAILURE_BURST_ROWS = (5, 15)
FAILURE_GAP_ROWS = (5, 15)
#: Rows at the start of every agent without episodes (the features' warm-up and a clean baseline).
FAILURE_LEAD_IN = 300


def _precursor(rng: np.random.Generator, X: np.ndarray, start: int, length: int) -> None:
    """A failure's precursor over rows ``[start, start + length)``: latency rising, the error rate creeping
    up and memory climbing together, each below its static threshold (the error rate gains at most 9 points)."""
    ramp = np.arange(1, length + 1) / length
    X[start : start + length, LAT] *= 1.0 + rng.uniform(0.25, 0.6) * ramp
    X[start : start + length, ERR] += rng.uniform(0.04, 0.09) * ramp
    X[start : start + length, MEM] = np.clip(X[start : start + length, MEM] + rng.uniform(6.0, 15.0) * ramp, 0, 100)


def _benign(rng: np.random.Generator, X: np.ndarray, start: int, length: int) -> None:
    """A precursor-like episode that recovers with no failure: one signal rising (latency, error rate or
    memory alone) or a brief latency bump with a little error rate, then back to normal."""
    ramp = np.arange(1, length + 1) / length
    sl = slice(start, start + length)
    kind = int(rng.integers(0, 4))
    if kind == 0:  # a slow upstream: latency alone
        X[sl, LAT] *= 1.0 + rng.uniform(0.3, 0.7) * ramp
    elif kind == 1:  # a few failing calls, latency normal
        X[sl, ERR] += rng.uniform(0.03, 0.08) * ramp
    elif kind == 2:  # a cache filling up
        X[sl, MEM] = np.clip(X[sl, MEM] + rng.uniform(6.0, 15.0) * ramp, 0.0, 100.0)
    else:  # a short bump of latency with a few errors that goes away
        short = slice(start, start + min(length, 6))
        X[short, LAT] *= rng.uniform(1.3, 1.7)
        X[short, ERR] += rng.uniform(0.02, 0.05)


def simulate_failures(
    agents: int = 80, rows: int = 1500, interval_s: float = 30.0, seed: int = 13
) -> tuple[dict[str, AgentStream], list[FaultEvent]]:
    """A fleet for failure prediction: healthy agents, a *failure* (kind ``"failure"``: an error burst with
    error rate >= 0.3, or a heartbeat gap of >= 5 intervals whose event is the first row after it) in about
    half of them, each preceded by a 10-40 row *precursor* (latency rising, error rate creeping up, memory
    climbing, each below static thresholds), and precursor-like benign episodes that end without a failure
    in about half of the agents (with or without a failure). Deterministic per seed."""
    if rows < FAILURE_LEAD_IN + 200:
        raise ValueError(f"need at least {FAILURE_LEAD_IN + 200} rows")
    streams: dict[str, AgentStream] = {}
    events: list[FaultEvent] = []
    rng = np.random.default_rng([seed, 2])
    failing = set(rng.choice(agents, size=round(agents / 2), replace=False).tolist())
    lo, hi = FAILURE_LEAD_IN, rows - 60
    for i in range(agents):
        agent_id = _agent_id(i)
        base = healthy_stream(_agent_rng(seed, i), agent_id, rows, interval_s)
        t, X = base.t.copy(), base.X.copy()
        busy: list[tuple[int, int]] = []  # rows kept for one episode (with a margin) so episodes never overlap
        if i in failing:
            length = int(rng.integers(PRECURSOR_ROWS[0], PRECURSOR_ROWS[1] + 1))
            start = int(rng.integers(lo + length, hi))  # the failure's first row
            _precursor(rng, X, start - length, length)
            if rng.random() < 0.5:
                burst = int(rng.integers(FAILURE_BURST_ROWS[0], FAILURE_BURST_ROWS[1] + 1))
                X[start : start + burst, ERR] = rng.uniform(0.3, 0.6, burst)
                end = start + burst
            else:
                t[start:] += int(rng.integers(FAILURE_GAP_ROWS[0], FAILURE_GAP_ROWS[1] + 1)) * interval_s
                end = start + 1
            events.append(FaultEvent(agent_id, "failure", start, end))
            busy.append((start - length - 60, end + 60))
        if rng.random() < 0.5:
            length = int(rng.integers(PRECURSOR_ROWS[0], PRECURSOR_ROWS[1] + 1))
            for _ in range(50):
                start = int(rng.integers(lo, hi - length))
                if all(start + length < a or start > b for a, b in busy):
                    _benign(rng, X, start, length)
                    break
        streams[agent_id] = AgentStream(agent_id, float(interval_s), t, X)
    return streams, events
