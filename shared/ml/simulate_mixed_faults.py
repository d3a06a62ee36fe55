"""The faults and the legitimate changes of the mixed-fleet simulator (``shared/ml/simulate_mixed.py``).

Faults (labelled ``FaultEvent``s, each at a strength drawn from a range and recorded in ``[0, 1]``: 0 the weakest
end of the range, 1 the strongest), only on agents whose kind reports the metric involved, kinds spread evenly:

- ``memory_leak``: memory rises 0.02-0.08 points per heartbeat until fixed (300-900 rows, or memory at 97 %);
- ``latency_ramp``: latency x1 rising to x2-4 over 1-3 hours, then held for 60-300 rows;
- ``error_step``: the error rate at 5-10 % (below the static 20 % rule) for 60-240 rows;
- ``token_collapse``: tokens/s (and the spend that follows them) at 5-20 % of normal, CPU and latency normal, for
  20-120 rows (a stuck generation loop; batch workers only while working);
- ``pricier_model``: cost per minute up 40-80 % with tokens flat, for 120-600 rows.

Legitimate changes (``Fleet.changes``), never within 120 rows of a fault of the same agent: deploys (a new version
in ``AgentStream.versions``; latency x0.6-1.5, memory +-3-10 points, CPU x0.8-1.2, error rate x0.5-1.5) and
scale-ups of chat and retriever agents (load x1.3-1.6 or x0.6-0.75 over 10-20 rows, and staying).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from shared.ml.data import METRICS, FaultEvent, Fleet

AGENT_KINDS = ("chat", "batch", "retriever", "trainer")
FAULT_KINDS = ("memory_leak", "latency_ramp", "error_step", "token_collapse", "pricier_model")
#: The metrics an agent must report for a fault kind to be injected into it.
NEEDS = {
    "memory_leak": ("memory_pct",),
    "latency_ramp": ("latency_ms",),
    "error_step": ("error_rate",),
    "token_collapse": ("tokens_per_s",),
    "pricier_model": ("tokens_per_s", "cost_per_min"),
}
#: Share of the agents with faults, and faults per 60 agents (1-2 per faulty agent).
FAULTY_SHARE, FAULTS_PER_60, DEPLOYS_PER_60, SCALE_UPS_PER_60 = 0.7, 49, 10, 4
#: Rows kept between one fault's end and the next one's start on an agent; between a change and a fault.
FAULT_GAP, CHANGE_GAP = 60, 120
_LAT, _ERR, _CPU, _MEM, _TOK, _COST = range(len(METRICS))


@dataclass
class Series:
    """One agent's simulated rows before they become an ``AgentStream`` (mutable: faults and changes edit X)."""

    kind: str
    X: np.ndarray  # (n, len(METRICS))
    calls: np.ndarray  # calls in each interval (binomial noise of the error rate)
    reports: np.ndarray  # bool per metric: a metric not reported is 0 in every row
    working: np.ndarray  # bool per row: batch workers in their window, trainers outside evaluation


@dataclass(frozen=True)
class MixedFleet(Fleet):
    """A ``Fleet`` with each fault's strength in [0, 1] and its drawn magnitude (slope, factor, rate or share)."""

    strengths: dict[FaultEvent, float] = field(default_factory=dict)
    magnitudes: dict[FaultEvent, float] = field(default_factory=dict)


def _reports(s: Series, kind: str) -> bool:
    """Whether the agent reports every metric the fault kind changes."""
    return all(bool(s.reports[METRICS.index(m)]) for m in NEEDS[kind])


def _draw(kind: str, rng: np.random.Generator) -> tuple[float, float, int]:
    """(strength in [0, 1], magnitude, planned length in rows) of a fault of ``kind``."""
    u = float(rng.random())
    if kind == "memory_leak":
        return u, 0.02 + 0.06 * u, int(rng.integers(300, 901))
    if kind == "latency_ramp":
        return u, 2.0 + 2.0 * u, int(rng.integers(120, 361)) + int(rng.integers(60, 301))
    if kind == "error_step":
        return u, 0.05 + 0.05 * u, int(rng.integers(60, 241))
    if kind == "token_collapse":
        return u, 0.2 - 0.15 * u, int(rng.integers(20, 121))
    return u, 1.4 + 0.4 * u, int(rng.integers(120, 601))  # pricier_model


def _longest_run(mask: np.ndarray) -> int:
    """The longest run of true values in ``mask``."""
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return int((np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1)).max(initial=0))


def _candidates(s: Series, kind: str, length: int, first: int, n: int) -> np.ndarray:
    """Rows where a fault of ``length`` rows may start (batch token and cost faults: inside the working window)."""
    starts = np.arange(first + 30, n - length - 15)
    if s.kind == "batch" and kind in ("token_collapse", "pricier_model"):
        working = np.concatenate([s.working.astype(np.int64), [0]])
        inside = np.cumsum(working)  # rows [i, i + length + 5) all working
        span = inside[np.minimum(starts + length + 5, n)] - inside[starts]
        starts = starts[span == length + 5]
    return starts


def _apply(s: Series, kind: str, start: int, length: int, magnitude: float, rng: np.random.Generator) -> int:
    """Inject the fault into rows from ``start``; returns its end (exclusive)."""
    end = start + length
    rows = slice(start, end)
    k = np.arange(length, dtype=float)
    if kind == "memory_leak":
        leaked = s.X[rows, _MEM] + magnitude * k + rng.normal(0.0, 0.3, length)
        full = np.flatnonzero(leaked >= 97.0)
        if full.size:  # fixed (restarted) when memory reaches 97 %
            end = start + max(int(full[0]) + 1, 1)
            leaked = leaked[: end - start]
        s.X[start:end, _MEM] = leaked
    elif kind == "latency_ramp":
        ramp = int(rng.integers(max(120, length - 300), min(360, length - 60) + 1))  # then held 60-300 rows
        s.X[rows, _LAT] *= 1.0 + (magnitude - 1.0) * np.minimum((k + 1) / ramp, 1.0)
    elif kind == "error_step":
        calls = np.maximum(s.calls[rows], 200).astype(np.int64)  # a rate, not a handful of calls
        s.X[rows, _ERR] = rng.binomial(calls, magnitude) / calls
    elif kind == "token_collapse":
        share = magnitude * rng.lognormal(0.0, 0.1, length)
        s.X[rows, _TOK] *= share
        s.X[rows, _COST] *= share
    else:
        s.X[rows, _COST] *= magnitude * (1.0 + rng.normal(0.0, 0.03, length))
    return end


def plan_faults(
    series: dict[str, Series], first: int, rng: np.random.Generator
) -> tuple[list[FaultEvent], dict[FaultEvent, float], dict[FaultEvent, float]]:
    """Place labelled faults in the test rows ``[first, n)`` of 70 % of the agents (not injected yet: the changes
    come first, so a fault acts on the levels a deploy left); the planned events, strengths and magnitudes."""
    ids = list(series)
    rng.shuffle(ids)
    faulty = ids[: round(FAULTY_SHARE * len(ids))]
    total = round(FAULTS_PER_60 * len(ids) / 60)
    twice = set(faulty[: max(0, min(total - len(faulty), len(faulty)))])
    counts = dict.fromkeys(FAULT_KINDS, 0)
    pairs: dict[tuple[str, str], int] = {}
    events: list[FaultEvent] = []
    strengths: dict[FaultEvent, float] = {}
    magnitudes: dict[FaultEvent, float] = {}
    for agent_id in faulty:
        s = series[agent_id]
        n = s.X.shape[0]
        taken: list[tuple[int, int]] = []
        for _ in range(2 if agent_id in twice else 1):
            had = {e.kind for e in events if e.agent_id == agent_id}
            options = [k for k in FAULT_KINDS if _reports(s, k) and k not in had]
            # fault kinds spread evenly, and each over the agent kinds that can have it
            rng.shuffle(options)
            options.sort(key=lambda k: counts[k] + pairs.get((k, s.kind), 0))
            for kind in options:
                strength, magnitude, length = _draw(kind, rng)
                if s.kind == "batch" and kind in ("token_collapse", "pricier_model"):
                    length = min(length, max(20, _longest_run(s.working[first:]) - 25))
                starts = _candidates(s, kind, length, first, n)
                free = np.ones(starts.size, dtype=bool)
                for a, b in taken:  # keep FAULT_GAP rows between faults
                    free &= (starts + length + FAULT_GAP <= a) | (starts >= b + FAULT_GAP)
                starts = starts[free]
                if starts.size == 0:
                    continue
                start = int(rng.choice(starts))
                taken.append((start, start + length))
                event = FaultEvent(agent_id, kind, start, start + length)
                counts[kind] += 1
                pairs[(kind, s.kind)] = pairs.get((kind, s.kind), 0) + 1
                events.append(event)
                strengths[event], magnitudes[event] = strength, magnitude
                break
    events.sort(key=lambda e: (e.agent_id, e.start))
    return events, strengths, magnitudes


def apply_faults(
    series: dict[str, Series],
    planned: list[FaultEvent],
    strengths: dict[FaultEvent, float],
    magnitudes: dict[FaultEvent, float],
    rng: np.random.Generator,
) -> tuple[list[FaultEvent], dict[FaultEvent, float], dict[FaultEvent, float]]:
    """Inject the planned faults; the events with their actual ends (a leak ends early at 97 % memory)."""
    events: list[FaultEvent] = []
    strength: dict[FaultEvent, float] = {}
    magnitude: dict[FaultEvent, float] = {}
    for p in planned:
        end = _apply(series[p.agent_id], p.kind, p.start, p.end - p.start, magnitudes[p], rng)
        event = FaultEvent(p.agent_id, p.kind, p.start, end)
        events.append(event)
        strength[event], magnitude[event] = strengths[p], magnitudes[p]
    return events, strength, magnitude


def _free_rows(n: int, first: int, margin: int, faults: list[FaultEvent], span: int) -> np.ndarray:
    """Rows where a change of ``span`` rows may start: ``CHANGE_GAP`` rows from every fault (window + 10)."""
    starts = np.arange(first + 20, n - span - 20)
    keep = np.ones(starts.size, dtype=bool)
    for e in faults:
        keep &= (starts + margin + CHANGE_GAP <= e.start) | (starts >= e.end + 10 + CHANGE_GAP)
    return starts[keep]


def add_changes(
    series: dict[str, Series], first: int, faults: list[FaultEvent], rng: np.random.Generator
) -> tuple[list[FaultEvent], dict[str, list[int]]]:
    """Deploys and scale-ups in the test rows; the change events and each agent's version rows."""
    by_agent: dict[str, list[FaultEvent]] = {a: [] for a in series}
    for e in faults:
        by_agent[e.agent_id].append(e)
    ids = sorted(series)
    changes: list[FaultEvent] = []
    versions: dict[str, list[int]] = {}
    deploys = round(DEPLOYS_PER_60 * len(ids) / 60)
    for agent_id in rng.permutation(ids)[:deploys].tolist():
        s = series[agent_id]
        n = s.X.shape[0]
        rows = _free_rows(n, first, 0, by_agent[agent_id], 240)
        if rows.size == 0:
            continue
        r = int(rng.choice(rows))
        after = s.X[first:r]
        s.X[r:, _LAT] *= rng.uniform(0.6, 1.5)
        s.X[r:, _ERR] *= rng.uniform(0.5, 1.5)
        cpu_top, mem_top = float(np.percentile(after[:, _CPU], 99)), float(np.percentile(after[:, _MEM], 99))
        s.X[r:, _CPU] *= rng.uniform(0.8, max(0.8, min(1.2, 93.0 / max(cpu_top, 1.0))))  # no saturation page
        shift = rng.uniform(3.0, 10.0) * (1.0 if rng.random() < 0.5 else -1.0)
        s.X[r:, _MEM] += min(shift, 92.0 - mem_top)
        versions.setdefault(agent_id, []).append(r)
        changes.append(FaultEvent(agent_id, "deploy", r, r + 1))
    scalable = [a for a in ids if series[a].kind in ("chat", "retriever")]
    for agent_id in rng.permutation(scalable)[: round(SCALE_UPS_PER_60 * len(ids) / 60)].tolist():
        s = series[agent_id]
        n = s.X.shape[0]
        ramp = int(rng.integers(10, 21))
        rows = _free_rows(n, first, ramp, by_agent[agent_id] + [c for c in changes if c.agent_id == agent_id], 240)
        if rows.size == 0:
            continue
        start = int(rows[rng.integers(rows.size)])
        factor = rng.uniform(1.3, 1.6) if rng.random() < 0.5 else rng.uniform(0.6, 0.75)
        step = np.minimum(np.arange(n - start) / ramp, 1.0)
        load = 1.0 + (factor - 1.0) * step
        s.X[start:, _TOK] *= load
        s.X[start:, _COST] *= load
        s.X[start:, _CPU] = np.minimum(s.X[start:, _CPU] * load, 93.0)
        s.X[start:, _LAT] *= 1.0 + np.sign(factor - 1.0) * rng.uniform(0.0, 0.1) * step
        s.calls[start:] = np.round(s.calls[start:] * load)
        changes.append(FaultEvent(agent_id, "scale_up", start, start + ramp))
    changes.sort(key=lambda e: (e.start, e.agent_id))
    return changes, versions
