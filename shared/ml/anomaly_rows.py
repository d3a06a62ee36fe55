"""How the anomaly detector judges one row against an agent's bounds (``AnomalyDetector.detect_rows`` and
``judge`` share these): the envelope check, the rule that lets an episode clear, and what drove a high row.

Pure numpy. A row of an agent in one of its activity regimes (shared/ml/anomaly_regimes.py) is judged on its
absolute features and on ``KEPT`` of the relative ones; any other row on the relative features its bounds
check (only ``features.RELATIONAL`` while its baseline settles after a rebase).
"""

from __future__ import annotations

import numpy as np

from shared.ml import features as fe
from shared.ml.anomaly_calibration import Bounds
from shared.ml.anomaly_regimes import DRIVERS, KEPT, N_ABS, Regimes, drivers

#: The drivers of a row that is not high.
ZEROS = np.zeros(len(DRIVERS))
_NO_ABS = np.zeros(N_ABS)
RELATIONAL = list(fe.RELATIONAL)
_KEPT = list(KEPT)
_LEVELS = [i for i in range(fe.N_FEATURES) if i not in fe.RELATIONAL]


def out_of_envelope(F: np.ndarray, b: Bounds) -> np.ndarray:
    """Whether each row of ``F`` leaves the envelope ``b`` in any feature."""
    return np.asarray((np.greater(F, b.hi) | np.less(F, b.lo)).any(axis=-1))


def clear(F: np.ndarray, b: Bounds, clear_z: float) -> np.ndarray:
    """Rows whose metrics are all back within ``clear_z`` deviations (on each side the agent's envelope
    checks) and not stuck."""
    z = F[..., : len(fe.Z_LIKE)]
    up = (z < clear_z) | np.isinf(b.hi[: len(fe.Z_LIKE)])
    down = (z > -clear_z) | np.isinf(b.lo[: len(fe.Z_LIKE)])
    return np.asarray((up & down).all(axis=-1) & (F[..., fe._I_STUCK] == 0.0))


def scaled(f: np.ndarray, b: Bounds, settling: bool = False) -> np.ndarray:
    """|feature| in comparable units, for naming what drove a score (``DRIVERS``): only the features judged
    for this agent on the side they moved to (not traffic rising, not a level while the baseline settles),
    and of those the ones outside the envelope when any is (a row high on the forest's score alone names the
    largest)."""
    g = np.abs(fe._scaled(f))
    g[(np.isinf(b.hi) & (f > 0.0)) | (np.isinf(b.lo) & (f < 0.0)) | (np.isinf(b.hi) & np.isinf(b.lo))] = 0.0
    if settling:
        g[_LEVELS] = 0.0
    outside = (f > b.hi) | (f < b.lo)
    if (outside & (g > 0.0)).any():
        g[~outside] = 0.0
    return np.concatenate([g, _NO_ABS])


def regime_scaled(regimes: Regimes, r: int, f: np.ndarray, a: np.ndarray, b: Bounds) -> np.ndarray:
    """The drivers of a row judged in its regime: the relative features still judged, and the absolute ones."""
    g = np.zeros(fe.N_FEATURES)
    g[_KEPT] = scaled(f, b)[_KEPT]
    return np.concatenate([g, drivers(regimes, r, a)])


def relational(b: Bounds) -> Bounds:
    """The bounds of the relational features only."""
    return Bounds(b.lo[RELATIONAL], b.hi[RELATIONAL], b.threshold, b.source)


def kept(F: np.ndarray, b: Bounds) -> np.ndarray:
    """Whether rows ``F`` leave the envelope in the relative features still judged for an agent in a regime."""
    k = F[..., _KEPT]
    return np.asarray((np.greater(k, b.hi[_KEPT]) | np.less(k, b.lo[_KEPT])).any(axis=-1))
