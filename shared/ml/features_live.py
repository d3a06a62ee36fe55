"""One agent's heartbeat features, live: the batch kernel ``features.step`` for one agent and one row, in Python floats,
on the agent's state in its document form (``Baseline.to_doc``: the lists the agent document stores).

``features.step`` works on arrays with an agent axis. For one agent it is bound by the number of numpy calls (about a
hundred, some 170 µs a heartbeat), not by arithmetic, and reading the document into arrays and back costs another
30-40 µs. This is the same computation written for one agent, operation for operation in the same order: +, -, *, /
and sqrt are IEEE doubles in Python as in numpy, ``_max``/``_min`` pass a NaN on as ``np.maximum``/``np.minimum``
do, and the logs are taken by numpy in one call (its ``log`` may differ from ``math.log`` by an ulp on some CPUs).
So every feature and every value of the state is the batch path's, bit for bit
(tests/unit/test_ml_features_live.py checks it on whole fleets, the old simulator's and the mixed one's).

Where Python would raise instead of giving an infinity or a NaN (a division by zero, the square root of a negative
number, a None numpy would read as a NaN), or sort a NaN where numpy puts it last, the row goes to ``features.step``
itself: a negative extra metric, an infinite one, an interval of 0 or a corrupt state can lead there. "Bit for bit"
is up to the sign of a zero (``np.maximum`` and ``max`` may keep different ones of -0.0 and 0.0), which no
comparison sees: every divisor is floored above 0.
"""

from __future__ import annotations

import math
from dataclasses import fields
from typing import Any

import numpy as np

from shared.ml import features as fe
from shared.ml.baseline import WARMUP, WINDOW, Baseline
from shared.ml.baseline import M as _M

_ERR, _TOK, _COST, _CPU = fe._ERR, fe._TOK, fe._COST, fe._CPU
_ABS_SQ: tuple[float, ...] = tuple(v * v for v in fe.SD_ABS_FLOOR)  # as ``np.asarray(...) ** 2``: v * v
_REL_EPS: tuple[float, ...] = tuple(float(v) for v in fe.REL_EPS)
_MID = WINDOW // 2
_LEVEL_A = 1.0 / fe.LEVEL_H
_LEVEL_KEEP = 1.0 - 1.0 / fe.LEVEL_H
_MEAN_A = 1.0 / fe.HORIZON
_CAP, _LOG_CAP = fe.CAP, fe.LOG_CAP
#: The three metric ratios, (top, bottom) metrics (``features._TOP`` / ``features._BOTTOM``).
_RATIOS: tuple[tuple[int, int], ...] = tuple(zip(fe._TOP.tolist(), fe._BOTTOM.tolist(), strict=True))


def _max(a: float, b: float) -> float:
    """``np.maximum`` of two floats (a NaN on either side is the result)."""
    return a if a >= b or a != a else b


def _min(a: float, b: float) -> float:
    """``np.minimum`` of two floats."""
    return a if a <= b or a != a else b


def _nearer(a: float, b: float) -> float:
    return b if abs(b) < abs(a) else a


def _clip(v: float, cap: float) -> float:
    """``np.minimum(np.maximum(v, -cap), cap)`` (a NaN stays a NaN). Written out inline where it runs per metric."""
    return v if -cap <= v <= cap else (cap if v > cap else -cap if v < -cap else v)


def step(doc: dict[str, Any], row: Any, dt: float) -> np.ndarray:
    """The features of one heartbeat ``row`` (len(METRICS),) of one agent, ``dt`` seconds after its previous one
    (its interval for the first). ``doc`` is the agent's state in its document form (``baseline.current_doc``); its
    values are replaced by the state after the row (the lists it held are not changed). The vector is meaningful
    only if the state was ready (``baseline.ready``) before the call."""
    x = [float(v) for v in row]
    if len(x) != _M:
        raise ValueError(f"a heartbeat row has {_M} values, not {len(x)}")
    try:
        f = _step(doc, x, float(dt))
    except (ZeroDivisionError, ValueError, TypeError):  # (TypeError: a None where numpy reads a NaN)
        f = None
    if f is None:  # what Python cannot compute as numpy does: numpy does it
        s = Baseline.from_doc(doc)
        f = fe.step(s, 1, np.asarray(x, dtype=np.float64).reshape(1, _M), np.asarray([dt], dtype=np.float64))[0]
        s.n += 1
        doc.update(s.to_doc())
    return f


def features(row: Any, dt: float, state: Baseline) -> np.ndarray:
    """``step`` on a one-agent ``Baseline``, which it updates (a model replaying a stream in memory, tests)."""
    doc = state.to_doc()
    f = step(doc, row, dt)
    after = Baseline.from_doc(doc)
    for field in fields(Baseline):
        setattr(state, field.name, getattr(after, field.name))
    return f


def _step(doc: dict[str, Any], x: list[float], dt: float) -> np.ndarray | None:
    """``features.step`` of one agent; None (and ``doc`` untouched) where it must run in numpy instead."""
    n = int(doc["n"])
    mean, var, ref, prev = doc["mean"], doc["var"], doc["ref"], doc["prev"]
    age, interval, old_level = float(doc["age"]), float(doc["interval"]), doc["level"]
    ring = list(doc["ring"])
    slot = (n % WINDOW) * _M
    ring[slot : slot + _M] = x
    total = sum(ring)
    if total != total:  # a NaN (or inf - inf): numpy sorts a NaN last, Python's sort does not know where to put it
        return None
    b = max(1.0 / (age + 1.0), _LEVEL_A)
    wmed, level = [0.0] * _M, [0.0] * _M
    fast = [0.0] * (3 * _M)  # the row's, the window's and the level's deviations from the fast baseline, unclipped
    f = [0.0] * fe.N_FEATURES
    for j in range(_M):
        m = fe.SD_REL_FLOOR * mean[j]
        sd = math.sqrt(var[j] + m * m + _ABS_SQ[j])
        wmed[j] = sorted(ring[j::_M])[_MID]
        level[j] = old_level[j] + b * (wmed[j] - old_level[j])
        for i, v in enumerate((x[j], wmed[j], level[j])):
            za, zb = (v - mean[j]) / sd, (v - ref[j]) / sd
            fast[i * _M + j] = za
            z = zb if abs(zb) < abs(za) else za
            f[i * _M + j] = z if -_CAP <= z <= _CAP else (_CAP if z > _CAP else -_CAP if z < -_CAP else z)
    same = n > 0 and all(a == p for a, p in zip(x, prev, strict=True))
    stuck = min(float(doc["stuck"]) + 1.0, fe.STUCK_CAP) if same else 0.0
    gap = max(dt / interval, 1.0)
    f[fe._I_STUCK] = stuck
    f[fe._I_GAP] = gap
    f[fe._I_ERR] = x[_ERR] - mean[_ERR]
    f[fe._I_COST] = x[_COST] / max(mean[_COST], fe._RATIO_EPS)
    cpt = x[_COST] / max(x[_TOK], fe._RATIO_EPS)
    base_cpt = mean[_COST] / max(mean[_TOK], fe._RATIO_EPS)
    f[fe._I_CPT] = cpt / max(base_cpt, fe._RATIO_EPS)
    _logs(f, x, wmed, level, mean, ref)
    _update(doc, x, n, age, interval, (fast, level), stuck, gap)
    doc.update(ring=ring, prev=x, stuck=stuck, level=level, age=age + 1.0, n=n + 1)
    return np.asarray(f)


def _logs(
    f: list[float], x: list[float], wmed: list[float], level: list[float], mean: list[float], ref: list[float]
) -> None:
    """The log-ratio features into ``f`` (``features.step``'s ``logs`` and ``ratios``)."""
    eps = [fe.LOG_EPS[j] + _REL_EPS[j] * abs(ref[j]) for j in range(_M)]
    args = [
        (v[j] + eps[j]) / (base[j] + eps[j])
        for v, base in ((wmed, mean), (wmed, ref), (level, ref), (x, mean), (x, ref))
        for j in range(_M)
    ]
    tops = ((level[_COST], level[_TOK]), (x[_COST], x[_TOK]), (x[_TOK], x[_CPU]))
    for base in (mean, ref):
        for (top, bottom), (t, u) in zip(_RATIOS, tops, strict=True):
            now = (t + eps[top]) / (u + eps[bottom])
            args.append(now / ((base[top] + eps[top]) / (base[bottom] + eps[bottom])))
    raw = np.log(args).tolist()
    logs = [v if -_LOG_CAP <= v <= _LOG_CAP else _clip(v, _LOG_CAP) for v in raw[: 5 * _M]]
    for j in range(_M):
        f[fe._I_LR + j] = _nearer(logs[j], logs[_M + j])
        f[fe._I_LREF + j] = logs[2 * _M + j]
    r = [_clip(_nearer(raw[5 * _M + i], raw[5 * _M + 3 + i]), fe.LOG_CAP) for i in range(3)]
    f[fe._I_LCPT], f[fe._I_LCPT_NOW], f[fe._I_LTPC] = r
    cpu_up = _nearer(logs[3 * _M + _CPU], logs[4 * _M + _CPU])
    f[fe._I_CPU_UNEXPLAINED] = _min(cpu_up, -f[fe._I_LTPC])
    f[fe._I_LAT_UNEXPLAINED] = f[fe._I_LR] - max(f[fe._I_LR + _TOK], 0.0)
    if ref[_TOK] == 0.0 and x[_TOK] == 0.0:
        f[fe._I_LTPC] = 0.0
        f[fe._I_CPU_UNEXPLAINED] = 0.0


def _update(
    doc: dict[str, Any],
    x: list[float],
    n: int,
    age: float,
    interval: float,
    seen: tuple[list[float], list[float]],
    stuck: float,
    gap: float,
) -> None:
    """The baseline's update (``features.step``'s second half): its new mean, variance, reference, freeze counters
    and held metrics into ``doc``. ``seen``: the row's deviations from the fast baseline as the features computed
    them (the row's, then the window's, then the level's) and the recent level."""
    mean, var, ref, frozen_in, held_in = doc["mean"], doc["var"], doc["ref"], doc["frozen"], doc["held"]
    fast, level = seen
    a = max(1.0 / (age + 1.0), _MEAN_A)
    a_var = 1.0 / (n + 1) if n + 1 < fe.HORIZON else 1.0 / fe.HORIZON
    a_ref = _max(1.0 / (age + 1.0), interval / fe.REF_HORIZON_S)
    warm = age >= fe.SETTLE
    row_flag = stuck > 0.0 or gap > fe.GATE_GAP
    new_mean, new_var, new_ref = [0.0] * _M, [0.0] * _M, [0.0] * _M
    frozen, held = [0.0] * _M, [False] * _M
    for j in range(_M):
        d = x[j] - mean[j]
        nm = mean[j] + a * d
        nv = (1.0 - a_var) * (var[j] + a_var * d * d)
        nr = ref[j] + a_ref * (x[j] - ref[j])
        z_fast = fast[j]
        if n >= WARMUP and abs(z_fast) > fe.VAR_GATE:
            nv = var[j]
        if warm:
            flagged = abs(z_fast) > fe.GATE_Z
            shifted = abs(fast[_M + j]) > (fe.ZS_RELEASE if held_in[j] else fe.ZS_GATE)
            frozen[j] = frozen_in[j] + 1.0 if flagged or shifted else 0.0
            hold = frozen[j] <= fe.MAX_FREEZE
            keep = ((flagged or shifted) and hold) or row_flag
            released = shifted and not hold
            if keep:
                nm, nv = mean[j], var[j]
            if released:
                d_level = x[j] - level[j]
                nm, nv = level[j], _LEVEL_KEEP * (var[j] + _LEVEL_A * d_level * d_level)
            if keep or released or flagged or shifted:
                nr = ref[j]
            held[j] = shifted and hold
        new_mean[j], new_var[j], new_ref[j] = nm, nv, nr
    doc.update(mean=new_mean, var=new_var, ref=new_ref, frozen=frozen, held=held)
