import math

import numpy as np
import pytest

from moebif import RouterParams, critical_feedback
from moebif.params import ParameterError


@pytest.mark.parametrize(
    "kwargs,field",
    [
        ({"a": -1.0}, "a"),
        ({"gamma": 0.0}, "gamma"),
        ({"gamma": -2.0}, "gamma"),
        ({"T": 0.0}, "T"),
        ({"T": math.nan}, "T"),
        ({"a": math.inf}, "a"),
        ({"h": math.nan}, "h"),
        ({"n_experts": 1}, "n_experts"),
        ({"n_experts": 2.5}, "n_experts"),
        ({"a": "three"}, "a"),
        ({"T": True}, "T"),
    ],
)
def test_invalid_fields_are_named(kwargs, field):
    base = {"a": 3.0, "gamma": 1.0, "T": 1.0}
    with pytest.raises(ParameterError) as err:
        RouterParams(**{**base, **kwargs})
    assert err.value.name == field
    assert str(err.value).startswith(f"{field}: ")


def test_frozen_normalised_and_derived():
    p = RouterParams(a=np.float32(3), gamma=1, T=np.float64(0.5), h=0, n_experts=np.int64(4))
    assert type(p.a) is float and type(p.n_experts) is int
    with pytest.raises(AttributeError):
        p.a = 1.0
    assert p.critical_a == 2.0 == critical_feedback(1.0, 0.5, 4)
    assert p.kappa == 1.5
    np.testing.assert_array_equal(
        RouterParams(a=1, gamma=1, T=1, h=0.4, n_experts=3).b, [0.2, -0.2, 0.0]
    )
    assert p.replace(h=0.2).h == 0.2
    with pytest.raises(ParameterError):
        p.replace(T=-1)


def test_critical_feedback_validates():
    with pytest.raises(ValueError, match="gamma"):
        critical_feedback(0.0, 1.0)
