"""The live features of one agent in Python floats (shared/ml/features_live.py) against the batch kernel
(``features.step``): bit for bit, features and state, on whole fleets of both simulators (rebases included), and on
the rows Python cannot compute as numpy does (a zero denominator from a negative extra metric, a corrupt variance, a
NaN in the window), which go to the batch kernel and give what it gives."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from shared.ml import features as fe
from shared.ml import features_live as fl
from shared.ml.data import AgentStream
from shared.ml.simulate import simulate
from shared.ml.simulate_mixed import simulate_mixed

STATE = ("mean", "var", "ref", "ring", "prev", "stuck", "frozen", "held", "level", "age", "interval")


def same_state(a: fe.Baseline, b: fe.Baseline) -> bool:
    return a.n == b.n and all(np.array_equal(getattr(a, k), getattr(b, k), equal_nan=True) for k in STATE)


def replay(st: AgentStream) -> tuple[np.ndarray, fe.Baseline]:
    """The stream heartbeat by heartbeat through the live path, rebased at its versions as live.step does."""
    state, rows, versions = fe.Baseline.new(st.interval_s), [], set(st.versions)
    for i in range(len(st)):
        if i in versions:
            state.rebase()
        dt = st.interval_s if i == 0 else float(st.t[i] - st.t[i - 1])
        rows.append(fl.features(st.X[i], dt, state))
    return np.asarray(rows), state


def test_live_equals_batch_bit_for_bit_on_both_simulators() -> None:
    streams = list(simulate(agents=3, rows=1500, train_rows=500, seed=4).streams.values())
    mixed = simulate_mixed(301, agents=12)
    streams += list(mixed.streams.values())
    assert any(s.versions for s in streams)  # a rebase is replayed too
    for st, (F, valid) in zip(streams, fe.batch_features_many(streams), strict=True):
        live, _ = replay(st)
        assert np.array_equal(live, F), st.agent_id
        assert valid.sum() > len(st) // 2


def numpy_step(state: fe.Baseline, x: np.ndarray, dt: float) -> np.ndarray:
    f = fe.step(state, 1, np.asarray(x, dtype=np.float64).reshape(1, -1), np.asarray([dt]))[0]
    state.n += 1
    return f


def warmed(rows: int = 300, tokens: float = 0.0) -> tuple[fe.Baseline, np.ndarray]:
    rng = np.random.default_rng(5)
    X = np.asarray((400.0, 0.01, 40.0, 50.0, tokens, 0.2)) * (1.0 + 0.05 * rng.normal(size=(rows, 6)))
    state = fe.Baseline.new(30.0)
    for x in X:
        fl.features(x, 30.0, state)
    return state, X


def corrupt_variance(state: fe.Baseline, x: np.ndarray) -> np.ndarray:
    state.var[0, 2] = -1e9  # the square root of a negative number
    return x


def nan_in_window(state: fe.Baseline, x: np.ndarray) -> np.ndarray:
    state.ring[0, (state.n + 1) % fe.WINDOW, 0] = np.nan  # numpy sorts it last
    return x


def negative_tokens(state: fe.Baseline, x: np.ndarray) -> np.ndarray:
    y = x.copy()
    y[4] = -fe.LOG_EPS[4]  # tokens/s + eps == 0 (the agent reports no tokens: its reference is 0)
    return y


def python_cannot(state: fe.Baseline, x: np.ndarray) -> bool:
    """Whether the Python kernel hands this row over (raises, or declines before it touches the state)."""
    try:
        return fl._step(state.to_doc(), [float(v) for v in x], 30.0) is None
    except (ZeroDivisionError, ValueError):
        return True


@pytest.mark.parametrize("spoil", [corrupt_variance, nan_in_window, negative_tokens])
def test_rows_python_cannot_compute_go_to_the_batch_kernel(spoil) -> None:  # type: ignore[no-untyped-def]
    state, X = warmed()
    x = spoil(state, X[-1])
    other, other_before = copy.deepcopy(state), copy.deepcopy(state)
    with np.errstate(all="ignore"):
        expected = numpy_step(other, x, 30.0)
        got = fl.features(x, 30.0, state)
    assert python_cannot(other_before, x)
    assert np.array_equal(got, expected, equal_nan=True)
    assert same_state(state, other)


def test_a_row_python_can_compute_changes_the_state_as_the_batch_kernel_does() -> None:
    state, X = warmed()
    other = copy.deepcopy(state)
    for x in X[:50] * 1.7:  # a level shift: held metrics, the freeze counters, the gate
        assert np.array_equal(fl.features(x, 30.0, state), numpy_step(other, x, 30.0))
        assert same_state(state, other)


def test_the_document_path_equals_batch_through_json_and_leaves_the_lists_it_was_given() -> None:
    st = next(s for s in simulate_mixed(302, agents=12).streams.values() if s.versions)
    F, _ = fe.batch_features(st)
    doc = fe.Baseline.new(st.interval_s).to_doc()
    for i in range(len(st)):
        doc = json.loads(json.dumps(doc))  # as the agent document stores it
        if i in st.versions:
            doc["age"] = 0.0  # Baseline.rebase, as live.step does it
        given = {k: v for k, v in doc.items() if isinstance(v, list)}
        before = copy.deepcopy(given)
        dt = st.interval_s if i == 0 else float(st.t[i] - st.t[i - 1])
        assert np.array_equal(fl.step(doc, st.X[i], dt), F[i]), i
        assert given == before
    assert doc["n"] == len(st)


@pytest.mark.parametrize("key", ["mean", "var", "ref", "level", "frozen", "age", "interval", "stuck"])
@pytest.mark.parametrize("column", [2, 4])  # CPU, tokens (NaN on one side of np.maximum / np.minimum only)
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_a_nan_or_an_infinity_in_the_state_gives_what_the_batch_kernel_gives(
    key: str, column: int, value: float
) -> None:
    state, X = warmed(tokens=200.0)
    values = getattr(state, key)
    values[(0, column) if values.ndim == 2 else 0] = value
    other = copy.deepcopy(state)
    with np.errstate(all="ignore"):
        for x in X[:3]:
            assert np.array_equal(fl.features(x, 30.0, state), numpy_step(other, x, 30.0), equal_nan=True)
            assert same_state(state, other)


@pytest.mark.parametrize("young", [False, True])
def test_held_released_and_young_states_change_as_the_batch_kernels_do(young: bool) -> None:
    state, X = warmed()
    if young:
        state.rebase()  # the baseline learns every row again (age < SETTLE)
    state.frozen[0, :3] = fe.MAX_FREEZE  # three metrics at the end of their hold: released by a shifted row
    state.held[0, :3] = True
    other, most = copy.deepcopy(state), np.zeros(6)
    for x in np.concatenate([X[:20] * 1.7, X[20:40]]):
        assert np.array_equal(fl.features(x, 30.0, state), numpy_step(other, x, 30.0))
        assert same_state(state, other)
        most = np.maximum(most, state.frozen[0])
    if not young:  # latency and CPU were released, memory and cost held for a while (tokens are 0 throughout)
        assert (most[[0, 2]] > fe.MAX_FREEZE).all() and (most[[3, 5]] > 0).all()


def test_a_none_in_the_document_is_read_as_numpy_reads_it() -> None:
    state, X = warmed()
    doc, other = state.to_doc(), copy.deepcopy(state)
    doc["ring"][7] = None  # numpy: NaN
    other.ring[0, 1, 1] = np.nan
    with np.errstate(all="ignore"):
        assert np.array_equal(fl.step(doc, X[0], 30.0), numpy_step(other, X[0], 30.0), equal_nan=True)
    assert same_state(fe.Baseline.from_doc(doc), other)


def test_a_row_of_another_length_is_refused_before_the_state_changes() -> None:
    state, X = warmed()
    doc = state.to_doc()
    before = copy.deepcopy(doc)
    with pytest.raises(ValueError, match="6 values, not 7"):
        fl.step(doc, [*X[0], 1.0], 30.0)
    assert doc == before
