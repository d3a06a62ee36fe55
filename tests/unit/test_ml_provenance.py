"""A stored model remembers its makers and checks its own scorer (shared/ml/provenance.py): every kind records
the scikit-learn and numpy versions that trained it and a self-check scored by scikit-learn; a model trained
under another minor version loads and says so once; a model stored before either existed loads as of unknown
provenance; a model whose serving scorer disagrees with its self-check beyond the tolerance is refused,
while a difference within it (rounding) is not."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest

from shared.ml import provenance
from shared.ml.anomaly import AnomalyDetector
from shared.ml.anomaly_forest import FlatForest
from shared.ml.assign import TaskModel
from shared.ml.assign_synthetic import synthetic_outcomes
from shared.ml.failure import FailurePredictor
from shared.ml.flat import FlatTrees
from shared.ml.simulate import simulate_failures
from shared.platform import logs
from tests.unit.test_ml_anomaly import FLEET, TRAIN

KINDS = ("anomaly", "failure", "task_assignment")


@pytest.fixture(scope="module")
def models() -> dict[str, Any]:
    """One small model of each kind, trained here."""
    det = AnomalyDetector()
    det.fit({a: s.head(TRAIN) for a, s in list(FLEET.items())[:6]})
    pred = FailurePredictor(max_iter=30).fit(*simulate_failures(agents=20, rows=500, seed=3))
    task = TaskModel(n_estimators=30).fit(synthetic_outcomes(600, agents=8, seed=1))
    return {"anomaly": det, "failure": pred, "task_assignment": task}


LOADERS: dict[str, Callable[[bytes], Any]] = {
    "anomaly": lambda data: AnomalyDetector.from_bytes(data, load_forest=False),
    "failure": FailurePredictor.from_bytes,
    "task_assignment": TaskModel.from_bytes,
}


def reference(kind: str, model: Any, rows: np.ndarray) -> np.ndarray:
    """scikit-learn's own scores of ``rows`` (what the self-check stores)."""
    if kind == "anomaly":
        return np.asarray(-model.forest.score_samples(rows))
    sklearn_model = model.model if kind == "failure" else model.forest
    return np.asarray(sklearn_model.predict_proba(rows)[:, 1])


def serving_scores(kind: str, model: Any, rows: np.ndarray) -> np.ndarray:
    """The loaded model's scores of ``rows`` with the scorer that serves (the flat trees)."""
    if kind == "anomaly":
        return np.asarray(model.flat.score(rows))
    return np.asarray(model.flat.predict_proba1(rows) if kind == "failure" else model.predict_success(rows))


def unpacked(data: bytes) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    return arrays, json.loads(arrays["meta"].tobytes().decode())


def rewrite(data: bytes, meta: dict[str, Any] | None = None, drop: tuple[str, ...] = (), **arrays: Any) -> bytes:
    """``data`` with its metadata replaced, arrays dropped or replaced."""
    stored, old = unpacked(data)
    stored.update(arrays)
    stored["meta"] = np.frombuffer(json.dumps(old if meta is None else meta).encode(), dtype=np.uint8)
    buf = io.BytesIO()
    np.savez(buf, **{k: v for k, v in stored.items() if k not in drop})
    return buf.getvalue()


@pytest.fixture
def records() -> Iterator[list[logging.LogRecord]]:
    """The log records of the ML modules (their JSON lines), with the log-once memory cleared."""
    got: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            got.append(record)

    handler, logger = Keep(), logging.getLogger("fleet.ml")
    logger.addHandler(handler)
    provenance.reset()
    yield got
    logger.removeHandler(handler)
    provenance.reset()


def lines(records: list[logging.LogRecord], words: str) -> list[dict[str, Any]]:
    """The JSON log lines (as Cloud Logging gets them) whose message contains ``words``."""
    out = [json.loads(logs.JsonFormatter().format(r)) for r in records]
    return [line for line in out if words in line["message"]]


# ---------------------------------------------------------------------------------------------- makers
@pytest.mark.parametrize("kind", KINDS)
def test_every_model_records_its_makers_and_a_self_check_scored_by_sklearn(kind: str, models: dict[str, Any]) -> None:
    import sklearn

    model = models[kind]
    arrays, meta = unpacked(model.to_bytes())
    assert meta["trained_with"] == {"scikit-learn": sklearn.__version__, "numpy": np.__version__}
    rows, scores = arrays[provenance.ROWS], arrays[provenance.SCORES]
    assert rows.shape[0] == scores.shape[0] == provenance.CHECK_ROWS == meta["self_check"]["rows"]
    threshold = meta["self_check"]["threshold"]
    assert np.any(scores >= threshold) and np.any(scores < threshold)  # both sides of the threshold
    expected = {"anomaly": lambda: model.check_threshold, "failure": lambda: model.threshold}.get(kind, lambda: 0.5)
    assert threshold == expected()
    assert meta["self_check"]["tolerance"] == {"rtol": provenance.RTOL, "atol": provenance.ATOL}
    # The stored scores are scikit-learn's own (the same call on the same rows: bit for bit).
    np.testing.assert_array_equal(scores, reference(kind, model, rows))
    loaded = LOADERS[kind](model.to_bytes())
    assert loaded.provenance.trained_with == meta["trained_with"]
    np.testing.assert_array_equal(loaded.provenance.scores, scores)


def test_the_versions_are_read_without_importing_sklearn() -> None:
    import subprocess
    import sys

    code = "import sys; from shared.ml import provenance; print(provenance.versions()['scikit-learn'])\n"
    code += "print('sklearn' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    import sklearn

    assert out.stdout.split() == [sklearn.__version__, "False"]


def _other_minor(version: str) -> str:
    major, minor = (int(x) for x in version.split(".")[:2])
    return f"{major}.{minor + 1 if minor < 50 else minor - 1}.0"


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("package", provenance.PACKAGES)
def test_a_model_trained_under_another_minor_version_loads_and_logs_both_versions_once(
    kind: str, package: str, models: dict[str, Any], records: list[logging.LogRecord]
) -> None:
    data = models[kind].to_bytes()
    _, meta = unpacked(data)
    running = meta["trained_with"][package]
    other = _other_minor(running)
    moved = rewrite(data, {**meta, "trained_with": {**meta["trained_with"], package: other}})
    first, again = LOADERS[kind](moved), LOADERS[kind](moved)  # loaded twice, logged once
    assert first.provenance.trained_with[package] == other and again.flat is not None
    found = lines(records, "other library versions")
    assert len(found) == 1, found
    line = found[0]
    assert line["severity"] == "WARNING" and line["differs"] == [package]
    assert line["trained_with"][package] == other and line["running"][package] == running
    assert line["self_check"] == "verified" and kind in line["model"]
    # Re-saved, it keeps its makers' versions (not this process's).
    assert unpacked(first.to_bytes())[1]["trained_with"][package] == other
    # Another patch release of the same minor version is the same maker: nothing logged.
    records.clear()
    patch = rewrite(data, {**meta, "trained_with": {**meta["trained_with"], package: running + ".post1"}})
    LOADERS[kind](patch)
    assert lines(records, "library versions") == []


@pytest.mark.parametrize("kind", KINDS)
def test_a_model_stored_before_provenance_loads_as_unknown_and_logs_once(
    kind: str, models: dict[str, Any], records: list[logging.LogRecord]
) -> None:
    data = models[kind].to_bytes()
    arrays, meta = unpacked(data)
    old_meta = {k: v for k, v in meta.items() if k not in ("trained_with", "self_check")}
    old = rewrite(data, old_meta, drop=(provenance.ROWS, provenance.SCORES))
    assert set(unpacked(old)[0]) == set(arrays) - {provenance.ROWS, provenance.SCORES}
    loaded, again = LOADERS[kind](old), LOADERS[kind](old)
    assert loaded.provenance.trained_with is None and loaded.provenance.rows is None
    rows = arrays[provenance.ROWS]
    np.testing.assert_array_equal(serving_scores(kind, loaded, rows), serving_scores(kind, again, rows))
    np.testing.assert_array_equal(serving_scores(kind, loaded, rows), serving_scores(kind, LOADERS[kind](data), rows))
    found = lines(records, "unknown provenance")
    assert len(found) == 1, found
    assert found[0]["trained_with"] == "unknown" and found[0]["self_check"] == "absent"
    assert found[0]["running"] == provenance.versions()
    assert "trained_with" not in unpacked(loaded.to_bytes())[1]  # re-saved, still unknown: never invented


# ------------------------------------------------------------------------------------------- self-check
@pytest.mark.parametrize("kind", KINDS)
def test_a_tampered_self_check_is_refused_and_rounding_is_not(kind: str, models: dict[str, Any]) -> None:
    data = models[kind].to_bytes()
    arrays, meta = unpacked(data)
    scores, rows = arrays[provenance.SCORES], arrays[provenance.ROWS]
    # Within the tolerance: the last bits of a score (another summation order) do not refuse a model.
    LOADERS[kind](rewrite(data, **{provenance.SCORES: scores * (1.0 + 10 * np.finfo(float).eps)}))
    for change, deviation in ((scores * (1.0 + 1e-9), 1e-9), (scores + 1e-6, 1e-6)):
        with pytest.raises(provenance.SelfCheckFailed, match="self_check_failed") as refused:
            LOADERS[kind](rewrite(data, **{provenance.SCORES: change}))
        assert refused.value.reason == "self_check_failed" and refused.value.rows == provenance.CHECK_ROWS
        assert refused.value.max_deviation == pytest.approx(deviation * (scores.max() if deviation < 1e-6 else 1))
    swapped = rows.copy()
    swapped[[0, -1]] = rows[[-1, 0]]  # rows of both sides of the threshold swapped: their scores differ
    with pytest.raises(provenance.SelfCheckFailed, match="self_check_failed"):
        LOADERS[kind](rewrite(data, **{provenance.ROWS: swapped}))
    with pytest.raises(provenance.SelfCheckFailed, match="incomplete"):  # the metadata says there is one
        LOADERS[kind](rewrite(data, drop=(provenance.SCORES,)))
    with pytest.raises(provenance.SelfCheckFailed):  # rows of another width: the trees cannot take them
        LOADERS[kind](rewrite(data, **{provenance.ROWS: rows[:, :-1]}))
    with pytest.raises(provenance.SelfCheckFailed, match="incomplete"):  # an empty check would verify anything
        LOADERS[kind](rewrite(data, **{provenance.ROWS: rows[:0], provenance.SCORES: scores[:0]}))
    assert meta["self_check"]["rows"] == provenance.CHECK_ROWS


@pytest.mark.parametrize("kind", KINDS)
def test_a_scorer_that_disagrees_with_the_self_check_is_refused(
    kind: str, models: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """As after a numpy release that computed the trees differently: the serving scorer, not the file, moved."""
    data = models[kind].to_bytes()
    if kind == "anomaly":  # only the one-row path (the heartbeat's) is off: it is checked as well
        score_one = FlatForest.score_one
        monkeypatch.setattr(FlatForest, "score_one", lambda self, row: score_one(self, row) * (1.0 + 1e-9))
        culprit = "one_row"
    else:
        predict = FlatTrees.predict_proba1
        monkeypatch.setattr(FlatTrees, "predict_proba1", lambda self, X, chunk=1024: predict(self, X, chunk) + 1e-7)
        culprit = "batch, one_row"
    with pytest.raises(provenance.SelfCheckFailed, match=culprit):
        LOADERS[kind](data)
    monkeypatch.undo()
    assert LOADERS[kind](data).flat is not None


# --------------------------------------------------------------------------------------------- helpers
def test_the_tolerance() -> None:
    want = np.array([0.0, 1e-300, 3e-6, 0.25, 0.999999])
    assert provenance.close(want * (1 + 5e-13) + 5e-16, want) == (True, pytest.approx(5e-16, rel=0.5))
    assert not provenance.close(want * (1 + 5e-12), want)[0]
    assert not provenance.close(want + 2e-15, want)[0]  # above the absolute floor near 0
    assert provenance.close(np.array([np.nan]), np.array([0.5])) == (False, float("inf"))
    assert provenance.close(want[:2], want)[0] is False


def test_self_check_rows_come_from_both_sides_of_the_threshold() -> None:
    rows = np.arange(103, dtype=np.float64)[:, None]
    scores = np.concatenate([np.linspace(0.0, 0.4, 100), [0.6, 0.7, 0.9]])
    made = provenance.at_training(rows, scores, 0.5, "test")
    assert made.scores is not None and made.rows is not None
    assert made.scores.size == provenance.CHECK_ROWS and np.sum(made.scores >= 0.5) == 3  # all there are
    assert made.scores.min() == 0.0 and made.scores.max() == 0.9  # spread over each side's range
    np.testing.assert_array_equal(made.rows[:, 0], np.searchsorted(scores, made.scores))
    high = provenance.at_training(rows, scores + 1.0, 0.5, "test")
    assert high.scores is not None and np.all(high.scores >= 0.5) and high.scores.size == provenance.CHECK_ROWS
    pool = provenance.balanced(np.array([0] * 5000 + [1] * 7), seed=0, per_class=100)
    assert pool.size == 107 and set(range(5000, 5007)) <= set(pool.tolist())


def test_take_gathers_rows_of_blocks_without_stacking_them() -> None:
    blocks = [np.arange(6.0).reshape(3, 2), np.empty((0, 2)), np.arange(6.0, 10.0).reshape(2, 2)]
    idx = np.array([0, 2, 3, 4])
    np.testing.assert_array_equal(provenance.take(blocks, idx), np.vstack(blocks)[idx])
