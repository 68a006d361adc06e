"""Typed parameters and recorded quantities of a study: what a spec may set and record.

A study (a simulator or an experiment's cell function, :mod:`moebif.sweep.studies`) declares its
parameters as :class:`Param` entries (type, default, domain) and its outputs as
:class:`Quantity` entries (extra dimensions, dtype). The spec parser checks every value of the
spec against them before anything runs, so a bad value is reported with the key at fault.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..params import ParameterError

__all__ = ["REQUIRED", "Param", "Quantity"]


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()
"""Default of a parameter that a spec must give (in ``[params]`` or ``[axes]``)."""


@dataclass(frozen=True)
class Param:
    """One parameter of a study.

    **Arguments:**

    - ``kind``: ``float``, ``int``, ``bool`` or ``str``.
    - ``default``: the value when the spec does not give one; :data:`REQUIRED` if it must.
    - ``doc``: one line for ``docs/sweeps.md`` and error messages.
    - ``gt``, ``ge``, ``lt``, ``le``: bounds of numeric values.
    - ``choices``: allowed values of a ``str`` parameter.
    - ``optional``: ``None`` (left out of the spec) is allowed and means "not used".
    - ``call``: pass the value on, under the same name, as a keyword argument of the simulator
      function (the way to add a balancer option: one ``Param(..., call=True)`` line).
    """

    kind: type
    default: Any = REQUIRED
    doc: str = ""
    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None
    choices: tuple | None = None
    optional: bool = False
    call: bool = False

    def check(self, name: str, value) -> Any:
        """Return ``value`` normalised to ``kind``, or raise :class:`ParameterError` naming
        ``name``."""
        if value is None:
            if self.optional:
                return None
            raise ParameterError(name, "must be given")
        if self.kind is bool:
            if not isinstance(value, bool):
                raise ParameterError(name, f"must be true or false, got {value!r}")
            return value
        if self.kind is str:
            if not isinstance(value, str):
                raise ParameterError(name, f"must be a string, got {value!r}")
            if self.choices is not None and value not in self.choices:
                raise ParameterError(
                    name, f"must be one of {', '.join(map(repr, self.choices))}, got {value!r}"
                )
            return value
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ParameterError(name, f"must be a number, got {value!r}")
        if self.kind is int:
            if isinstance(value, float):
                if not (math.isfinite(value) and value.is_integer()):
                    raise ParameterError(name, f"must be an integer, got {value!r}")
                value = int(value)
            if not -(2**63) <= value < 2**63:  # the kernels count in int64
                raise ParameterError(name, f"must fit in 64 bits (|x| < 2^63), got {value:.4g}")
        else:
            value = float(value)
            if not math.isfinite(value):
                raise ParameterError(name, f"must be finite, got {value}")
        for bound, ok, sym in (
            (self.gt, lambda v, b: v > b, ">"),
            (self.ge, lambda v, b: v >= b, ">="),
            (self.lt, lambda v, b: v < b, "<"),
            (self.le, lambda v, b: v <= b, "<="),
        ):
            if bound is not None and not ok(value, bound):
                raise ParameterError(name, f"must be {sym} {bound:g}, got {value:g}")
        return value

    def describe(self) -> str:
        """The domain in words, e.g. ``float >= 0, default 0``."""
        parts = [self.kind.__name__]
        for bound, sym in ((self.gt, ">"), (self.ge, ">="), (self.lt, "<"), (self.le, "<=")):
            if bound is not None:
                parts.append(f"{sym} {bound:g}")
        if self.choices:
            parts.append("one of " + ", ".join(map(str, self.choices)))
        if self.default is REQUIRED:
            parts.append("required")
        else:
            parts.append(f"default {self.default!r}" if self.default is not None else "optional")
        return ", ".join(parts)


@dataclass(frozen=True)
class Quantity:
    """One recorded output of a study.

    **Arguments:**

    - ``doc``: what it is (stored as the variable's ``description`` attribute).
    - ``dims``: extra dimensions after the axes, a subset of ``("replica", "expert")`` in this
      order: ``("replica",)`` for one value a replica, ``()`` for one value a cell.
    - ``dtype``: ``"float64"`` (NaN where undefined) or ``"bool"``.
    - ``requires``: optional ``requires(values) -> str | None``: why this quantity cannot be
      recorded at these parameter values (checked for every cell before the sweep starts).
    """

    doc: str
    dims: tuple[str, ...] = ("replica",)
    dtype: str = "float64"
    requires: Callable[[dict], str | None] | None = None

    def __post_init__(self) -> None:
        if self.dims not in ((), ("replica",), ("expert",), ("replica", "expert")):
            raise ValueError(f"dims: must be a subset of ('replica', 'expert'), got {self.dims}")
        if self.dtype not in ("float64", "bool"):
            raise ValueError(f"dtype: must be 'float64' or 'bool', got {self.dtype!r}")
