"""Parameters of the adaptive softmax router, eqs. (2)-(3) and (8) of Kiselev (2026).

Conventions (fixed for the whole package):

- two experts: ``y = r1 - r2``, ``h = b1 - b2`` with ``b1 = h/2``, ``b2 = -h/2``;
- N experts: the external drift vector is ``b = (h/2, -h/2, 0, ..., 0)``, i.e. ``h`` skews
  expert 1 against expert 2 and leaves the others neutral (pass an explicit ``b`` to the
  N-expert functions for any other skew);
- time of the mean-field ODE is ``t = n * eta`` (n counts router steps).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

__all__ = ["ParameterError", "RouterParams", "check_finite", "check_positive"]


class ParameterError(ValueError):
    """A parameter is out of its domain. ``.name`` holds the offending argument's name."""

    def __init__(self, name: str, message: str):
        super().__init__(f"{name}: {message}")
        self.name = name


def check_finite(name: str, value) -> float:
    """Return ``value`` as a float, or raise :class:`ParameterError` if it is not a finite real."""
    if isinstance(value, bool):
        raise ParameterError(name, f"must be a real number, got {value!r}")
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ParameterError(name, f"must be a real number, got {value!r}") from None
    if not math.isfinite(x):
        raise ParameterError(name, f"must be finite, got {x}")
    return x


def check_positive(name: str, value) -> float:
    """Return ``value`` as a float, or raise :class:`ParameterError` unless it is finite and > 0."""
    x = check_finite(name, value)
    if x <= 0.0:
        raise ParameterError(name, f"must be > 0, got {x:g}")
    return x


@dataclass(frozen=True, slots=True)
class RouterParams:
    """Parameters of the mean-field router ``r_i' = a p_i(r) - gamma r_i + b_i``.

    **Arguments:**

    - ``a``: reinforcement (positive feedback) strength, ``a >= 0``.
    - ``gamma``: forgetting coefficient, ``gamma > 0`` (units of 1/time, time ``t = n eta``).
    - ``T``: softmax temperature, ``T > 0``.
    - ``h``: external skew ``b1 - b2`` (any finite real).
    - ``n_experts``: number of experts ``N >= 2``.

    Raises :class:`ParameterError` (a ``ValueError``) naming the field on invalid input.
    """

    a: float
    gamma: float
    T: float
    h: float = 0.0
    n_experts: int = 2

    def __post_init__(self) -> None:
        a = check_finite("a", self.a)
        if a < 0.0:
            raise ParameterError("a", f"must be >= 0, got {a:g}")
        gamma = check_positive("gamma", self.gamma)
        T = check_positive("T", self.T)
        h = check_finite("h", self.h)
        n = self.n_experts
        if isinstance(n, bool) or not isinstance(n, int | np.integer):
            raise ParameterError("n_experts", f"must be an integer, got {n!r}")
        if n < 2:
            raise ParameterError("n_experts", f"must be >= 2, got {n}")
        # normalise numpy scalars and ints to plain floats so results serialise cleanly
        object.__setattr__(self, "a", a)
        object.__setattr__(self, "gamma", gamma)
        object.__setattr__(self, "T", T)
        object.__setattr__(self, "h", h)
        object.__setattr__(self, "n_experts", int(n))

    @property
    def critical_a(self) -> float:
        """Linear threshold ``N gamma T`` of the uniform state, eq. (10)."""
        return self.n_experts * self.gamma * self.T

    @property
    def kappa(self) -> float:
        """Stability ratio ``a / (N gamma T)``: the uniform state is linearly stable iff < 1."""
        return self.a / self.critical_a

    @property
    def b(self) -> np.ndarray:
        """External drift vector ``b``, shape ``(N,)``: ``(h/2, -h/2, 0, ..., 0)``."""
        b = np.zeros(self.n_experts)
        b[0], b[1] = 0.5 * self.h, -0.5 * self.h
        return b

    def replace(self, **changes) -> RouterParams:
        """A copy with some fields changed (validated again)."""
        return RouterParams(**{**asdict(self), **changes})

    def to_dict(self) -> dict:
        return asdict(self)
