"""Where a stored model came from, and whether the scorer that serves it still agrees with it.

- **Makers.** Every model records in its metadata the versions of scikit-learn and numpy that trained it
  (``trained_with``), read with ``importlib.metadata`` so that loading never imports scikit-learn. A model
  trained under another major or minor version of either loads, and the load is logged (one JSON line per
  model and process, both versions in it); a model stored before versions were recorded loads as of
  unknown provenance, logged the same way.
- **Self-check.** At training time a few rows (``CHECK_ROWS``, from both sides of the model's threshold
  where the data has both) are scored by scikit-learn itself, the reference, and stored with the model.
  Every load re-scores them with the scorer that will serve (the flat numpy trees, one row at a time and
  as a batch) and refuses the model (``SelfCheckFailed``, reason ``self_check_failed``) when any score
  differs beyond the tolerance below: a library upgrade that changes what the trees compute, or a
  flattening that does not match the trained model, never reaches service.
- **Tolerance** (``RTOL``, ``ATOL``): what "equal to scikit-learn" means for the flat scorers, used by
  the self-check and by the tests that compare the two. Decisions (a score against a threshold) are
  compared exactly by the tests; only the last bits of the scores may differ.

numpy is imported here (the models import this module); scikit-learn never is.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import logging
import math
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from shared.ml import storage
from shared.platform import logs

log = logs.get_logger("ml.provenance")

#: Relative tolerance between the flat scorer and scikit-learn. The two compute the same sums of the same
#: leaf values; what may differ is the order of the additions (another release may sum pairwise, in
#: SIMD lanes or per thread) and the last bits of ``exp`` (sklearn's sigmoid is scipy's ``expit``: 1-2 ulps
#: off ``1 / (1 + exp(-r))`` on a few rows in a hundred today). Any order of a sum of n terms is within
#: (n - 1) * eps * sum|terms| of any other: for the forests (means of n <= 200 non-negative leaf
#: probabilities or path lengths) that is under 5e-14 relative; for the boosted failure model (120
#: trees, sum|leaf values| <= 22 on the simulated fleets) at most 6e-13 on the raw score, which the
#: sigmoid passes on as at most 6e-13 relative on the risk. 1e-12 covers that worst case; a change of
#: behaviour (one split taken the other way in one tree) moves a score by the difference of two sibling
#: leaves (on the failure model at least 1e-7 and typically 0.2 on the raw score): five orders of magnitude
#: or more above the tolerance.
RTOL = 1e-12
#: Absolute floor of the tolerance: about 4.5 ulps of 1.0. Every score compared is in [0, 1] and every
#: threshold is at least 0.05, so a difference this small moves no decision (but a tie: a score within it
#: of the threshold); it only matters where ``RTOL * |score|`` vanishes (a score at or next to 0, e.g. the
#: sigmoid's far tail).
ATOL = 1e-15
#: Rows stored with a model for its self-check.
CHECK_ROWS = 8
#: The libraries whose versions a model records.
PACKAGES = ("scikit-learn", "numpy")
#: The arrays of the self-check in a model's ``.npz``.
ROWS, SCORES = "check_rows", "check_scores"
SELF_CHECK_FAILED = "self_check_failed"

Scorer = Callable[[np.ndarray], np.ndarray]


@functools.cache
def versions() -> dict[str, str | None]:
    """The installed versions of ``PACKAGES`` (None when one is not installed), without importing them."""
    out: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def _minor(version: Any) -> tuple[int, int] | None:
    match = re.match(r"(\d+)\.(\d+)", str(version)) if version else None
    return (int(match[1]), int(match[2])) if match else None


def differing(trained_with: Mapping[str, Any] | None) -> list[str]:
    """The packages whose major.minor version differs between ``trained_with`` and this process (all of
    them when ``trained_with`` is unknown)."""
    running = versions()
    if trained_with is None:
        return list(PACKAGES)
    return [
        p for p in PACKAGES if _minor(trained_with.get(p)) is None or _minor(trained_with.get(p)) != _minor(running[p])
    ]


def close(got: np.ndarray, want: np.ndarray) -> tuple[bool, float]:
    """Whether every score of ``got`` is within the tolerance of ``want`` (``numpy.isclose`` with ``RTOL``
    and ``ATOL``; a non-finite or missing score never is), and the largest absolute difference."""
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    if got.shape != want.shape:
        return False, math.inf
    diff = np.abs(got - want)
    if not np.all(np.isfinite(diff)):
        return False, math.inf
    return bool(np.all(diff <= ATOL + RTOL * np.abs(want))), float(diff.max()) if diff.size else 0.0


class SelfCheckFailed(ValueError):
    """A model's serving scorer disagrees with the self-check stored with it: the model is refused."""

    reason = SELF_CHECK_FAILED

    def __init__(self, model: str, max_deviation: float, rows: int, detail: str = "") -> None:
        self.model, self.max_deviation, self.rows = model, max_deviation, rows
        super().__init__(
            f"{SELF_CHECK_FAILED}: {model}: the serving scorer differs from the stored self-check by up to "
            f"{max_deviation:.3g} on {rows} rows (tolerance rtol {RTOL:g}, atol {ATOL:g}){detail}"
        )

    @property
    def logged_deviation(self) -> float | str:
        """The deviation for a JSON log field: a number, or "inf" for rows the scorer cannot score at all."""
        return self.max_deviation if math.isfinite(self.max_deviation) else "inf"


@dataclass(frozen=True, eq=False)  # eq=False: arrays have no truth value
class Provenance:
    """A model's makers (None: stored before they were recorded) and its self-check (None: none stored)."""

    trained_with: dict[str, str | None] | None = None
    rows: np.ndarray | None = None
    scores: np.ndarray | None = None
    threshold: float | None = None
    reference: str = ""

    def meta(self) -> dict[str, Any]:
        """The model metadata's keys (JSON-able; nothing for what is unknown)."""
        out: dict[str, Any] = {}
        if self.trained_with is not None:
            out["trained_with"] = dict(self.trained_with)
        if self.rows is not None:
            tolerance = {"rtol": RTOL, "atol": ATOL}
            out["self_check"] = {
                "rows": int(self.rows.shape[0]),
                "threshold": self.threshold,
                "reference": self.reference,
                "tolerance": tolerance,
            }
        return out

    def arrays(self) -> dict[str, np.ndarray]:
        """The self-check's arrays for the model's ``.npz``."""
        return {} if self.rows is None or self.scores is None else {ROWS: self.rows, SCORES: self.scores}


def balanced(y: np.ndarray, seed: int, per_class: int = 1024) -> np.ndarray:
    """Indices of at most ``per_class`` rows of each label of ``y`` (sorted, deterministic): the pool the
    self-check rows are chosen from, so that a rare label (failures) is represented."""
    rng = np.random.default_rng(seed)
    picked = [
        rng.choice(np.flatnonzero(y == v), min(per_class, int(np.sum(y == v))), replace=False) for v in np.unique(y)
    ]
    return np.sort(np.concatenate(picked)) if picked else np.empty(0, dtype=np.int64)


def take(blocks: Sequence[np.ndarray], idx: np.ndarray) -> np.ndarray:
    """Rows ``idx`` of the blocks' rows stacked in order, without stacking them all (a large fleet's
    training rows)."""
    starts = np.cumsum([0] + [b.shape[0] for b in blocks])
    which = np.searchsorted(starts, idx, side="right") - 1
    return np.vstack([blocks[b][i - starts[b]] for b, i in zip(which, idx, strict=True)])


def _spread(side: np.ndarray, k: int) -> np.ndarray:
    return side[np.unique(np.round(np.linspace(0, side.size - 1, k)).astype(np.int64))] if k else side[:0]


def at_training(rows: np.ndarray, scores: np.ndarray, threshold: float, reference: str) -> Provenance:
    """The provenance of a model trained now: this process's versions, and ``CHECK_ROWS`` of ``rows`` with
    their reference ``scores`` (scikit-learn's), half under ``threshold`` and half at or over it when both
    sides have enough, spread over each side's range."""
    rows, scores = np.asarray(rows, dtype=np.float64), np.asarray(scores, dtype=np.float64)
    order = np.argsort(scores, kind="stable")
    order = order[np.isfinite(scores[order])]
    low, high = order[scores[order] < threshold], order[scores[order] >= threshold]
    k_high = min(high.size, CHECK_ROWS // 2)
    k_low = min(low.size, CHECK_ROWS - k_high)
    k_high = min(high.size, CHECK_ROWS - k_low)
    idx = np.concatenate([_spread(low, k_low), _spread(high, k_high)])
    return Provenance(dict(versions()), rows[idx].copy(), scores[idx].copy(), float(threshold), reference)


def scorers(batch: Scorer, one: Callable[[np.ndarray], float]) -> dict[str, Scorer]:
    """The serving scorer's two paths: rows as a batch, and one row at a time (the heartbeat path)."""
    return {"batch": batch, "one_row": lambda rows: np.asarray([one(r) for r in rows], dtype=np.float64)}


def on_load(
    meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray], serving: Mapping[str, Scorer], model: str
) -> Provenance:
    """The provenance of a model being loaded (``model`` names it in messages): its self-check verified with
    every ``serving`` scorer (raises ``SelfCheckFailed``), and a log line when it was trained under other
    versions or stored without them."""
    made, stated = meta.get("trained_with"), meta.get("self_check")
    info: Mapping[str, Any] = stated if isinstance(stated, Mapping) else {}
    rows, scores = arrays.get(ROWS), arrays.get(SCORES)
    prov = Provenance(
        {str(k): None if v is None else str(v) for k, v in made.items()} if isinstance(made, Mapping) else None,
        None if rows is None else np.asarray(rows, dtype=np.float64),
        None if scores is None else np.asarray(scores, dtype=np.float64),
        None if info.get("threshold") is None else float(info["threshold"]),
        str(info.get("reference", "")),
    )
    if prov.rows is not None or prov.scores is not None or info:
        verify(prov, serving, model)
    _log_once(prov, model)
    return prov


def packed(
    arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any], prov: Provenance, sklearn_object: Any = None
) -> bytes:
    """A model's bytes (``storage.pack``): its ``arrays`` followed by its self-check's, its ``meta`` (which
    holds ``prov.meta()``), and its scikit-learn object as skops bytes."""
    return storage.pack({**arrays, **prov.arrays()}, meta, sklearn_object)


def verified(
    meta: Mapping[str, Any],
    arrays: Mapping[str, np.ndarray],
    batch: Scorer,
    one: Callable[[np.ndarray], float],
    model: str,
) -> Provenance:
    """``on_load`` with the serving scorer's two paths (``scorers``): a model's provenance on load, its
    self-check verified (raises ``SelfCheckFailed``)."""
    return on_load(meta, arrays, scorers(batch, one), model)


class Incompatible(ValueError):
    """A stored model this code cannot serve (another format, other features): retraining makes one it can."""


#: ``load_failure``'s reason for an ``Incompatible`` model.
INCOMPATIBLE = "incompatible: retraining needed"


def load_failure(exc: BaseException) -> dict[str, Any]:
    """How a model that failed to load is logged: ``reason`` (``self_check_failed`` when its self-check
    refused it, ``incompatible: retraining needed`` for another format or other features, else
    ``unloadable``) and ``max_deviation`` (a self-check's largest deviation, else None)."""
    if isinstance(exc, SelfCheckFailed):
        return {"reason": SELF_CHECK_FAILED, "max_deviation": exc.logged_deviation}
    if isinstance(exc, Incompatible):
        return {"reason": INCOMPATIBLE, "max_deviation": None}
    return {"reason": "unloadable", "max_deviation": None}


def verify(prov: Provenance, serving: Mapping[str, Scorer], model: str) -> float:
    """Re-score the self-check rows with each serving scorer; the largest deviation, or ``SelfCheckFailed``."""
    if (
        prov.rows is None
        or prov.scores is None
        or prov.rows.ndim != 2
        or prov.rows.shape[0] == 0  # an empty check would verify anything
        or prov.rows.shape[0] != prov.scores.size
    ):
        raise SelfCheckFailed(model, math.inf, 0, ": the stored self-check is incomplete")
    worst, failed = 0.0, []
    for name, scorer in serving.items():
        try:
            ok, deviation = close(scorer(prov.rows), prov.scores)
        except Exception as exc:  # rows the scorer cannot take: the check and the trees disagree
            raise SelfCheckFailed(
                model, math.inf, prov.rows.shape[0], f": {name}: {type(exc).__name__}: {exc}"
            ) from exc
        worst = max(worst, deviation)
        if not ok:
            failed.append(name)
    if failed:
        raise SelfCheckFailed(model, worst, prov.rows.shape[0], f" ({', '.join(failed)})")
    return worst


_logged: set[str] = set()
_lock = threading.Lock()


def _log_once(prov: Provenance, model: str) -> None:
    differs = differing(prov.trained_with)
    if not differs and prov.rows is not None:
        return
    key = hashlib.sha256(
        repr((model, prov.trained_with, None if prov.scores is None else prov.scores.tobytes())).encode()
    ).hexdigest()
    with _lock:
        if key in _logged:
            return
        if len(_logged) > 1024:  # a long-lived process loading many models: forget, log again
            _logged.clear()
        _logged.add(key)
    if prov.trained_with is None:
        message = "model of unknown provenance: stored before library versions were recorded"
    elif differs:
        message = "model trained under other library versions"
    else:
        message = "model stored without a self-check"
    logs.log(
        log,
        message,
        logging.WARNING,
        model=model,
        trained_with=prov.trained_with if prov.trained_with is not None else "unknown",
        running=versions(),
        differs=differs,
        self_check="verified" if prov.rows is not None else "absent",
    )


def reset() -> None:
    """Forget which models were logged (tests)."""
    with _lock:
        _logged.clear()
