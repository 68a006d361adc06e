"""The routing metrics that MoE training stacks already log, computed from expert counts.

All functions are vectorised over leading axes: ``counts`` has shape ``(..., N)`` (one row per
step). Loads are ``l_i = count_i / sum_j count_j`` (top-k: ``count_i / (k B)``).
"""

from __future__ import annotations

import numpy as np

__all__ = ["load_fractions", "load_metrics", "max_load_excess"]


def max_load_excess(max_load, n_experts: int, top_k: int = 1):
    """``(l_max - 1/N) / (1/k - 1/N)``: 0 when balanced, 1 when k experts take all the load."""
    return (max_load - 1.0 / n_experts) / (1.0 / top_k - 1.0 / n_experts)


def load_fractions(counts) -> np.ndarray:
    """``counts / counts.sum(-1)`` (rows that sum to 0 give uniform loads)."""
    c = np.asarray(counts, dtype=float)
    s = c.sum(axis=-1, keepdims=True)
    n = c.shape[-1]
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(s > 0, c / np.where(s > 0, s, 1.0), 1.0 / n)
    return out


def load_metrics(counts, *, capacity=None, loads: bool = False) -> dict[str, np.ndarray]:
    """Per-row metrics of expert counts (or loads when ``loads=True``), shape ``(...,)`` each.

    - ``cv``: coefficient of variation of the loads (std / mean, ``ddof = 0``);
    - ``max_vio``: ``(max load - mean) / mean`` (MaxVio);
    - ``entropy``: normalised entropy ``H / log N`` in [0, 1]; ``n_eff = exp(H)`` (H in nats);
    - ``dead``: fraction of experts with zero count;
    - ``top2``: share of the two largest loads;
    - ``max_load``: largest load;
    - ``dropped``: with ``capacity`` (tokens per expert per step, scalar or shape ``(N,)``): the
      fraction of routed tokens beyond capacity, ``sum max(count - C, 0) / sum count``.
    """
    c = np.asarray(counts, dtype=float)
    n = c.shape[-1]
    lf = c if loads else load_fractions(c)
    mean = 1.0 / n
    with np.errstate(divide="ignore", invalid="ignore"):
        plogp = np.where(lf > 0, lf * np.log(np.where(lf > 0, lf, 1.0)), 0.0)
    H = -plogp.sum(axis=-1)
    part = np.partition(lf, n - 2, axis=-1)[..., n - 2 :] if n >= 2 else lf
    out = {
        "cv": lf.std(axis=-1) / mean,
        "max_vio": (lf.max(axis=-1) - mean) / mean,
        "entropy": H / np.log(n),
        "n_eff": np.exp(H),
        "dead": (c <= 0).mean(axis=-1),
        "top2": part.sum(axis=-1),
        "max_load": lf.max(axis=-1),
    }
    if capacity is not None:
        if loads:
            raise ValueError("capacity: needs counts, not loads")
        cap = np.asarray(capacity, dtype=float)
        tot = c.sum(axis=-1)
        with np.errstate(divide="ignore", invalid="ignore"):
            out["dropped"] = np.where(tot > 0, np.maximum(c - cap, 0.0).sum(axis=-1) / tot, 0.0)
    return out
