"""Closed-loop balancing law: a gain-scheduled proportional-integral selection bias.

One router of ``N`` experts selects with scores ``z + b`` (the bias ``b`` enters the selection
only, as DeepSeek-V3's correction bias does). After every optimizer step the law reads the step's
loads ``f`` (fraction of routed token-slots per expert, summing to 1) and updates

    e     = N f - 1                              (relative load error, sums to 0)
    e_ema <- (1 - beta) e_ema + beta e           (a short EMA: batch noise out of the P term)
    I     <- clip(I - g k_i e, +-bias_max)       (integral: no steady load error)
    b     = I - g k_p e_ema                      (centred: softmax and top-k ignore a shift)

with the gain ``g >= 1`` scheduled on the layer's open-loop margin ``m`` (logit step per
optimizer step per unit load, positive when the router's own balancer wins; from the forces of
:mod:`moebif.monitor.forces`, ``m = lr * margin``):

    g = 1 + safety * max(0, m_ref - m) / (N k_i),     m_ref = N k_i.

**Why it suppresses the bifurcation.** Linearised around balance, with ``mu`` the slope of the
loads in the selection scores (``mu = 1 / (2T)`` for the paper's two experts, eq. 6) and ``a``
the reinforcement per unit load, the contrast ``y`` of the router's scores and the integral
``I`` move as

    y' = a mu c (y + I) - gamma y,    I' = -N k_i mu c (y + I),    c = 1 / (1 + N k_p mu),

so the trace is ``mu c (a - N k_i) - gamma`` and the determinant ``gamma N k_i mu c > 0``. The
open loop (``k = 0``) bifurcates at ``a mu = gamma`` (Thm 4.1); the closed loop keeps a negative
trace while ``N k_i > a - gamma / (mu c)``: with AdamW's ``gamma ~ 0`` the integral gain must
outrun the reinforcement, and the proportional term shrinks the loop's sensitivity ``c``
(its effect on the threshold is through ``gamma``). The schedule raises both gains (keeping their
ratio, so the damping) by the measured shortfall: when ``a`` approaches or passes the
restoring force (``m`` small or negative), ``g N k_i >= N k_i + safety (N k_i - m)``
keeps the closed-loop margin ``N k_i g + m`` at least ``N k_i`` whatever ``m``.

**No relay cycle.** The update is linear in ``e`` (up to the anti-windup clip, far from balance),
so its describing function has no phase lag: the relay law ``b <- b - u sign(e)`` of DeepSeek-V3
(:func:`sign_update`) switches at a fixed amplitude ``u`` and can lock into a limit cycle;
this one has none at balance.

All functions are pure numpy: the same law drives the real-model controller
(:class:`moebif.control.RouterController`) and the model's schemes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["ControlGains", "ControlState", "gain_factor", "initial_state", "sign_update", "update"]


@dataclass(frozen=True)
class ControlGains:
    """Gains of the proportional-integral selection bias.

    **Arguments:**

    - ``k_i``: integral gain, logits per optimizer step per unit relative load error ``N f - 1``.
    - ``k_p``: proportional gain, logits per unit (smoothed) relative load error.
    - ``beta``: weight of the new error in the proportional term's EMA (``1 / beta`` steps).
    - ``safety``: gain-schedule factor on the margin shortfall (0: fixed gains).
    - ``bias_max``: anti-windup clip of the integral, logits (an expert that cannot take load at
      any bias, e.g. a masked one, does not wind the integral up without bound).
    - ``gain_max``: cap of the scheduled factor ``g``.
    """

    k_i: float = 1e-2
    k_p: float = 0.1
    beta: float = 0.2
    safety: float = 2.0
    bias_max: float = 16.0
    gain_max: float = 20.0

    def __post_init__(self):
        for name in ("k_i", "k_p", "safety", "bias_max"):
            v = getattr(self, name)
            if not np.isfinite(v) or v < 0:
                raise ValueError(f"{name}: need a finite number >= 0, got {v}")
        if not 0 < self.beta <= 1:
            raise ValueError(f"beta: need 0 < beta <= 1, got {self.beta}")
        if not self.gain_max >= 1:
            raise ValueError(f"gain_max: need >= 1, got {self.gain_max}")


@dataclass(frozen=True)
class ControlState:
    """State of one router's controller: ``integral``, ``e_ema`` and ``bias``, each ``(N,)``
    float64; ``gain``: the factor ``g`` of the last update; ``steps``: updates made."""

    integral: np.ndarray
    e_ema: np.ndarray
    bias: np.ndarray
    gain: float = 1.0
    steps: int = 0


def initial_state(n_experts: int) -> ControlState:
    """The zero state of a router of ``n_experts`` experts (no bias)."""
    if int(n_experts) < 2:
        raise ValueError(f"n_experts: need >= 2, got {n_experts}")
    z = np.zeros(int(n_experts))
    return ControlState(z, z.copy(), z.copy())


def gain_factor(gains: ControlGains, n_experts: int, margin: float | None) -> float:
    """The scheduled factor ``g = 1 + safety max(0, N k_i - m) / (N k_i)``, capped at
    ``gain_max``; 1 when the margin ``m`` is unknown (``None`` or NaN) or ``k_i = 0``."""
    if margin is None or not np.isfinite(margin) or gains.k_i == 0:
        return 1.0
    ref = n_experts * gains.k_i
    g = 1.0 + gains.safety * max(0.0, ref - float(margin)) / ref
    return float(min(g, gains.gain_max))


def update(
    gains: ControlGains, state: ControlState, loads, margin: float | None = None
) -> ControlState:
    """One step of the law (module docstring): the new state after the step's ``loads`` (``(N,)``,
    any non-negative counts or fractions; normalised here). A step without load (all zero) leaves
    the state unchanged. ``margin``: the open-loop margin in logit step per optimizer step per
    unit load (``None``: unknown, fixed gains)."""
    f = np.asarray(loads, dtype=np.float64)
    n = state.bias.shape[0]
    if f.shape != (n,):
        raise ValueError(f"loads: need shape ({n},), got {f.shape}")
    total = f.sum()
    if not np.isfinite(total) or total <= 0:
        return state
    e = n * f / total - 1.0
    g = gain_factor(gains, n, margin)
    e_ema = (1.0 - gains.beta) * state.e_ema + gains.beta * e
    integral = state.integral - g * gains.k_i * e
    integral = np.clip(integral - integral.mean(), -gains.bias_max, gains.bias_max)
    bias = integral - g * gains.k_p * e_ema
    bias = bias - bias.mean()
    return ControlState(integral, e_ema, bias, g, state.steps + 1)


def sign_update(bias, loads, u: float = 1e-3) -> np.ndarray:
    """DeepSeek-V3's loss-free balancing step (the relay law the controller is compared with):
    ``b_i <- b_i + u sign(mean_j c_j - c_i)`` on the step's counts ``c`` (Megatron's form,
    uncentred)."""
    c = np.asarray(loads, dtype=np.float64)
    return np.asarray(bias, dtype=np.float64) + u * np.sign(c.mean() - c)
