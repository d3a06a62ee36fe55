"""fleet_agent.identity.canonical: its fast path (the C json encoder) writes exactly what RFC 8785 writes.

The reference is the ``rfc8785`` package (and RFC 8785's own number vectors): every value, random or
chosen at the edges of the fast path (floats near 1e-4 and 1e16, around 2**53, -0.0, the smallest and
largest doubles, non-ASCII keys whose UTF-16 order differs, control characters, lone surrogates), gives
the same bytes, or both refuse it with ValueError.
"""

from __future__ import annotations

import math
import random
import struct
from typing import Any

import pytest
import rfc8785
from fleet_agent import identity
from fleet_agent.identity import canonical
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.test_signing_standalone import RFC8785_NUMBERS


def reference(value: Any) -> bytes | type[ValueError]:
    try:
        return bytes(rfc8785.dumps(value))
    except (rfc8785.CanonicalizationError, UnicodeEncodeError):
        return ValueError


def ours(value: Any) -> bytes | type[ValueError]:
    try:
        return canonical(value)
    except ValueError:
        return ValueError


def _double(bits: int) -> float:
    return float(struct.unpack(">d", bits.to_bytes(8, "big"))[0])


EDGE_FLOATS = [
    0.0, -0.0, 1.0, -1.0, 40.0, 0.1, 0.5, 1e-4, 1e-4 * (1 - 2**-52), 1.0001e-4, 9.999e-5, 1e-5, 1e-6, 1e-7,
    2e-6, 1.5e-7, 5e-324, 1.7976931348623157e308, 1e15, 1e15 + 0.5, 9.999999999999998e15, 1e16, 1e16 + 2, 1e17,
    1e21, 1e20, 1e22, 2.0**53, 2.0**53 - 1, -(2.0**53), 2.0**53 + 2, 2.0**60, 123456789.123, 333333333.3333333,
    1424953923781206.2, 0.30000000000000004, 100.0, 1e-10, 4.35, 0.01, 42.0, 48.5,
]  # fmt: skip
EDGE_INTS = [0, 1, -1, 2**53 - 1, -(2**53 - 1), 2**53, -(2**53), 2**63, 10**20, 1765000000000]
EDGE_STRINGS = ["", "plain", '"\\/', "\b\f\n\r\t\x00\x01\x1f\x7f", "\u2028\u2029", "é€😀𝄞", "\ufb33\ue000\uffff"]


@pytest.mark.parametrize("value", EDGE_FLOATS + [-x for x in EDGE_FLOATS] + EDGE_INTS + [-x for x in EDGE_INTS])
def test_edge_numbers_as_rfc8785(value: float) -> None:
    assert ours(value) == reference(value)
    assert ours({"n": value, "l": [value]}) == reference({"n": value, "l": [value]})


@pytest.mark.parametrize("bits", sorted(RFC8785_NUMBERS))
def test_rfc8785_appendix_b_numbers(bits: int) -> None:
    assert canonical(_double(bits)).decode() == RFC8785_NUMBERS[bits]


def test_random_doubles_as_rfc8785() -> None:
    rng = random.Random(18)
    doubles = [_double(rng.getrandbits(64)) for _ in range(5000)]
    doubles += [rng.uniform(-1e6, 1e6) for _ in range(2000)]
    doubles += [round(rng.random(), rng.randint(0, 12)) for _ in range(2000)]
    doubles += [10.0**e for e in range(-12, 25)] + [1.5 * 10.0**e for e in range(-12, 25)]
    doubles += [rng.uniform(0.5e-4, 2e-4) for _ in range(500)] + [rng.uniform(0.5e16, 2e16) for _ in range(500)]
    for x in doubles:
        assert ours(x) == reference(x), repr(x)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, 2**53, -(2**53), "\ud800", {"\udfff": 1}, {1: "a"}])
def test_what_rfc8785_refuses_is_refused(value: Any) -> None:
    assert reference(value) is ValueError
    with pytest.raises(ValueError):
        canonical(value)


def test_keys_in_utf16_order_and_strings_escaped_as_rfc8785() -> None:
    keys = {"\u20ac": 1, "\r": 2, "\ufb33": 3, "1": 4, "\U0001f600": 5, "\x80": 6, "\u00f6": 7, "\ue000": 8,
            "\U00010000": 9, "b": 10, "a": 11, "A": 12, "_": 13}  # fmt: skip
    value = {"keys": keys, "strings": EDGE_STRINGS, "nested": [{"b": [True, False, None], "a": {}}, []]}
    assert ours(value) == reference(value)
    assert ours(EDGE_STRINGS) == reference(EDGE_STRINGS)


def test_the_fast_path_is_taken_for_events_and_left_for_the_rest() -> None:
    event = {"agent_id": "chat-7", "seq": 1765000000000, "metrics": {"cpu_pct": 42.0, "error_rate": 0.01}}
    assert identity._jcs_ready(event) == {"agent_id": "chat-7", "seq": 1765000000000,
                                          "metrics": {"cpu_pct": 42, "error_rate": 0.01}}  # fmt: skip
    for slow in (1e-7, 1e16, 2**53, math.nan, {"é": 1}, (1, 2), {1: 2}):
        with pytest.raises(identity._NotFast):
            identity._jcs_ready([slow])


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**60), max_value=2**60)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.sampled_from(EDGE_FLOATS)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=6)
        | st.dictionaries(
            st.text(max_size=6) | st.sampled_from(["a", "b", "\ue000", "\U00010000"]), children, max_size=6
        )
    ),
    max_leaves=40,
)


@settings(max_examples=600, deadline=None)
@given(json_values)
def test_any_json_value_as_rfc8785(value: Any) -> None:
    assert ours(value) == reference(value)
