"""Fitted scikit-learn tree ensembles for binary classification as flat numpy arrays.

``FlatTrees`` holds the trees of a ``RandomForestClassifier`` or a ``HistGradientBoostingClassifier``
padded to one ``(n_trees, max_nodes)`` array per node attribute, so serving scores rows with numpy alone
(no scikit-learn import, no pickles: ``arrays``/``from_arrays`` go through ``np.savez`` and
``np.load(..., allow_pickle=False)``), and one row costs well under a millisecond instead of sklearn's
milliseconds of per-call overhead.

All rows walk all trees at once, one vectorised step per level, for ``depth`` steps (the deepest tree's
depth). A leaf (and a padding slot) points to itself on both sides, so a row that reached its leaf early
stays there; the trees are walked deepest first so each step only touches the trees still deeper than it.
A single row takes a shortcut when the ensemble is small: every node's next node is decided at once, then
the walk is one gather per level.

The result is sklearn's: a forest's trees compare ``float32(x) <= threshold`` (sklearn casts X to float32,
the thresholds are float64), gradient boosting compares the float64 value, a NaN follows the node's
``missing_go_to_left``, and leaf values are summed sequentially in tree order (starting from the boosting
baseline) as sklearn accumulates them; one row and a batch agree exactly. Against sklearn the promise is
``provenance.RTOL`` with the same decisions, not bit equality (docs/ml.md, "Equal to scikit-learn"):
another release may sum in another order or round ``exp`` differently (sklearn 1.9's ``expit`` does).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Literal

import numpy as np

Kind = Literal["random_forest", "hist_gradient_boosting"]
#: Mean of the trees' leaf probabilities of class 1.
RANDOM_FOREST: Kind = "random_forest"
#: Sigmoid of the baseline plus the sum of the trees' leaf values.
HIST_GRADIENT_BOOSTING: Kind = "hist_gradient_boosting"
_KINDS: tuple[Kind, ...] = (RANDOM_FOREST, HIST_GRADIENT_BOOSTING)
#: Up to this many nodes in all trees (padding included), one row is scored by deciding every node's
#: next node at once (a few array operations over all nodes) and then following the pointers; above it,
#: by the per-step walk. Either way the result is the same.
ONE_ROW_ALL_NODES = 65_536


def _tree_depths(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """The depth of every tree of padded child arrays (a slot pointing to itself is a leaf), level by
    level from the roots; raises on a cycle."""
    n_trees, width = left.shape
    internal = left != np.arange(width)[None, :]
    depth = np.zeros(n_trees, dtype=np.int64)
    level = np.zeros((n_trees, width), dtype=bool)
    level[:, 0] = True
    for _ in range(width):
        t, node = np.nonzero(level & internal)
        if t.size == 0:
            return depth
        depth[np.unique(t)] += 1
        level = np.zeros_like(level)
        level[t, left[t, node]] = True
        level[t, right[t, node]] = True
    raise ValueError("the trees contain a cycle")


def _padded(rows: list[np.ndarray], width: int, fill: Any, dtype: Any) -> np.ndarray:
    out = np.full((len(rows), width), fill, dtype=dtype)
    for i, r in enumerate(rows):
        out[i, : r.shape[0]] = r
    return out


class FlatTrees:
    """The trees of a fitted binary tree-ensemble classifier as padded ``(n_trees, max_nodes)`` arrays.

    ``feature``, ``threshold``, ``left``, ``right`` (child slots within the tree, the root in slot 0; a
    leaf and a padding slot point to themselves on both sides), ``missing_left`` (where a NaN goes) and
    ``value`` (a leaf's probability of class 1 for a forest, its raw value for gradient boosting); plus
    ``kind``, ``n_features`` and the boosting ``baseline``. ``tree_depth`` is derived (and checks that the
    trees are trees). Build with ``from_random_forest`` / ``from_hist_gradient_boosting`` /
    ``from_arrays``.
    """

    def __init__(
        self,
        kind: Kind,
        feature: np.ndarray,
        threshold: np.ndarray,
        left: np.ndarray,
        right: np.ndarray,
        missing_left: np.ndarray,
        value: np.ndarray,
        n_features: int,
        baseline: float = 0.0,
    ) -> None:
        if kind not in _KINDS:
            raise ValueError(f"unknown kind {kind!r}")
        shape = feature.shape
        if len(shape) != 2 or any(a.shape != shape for a in (threshold, left, right, missing_left, value)):
            raise ValueError("the node arrays must all have the shape (n_trees, max_nodes)")
        self.kind: Kind = kind
        self.feature = np.ascontiguousarray(feature, dtype=np.int64)
        self.threshold = np.ascontiguousarray(threshold, dtype=np.float64)
        self.left = np.ascontiguousarray(left, dtype=np.int64)
        self.right = np.ascontiguousarray(right, dtype=np.int64)
        self.missing_left = np.ascontiguousarray(missing_left, dtype=bool)
        self.value = np.ascontiguousarray(value, dtype=np.float64)
        self.n_features = int(n_features)
        self.baseline = float(baseline)
        n_trees, width = shape
        if n_trees == 0:
            raise ValueError("no trees")
        if self.feature.min() < 0 or self.feature.max() >= self.n_features:
            raise ValueError("a node's feature index is out of range")
        for child in (self.left, self.right):
            if child.min() < 0 or child.max() >= width:
                raise ValueError("a node's child index is out of range")
        slots = np.arange(width)[None, :]
        if np.any((self.left == slots) != (self.right == slots)):
            raise ValueError("a node points to itself on one side only")
        self.tree_depth = _tree_depths(self.left, self.right)
        # The walk works on the trees sorted deepest first, so step s only moves the trees deeper than s
        # (a prefix); leaf values are put back in tree order before they are summed.
        self._order = np.argsort(-self.tree_depth, kind="stable")
        self._unsort = np.argsort(self._order, kind="stable")
        sorted_depth = self.tree_depth[self._order]
        self._active = [int(np.count_nonzero(sorted_depth > s)) for s in range(self.depth)]
        offset = (np.arange(n_trees, dtype=np.int64) * width)[:, None]  # node id = tree * width + slot
        self._roots = offset[:, 0].copy()
        self._feature = self.feature[self._order].ravel()
        self._threshold = self.threshold[self._order].ravel()
        self._left = (self.left[self._order] + offset).ravel()
        self._right = (self.right[self._order] + offset).ravel()
        self._missing_left = self.missing_left[self._order].ravel()
        # sklearn starts from the baseline and adds the trees in order: folding the baseline into the
        # first tree's leaves makes the sequential sum the same floating-point operations.
        value = self.value.copy()
        value[0] += self.baseline
        self._value = value[self._order].ravel()
        # The walk's layout: node n has the id 2n, its attributes are repeated at 2n and 2n + 1, and the ids
        # of its children are at 2n (left) and 2n + 1 (right), so one step is ``next = child[id + go_right]``:
        # one gather instead of two and a select (about three times faster over many rows).
        self._roots2 = 2 * self._roots
        self._feature2 = np.repeat(self._feature, 2)
        self._threshold2 = np.repeat(self._threshold, 2)
        self._missing_right2 = np.repeat(~self._missing_left, 2)
        self._value2 = np.repeat(self._value, 2)
        self._child2 = np.empty(2 * self._left.size, dtype=np.int64)
        self._child2[0::2] = 2 * self._left
        self._child2[1::2] = 2 * self._right

    @property
    def n_trees(self) -> int:
        return int(self.feature.shape[0])

    @property
    def depth(self) -> int:
        """Steps of the walk: the depth of the deepest tree."""
        return int(self.tree_depth.max())

    # ------------------------------------------------------------------------------------ builders
    @classmethod
    def from_random_forest(cls, rf: Any) -> FlatTrees:
        """Flatten a fitted binary ``sklearn.ensemble.RandomForestClassifier`` (probability of
        ``rf.classes_[1]``)."""
        if getattr(rf, "n_outputs_", 1) != 1 or len(rf.classes_) != 2:
            raise ValueError("only a single-output binary RandomForestClassifier can be flattened")
        feats, thrs, lefts, rights, missing, values = [], [], [], [], [], []
        for est in rf.estimators_:
            t = est.tree_
            count = int(t.node_count)
            leaf = t.children_left < 0
            own = np.arange(count, dtype=np.int64)
            v = np.asarray(t.value, dtype=np.float64)[:, 0, :]
            if v.shape[1] != 2:
                raise ValueError("a tree of the forest does not have two classes")
            total = v.sum(axis=1)
            total[total == 0.0] = 1.0  # as sklearn's DecisionTreeClassifier.predict_proba
            feats.append(np.where(leaf, 0, t.feature.astype(np.int64)))
            thrs.append(np.where(leaf, np.inf, t.threshold.astype(np.float64)))
            lefts.append(np.where(leaf, own, t.children_left.astype(np.int64)))
            rights.append(np.where(leaf, own, t.children_right.astype(np.int64)))
            missing.append(np.asarray(t.missing_go_to_left, dtype=bool) | leaf)
            values.append(np.where(leaf, v[:, 1] / total, 0.0))
        return cls._from_lists(RANDOM_FOREST, feats, thrs, lefts, rights, missing, values, rf.n_features_in_)

    @classmethod
    def from_hist_gradient_boosting(cls, model: Any) -> FlatTrees:
        """Flatten a fitted binary ``sklearn.ensemble.HistGradientBoostingClassifier`` without
        categorical features (probability of ``model.classes_[1]``)."""
        if len(model.classes_) != 2 or model.n_trees_per_iteration_ != 1:
            raise ValueError("only a binary HistGradientBoostingClassifier can be flattened")
        feats, thrs, lefts, rights, missing, values = [], [], [], [], [], []
        for (predictor,) in model._predictors:
            nodes = predictor.nodes
            if np.any(nodes["is_categorical"]):
                raise ValueError("categorical splits are not supported")
            leaf = nodes["is_leaf"].astype(bool)
            own = np.arange(nodes.shape[0], dtype=np.int64)
            feats.append(np.where(leaf, 0, nodes["feature_idx"].astype(np.int64)))
            thrs.append(np.where(leaf, np.inf, nodes["num_threshold"].astype(np.float64)))
            lefts.append(np.where(leaf, own, nodes["left"].astype(np.int64)))
            rights.append(np.where(leaf, own, nodes["right"].astype(np.int64)))
            missing.append(nodes["missing_go_to_left"].astype(bool) | leaf)
            values.append(np.where(leaf, nodes["value"].astype(np.float64), 0.0))
        baseline = float(np.asarray(model._baseline_prediction, dtype=np.float64).ravel()[0])
        return cls._from_lists(
            HIST_GRADIENT_BOOSTING, feats, thrs, lefts, rights, missing, values, model.n_features_in_, baseline
        )

    @classmethod
    def _from_lists(
        cls,
        kind: Kind,
        feats: list[np.ndarray],
        thrs: list[np.ndarray],
        lefts: list[np.ndarray],
        rights: list[np.ndarray],
        missing: list[np.ndarray],
        values: list[np.ndarray],
        n_features: int,
        baseline: float = 0.0,
    ) -> FlatTrees:
        width = max(f.shape[0] for f in feats)
        slots = np.arange(width, dtype=np.int64)
        # Padding slots are leaves pointing to themselves (never reached from a root).
        self_left = np.vstack([np.concatenate([lf, slots[lf.shape[0] :]]) for lf in lefts])
        self_right = np.vstack([np.concatenate([rt, slots[rt.shape[0] :]]) for rt in rights])
        return cls(
            kind=kind,
            feature=_padded(feats, width, 0, np.int64),
            threshold=_padded(thrs, width, np.inf, np.float64),
            left=self_left,
            right=self_right,
            missing_left=_padded(missing, width, True, bool),
            value=_padded(values, width, 0.0, np.float64),
            n_features=int(n_features),
            baseline=baseline,
        )

    # ------------------------------------------------------------------------------------- scoring
    def _prepare(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=np.float64)
        if X.ndim == 1:
            X = X.reshape(1, -1)
        if X.ndim != 2 or X.shape[1] != self.n_features:
            raise ValueError(f"expected rows of {self.n_features} features, got shape {X.shape}")
        if self.kind == RANDOM_FOREST:  # sklearn's trees see float32 values
            X = X.astype(np.float32).astype(np.float64)
        return X

    def _walk(self, nodes: np.ndarray, x_at: Callable[[np.ndarray], np.ndarray], nan: bool) -> np.ndarray:
        """Walk ``nodes`` (walk ids, trees on the first axis) to their leaves; ``x_at(f)`` gives the value
        of feature ``f`` (an array shaped like the nodes) of each node's row. Returns the leaf values in
        tree order."""
        feature, threshold, child = self._feature2, self._threshold2, self._child2
        for k in self._active:
            at = nodes[:k]
            x = x_at(feature.take(at))
            go_right = x > threshold.take(at)
            if nan:  # NaN > t is false: a NaN goes right only where missing values go right
                go_right |= np.isnan(x) & self._missing_right2.take(at)
            nodes[:k] = child.take(at + go_right)
        return self._value2.take(nodes)[self._unsort]

    def _leaf_values(self, X: np.ndarray) -> np.ndarray:
        """The leaf value of every tree (in tree order) for every row, ``(n_trees, n_rows)``."""
        n = X.shape[0]
        flat_x = np.ascontiguousarray(X).ravel()
        row_offset = (np.arange(n, dtype=np.int64) * self.n_features)[None, :]
        nodes = np.repeat(self._roots2[:, None], n, axis=1)
        return self._walk(nodes, lambda f: flat_x.take(f + row_offset), bool(np.isnan(flat_x).any()))

    def _leaf_values_one(self, x: np.ndarray) -> np.ndarray:
        """``_leaf_values`` of one row, on 1-D arrays. With few nodes in all (``ONE_ROW_ALL_NODES``) every
        node's next node is decided at once and the walk is one gather per level; otherwise it is the
        batch walk on 1-D arrays."""
        nan = bool(np.isnan(x).any())
        if self._feature.size <= ONE_ROW_ALL_NODES:
            v = x.take(self._feature)
            go_left = v <= self._threshold
            if nan:
                go_left |= np.isnan(v) & self._missing_left
            step = np.where(go_left, self._left, self._right)
            nodes = self._roots
            for _ in range(len(self._active)):
                nodes = step.take(nodes)
            return self._value.take(nodes)[self._unsort]
        return self._walk(self._roots2.copy(), lambda f: x.take(f), nan)

    def raw(self, X: np.ndarray, chunk: int = 1024) -> np.ndarray:
        """The ensemble's raw output per row: the mean leaf probability (forest) or the baseline plus
        the sum of leaf values (boosting, before the sigmoid). A 1-D ``X`` is one row."""
        X = self._prepare(X)
        if X.shape[0] == 1:
            total = np.cumsum(self._leaf_values_one(X[0]))[-1:]
        else:
            total = np.empty(X.shape[0])
            for lo in range(0, X.shape[0], chunk):
                total[lo : lo + chunk] = np.cumsum(self._leaf_values(X[lo : lo + chunk]), axis=0)[-1]
        # The boosting baseline is already in the first tree's leaf values (see ``__init__``).
        return total / self.n_trees if self.kind == RANDOM_FOREST else total

    def predict_proba1(self, X: np.ndarray, chunk: int = 1024) -> np.ndarray:
        """The probability of class 1 per row (``predict_proba(X)[:, 1]`` of the original model)."""
        r = self.raw(X, chunk)
        if self.kind == RANDOM_FOREST:
            return r
        with np.errstate(over="ignore"):
            return 1.0 / (1.0 + np.exp(-r))

    # --------------------------------------------------------------------------------- persistence
    def arrays(self) -> dict[str, np.ndarray]:
        """The arrays to persist (no object arrays, so ``np.load(..., allow_pickle=False)`` reads them)."""
        return {
            "kind": np.asarray(_KINDS.index(self.kind), dtype=np.int64),
            "feature": self.feature.astype(np.int32),
            "threshold": self.threshold,
            "left": self.left.astype(np.int32),
            "right": self.right.astype(np.int32),
            "missing_left": self.missing_left,
            "value": self.value,
            "n_features": np.asarray(self.n_features, dtype=np.int64),
            "baseline": np.asarray(self.baseline, dtype=np.float64),
        }

    @classmethod
    def from_arrays(cls, a: Mapping[str, np.ndarray]) -> FlatTrees:
        """The inverse of ``arrays``."""
        return cls(
            kind=_KINDS[int(a["kind"])],
            feature=a["feature"],
            threshold=a["threshold"],
            left=a["left"],
            right=a["right"],
            missing_left=a["missing_left"],
            value=a["value"],
            n_features=int(a["n_features"]),
            baseline=float(a["baseline"]),
        )


__all__ = ["HIST_GRADIENT_BOOSTING", "RANDOM_FOREST", "FlatTrees"]
