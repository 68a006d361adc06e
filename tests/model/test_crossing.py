"""First crossing of a level by linear interpolation: exact on piecewise-linear data."""

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from moebif.model.crossing import first_crossing


def test_examples_and_no_crossing():
    assert first_crossing([0.0, 1.0, 2.0], [-1.0, -1.0, 1.0]) == 1.5
    assert math.isnan(first_crossing([0.0, 1.0], [1.0, 2.0]))
    # a sample exactly at the level is its own crossing ("any")
    assert first_crossing([0.0, 1.0, 2.0], [1.0, 0.0, -1.0]) == 1.0
    # directions: the downward crossing comes first, the upward one later
    x, y = [0.0, 1.0, 2.0, 3.0], [1.0, -1.0, -1.0, 3.0]
    assert first_crossing(x, y) == 0.5
    assert first_crossing(x, y, direction="down") == 0.5
    assert first_crossing(x, y, direction="up") == 2.25
    assert first_crossing(x, y, 2.0, direction="up") == 2.75


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.floats(-10, 10), min_size=2, max_size=30),
    st.floats(-5, 5),
    st.sampled_from(["any", "up", "down"]),
)
def test_the_crossing_lies_on_the_curve_at_the_level(ys, level, direction):
    """The returned x is on the first segment that crosses in that direction, and the linear
    interpolant there equals the level (to rounding)."""
    y = np.array(ys)
    x = np.arange(y.size, dtype=float)
    got = first_crossing(x, y, level, direction=direction)
    v = y - level
    if direction == "any":
        hits = [i for i in range(1, y.size) if v[i - 1] == 0 or v[i - 1] * v[i] < 0]
    else:
        above = v > 0 if direction == "up" else v < 0
        hits = [i for i in range(1, y.size) if above[i] and not above[i - 1]]
    if not hits:
        assert math.isnan(got)
        return
    i = hits[0]
    assert x[i - 1] <= got <= x[i]
    if not (direction == "any" and v[i - 1] == 0):
        yi = y[i - 1] + (y[i] - y[i - 1]) * (got - x[i - 1])
        assert abs(yi - level) <= 1e-9 * (1 + abs(level) + np.abs(y).max())
