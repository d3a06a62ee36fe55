"""``FlatTrees``: numpy-only scoring of fitted tree ensembles equals scikit-learn's ``predict_proba`` (float32
thresholds of forests, NaN routing of gradient boosting), one row equals a batch, and the arrays survive
an ``.npz`` round trip without pickles.

"Equals scikit-learn" is within ``provenance.RTOL``/``ATOL`` (the last bits may differ between releases:
summation order, ``expit``) with every decision identical: the same side of every threshold a model may
use, the same ``predict``, for every row whose score is not itself within the tolerance of the threshold (a
tie, which the last bit decides in either implementation: a forest's mean of 0/1 leaves is often exactly
0.5). Our scorer against itself (one row and a batch, before and after a round trip) stays bit for bit: the
same code summing in the same order."""

from __future__ import annotations

import io
import subprocess
import sys
from typing import Any

import numpy as np
import pytest

from shared.ml.flat import HIST_GRADIENT_BOOSTING, RANDOM_FOREST, FlatTrees
from shared.ml.provenance import ATOL, RTOL

N_FEATURES = 7
#: The thresholds a probability is compared with: every candidate of the failure predictor's threshold
#: search (shared/ml/failure.py) and 0.5.
THRESHOLDS = (*np.round(np.arange(0.05, 1.0, 0.025), 3).tolist(), 0.5)


def decided(expected: np.ndarray, t: float) -> np.ndarray:
    """The rows whose reference score is not within the tolerance of ``t``: their side of it is decided
    by the model, not by the last bit of a sum."""
    return np.abs(expected - t) > ATOL + RTOL * np.abs(expected)


def assert_close_and_same_decisions(
    got: Any, expected: Any, thresholds: Any = THRESHOLDS, strict: bool = False
) -> None:
    """``got`` (the flat scorer) equals ``expected`` (scikit-learn) within the tolerance, and every
    threshold splits the rows the same way (``score >= t``, or ``score > t`` with ``strict``), ties
    (``decided``) aside."""
    got, expected = np.asarray(got, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    np.testing.assert_allclose(got, expected, rtol=RTOL, atol=ATOL)
    for t in np.atleast_1d(np.asarray(thresholds, dtype=np.float64)):
        side = (got > t, expected > t) if strict else (got >= t, expected >= t)
        keep = decided(expected, float(t))
        np.testing.assert_array_equal(side[0][keep], side[1][keep], err_msg=f"a decision at threshold {t} differs")


def data(seed: int, rows: int = 1500, nan_share: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Rows with a non-linear label; some values on a coarse grid so thresholds fall between ties."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(rows, N_FEATURES))
    X[:, 2] = np.round(X[:, 2], 1)
    X[:, 3] *= 1e4  # large values: float32 rounding matters for the forest's comparisons
    y = (X[:, 0] + X[:, 1] ** 2 + 0.5 * X[:, 2] * (X[:, 3] > 0) + rng.normal(0.0, 0.5, rows) > 1.0).astype(int)
    if nan_share:
        X[rng.random(X.shape) < nan_share] = np.nan
    return X, y


def queries(seed: int, nan_share: float = 0.0) -> np.ndarray:
    """Fresh rows, training-like rows and values exactly on (and next to) split thresholds."""
    rng = np.random.default_rng(seed)
    X, _ = data(seed + 100, rows=400)
    wide = rng.normal(0.0, 3.0, size=(200, N_FEATURES))
    Q = np.vstack([X, wide])
    if nan_share:
        Q[rng.random(Q.shape) < nan_share] = np.nan
    return Q


def on_thresholds(flat: FlatTrees, rng: np.random.Generator, rows: int = 200) -> np.ndarray:
    """Rows whose values sit on split thresholds or one float step next to them."""
    internal = np.isfinite(flat.threshold) & (flat.left != np.arange(flat.left.shape[1])[None, :])
    feats, thrs = flat.feature[internal], flat.threshold[internal]
    Q = rng.normal(size=(rows, N_FEATURES))
    for i in range(rows):
        for _ in range(3):
            j = int(rng.integers(0, feats.size))
            Q[i, feats[j]] = np.nextafter(thrs[j], [-np.inf, 0.0, np.inf][int(rng.integers(0, 3))])
    return Q


@pytest.fixture(scope="module")
def forest() -> Any:
    from sklearn.ensemble import RandomForestClassifier

    X, y = data(1)
    return RandomForestClassifier(n_estimators=60, random_state=0).fit(X, y)


@pytest.fixture(scope="module")
def forest_nan() -> Any:
    from sklearn.ensemble import RandomForestClassifier

    X, y = data(2, nan_share=0.05)
    return RandomForestClassifier(n_estimators=40, max_depth=12, random_state=0).fit(X, y)


@pytest.fixture(scope="module")
def boosting() -> Any:
    from sklearn.ensemble import HistGradientBoostingClassifier

    X, y = data(3)
    return HistGradientBoostingClassifier(max_iter=120, early_stopping=False, random_state=0).fit(X, y)


@pytest.fixture(scope="module")
def boosting_nan() -> Any:
    from sklearn.ensemble import HistGradientBoostingClassifier

    X, y = data(4, nan_share=0.08)
    return HistGradientBoostingClassifier(max_iter=120, early_stopping=False, random_state=0).fit(X, y)


def assert_equal_to_sklearn(model: Any, flat: FlatTrees, Q: np.ndarray) -> None:
    expected = model.predict_proba(Q)[:, 1]
    got = flat.predict_proba1(Q)
    assert got.shape == expected.shape
    assert_close_and_same_decisions(got, expected)
    # scikit-learn's own decision: class 1 where its probability beats class 0's (a tie at 0.5 aside).
    keep = decided(expected, 0.5)
    np.testing.assert_array_equal(model.predict(Q)[keep], model.classes_[(got > 1.0 - got).astype(int)][keep])
    # One row at a time takes another code path: it must agree with the batch exactly.
    for i in range(0, Q.shape[0], 37):
        assert flat.predict_proba1(Q[i : i + 1])[0] == got[i]
        assert flat.predict_proba1(Q[i])[0] == got[i]


def test_random_forest_equals_predict_proba(forest: Any) -> None:
    flat = FlatTrees.from_random_forest(forest)
    assert flat.kind == RANDOM_FOREST and flat.n_trees == 60
    assert flat.depth == max(e.tree_.max_depth for e in forest.estimators_)
    assert_equal_to_sklearn(forest, flat, queries(5))
    assert_equal_to_sklearn(forest, flat, on_thresholds(flat, np.random.default_rng(6)))


def test_random_forest_float32_comparison_matters(forest: Any) -> None:
    """Values one float64 step above a threshold that round down to it in float32 go left in sklearn."""
    flat = FlatTrees.from_random_forest(forest)
    Q = on_thresholds(flat, np.random.default_rng(7), rows=400)
    assert_equal_to_sklearn(forest, flat, Q)


def test_random_forest_with_missing_values(forest_nan: Any) -> None:
    flat = FlatTrees.from_random_forest(forest_nan)
    assert_equal_to_sklearn(forest_nan, flat, queries(8, nan_share=0.1))


def test_hist_gradient_boosting_equals_predict_proba(boosting: Any) -> None:
    flat = FlatTrees.from_hist_gradient_boosting(boosting)
    assert flat.kind == HIST_GRADIENT_BOOSTING and flat.n_trees == 120
    assert_equal_to_sklearn(boosting, flat, queries(9))
    assert_equal_to_sklearn(boosting, flat, on_thresholds(flat, np.random.default_rng(10)))


def test_hist_gradient_boosting_routes_nan_like_sklearn(boosting: Any, boosting_nan: Any) -> None:
    for model in (boosting, boosting_nan):  # NaN unseen in training, and learned missing directions
        flat = FlatTrees.from_hist_gradient_boosting(model)
        assert_equal_to_sklearn(model, flat, queries(11, nan_share=0.15))
        assert_equal_to_sklearn(model, flat, np.full((3, N_FEATURES), np.nan))


def test_the_walk_without_the_one_row_shortcut(boosting: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import shared.ml.flat as flat_module

    flat = FlatTrees.from_hist_gradient_boosting(boosting)
    Q = queries(12, nan_share=0.05)
    expected = flat.predict_proba1(Q)
    monkeypatch.setattr(flat_module, "ONE_ROW_ALL_NODES", 0)
    assert [flat.predict_proba1(Q[i])[0] for i in range(50)] == expected[:50].tolist()


@pytest.mark.parametrize("kind", ["forest", "boosting_nan"])
def test_arrays_round_trip_through_npz_without_pickles(kind: str, request: pytest.FixtureRequest) -> None:
    model = request.getfixturevalue(kind)
    flat = FlatTrees.from_random_forest(model) if kind == "forest" else FlatTrees.from_hist_gradient_boosting(model)
    buf = io.BytesIO()
    np.savez_compressed(buf, **flat.arrays())  # type: ignore[arg-type]
    with np.load(io.BytesIO(buf.getvalue()), allow_pickle=False) as z:
        assert all(z[k].dtype != object for k in z.files)
        loaded = FlatTrees.from_arrays({k: z[k] for k in z.files})
    assert loaded.kind == flat.kind and loaded.depth == flat.depth and loaded.baseline == flat.baseline
    Q = queries(13, nan_share=0.05)
    assert np.array_equal(loaded.predict_proba1(Q), flat.predict_proba1(Q))


def test_rejects_bad_input(boosting: Any) -> None:
    flat = FlatTrees.from_hist_gradient_boosting(boosting)
    with pytest.raises(ValueError, match="features"):
        flat.predict_proba1(np.zeros((2, N_FEATURES + 1)))
    a = flat.arrays()
    a["left"] = a["left"].copy()
    a["left"][0, 0] = 10**6
    with pytest.raises(ValueError, match="out of range"):
        FlatTrees.from_arrays(a)


def test_rejects_multiclass() -> None:
    from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier

    X, _ = data(14, rows=300)
    y = np.arange(300) % 3
    with pytest.raises(ValueError, match="binary"):
        FlatTrees.from_random_forest(RandomForestClassifier(n_estimators=3).fit(X, y))
    with pytest.raises(ValueError, match="binary"):
        FlatTrees.from_hist_gradient_boosting(HistGradientBoostingClassifier(max_iter=3).fit(X, y))


def test_importing_does_not_import_sklearn() -> None:
    code = "import sys, shared.ml.flat; print('sklearn' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_hand_built_trees_with_a_lone_leaf() -> None:
    """The array format by hand: a stump on feature 1 (NaN goes right) and a tree that is a single leaf."""
    inf = np.inf
    flat = FlatTrees(
        kind=HIST_GRADIENT_BOOSTING,
        feature=np.array([[1, 0, 0], [0, 0, 0]]),
        threshold=np.array([[0.5, inf, inf], [inf, inf, inf]]),
        left=np.array([[1, 1, 2], [0, 1, 2]]),
        right=np.array([[2, 1, 2], [0, 1, 2]]),
        missing_left=np.array([[False, True, True], [True, True, True]]),
        value=np.array([[0.0, -1.0, 2.0], [0.25, 0.0, 0.0]]),
        n_features=2,
        baseline=0.5,
    )
    assert flat.tree_depth.tolist() == [1, 0] and flat.depth == 1
    X = np.array([[9.0, 0.5], [9.0, 0.6], [9.0, np.nan]])
    assert flat.raw(X).tolist() == [0.5 - 1.0 + 0.25, 0.5 + 2.0 + 0.25, 0.5 + 2.0 + 0.25]
    assert [flat.raw(x)[0] for x in X] == flat.raw(X).tolist()
    with pytest.raises(ValueError, match="one side"):
        FlatTrees(
            RANDOM_FOREST,
            flat.feature,
            flat.threshold,
            flat.left,
            np.array([[2, 2, 2], [0, 1, 2]]),
            flat.missing_left,
            flat.value,
            n_features=2,
        )
