"""First crossing of a level along a sampled curve, by linear interpolation between samples.

Used wherever a switching point is read off a scan: the hysteresis thresholds of a skew sweep
(sec. 8.5), the collapse and recovery points of a feedback ramp, the switching fields of the
trainable MoE scans (sec. 8.1).
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["first_crossing"]


def first_crossing(x, y, level: float = 0.0, *, direction: str = "any") -> float:
    """The first ``x`` at which ``y`` crosses ``level``, linearly interpolated; NaN if never.

    **Arguments:**

    - ``x``, ``y``: the samples, shape ``(K,)``, in scan order.
    - ``level``: the level crossed.
    - ``direction``: ``"up"`` (the first sample above ``level`` after one that is not),
      ``"down"`` (below after not below), or ``"any"`` (the first sign change of
      ``y - level``; a sample exactly at ``level`` is its own crossing).
    """
    x = np.asarray(x, dtype=float)
    v = np.asarray(y, dtype=float) - level
    if direction == "any":
        for i in range(1, v.size):
            if v[i - 1] == 0.0:
                return float(x[i - 1])
            if v[i - 1] * v[i] < 0:
                return float(x[i - 1] + (x[i] - x[i - 1]) * v[i - 1] / (v[i - 1] - v[i]))
        return math.nan
    if direction not in ("up", "down"):
        raise ValueError(f"direction: must be 'up', 'down' or 'any', got {direction!r}")
    s = v > 0.0 if direction == "up" else v < 0.0
    idx = np.flatnonzero(s[1:] & ~s[:-1]) + 1
    if idx.size == 0:
        return math.nan
    k = int(idx[0])
    return float(x[k - 1] + (x[k] - x[k - 1]) * v[k - 1] / (v[k - 1] - v[k]))
