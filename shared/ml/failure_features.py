"""The failure predictor's design rows: an agent's heartbeat features with short trends appended, and the
labels it is trained on (see shared/ml/failure.py).

Features per row are ``features.batch_features`` (deviations from the agent's own baseline) plus short
trends over the last ``TREND_WINDOW`` rows (least-squares slopes of the latency, error-rate and memory
deviations and of the error rate, and the mean error excess), all causal: ``design_many`` for whole
streams, ``trend_inputs`` and ``window_trends`` for one heartbeat at a time (the same sums as
``np.convolve``). A row is labelled 1 when a failure starts within the next ``horizon`` rows; rows inside
a failure are left out (``labels``). ``explain`` names what moved in a design row.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from shared.ml.data import METRICS, AgentStream, FaultEvent
from shared.ml.features import FEATURES, _scaled, batch_features_many

#: Rows over which the trend features are computed.
TREND_WINDOW = 10

_Z = {m: FEATURES.index(f"z_{m}") for m in METRICS}
_ZS = {m: FEATURES.index(f"zs_{m}") for m in METRICS}
_ERR_EXCESS = FEATURES.index("error_excess")
#: The raw error rate's column in a heartbeat row (``METRICS`` order).
ERR_COL = METRICS.index("error_rate")
TREND_FEATURES: tuple[str, ...] = (
    "slope_z_latency_ms",
    "slope_z_error_rate",
    "slope_z_memory_pct",
    "slope_error_rate",
    "mean_error_excess",
    "mean_zs_latency_ms",
)
ALL_FEATURES: tuple[str, ...] = (*FEATURES, *TREND_FEATURES)
#: The series the trend features are computed from (one per trend feature, in the same order): the first
#: ``_SLOPED`` get a slope, the others a mean. ``error_rate`` is the raw metric, the others are features.
TREND_INPUTS: tuple[str, ...] = (
    "z_latency_ms",
    "z_error_rate",
    "z_memory_pct",
    "error_rate",
    "error_excess",
    "zs_latency_ms",
)
_SLOPED = 4
_ERR_INPUT = TREND_INPUTS.index("error_rate")
_INPUT_COLS = np.asarray(
    [_Z["latency_ms"], _Z["error_rate"], _Z["memory_pct"], -1, _ERR_EXCESS, _ZS["latency_ms"]], dtype=np.int64
)


def _slope_kernel(w: int) -> np.ndarray:
    k = np.arange(w, dtype=np.float64)
    k -= k.mean()
    k /= np.sum(k**2)
    return k


def _slope(y: np.ndarray, w: int = TREND_WINDOW) -> np.ndarray:
    """Least-squares slope of ``y`` over the last ``w`` rows at every row (causal; the first value repeated
    before the start)."""
    if y.shape[0] == 0:
        return y.copy()
    k = _slope_kernel(w)
    padded = np.concatenate([np.full(w - 1, y[0]), y])
    # out[i] = sum_j k[j] * padded[i + j]  (window ending at row i)
    return np.convolve(padded, k[::-1], mode="valid")


def _mean(y: np.ndarray, w: int = TREND_WINDOW) -> np.ndarray:
    if y.shape[0] == 0:
        return y.copy()
    padded = np.concatenate([np.full(w - 1, y[0]), y])
    return np.convolve(padded, np.full(w, 1.0 / w), mode="valid")


def trend_inputs(F: np.ndarray, error_rate: np.ndarray) -> np.ndarray:
    """The ``TREND_INPUTS`` series of rows ``(n, 6)`` from their features and raw error rates."""
    out = F.take(_INPUT_COLS, axis=-1)  # F[..., _INPUT_COLS] without the fancy-indexing machinery
    out[..., _ERR_INPUT] = error_rate
    return out


def design(F: np.ndarray, stream: AgentStream) -> np.ndarray:
    """The base features of a stream with the trend features appended."""
    inputs = trend_inputs(F, np.asarray(stream.X[:, ERR_COL], dtype=np.float64))
    trends = np.column_stack(
        [_slope(inputs[:, j]) for j in range(_SLOPED)]
        + [_mean(inputs[:, j]) for j in range(_SLOPED, len(TREND_INPUTS))]
    )
    return np.hstack([F, trends.reshape(F.shape[0], len(TREND_FEATURES))])


#: The kernels of the trend features, one row per ``TREND_INPUTS`` column: ``window_trends`` multiplies
#: the window's columns by them.
_KERNELS = np.vstack(
    [
        np.tile(_slope_kernel(TREND_WINDOW), (_SLOPED, 1)),
        np.full((len(TREND_INPUTS) - _SLOPED, TREND_WINDOW), 1.0 / TREND_WINDOW),
    ]
)


def window_trends(window: np.ndarray) -> np.ndarray:
    """The trend features of the last row from the window of its last ``TREND_WINDOW`` inputs (oldest
    first), equal bit for bit to the batch path's ``np.convolve``: its one ``valid`` output is the sum of
    the products in window order, started from 0, which is what the running sum of the products (plus 0,
    for the sign of a zero) computes, for all six columns at once (tests/unit/test_ml_failure.py holds
    the two together)."""
    return np.add.accumulate(window.T * _KERNELS, axis=1)[:, -1] + 0.0


def explain(d: np.ndarray, top: int = 3) -> tuple[str, ...]:
    """The names of the ``top`` features (of ``ALL_FEATURES``) of a design row furthest from normal.

    The base features in the units of ``features.explain``; the trends as their change over the window in
    the same units: a z slope times ``TREND_WINDOW`` (deviations gained), the error-rate slope times
    ``TREND_WINDOW`` and the mean error excess times 100 (rate points, as ``error_excess``), the mean short
    latency z as it is. Simple on purpose: it names what moved, not the model's attribution."""
    d = np.asarray(d, dtype=np.float64)
    base = np.abs(_scaled(d[: len(FEATURES)]))
    t = d[len(FEATURES) :]
    trend = np.abs(
        np.asarray(
            [
                t[0] * TREND_WINDOW,
                t[1] * TREND_WINDOW,
                t[2] * TREND_WINDOW,
                100.0 * TREND_WINDOW * t[3],
                100.0 * t[4],
                t[5],
            ]
        )
    )
    scaled = np.concatenate([base, trend])
    idx = np.argsort(-scaled, kind="stable")[:top]
    return tuple(ALL_FEATURES[int(i)] for i in idx if scaled[int(i)] > 0.0)


def design_many(streams: Sequence[AgentStream]) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(features (n, len(ALL_FEATURES)), valid (n,))`` of each stream."""
    return [(design(F, s), valid) for (F, valid), s in zip(batch_features_many(streams), streams, strict=True)]


def labels(n: int, events: Sequence[FaultEvent], horizon: int) -> tuple[np.ndarray, np.ndarray]:
    """Row labels of one agent's stream of ``n`` rows: ``(y, keep)``; ``y[i]`` is 1 when a failure starts
    in rows ``(i, i + horizon]``, and ``keep`` is false for rows inside a failure."""
    y = np.zeros(n, dtype=np.int8)
    keep = np.ones(n, dtype=bool)
    for e in events:
        y[max(0, e.start - horizon) : min(n, e.start)] = 1
    for e in events:
        keep[max(0, e.start) : min(n, e.end)] = False
    y[~keep] = 0
    return y, keep
