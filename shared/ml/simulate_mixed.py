"""An independent mixed-fleet simulator (issue 24): agent kinds with their own rhythms, legitimate changes that
must not page, and labelled faults at several strengths, to evaluate the detectors on a fleet they were not
designed against.

Written without the generators of ``shared/ml/simulate.py``. Four kinds of agent in roughly equal shares, each
agent with its own levels drawn from ranges, heartbeats every 30 s (jittered, sometimes a few seconds late, never
missing), metrics in ``data.METRICS`` order, a metric an agent does not report 0 in every row:

- ``chat``: a daily load cycle peaking in the afternoon, heavy-tailed bursts of a few minutes, latency rising
  with load, tokens and cost proportional to load with a noisy cost per token; a third do not report cost;
- ``batch``: idle most of the day, a nightly window of 2-4 h of work (start 00:00-04:00 in its time zone);
- ``retriever``: heavy-tailed latency (lognormal plus a Pareto tail), a moderate daily cycle, embeddings;
- ``trainer``: a CPU plateau broken by evaluation phases, a memory sawtooth over epochs, no tokens nor cost.

Rows ``[0, train_rows)`` are the healthy history; the test day carries the faults and the changes
(``shared/ml/simulate_mixed_faults.py``). Every agent's healthy stream comes from its own seeded generator,
faults and changes from others, so the history is the same whatever the faults. Changes are made before the faults
are injected: a fault acts on the levels a deploy left.
"""

from __future__ import annotations

import numpy as np

from shared.ml.data import METRICS, AgentStream
from shared.ml.simulate_mixed_faults import (
    AGENT_KINDS,
    MixedFleet,
    Series,
    add_changes,
    apply_faults,
    plan_faults,
)

INTERVAL_S = 30.0
ROWS_PER_DAY = int(86_400 / INTERVAL_S)
_LAT, _ERR, _CPU, _MEM, _TOK, _COST = range(len(METRICS))

__all__ = ["AGENT_KINDS", "INTERVAL_S", "ROWS_PER_DAY", "MixedFleet", "simulate_mixed"]


def _times(rng: np.random.Generator, n: int) -> np.ndarray:
    """Heartbeat times: a random offset in the first interval, small jitter, now and then a few seconds late."""
    jitter = rng.normal(0.0, 0.3, n).clip(-1.0, 1.0)
    late = np.where(rng.random(n) < 0.004, rng.uniform(2.0, 9.0, n), 0.0)
    return rng.uniform(0.0, INTERVAL_S) + INTERVAL_S * np.arange(n) + jitter + late


def _ar1(rng: np.random.Generator, n: int, sd: float, rows: float) -> np.ndarray:
    """A stationary AR(1) wander with standard deviation ``sd`` and a correlation time of ``rows``."""
    phi = float(np.exp(-1.0 / rows))
    shocks = rng.normal(0.0, sd * np.sqrt(1.0 - phi * phi), n)
    out = np.empty(n)
    prev = float(rng.normal(0.0, sd))
    chunk = max(1, int(rows * 60))  # phi ** chunk stays above 1e-26: the closed form below is exact enough
    for a in range(0, n, chunk):
        seg = shocks[a : a + chunk]
        p = phi ** np.arange(1, seg.size + 1)
        out[a : a + seg.size] = p * (prev + np.cumsum(seg / p))  # x[k] = phi^k (x0 + sum_j e_j / phi^j)
        prev = float(out[a + seg.size - 1])
    return out


def _hours(t: np.ndarray, tz_h: float) -> np.ndarray:
    return ((t / 3600.0) + tz_h) % 24.0


def _daily(hours: np.ndarray, peak_h: float) -> np.ndarray:
    """0 at night, 1 at the peak hour: a smooth daily shape."""
    return (0.5 * (1.0 + np.cos(2.0 * np.pi * (hours - peak_h) / 24.0))) ** 1.5


def _bursts(rng: np.random.Generator, n: int, per_hour: float) -> np.ndarray:
    """A load multiplier with heavy-tailed bursts lasting a few minutes (4-12 heartbeats)."""
    mult = np.ones(n)
    starts = np.flatnonzero(rng.random(n) < per_hour / 120.0)
    lengths = rng.integers(4, 13, starts.size)
    heights = 1.0 + np.minimum(0.4 * rng.pareto(2.2, starts.size), 2.5)
    for s, length, h in zip(starts.tolist(), lengths.tolist(), heights.tolist(), strict=True):
        mult[s : s + length] = np.maximum(mult[s : s + length], h)
    return mult


def _errors(rng: np.random.Generator, calls: np.ndarray, p: np.ndarray | float) -> np.ndarray:
    return rng.binomial(calls.astype(np.int64), np.clip(p, 0.0, 1.0)) / np.maximum(calls, 1)


def _chat(rng: np.random.Generator, t: np.ndarray, tz_h: float) -> Series:
    n = t.size
    night = rng.uniform(0.1, 0.3)
    load = night + (1.0 - night) * _daily(_hours(t, tz_h), rng.uniform(13.5, 17.0))
    load = load * _bursts(rng, n, rng.uniform(0.5, 2.0)) * np.exp(_ar1(rng, n, 0.08, 40.0))
    calls = np.maximum(np.round(rng.uniform(200, 800) * load), 5)
    X = np.zeros((n, len(METRICS)))
    X[:, _LAT] = rng.uniform(600, 2500) * (1.0 + rng.uniform(0.3, 0.8) * load) * rng.lognormal(0.0, 0.15, n)
    X[:, _ERR] = _errors(rng, calls, rng.uniform(0.005, 0.02))
    X[:, _CPU] = rng.uniform(12, 30) + rng.uniform(10, 20) * np.tanh(load) + _ar1(rng, n, 3.0, 20.0)
    X[:, _MEM] = rng.uniform(30, 60) + _ar1(rng, n, 2.0, 400.0) + rng.normal(0, 0.4, n)
    X[:, _TOK] = rng.uniform(200, 3000) * load * rng.lognormal(0.0, 0.08, n)
    # a mix of models: the share of the pricier one wanders; per-row noise of 10-20 % on the price per token
    cheap, dear = rng.uniform(0.0005, 0.003), rng.uniform(0.005, 0.03)  # $ per 1k tokens
    share = 1.0 / (1.0 + np.exp(-(rng.normal(-1.0, 1.0) + _ar1(rng, n, 0.5, 200.0))))
    per_token = (cheap + share * (dear - cheap)) * (1.0 + rng.normal(0.0, rng.uniform(0.1, 0.2), n)).clip(0.3)
    X[:, _COST] = X[:, _TOK] * 60.0 * per_token / 1000.0
    reports = np.ones(len(METRICS), dtype=bool)
    reports[_COST] = rng.random() >= 1.0 / 3.0
    return Series("chat", X, calls, reports, np.ones(n, dtype=bool))


def _batch(rng: np.random.Generator, t: np.ndarray, tz_h: float) -> Series:
    n = t.size
    start_h, length_h = rng.uniform(0.0, 4.0), rng.uniform(2.0, 4.0)
    day = np.floor((t / 3600.0 + tz_h) / 24.0)
    shift = rng.normal(0.0, 0.15, int(day.max() - day.min()) + 1)[(day - day.min()).astype(int)]  # per night
    into = (_hours(t, tz_h) - start_h - shift) % 24.0
    working = into < length_h
    ramp = np.clip(np.minimum(into, length_h - into) / 0.1, 0.0, 1.0) * working  # 6 minutes up and down
    calls = np.where(working, np.round(rng.uniform(20, 120) * (0.3 + 0.7 * ramp)), rng.integers(2, 6, n))
    X = np.zeros((n, len(METRICS)))
    idle_lat = rng.uniform(5, 30) * rng.lognormal(0.0, 0.2, n)
    item_lat = rng.uniform(2000, 20000) * rng.lognormal(0.0, 0.2, n)
    X[:, _LAT] = np.where(working, item_lat, idle_lat)
    X[:, _ERR] = _errors(rng, calls, np.where(working, rng.uniform(0.002, 0.01), 0.0))
    idle_cpu, busy_cpu = rng.uniform(2, 8), rng.uniform(60, 85)
    X[:, _CPU] = idle_cpu + ramp * (busy_cpu - idle_cpu) + rng.normal(0, 1.0 + 2.0 * ramp, n)
    X[:, _MEM] = rng.uniform(20, 40) + ramp * rng.uniform(5, 15) + rng.normal(0, 0.3, n)
    X[:, _TOK] = np.where(working, rng.uniform(500, 5000) * ramp, rng.uniform(0, 2)) * rng.lognormal(0, 0.1, n)
    X[:, _COST] = X[:, _TOK] * 60.0 * rng.uniform(0.0005, 0.01) / 1000.0 * rng.lognormal(0.0, 0.1, n)
    return Series("batch", X, calls, np.ones(len(METRICS), dtype=bool), working)


def _retriever(rng: np.random.Generator, t: np.ndarray, tz_h: float) -> Series:
    n = t.size
    amplitude = rng.uniform(0.3, 0.6)
    load = (1.0 - amplitude) + amplitude * _daily(_hours(t, tz_h), rng.uniform(12.0, 17.0))
    load = load * np.exp(_ar1(rng, n, 0.06, 30.0))
    calls = np.maximum(np.round(rng.uniform(100, 1000) * load), 5)
    tail = np.where(rng.random(n) < 0.01, 1.0 + np.minimum(rng.pareto(1.5, n), 30.0), 1.0)
    X = np.zeros((n, len(METRICS)))
    X[:, _LAT] = rng.uniform(40, 200) * rng.lognormal(0.0, rng.uniform(0.4, 0.8), n) * tail
    X[:, _ERR] = _errors(rng, calls, rng.uniform(0.001, 0.01))
    X[:, _CPU] = rng.uniform(15, 35) + rng.uniform(5, 20) * load + _ar1(rng, n, 2.5, 15.0)
    X[:, _MEM] = rng.uniform(40, 70) + _ar1(rng, n, 1.5, 600.0) + rng.normal(0, 0.3, n)
    X[:, _TOK] = rng.uniform(500, 5000) * load * rng.lognormal(0.0, 0.1, n)
    X[:, _COST] = X[:, _TOK] * 60.0 * rng.uniform(0.00002, 0.0001) / 1000.0 * rng.lognormal(0.0, 0.05, n)
    return Series("retriever", X, calls, np.ones(len(METRICS), dtype=bool), np.ones(n, dtype=bool))


def _trainer(rng: np.random.Generator, t: np.ndarray, tz_h: float) -> Series:
    n = t.size
    # evaluation phases: every 30-90 minutes (jittered per cycle) for 5-15 minutes
    period, length = rng.uniform(60, 180), rng.uniform(10, 30)
    starts = np.cumsum(period * rng.uniform(0.85, 1.15, int(n / (0.8 * period)) + 2)) - rng.uniform(0, period)
    idx = np.searchsorted(starts, np.arange(n), side="right") - 1
    since = np.arange(n) - np.where(idx >= 0, starts[np.maximum(idx, 0)], -1e9)
    evaluating = (since >= 0) & (since < length)
    # memory sawtooth: rises over an epoch of 1-4 h, released at the checkpoint
    epoch = rng.uniform(120, 480)
    phase = (np.arange(n) + rng.uniform(0, epoch)) % epoch / epoch
    step_ms = rng.uniform(200, 2000)
    calls = np.maximum(np.round(INTERVAL_S * 1000.0 / step_ms), 1) * np.ones(n)
    X = np.zeros((n, len(METRICS)))
    X[:, _LAT] = step_ms * rng.lognormal(0.0, rng.uniform(0.03, 0.1), n)
    X[:, _ERR] = _errors(rng, calls, rng.uniform(0.001, 0.005))
    X[:, _CPU] = np.where(evaluating, rng.uniform(30, 50), rng.uniform(85, 98)) + rng.normal(0, 1.2, n)
    base, rise = rng.uniform(40, 65), rng.uniform(5, 15)
    X[:, _MEM] = base + rise * phase + evaluating * rng.uniform(2, 5) + rng.normal(0, 0.3, n)
    reports = np.array([rng.random() < 0.6, True, True, True, False, False])
    return Series("trainer", X, calls, reports, ~evaluating)


_KINDS = {"chat": _chat, "batch": _batch, "retriever": _retriever, "trainer": _trainer}
_TIME_ZONES = (-8.0, -5.0, -3.0, 0.0, 1.0, 2.0, 5.5, 8.0, 9.0)


def simulate_mixed(seed: int, agents: int = 60, days_history: float = 1.0, days_test: float = 1.0) -> MixedFleet:
    """A mixed fleet: ``days_history`` healthy days (the training rows) then ``days_test`` with faults."""
    train_rows = round(days_history * ROWS_PER_DAY)
    n = train_rows + round(days_test * ROWS_PER_DAY)
    kinds = [AGENT_KINDS[i % len(AGENT_KINDS)] for i in range(agents)]
    np.random.default_rng([seed, 24, 0]).shuffle(kinds)
    series: dict[str, Series] = {}
    times: dict[str, np.ndarray] = {}
    for i, kind in enumerate(kinds):
        rng = np.random.default_rng([seed, 24, 1, i])  # the agent's own healthy generator
        agent_id = f"{kind}-{i:03d}"
        times[agent_id] = _times(rng, n)
        tz_h = float(rng.choice(_TIME_ZONES))
        series[agent_id] = _KINDS[kind](rng, times[agent_id], tz_h)
    fault_rng = np.random.default_rng([seed, 24, 2])
    planned, strengths, magnitudes = plan_faults(series, train_rows, fault_rng)
    changes, versions = add_changes(series, train_rows, planned, np.random.default_rng([seed, 24, 3]))
    events, strengths, magnitudes = apply_faults(series, planned, strengths, magnitudes, fault_rng)
    streams: dict[str, AgentStream] = {}
    for agent_id, s in series.items():
        X = s.X
        X[:, _ERR] = X[:, _ERR].clip(0.0, 1.0)
        X[:, _CPU] = X[:, _CPU].clip(0.5, 100.0)
        X[:, _MEM] = X[:, _MEM].clip(1.0, 99.5)
        X[:, [_LAT, _TOK, _COST]] = X[:, [_LAT, _TOK, _COST]].clip(0.0)
        X[:, ~s.reports] = 0.0
        streams[agent_id] = AgentStream(
            agent_id, INTERVAL_S, times[agent_id], X, s.kind, tuple(sorted(versions.get(agent_id, ())))
        )
    return MixedFleet(streams, events, train_rows, changes, strengths, magnitudes)
